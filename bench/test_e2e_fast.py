"""End to end: rest_fast's StreamingGenerator against the reference pipeline, in one run.

    pytest bench/test_e2e_fast.py --benchmark -s

Per chunk = Whisper + SpeechAE + 8 steps x all CFG branches + streaming VAE decode + uint8
frames on the host. Figures: first-chunk latency (a stream's first chunk, after open), steady
per-chunk latency, real-time factor (wall time / video duration), memory per stream (its caches
and decoder state; on CUDA also the peak allocated), and throughput for 1, 2, 4, 8 streams
(chunks per second across streams; real time needs >= streams / 0.96).

On a GPU: the paper preset in bf16 with CUDA graphs (random weights: speed does not depend on
them). On CPU: the cpu preset in fp32, and the steady chunk again in bf16 (fast and reference).
Targets (issue 6): paper preset, batch 1, H100: DiT <= 100 ms and whole chunk <= 150 ms, >= 3x
the reference, 8 streams at real time; cpu preset on 2 cores: >= 1.5x the reference. Printed by
test_summary, not asserted.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from reference.config import get_config
from reference.model import RestModel
from reference.pipeline import ReferenceStream
from reference.speech import chunk_windows
from rest_fast import StreamingGenerator

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
PRESET = "paper" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
_results: dict[str, float] = {}


def speech(seconds, sr=16000, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * (130 + 20 * seed) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
            + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def model():
    return RestModel.random(get_config(PRESET)).to(DEVICE, DTYPE).eval()


@pytest.fixture(scope="module")
def model_bf16(model):
    """The same weights in bfloat16: the GPU default, and on CPUs with AMX (oneDNN bf16 matmuls
    and convolutions) the fast way to run the cpu preset."""
    import copy
    return model if DTYPE == torch.bfloat16 else copy.deepcopy(model).to(torch.bfloat16)


@pytest.fixture(scope="module")
def image(model):
    r = model.cfg.resolution
    return np.full((r, r, 3), 128, np.uint8)


def info(benchmark, **kw):
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if CUDA else "cpu", preset=PRESET,
                                dtype=str(DTYPE), threads=torch.get_num_threads(), **kw)


# ------------------------------------------------------------------------ one stream, per chunk

def reference_steady_chunk(benchmark, model, image, key):
    stream = ReferenceStream(model, image)
    window = chunk_windows(torch.from_numpy(speech(2.0)), model.cfg, num_chunks=1)[0]
    stream.step(window)
    benchmark.pedantic(lambda: (stream.step(window), sync()), rounds=5, iterations=1)
    _results[key] = benchmark.stats.stats.median
    info(benchmark)


def fast_steady_chunk(benchmark, model, image, key):
    gen = StreamingGenerator(model, capacity=1)
    cfg = model.cfg
    piece = speech(cfg.samples_per_chunk / 16000)
    stream = gen.open(image)
    stream.push(speech(1.2))

    def chunk():
        frames = stream.push(piece)
        sync()
        assert len(frames) == cfg.frames_per_chunk
    chunk()
    benchmark.pedantic(chunk, rounds=8, iterations=1)
    _results[key] = benchmark.stats.stats.median
    dtype = model.latent_mean.dtype
    state = gen.fast.caches.nbytes() // gen.capacity + stream.ref.decode_state.numel() * dtype.itemsize
    _results[key + ":bytes_per_stream"] = state
    info(benchmark, bytes_per_stream=state)
    stream.close()


def test_reference_steady_chunk(benchmark, model, image):
    reference_steady_chunk(benchmark, model, image, "reference:chunk")


def test_fast_first_chunk(benchmark, model, image):
    """open + the first chunk (sink, text K/V, and on CUDA the graph capture for one stream on
    the first round; later rounds replay it)."""
    gen = StreamingGenerator(model, capacity=1)
    cfg = model.cfg
    audio = speech(1.2)

    def first():
        with gen.open(image) as stream:
            frames = stream.push(audio)
            sync()
        assert len(frames) == cfg.frames_per_chunk
    first()  # includes graph capture / compilation
    benchmark.pedantic(first, rounds=5, iterations=1)
    _results["fast:first"] = benchmark.stats.stats.median
    info(benchmark)


def test_fast_steady_chunk(benchmark, model, image):
    fast_steady_chunk(benchmark, model, image, "fast:chunk")


@pytest.mark.skipif(CUDA, reason="on a GPU the main rows are bf16 already")
def test_reference_steady_chunk_bf16(benchmark, model_bf16, image):
    reference_steady_chunk(benchmark, model_bf16, image, "reference:chunk:bf16")


@pytest.mark.skipif(CUDA, reason="on a GPU the main rows are bf16 already")
def test_fast_steady_chunk_bf16(benchmark, model_bf16, image):
    fast_steady_chunk(benchmark, model_bf16, image, "fast:chunk:bf16")


@pytest.mark.skipif(not CUDA, reason="the DiT alone is timed on a GPU (on CPU: test_chunk_breakdown)")
def test_fast_dit_only(benchmark, model, image):
    """The captured chunk alone: 8 steps x 2 CFG branches of the DiT (+ CFG/Euler), one stream."""
    gen = StreamingGenerator(model, capacity=1)
    stream = gen.open(image)
    stream.push(speech(1.2))
    gen.active[:gen.branches] = 0  # replay without changing the stream's state
    benchmark.pedantic(lambda: (gen.graphs.run(1, gen.z, gen.audio, gen.scales, gen.active), sync()),
                       rounds=20, iterations=1)
    _results["fast:dit"] = benchmark.stats.stats.median
    info(benchmark)


@pytest.mark.skipif(CUDA, reason="on a GPU the chunk is one graph replay: see test_fast_dit_only")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunk_breakdown(benchmark, model, model_bf16, image, dtype):
    """Where a fast chunk's time goes on CPU: speech tokens (Whisper + SpeechAE), the DiT's
    8 steps x CFG branches, the streaming VAE decode, and the uint8 conversion."""
    from reference.model import videos_to_uint8
    from rest_fast.streaming import decode_chunks
    m = model if dtype == "float32" else model_bf16
    gen = StreamingGenerator(m, capacity=1)
    stream = gen.open(image)
    stream.push(speech(1.2))
    rows = gen.branches                      # one stream: its CFG branch rows
    gen.active.zero_()                       # the timed steps leave the stream's state alone
    times = {}
    with torch.inference_mode():
        window = stream._next_window()[None]
        latents = m.denormalize(gen.z[[0], 0])
        video = m.vae.decode_stream(latents, stream.ref.decode_state)
        parts = {"speech tokens": lambda: m.audio_tokens(window),
                 "DiT (8 steps x CFG)": lambda: gen.fast.denoise(gen.z[:1], gen.audio[:rows],
                                                                 gen.scales[:1], gen.active[:rows]),
                 "VAE decode": lambda: decode_chunks(m.vae, latents, [stream.ref.decode_state]),
                 "to uint8": lambda: videos_to_uint8(video)}
        for name, fn in parts.items():
            fn()
            runs = []
            for _ in range(5):
                start = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - start)
            times[name] = float(np.median(runs))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    _results[f"breakdown:{dtype}"] = times
    info(benchmark, **{k: round(1e3 * v, 1) for k, v in times.items()})


# ------------------------------------------------------------------------------- many streams

@pytest.mark.parametrize("streams", [1, 2, 4, 8])
def test_fast_throughput(benchmark, model, image, streams):
    gen = StreamingGenerator(model, capacity=streams)
    cfg = model.cfg
    opened = [gen.open(image, seed=i) for i in range(streams)]
    for i, s in enumerate(opened):
        s.feed(speech(1.2, seed=i))
    gen.step()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    piece = speech(cfg.samples_per_chunk / 16000)

    def tick():
        for s in opened:
            s.feed(piece)
        made = gen.step()
        sync()
        assert all(len(f) == cfg.frames_per_chunk for f in made)
    benchmark.pedantic(tick, rounds=4 if streams > 2 else 6, iterations=1)
    per_tick = benchmark.stats.stats.median
    chunk_s = cfg.frames_per_chunk / cfg.fps
    _results[f"fast:tick:{streams}"] = per_tick
    extra = dict(streams=streams, chunks_per_s=round(streams / per_tick, 2),
                 real_time=per_tick <= chunk_s)
    if CUDA:
        extra["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    info(benchmark, **extra)
    for s in opened:
        s.close()


def test_summary(benchmark):
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    cfg = get_config(PRESET)
    chunk_s = cfg.frames_per_chunk / cfg.fps
    r = _results
    lines = [f"\nend to end on {torch.cuda.get_device_name() if CUDA else 'cpu'}, {PRESET} preset, {DTYPE}:"]
    if "reference:chunk" in r and "fast:chunk" in r:
        lines.append(f"  steady chunk: reference {1e3 * r['reference:chunk']:.1f} ms, fast "
                     f"{1e3 * r['fast:chunk']:.1f} ms -> {r['reference:chunk'] / r['fast:chunk']:.2f}x "
                     f"(RTF reference {r['reference:chunk'] / chunk_s:.3f}, fast {r['fast:chunk'] / chunk_s:.3f})")
    if "fast:chunk:bf16" in r:
        ref32, ref16, fast16 = r["reference:chunk"], r.get("reference:chunk:bf16"), r["fast:chunk:bf16"]
        line = (f"  steady chunk, bf16: fast {1e3 * fast16:.1f} ms (RTF {fast16 / chunk_s:.3f}) -> "
                f"{ref32 / fast16:.2f}x the fp32 reference")
        if ref16:
            line += f", {ref16 / fast16:.2f}x the bf16 reference ({1e3 * ref16:.1f} ms)"
        lines.append(line)
    if "fast:first" in r:
        lines.append(f"  first chunk (open + chunk 0): {1e3 * r['fast:first']:.1f} ms")
    if "fast:dit" in r:
        lines.append(f"  DiT only (8 steps x CFG, graph replay): {1e3 * r['fast:dit']:.1f} ms")
    if "fast:chunk:bytes_per_stream" in r:
        lines.append(f"  state per stream: {r['fast:chunk:bytes_per_stream'] / 2**20:.1f} MiB")
    for dtype in ("float32", "bfloat16"):
        if f"breakdown:{dtype}" in r:
            lines.append(f"  chunk breakdown, {dtype}: " + ", ".join(
                f"{k} {1e3 * v:.1f} ms" for k, v in r[f"breakdown:{dtype}"].items()))
    for n in (1, 2, 4, 8):
        if f"fast:tick:{n}" in r:
            t = r[f"fast:tick:{n}"]
            lines.append(f"  {n} streams: {1e3 * t:.0f} ms per chunk of all, {n / t:.2f} chunks/s, "
                         f"{'real time' if t <= chunk_s else 'slower than real time'}")
    print("\n".join(lines))
