"""QK-norm + 3D RoPE + ring-buffer KV cache write, in one pass over the chunk's q, k, v.

The student's self-attention (eq. 7-12) for chunk i needs, per block:

* q and k of chunk i, RMS-normalised per head and rotated to the *current* window positions
  (frames W*c+1..(W+1)*c, see docs/model-semantics.md);
* the K/V of the W chunks before it, each rotated to its place in the window (the chunk a back at
  frames (W-a)*c+1..(W-a+1)*c).

A cached chunk is read at W places as it ages, so the ring stores its keys RMS-normalised but not
rotated (pre-RoPE, as the reference's ChunkCacheAttention holds them), and the attention kernel
rotates them to their place when it reads them (sink_attention.py). Positions never grow.

The ring is W + 1 slots per row and block, ``ring_k, ring_v: (B, W + 1, H, L, D)`` (row-major, so
the rows of the first n streams are one contiguous view). ``slot`` (B,) is a device tensor: row b
writes slot ``slot[b]`` and the attention reads the chunk a back from slot ``slot[b] - a`` (mod
W + 1), so chunk after chunk the same kernels (and a captured CUDA graph) run with no host round
trip; the caller advances ``slot`` on the device after each chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.dit import apply_rope, rope_angles

from ._triton import require_triton, tl, triton, use_triton
from .launch import kv_cache_write_launch, target_of


@dataclass
class RopeTable:
    """Rotation of L tokens: ``angles`` (L, D/2) as the reference uses them, and their fp32
    cos/sin for the kernels."""
    angles: Tensor
    cos: Tensor
    sin: Tensor

    @classmethod
    def for_frames(cls, frame_pos: Tensor, grid: int, head_dim: int, theta: float) -> "RopeTable":
        angles = rope_angles(frame_pos, grid, head_dim, theta)
        return cls(angles, angles.cos().float().contiguous(), angles.sin().float().contiguous())

    def to(self, device) -> "RopeTable":
        return RopeTable(self.angles.to(device), self.cos.to(device), self.sin.to(device))


def split_qkv(qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B, L, 3, H, D) -> q, k, v as (B, H, L, D) views (no copy)."""
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def kv_cache_write_torch(qkv: Tensor, q_weight: Tensor, k_weight: Tensor, eps: float,
                         cur: RopeTable, ring_k: Tensor, ring_v: Tensor, slot: Tensor) -> tuple[Tensor, Tensor]:
    q, k, v = split_qkv(qkv)
    D = q.shape[-1]
    q = apply_rope(F.rms_norm(q, (D,), q_weight, eps), cur.angles)
    k_normed = F.rms_norm(k, (D,), k_weight, eps)
    rows = torch.arange(qkv.shape[0], device=qkv.device)
    ring_k[rows, slot.long()] = k_normed.to(ring_k.dtype)
    ring_v[rows, slot.long()] = v.to(ring_v.dtype)
    return q.contiguous(), apply_rope(k_normed, cur.angles).contiguous()


