"""tools/sharpness_probe.py on the bundled VAE: the facts docs/training.md ("What sharpness can
tell") rests on, on a held-out lively clip, and the one restless clips change."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reference.checkpoint import load_checkpoint
from reference.data.synthetic import SyntheticTalkingHeads
from reference.evaluate import evaluate
from reference.model import RestModel
from rest_fast.streaming import bundled_checkpoint
from tests.conftest import load_script


@pytest.fixture(scope="module")
def model():
    return load_checkpoint(bundled_checkpoint()).eval()


def probe_scores(model, motion: str, frames: int) -> dict:
    clip = SyntheticTalkingHeads.for_config(model.cfg, split="eval", motion=motion).clip(1, frames)
    return load_script("tools/sharpness_probe.py").probe(model, clip.frames)


@pytest.fixture(scope="module")
def scores(model):
    return probe_scores(model, "lively", 65)


def test_a_mean_in_latent_space_decodes_as_sharp_as_the_truth_does(scores):
    """A regressor of the mean in latent space is not blurred by this decoder: sharpness cannot
    see it (head motion and FD do). A mean in pixels is."""
    vae = scores["VAE (full decoder)"][2]
    assert scores["VAE (full), the clip's mean latent"][2] == pytest.approx(vae, rel=0.1)
    assert scores["VAE (full), latents averaged over 1 s"][2] == pytest.approx(vae, rel=0.1)
    assert scores["the truth's per-pixel mean over time"][2] < 0.7   # 2.6 s: little time to move


def test_pixel_scale_energy_of_decoded_video_is_mostly_flicker(scores):
    """Averaging 5 decoded frames removes a large share of the pixel-scale Laplacian energy (grain
    that changes every frame) and little at the 2x scale that ``sharpness`` uses."""
    vae, averaged = scores["VAE (full decoder)"], scores["VAE (full), its frames averaged over 5"]
    assert averaged[1] < 0.8 * vae[1]
    assert averaged[2] > 0.9 * vae[2]
    truth_averaged = scores["the truth, averaged over 5 frames"]
    assert truth_averaged[1] > 0.85 and truth_averaged[2] > 0.9


def test_a_mean_over_posture_shifts_is_blurred_even_in_latent_space(model):
    """Restless heads shift by more than a third of the 32-pixel latent cell: their clip's mean
    latent decodes a third less sharp than their latents (7.7 s, three shifts)."""
    restless = probe_scores(model, "restless", 193)
    vae = restless["VAE (full decoder)"][2]
    assert restless["VAE (full), the clip's mean latent"][2] < 0.8 * vae


def spatial_blur(frames, width: int = 5):
    x = torch.from_numpy(frames).float().permute(0, 3, 1, 2)
    y = torch.nn.functional.avg_pool2d(x, width, 1, width // 2, count_include_pad=False)
    return y.permute(0, 2, 3, 1).round().byte().numpy()


def test_kept_frames_scored_by_the_chunks_place_in_its_window(tmp_path, tiny_config, capsys):
    """--kept: a stream whose every second chunk is blurred is sharp in place 1 and blurred in
    place 2 of a window of 2, and between the two as one window."""
    probe = load_script("tools/sharpness_probe.py")
    kept = tmp_path / "frames"
    tiny_model = RestModel.random(tiny_config).eval()
    evaluate(tiny_model, mode="vae", identities=1, seconds=3.0, motion="lively", frames_dir=kept)
    with np.load(kept / "identity_0.npz") as saved:
        frames = len(saved["frames"])
    clip = SyntheticTalkingHeads.for_config(tiny_model.cfg, split="eval", motion="lively").clip(0, frames)
    chunk = tiny_model.cfg.frames_per_chunk
    assert frames >= 4 * chunk
    video = clip.frames.copy()
    second = (np.arange(frames) // chunk) % 2 == 1
    video[second] = spatial_blur(clip.frames[second])
    np.savez_compressed(kept / "identity_0.npz", frames=video)

    first_place, second_place = probe.by_chunk_position(video, clip.frames, chunk, 2)
    assert first_place == pytest.approx(1.0, abs=0.1) and second_place < 0.5
    assert probe.main(["--kept", str(kept), "--window", "2"]) == 0
    assert f"| 0 | {first_place:.3f} | {second_place:.3f} |" in capsys.readouterr().out
    (whole,) = probe.by_chunk_position(video, clip.frames, chunk, 1)
    assert second_place < whole < first_place
    with pytest.raises(SystemExit):
        probe.main(["--kept", str(kept), "--window", "0"])
    with pytest.raises(SystemExit):     # lively: no posture to split by
        probe.main(["--kept", str(kept), "--by-place"])
    assert "restless" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe.main(["--kept", str(tmp_path / "missing")])
    assert "--save-frames" in capsys.readouterr().err


def test_sharpness_by_the_heads_place(capsys):
    """--by-place: a restless clip whose frames with the head 10 pixels or more from the
    portrait's place are blurred scores ~1 in the near bands and far less in the far ones; the
    truth itself scores ~1 everywhere its head stands (the head found by the benchmark's search)."""
    probe = load_script("tools/sharpness_probe.py")
    cfg = load_checkpoint(bundled_checkpoint()).cfg
    clip = SyntheticTalkingHeads.for_config(cfg, split="eval", motion="restless").clip(1, 193)
    offsets = probe.head_offsets(clip.frames, clip)
    distance = np.hypot(offsets[:, 0], offsets[:, 1])
    far = distance >= 10
    assert 10 < far.sum() < len(far) - 10          # 7.7 s with three shifts: both kinds of frame
    truth_bands = probe.sharpness_by_place(clip.frames, clip)
    assert sum(n for n, _ in truth_bands) == len(clip.frames)
    assert all(v == pytest.approx(1.0, abs=0.15) for n, v in truth_bands if n)
    video = clip.frames.copy()
    video[far] = spatial_blur(clip.frames[far])
    bands = probe.by_head_place(video, offsets, probe.sharpness(clip.frames))
    near_bands, far_bands = bands[:3], bands[3:]
    assert all(v > 0.85 for n, v in near_bands if n) and all(v < 0.5 for n, v in far_bands if n)
    assert probe.place_row("x", bands).count("|") == len(probe.PLACE_BANDS) + 2
    with pytest.raises(SystemExit):     # lively heads stay at the portrait's place: refused
        probe.main(["--by-place", "--data", "lively"])
    assert "restless" in capsys.readouterr().err
