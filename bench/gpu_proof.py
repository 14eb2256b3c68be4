"""The GPU proof: everything the fast path promises on a GPU, checked and timed in one run.

    bash bench/gpu_proof.sh OUT_DIR            # one H100/H200: the paper preset, a few minutes
    bash bench/gpu_proof.sh OUT_DIR --smoke    # any CPU: the same steps at tiny shapes (CI)

Runs from the source tree (PYTHONPATH=.) with torch and triton only: no PyAV, soundfile or
network. In order, each step recorded whether it passes or fails (a failing step does not stop
the others):

1. replay: a CUDA-graph replay of the chunk equals the eager loop, and replays are repeatable.
2. ops: every Triton kernel in bf16 at the paper preset's shapes against its torch twin in fp32,
   timed against the twin and the best existing path (SDPA, FlexAttention), with its roofline
   floor on this GPU beside it (an estimate: rest_fast/ops/roofline.py).
3. streams: several streams under graphs (joining, leaving with a close-and-move, the stream
   count changing) equal the same session run eagerly, in the per-step, clean-cache and
   three-branch modes; the same session replayed twice is bit-identical.
4. e2e: the paper preset in bf16 with random weights: first tick (graph capture) against the
   steady chunk, the DiT alone (graph replay), warm-up of every stream count, 1/2/4/8 streams,
   peak memory.
5. train: a teacher and a student training step (paper preset, bf16, batch 1, 5 chunks,
   activation checkpointing) through the reference's ops, rest_fast.apply_kernels and
   FlexAttention (bench/train_step.py): time, tokens/s, peak memory, the same loss; targets: the
   student step at least 1.5x the reference and at least as fast as FlexAttention.
6. compile: the compile report (rest_fast/ops/compile_report.py) into OUT_DIR/compile_report:
   with --smoke every configuration for sm_80, sm_90 and sm_100 (about 15 minutes on 2 cores),
   on a GPU one per kernel (--compile-report full|quick chooses).

Writes OUT_DIR/proof.json (every figure and check) and OUT_DIR/proof.md (rows ready for
BENCHMARKS.md: what, figure, device, date, commit, command). Exits 1 if any check failed.
--smoke runs the same code on the CPU (kernels in Triton's interpreter, graphs through
rest_fast.graphs.EagerRecorder) at the tiny preset, so that the script cannot rot; its timings
mean nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

SMOKE = "--smoke" in sys.argv
if SMOKE and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")   # before rest_fast defines its kernels

import torch.nn.functional as F  # noqa: E402

from reference.config import get_config  # noqa: E402
from reference.flow import async_timesteps  # noqa: E402
from reference.model import RestModel  # noqa: E402
from rest_fast import StreamingGenerator  # noqa: E402
from rest_fast.graphs import ChunkGraphs, EagerRecorder  # noqa: E402
from rest_fast.ops import HAS_TRITON, force_backend, roofline  # noqa: E402
from rest_fast.ops.adaln import adaln_modulate, adaln_modulate_torch  # noqa: E402
from rest_fast.ops.async_noise import async_noise, async_noise_torch  # noqa: E402
from rest_fast.ops.audio_attention import frame_audio_attention, frame_audio_attention_torch  # noqa: E402
from rest_fast.ops.block_attention import AttentionLayout, block_attention, block_attention_torch  # noqa: E402
from rest_fast.ops.cfg_euler import cfg_euler_step_, cfg_euler_step_torch  # noqa: E402
from rest_fast.ops.kv_cache import RopeTable, kv_cache_write, kv_cache_write_torch  # noqa: E402
from rest_fast.ops.sink_attention import sink_cache_attention, sink_cache_attention_torch  # noqa: E402

CUDA = torch.cuda.is_available() and not SMOKE
DEVICE = torch.device("cuda" if CUDA else "cpu")
BF16_RTOL = 2e-2          # kernel in bf16 vs twin in fp32: max |diff| / max |twin|
BF16_GRAD_RTOL = 6e-2
FRAME_MAX_DIFF = 1        # graphs vs eager, uint8 levels (as tests/conftest.py)
FRAME_DIFF_FRACTION = 0.005


# ------------------------------------------------------------------------------------ record

class Proof:
    def __init__(self, out: Path, command: str):
        self.out, self.command = out, command
        self.rows: list[dict] = []
        self.device = torch.cuda.get_device_name() if CUDA else "cpu (smoke run: timings mean nothing)"
        self.date = datetime.date.today().isoformat()
        self.commit = os.environ.get("REST_FAST_COMMIT") or _git_commit()

    def record(self, step: str, what: str, ok: bool | None = None, figure: str = "", **data):
        row = dict(step=step, what=what, ok=ok, figure=figure, **data)
        self.rows.append(row)
        mark = {True: "ok  ", False: "FAIL", None: "    "}[ok]
        print(f"[{mark}] {step:8s} {what}: {figure}", flush=True)

    def run(self, step: str, fn) -> None:
        start = time.perf_counter()
        try:
            fn(self)
        except Exception as e:  # a broken step is a failed check; the others still run
            self.record(step, "step raised", False, f"{type(e).__name__}: {e}",
                        traceback=traceback.format_exc())
        print(f"         {step} took {time.perf_counter() - start:.1f} s", flush=True)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["ok"] is False]

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        meta = dict(device=self.device, date=self.date, commit=self.commit, command=self.command,
                    torch=torch.__version__, smoke=SMOKE,
                    triton=getattr(sys.modules.get("triton"), "__version__", None))
        (self.out / "proof.json").write_text(json.dumps(dict(meta=meta, rows=self.rows), indent=2))
        lines = ["| step | what | figure | check | device | date | commit | command |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            check = {True: "pass", False: "**FAIL**", None: ""}[r["ok"]]
            lines.append(f"| {r['step']} | {r['what']} | {r['figure']} | {check} | {self.device} | "
                         f"{self.date} | {self.commit} | `{self.command}` |")
        (self.out / "proof.md").write_text("\n".join(lines) + "\n")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def median_ms(fn, rounds: int = 10, warmup: int = 2) -> float:
    if SMOKE:               # one call: the interpreter is not a timing, the code path is what counts
        rounds, warmup = 1, 0
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def rel_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-12)).item()


# ---------------------------------------------------------------------------- inputs, models

def speech(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(seed)
    tone = np.sin(2 * np.pi * (120 + 15 * seed) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + seed))
    return (0.3 * tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def portrait(seed: int, size: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


def random_model(preset: str, dtype: torch.dtype, **sampling) -> RestModel:
    """Random weights made on the device itself (a 2B-parameter init on the host takes minutes)."""
    import dataclasses
    cfg = get_config(preset)
    if sampling:
        cfg = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, **sampling)).validate()
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = RestModel(cfg)
    with torch.no_grad():   # open the audio path (it starts at zero) so that it is computed for real
        for block in model.dit.blocks:
            torch.nn.init.normal_(block.audio_attn.out.weight, std=0.02)
    return model.to(dtype).eval()


def with_graphs(gen: StreamingGenerator) -> StreamingGenerator:
    """On a CPU smoke run, ChunkGraphs over EagerRecorder; on a GPU the generator's own."""
    if not CUDA:
        gen.graphs = ChunkGraphs(gen.fast, recorder=EagerRecorder())
    return gen


