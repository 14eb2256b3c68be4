"""How every Triton kernel of rest_fast is launched: one pure function of (target, dtype, shapes)
per kernel, which its launcher calls, and which the compile report and the GPU proof read, so
that what is checked is what runs.

A launch is the kernel's tile sizes (its ``tl.constexpr`` meta-parameters that are sizes) with
``num_warps`` and ``num_stages``. ``target`` is the GPU's compute capability as an integer (80 for
an A100, 90 for an H100), or None for Triton's interpreter on a CPU, which has no registers or
shared memory to fit. No kernel autotunes: each choice is listed here.

``LAUNCHES`` names every kernel (``module:kernel``) with its function; a test fails when a kernel
in ``rest_fast/ops`` has no entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._triton import next_power_of_2


@dataclass(frozen=True)
class Launch:
    """A kernel's tile sizes (constexpr meta-parameters) and its warps and pipeline stages."""
    tiles: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3

    @property
    def options(self) -> dict:
        """What goes into the launch besides the tiles: ``kernel[grid](..., **tiles, **options)``."""
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}


def target_of(device: torch.device) -> int | None:
    """The compute capability of a CUDA device as an integer (8, 0 -> 80); None elsewhere."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _head_block(D: int) -> int:
    return max(16, next_power_of_2(D))


# ---- streaming -------------------------------------------------------------------------------

def kv_cache_write_launch(target: int | None, dtype: torch.dtype, L: int, D: int) -> Launch:
    """kv_cache.py: one program per (tile of L tokens, row x head), the head in two halves."""
    return Launch({"BLOCK_L": min(64, next_power_of_2(L)), "HALF_P": next_power_of_2(D // 2)})


def _fp32_on_gpu(target: int | None, dtype: torch.dtype) -> bool:
    """fp32 tiles hold twice the registers of bf16 ones, and 3xTF32 / IEEE dots split each
    operand: at tiles of 64 every attention kernel spilled 1-11 KiB on sm_80/90/100 in fp32
    (compile_report). The interpreter (None) keeps one choice for every dtype."""
    return target is not None and dtype == torch.float32


def sink_cache_attention_launch(target: int | None, dtype: torch.dtype, L: int, D: int) -> Launch:
    """sink_attention.py: one program per (tile of L queries, row x head); keys in tiles of
    BLOCK_N, read as halves of the head (HALF_P, at least 16 for tl.dot). Tiles of 32 in fp32
    on a GPU."""
    block = min(32 if _fp32_on_gpu(target, dtype) else 64, max(16, next_power_of_2(L)))
    return Launch({"BLOCK_M": block, "BLOCK_N": block, "BLOCK_D": _head_block(D),
                   "HALF_P": max(16, next_power_of_2(D // 2))})


def cfg_euler_launch(target: int | None, dtype: torch.dtype) -> Launch:
    """cfg_euler.py: 1024 latent values a program (elementwise)."""
    return Launch({"BLOCK": 1024})


# ---- training --------------------------------------------------------------------------------

def async_noise_launch(target: int | None, dtype: torch.dtype) -> Launch:
    """async_noise.py: 1024 latent values a program (elementwise)."""
    return Launch({"BLOCK": 1024})


def adaln_launch(target: int | None, dtype: torch.dtype, D: int) -> Launch:
    """adaln.py, forward and backward: ROWS tokens a step, the whole hidden width at once. On
    sm_100, rows of 2048 or more over 8 warps: at 4 the backward sat at 255 registers and spilled
    88 B at the paper preset's 2048 (one block of 8 warps an SM then, as many warps as two of 4).
    On sm_80/90 4 warps hold it without a spill, two blocks an SM; 8 would leave one."""
    block = next_power_of_2(D)
    return Launch({"BLOCK_D": block, "ROWS": 4}, num_warps=8 if target == 100 and block >= 2048 else 4)


def frame_audio_attention_launch(target: int | None, dtype: torch.dtype, A: int, D: int) -> Launch:
    """audio_attention.py, forward and backward: a frame's queries in tiles of BLOCK_P against
    its A audio tokens at once."""
    return Launch({"BLOCK_P": 32, "BLOCK_A": next_power_of_2(A), "BLOCK_D": next_power_of_2(D)})


def frame_audio_attention_bwd_launch(target: int | None, dtype: torch.dtype, A: int, D: int) -> Launch:
    """audio_attention.py's backward: one program per (frame, head) walks the frame's queries in
    tiles of 16 with 2 warps. At tiles of 32 with 4 warps it sat at 255 registers and spilled
    24 B at the paper preset in bf16 on sm_90 (compile_report); at 16 and 2 warps it holds 188
    registers, no spill, 5 blocks an SM."""
    return Launch({"BLOCK_P": 16, "BLOCK_A": next_power_of_2(A), "BLOCK_D": next_power_of_2(D)}, num_warps=2)


def block_attention_launch(target: int | None, dtype: torch.dtype, D: int) -> Launch:
    """block_attention.py's forward: query and key tiles of 64, 32 in fp32 on a GPU (the host
    cuts the layout's segments into tiles of these sizes, for each kernel its own)."""
    block = 32 if _fp32_on_gpu(target, dtype) else 64
    return Launch({"BLOCK_M": block, "BLOCK_N": block, "BLOCK_D": _head_block(D)})


def block_attention_bwd_launch(target: int | None, dtype: torch.dtype, D: int) -> Launch:
    """block_attention.py's three backward kernels: as the forward, but query tiles of 32 on
    sm_80, where dK and dV's accumulators beside a 64-query tile spilled 264 B in bf16."""
    launch = block_attention_launch(target, dtype, D)
    if target == 80:
        return Launch({**launch.tiles, "BLOCK_M": 32}, launch.num_warps, launch.num_stages)
    return launch


# Every kernel, by module and name, with the function that decides its launch.
LAUNCHES = {
    "kv_cache:_kv_cache_write_kernel": kv_cache_write_launch,
    "sink_attention:_sink_cache_attention_kernel": sink_cache_attention_launch,
    "cfg_euler:_cfg_euler_kernel": cfg_euler_launch,
    "async_noise:_async_noise_kernel": async_noise_launch,
    "adaln:_adaln_kernel": adaln_launch,
    "adaln:_adaln_bwd_kernel": adaln_launch,
    "audio_attention:_fwd_kernel": frame_audio_attention_launch,
    "audio_attention:_bwd_kernel": frame_audio_attention_bwd_launch,
    "block_attention:_fwd_kernel": block_attention_launch,
    "block_attention:_bwd_delta_kernel": block_attention_bwd_launch,
    "block_attention:_bwd_dkdv_kernel": block_attention_bwd_launch,
    "block_attention:_bwd_dq_kernel": block_attention_bwd_launch,
}
