"""StreamingGenerator: push audio as it arrives, get talking-head frames back, for many callers.

    gen = StreamingGenerator.from_pretrained(None)          # bundled cpu weights
    with gen.open("portrait.png", seed=0) as stream:
        frames = stream.push(pcm)                           # uint8 (n, H, W, 3), n may be 0
        frames = stream.flush()                             # the rest, for the audio pushed so far
    frames = gen.generate("portrait.png", audio, seed=0)    # offline: the same frames

A stream makes chunk i (8c frames: 0.96 s at the paper's c = 3, 0.32 s at c = 1) as soon as
the audio of its speech window has arrived: the chunk itself plus the Whisper lookahead (160 ms).
So a frame waits for the rest of its chunk's speech, the lookahead and the compute
(``Stream.latency`` gives each part). Pushing the same audio in pieces of any sizes gives the same frames as one
push, and as ``generate`` and the reference pipeline (same weights and seed).

Many streams: every open stream owns rows of the generator's static buffers (rest_fast.cache),
and ``gen.step(streams)`` makes one chunk for every given stream that has one ready, all in one
batched forward (on CUDA one graph replay, rest_fast.graphs). ``stream.push`` is ``feed`` plus
``step`` on that stream alone; a server driving many callers ``feed``s each and calls ``step``
once per tick (examples/). Not thread-safe: drive a generator from one thread (an asyncio loop).

Memory is constant in the length of a stream: the caches are allocated once, the audio buffer
keeps only what later speech windows need, the decoder state is bounded and timings are kept for
the last ``TIMINGS_KEPT`` chunks.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from reference.checkpoint import load_checkpoint
from reference.config import get_config
from reference.media import InputError, load_image
from reference.model import RestModel, videos_to_uint8
from reference.config import GUIDANCE_BRANCHES
from reference.pipeline import ReferenceStream, frames_for_samples, sampler_settings
from reference.speech import samples_needed, window_samples, window_start

from .cache import StreamCaches, cache_layout
from .graphs import ChunkGraphs
from .host_memory import keep_freed_memory
from .model import FastDiT

TIMINGS_KEPT = 256
MEMORY_HEADROOM = 0.9   # the caches may take this share of the device's free memory at most
log = logging.getLogger(__name__)


class StreamClosedError(RuntimeError):
    """Audio pushed to a stream that was closed or flushed."""


# The checkpoints shipped in the package (cpu preset, trained on synthetic talking heads), by
# the name `--checkpoint NAME` and `from_pretrained(NAME)` take: the default, a student distilled
# to 2 steps of one branch; the 8-step Joint-CFG student it was distilled from (the paper's
# sampler; tools/train_undistilled_student.sh); and the low-latency student, chunks of 0.32 s
# that keep 0.96 s of the past, distilled as the default was (tools/train_low_latency_weights.sh).
BUNDLED = {"default": "rest-cpu", "undistilled": "rest-cpu-undistilled", "low-latency": "rest-cpu-low-latency"}


def bundled_checkpoint(name: str = "default") -> Path | None:
    """The bundled checkpoint ``name`` (a key of ``BUNDLED``), or None when not installed."""
    from importlib import resources
    path = Path(str(resources.files("rest_fast") / "assets" / BUNDLED[name]))
    return path if (path / "model.safetensors").is_file() else None


def load_named_checkpoint(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> RestModel:
    """``load_checkpoint`` of a directory, or of a bundled checkpoint by name (a directory of
    that name wins); the model's ``source`` names what was asked for."""
    if not Path(name_or_path).exists() and str(name_or_path) in BUNDLED:
        path = bundled_checkpoint(str(name_or_path))
        if path is None:
            raise InputError(f"the bundled checkpoint {str(name_or_path)!r} is not in this installation: "
                             "pass a checkpoint directory")
        model = load_checkpoint(path, device)
        model.source = str(name_or_path)
        return model
    return load_checkpoint(name_or_path, device)


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is visible: use device='cpu'")
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has AMX tiles, on which oneDNN's bf16 matmuls and convolutions beat fp32
    (1.4x the DiT, 2.6x the VAE decoder: BENCHMARKS.md). AVX512-BF16 dot products alone do not
    pay: on a 2-core AMD Zen 4 VM the bundled default's chunk took 291-312 ms in bf16 against
    226-250 ms in fp32 (2026-12-02); without either, bf16 is emulated and slower still."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU (the paper preset's caches are 10.8 GiB a stream in fp32, 5.4 in bf16)
    and on a CPU with AMX (cpu_has_fast_bf16: 1.5x the fp32 chunk there); float32 on other CPUs."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
        return torch.bfloat16
    return torch.float32


