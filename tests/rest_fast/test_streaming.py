"""StreamingGenerator: the fast path computes what reference/ computes; audio in any pieces gives
the same frames; streams in one batch do not leak into each other; memory stays flat; bad input
is refused clearly and leaves the stream usable.

Two different computations are compared where a wiring bug is large and rounding small: the
denoised latents before uint8 quantisation (LATENT_RTOL) and the cached K/V, then the frames
(FRAME_MAX_DIFF on FRAME_DIFF_FRACTION of pixels); tolerances are stated once in tests/conftest.py.
The model is ``sensitive_model``: ``test_every_part_of_the_student_counts`` shows that each wiring
bug these comparisons guard against moves its latents by far more than the tolerance."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rest_fast.streaming
from reference.config import RestConfig
from reference.media import InputError
from reference.pipeline import ReferenceStream, generate
from reference.speech import chunk_windows, samples_needed
from rest_fast import StreamingGenerator
from rest_fast.ops import HAS_TRITON, RopeTable, force_backend
from rest_fast.streaming import StreamClosedError
from tests.conftest import (MUTATION_FLOOR, assert_frames_close, assert_latents_close,
                            make_tiny_config, relative_difference, sensitive_model, speech_like, spy)

KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # cpu: interpreted


def tiny_model(**edits):
    """The sensitive tiny model with config edits: {section: {field: value}} or {field: value}."""
    cfg = make_tiny_config()
    for section, values in edits.items():
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **values)
                if isinstance(values, dict) else values)
    return sensitive_model(RestConfig.from_dict(cfg.to_dict()))


def portrait(seed: int, size: int = 64) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


def reference_run(model, image, audio, seed, **kwargs) -> tuple[np.ndarray, torch.Tensor]:
    """The reference pipeline's frames and the denoised latents it decoded (B=1, C, F, h, w)."""
    with spy(ReferenceStream, "denoise") as calls:
        frames = generate(model, image, audio, seed=seed, **kwargs)
    return frames, model.denormalize(torch.cat([z for _, z in calls], dim=2))


def fast_latents(calls, stream=None) -> torch.Tensor:
    """From a spy on rest_fast.streaming.decode_chunks: the latents decoded for ``stream`` (for
    the only stream when None), chunk after chunk, (1, C, F, h, w)."""
    chunks = []
    for (vae, latents, states), _ in calls:
        for k, state in enumerate(states):
            if stream is None or state is stream.ref.decode_state:
                chunks.append(latents[k:k + 1])
    return torch.cat(chunks, dim=2)


def fast_run(gen, image, audio, seed, **kwargs) -> tuple[np.ndarray, torch.Tensor]:
    with spy(rest_fast.streaming, "decode_chunks") as calls:
        frames = gen.generate(image, audio, seed=seed, **kwargs)
    return frames, fast_latents(calls)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def audio():
    return speech_like(3.3, seed=1)   # 83 frames: 4 chunks, the last one partial


@pytest.fixture(scope="module")
def expected(model, audio):
    return reference_run(model, portrait(0), audio, seed=5)


def test_fast_equals_reference(model, audio, expected):
    frames, latents = fast_run(StreamingGenerator(model, capacity=1), portrait(0), audio, seed=5)
    assert frames.shape == expected[0].shape == (83, 64, 64, 3) and frames.dtype == np.uint8
    assert_latents_close(latents, expected[1])
    assert_frames_close(frames, expected[0])


def _shift_rope(gen):
    """The current chunk one frame later than the window-relative positions say."""
    fast, d = gen.fast, gen.cfg.dit
    c, w = gen.cfg.chunk_latent_frames, gen.cfg.prev_chunks
    frames = torch.arange(w * c + 2, (w + 1) * c + 2, dtype=torch.float64)
    fast.rope_cur = RopeTable.for_frames(frames, gen.model.dit.grid, d.head_dim, d.rope_theta)


@pytest.mark.parametrize("mutation", ["no sink", "no previous chunk", "RoPE shifted one frame",
                                      "another clip's audio", "another portrait's sink"])
