"""StreamingGenerator at every chunk length (1, 2 and 3 latent frames: 0.32, 0.64, 0.96 s) and
window (W = 1, 2 and 3 previous chunks): the fast path computes what reference/ computes over
streams long enough for the ring to wrap around several times, audio in pieces gives what one
push gives, streams that join and leave a batch get what they get alone, the Triton kernels drive
the whole loop, and memory stays flat over ten minutes at W = 3. The tolerances are
tests/conftest.py's, as in test_streaming.py."""
from __future__ import annotations


import numpy as np
import pytest

import rest_fast.streaming
from rest_fast import StreamingGenerator
from rest_fast.ops import HAS_TRITON
from tests.conftest import (assert_frames_close, assert_latents_close, make_tiny_config, sensitive_model,
                            speech_like, spy)
from tests.rest_fast.test_streaming import (fast_latents, fast_run, join_and_leave, live_bytes, portrait,
                                            reference_run, triton_loop_equals_reference)

WINDOWS = [(c, w) for c in (1, 2, 3) for w in (1, 2, 3)]


def windowed_model(chunk: int, prev_chunks: int):
    cfg = make_tiny_config()
    cfg.chunk_latent_frames, cfg.prev_chunks = chunk, prev_chunks
    return sensitive_model(cfg.validate())


@pytest.fixture(scope="module")
def audio():
    return speech_like(3.3, seed=1)     # 83 frames: 11 chunks of 1 latent frame, 4 of 3


@pytest.mark.parametrize("chunk, prev_chunks", WINDOWS, ids=[f"c{c}-W{w}" for c, w in WINDOWS])
def test_fast_equals_reference_at_every_chunk_and_window(audio, chunk, prev_chunks):
    model = windowed_model(chunk, prev_chunks)
    frames, expected = reference_run(model, portrait(0), audio, seed=5)
    fast_frames, latents = fast_run(StreamingGenerator(model, capacity=1), portrait(0), audio, seed=5)
    assert fast_frames.shape == frames.shape == (83, 64, 64, 3)
    assert_latents_close(latents, expected)
    assert_frames_close(fast_frames, frames)


def test_a_short_chunk_comes_sooner():
    """At 1 latent frame a chunk the first frames wait for 0.32 s of speech and the lookahead,
    where 3 frames wait for 0.96 s."""
    for chunk, wait in ((1, 320.0), (3, 960.0)):
        gen = StreamingGenerator(windowed_model(chunk, 3 // chunk), capacity=1)
        with gen.open(portrait(0)) as stream:
            needed = gen.cfg.samples_per_chunk + gen.cfg.speech.lookahead_frames * 320
            assert len(stream.push(speech_like(needed / 16000 - 1e-4))) == 0
            assert len(stream.push(np.zeros(2, np.float32))) == gen.cfg.frames_per_chunk == 8 * chunk
            assert stream.latency["chunk_ms"] == wait


@pytest.mark.parametrize("cuts", [[1234, 5000, 5001, 17000, 40000], [8000 * 3 - 1, 30000]])
def test_any_pieces_give_the_same_frames_with_a_window_of_three(audio, cuts):
    model = windowed_model(1, 3)
    frames, expected = reference_run(model, portrait(0), audio, seed=5)
    gen = StreamingGenerator(model, capacity=1)
    bounds = [0] + cuts + [len(audio)]
    parts = []
    with spy(rest_fast.streaming, "decode_chunks") as calls:
        with gen.open(portrait(0), seed=5) as stream:
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                out = stream.push(audio[lo:hi])
                assert len(out) % 8 == 0                # whole chunks of 8 frames, until flush
                parts.append(out)
            parts.append(stream.flush())
    assert_latents_close(fast_latents(calls), expected)
    assert_frames_close(np.concatenate(parts), frames)


def test_streams_joining_and_leaving_a_batch_keep_their_own_window(audio):
    """Three streams at c = 1, W = 3, one joining after the others' rings have wrapped (5 chunks
    into a ring of 4 slots) and one leaving (the last moves into its rows, ring slots and counts
    with it): each gets what it gets alone."""
    join_and_leave(windowed_model(1, 3), (audio, speech_like(3.3, seed=7), speech_like(2.0, seed=9)), 24000)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize("chunk, prev_chunks", [(1, 3), (2, 2)])
def test_the_triton_kernels_drive_a_windowed_loop(audio, chunk, prev_chunks):
    """Every op as its Triton kernel (interpreted on a CPU) over 6 chunks of 1 frame (the ring of
    4 slots wraps) or 3 of 2, == the reference."""
    triton_loop_equals_reference(windowed_model(chunk, prev_chunks), audio[:30720])  # 1.92 s


@pytest.mark.slow
def test_memory_is_flat_over_ten_minutes_at_a_window_of_three(monkeypatch):
    """1,875 chunks of 0.32 s (ten minutes of video) at W = 3: the stream's state, the caches and
    the process's resident memory do not grow after the first minute."""
    monkeypatch.setattr("rest_fast.streaming.TIMINGS_KEPT", 8)  # so that the bound is reached
    gen = StreamingGenerator(windowed_model(1, 3), capacity=1, steps=1)
    cfg = gen.cfg
    minute = round(60 * cfg.fps / cfg.frames_per_chunk)
    piece = speech_like(cfg.samples_per_chunk / 16000, seed=3)
    with gen.open(portrait(0)) as stream:
        def state_size():
            return (stream.ref.decode_state.numel(), len(stream.timings), gen.fast.caches.nbytes())
        for _ in range(minute):
            stream.push(piece)
        warm_state, warm_memory = state_size(), live_bytes()
        for _ in range(9 * minute):
            stream.push(piece)
        assert stream.chunks >= 10 * minute - 1 and int(gen.fast.caches.prev_count[0]) == 3
        assert state_size() == warm_state
        grown = live_bytes() - warm_memory
        assert grown < 4 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over nine minutes"
