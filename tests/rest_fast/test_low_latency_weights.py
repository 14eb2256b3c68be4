"""The bundled low-latency weights (rest_fast/assets/rest-cpu-low-latency, `--checkpoint
low-latency`): present and small; chunks of 1 latent frame (0.32 s) that keep W = 3 previous
chunks, distilled to two steps of one branch as the default was; a face waits 280 ms for the rest
of its chunk's speech instead of 920; and on held-out speech the face comes back recognisable,
seamless across the three times as many chunk boundaries, with its mouth following the speech.
Its benchmark figures against the default: docs/results/2026-12-07-short-chunks.md."""
from __future__ import annotations

import numpy as np
import pytest

from reference.checkpoint import load_checkpoint
from reference.data.synthetic import SyntheticTalkingHeads
from reference.evaluate import measure
from rest_fast import StreamingGenerator
from rest_fast.streaming import bundled_checkpoint

pytestmark = pytest.mark.skipif(bundled_checkpoint("low-latency") is None,
                                reason="rest_fast/assets/rest-cpu-low-latency is not in this installation")


def test_low_latency_weights_are_small_short_chunked_and_distilled():
    path = bundled_checkpoint("low-latency")
    assert sum(p.stat().st_size for p in path.iterdir()) <= 20 * 2**20
    cfg = load_checkpoint(path).cfg
    assert (cfg.chunk_latent_frames, cfg.prev_chunks, cfg.frames_per_chunk) == (1, 3, 8)
    assert cfg.speech.left_context_frames == 48                   # the 72-frame speech window kept
    assert (cfg.sampling.steps, cfg.sampling.cfg_mode, cfg.vae.decoder) == (2, "none", "full")
    assert (cfg.provenance.kind, cfg.provenance.method, cfg.provenance.steps) == ("distilled", "progressive+dmd", 2)


@pytest.fixture(scope="module")
def held_out():
    """8.64 s (27 chunks) of a held-out identity speaking held-out synthetic speech, streamed by
    `--checkpoint low-latency`: the frames, their figures and the stream's latency."""
    gen = StreamingGenerator.from_pretrained("low-latency", device="cpu")
    cfg = gen.cfg
    clip = SyntheticTalkingHeads.for_config(cfg, split="eval", motion="lively").clip(0, 27 * cfg.frames_per_chunk)
    with gen.open(clip.reference, seed=0) as stream:
        frames = np.concatenate([stream.push(clip.audio), stream.flush()])
        latency = stream.latency
    return frames, measure(frames, clip, cfg.frames_per_chunk), latency


def test_a_face_waits_for_a_third_of_the_speech(held_out):
    _, _, latency = held_out
    assert latency["chunk_ms"] == 320 and latency["speech_wait_ms"] == 280 and latency["lookahead_ms"] == 160


def test_the_held_out_face_comes_back_seamless_and_speaking(held_out):
    frames, g, _ = held_out
    assert frames.shape == (216, 256, 256, 3)
    assert g["psnr"] > 17.0 and g["ssim"] > 0.8          # the held-out face, not noise or another face
    assert g["boundary_smoothness"] < 1.25                # per boundary: 27 of them, no new seam
    assert g["lip_sync_best_corr"] > 0.4 and abs(g["lip_sync_best_offset"]) <= 3