def test_every_part_of_the_student_counts(model, audio, expected, mutation):
    """Each wiring bug the comparisons above guard against moves the latents of the test model
    by far more than LATENT_RTOL, so a tolerance cannot hide it."""
    gen = StreamingGenerator(model, capacity=1)
    image, speech = portrait(0), audio
    if mutation == "no sink":
        gen.fast.use_sink = False
    elif mutation == "no previous chunk":
        gen.fast.use_prev = False
    elif mutation == "RoPE shifted one frame":
        _shift_rope(gen)
    elif mutation == "another clip's audio":
        speech = speech_like(len(audio) / 16000, seed=2)
    else:
        image = portrait(3)
    _, latents = fast_run(gen, image, speech, seed=5)
    assert relative_difference(latents, expected[1]) > MUTATION_FLOOR


@torch.no_grad()
def test_per_step_caches_equal_the_reference(model, audio):
    """After each chunk, context ring j holds what the reference's step-j cache holds: the chunk's
    K (pre-RoPE: each chunk after it rotates it to where it reads it) and V, in every block and
    CFG branch."""
    cfg = model.cfg
    ref = ReferenceStream(model, portrait(0), seed=5)
    gen = StreamingGenerator(model, capacity=1)
    tokens = cfg.chunk_latent_frames * cfg.tokens_per_frame
    windows = chunk_windows(torch.from_numpy(audio), cfg, num_chunks=3)
    caches = gen.fast.caches
    with gen.open(portrait(0), seed=5) as stream:
        for i, window in enumerate(windows):
            ref.step(window)
            stream.push(audio[stream.samples:samples_needed(i, cfg)])
            assert stream.chunks == i + 1
            written = (int(caches.slot[0]) - 1) % caches.slots    # the slot this chunk wrote
            for j, per_block in enumerate(ref.caches):
                for b, (k, v) in enumerate(per_block):
                    rows = slice(0, gen.branches)
                    assert_latents_close(caches.ring_v[j, b, rows, written], v[:, :, -tokens:])
                    assert_latents_close(caches.ring_k[j, b, rows, written], k[:, :, -tokens:])


@pytest.mark.parametrize("edits", [
    {"sampling": {"cache_mode": "clean"}},
    {"sampling": {"cfg_mode": "multi"}},
    {"dit": {"student_sink": False}},
    {"dit": {"student_prev": False}},
], ids=["clean-cache", "multi-cfg", "no-sink", "no-prev"])
def test_fast_equals_reference_in_every_mode(edits, audio):
    model = tiny_model(**edits)
    short = audio[:32000]
    frames, expected = reference_run(model, portrait(1), short, seed=2)
    fast_frames, latents = fast_run(StreamingGenerator(model, capacity=1), portrait(1), short, seed=2)
    assert_latents_close(latents, expected)
    assert_frames_close(fast_frames, frames)


