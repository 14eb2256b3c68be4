"""A floor for every launch of a streaming chunk: a roofline estimate, not a measurement.

    python -m rest_fast.ops.roofline [--preset paper] [--out DIR]

Each launch's floating-point operations and the bytes it must move to and from GPU memory at
least once are counted from the shapes; its floor on a GPU is the larger of FLOPs / peak FLOP/s
and bytes / peak bandwidth (dense bf16 tensor-core peaks; the elementwise kernels are bounded
by bandwidth long before they reach them). Real kernels sit above the floor; how far is what a
GPU run shows (bench/gpu_proof.py prints its measured time beside the floor of the same shape).
Not counted: launch overhead (a few microseconds each, which CUDA graphs remove), the speech
encoder, the VAE decoder and the one-off work of opening a stream (text and sink keys).

A chunk at the preset, one stream: ``steps`` DiT forwards, each over ``branches`` rows (the
bundled sampler 2 x 1; the paper's 8 steps x 2 branches of joint guidance). Per forward, per
block: two AdaLN modulations, the fused QK-norm + RoPE + ring write, sink + window attention,
the text cross-attention (torch SDPA) and the frame-level audio attention, beside the block's
linear layers (torch GEMMs, listed so that the kernels' share is seen); one more modulation at
the output; and per step the sampler's update.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from reference.config import RestConfig, get_config


@dataclass(frozen=True)
class Peak:
    flops: float            # dense bf16 FLOP/s
    bytes_per_s: float      # memory bandwidth


PEAKS = {"H100 SXM": Peak(989e12, 3.35e12), "A100": Peak(312e12, 2.0e12)}
H200 = Peak(989e12, 4.8e12)             # H100's compute, faster memory


def peak_of(device_name: str) -> tuple[str, Peak]:
    """The peaks of a GPU by its name (torch.cuda.get_device_name()); the H100's where unknown."""
    for key, name, peak in (("H200", "H200", H200), ("A100", "A100", PEAKS["A100"])):
        if key in device_name:
            return name, peak
    return "H100 SXM", PEAKS["H100 SXM"]


@dataclass(frozen=True)
class Cost:
    """One launch: what it computes and the least it must move."""
    op: str                 # the rest_fast.ops kernel (module:kernel), or what torch runs
    shape: str
    flops: float
    bytes: float

    def floor_s(self, peak: Peak) -> float:
        return max(self.flops / peak.flops, self.bytes / peak.bytes_per_s)


def kv_cache_write_cost(rows: int, L: int, H: int, D: int, elem: int = 2) -> Cost:
    """Reads q, k, v of the chunk; writes q and k normed and rotated, and k, v into the ring."""
    n = rows * L * H * D
    return Cost("kv_cache:_kv_cache_write_kernel", f"rows={rows} L={L} H={H} D={D}",
                flops=20.0 * 2 * n, bytes=elem * n * (3 + 4))


def sink_cache_attention_cost(rows: int, L: int, H: int, D: int, sink: int, W: int, elem: int = 2) -> Cost:
    """L queries against the sink, W previous chunks (their keys rotated as read) and the chunk."""
    keys = sink + (W + 1) * L
    flops = 4.0 * rows * H * L * keys * D + 6.0 * rows * H * W * L * D
    moved = rows * H * D * (2 * L + 2 * sink + 2 * W * L + 2 * L)   # q, o; sink, ring, current k, v
    return Cost("sink_attention:_sink_cache_attention_kernel",
                f"rows={rows} L={L} H={H} D={D} sink={sink} W={W}", flops=flops, bytes=elem * moved)


def frame_audio_attention_cost(rows: int, frames: int, per_frame: int, A: int, H: int, D: int,
                               elem: int = 2) -> Cost:
    """Each frame's tokens against that frame's A audio tokens."""
    L = frames * per_frame
    return Cost("audio_attention:_fwd_kernel", f"rows={rows} frames={frames} A={A} H={H} D={D}",
                flops=4.0 * rows * H * L * A * D, bytes=elem * rows * H * D * (2 * L + 2 * frames * A))


def text_attention_cost(rows: int, L: int, T: int, H: int, D: int, elem: int = 2) -> Cost:
    return Cost("torch SDPA (text cross-attention)", f"rows={rows} L={L} T={T} H={H} D={D}",
                flops=4.0 * rows * H * L * T * D, bytes=elem * rows * H * D * (2 * L + 2 * T))


def adaln_cost(rows: int, tokens: int, hidden: int, frames: int, elem: int = 2) -> Cost:
    """LayerNorm and the per-frame shift and scale: reads x and the modulation, writes x."""
    n = rows * tokens * hidden
    return Cost("adaln:_adaln_kernel", f"rows={rows} tokens={tokens} hidden={hidden}",
                flops=8.0 * n, bytes=elem * (2 * n + 2 * rows * frames * hidden))


def linear_cost(rows: int, tokens: int, weights: int, elem: int = 2) -> Cost:
    """A block's per-token linear layers: every weight read once, 2 FLOPs a weight a token."""
    return Cost("torch GEMMs (a block's linear layers)", f"rows={rows} tokens={tokens} weights={weights}",
                flops=2.0 * rows * tokens * weights, bytes=elem * weights)


