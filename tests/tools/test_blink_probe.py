"""tools/blink_probe.py: its comparison knows the answer on the truth itself and on the truth with
the blinks removed, its latent probe finds eyelids where an encoder keeps them, and on the
bundled VAE it shows the fact the lively benchmark's blink figure rests on (docs/training.md,
"What the cpu-preset VAE can show"): blinks survive the VAE."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference.checkpoint import load_checkpoint
from reference.data.synthetic import SyntheticTalkingHeads
from rest_fast.streaming import bundled_checkpoint
from tests.conftest import load_script, without_blinks


@pytest.fixture(scope="module")
def probe():
    return load_script("tools/blink_probe.py")


@pytest.fixture(scope="module")
def bundled():
    return load_checkpoint(bundled_checkpoint()).eval().float()


@pytest.fixture(scope="module")
def clip():
    """12 s of held-out identity 0 at the cpu preset's size (4 blinks)."""
    return SyntheticTalkingHeads(256, split="eval", motion="lively").clip(0, 1 + 8 * 37)


def test_the_truth_follows_its_eyelids(probe, clip):
    r = probe.compare(clip.frames, clip.frames, clip.truth["blink"], clip.eye_boxes)
    assert r["true_blinks"] >= 2
    assert r["blinks"] == r["true_blinks"] and r["white_level"] == pytest.approx(1.0)
    assert r["white_corr"] > 0.95 and r["iris_corr"] > 0.9


def test_eyes_that_never_close_show_no_blinks(probe, clip):
    open_eyes = without_blinks(SyntheticTalkingHeads(256, split="eval", motion="lively"), 0, clip)
    r = probe.compare(clip.frames, open_eyes, clip.truth["blink"], clip.eye_boxes)
    assert r["blinks"] == 0 and r["true_blinks"] >= 2
    assert abs(r["white_corr"]) < 0.3 and abs(r["iris_corr"]) < 0.3


def test_blinks_survive_the_bundled_vae(probe, bundled):
    """Measured (12 s, 4 true blinks): eye white against the eyelids 0.78, 2 blinks found, iris
    darkness 0.94. The calm VAE the bundle replaced scores 0.12 and 0.65 on the same clip."""
    (r,) = probe.probe(bundled, identities=1, seconds=12)
    assert r["true_blinks"] >= 2 and r["blinks"] >= 1
    assert r["white_corr"] > 0.6 and r["iris_corr"] > 0.8
    assert 0.7 < r["white_level"] < 1.4            # as much eye white as the truth's, near enough


def pooled_pixels(video: torch.Tensor) -> torch.Tensor:
    """An "encoder" shaped like the cpu preset's (32 x 32 pixels and 8 frames a latent cell, the
    first frame alone) that keeps each frame's mean colour per cell: the eyelids survive it."""
    first, rest = video[:, :, :1], video[:, :, 1:]
    pooled = F.avg_pool3d(rest, (1, 32, 32))
    b, c, t, h, w = pooled.shape
    z = pooled.reshape(b, c, t // 8, 8, h, w).transpose(2, 3).reshape(b, c * 8, t // 8, h, w)
    return torch.cat([F.avg_pool3d(first, (1, 32, 32)).repeat(1, 8, 1, 1, 1), z], 2)


def test_the_latent_probe_finds_eyelids_where_they_are_kept(probe, bundled):
    kept = probe.latent_eyelids(pooled_pixels, bundled.cfg, train_identities=12, seconds=6.4)
    # The same features of the clip played backwards (its first frame kept): nothing in them
    # lines up with the eyelids of the frames they stand for.
    reversed_ = probe.latent_eyelids(lambda v: pooled_pixels(torch.cat([v[:, :, :1], v[:, :, 1:].flip(2)], 2)),
                                     bundled.cfg, train_identities=12, seconds=6.4)
    assert kept > 0.6 and abs(reversed_) < 0.2, (kept, reversed_)
