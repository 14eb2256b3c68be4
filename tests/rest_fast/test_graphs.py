"""ChunkGraphs' bookkeeping on a CPU: which stream counts get a graph and when, that capturing
(warm-ups included) changes no stream, and that a failed capture falls back to the eager loop.

A CUDA graph replays exactly the launches it recorded, on the buffers they used. ``EagerRecorder``
(rest_fast.graphs) stands in for the capture here: its "replay" calls the recorded function again, on the same views
of the same static buffers, so wrong slicing, a count's graph used for another count or state
left behind by a warm-up show up as they would on a GPU. Real capture and replay are tested on a
GPU (tests/rest_fast/test_streaming.py and bench/gpu_proof.py)."""
from __future__ import annotations

import numpy as np
import pytest

from rest_fast import StreamingGenerator
from rest_fast.graphs import ChunkGraphs, EagerRecorder
from tests.conftest import assert_frames_close, speech_like
from tests.rest_fast.test_streaming import portrait, tiny_model


class CountingRecorder(EagerRecorder):
    """EagerRecorder that counts its work and fails the captures of ``fail_counts`` streams."""

    def __init__(self, fail_counts=()):
        self.fail_counts = set(fail_counts)
        self.warm_ups, self.recorded = 0, 0
        self.count = None                      # set by with_graphs before each capture

    def warm_up(self, fn, times):
        super().warm_up(fn, times)
        self.warm_ups += times

    def record(self, fn):
        if self.count in self.fail_counts:
            fn()                               # a capture that fails half-way has run some of it
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        self.recorded += 1
        return super().record(fn)


def with_graphs(model, capacity, recorder):
    gen = StreamingGenerator(model, capacity=capacity, use_graphs=False)
    gen.graphs = ChunkGraphs(gen.fast, recorder=recorder)
    original = gen.graphs.capture

    def capture(n, *args):
        recorder.count = n
        return original(n, *args)
    gen.graphs.capture = capture
    return gen


def session(gen):
    """Two callers, a third joining, the second leaving (the third moves into its rows): the
    stream count goes 2 -> 3 -> 2. Returns each caller's frames."""
    a, b, c = speech_like(3.3, seed=1), speech_like(3.3, seed=7), speech_like(2.0, seed=9)
    out = {"a": [], "b": [], "c": []}
    sa, sb = gen.open(portrait(0), seed=10), gen.open(portrait(1), seed=11)
    sa.feed(a[:30000])
    sb.feed(b[:30000])
    for name, frames in zip("ab", gen.step()):
        out[name].append(frames)
    sc = gen.open(portrait(2), seed=12)
    sc.feed(c)
    sa.feed(a[30000:])
    sb.feed(b[30000:])
    for name, frames in zip("abc", gen.step()):
        out[name].append(frames)
    out["b"].append(sb.flush())
    sb.close()
    while any(s._ready() for s in (sa, sc)):
        for name, frames in zip("ac", gen.step()):
            out[name].append(frames)
    out["a"].append(sa.flush())
    out["c"].append(sc.flush())
    sa.close()
    sc.close()
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.parametrize("edits", [{}, {"sampling": {"cache_mode": "clean"}},
                                   {"sampling": {"cfg_mode": "multi"}},
                                   {"chunk_latent_frames": 1, "prev_chunks": 3}],
                         ids=["per-step", "clean-cache", "three-branch", "short-chunks-window-3"])
def test_warmup_captures_every_count_and_changes_no_stream(edits):
    model = tiny_model(**edits)
    eager = session(StreamingGenerator(model, capacity=3))
    recorder = CountingRecorder()
    gen = with_graphs(model, 3, recorder)
    gen.open(portrait(5)).push(speech_like(1.3))   # an open stream with a chunk behind it
    gen.warmup()
    assert sorted(gen.graphs.replays) == [1, 2, 3] and recorder.recorded == 3
    assert recorder.warm_ups == 2 + 1 + 1             # compile once, then one run per new count
    gen.streams[0].close()
    graphed = session(gen)
    assert recorder.recorded == 3                      # nothing captured while serving
    for name in "abc":
        assert_frames_close(graphed[name], eager[name])


def test_counts_are_captured_lazily_without_warmup():
    model = tiny_model()
    eager = session(StreamingGenerator(model, capacity=3))
    recorder = CountingRecorder()
    gen = with_graphs(model, 3, recorder)
    graphed = session(gen)
    assert sorted(gen.graphs.replays) == [2, 3]        # the counts that stepped together
    for name in "abc":
        assert_frames_close(graphed[name], eager[name])


def test_a_failed_capture_restores_the_inputs_and_runs_eagerly():
    model = tiny_model()
    eager = session(StreamingGenerator(model, capacity=3))
    recorder = CountingRecorder(fail_counts={3})
    gen = with_graphs(model, 3, recorder)
    with pytest.warns(RuntimeWarning, match="capture of a chunk for 3 stream"):
        graphed = session(gen)
    assert sorted(gen.graphs.replays) == [2] and gen.graphs.failed == {3}
    for name in "abc":
        assert_frames_close(graphed[name], eager[name])
    z, active = gen.z.clone(), gen.active.clone()
    with pytest.raises(RuntimeError):
        gen.graphs.capture(3, gen.z, gen.audio, gen.scales, gen.active)
    assert gen.z.equal(z) and gen.active.equal(active)   # the same computation: bit equal
