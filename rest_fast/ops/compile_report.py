"""Every Triton kernel of rest_fast compiled for real GPUs, on any machine (no GPU needed): its
registers, spills and shared memory, and the blocks each SM can hold.

    python -m rest_fast.ops.compile_report [--out DIR] [--targets 80,90] [--quick] [--kernels a,b]

Triton compiles a kernel to PTX and a cubin for a named target (``GPUTarget("cuda", 90, 32)``);
the ``cuobjdump`` its wheel ships reads the cubin's registers, stack and shared memory. Each
kernel is compiled with the launch ``launch.py`` chooses (what runs), at the shapes of the cpu,
tiny and paper presets (their head widths, the streaming chunk, the audio tokens of a frame), in
every dtype the package runs (bf16, fp16, fp32 with each ``REST_FAST_FP32_DOT`` precision for the
kernels that multiply tiles). ``--quick`` compiles one configuration per kernel for sm_90 (CI).

Writes DIR/compile_report.md and .json (kernel, target, dtype, shapes, launch, compile time,
registers, stack, shared memory, blocks per SM, Triton version, commit) and exits 1 when a kernel
fails to compile, needs more shared memory than its target has, or spills (stack or local
memory) at the paper preset in bf16 on sm_90, the configuration that matters most.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from reference.config import get_config

from . import launch as launches
from ._triton import FP32_DOT_PRECISIONS

# Per SM: registers, shared memory a block may use (bytes), threads, blocks (CUDA's tables).
LIMITS = {80: dict(regs=65536, smem=163 * 1024, threads=2048, blocks=32),
          90: dict(regs=65536, smem=227 * 1024, threads=2048, blocks=32),
          100: dict(regs=65536, smem=227 * 1024, threads=2048, blocks=32)}
TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
FLOAT_SCALARS = {"eps", "qk_scale", "sm_scale", "dt"}
# Pointers whose element type is not the model's dtype.
POINTERS = {"slot_ptr": "i64", "prev_count_ptr": "i64", "table_ptr": "i32", "cos_ptr": "fp32",
            "sin_ptr": "fp32", "cos_cur_ptr": "fp32", "sin_cur_ptr": "fp32", "scales_ptr": "fp32",
            "t_ptr": "fp32", "lse_ptr": "fp32", "delta_ptr": "fp32", "dshift_ptr": "fp32",
            "dscale_ptr": "fp32"}
PRESETS = ("cpu", "tiny", "paper")


@dataclass
class Row:
    kernel: str
    target: int
    dtype: str
    preset: str
    constexprs: dict
    num_warps: int
    num_stages: int
    ok: bool = False
    error: str = ""
    compile_s: float = 0.0
    registers: int = 0
    stack: int = 0
    local: int = 0
    shared: int = 0
    blocks_per_sm: int = 0


def kernel_fn(name: str):
    module, kernel = name.split(":")
    return getattr(importlib.import_module(f"rest_fast.ops.{module}"), kernel)


def kernel_params(name: str) -> list[tuple[str, bool]]:
    """(parameter, is it a constexpr) of a kernel, compiled or interpreted (TRITON_INTERPRET=1
    wraps the Python function instead of parsing it)."""
    fn = kernel_fn(name)
    if hasattr(fn, "params"):
        return [(p.name, p.is_constexpr) for p in fn.params]
    return [(n, "constexpr" in str(p.annotation)) for n, p in inspect.signature(fn.fn).parameters.items()]


def configurations(name: str, preset: str, dtype: torch.dtype, precision: str, target: int) -> dict:
    """The kernel's constexprs (launch tiles included) at a preset's shapes: what its launcher
    passes when it runs that preset in that dtype on that target."""
    cfg = get_config(preset)
    D, L = cfg.dit.head_dim, cfg.chunk_latent_frames * cfg.tokens_per_frame
    fn = launches.LAUNCHES[name]
    dots = {"DOT_FP32": False, "PRECISION": precision if dtype == torch.float32 else "tf32"}
    if fn is launches.kv_cache_write_launch:
        lc, extra = fn(target, dtype, L, D), {"D": D, "HALF": D // 2}
    elif fn is launches.sink_cache_attention_launch:
        lc = fn(target, dtype, L, D)
        extra = {"D": D, "HALF": D // 2, "SLOTS": cfg.prev_chunks + 1, "USE_SINK": True, "USE_PREV": True, **dots}
    elif fn is launches.cfg_euler_launch:
        lc, extra = fn(target, dtype), {"BRANCHES": 2}
    elif fn is launches.async_noise_launch:
        lc, extra = fn(target, dtype), {}
    elif fn is launches.adaln_launch:
        lc, extra = fn(target, dtype, cfg.dit.hidden), {"D": cfg.dit.hidden}
    elif fn in (launches.frame_audio_attention_launch, launches.frame_audio_attention_bwd_launch):
        lc, extra = fn(target, dtype, cfg.speech.audio_tokens_per_frame, D), {"D": D}
    else:           # block attention, forward and backward
        lc, extra = fn(target, dtype, D), {"D": D, "RANGES": 2, **dots}
    params = {n for n, constexpr in kernel_params(name) if constexpr}
    constexprs = {k: v for k, v in {**extra, **lc.tiles}.items() if k in params}
    return {"constexprs": constexprs, "num_warps": lc.num_warps, "num_stages": lc.num_stages}


def signature(name: str, dtype: torch.dtype, constexprs: dict) -> dict:
    out = {}
    for param, constexpr in kernel_params(name):
        if constexpr:
            out[param] = "constexpr"
        elif param.endswith("_ptr"):
            out[param] = "*" + POINTERS.get(param, TYPES[dtype])
        else:
            out[param] = "fp32" if param in FLOAT_SCALARS else "i32"
    return out


def _cuobjdump() -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def blocks_per_sm(target: int, registers: int, shared: int, warps: int) -> int:
    """Resident blocks per SM from the register file (allocated per warp in units of 256), shared
    memory, threads and the block limit."""
    lim = LIMITS[target]
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = lim["regs"] // max(per_warp * warps, 1)
    by_smem = lim["smem"] // shared if shared else lim["blocks"]
    return int(min(by_regs, by_smem, lim["threads"] // (32 * warps), lim["blocks"]))


def compile_row(row: Row, dtype: torch.dtype, cache_dir: str | None = None) -> Row:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = kernel_fn(row.kernel)
    src = ASTSource(fn=fn, signature=signature(row.kernel, dtype, row.constexprs), constexprs=row.constexprs)
    start = time.perf_counter()
    saved = os.environ.get("TRITON_CACHE_DIR")
    try:
        if cache_dir:               # compiled kernels kept there (a second report is quick)
            os.environ["TRITON_CACHE_DIR"] = cache_dir
        compiled = triton.compile(src, target=GPUTarget("cuda", row.target, 32),
                                  options={"num_warps": row.num_warps, "num_stages": row.num_stages})
    except Exception as e:       # a kernel that does not build is a finding, not a crash
        message = str(e).strip()
        row.error = f"{type(e).__name__}: {message.splitlines()[-1][:300] if message else ''}"
        return row
    finally:
        if cache_dir and saved is None:
            del os.environ["TRITON_CACHE_DIR"]
        elif cache_dir:
            os.environ["TRITON_CACHE_DIR"] = saved
    row.compile_s = time.perf_counter() - start
    cubin = Path(cache_dir or "/tmp") / f"{fn.__name__}-{os.getpid()}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    usage = subprocess.run([_cuobjdump(), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
    cubin.unlink()
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    row.registers, row.stack, row.local = int(fields.get("REG", 0)), int(fields.get("STACK", 0)), int(fields.get("LOCAL", 0))
    row.shared = int(compiled.metadata.shared) + int(fields.get("SHARED", 0))
    row.blocks_per_sm = blocks_per_sm(row.target, row.registers, row.shared, row.num_warps)
    row.ok = True
    return row


def problems(row: Row) -> list[str]:
    """Why a row fails the report (empty: it passes)."""
    out = []
    if not row.ok:
        out.append(f"does not compile for sm_{row.target}: {row.error}")
        return out
    if row.shared > LIMITS[row.target]["smem"]:
        out.append(f"needs {row.shared} B of shared memory, sm_{row.target} has {LIMITS[row.target]['smem']}")
    if row.preset == "paper" and row.dtype == "bf16" and row.target == 90 and (row.stack or row.local):
        out.append(f"spills at the paper preset in bf16 on sm_90 (stack {row.stack} B, local {row.local} B)")
    return out


def plan(targets: list[int], quick: bool, only: list[str] | None = None) -> list[tuple[Row, torch.dtype]]:
    """What to compile: every kernel (or those whose name holds one of ``only``) at each target,
    preset and dtype, each distinct launch once."""
    rows, seen = [], set()
    dtypes = [(torch.bfloat16, "tf32")] if quick else \
        [(torch.bfloat16, "tf32"), (torch.float16, "tf32")] + [(torch.float32, p) for p in FP32_DOT_PRECISIONS]
    for name in launches.LAUNCHES:
        if only and not any(part in name for part in only):
            continue
        for target in ([90] if quick else targets):
            for preset in (["paper"] if quick else PRESETS):
                for dtype, precision in dtypes:
                    c = configurations(name, preset, dtype, precision, target)
                    key = (name, target, dtype, json.dumps(c, sort_keys=True))
                    if key in seen:         # the same compile at another preset or precision
                        continue
                    seen.add(key)
                    label = TYPES[dtype] + (f"/{precision}" if dtype == torch.float32 and "PRECISION" in c["constexprs"] else "")
                    rows.append((Row(name, target, label, preset, c["constexprs"], c["num_warps"], c["num_stages"]), dtype))
    return rows


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [f"Compiled for {', '.join(f'sm_{t}' for t in meta['targets'])} on {meta['device']}, Triton "
             f"{meta['triton']}, commit {meta['commit']}, {meta['date']}: `{meta['command']}`", "",
             "| kernel | target | dtype | preset | launch | compile s | registers | stack B | shared B | blocks / SM | problem |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tiles = ", ".join(f"{k}={v}" for k, v in r.constexprs.items() if k.startswith(("BLOCK", "ROWS", "HALF_P")))
        lines.append(f"| {r.kernel} | sm_{r.target} | {r.dtype} | {r.preset} | {tiles}, {r.num_warps} warps, "
                     f"{r.num_stages} stages | {r.compile_s:.1f} | {r.registers} | {r.stack} | {r.shared} | "
                     f"{r.blocks_per_sm} | {'; '.join(problems(r))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/compile_report")
    p.add_argument("--targets", default="80,90", help="compute capabilities, comma-separated (100 if Triton has it)")
    p.add_argument("--quick", action="store_true", help="one configuration per kernel, sm_90 (what CI compiles)")
    p.add_argument("--kernels", default=None, help="only kernels whose name holds one of these, comma-separated "
                   "(e.g. block_attention,adaln)")
    args = p.parse_args(argv)
    from tqdm import tqdm
    import triton
    targets = [int(t) for t in args.targets.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"targets": [90] if args.quick else targets, "triton": triton.__version__,
            "commit": os.environ.get("REST_FAST_COMMIT") or _commit(), "date": time.strftime("%Y-%m-%d"),
            "device": "CPU (no GPU: compiled, not run)", "command": "python -m rest_fast.ops.compile_report "
            + " ".join(argv if argv is not None else sys.argv[1:])}     # the code as it was when started
    rows = [compile_row(row, dtype, str(out / "triton-cache")) for row, dtype in
            tqdm(plan(targets, args.quick, args.kernels.split(",") if args.kernels else None),
                 desc="compiling", unit="kernel")]
    (out / "compile_report.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    (out / "compile_report.md").write_text(markdown(rows, meta))
    failed = [(r, why) for r in rows for why in problems(r)]
    for r, why in failed:
        print(f"rest-fast compile report: {r.kernel} ({r.dtype}, {r.preset}, sm_{r.target}) {why}", file=sys.stderr)
    print(f"{len(rows)} compiles, {len(failed)} problems; table in {out / 'compile_report.md'}")
    return 1 if failed else 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
