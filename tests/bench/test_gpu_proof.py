"""The GPU proof script's --smoke mode: the whole script, every step, on the CPU at tiny shapes,
so that it still runs the day a GPU is lent."""
import json
import subprocess
from pathlib import Path

import pytest

from rest_fast.ops import HAS_TRITON, launch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="the proof's op step runs the Triton kernels")
def test_smoke_run_checks_and_writes_every_step(tmp_path):
    # The full compile report takes ~15 minutes; CI compiles one configuration per kernel.
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu_proof.sh"), str(tmp_path), "--smoke",
                          "--compile-report", "quick"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    proof = json.loads((tmp_path / "proof.json").read_text())
    rows = proof["rows"]
    assert {r["step"] for r in rows} == {"replay", "ops", "streams", "e2e", "train", "compile"}
    assert not [r for r in rows if r["ok"] is False]
    checked = [r["what"] for r in rows if r["ok"]]
    for op in ("kv_cache_write", "sink_cache_attention", "adaln_modulate", "frame_audio_attention backward",
               "cfg_euler_step_ multi", "async_noise", "block_attention student backward",
               "block_attention teacher backward"):
        assert any(w.startswith(op) for w in checked), op
    for stage in ("teacher", "student"):     # the training step through the kernels, same loss
        assert any(w.startswith(f"{stage} step, kernels") for w in checked), stage
    compiled = next(r for r in rows if r["step"] == "compile")
    assert compiled["ok"] and compiled["figure"].startswith(f"{len(launch.LAUNCHES)} compiles, 0 problems"), compiled
    assert (tmp_path / "compile_report" / "compile_report.md").exists()
    assert any("roofline_floor" in r.get("ms", {}) for r in rows)
    assert proof["meta"]["smoke"] and proof["meta"]["commit"]
    table = (tmp_path / "proof.md").read_text().splitlines()
    assert table[0].startswith("| step | what | figure | check | device | date | commit | command |")
    assert len(table) == 2 + len(rows)