def free_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (None where that cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


class StreamingGenerator:
    """The fast path of REST for up to ``capacity`` concurrent streams sharing one model.

    Every stream's caches are allocated up front for ``capacity`` streams (``bytes_per_stream``
    each: 5.4 GiB at the paper preset in bf16, 24 MiB at the cpu preset in fp32); a capacity
    whose caches would not fit in the device's free memory is refused with what would fit. On
    CUDA the chunk runs as a CUDA graph per number of open streams: call ``warmup()`` once
    before serving to capture them all, else each is captured the first time that many streams
    step together (a stall of every open stream). A sampler the checkpoint's weights were not
    made for (``steps``, ``cfg_mode``, or a stream's ``cfg_scale``; reference.pipeline.
    untrained_sampler) raises ``SamplerError``; ``force=True`` runs it with a warning."""

    def __init__(self, model: RestModel, *, capacity: int = 1, steps: int | None = None,
                 cfg_mode: str | None = None, cache_mode: str | None = None,
                 use_graphs: bool | None = None, force: bool = False):
        cfg = model.cfg
        s = cfg.sampling
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 stream, got {capacity}")
        self.model, self.cfg = model.eval(), cfg
        self.device, self.dtype = model.latent_mean.device, model.latent_mean.dtype
        # The checkpoint's sampler, with these overrides (reference.pipeline.sampler_settings):
        # one the weights were not made for is refused, here and for each stream's scale, unless
        # ``force``.
        self.force = force
        self.steps, self.cfg_mode, _ = sampler_settings(cfg, steps, cfg_mode, force=force, source=model.source)
        self.capacity = capacity
        self.branches = GUIDANCE_BRANCHES[self.cfg_mode]
        cache_mode = cache_mode or s.cache_mode
        self.bytes_per_stream = StreamCaches.bytes_per_stream(
            dtype=self.dtype, **cache_layout(cfg, branches=self.branches, steps=self.steps,
                                             cache_mode=cache_mode))
        self._check_memory(cache_mode)
        if self.device.type == "cpu":
            keep_freed_memory()     # no page faults on the chunk's large buffers (host_memory)
        self.fast = FastDiT(model.dit, capacity=capacity, branches=self.branches, steps=self.steps,
                            shift=s.shift, cache_mode=cache_mode)
        c, g, C = cfg.chunk_latent_frames, cfg.latent_size, cfg.vae.latent_channels
        sp = cfg.speech
        rows = capacity * self.branches
        # Static inputs of one chunk (and of its CUDA graph).
        self.z = torch.zeros(capacity, self.branches, C, c, g, g, device=self.device, dtype=self.dtype)
        self.audio = torch.zeros(rows, c, sp.audio_tokens_per_frame, sp.audio_dim, device=self.device,
                                 dtype=self.dtype)
        self.scales = torch.zeros(capacity, self.branches - 1, device=self.device)
        self.active = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.null_audio = model.dit.null_audio_like(1, c)[0].to(self.dtype)   # (c, h_w, d_A)
        if use_graphs is None:
            use_graphs = self.device.type == "cuda"
        self.graphs = ChunkGraphs(self.fast) if use_graphs else None
        self.streams: list[Stream] = []          # open streams, in row order
        log.info("stream caches for %d stream(s): %s (%s each) on %s", capacity,
                 gib(capacity * self.bytes_per_stream), gib(self.bytes_per_stream), self.device)

    def _check_memory(self, cache_mode: str) -> None:
        """Refuse a capacity whose caches cannot fit, before allocating any of them."""
        free, need = free_memory(self.device), self.capacity * self.bytes_per_stream
        if free is None or need <= MEMORY_HEADROOM * free:
            return
        fits = int(MEMORY_HEADROOM * free // self.bytes_per_stream)
        rings = self.steps if cache_mode == "per_step" else 1
        what = (f"capacity={self.capacity} needs {gib(need)} of stream caches ({gib(self.bytes_per_stream)} "
                f"a stream: {rings} context cache(s) x {self.branches} CFG branches x "
                f"{self.cfg.dit.depth} blocks) but {gib(free)} is free on {self.device}")
        fix = (f"use capacity={fits} or less" if fits else "no stream fits")
        raise InputError(f"{what}: {fix}; fewer steps or cache_mode='clean' (one context cache "
                         "instead of one per step) need less")

    def warmup(self) -> None:
        """Capture the chunk's CUDA graph for every number of open streams, 1 to capacity, now
        (seconds at the paper preset), so that no tick later stalls the open streams for a
        capture. Servers call it once before taking callers. No-op without graphs (CPU)."""
        if self.graphs is not None:
            with self._on_device():
                self.graphs.capture_all(self.capacity, self.z, self.audio, self.scales, self.active)

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, device: str = "auto",
                        dtype: torch.dtype | None = None, **kwargs) -> "StreamingGenerator":
        """Load a checkpoint directory (or training run), or a bundled checkpoint by name
        (``BUNDLED``: "default", the same as None, "undistilled" or "low-latency").

        dtype None: ``default_dtype(device)`` (bfloat16 on CUDA, float32 on CPU)."""
        device = resolve_device(device)
        model = load_named_checkpoint("default" if path is None else path, device)
        return cls(model.to(dtype or default_dtype(device)), **kwargs)

    @classmethod
    def random(cls, preset: str = "cpu", device: str = "auto", seed: int = 0,
               dtype: torch.dtype | None = None, **kwargs) -> "StreamingGenerator":
        """Random weights of a preset (benchmarks and tests; the video shows noise), in ``dtype``
        (None: ``default_dtype(device)``, as ``from_pretrained``)."""
        device = resolve_device(device)
        model = RestModel.random(get_config(preset), seed).to(device, dtype or default_dtype(device))
        return cls(model, **kwargs)

    # ---- streams --------------------------------------------------------------------------
    @torch.inference_mode()
    def open(self, image, seed: int = 0, text: Tensor | None = None,
             cfg_scale: float | None = None) -> "Stream":
        """A new stream for this portrait (a path, a PIL image or an (H, W, 3) uint8 array)."""
        if len(self.streams) >= self.capacity:
            raise RuntimeError(f"all {self.capacity} streams are open: close one, or create the "
                               "generator with a larger capacity")
        with self._on_device():
            stream = Stream(self, load_image(image, self.cfg.resolution), seed, text, cfg_scale)
            self.streams.append(stream)
            self.fast.open(len(self.streams) - 1, stream.ref.sink_kv, stream.ref.text)
        # The caches hold the sink now; the reference's copy (each block's v a view of its whole
        # qkv projection: 224 MiB a stream at the paper preset in bf16) would only pin memory.
        stream.ref.sink_kv = None
        return stream

    @torch.inference_mode()
    def _close(self, stream: "Stream") -> None:
        index = self.streams.index(stream)
        last = len(self.streams) - 1
        self.fast.caches.move(last, index)       # keep the open streams' rows dense
        self.streams[index] = self.streams[last]
        self.streams.pop()

    def generate(self, image, audio: np.ndarray, seed: int = 0, **kwargs) -> np.ndarray:
        """Offline: all frames for ``audio`` (float32 mono at the model's rate) in one call."""
        with self.open(image, seed=seed, **kwargs) as stream:
            parts = [stream.push(audio), stream.flush()]
        return np.concatenate(parts)

    # ---- one batched chunk ----------------------------------------------------------------
    @torch.inference_mode()
    def step(self, streams: list["Stream"] | None = None) -> list[np.ndarray]:
        """One chunk for every stream of ``streams`` (default: all open) whose next chunk's audio
        has arrived, in one batched forward. Returns each stream's new frames (a chunk's 8c, or 0)."""
        streams = self.streams if streams is None else streams
        ready = [s for s in streams if s._ready()]
        frames = self._run(ready, final=False) if ready else {}
        return [frames.get(id(s), s._no_frames()) for s in streams]

    def _on_device(self):
        """Triton launches, CUDA streams and graph captures go to the *current* CUDA device, not
        to the one the tensors live on: make it this generator's (cuda:1 would otherwise launch
        kernels on cuda:0 with cuda:1 pointers)."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def _run(self, ready: list["Stream"], final: bool) -> dict[int, np.ndarray]:
        with self._on_device():
            return self._run_on_device(ready, final)

    def _run_on_device(self, ready: list["Stream"], final: bool) -> dict[int, np.ndarray]:
        start = time.perf_counter()
        n, br = len(self.streams), self.branches
        index = [self.streams.index(s) for s in ready]
        windows = torch.stack([s._next_window() for s in ready]).to(self.device)
        tokens = self.model.audio_tokens(windows).to(self.dtype)       # (m, c, h_w, d_A)
        self.active.zero_()
        for k, (i, s) in enumerate(zip(index, ready)):
            rows = slice(i * br, (i + 1) * br)
            self.audio[rows.start] = tokens[k]
            self.audio[rows.start + 1:rows.stop] = self.null_audio
            self.active[rows] = 1
            self.z[i] = s._next_noise().to(self.device, self.dtype)
            self.scales[i] = s._scales
        if self.graphs is not None:
            self.graphs.run(n, self.z, self.audio, self.scales, self.active)
        else:
            self.fast.denoise(self.z[:n], self.audio[:n * br], self.scales[:n], self.active[:n * br])
        latents = self.model.denormalize(self.z[index, 0])
        video = decode_chunks(self.model.vae, latents, [s.ref.decode_state for s in ready])
        frames = videos_to_uint8(video)
        elapsed = time.perf_counter() - start
        out = {}
        for k, s in enumerate(ready):
            out[id(s)] = s._emit(frames[k], elapsed, final)
        return out


class Stream:
    """One caller: a portrait, its audio so far, and its place in the generator's batch."""

    def __init__(self, gen: StreamingGenerator, image: np.ndarray, seed: int, text, cfg_scale):
        self.gen, self.cfg = gen, gen.cfg
        # The reference's per-stream setup: z_R, the sink per CFG branch, the branch text, the
        # noise generator and the decoder state that has seen z_R.
        self.ref = ReferenceStream(gen.model, image, seed=seed, text=text, steps=gen.steps,
                                   cfg_scale=cfg_scale, cfg_mode=gen.cfg_mode, force=gen.force)
        s = self.cfg.sampling
        scales = {1: [], 2: [self.ref.cfg_scale], 3: [s.audio_scale, s.ref_scale]}[gen.branches]
        self._scales = torch.tensor(scales, device=gen.device)
        self._buffer = np.zeros(0, np.float32)    # audio from sample self._offset on
        self._offset = 0
        self.samples = 0                          # samples pushed so far
        self.chunks = 0                           # chunks made so far
        self.frames_out = 0
        self.closed = self.finished = False
        self.timings: collections.deque[float] = collections.deque(maxlen=TIMINGS_KEPT)

    # ---- the public side ------------------------------------------------------------------
    def feed(self, pcm) -> None:
        """Append audio without computing (for servers that batch streams with gen.step)."""
        if self.closed or self.finished:
            raise StreamClosedError("this stream was " + ("closed" if self.closed else "flushed") +
                                    ": open a new one with gen.open(image)")
        pcm = check_pcm(pcm)
        self._buffer = np.concatenate([self._buffer, pcm])
        self.samples += len(pcm)

    def push(self, pcm) -> np.ndarray:
        """Append audio (float32 mono at 16 kHz, any length) and return the frames it completes:
        uint8 (n, H, W, 3), n a multiple of the chunk's frames (0 until a chunk's audio is complete)."""
        self.feed(pcm)
        parts = [self._no_frames()]
        while self._ready():
            parts.append(self.gen.step([self])[0])
        return np.concatenate(parts)

    def flush(self) -> np.ndarray:
        """The remaining frames for the audio pushed so far (silence after its end), trimmed to
        ceil(samples / 640) frames in all. The stream then takes no more audio."""
        if self.closed:
            raise StreamClosedError("this stream was closed: open a new one with gen.open(image)")
        total = frames_for_samples(self.samples, self.cfg)
        parts = [self._no_frames()]
        with torch.inference_mode():
            while self.frames_out < total:
                parts.append(self.gen._run([self], final=True)[id(self)])
        self.finished = True
        return np.concatenate(parts)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.gen._close(self)

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def latency(self) -> dict:
        """How long a voice waits for its face here (ms), part by part: from the moment the last
        of a frame's own 1/fps of speech arrives to the moment its frame is made (a server adds
        its transport and prebuffer).

        ``speech_wait_ms``: the rest of the chunk's speech, since a chunk is made whole (its first
        frame waits the chunk less one frame, its last none; ``speech_wait_median_ms`` for the
        median frame); ``lookahead_ms``: Whisper's lookahead; ``compute_ms``: the chunk's compute
        (median of recent chunks). ``worst_ms`` and ``median_ms`` add them up for a chunk's first
        and its median frame; ``total_ms`` is the longest any sample waits (a chunk's first
        sample: the whole chunk, the lookahead, the compute)."""
        frame_ms = 1000.0 / self.cfg.fps
        chunk_ms = frame_ms * self.cfg.frames_per_chunk
        waits = [frame_ms * k for k in range(self.cfg.frames_per_chunk)]
        lookahead_ms = self.cfg.speech.lookahead_ms
        compute_ms = 1000.0 * statistics.median(self.timings) if self.timings else float("nan")
        return {"chunk_ms": chunk_ms, "speech_wait_ms": waits[-1],
                "speech_wait_median_ms": statistics.median(waits), "lookahead_ms": lookahead_ms,
                "compute_ms": compute_ms, "worst_ms": waits[-1] + lookahead_ms + compute_ms,
                "median_ms": statistics.median(waits) + lookahead_ms + compute_ms,
                "total_ms": chunk_ms + lookahead_ms + compute_ms}

    @property
    def ready(self) -> bool:
        """Whether the next chunk's audio has arrived (``gen.step`` would make it now)."""
        return self._ready()

    # ---- for the generator ----------------------------------------------------------------
    def _ready(self) -> bool:
        return not self.finished and not self.closed and self.samples >= samples_needed(self.chunks, self.cfg)

    def _next_window(self) -> Tensor:
        """Chunk ``self.chunks``'s speech window (zeros where no audio was pushed)."""
        start = window_start(self.chunks, self.cfg) - self._offset
        n = window_samples(self.cfg)
        window = np.zeros(n, np.float32)
        lo, hi = max(start, 0), min(start + n, len(self._buffer))
        if hi > lo:
            window[lo - start:hi - start] = self._buffer[lo:hi]
        # Later windows start further on: drop what no window will read again.
        keep_from = max(0, window_start(self.chunks + 1, self.cfg) - self._offset)
        self._buffer, self._offset = self._buffer[keep_from:], self._offset + keep_from
        return torch.from_numpy(window)

    def _next_noise(self) -> Tensor:
        """eps of the next chunk, from the stream's own generator (as ReferenceStream.denoise)."""
        cfg = self.cfg
        g = cfg.latent_size
        return torch.randn(1, cfg.vae.latent_channels, cfg.chunk_latent_frames, g, g,
                           generator=self.ref.generator)[0]

    def _emit(self, frames: np.ndarray, elapsed: float, final: bool) -> np.ndarray:
        self.chunks += 1
        self.timings.append(elapsed)
        if final:
            frames = frames[:max(0, frames_for_samples(self.samples, self.cfg) - self.frames_out)]
        self.frames_out += len(frames)
        return frames

    def _no_frames(self) -> np.ndarray:
        r = self.cfg.resolution
        return np.zeros((0, r, r, 3), np.uint8)


# --------------------------------------------------------------------------------------------

def check_pcm(pcm) -> np.ndarray:
    """Live audio as float32 mono; anything else is refused with what to do instead."""
    if isinstance(pcm, torch.Tensor):
        pcm = pcm.detach().cpu().numpy()
    pcm = np.asarray(pcm)
    if pcm.ndim != 1:
        raise InputError(f"push() takes mono audio, an array of shape (S,); got shape {pcm.shape}. "
                         "Mix channels first, e.g. pcm.mean(axis=1) for (S, 2)")
    if not np.issubdtype(pcm.dtype, np.floating):
        hint = " (divide int16 samples by 32768)" if pcm.dtype == np.int16 else ""
        raise InputError(f"push() takes float samples in [-1, 1] at 16 kHz; got dtype {pcm.dtype}{hint}")
    pcm = pcm.astype(np.float32, copy=False)
    if not np.isfinite(pcm).all():
        raise InputError("push() got NaN or inf samples; nothing was added, the stream is unchanged")
    return pcm


def decode_chunks(vae, latents: Tensor, states: list) -> Tensor:
    """Streaming VAE decode of one chunk for several streams in one batch.

    Each stream keeps its own bounded decoder state (reference DecodeState: the last frames of
    every causal conv); they are stacked for the batch and split back after, so the result is
    each stream's decode_stream."""
    if len(states) == 1:
        return vae.decode_stream(latents, states[0])
    from reference.vae import DecodeState
    merged = DecodeState(started=set.intersection(*(s.started for s in states)))
    for module in states[0].conv_cache:
        merged.conv_cache[module] = torch.cat([s.conv_cache[module] for s in states])
    video = vae.decode_stream(latents, merged)
    for k, s in enumerate(states):
        for module, cached in merged.conv_cache.items():
            s.conv_cache[module] = cached[k:k + 1]
    return video
