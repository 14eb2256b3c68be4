"""The full compile report and the roofline floors of a chunk (no GPU needed):

    pytest bench/test_compile_report.py --benchmark -s

Every kernel compiled for sm_80, sm_90 and sm_100 in every configuration the package can launch
(``python -m rest_fast.ops.compile_report``, about 15 minutes on 2 cores; the table goes to
runs/compile_report/), then the roofline floors of a paper-preset chunk
(``python -m rest_fast.ops.roofline``, into the same folder). Fails where the report fails: a
kernel that does not compile, one that needs more shared memory than its target has, or one that
spills at the paper preset in bf16 on sm_90. CI compiles one configuration per kernel
(tests/rest_fast/ops/test_compile_report.py).
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "compile_report"


def test_full_compile_report_and_roofline():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # the interpreter cannot compile
    env["PYTHONPATH"] = str(ROOT)
    report = subprocess.run([sys.executable, "-m", "rest_fast.ops.compile_report", "--targets", "80,90,100",
                             "--out", str(OUT)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    print(report.stdout[-400:], report.stderr[-4000:] if report.returncode else "")
    roofline = subprocess.run([sys.executable, "-m", "rest_fast.ops.roofline", "--out", str(OUT)], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(roofline.stdout)
    assert roofline.returncode == 0, roofline.stderr[-2000:]
    assert report.returncode == 0, report.stderr[-4000:]