@pytest.fixture(scope="module")
def another_seed(model, audio):
    return reference_run(model, portrait(0), audio, seed=6)[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_streams_stay_close_to_fp32(model, audio, expected, another_seed, dtype):
    """The GPU default (bf16) and fp16 run the whole chunk, sink and decoder included; their
    frames differ from the fp32 reference by rounding, a small fraction of what another noise
    seed changes (mean |difference| in 8-bit levels; measured: bf16 0.10, fp16 0.014 of it on
    this deliberately sensitive model)."""
    gen = StreamingGenerator(copy.deepcopy(model).to(dtype))
    frames = gen.generate(portrait(0), audio, seed=5)
    assert frames.shape == expected[0].shape and frames.dtype == np.uint8
    rounding = np.abs(frames.astype(int) - expected[0]).mean()
    assert rounding < 0.2 * np.abs(another_seed.astype(int) - expected[0]).mean()


@settings(max_examples=8, deadline=None)
@given(cuts=st.lists(st.integers(0, 52800), max_size=6))
def test_any_pieces_give_the_same_frames(model, audio, expected, cuts):
    gen = StreamingGenerator(model, capacity=1)
    bounds = [0] + sorted(cuts) + [len(audio)]
    parts = []
    with spy(rest_fast.streaming, "decode_chunks") as calls:
        with gen.open(portrait(0), seed=5) as stream:
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                out = stream.push(audio[lo:hi])
                assert len(out) % 24 == 0   # whole chunks only, until flush
                parts.append(out)
            parts.append(stream.flush())
    assert_latents_close(fast_latents(calls), expected[1])
    assert_frames_close(np.concatenate(parts), expected[0])


def test_frames_come_as_soon_as_the_window_has_arrived(model, audio):
    cfg = model.cfg
    with StreamingGenerator(model, capacity=1).open(portrait(0)) as stream:
        needed = 16 * 320 + cfg.samples_per_chunk - 16 * 320 + cfg.speech.lookahead_frames * 320
        assert len(stream.push(audio[:needed - 1])) == 0
        assert len(stream.push(audio[needed - 1:needed])) == 24   # chunk + 160 ms lookahead
        latency = stream.latency
        assert latency["chunk_ms"] == 960 and latency["lookahead_ms"] == 160
        assert latency["total_ms"] == pytest.approx(1120 + latency["compute_ms"])
        # A chunk's first frame waits for 23 more frames of speech, its last for none.
        assert latency["speech_wait_ms"] == 920 and latency["speech_wait_median_ms"] == 460
        assert latency["worst_ms"] == pytest.approx(920 + 160 + latency["compute_ms"])
        assert latency["median_ms"] == pytest.approx(460 + 160 + latency["compute_ms"])
        assert len(stream.timings) == 1 and stream.timings[0] > 0


def join_and_leave(model, audios, first_samples: int):
    """Three callers with their own portraits, seeds and audio on one generator: a and b feed
    ``first_samples`` and step together until neither is ready, c joins, one batch of three, b
    leaves (c moves into its rows), a and c step on and flush. Checks that each stream's latents
    and frames are what it gets alone."""
    alone = {name: fast_run(StreamingGenerator(model, capacity=1), portrait(i), x, seed=10 + i)
             for i, (name, x) in enumerate(zip("abc", audios))}
    a, b, c = audios
    gen = StreamingGenerator(model, capacity=3)
    out = {"a": [], "b": [], "c": []}
    with spy(rest_fast.streaming, "decode_chunks") as calls:
        sa, sb = gen.open(portrait(0), seed=10), gen.open(portrait(1), seed=11)
        for s, x in ((sa, a), (sb, b)):
            s.feed(x[:first_samples])
        while sa._ready() or sb._ready():
            for name, frames in zip("ab", gen.step([sa, sb])):
                out[name].append(frames)
        sc = gen.open(portrait(2), seed=12)                   # joins mid-stream
        sc.feed(c)
        sa.feed(a[first_samples:])
        sb.feed(b[first_samples:])
        for name, frames in zip("abc", gen.step()):           # one batch of three
            out[name].append(frames)
        out["b"] += [sb.flush()]                              # b leaves: c moves into its rows
        sb.close()
        while any(s._ready() for s in (sa, sc)):
            for name, frames in zip("ac", gen.step([sa, sc])):
                out[name].append(frames)
        out["a"].append(sa.flush())
        out["c"].append(sc.flush())
    for name, stream in zip("abc", (sa, sb, sc)):
        frames, latents = alone[name]
        assert_latents_close(fast_latents(calls, stream), latents)
        assert_frames_close(np.concatenate(out[name]), frames)


def test_streams_in_one_batch_do_not_leak(model, audio):
    """Three callers, stepped together, each joining and leaving at its own time, get what each
    gets alone: the same latents (up to the rounding of a batch against a batch of one) and
    frames. Another stream's sink moves the latents by far more
    (test_every_part_of_the_student_counts)."""
    join_and_leave(model, (audio, speech_like(3.3, seed=7), speech_like(2.0, seed=9)), 30000)


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
    with spy(rest_fast.streaming, "decode_chunks") as calls:
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
    assert_latents_close(fast_latents(calls), expected[1])
    assert_frames_close(frames, expected[0])


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
    """120 chunks (2 minutes of video) of the cpu preset: the stream's state and the process's
    resident memory do not grow after the first chunks."""
    monkeypatch.setattr("rest_fast.streaming.TIMINGS_KEPT", 8)  # so that the bound is reached
    gen = StreamingGenerator.random("cpu", device="cpu", capacity=1, steps=1)
    cfg = gen.cfg
    piece = speech_like(cfg.samples_per_chunk / 16000, seed=3)
    with gen.open(np.full((256, 256, 3), 128, np.uint8)) as stream:
        def state_size():
            return (stream._buffer.size, stream.ref.decode_state.numel(), len(stream.timings),
                    gen.fast.caches.nbytes())
        for _ in range(30):
            stream.push(piece)
        warm_state, warm_memory = state_size(), live_bytes()
        for _ in range(90):
            stream.push(piece)
        assert stream.chunks >= 119
        assert state_size()[1:] == warm_state[1:] and state_size()[0] <= warm_state[0] + len(piece)
        # Measured flat to 0.1 MiB; a chunk's frames are 4.5 MiB, so keeping even a small part of
        # every chunk would show.
        grown = live_bytes() - warm_memory
        assert grown < 4 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over 90 chunks"


def live_bytes() -> int:
    """Resident memory after glibc hands its free pages back (without the trim, RSS swings by
    ~100 MiB from chunk to chunk with what the allocator keeps)."""
    import ctypes
    import ctypes.util
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: RSS as it is
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_the_triton_kernels_drive_the_whole_loop(model, audio):
    """The fast path with every op as its Triton kernel (compiled on a GPU, interpreted on a CPU)
    == the reference."""
    triton_loop_equals_reference(model, audio[:20000])


def triton_loop_equals_reference(model, audio):
    """Two steps of ``model`` over ``audio`` with every op as its Triton kernel == the reference."""
    model = copy.deepcopy(model).to(KERNEL_DEVICE)
    frames, expected = reference_run(model, portrait(0), audio, seed=5, steps=2)
    gen = StreamingGenerator(model, capacity=2, steps=2)
    with force_backend("triton"):
        fast_frames, latents = fast_run(gen, portrait(0), audio, seed=5)
    # On a GPU the fp32 kernels multiply in TF32 (rest_fast.ops.fp32_dot_precision).
    assert_latents_close(latents, expected, rtol=1e-4 if KERNEL_DEVICE.type == "cpu" else 2e-2)
    assert np.abs(fast_frames.astype(int) - frames).max() <= (1 if KERNEL_DEVICE.type == "cpu" else 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_equals_eager(audio):
    model = tiny_model().cuda()
    eager = fast_run(StreamingGenerator(model, capacity=2, use_graphs=False), portrait(0), audio, seed=5)
    graphed = StreamingGenerator(model, capacity=2, use_graphs=True)
    first = fast_run(graphed, portrait(0), audio, seed=5)
    second = fast_run(graphed, portrait(0), audio, seed=5)  # the captured graph, replayed again
    assert_latents_close(first[1], eager[1])
    assert_frames_close(first[0], eager[0])
    assert torch.equal(first[1], second[1]) and np.array_equal(first[0], second[0])  # same replay


def test_a_capacity_that_cannot_fit_is_refused_before_allocating(model, monkeypatch):
    gen = StreamingGenerator(model, capacity=2)
    assert gen.fast.caches.nbytes() == 2 * gen.bytes_per_stream     # the accounting is exact
    free = int(2.5 * gen.bytes_per_stream / rest_fast.streaming.MEMORY_HEADROOM)
    monkeypatch.setattr(rest_fast.streaming, "free_memory", lambda device: free)
    assert StreamingGenerator(model, capacity=2).capacity == 2
    with pytest.raises(InputError, match=r"capacity=8 needs .* of stream caches .* use capacity=2 or less"):
        StreamingGenerator(model, capacity=8)
    monkeypatch.setattr(rest_fast.streaming, "free_memory", lambda device: 1000)
    with pytest.raises(InputError, match="no stream fits.*cache_mode='clean'"):
        StreamingGenerator(model, capacity=1)


def test_paper_preset_memory_per_stream():
    """What a server must plan for at the paper preset (8 steps x 2 branches x 28 blocks)."""
    from rest_fast.cache import StreamCaches, cache_layout
    from reference.config import get_config
    layout = cache_layout(get_config("paper"), branches=2, steps=8, cache_mode="per_step")
    per_stream = StreamCaches.bytes_per_stream(dtype=torch.bfloat16, **layout)
    assert 5.3 * 2**30 < per_stream < 5.5 * 2**30
    clean = StreamCaches.bytes_per_stream(dtype=torch.bfloat16, **{**layout, "rings": 1})
    assert clean < per_stream / 5


def test_dtype_defaults_follow_the_device(monkeypatch):
    from rest_fast.streaming import default_dtype
    assert default_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(rest_fast.streaming, "cpu_has_fast_bf16", lambda: True)    # AMX
    assert default_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(rest_fast.streaming, "cpu_has_fast_bf16", lambda: False)   # AVX512-BF16 alone, AVX2
    assert default_dtype(torch.device("cpu")) == torch.float32
    gen = StreamingGenerator.random("cpu", device="cpu", dtype=torch.bfloat16, steps=1)
    assert gen.dtype == torch.bfloat16 and gen.fast.caches.ring_k.dtype == torch.bfloat16


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 1e30, -1.0])
def test_unusable_guidance_scales_are_refused(model, scale):
    gen = StreamingGenerator(model, capacity=1)
    with pytest.raises(ValueError, match=r"CFG scale must be a finite number in \[0, 20\]"):
        gen.open(portrait(0), cfg_scale=scale)
    assert gen.streams == []


