"""StreamingGenerator: the fast path computes what reference/ computes; audio in any pieces gives
the same frames; streams in one batch do not leak into each other; memory stays flat; bad input
is refused clearly and leaves the stream usable."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.config import RestConfig
from reference.media import InputError
from reference.model import RestModel
from reference.pipeline import generate
from rest_fast import StreamingGenerator
from rest_fast.ops import HAS_TRITON, force_backend
from rest_fast.streaming import StreamClosedError
from tests.conftest import make_tiny_config, open_audio_path, speech_like


def tiny_model(**edits) -> RestModel:
    cfg = make_tiny_config()
    for section, values in edits.items():
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **values))
    return open_audio_path(RestModel.random(RestConfig.from_dict(cfg.to_dict()), seed=1)).eval()


def portrait(seed: int, size: int = 64) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def audio():
    return speech_like(3.3, seed=1)   # 83 frames: 4 chunks, the last one partial


@pytest.fixture(scope="module")
def expected(model, audio):
    return generate(model, portrait(0), audio, seed=5)


def test_fast_equals_reference(model, audio, expected):
    frames = StreamingGenerator(model, capacity=1).generate(portrait(0), audio, seed=5)
    assert frames.shape == expected.shape == (83, 64, 64, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, expected)


@pytest.mark.parametrize("edits", [
    {"sampling": {"cache_mode": "clean"}},
    {"sampling": {"cfg_mode": "multi"}},
    {"dit": {"student_sink": False}},
    {"dit": {"student_prev": False}},
], ids=["clean-cache", "multi-cfg", "no-sink", "no-prev"])
def test_fast_equals_reference_in_every_mode(edits, audio):
    model = tiny_model(**edits)
    short = audio[:32000]
    expected = generate(model, portrait(1), short, seed=2)
    frames = StreamingGenerator(model, capacity=1).generate(portrait(1), short, seed=2)
    assert np.abs(frames.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_streams_stay_close_to_fp32(model, audio, expected, dtype):
    """The GPU default (bf16) and fp16 run the whole chunk, sink and decoder included; the frames
    differ from the fp32 reference only by rounding (mean |difference| in 8-bit levels)."""
    import copy
    gen = StreamingGenerator(copy.deepcopy(model).to(dtype))
    frames = gen.generate(portrait(0), audio, seed=5)
    assert frames.shape == expected.shape and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - expected).mean() < 2.0


@settings(max_examples=8, deadline=None)
@given(cuts=st.lists(st.integers(0, 52800), max_size=6))
def test_any_pieces_give_the_same_frames(model, audio, expected, cuts):
    gen = StreamingGenerator(model, capacity=1)
    bounds = [0] + sorted(cuts) + [len(audio)]
    parts = []
    with gen.open(portrait(0), seed=5) as stream:
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            out = stream.push(audio[lo:hi])
            assert len(out) % 24 == 0   # whole chunks only, until flush
            parts.append(out)
        parts.append(stream.flush())
    assert np.array_equal(np.concatenate(parts), expected)


def test_frames_come_as_soon_as_the_window_has_arrived(model, audio):
    cfg = model.cfg
    with StreamingGenerator(model, capacity=1).open(portrait(0)) as stream:
        needed = 16 * 320 + cfg.samples_per_chunk - 16 * 320 + cfg.speech.lookahead_frames * 320
        assert len(stream.push(audio[:needed - 1])) == 0
        assert len(stream.push(audio[needed - 1:needed])) == 24   # chunk + 160 ms lookahead
        latency = stream.latency
        assert latency["chunk_ms"] == 960 and latency["lookahead_ms"] == 160
        assert latency["total_ms"] == pytest.approx(1120 + latency["compute_ms"])
        assert len(stream.timings) == 1 and stream.timings[0] > 0


def test_streams_in_one_batch_do_not_leak(model, audio):
    """Three callers with their own portraits, seeds and audio, stepped together, each joining
    and leaving at its own time, get exactly what each gets alone."""
    a, b, c = audio, speech_like(3.3, seed=7), speech_like(2.0, seed=9)
    alone = {name: StreamingGenerator(model, capacity=1).generate(portrait(i), x, seed=10 + i)
             for i, (name, x) in enumerate([("a", a), ("b", b), ("c", c)])}
    gen = StreamingGenerator(model, capacity=3)
    sa, sb = gen.open(portrait(0), seed=10), gen.open(portrait(1), seed=11)
    out = {"a": [], "b": [], "c": []}
    for s, x in ((sa, a), (sb, b)):
        s.feed(x[:30000])
    for name, frames in zip("ab", gen.step([sa, sb])):
        out[name].append(frames)
    sc = gen.open(portrait(2), seed=12)                   # joins mid-stream
    sc.feed(c)
    sa.feed(a[30000:])
    sb.feed(b[30000:])
    for name, frames in zip("abc", gen.step()):           # one batch of three
        out[name].append(frames)
    out["b"] += [sb.flush()]                              # b leaves: c moves into its rows
    sb.close()
    while any(s._ready() for s in (sa, sc)):
        for name, frames in zip("ac", gen.step([sa, sc])):
            out[name].append(frames)
    out["a"].append(sa.flush())
    out["c"].append(sc.flush())
    for name in "abc":
        # A batch rounds differently from a batch of one (matmul blocking): a grey level here and
        # there. A leak from another caller would change whole frames.
        diff = np.abs(np.concatenate(out[name]).astype(int) - alone[name])
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (name, diff.max(), (diff > 0).mean())


def test_capacity_and_closed_streams(model):
    gen = StreamingGenerator(model, capacity=1)
    stream = gen.open(portrait(0))
    with pytest.raises(RuntimeError, match="all 1 streams are open"):
        gen.open(portrait(1))
    stream.close()
    with pytest.raises(StreamClosedError, match="closed"):
        stream.push(np.zeros(100, np.float32))
    with gen.open(portrait(1)) as other:
        other.flush()
        with pytest.raises(StreamClosedError, match="flushed"):
            other.push(np.zeros(100, np.float32))


def test_bad_audio_is_refused_and_the_stream_goes_on(model, audio, expected):
    with StreamingGenerator(model, capacity=1).open(portrait(0), seed=5) as stream:
        with pytest.raises(InputError, match="int16.*32768"):
            stream.push((audio * 32767).astype(np.int16))
        with pytest.raises(InputError, match="mono.*mean"):
            stream.push(np.stack([audio, audio], axis=1))
        bad = audio[:1000].copy()
        bad[10] = np.nan
        with pytest.raises(InputError, match="NaN"):
            stream.push(bad)
        assert stream.samples == 0
        frames = np.concatenate([stream.push(audio.astype(np.float64)), stream.flush()])
    assert np.array_equal(frames, expected)


def test_images_of_any_kind(model, tmp_path):
    from reference.media import load_image
    gen = StreamingGenerator(model, capacity=1)
    big = portrait(3, size=300)[:, :200]                   # non-square, not the model's size
    frames = gen.generate(big, np.zeros(4000, np.float32))
    assert frames.shape == (7, 64, 64, 3)
    with pytest.raises(InputError):
        gen.open(tmp_path / "missing.png")
    assert load_image(big, 64).shape == (64, 64, 3)


@pytest.mark.slow
def test_memory_is_flat_over_hundreds_of_chunks(monkeypatch):
    """200 chunks (3.2 minutes of video) of the cpu preset: the stream's state and the process's
    resident memory do not grow after the first chunks."""
    monkeypatch.setattr("rest_fast.streaming.TIMINGS_KEPT", 8)  # so that the bound is reached
    gen = StreamingGenerator.random("cpu", device="cpu", capacity=1, steps=2)
    cfg = gen.cfg
    piece = speech_like(cfg.samples_per_chunk / 16000, seed=3)
    with gen.open(np.full((256, 256, 3), 128, np.uint8)) as stream:
        def state_size():
            return (stream._buffer.size, stream.ref.decode_state.numel(), len(stream.timings),
                    gen.fast.caches.nbytes())
        early = []
        for _ in range(60):
            stream.push(piece)
            early.append(resident_bytes())
        warm_state = state_size()
        late = []
        for _ in range(140):
            stream.push(piece)
            late.append(resident_bytes())
        assert stream.chunks >= 199
        assert state_size()[1:] == warm_state[1:] and state_size()[0] <= warm_state[0] + len(piece)
        # The allocator hands memory back and takes it again (RSS swings by ~100 MiB from chunk
        # to chunk); a leak would lift the peak. 200 chunks of growth would show as > 16 MiB.
        assert max(late) - max(early) < 16 * 2**20, (max(early) / 2**20, max(late) / 2**20)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_the_triton_kernels_drive_the_whole_loop(model, audio):
    """The fast path with every op as its Triton kernel (interpreted on CPU) == the reference."""
    short = audio[:20000]
    expected = generate(model, portrait(0), short, seed=5, steps=2)
    gen = StreamingGenerator(model, capacity=2, steps=2)
    with force_backend("triton"):
        frames = gen.generate(portrait(0), short, seed=5)
    assert np.abs(frames.astype(int) - expected).max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_equals_eager(audio):
    model = open_audio_path(RestModel.random(make_tiny_config(), seed=1)).cuda().eval()
    eager = StreamingGenerator(model, capacity=2, use_graphs=False).generate(portrait(0), audio, seed=5)
    graphed = StreamingGenerator(model, capacity=2, use_graphs=True)
    first = graphed.generate(portrait(0), audio, seed=5)
    second = graphed.generate(portrait(0), audio, seed=5)  # the captured graph, replayed again
    assert np.abs(first.astype(int) - eager).max() <= 1
    assert np.array_equal(first, second)
