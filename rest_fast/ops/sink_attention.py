"""Streaming self-attention of one chunk over [sink | W previous chunks | current chunk] (eq. 10-12).

The queries of the current chunk attend to three key/value sources read where they live:

    sink_k, sink_v   (B, H, P, D)          the ID sink, post-RoPE, computed once per stream (per CFG branch)
    ring_k, ring_v   (B, W + 1, H, L, D)   the chunk a back (a = 1..W) in slot slot[b] - a (mod W + 1),
                                           its keys pre-RoPE (kv_cache.py), rotated here by ``window``
                                           to frames (W-a)*c+1.. as they are read
    k, v             (B, H, L, D)          the current chunk (k rotated to frames W*c+1..)

with one online softmax across them (FlashAttention-style), so the concatenation [sink | prev |
cur] of the reference is never materialised. ``prev_count`` (B,) is read on the device: how many
previous chunks row b has (0 for a stream's first chunk, then up to W); the same compiled kernel
skips the ranges it lacks. ``use_sink`` / ``use_prev`` are the ablation switches of Table 2
(DiTConfig.student_sink/_prev).

Keys are read as two halves [k1 | k2] (RoPE's rotate-half layout), so the rotation is two
multiply-adds per element on the loaded tile, and each score is q1 k1^T + q2 k2^T.

The torch twin gathers the W previous slots, rotates them as the reference does, concatenates
(oldest first) and calls SDPA with a mask for the chunks a row lacks; with no masked rows it is
exactly the reference's ChunkCacheAttention.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.dit import apply_rope

from ._triton import dot_in_fp32, dot_precision, require_triton, tl, triton, use_triton
from .kv_cache import RopeTable
from .launch import sink_cache_attention_launch, target_of


def sink_cache_attention_torch(q: Tensor, k: Tensor, v: Tensor, sink_k: Tensor, sink_v: Tensor,
                               ring_k: Tensor, ring_v: Tensor, slot: Tensor, prev_count: Tensor,
                               window: RopeTable, use_sink: bool = True, use_prev: bool = True) -> Tensor:
    B, H, L, D = q.shape
    slots = ring_k.shape[1]
    rows = torch.arange(B, device=q.device)
    keys, values, allowed = [], [], []
    if use_sink:
        keys.append(sink_k)
        values.append(sink_v)
        allowed.append(torch.ones(B, sink_k.shape[2], dtype=torch.bool, device=q.device))
    if use_prev:
        for age in range(slots - 1, 0, -1):            # oldest first, as the reference's cache
            src = (slot.long() - age) % slots
            place = (slots - 1 - age) * L               # its frames in the window
            keys.append(apply_rope(ring_k[rows, src], window.angles[place:place + L]))
            values.append(ring_v[rows, src])
            allowed.append((prev_count >= age)[:, None].expand(B, L))
    keys.append(k)
    values.append(v)
    allowed.append(torch.ones(B, L, dtype=torch.bool, device=q.device))
    mask = torch.cat(allowed, dim=1)[:, None, None, :]
    # Dropping an all-True mask keeps CPU runs bit-equal to the reference; on CUDA the check
    # would be a host sync, which a CUDA graph capture (force_backend("torch")) forbids.
    if not q.is_cuda and bool(mask.all()):
        mask = None
    out = F.scaled_dot_product_attention(q, torch.cat(keys, 2).to(q.dtype), torch.cat(values, 2).to(q.dtype),
                                         attn_mask=mask)
    return out.transpose(1, 2).contiguous()  # (B, L, H, D)


@triton.jit
def _attend(acc, m_i, l_i, q1, q2, qk_scale, k_base, v_base, s_kn, s_vn, n_keys, offs_h, h_ok,
            offs_d, d_ok, cos_ptr, sin_ptr, ROTATE: tl.constexpr, HALF: tl.constexpr,
            BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """Online-softmax accumulation of q = [q1 | q2] over n_keys keys at k_base + n * s_kn (values
    at v_base + n * s_vn); with ROTATE, key n is first rotated by row n of the (n_keys, HALF)
    cos/sin tables, rounded to its dtype as the reference's apply_rope rounds it.
    qk_scale = log2(e) / sqrt(D), so exp2 gives the softmax's exp."""
    for start in range(0, n_keys, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_keys
        k_mask = n_ok[:, None] & h_ok[None, :]
        k_rows = k_base + offs_n[:, None] * s_kn + offs_h[None, :]
        k1 = tl.load(k_rows, mask=k_mask, other=0.0)
        k2 = tl.load(k_rows + HALF, mask=k_mask, other=0.0)
        if ROTATE:
            table = offs_n[:, None] * HALF + offs_h[None, :]
            cos = tl.load(cos_ptr + table, mask=k_mask, other=0.0)
            sin = tl.load(sin_ptr + table, mask=k_mask, other=0.0)
            k1f, k2f = k1.to(tl.float32), k2.to(tl.float32)
            k1 = (k1f * cos - k2f * sin).to(k_base.dtype.element_ty)
            k2 = (k1f * sin + k2f * cos).to(k_base.dtype.element_ty)
        v = tl.load(v_base + offs_n[:, None] * s_vn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                    other=0.0)
        if DOT_FP32:
            k1 = k1.to(tl.float32)
            k2 = k2.to(tl.float32)
            v = v.to(tl.float32)
        s = (tl.dot(q1, tl.trans(k1), input_precision=PRECISION)
             + tl.dot(q2, tl.trans(k2), input_precision=PRECISION)) * qk_scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _sink_cache_attention_kernel(
        q_ptr, k_ptr, v_ptr, s_vb, s_vh, s_vn,
        sink_k_ptr, sink_v_ptr, ring_k_ptr, ring_v_ptr, slot_ptr, prev_count_ptr, cos_ptr, sin_ptr, o_ptr,
        B, H, L, P, qk_scale,
        D: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SLOTS: tl.constexpr,
        USE_SINK: tl.constexpr, USE_PREV: tl.constexpr, DOT_FP32: tl.constexpr,
        PRECISION: tl.constexpr):
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    bh = pid_bh.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_h = tl.arange(0, HALF_P)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok, h_ok, d_ok = offs_m < L, offs_h < HALF, offs_d < D

    q_rows = q_ptr + (bh * L + offs_m[:, None]) * D + offs_h[None, :]
    q_mask = m_ok[:, None] & h_ok[None, :]
    q1 = tl.load(q_rows, mask=q_mask, other=0.0)
    q2 = tl.load(q_rows + HALF, mask=q_mask, other=0.0)
    if DOT_FP32:
        q1 = q1.to(tl.float32)
        q2 = q2.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    if USE_SINK:
        base = bh * P * D
        acc, m_i, l_i = _attend(acc, m_i, l_i, q1, q2, qk_scale, sink_k_ptr + base, sink_v_ptr + base, D, D, P,
                                offs_h, h_ok, offs_d, d_ok, cos_ptr, sin_ptr, False, HALF,
                                BLOCK_N, DOT_FP32, PRECISION)
    if USE_PREV:
        count = tl.load(prev_count_ptr + b)
        slot = tl.load(slot_ptr + b).to(tl.int64)
        for back in tl.static_range(SLOTS - 1):
            age = SLOTS - 1 - back                       # oldest first: W, ..., 1 chunks back
            n_keys = tl.where(count >= age, L, 0)
            src = (slot + SLOTS - age) % SLOTS
            base = ((b.to(tl.int64) * SLOTS + src) * H + h) * L * D
            place = back * L * HALF                      # its rows of the window's rotation table
            acc, m_i, l_i = _attend(acc, m_i, l_i, q1, q2, qk_scale, ring_k_ptr + base, ring_v_ptr + base,
                                    D, D, n_keys, offs_h, h_ok, offs_d, d_ok, cos_ptr + place, sin_ptr + place,
                                    True, HALF, BLOCK_N, DOT_FP32, PRECISION)
    acc, m_i, l_i = _attend(acc, m_i, l_i, q1, q2, qk_scale, k_ptr + bh * L * D,
                            v_ptr + b.to(tl.int64) * s_vb + h * s_vh, D, s_vn, L,
                            offs_h, h_ok, offs_d, d_ok, cos_ptr, sin_ptr, False, HALF,
                            BLOCK_N, DOT_FP32, PRECISION)

    out = acc / l_i[:, None]
    # o is (B, L, H, D): the layout the output projection reads as (B, L, H*D).
    o_offs = ((b.to(tl.int64) * L + offs_m[:, None]) * H + h) * D + offs_d[None, :]
    tl.store(o_ptr + o_offs, out.to(o_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def sink_cache_attention(q: Tensor, k: Tensor, v: Tensor, sink_k: Tensor, sink_v: Tensor,
                         ring_k: Tensor, ring_v: Tensor, slot: Tensor, prev_count: Tensor,
                         window: RopeTable, use_sink: bool = True, use_prev: bool = True) -> Tensor:
    """q, k (B, H, L, D) contiguous (rotated to the current positions); v (B, H, L, D) with a unit
    stride on D (a view of the qkv projection is fine); sink_k, sink_v (B, H, P, D); ring_k,
    ring_v (B, W + 1, H, L, D), keys pre-RoPE; slot, prev_count (B,) int; window: the rotation of
    the W previous chunks' W * L tokens to their places (frames 1..W*c). Returns (B, L, H, D)."""
    B, H, L, D = q.shape
    slots = ring_k.shape[1]
    if k.shape != q.shape or v.shape != q.shape or ring_k.shape != (B, slots, H, L, D) or slots < 2:
        raise ValueError(f"sink_cache_attention: q, k, v must be (B, H, L, D) = {tuple(q.shape)} and "
                         f"the ring (B, W + 1, H, L, D) with W >= 1, got k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"ring {tuple(ring_k.shape)}")
    if sink_k.shape[:2] != (B, H) or sink_k.shape[3] != D or sink_v.shape != sink_k.shape:
        raise ValueError(f"sink_cache_attention: the sink must be (B, H, P, D), got {tuple(sink_k.shape)}")
    if window.cos.shape != ((slots - 1) * L, D // 2):
        raise ValueError(f"sink_cache_attention: the window's rotation table must be (W * L, D/2) = "
                         f"({(slots - 1) * L}, {D // 2}), got {tuple(window.cos.shape)}")
    if not use_triton(q):
        return sink_cache_attention_torch(q, k, v, sink_k, sink_v, ring_k, ring_v, slot, prev_count,
                                          window, use_sink, use_prev)
    require_triton("sink_cache_attention")
    if not (q.is_contiguous() and k.is_contiguous() and sink_k.is_contiguous() and sink_v.is_contiguous()
            and ring_k.is_contiguous() and ring_v.is_contiguous()) or v.stride(-1) != 1:
        raise ValueError("sink_cache_attention: q, k, the sink and the ring must be contiguous, "
                         "v needs a unit stride on D")
    out = torch.empty(B, L, H, D, device=q.device, dtype=q.dtype)
    launch = sink_cache_attention_launch(target_of(q.device), q.dtype, L, D)
    grid = (triton.cdiv(L, launch.tiles["BLOCK_M"]), B * H)
    _sink_cache_attention_kernel[grid](
        q, k, v, v.stride(0), v.stride(1), v.stride(2),
        sink_k, sink_v, ring_k, ring_v, slot, prev_count, window.cos, window.sin, out,
        B, H, L, sink_k.shape[2], math.log2(math.e) / math.sqrt(D),
        D=D, HALF=D // 2, SLOTS=slots, USE_SINK=use_sink, USE_PREV=use_prev, DOT_FP32=dot_in_fp32(q.dtype),
        PRECISION=dot_precision(q.dtype), **launch.tiles, **launch.options)
    return out