@triton.jit
def _norm_rows(x1, x2, w1, w2, eps, D: tl.constexpr):
    """RMS norm over the head dim of rows split in halves [x1 | x2] (fp32)."""
    ms = (tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / D
    r = 1.0 / tl.sqrt(ms + eps)
    return x1 * r[:, None] * w1[None, :], x2 * r[:, None] * w2[None, :]


@triton.jit
def _kv_cache_write_kernel(
        qkv_ptr, s_qkv_b, s_qkv_l, s_qkv_3, s_qkv_h,
        qw_ptr, kw_ptr, eps,
        cos_cur_ptr, sin_cur_ptr,
        q_out_ptr, k_out_ptr, ring_k_ptr, ring_v_ptr, slot_ptr,
        B, H, L, SLOTS,
        D: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_l, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.arange(0, HALF_P)
    row_ok, col_ok = rows < L, cols < HALF
    mask = row_ok[:, None] & col_ok[None, :]

    src = qkv_ptr + b.to(tl.int64) * s_qkv_b + h * s_qkv_h + rows[:, None] * s_qkv_l + cols[None, :]
    table = rows[:, None] * HALF + cols[None, :]
    cos_cur = tl.load(cos_cur_ptr + table, mask=mask, other=0.0)
    sin_cur = tl.load(sin_cur_ptr + table, mask=mask, other=0.0)
    qw1 = tl.load(qw_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    qw2 = tl.load(qw_ptr + HALF + cols, mask=col_ok, other=0.0).to(tl.float32)
    kw1 = tl.load(kw_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    kw2 = tl.load(kw_ptr + HALF + cols, mask=col_ok, other=0.0).to(tl.float32)

    # Outputs (B, H, L, D) and the ring slot (b, slot[b], h, :, :) of (B, SLOTS, H, L, D).
    dst = (pid_bh.to(tl.int64) * L + rows[:, None]) * D + cols[None, :]
    slot = tl.load(slot_ptr + b).to(tl.int64)
    ring = ((b.to(tl.int64) * SLOTS + slot) * H + h) * L * D + rows[:, None] * D + cols[None, :]

    # q: norm, rotate to the current positions.
    q1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    q2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    q1, q2 = _norm_rows(q1, q2, qw1, qw2, eps, D)
    out_ty = q_out_ptr.dtype.element_ty
    tl.store(q_out_ptr + dst, (q1 * cos_cur - q2 * sin_cur).to(out_ty), mask=mask)
    tl.store(q_out_ptr + dst + HALF, (q1 * sin_cur + q2 * cos_cur).to(out_ty), mask=mask)

    # k: norm once; rotate to the current positions (this chunk's attention); into the ring as
    # normalised (the chunks after it rotate it to where they read it).
    k1 = tl.load(src + s_qkv_3, mask=mask, other=0.0).to(tl.float32)
    k2 = tl.load(src + s_qkv_3 + HALF, mask=mask, other=0.0).to(tl.float32)
    k1, k2 = _norm_rows(k1, k2, kw1, kw2, eps, D)
    tl.store(k_out_ptr + dst, (k1 * cos_cur - k2 * sin_cur).to(out_ty), mask=mask)
    tl.store(k_out_ptr + dst + HALF, (k1 * sin_cur + k2 * cos_cur).to(out_ty), mask=mask)
    ring_ty = ring_k_ptr.dtype.element_ty
    tl.store(ring_k_ptr + ring, k1.to(ring_ty), mask=mask)
    tl.store(ring_k_ptr + ring + HALF, k2.to(ring_ty), mask=mask)

    # v: copied as is.
    v_src = src + 2 * s_qkv_3
    tl.store(ring_v_ptr + ring, tl.load(v_src, mask=mask, other=0.0).to(ring_ty), mask=mask)
    tl.store(ring_v_ptr + ring + HALF, tl.load(v_src + HALF, mask=mask, other=0.0).to(ring_ty), mask=mask)


def kv_cache_write(qkv: Tensor, q_weight: Tensor, k_weight: Tensor, eps: float, cur: RopeTable,
                   ring_k: Tensor, ring_v: Tensor, slot: Tensor) -> tuple[Tensor, Tensor]:
    """qkv (B, L, 3, H, D), the output of the qkv projection viewed per head (any strides with a
    unit stride on D); q_weight, k_weight (D,) RMSNorm gains; cur: rotation of the L tokens to the
    current positions; ring_k, ring_v (B, W + 1, H, L, D); slot (B,) int.

    Writes ring[b, slot[b]] = (normalised k, v) for every row b and returns q and k rotated to the
    current positions, (B, H, L, D) contiguous."""
    B, L, three, H, D = qkv.shape
    if three != 3 or ring_k.shape[:1] + ring_k.shape[2:] != (B, H, L, D) or ring_v.shape != ring_k.shape:
        raise ValueError(f"kv_cache_write: qkv {tuple(qkv.shape)} must be (B, L, 3, H, D) and the ring "
                         f"(B, W + 1, H, L, D), got {tuple(ring_k.shape)}")
    if D % 2 or cur.cos.shape != (L, D // 2):
        raise ValueError(f"kv_cache_write: the rotation table must be (L, D/2) = ({L}, {D // 2})")
    if not use_triton(qkv):
        return kv_cache_write_torch(qkv, q_weight, k_weight, eps, cur, ring_k, ring_v, slot)
    require_triton("kv_cache_write")
    if qkv.stride(-1) != 1 or not (ring_k.is_contiguous() and ring_v.is_contiguous()):
        raise ValueError("kv_cache_write: qkv needs a unit stride on D and the ring must be contiguous")
    q_out = torch.empty(B, H, L, D, device=qkv.device, dtype=qkv.dtype)
    k_out = torch.empty_like(q_out)
    half = D // 2
    launch = kv_cache_write_launch(target_of(qkv.device), qkv.dtype, L, D)
    grid = (triton.cdiv(L, launch.tiles["BLOCK_L"]), B * H)
    _kv_cache_write_kernel[grid](
        qkv, qkv.stride(0), qkv.stride(1), qkv.stride(2), qkv.stride(3),
        q_weight, k_weight, float(eps),
        cur.cos, cur.sin,
        q_out, k_out, ring_k, ring_v, slot,
        B, H, L, ring_k.shape[1], D=D, HALF=half, **launch.tiles, **launch.options)
    return q_out, k_out