def cfg_euler_cost(latent: int, branches: int, elem: int = 2) -> Cost:
    """The guided Euler step: reads the latent and each branch's velocity, writes the latent."""
    return Cost("cfg_euler:_cfg_euler_kernel", f"latent={latent} branches={branches}",
                flops=3.0 * branches * latent, bytes=elem * latent * (2 + branches))


def block_linear_weights(cfg: RestConfig) -> int:
    """Weights of one block's linear layers that run on every token (not the text and audio key /
    value projections, made once a stream and once a chunk), counted on the meta device."""
    from reference.dit import A2VDiT
    with torch.device("meta"):
        block = A2VDiT(cfg).blocks[0]
    return sum(m.weight.numel() for name, m in block.named_modules()
               if isinstance(m, torch.nn.Linear) and not name.endswith(".kv"))


def chunk_launches(cfg: RestConfig, steps: int, branches: int) -> list[tuple[Cost, int]]:
    """(cost, launches a chunk) of one stream's chunk at ``steps`` x ``branches``."""
    d = cfg.dit
    H, D, c, P = d.heads, d.head_dim, cfg.chunk_latent_frames, cfg.tokens_per_frame
    L, rows, forwards = c * P, branches, steps
    blocks = forwards * d.depth
    latent = c * cfg.vae.latent_channels * cfg.latent_size ** 2
    return [
        (adaln_cost(rows, L, d.hidden, c), blocks * 2 + forwards),
        (kv_cache_write_cost(rows, L, H, D), blocks),
        (sink_cache_attention_cost(rows, L, H, D, P, cfg.prev_chunks), blocks),
        (text_attention_cost(rows, L, d.text_tokens, H, D), blocks),
        (frame_audio_attention_cost(rows, c, P, cfg.speech.audio_tokens_per_frame, H, D), blocks),
        (linear_cost(rows, L, block_linear_weights(cfg)), blocks),
        (cfg_euler_cost(latent, branches), steps),
    ]


def table(cfg: RestConfig, samplers: dict[str, tuple[int, int]]) -> tuple[str, dict]:
    """Markdown (per launch and per chunk, each sampler, each GPU) and the same as JSON."""
    names = list(PEAKS)
    out, lines = {}, []
    for label, (steps, branches) in samplers.items():
        launches = chunk_launches(cfg, steps, branches)
        lines += [f"**{label}: {steps} steps x {branches} branch{'es' if branches > 1 else ''}** "
                  f"({steps} forwards of {branches} row{'s' if branches > 1 else ''}, {steps * branches} row-forwards; "
                  "floors are estimates: roofline, no launch overhead)", "",
                  "| launch | shape | launches a chunk | GFLOP each | MB each | "
                  + " | ".join(f"floor each, {n} (us)" for n in names)
                  + " | " + " | ".join(f"a chunk, {n} (ms)" for n in names) + " |",
                  "|---|---|---|---|---|" + "---|" * (2 * len(names))]
        totals = {n: 0.0 for n in names}
        kernels_only = {n: 0.0 for n in names}
        for cost, count in launches:
            each = {n: cost.floor_s(PEAKS[n]) for n in names}
            for n in names:
                totals[n] += each[n] * count
                if not cost.op.startswith("torch"):
                    kernels_only[n] += each[n] * count
            lines.append(f"| {cost.op} | {cost.shape} | {count} | {cost.flops / 1e9:.3f} | {cost.bytes / 1e6:.2f} | "
                         + " | ".join(f"{1e6 * each[n]:.2f}" for n in names) + " | "
                         + " | ".join(f"{1e3 * each[n] * count:.3f}" for n in names) + " |")
        for what, sums in (("rest_fast's kernels", kernels_only), ("all the above", totals)):
            cells = [f"**the chunk, {what}**"] + [""] * (4 + len(names)) + [f"**{1e3 * sums[n]:.3f}**" for n in names]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        out[label] = {"steps": steps, "branches": branches,
                      "launches": [dict(asdict(cost), count=count,
                                        floor_s={n: cost.floor_s(PEAKS[n]) for n in names})
                                   for cost, count in launches],
                      "chunk_kernels_s": kernels_only, "chunk_all_s": totals}
    return "\n".join(lines), out


SAMPLERS = {"the bundled sampler": (2, 1), "the paper's sampler": (8, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper", choices=["paper", "cpu", "tiny"])
    p.add_argument("--out", default=None, help="also write DIR/roofline.md and .json")
    args = p.parse_args(argv)
    cfg = get_config(args.preset)
    md, data = table(cfg, SAMPLERS)
    head = (f"Roofline floors of one stream's chunk at the {args.preset} preset, bf16 "
            f"({', '.join(f'{n}: {v.flops / 1e12:.0f} TFLOP/s, {v.bytes_per_s / 1e12:.2f} TB/s' for n, v in PEAKS.items())}), "
            f"{time.strftime('%Y-%m-%d')}: `python -m rest_fast.ops.roofline --preset {args.preset}`\n\n")
    print(head + md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "roofline.md").write_text(head + md)
        (out / "roofline.json").write_text(json.dumps({"preset": args.preset, "samplers": data}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
