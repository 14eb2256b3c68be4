"""The compile report (rest_fast/ops/compile_report.py) in CI: every kernel, with the launch it
runs with, compiled for sm_90 at the paper preset in bf16 (no GPU needed), within the target's
shared memory and without spills; and two planted faults, a tile too large for shared memory and
a tl.dot on a tile 8 wide, caught with the kernel and the target named.

The tests run Triton's interpreter (TRITON_INTERPRET=1), under which kernels cannot be compiled,
so the compiles run in one child process without it, their kernels cached in a temporary folder."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rest_fast.ops import HAS_TRITON, launch

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
ROOT = Path(__file__).resolve().parents[3]

CHILD = textwrap.dedent('''
    import json, sys, torch
    from rest_fast.ops import compile_report as cr
    cache = sys.argv[1]
    rows = [cr.compile_row(row, dtype, cache) for row, dtype in cr.plan([90], quick=True)]
    planted = []
    # Key tiles of 1024 in 4 stages: 265 KiB of shared memory; a head read in halves 8 wide.
    for name, edit, stages in (("block_attention:_fwd_kernel", {"BLOCK_N": 1024}, 4),
                               ("sink_attention:_sink_cache_attention_kernel", {"HALF_P": 8}, 3)):
        c = cr.configurations(name, "paper", torch.bfloat16, "tf32", 90)
        row = cr.Row(name, 90, "bf16", "paper", {**c["constexprs"], **edit}, c["num_warps"], stages)
        planted.append(cr.compile_row(row, torch.bfloat16, cache))
    print(json.dumps({"rows": [dict(vars(r), problems=cr.problems(r)) for r in rows],
                      "planted": [dict(vars(r), problems=cr.problems(r)) for r in planted]}))
''')


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from rest_fast.ops import compile_report
    if not os.path.exists(compile_report._cuobjdump()):
        pytest.skip("this Triton wheel has no cuobjdump")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), TRITON_DEFAULT_FP_FUSION="1")
    run = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path_factory.mktemp("triton-cache"))],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_for_sm90_without_spills(compiled):
    rows = compiled["rows"]
    assert {r["kernel"] for r in rows} == set(launch.LAUNCHES)
    for row in rows:
        assert row["problems"] == [], (row["kernel"], row["problems"])
        assert row["registers"] > 0 and row["blocks_per_sm"] >= 1, row


def test_planted_faults_are_caught_with_the_kernel_and_the_target(compiled):
    too_big, dot8 = compiled["planted"]
    assert too_big["kernel"] == "block_attention:_fwd_kernel" and too_big["problems"], too_big
    assert too_big["problems"][0].startswith("needs ") and "of shared memory, sm_90 has" in too_big["problems"][0]
    assert dot8["kernel"] == "sink_attention:_sink_cache_attention_kernel"
    assert dot8["problems"] and dot8["problems"][0].startswith("does not compile for sm_90"), dot8


def test_the_report_names_each_problem_and_fails(monkeypatch, capsys, tmp_path):
    """The command's exit status and message, without compiling: every row planted as failed."""
    from rest_fast.ops import compile_report as cr
    monkeypatch.setattr(cr, "compile_row", lambda row, dtype, cache=None: row)   # not compiled: a problem
    assert cr.main(["--quick", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "rest-fast compile report: cfg_euler:_cfg_euler_kernel (bf16, paper, sm_90) does not compile" in err
    assert "| block_attention:_bwd_dq_kernel | sm_90 | bf16 | paper |" in (tmp_path / "compile_report.md").read_text()
    assert len(json.loads((tmp_path / "compile_report.json").read_text())["rows"]) == len(launch.LAUNCHES)