def session(gen: StreamingGenerator, size: int) -> dict[str, np.ndarray]:
    """Two callers, a third joining, the second leaving (the third moves into its rows): the
    stream count goes 2 -> 3 -> 2. Each caller's frames."""
    a, b, c = speech(3.3, 1), speech(3.3, 7), speech(2.0, 9)
    out = {"a": [], "b": [], "c": []}
    sa, sb = gen.open(portrait(0, size), seed=10), gen.open(portrait(1, size), seed=11)
    sa.feed(a[:30000])
    sb.feed(b[:30000])
    for name, frames in zip("ab", gen.step()):
        out[name].append(frames)
    sc = gen.open(portrait(2, size), seed=12)
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


def frames_close(a: np.ndarray, b: np.ndarray) -> tuple[bool, str]:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    share = float((diff > 0).mean())
    ok = a.shape == b.shape and diff.max() <= FRAME_MAX_DIFF and share <= FRAME_DIFF_FRACTION
    return ok, f"max {int(diff.max())} levels on {100 * share:.4f}% of pixels"


# ------------------------------------------------------------------------------------- steps

SMALL = "tiny" if SMOKE else "cpu"      # the model of the equality steps
BIG = "tiny" if SMOKE else "paper"      # the model of the timing step


def step_replay(proof: Proof) -> None:
    model = random_model(SMALL, torch.bfloat16 if CUDA else torch.float32)
    size = model.cfg.resolution
    audio = speech(3.3, 1)
    eager = StreamingGenerator(model, capacity=2, use_graphs=False).generate(portrait(0, size), audio, seed=5)
    graphed = with_graphs(StreamingGenerator(model, capacity=2, use_graphs=True))
    first = graphed.generate(portrait(0, size), audio, seed=5)
    second = graphed.generate(portrait(0, size), audio, seed=5)
    ok, figure = frames_close(first, eager)
    proof.record("replay", f"chunk graph replay vs eager, {SMALL} preset, 83 frames", ok, figure)
    proof.record("replay", "second replay of the same stream is bit-identical", bool(np.array_equal(first, second)))