LIGHT = {"light_width": 8, "decoder": "light"}


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("decoder", ["full", "light"])
def test_one_branch_without_guidance_equals_the_reference(audio, steps, decoder):
    """cfg_mode "none": one DiT forward of one row per step, no unconditional branch anywhere
    (the fast path and the reference count the same), caches for one row per stream; the same
    latents and frames as the reference, with either decoder."""
    from reference.dit import A2VDiT
    from rest_fast.model import FastDiT
    model = tiny_model(sampling={"cfg_mode": "none", "steps": steps}, **({"vae": LIGHT} if decoder == "light" else {}))
    short = audio[:30000]                                         # 2 chunks
    with spy(A2VDiT, "forward_chunk") as ref_calls:
        frames, expected = reference_run(model, portrait(1), short, seed=2)
    gen = StreamingGenerator(model, capacity=1)
    with spy(FastDiT, "forward") as fast_calls:
        fast_frames, latents = fast_run(gen, portrait(1), short, seed=2)
    assert gen.branches == 1 and gen.fast.caches.ring_k.shape[2] == 1
    chunks = latents.shape[2] // model.cfg.chunk_latent_frames
    assert len(fast_calls) == len(ref_calls) == chunks * steps
    assert {args[1].shape[0] for args, _ in fast_calls} == {args[1].shape[0] for args, _ in ref_calls} == {1}
    assert_latents_close(latents, expected)
    assert_frames_close(fast_frames, frames)


