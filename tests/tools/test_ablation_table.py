"""tools/ablation_table.py: the tables of docs/training.md from `rest-fast eval --json` reports."""
import json

import pytest

from tests.conftest import load_script

FIGURES = {"motion": 0.4, "blink_rate": 0.0, "sharpness": 0.067, "fd": 185.0, "lip_sync_corr": 0.60,
           "lip_sync_best_offset": 1.0, "drift_first_10s": 5.4, "drift_last_10s": 5.5,
           "drift_slope_per_min": 0.07, "boundary_smoothness": 1.08, "psnr": 23.8, "ssim": 0.865}


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/ablation_table.py")


def report(forwards: int, data: str = "lively", **changes) -> dict:
    return {"data": data, "sampler": {"dit_forwards_per_chunk": forwards},
            "generated": {**FIGURES, **changes}, "ground_truth": {**FIGURES, "motion": 1.0, "fd": 0.0}}


def test_rows_are_judged_against_a_row_in_the_right_direction(tool, tmp_path):
    (tmp_path / "paper.json").write_text(json.dumps(report(16)))
    # a mean: less motion and a larger FD (bad), better PSNR and lip sync (not a shortfall)
    (tmp_path / "mean.json").write_text(json.dumps(report(1, motion=0.15, fd=206.0, psnr=24.3, lip_sync_corr=0.64)))
    (tmp_path / "close.json").write_text(json.dumps(report(2, motion=0.37, fd=200.0, drift_last_10s=6.0)))
    text = tool.table(str(tmp_path), ["paper=8 x 6", "mean", "close"], against="paper")
    lines = text.splitlines()
    assert "head motion" in lines[0] and "FD (ours)" in lines[0] and "DiT forwards / chunk" in lines[0]
    assert lines[2].startswith("| 8 x 6 | 16 |") and lines[2].endswith("| - |")
    assert lines[3].endswith("| fd, motion |")              # 0.15 < 0.36; 206 > 203.5
    assert lines[4].endswith("| - |")                       # within 10% on everything
    assert lines[5].startswith("| ground truth")
    with pytest.raises(SystemExit, match="no report missing.json"):
        tool.table(str(tmp_path), ["missing"])


@pytest.mark.parametrize("data, columns", [("lively", True), ("restless", True), ("calm", False)])
def test_the_figures_a_mean_cannot_fake_are_shown_for_lively_and_restless_data(tool, tmp_path, data, columns):
    (tmp_path / "run.json").write_text(json.dumps(report(16, data=data)))
    head = tool.table(str(tmp_path), ["run"]).splitlines()[0]
    assert ("blinks /min" in head and "sharpness" in head) == columns


def test_ratios_are_judged_by_distance_from_one_and_inside_the_floor_is_no_difference(tool, tmp_path):
    """Colour noise "moved" 1.86x as much as the truth and was "sharper": worse, not better. An FD
    gap inside the reports' noise floor (another window of the truth scores 13) is none."""
    floor = {"fd": 13.0, "motion": 0.1}
    (tmp_path / "default.json").write_text(json.dumps({**report(2, motion=0.81, fd=97.0), "noise_floor": floor}))
    (tmp_path / "noise.json").write_text(json.dumps(report(16, motion=1.86, sharpness=0.5, fd=106.0)))
    (tmp_path / "old.json").write_text(json.dumps(report(16, motion=0.81, fd=106.0)))
    lines = tool.table(str(tmp_path), ["default", "noise", "old"], against="default").splitlines()
    assert lines[3].endswith("| motion |")          # 1.86 is 0.86 from 1, the default 0.19
    assert lines[4].endswith("| - |")               # FD 106 against 97: inside the floor of 13
    assert lines[-1].startswith("| noise floor of default") and "13.00" in lines[-1]
    assert "| - |" in lines[2].replace("| 2 |", "")  # a figure the report predates (ghost) shows "-"