def _check_op(proof, name, kernel_out, twin_out, rtol=BF16_RTOL, **timings):
    diffs = [rel_diff(k, t) for k, t in zip(kernel_out, twin_out)]
    figure = f"max rel. error {max(diffs):.2e}"
    if timings:
        figure += "; " + ", ".join(f"{k} {v:.4g} ms" for k, v in timings.items())
    proof.record("ops", name, max(diffs) <= rtol, figure, rel_errors=diffs, ms=timings)


def floor_ms(cost: roofline.Cost) -> float:
    """The launch's roofline floor on this GPU (an estimate: rest_fast/ops/roofline.py), in ms,
    printed beside its measured time; a smoke run uses the H100's peaks."""
    return 1e3 * cost.floor_s(roofline.peak_of(torch.cuda.get_device_name() if CUDA else "")[1])


def _twin32(fn, *args):
    up = [a.to(torch.float32, copy=True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
          for a in args]   # copies: an in-place twin must not update the tensor under test
    return fn(*up)


def step_ops(proof: Proof) -> None:
    if not HAS_TRITON:
        proof.record("ops", "Triton is not installed", False)
        return
    cfg = get_config("tiny" if SMOKE else "paper")
    bf = torch.bfloat16
    H, D = cfg.dit.heads, cfg.dit.head_dim
    P, c, grid = cfg.tokens_per_frame, cfg.chunk_latent_frames, cfg.latent_size
    L, A, C = c * P, cfg.speech.audio_tokens_per_frame, cfg.vae.latent_channels
    B = 4 if SMOKE else 16                 # 8 streams x 2 CFG branches on the GPU
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=bf):
        return torch.randn(*shape, generator=g).to(DEVICE, dtype)

    def timed(fn, backend):
        with force_backend(backend):
            return median_ms(fn)

    # QK-norm + RoPE + ring write, then sink + window attention, at the preset's window (W = 1)
    # and at the short chunk's (1 latent frame, W = 3), with mixed slots and previous-chunk counts.
    for frames, W in ((c, cfg.prev_chunks), (1, 3)):
        Lw = frames * P
        cur = RopeTable.for_frames(torch.arange(W * frames + 1, (W + 1) * frames + 1.0), grid, D, 1e4).to(DEVICE)
        qkv, w = randn(B, Lw, 3, H, D), (1 + 0.1 * randn(D, dtype=torch.float32)).to(bf)
        slot = torch.arange(B, device=DEVICE) % (W + 1)
        rk, rv = randn(B, W + 1, H, Lw, D), randn(B, W + 1, H, Lw, D)
        rk32, rv32 = rk.float(), rv.float()
        twin = kv_cache_write_torch(qkv.float(), w.float(), w.float(), 1e-6, cur, rk32, rv32, slot)
        with force_backend("triton"):
            out = kv_cache_write(qkv, w, w, 1e-6, cur, rk, rv, slot)
        written = [t.clone() for t in (*out, rk, rv)]       # the timed runs below write the ring again
        args = (qkv, w, w, 1e-6, cur, rk, rv, slot)
        _check_op(proof, f"kv_cache_write B={B} H={H} L={Lw} D={D} W={W}, mixed slots", written,
                  [*twin, rk32, rv32], kernel=timed(lambda: kv_cache_write(*args), "triton"),
                  twin=timed(lambda: kv_cache_write_torch(*args), "torch"),
                  roofline_floor=floor_ms(roofline.kv_cache_write_cost(B, Lw, H, D)))

        # Sink + window attention at D and at 2D (half the heads).
        for heads, dim in ((H, D), (H // 2, 2 * D)):
            window = RopeTable.for_frames(torch.arange(1, W * frames + 1.0), grid, dim, 1e4).to(DEVICE)
            q, k = randn(B, heads, Lw, dim), randn(B, heads, Lw, dim)
            v = randn(B, Lw, heads, dim).transpose(1, 2)
            sk, sv = randn(B, heads, P, dim), randn(B, heads, P, dim)
            rk, rv = randn(B, W + 1, heads, Lw, dim), randn(B, W + 1, heads, Lw, dim)
            prev_count = (torch.arange(B, device=DEVICE) // 2) % (W + 1)
            args = (q, k, v, sk, sv, rk, rv, slot, prev_count, window)
            twin = _twin32(sink_cache_attention_torch, *args)
            with force_backend("triton"):
                out = sink_cache_attention(*args)
            keys = randn(B, heads, P + (W + 1) * Lw, dim)
            _check_op(proof, f"sink_cache_attention B={B} H={heads} L={Lw} P={P} D={dim} W={W}, "
                      "mixed previous-chunk counts",
                      [out], [twin], kernel=timed(lambda: sink_cache_attention(*args), "triton"),
                      concat_sdpa=timed(lambda: sink_cache_attention_torch(*args), "torch"),
                      dense_sdpa_same_pairs=median_ms(lambda: F.scaled_dot_product_attention(q, keys, keys)),
                      roofline_floor=floor_ms(roofline.sink_cache_attention_cost(B, Lw, heads, dim, P, W)))

    # LayerNorm + AdaLN.
    x, mod = randn(B, c, P, cfg.dit.hidden), randn(B, c, 6, cfg.dit.hidden)
    args = (x, mod[:, :, 0], mod[:, :, 1])
    with force_backend("triton"):
        out = adaln_modulate(*args)
    _check_op(proof, f"adaln_modulate x {tuple(x.shape)}", [out], [_twin32(adaln_modulate_torch, *args)],
              kernel=timed(lambda: adaln_modulate(*args), "triton"),
              twin=timed(lambda: adaln_modulate_torch(*args), "torch"),
              roofline_floor=floor_ms(roofline.adaln_cost(B, c * P, cfg.dit.hidden, c)))

    # Frame-level audio attention, forward and backward, over a training clip's frames.
    frames = 1 + 5 * c
    q = randn(frames, P, H, D).requires_grad_()
    kv = randn(frames, A, 2, H, D).requires_grad_()
    d_out = randn(frames, P, H, D)
    with force_backend("triton"):
        out = frame_audio_attention(q, *kv.unbind(2))
    grads = torch.autograd.grad(out, (q, kv), d_out)
    q32, kv32 = q.detach().float().requires_grad_(), kv.detach().float().requires_grad_()
    twin = frame_audio_attention_torch(q32, *kv32.unbind(2))
    twin_grads = torch.autograd.grad(twin, (q32, kv32), d_out.float())

    def fwd_bwd(backend):
        def run():
            o = frame_audio_attention(q, *kv.unbind(2))
            torch.autograd.grad(o, (q, kv), d_out)
        return timed(run, backend)
    _check_op(proof, f"frame_audio_attention forward, {frames} frames x {P} tokens, A={A}", [out], [twin],
              kernel=timed(lambda: frame_audio_attention(q, *kv.unbind(2)), "triton"),
              sdpa=timed(lambda: frame_audio_attention(q, *kv.unbind(2)), "torch"),
              roofline_floor=floor_ms(roofline.frame_audio_attention_cost(1, frames, P, A, H, D)))
    _check_op(proof, "frame_audio_attention backward", grads, twin_grads, rtol=BF16_GRAD_RTOL,
              kernel_fwd_bwd=fwd_bwd("triton"), sdpa_fwd_bwd=fwd_bwd("torch"))

    # CFG + Euler in both modes.
    streams = B // 2
    for branches in (2, 3):
        z = randn(streams, C, c, grid, grid).unsqueeze(1).repeat(1, branches, 1, 1, 1, 1)
        v = randn(*z.shape)
        scales = torch.full((streams, branches - 1), 6.0, device=DEVICE)
        z32 = z.float()
        cfg_euler_step_torch(z32, v.float(), scales, -0.125)
        with force_backend("triton"):
            stepped = cfg_euler_step_(z, v, scales, -0.125).clone()   # the timed runs step z on
        _check_op(proof, f"cfg_euler_step_ {'joint' if branches == 2 else 'multi'} CFG, {streams} streams", [stepped], [z32],
                  kernel=timed(lambda: cfg_euler_step_(z, v, scales, -0.125), "triton"),
                  twin=timed(lambda: cfg_euler_step_torch(z, v, scales, -0.125), "torch"),
                  roofline_floor=floor_ms(roofline.cfg_euler_cost(streams * C * c * grid * grid, branches)))

    # Asynchronous noise over a batch of training clips.
    z0 = randn(8 if CUDA else 2, C, 1 + 5 * c, grid, grid)
    eps, t = randn(*z0.shape), async_timesteps(z0.shape[0], 5, c, generator=g).to(DEVICE)
    with force_backend("triton"):
        out = async_noise(z0, t, eps)
    _check_op(proof, f"async_noise {tuple(z0.shape)}", out, _twin32(async_noise_torch, z0, t, eps),
              kernel=timed(lambda: async_noise(z0, t, eps), "triton"),
              twin=timed(lambda: async_noise_torch(z0, t, eps), "torch"))

    # Block attention, the student's mask and the teacher's full attention, forward + backward.
    for kind, layout in (("student", AttentionLayout.student(5, P, L)), ("teacher", AttentionLayout.full(P + 5 * L))):
        q = randn(1, H, layout.q_len, D).requires_grad_()
        k, v = randn(1, H, layout.k_len, D).requires_grad_(), randn(1, H, layout.k_len, D).requires_grad_()
        d_out = randn(1, layout.q_len, H, D)
        with force_backend("triton"):
            out = block_attention(q, k, v, layout)
        grads = torch.autograd.grad(out, (q, k, v), d_out)
        q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
        twin = block_attention_torch(q32, k32, v32, layout)
        twin_grads = torch.autograd.grad(twin, (q32, k32, v32), d_out.float())
        timings = {}
        for backend in ("triton", "torch"):
            name = "kernel" if backend == "triton" else "sdpa_mask"
            timings[name] = timed(lambda: block_attention(q, k, v, layout), backend)
            timings[name + "_fwd_bwd"] = timed(
                lambda: torch.autograd.grad(block_attention(q, k, v, layout), (q, k, v), d_out), backend)
        if CUDA:
            timings.update(_flex_timings(q, k, v, d_out, layout))
        _check_op(proof, f"block_attention {kind} forward, {layout.q_len} x {layout.k_len}", [out], [twin], **timings)
        _check_op(proof, f"block_attention {kind} backward", grads, twin_grads, rtol=BF16_GRAD_RTOL)


def _flex_timings(q, k, v, d_out, layout) -> dict:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    dense = layout.dense_mask(DEVICE)
    block_mask = create_block_mask(lambda b, h, qi, ki: dense[qi, ki], None, None, layout.q_len,
                                   layout.k_len, device=DEVICE)
    flex = torch.compile(flex_attention, dynamic=False)
    return {"flex": median_ms(lambda: flex(q, k, v, block_mask=block_mask)),
            "flex_fwd_bwd": median_ms(lambda: torch.autograd.grad(flex(q, k, v, block_mask=block_mask),
                                                                  (q, k, v), d_out.transpose(1, 2)))}


def step_streams(proof: Proof) -> None:
    dtype = torch.bfloat16 if CUDA else torch.float32
    for mode, sampling in (("per-step caches", {}), ("clean cache", {"cache_mode": "clean"}),
                           ("three-branch CFG", {"cfg_mode": "multi"})):
        model = random_model(SMALL, dtype, **sampling)
        size = model.cfg.resolution
        eager = session(StreamingGenerator(model, capacity=3, use_graphs=False), size)
        gen = with_graphs(StreamingGenerator(model, capacity=3, use_graphs=True))
        graphed = session(gen, size)
        again = session(gen, size)
        results = [frames_close(graphed[k], eager[k]) for k in "abc"]
        proof.record("streams", f"{mode}: 3 callers under graphs (join, close-and-move, 2 -> 3 -> 2 streams) vs eager",
                     all(ok for ok, _ in results), "; ".join(f"{k}: {f}" for k, (_, f) in zip("abc", results)))
        proof.record("streams", f"{mode}: the session again on the same graphs is bit-identical",
                     all(np.array_equal(graphed[k], again[k]) for k in "abc"))


def step_e2e(proof: Proof) -> None:
    dtype = torch.bfloat16 if CUDA else torch.float32
    model = random_model(BIG, dtype)
    cfg = model.cfg
    size, chunk_s = cfg.resolution, cfg.frames_per_chunk / cfg.fps
    counts = (1, 2, 4, 8) if CUDA else (1, 2)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    gen = with_graphs(StreamingGenerator(model, capacity=max(counts)))
    proof.record("e2e", f"{BIG} preset, {dtype}: stream caches", None,
                 f"{gen.bytes_per_stream / 2**30:.2f} GiB a stream, {max(counts)} allocated")
    first_audio, piece = speech(1.2), speech(cfg.samples_per_chunk / 16000, 3)

    stream = gen.open(portrait(0, size))
    start = time.perf_counter()
    frames = stream.push(first_audio)
    sync()
    first = 1e3 * (time.perf_counter() - start)
    proof.record("e2e", "first tick of one stream (kernel compilation + graph capture + chunk)",
                 len(frames) == cfg.frames_per_chunk, f"{first:.0f} ms")
    steady = median_ms(lambda: stream.push(piece), rounds=10, warmup=1)
    proof.record("e2e", "steady chunk, one stream, end to end (speech, DiT, decode, uint8 on host)",
                 None, f"{steady:.1f} ms (RTF {steady / 1e3 / chunk_s:.3f})")
    with torch.inference_mode():     # as the generator runs it
        gen.active.zero_()           # replay without changing the stream's state
        dit = median_ms(lambda: gen.graphs.run(1, gen.z, gen.audio, gen.scales, gen.active), rounds=20)
    # The floor of the same DiT work (an estimate: the kernels, the GEMMs and the text SDPA of
    # rest_fast/ops/roofline.py at this preset and sampler) on this GPU.
    floor = sum(count * floor_ms(cost) for cost, count in roofline.chunk_launches(cfg, gen.steps, gen.branches))
    proof.record("e2e", f"DiT alone, one stream ({gen.steps} steps x {gen.branches} branches, graph replay)",
                 None, f"{dit:.1f} ms; roofline floor {floor:.3g} ms ({dit / floor:.0f}x)", ms={"dit": dit, "roofline_floor": floor})
    stream.close()

    start = time.perf_counter()
    gen.warmup()
    sync()
    proof.record("e2e", f"warmup(): capture for 2..{max(counts)} streams", sorted(gen.graphs.replays) ==
                 list(range(1, max(counts) + 1)), f"{time.perf_counter() - start:.1f} s")
    for n in counts:
        streams = [gen.open(portrait(i, size), seed=i) for i in range(n)]
        for s in streams:
            s.feed(first_audio)
        gen.step()

        def tick():
            for s in streams:
                s.feed(piece)
            made = gen.step()
            assert all(len(f) == cfg.frames_per_chunk for f in made)
        t = median_ms(tick, rounds=5, warmup=1)
        proof.record("e2e", f"{n} stream(s): one tick (a chunk for each)", None,
                     f"{t:.0f} ms, {n / t * 1e3:.2f} chunks/s, {'real time' if t / 1e3 <= chunk_s else 'slower than real time'}")
        for s in streams:
            s.close()
    if CUDA:
        proof.record("e2e", "peak memory allocated", None, f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def step_train(proof: Proof) -> None:
    from bench.train_step import measure
    if CUDA:
        settings = dict(preset="paper", device="cuda", dtype=torch.bfloat16, batch=1, num_chunks=5,
                        grad_checkpoint=True, rounds=5, warmup=2)
    else:   # smoke: the kernels through the interpreter, at the tiny preset
        settings = dict(preset="tiny", device="cpu", dtype=torch.float32, batch=1, num_chunks=2,
                        rounds=1, warmup=0, paths=("reference", "kernels"))
    with force_backend("triton" if HAS_TRITON else None):
        results = measure(**settings)
    by = {(r.stage, r.path): r for r in results}
    for r in results:
        ref = by[(r.stage, "reference")]
        same = abs(r.loss - ref.loss) <= (2e-2 if CUDA else 1e-3) * abs(ref.loss)
        peak = f", peak {r.peak_gib:.1f} GiB" if r.peak_gib is not None else ""
        proof.record("train", f"{r.stage} step, {r.path} ({settings['preset']}, batch {settings['batch']}, "
                     f"{settings['num_chunks']} chunks)", same,
                     f"{r.ms:.1f} ms, {r.tokens_per_s:,.0f} tokens/s, {ref.ms / r.ms:.2f}x the reference{peak}; "
                     f"loss {r.loss:.4f} vs {ref.loss:.4f}")
    if CUDA:
        kernels, ref, flex = (by[("student", p)] for p in ("kernels", "reference", "flex"))
        proof.record("train", "target: student step >= 1.5x the reference", ref.ms / kernels.ms >= 1.5,
                     f"{ref.ms / kernels.ms:.2f}x")
        proof.record("train", "target: student step at least as fast as FlexAttention",
                     kernels.ms <= flex.ms, f"{flex.ms / kernels.ms:.2f}x FlexAttention's speed")


COMPILE_TARGETS = "80,90,100"


def step_compile(proof: Proof) -> None:
    """The compile report (rest_fast/ops/compile_report.py) into OUT/compile_report: every
    kernel built for sm_80, sm_90 and sm_100 in every configuration the package can launch
    (``--compile-report full``, the default of a smoke run), or one configuration per kernel
    for sm_90 (``quick``, the default on a GPU, whose minutes go to timing). In a child process:
    Triton's interpreter, which a smoke run uses, cannot compile."""
    quick = proof.compile_report == "quick"
    out = proof.out / "compile_report"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "rest_fast.ops.compile_report", "--out", str(out),
               *(["--quick"] if quick else ["--targets", COMPILE_TARGETS])]
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    path = out / "compile_report.json"
    if not path.exists():
        proof.record("compile", "the compile report did not run", False, (run.stderr or run.stdout)[-500:])
        return
    rows = json.loads(path.read_text())["rows"]
    problems = [line for line in run.stderr.splitlines() if line.startswith("rest-fast compile report:")]
    spills = [r for r in rows if r["ok"] and (r["stack"] or r["local"])]
    fewest = min((r for r in rows if r["ok"] and r["preset"] == "paper" and r["dtype"] == "bf16" and r["target"] == 90),
                 key=lambda r: r["blocks_per_sm"], default=None)
    figure = (f"{len(rows)} compiles, {len(problems)} problems; {len(spills)} configurations spill outside "
              f"the gate (paper bf16 sm_90)" + (f"; fewest blocks per SM at paper bf16 sm_90: "
                                                f"{fewest['blocks_per_sm']} ({fewest['kernel']})" if fewest else "")
              + f"; table in {out / 'compile_report.md'}")
    proof.record("compile", f"every kernel compiled ({'quick: sm_90, paper, bf16' if quick else 'full: sm_' + COMPILE_TARGETS.replace(',', ', sm_')})",
                 run.returncode == 0 and not problems, figure, problems=problems)


STEPS = {"replay": step_replay, "ops": step_ops, "streams": step_streams, "e2e": step_e2e,
         "train": step_train, "compile": step_compile}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for proof.json and proof.md")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (CI)")
    parser.add_argument("--only", nargs="*", choices=list(STEPS), help="run only these steps")
    parser.add_argument("--compile-report", choices=["full", "quick"], default=None,
                        help="the compile step: every configuration (default with --smoke) or one per kernel "
                             "(default on a GPU)")
    args = parser.parse_args(argv)
    if args.smoke != SMOKE:
        raise SystemExit("--smoke must be given on the command line (it decides Triton's interpreter at import)")
    if not CUDA and not SMOKE:
        raise SystemExit("no CUDA GPU is visible: the proof needs one (or --smoke for a CPU dry run)")
    proof = Proof(Path(args.out), "bash bench/gpu_proof.sh OUT" + (" --smoke" if SMOKE else "")
                  + (f" --compile-report {args.compile_report}" if args.compile_report else ""))
    proof.compile_report = args.compile_report or ("full" if SMOKE else "quick")
    print(f"GPU proof on {proof.device}, commit {proof.commit}, torch {torch.__version__}", flush=True)
    torch.manual_seed(0)
    for name in args.only or STEPS:
        proof.run(name, STEPS[name])
        proof.write()           # after every step: a run cut short still leaves its figures
    print(f"{len(proof.rows)} rows, {len(proof.failed)} failed; written to {args.out}/proof.md and proof.json")
    return 1 if proof.failed else 0


if __name__ == "__main__":
    sys.exit(main())