def test_guidance_modes_cost_what_they_say(model):
    """Memory per stream scales with the branches and the per-step caches; a scale needs guidance."""
    sizes = {mode: StreamingGenerator(model, cfg_mode=mode).bytes_per_stream for mode in ("none", "joint", "multi")}
    assert sizes["none"] * 2 == sizes["joint"] and sizes["none"] * 3 == sizes["multi"]
    fewer_steps = StreamingGenerator(model, cfg_mode="none", steps=2).bytes_per_stream
    assert fewer_steps < sizes["none"] / 2
    with pytest.raises(ValueError, match="needs guidance"):
        StreamingGenerator(model, cfg_mode="none").open(portrait(0), cfg_scale=6.0)
    with pytest.raises(ValueError, match="guidance must be one of"):
        StreamingGenerator(model, cfg_mode="triple")


def test_a_streams_own_guidance_scale_is_the_one_it_samples_with(model, audio):
    """Two streams at scales other than the checkpoint's, in one batch, each match the reference
    at its own scale; the checkpoint's scale gives other latents (so the scale was used)."""
    short = audio[:30000]
    scales = {0: 2.0, 1: 9.0}
    assert model.cfg.sampling.cfg_mode != "none" and model.cfg.sampling.cfg_scale not in scales.values()
    expected = {i: reference_run(model, portrait(i), short, seed=20 + i, cfg_scale=s)[1] for i, s in scales.items()}
    gen = StreamingGenerator(model, capacity=2)
    with spy(rest_fast.streaming, "decode_chunks") as calls:
        streams = [gen.open(portrait(i), seed=20 + i, cfg_scale=s) for i, s in scales.items()]
        for stream in streams:
            stream.feed(short)
        while any(s._ready() for s in streams):
            gen.step(streams)
        for stream in streams:
            stream.flush()
    for i, stream in enumerate(streams):
        assert_latents_close(fast_latents(calls, stream), expected[i])
    at_default = reference_run(model, portrait(0), short, seed=20)[1]
    with pytest.raises(AssertionError):
        assert_latents_close(at_default, expected[0])
