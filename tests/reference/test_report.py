"""reference/report.py: the pictures of a kept benchmark run, and the page that shows them."""
import json
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib")   # the `plots` extra; the `test` extra installs it

from matplotlib.image import imread  # noqa: E402

from reference import metrics  # noqa: E402
from reference.evaluate import REPORT_NAME, evaluate, kept_run  # noqa: E402
from reference.model import RestModel  # noqa: E402
from reference.report import (index_html, loudness, sharpness_over_time, strip_columns,  # noqa: E402
                              strip_layout, write_report)
from tests.conftest import make_tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A kept run: one lively held-out identity, 3 s (4 chunks) from a random tiny model."""
    directory = tmp_path_factory.mktemp("kept")
    evaluate(RestModel.random(make_tiny_config()).eval(), identities=1, seconds=3.0, steps=1,
             motion="lively", first_identity=1, frames_dir=directory)
    return directory


def png(path) -> np.ndarray:
    """A PNG's RGB pixels as uint8 (matplotlib reads PNGs as floats in 0..1)."""
    return np.round(imread(path)[..., :3] * 255).astype(np.uint8)


def test_the_strip_shows_the_kept_frames_above_the_true_ones(kept, tmp_path):
    write_report(tmp_path, kept)
    report, cfg, streams = kept_run(kept)
    video, clip = next(streams)
    columns = strip_columns(video, clip, cfg.frames_per_chunk, cfg.fps)
    layout = strip_layout(len(columns), video.shape[1])
    image = png(tmp_path / "strip_1.png")
    assert image.shape[:2] == (layout["height"], layout["width"])
    s, tile = layout["scale"], layout["tile"]
    top, bottom = layout["y"]
    assert top + tile <= image.shape[0] / 2 <= bottom   # generated in the top half, truth in the bottom
    for (frame, _), x in zip(columns, layout["x"]):
        for rows, y in ((video, top), (clip.frames, bottom)):
            expected = np.repeat(np.repeat(rows[frame], s, axis=0), s, axis=1)
            assert np.array_equal(image[y:y + tile, x:x + tile], expected), (frame, y)


def test_strip_columns_cross_chunk_boundaries_and_find_the_turns(kept):
    report, cfg, streams = kept_run(kept)
    video, clip = next(streams)
    chunk, n = cfg.frames_per_chunk, len(video)
    frames = [f for f, _ in strip_columns(video, clip, chunk, cfg.fps)]
    assert frames == sorted(set(frames)) and frames[0] == 0 and frames[-1] == n - 1
    assert chunk - 1 in frames and chunk in frames            # the first boundary, both sides
    yaw = clip.truth["yaw"][:n]
    assert int(np.argmax(yaw)) in frames and int(np.argmin(yaw)) in frames
    # The worst seam: a stream that jumps at one boundary shows that boundary.
    jumpy = video.copy()
    jumpy[3 * chunk:] = 255 - jumpy[3 * chunk:]
    assert {3 * chunk - 1, 3 * chunk} <= {f for f, _ in strip_columns(jumpy, clip, chunk, cfg.fps)}


def test_time_series_on_known_signals():
    t = np.arange(16000 * 2) / 16000
    audio = np.where(t < 1, 0.5 * np.sin(2 * np.pi * 200 * t), 0.0).astype(np.float32)
    rms = loudness(audio, 640, 60)   # 2 s of audio, 2.4 s of frames: silence, then nothing
    assert rms[:25] == pytest.approx(0.5 / np.sqrt(2), rel=1e-3) and not rms[25:].any()
    frames = np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    per_second = [metrics.sharpness(frames[:25]), metrics.sharpness(frames[25:])]
    assert sharpness_over_time(frames, per_second[0], 25) == pytest.approx([1.0, per_second[1] / per_second[0]])
    flat = np.full_like(frames, 128)
    assert sharpness_over_time(flat, per_second[0], 25) == pytest.approx([0.0, 0.0])


def test_the_page_holds_every_figure_and_every_picture(kept, tmp_path):
    # Figures the benchmark adds later (a list over time, a floor row) appear without a change here.
    report = json.loads((kept / REPORT_NAME).read_text())
    report["generated"]["ghost_per_10s"] = [0.25]
    report["ground_truth"]["ghost_per_10s"] = [0.0]
    report["noise_floor"] = {"sharpness": 0.987654, "ghost": 0.123456}
    written = write_report(tmp_path, kept, report)
    page = (tmp_path / "index.html").read_text()
    shown = set(re.findall(r'src="([^"]+)"', page))
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert shown == pngs and {"strip_1.png", "mouth_1.png", "drift.png", "sharpness.png",
                              "series_ghost_per_10s.png"} <= pngs
    assert {p.name for p in written} == pngs | {"index.html", REPORT_NAME}
    for name in pngs:
        height, width = imread(tmp_path / name).shape[:2]
        assert 300 <= width <= 4000 and 200 <= height <= 2000, (name, width, height)
    for key, value in report["generated"].items():
        assert f"<td>{key}</td>" in page
        if isinstance(value, float):
            assert f"{value:.4g}" in page, key
    assert "noise floor" in page and "0.9877" in page and "0.1235" in page
    assert json.loads((tmp_path / REPORT_NAME).read_text()) == report
    assert index_html(report, []).count("<tr>") == len(set(report["generated"]) | {"ghost"}) + 1
