"""Micro-benchmarks of every rest_fast op against its torch twin and the best existing path.

    pytest bench/test_ops.py --benchmark [-s] [--benchmark-json out.json]

On a GPU: the paper preset's shapes in bf16, each Triton kernel against its twin, SDPA (masked or
over a concatenation), FlexAttention with a block mask and ``flash_attn_with_kvcache`` where
flash-attn is installed. Memory-bound ops report their bandwidth as a fraction of a measured
device-to-device copy (``extra_info.bandwidth_fraction``). On CPU: the cpu preset's shapes in
fp32; compiled Triton has no CPU backend (its interpreter is a correctness tool, not a timing), so
the kernel rows are skipped and the CPU fast path (the twins) is timed against the alternatives.

Targets (H100, paper preset, bf16; issue 5): sink+previous attention within 1.2x of dense SDPA
over the same number of query-key pairs and >= 1.5x faster than masked SDPA and than
concatenate-then-SDPA; block attention at least as fast as FlexAttention forward and backward;
the cache write, noise injection and CFG+Euler step at >= 80% of copy bandwidth. They are
printed by ``test_summary`` and kept in extra_info, not asserted: a benchmark measures, it does not fail.
"""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from reference.config import get_config
from reference.flow import async_timesteps
from rest_fast.ops import HAS_TRITON, force_backend
from rest_fast.ops.adaln import adaln_modulate, adaln_modulate_torch
from rest_fast.ops.async_noise import async_noise
from rest_fast.ops.audio_attention import frame_audio_attention, frame_audio_attention_torch
from rest_fast.ops.block_attention import AttentionLayout, block_attention, block_attention_torch
from rest_fast.ops.cfg_euler import cfg_euler_step_, cfg_euler_step_torch
from rest_fast.ops.kv_cache import RopeTable, kv_cache_write, kv_cache_write_torch
from rest_fast.ops.sink_attention import sink_cache_attention, sink_cache_attention_torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
PRESET = "paper" if CUDA else "cpu"
KERNEL = pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="Triton kernels are timed on a GPU "
                            "only (on CPU they run in the interpreter, which is not a timing)")
_results: dict[str, float] = {}


# ------------------------------------------------------------------------------------ helpers

def timed(benchmark, name, fn, rounds=20, **info):
    """Median seconds of fn() (synchronised on CUDA), recorded under ``name`` for ratios."""
    def run():
        fn()
        if CUDA:
            torch.cuda.synchronize()
    run()  # warm-up (compilation, autotuning, allocator)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=2)
    median = benchmark.stats.stats.median
    _results[name] = median
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if CUDA else "cpu",
                                dtype=str(DTYPE), preset=PRESET, median_us=round(median * 1e6, 1), **info)
    return median


_copy_bandwidth: float | None = None


def copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy (read + write): the achievable peak."""
    global _copy_bandwidth
    if _copy_bandwidth is None:
        n = (1 << 28) if CUDA else (1 << 24)
        src, dst = torch.empty(n, device=DEVICE), torch.empty(n, device=DEVICE)
        for _ in range(3):
            dst.copy_(src)
        if CUDA:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            dst.copy_(src)
        if CUDA:
            torch.cuda.synchronize()
        _copy_bandwidth = 2 * src.numel() * src.element_size() * 10 / (time.perf_counter() - start)
    return _copy_bandwidth


def bandwidth_info(seconds: float, bytes_moved: int) -> dict:
    achieved = bytes_moved / seconds
    return dict(gb_per_s=round(achieved / 1e9, 1), bandwidth_fraction=round(achieved / copy_bandwidth(), 3))


def randn(*shape, dtype=DTYPE):
    return torch.randn(*shape, device=DEVICE, dtype=dtype)


class Shapes:
    """The streaming and training shapes of the preset this device benchmarks."""

    def __init__(self, preset: str):
        cfg = get_config(preset)
        self.cfg = cfg
        self.B = 2                                    # CFG branches of one stream
        self.H, self.D = cfg.dit.heads, cfg.dit.head_dim
        self.hidden = cfg.dit.hidden
        self.grid = cfg.latent_size
        self.P = cfg.tokens_per_frame                 # sink tokens
        self.c = cfg.chunk_latent_frames
        self.W = cfg.prev_chunks                      # previous chunks in the cache
        self.L = self.c * self.P                      # chunk tokens
        self.A = cfg.speech.audio_tokens_per_frame
        self.C = cfg.vae.latent_channels
        self.train_chunks = 5                         # 121 frames = 1 + 15 latent frames


S = Shapes(PRESET)


# ------------------------------------------------------------------------------ 1. cache write

@pytest.fixture(scope="module")
def cache_inputs():
    start = S.W * S.c + 1
    cur = RopeTable.for_frames(torch.arange(start, start + S.c + 0.0), S.grid, S.D, 1e4).to(DEVICE)
    qkv = randn(S.B, S.L, 3, S.H, S.D)
    ring_k, ring_v = randn(S.B, S.W + 1, S.H, S.L, S.D), randn(S.B, S.W + 1, S.H, S.L, S.D)
    w = torch.ones(S.D, device=DEVICE, dtype=DTYPE)
    slot = torch.zeros(S.B, dtype=torch.long, device=DEVICE)
    return qkv, w, w, 1e-6, cur, ring_k, ring_v, slot


def cache_bytes():
    e = torch.finfo(DTYPE).bits // 8
    return e * S.B * S.L * S.H * S.D * (3 + 4) + 4 * 2 * S.L * S.D // 2  # read qkv, write q, k, ring k, v; table


@KERNEL
def test_kv_cache_write_kernel(benchmark, cache_inputs):
    with force_backend("triton"):
        t = timed(benchmark, "cache:kernel", lambda: kv_cache_write(*cache_inputs))
    benchmark.extra_info.update(bandwidth_info(t, cache_bytes()))


def test_kv_cache_write_torch(benchmark, cache_inputs):
    t = timed(benchmark, "cache:torch", lambda: kv_cache_write_torch(*cache_inputs))
    benchmark.extra_info.update(bandwidth_info(t, cache_bytes()))


# ---------------------------------------------------------------------- 2. sink + prev attention

@pytest.fixture(scope="module")
def sink_inputs():
    q, k = randn(S.B, S.H, S.L, S.D), randn(S.B, S.H, S.L, S.D)
    v = randn(S.B, S.L, S.H, S.D).transpose(1, 2)
    sink_k, sink_v = randn(S.B, S.H, S.P, S.D), randn(S.B, S.H, S.P, S.D)
    ring_k, ring_v = randn(S.B, S.W + 1, S.H, S.L, S.D), randn(S.B, S.W + 1, S.H, S.L, S.D)
    slot = torch.zeros(S.B, dtype=torch.long, device=DEVICE)
    prev_count = torch.full((S.B,), S.W, dtype=torch.long, device=DEVICE)
    window = RopeTable.for_frames(torch.arange(1, S.W * S.c + 1.0), S.grid, S.D, 1e4).to(DEVICE)
    return q, k, v, sink_k, sink_v, ring_k, ring_v, slot, prev_count, window


@KERNEL
def test_sink_attention_kernel(benchmark, sink_inputs):
    with force_backend("triton"):
        timed(benchmark, "sink:kernel", lambda: sink_cache_attention(*sink_inputs))


def test_sink_attention_dense_sdpa_same_pairs(benchmark, sink_inputs):
    """The yardstick: unmasked SDPA over as many keys as [sink | W previous | cur] (target <= 1.2x)."""
    q = sink_inputs[0]
    keys = randn(S.B, S.H, S.P + (S.W + 1) * S.L, S.D)
    timed(benchmark, "sink:dense", lambda: F.scaled_dot_product_attention(q, keys, keys))


def test_sink_attention_concat_sdpa(benchmark, sink_inputs):
    """What a user assembles from torch: gather the previous slots, rotate, concatenate, SDPA (the twin)."""
    timed(benchmark, "sink:concat", lambda: sink_cache_attention_torch(*sink_inputs))


def test_sink_attention_masked_sdpa(benchmark, sink_inputs):
    """SDPA over one static buffer [sink | every ring slot | cur] with a mask hiding the slot the
    current chunk writes (no concatenation per call, but masked-out work; keys taken as stored,
    the rotation on read left out, which flatters it)."""
    q, k, v, sink_k, sink_v, ring_k, ring_v, slot, _, _ = sink_inputs
    keys = torch.cat([sink_k, *ring_k.unbind(1), k], 2)
    values = torch.cat([sink_v, *ring_v.unbind(1), v], 2)
    mask = torch.ones(S.P + (S.W + 2) * S.L, dtype=torch.bool, device=DEVICE)
    mask[S.P:S.P + S.L] = False                     # slot 0: the one being written
    mask = mask[None, None, None, :]
    timed(benchmark, "sink:masked", lambda: F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))


def test_sink_attention_flash_attn_with_kvcache(benchmark, sink_inputs):
    flash = pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    if not CUDA:
        pytest.skip("flash-attn needs CUDA")
    q, k, v, sink_k, sink_v, ring_k, _, _, _, _ = sink_inputs
    cache_k = torch.cat([sink_k, *ring_k[:, 1:].unbind(1), k], 2).transpose(1, 2).contiguous()  # (B, P + (W+1)L, H, D)
    cache_v = cache_k.clone()
    seqlens = torch.full((S.B,), S.P + S.W * S.L, dtype=torch.int32, device=DEVICE)
    q_nhd, k_nhd, v_nhd = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    timed(benchmark, "sink:flash", lambda: flash.flash_attn_with_kvcache(
        q_nhd, cache_k, cache_v, k=k_nhd, v=v_nhd, cache_seqlens=seqlens))


# ---------------------------------------------------------------------- 3. block attention

def block_inputs(layout, grad):
    q = randn(1, S.H, layout.q_len, S.D).requires_grad_(grad)
    k = randn(1, S.H, layout.k_len, S.D).requires_grad_(grad)
    v = randn(1, S.H, layout.k_len, S.D).requires_grad_(grad)
    return q, k, v


LAYOUTS = {
    "student": lambda: AttentionLayout.student(S.train_chunks, S.P, S.L),
    "teacher": lambda: AttentionLayout.full(S.P + S.train_chunks * S.L),
}


def fwd_bwd(fn, q, k, v):
    def run():
        out = fn()
        out.backward(torch.ones_like(out))
        q.grad = k.grad = v.grad = None
    return run


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("kind", ["student", "teacher"])
@pytest.mark.parametrize("impl", ["kernel", "sdpa", "flex"])
def test_block_attention(benchmark, kind, impl, backward):
    layout = LAYOUTS[kind]()
    q, k, v = block_inputs(layout, backward)
    name = f"block:{kind}:{'fb' if backward else 'f'}:{impl}"
    if impl == "kernel":
        if not (CUDA and HAS_TRITON):
            pytest.skip("Triton kernels are timed on a GPU only")
        def fn():
            with force_backend("triton"):
                return block_attention(q, k, v, layout)
    elif impl == "sdpa":
        fn = lambda: block_attention_torch(q, k, v, layout)  # noqa: E731  (SDPA + dense mask)
    else:
        if backward and not CUDA:
            pytest.skip("FlexAttention has no backward on CPU")
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        dense = layout.dense_mask(DEVICE)

        def mask_mod(b, h, q_idx, kv_idx):
            return dense[q_idx, kv_idx]
        block_mask = create_block_mask(mask_mod, None, None, layout.q_len, layout.k_len, device=DEVICE)
        flex = torch.compile(flex_attention, dynamic=False) if CUDA else flex_attention
        fn = lambda: flex(q, k, v, block_mask=block_mask)  # noqa: E731
    run = fwd_bwd(fn, q, k, v) if backward else fn
    pairs = layout.visited_pairs()
    t = timed(benchmark, name, run, rounds=10, visited_pairs=pairs)
    flops = 4 * pairs * S.D * S.H * (3.5 if backward else 1.0)
    benchmark.extra_info["tflops"] = round(flops / t / 1e12, 2)


# ------------------------------------------------------------------ 4. audio cross-attention

@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["kernel", "sdpa"])
def test_frame_audio_attention(benchmark, impl, backward):
    frames = 1 + S.train_chunks * S.c if backward else S.B * S.c   # training clip / one chunk x CFG
    q = randn(frames, S.P, S.H, S.D).requires_grad_(backward)
    kv = randn(frames, S.A, 2, S.H, S.D).requires_grad_(backward)
    k, v = kv.unbind(2)
    if impl == "kernel":
        if not (CUDA and HAS_TRITON):
            pytest.skip("Triton kernels are timed on a GPU only")
        def fn():
            with force_backend("triton"):
                return frame_audio_attention(q, k, v)
    else:
        fn = lambda: frame_audio_attention_torch(q, k, v)  # noqa: E731
    def run_fb():
        out = fn()
        out.backward(torch.ones_like(out))
        q.grad = kv.grad = None
    name = f"audio:{'fb' if backward else 'f'}:{impl}"
    t = timed(benchmark, name, run_fb if backward else fn, rounds=10)
    bytes_moved = 2 * q.numel() * q.element_size() * (3 if backward else 1)
    benchmark.extra_info.update(bandwidth_info(t, bytes_moved))


# ------------------------------------------------------------- 5-7. elementwise and row ops

@pytest.fixture(scope="module")
def noise_inputs():
    batch = 8 if CUDA else 2
    z0 = randn(batch, S.C, 1 + S.train_chunks * S.c, S.grid, S.grid)
    t = async_timesteps(batch, S.train_chunks, S.c).to(DEVICE)
    return z0, t, randn(*z0.shape)


@pytest.mark.parametrize("impl", ["kernel", "torch"])
def test_async_noise(benchmark, impl, noise_inputs):
    if impl == "kernel" and not (CUDA and HAS_TRITON):
        pytest.skip("Triton kernels are timed on a GPU only")
    z0 = noise_inputs[0]
    with force_backend("triton" if impl == "kernel" else "torch"):
        t = timed(benchmark, f"noise:{impl}", lambda: async_noise(*noise_inputs))
    benchmark.extra_info.update(bandwidth_info(t, 4 * z0.numel() * z0.element_size()))


@pytest.mark.parametrize("impl", ["kernel", "torch"])
def test_cfg_euler_step(benchmark, impl):
    if impl == "kernel" and not (CUDA and HAS_TRITON):
        pytest.skip("Triton kernels are timed on a GPU only")
    streams = 8 if CUDA else 1
    z = randn(streams, 2, S.C, S.c, S.grid, S.grid)
    v = randn(*z.shape)
    scales = torch.full((streams, 1), 6.0, device=DEVICE)
    fn = (lambda: cfg_euler_step_(z, v, scales, -0.125)) if impl == "kernel" else \
        (lambda: cfg_euler_step_torch(z, v, scales, -0.125))
    with force_backend("triton" if impl == "kernel" else "torch"):
        t = timed(benchmark, f"euler:{impl}", fn)
    benchmark.extra_info.update(bandwidth_info(t, 5 * z[:, 0].numel() * z.element_size()))  # v x2, z, 2 writes


@pytest.mark.parametrize("impl", ["kernel", "torch"])
def test_adaln_modulate(benchmark, impl):
    if impl == "kernel" and not (CUDA and HAS_TRITON):
        pytest.skip("Triton kernels are timed on a GPU only")
    x = randn(S.B, S.c, S.P, S.hidden)
    mod = randn(S.B, S.c, 6, S.hidden)
    fn = (lambda: adaln_modulate(x, mod[:, :, 0], mod[:, :, 1])) if impl == "kernel" else \
        (lambda: adaln_modulate_torch(x, mod[:, :, 0], mod[:, :, 1]))
    with force_backend("triton" if impl == "kernel" else "torch"):
        t = timed(benchmark, f"adaln:{impl}", fn)
    benchmark.extra_info.update(bandwidth_info(t, 2 * x.numel() * x.element_size()))


# ------------------------------------------------------------------------------------ summary

RATIOS = [  # (label, numerator, denominator, target)
    ("sink attention: kernel / dense SDPA, same pairs", "sink:kernel", "sink:dense", "<= 1.2"),
    ("sink attention: masked SDPA / kernel", "sink:masked", "sink:kernel", ">= 1.5"),
    ("sink attention: concatenate + SDPA / kernel", "sink:concat", "sink:kernel", ">= 1.5"),
    ("sink attention: flash_attn_with_kvcache / kernel", "sink:flash", "sink:kernel", ""),
    ("student block attention fwd: FlexAttention / kernel", "block:student:f:flex", "block:student:f:kernel", ">= 1"),
    ("student block attention fwd+bwd: FlexAttention / kernel", "block:student:fb:flex", "block:student:fb:kernel", ">= 1"),
    ("teacher attention fwd: FlexAttention / kernel", "block:teacher:f:flex", "block:teacher:f:kernel", ">= 1"),
    ("teacher attention fwd+bwd: FlexAttention / kernel", "block:teacher:fb:flex", "block:teacher:fb:kernel", ">= 1"),
    ("student block attention fwd: SDPA + mask / kernel", "block:student:f:sdpa", "block:student:f:kernel", ""),
    ("audio attention fwd: SDPA / kernel", "audio:f:sdpa", "audio:f:kernel", ""),
    ("audio attention fwd+bwd: SDPA / kernel", "audio:fb:sdpa", "audio:fb:kernel", ""),
    ("cache write: torch / kernel", "cache:torch", "cache:kernel", ""),
    ("async noise: torch / kernel", "noise:torch", "noise:kernel", ""),
    ("CFG + Euler: torch / kernel", "euler:torch", "euler:kernel", ""),
    ("AdaLN + LayerNorm: torch / kernel", "adaln:torch", "adaln:kernel", ""),
]


def test_summary(benchmark):
    """Prints the ratios the issue's targets are stated in (for BENCHMARKS.md), and every median."""
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    lines = [f"\nrest_fast ops on {torch.cuda.get_device_name() if CUDA else 'cpu'}, {PRESET} preset, {DTYPE}:"]
    for label, num, den, target in RATIOS:
        if num in _results and den in _results:
            value = _results[num] / _results[den]
            benchmark.extra_info[label] = round(value, 3)
            lines.append(f"  {label:58s} {value:7.2f}   {('target ' + target) if target else ''}")
    lines.append("  medians (us): " + ", ".join(f"{k} {v * 1e6:.0f}" for k, v in sorted(_results.items())))
    print("\n".join(lines))
