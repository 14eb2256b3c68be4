"""tools/sharpness_probe.py on the bundled VAE: the facts docs/training.md ("What sharpness can
tell") rests on, on a held-out lively clip, and the one restless clips change."""
from __future__ import annotations

import pytest

from reference.checkpoint import load_checkpoint
from reference.data.synthetic import SyntheticTalkingHeads
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
