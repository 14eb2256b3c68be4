"""Block-sparse attention for training, forward and backward: the student's single pass over a
whole clip with the [sink | previous chunk | current chunk] block mask, and the teacher's full
attention through the same kernels.

An :class:`AttentionLayout` says which keys each query sees as a union of rectangles: the queries
are cut into segments, each seeing up to two key ranges, and (for the backward) the keys into
segments, each seen by up to two query ranges. The student's layout over the token order of
``reference.dit.BlockMaskAttention`` (queries [sink | chunk 1 .. k], keys [k sink copies |
chunk 1 .. k]):

    sink queries         -> sink copy 0
    chunk i queries      -> sink copy i,  chunks i-W .. i (one contiguous range; W = prev_chunks)

The host cuts the segments into tiles once per layout and block size; each kernel program reads
its tile's row of the table and loops over its ranges, so no mask tensor and no masked-out tile
is ever touched. Forward keeps the log-sum-exp per query for the backward (FlashAttention-2):
one kernel accumulates dK and dV per key tile over the query ranges that see it, another dQ per
query tile over its key ranges.

The torch twin is ``F.scaled_dot_product_attention`` with the layout's dense boolean mask (what
the reference does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ._triton import dot_in_fp32, dot_precision, require_triton, tl, triton, use_triton
from .launch import block_attention_bwd_launch, block_attention_launch, target_of

MAX_RANGES = 2
Range = tuple[int, int]


@dataclass(frozen=True)
class AttentionLayout:
    """Which keys every query sees, as segments of queries (keys) with their key (query) ranges."""
    q_len: int
    k_len: int
    q_segments: tuple[tuple[int, int, tuple[Range, ...]], ...]
    k_segments: tuple[tuple[int, int, tuple[Range, ...]], ...] = field(compare=False)

    @classmethod
    def from_rectangles(cls, q_len: int, k_len: int, rects: list[tuple[Range, Range]]) -> "AttentionLayout":
        """Build from non-overlapping rectangles (query range, key range). Each axis is cut at
        every rectangle edge, so that segments are disjoint (a key tile's gradient is then
        computed by exactly one program)."""
        rects = [(q, k) for q, k in rects if q[1] > q[0] and k[1] > k[0]]

        def segments(axis: int):
            cuts = sorted({x for r in rects for x in r[axis]})
            out = []
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                ranges = sorted(r[1 - axis] for r in rects if r[axis][0] <= lo and hi <= r[axis][1])
                merged: list[Range] = []
                for a, b in ranges:               # touching ranges become one
                    if merged and merged[-1][1] == a:
                        merged[-1] = (merged[-1][0], b)
                    else:
                        merged.append((a, b))
                if len(merged) > MAX_RANGES:
                    raise ValueError(f"positions {lo}..{hi} see {len(merged)} ranges; at most {MAX_RANGES}")
                if merged:
                    out.append((lo, hi, tuple(merged)))
            return tuple(out)
        return cls(q_len, k_len, segments(0), segments(1))

    @classmethod
    def full(cls, length: int) -> "AttentionLayout":
        """The teacher: every query sees every key."""
        return cls.from_rectangles(length, length, [((0, length), (0, length))])

    @classmethod
    def student(cls, num_chunks: int, sink_len: int, chunk_len: int, use_sink: bool = True,
                use_prev: bool = True, prev_chunks: int = 1) -> "AttentionLayout":
        """Queries [sink | chunks], keys [num_chunks sink copies | chunks] (BlockMaskAttention;
        each chunk sees the ``prev_chunks`` chunks before it)."""
        s, n, k = sink_len, chunk_len, num_chunks
        rects = [((0, s), (0, s))]                               # the sink sees itself only
        for i in range(k):
            rows = (s + i * n, s + (i + 1) * n)
            if use_sink:
                rects.append((rows, (i * s, (i + 1) * s)))        # its copy of the sink
            first = max(i - prev_chunks, 0) if use_prev else i
            rects.append((rows, (k * s + first * n, k * s + (i + 1) * n)))  # the W before it and itself
        return cls.from_rectangles(s + k * n, k * s + k * n, rects)

    def dense_mask(self, device=None) -> Tensor:
        """(q_len, k_len) bool, True where a query may see a key."""
        mask = torch.zeros(self.q_len, self.k_len, dtype=torch.bool, device=device)
        for lo, hi, ranges in self.q_segments:
            for a, b in ranges:
                mask[lo:hi, a:b] = True
        return mask

    @property
    def every_key_seen(self) -> bool:
        return sum(hi - lo for lo, hi, _ in self.k_segments) == self.k_len

    def visited_pairs(self) -> int:
        """Query-key pairs the kernels compute (for FLOP counts in the benchmarks)."""
        return sum((hi - lo) * sum(b - a for a, b in r) for lo, hi, r in self.q_segments)


@lru_cache(maxsize=64)
def _tile_table(segments, block: int, device_type: str, device_index) -> Tensor:
    """Rows [lo, hi, r0_lo, r0_hi, r1_lo, r1_hi]: each segment cut into tiles of ``block``."""
    rows = []
    for lo, hi, ranges in segments:
        padded = list(ranges) + [(0, 0)] * (MAX_RANGES - len(ranges))
        for start in range(lo, hi, block):
            rows.append([start, min(start + block, hi)] + [x for r in padded for x in r])
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    return torch.tensor(rows, dtype=torch.int32, device=device)


def tile_table(segments, block: int, device: torch.device) -> Tensor:
    return _tile_table(segments, block, device.type, device.index)


# --------------------------------------------------------------------------------------------
# torch twin
# --------------------------------------------------------------------------------------------

def block_attention_torch(q: Tensor, k: Tensor, v: Tensor, layout: AttentionLayout) -> Tensor:
    """q (B, H, Lq, D), k, v (B, H, Lk, D) -> (B, Lq, H, D)."""
    full = len(layout.q_segments) == 1 and layout.q_segments[0][2] == ((0, layout.k_len),)
    mask = None if full else layout.dense_mask(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _program(table_ptr, H, BLOCK: tl.constexpr, RANGES: tl.constexpr):
    """This program's batch, head, table row, and the tile of positions its row names (with
    which of them lie in the segment)."""
    tile, pid_bh = tl.program_id(0), tl.program_id(1)
    row = table_ptr + tile * (2 + 2 * RANGES)
    lo, hi = tl.load(row), tl.load(row + 1)
    offs = lo + tl.arange(0, BLOCK)
    return pid_bh // H, pid_bh % H, pid_bh, row, offs, offs < hi


@triton.jit
def _load(base, offs, ok, stride, offs_d, d_ok, DOT_FP32: tl.constexpr):
    """A (positions, BLOCK_D) tile, zeros outside; fp32 where the interpreter needs it (see
    _triton.dot_in_fp32)."""
    x = tl.load(base + offs[:, None] * stride + offs_d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_FP32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _kv_tile(k_base, v_base, start, hi, s_kn, s_vn, offs_d, d_ok, BLOCK_N: tl.constexpr,
             DOT_FP32: tl.constexpr):
    """The key and value tile from ``start`` (keys from ``hi`` on are zeros, and not ok)."""
    offs_n = start + tl.arange(0, BLOCK_N)
    n_ok = offs_n < hi
    k = _load(k_base, offs_n, n_ok, s_kn, offs_d, d_ok, DOT_FP32)
    v = _load(v_base, offs_n, n_ok, s_vn, offs_d, d_ok, DOT_FP32)
    return k, v, n_ok


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, table_ptr,
                s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
                H, Lq, qk_scale,
                D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                RANGES: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    b, h, pid_bh, row, offs_m, m_ok = _program(table_ptr, H, BLOCK_M, RANGES)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    k_base = k_ptr + b.to(tl.int64) * s_kb + h * s_kh
    v_base = v_ptr + b.to(tl.int64) * s_vb + h * s_vh
    q = _load(q_ptr + b.to(tl.int64) * s_qb + h * s_qh, offs_m, m_ok, s_qn, offs_d, d_ok, DOT_FP32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for r in tl.static_range(RANGES):
        k_lo, k_hi = tl.load(row + 2 + 2 * r), tl.load(row + 3 + 2 * r)
        for start in range(k_lo, k_hi, BLOCK_N):
            k, v, n_ok = _kv_tile(k_base, v_base, start, k_hi, s_kn, s_vn, offs_d, d_ok, BLOCK_N, DOT_FP32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            s = tl.where(n_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    out = acc / l_i[:, None]
    o_base = o_ptr + b.to(tl.int64) * s_ob + h * s_oh
    tl.store(o_base + offs_m[:, None] * s_on + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + pid_bh.to(tl.int64) * Lq + offs_m, m_i + tl.log2(l_i), mask=m_ok)  # base 2


@triton.jit
def _bwd_delta_kernel(o_ptr, do_ptr, delta_ptr, s_ob, s_oh, s_on, s_db, s_dh, s_dn, H, Lq,
                      D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta_i = sum_d dO_id O_id: the softmax backward's row term."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok, d_ok = offs_m < Lq, offs_d < D
    o = _load(o_ptr + b.to(tl.int64) * s_ob + h * s_oh, offs_m, m_ok, s_on, offs_d, d_ok, True)
    do = _load(do_ptr + b.to(tl.int64) * s_db + h * s_dh, offs_m, m_ok, s_dn, offs_d, d_ok, True)
    tl.store(delta_ptr + pid_bh.to(tl.int64) * Lq + offs_m, tl.sum(o * do, axis=1), mask=m_ok)


@triton.jit
def _bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, table_ptr,
                     s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn,
                     H, Lq, Lk, sm_scale, qk_scale,
                     D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     RANGES: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """dK, dV of one key tile, over the query ranges that see it."""
    b, h, pid_bh, row, offs_n, n_ok = _program(table_ptr, H, BLOCK_N, RANGES)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    k = _load(k_ptr + b.to(tl.int64) * s_kb + h * s_kh, offs_n, n_ok, s_kn, offs_d, d_ok, DOT_FP32)
    v = _load(v_ptr + b.to(tl.int64) * s_vb + h * s_vh, offs_n, n_ok, s_vn, offs_d, d_ok, DOT_FP32)
    q_base = q_ptr + b.to(tl.int64) * s_qb + h * s_qh
    do_base = do_ptr + b.to(tl.int64) * s_db + h * s_dh
    stats = pid_bh.to(tl.int64) * Lq
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for r in tl.static_range(RANGES):
        q_lo, q_hi = tl.load(row + 2 + 2 * r), tl.load(row + 3 + 2 * r)
        for start in range(q_lo, q_hi, BLOCK_M):
            offs_m = start + tl.arange(0, BLOCK_M)
            m_ok = offs_m < q_hi
            q = _load(q_base, offs_m, m_ok, s_qn, offs_d, d_ok, DOT_FP32)
            do = _load(do_base, offs_m, m_ok, s_dn, offs_d, d_ok, DOT_FP32)
            lse = tl.load(lse_ptr + stats + offs_m, mask=m_ok, other=float("inf"))
            delta = tl.load(delta_ptr + stats + offs_m, mask=m_ok, other=0.0)
            # p^T (BLOCK_N, BLOCK_M): this key tile's probabilities for these queries.
            s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
            p_t = tl.exp2(s_t - lse[None, :])
            p_t = tl.where(n_ok[:, None] & m_ok[None, :], p_t, 0.0)
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    out = pid_bh.to(tl.int64) * Lk * D + offs_n[:, None] * D + offs_d[None, :]
    kv_mask = n_ok[:, None] & d_ok[None, :]
    tl.store(dk_ptr + out, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + out, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, table_ptr,
                   s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn,
                   H, Lq, sm_scale, qk_scale,
                   D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   RANGES: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """dQ of one query tile, over its key ranges (the forward's loop, with the saved lse)."""
    b, h, pid_bh, row, offs_m, m_ok = _program(table_ptr, H, BLOCK_M, RANGES)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = _load(q_ptr + b.to(tl.int64) * s_qb + h * s_qh, offs_m, m_ok, s_qn, offs_d, d_ok, DOT_FP32)
    do = _load(do_ptr + b.to(tl.int64) * s_db + h * s_dh, offs_m, m_ok, s_dn, offs_d, d_ok, DOT_FP32)
    stats = pid_bh.to(tl.int64) * Lq
    lse = tl.load(lse_ptr + stats + offs_m, mask=m_ok, other=float("inf"))
    delta = tl.load(delta_ptr + stats + offs_m, mask=m_ok, other=0.0)
    k_base = k_ptr + b.to(tl.int64) * s_kb + h * s_kh
    v_base = v_ptr + b.to(tl.int64) * s_vb + h * s_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for r in tl.static_range(RANGES):
        k_lo, k_hi = tl.load(row + 2 + 2 * r), tl.load(row + 3 + 2 * r)
        for start in range(k_lo, k_hi, BLOCK_N):
            k, v, n_ok = _kv_tile(k_base, v_base, start, k_hi, s_kn, s_vn, offs_d, d_ok, BLOCK_N, DOT_FP32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.exp2(s - lse[:, None])
            p = tl.where(m_ok[:, None] & n_ok[None, :], p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    out = pid_bh.to(tl.int64) * Lq * D + offs_m[:, None] * D + offs_d[None, :]
    tl.store(dq_ptr + out, (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def _launch(q: Tensor, backward: bool = False):
    choose = block_attention_bwd_launch if backward else block_attention_launch
    return choose(target_of(q.device), q.dtype, q.shape[-1])


class _BlockAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout):
        B, H, Lq, D = q.shape
        launch = _launch(q)
        table = tile_table(layout.q_segments, launch.tiles["BLOCK_M"], q.device)
        out = torch.empty(B, Lq, H, D, device=q.device, dtype=q.dtype)
        lse = torch.empty(B, H, Lq, device=q.device, dtype=torch.float32)
        sm_scale = 1.0 / math.sqrt(D)
        _fwd_kernel[(table.shape[0], B * H)](
            q, k, v, out, lse, table,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(2), out.stride(1),
            H, Lq, sm_scale * math.log2(math.e), D=D, RANGES=MAX_RANGES,
            DOT_FP32=dot_in_fp32(q.dtype), PRECISION=dot_precision(q.dtype), **launch.tiles, **launch.options)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout = layout
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        layout = ctx.layout
        # The kernels index D with unit stride; the gradient of out.sum() or out.mean() is an
        # expanded tensor (every stride 0), which they would read past its one element.
        d_out = d_out if d_out.stride(-1) == 1 else d_out.contiguous()
        B, H, Lq, D = q.shape
        Lk = k.shape[2]
        launch = _launch(q, backward=True)
        block_d, block_m, block_n = (launch.tiles[k_] for k_ in ("BLOCK_D", "BLOCK_M", "BLOCK_N"))
        sm_scale = 1.0 / math.sqrt(D)
        common = dict(D=D, RANGES=MAX_RANGES, DOT_FP32=dot_in_fp32(q.dtype), PRECISION=dot_precision(q.dtype),
                      **launch.tiles, **launch.options)
        delta = torch.empty(B, H, Lq, device=q.device, dtype=torch.float32)
        _bwd_delta_kernel[(triton.cdiv(Lq, block_m), B * H)](
            out, d_out, delta, out.stride(0), out.stride(2), out.stride(1),
            d_out.stride(0), d_out.stride(2), d_out.stride(1), H, Lq,
            D=D, BLOCK_D=block_d, BLOCK_M=block_m, **launch.options)
        strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                   v.stride(0), v.stride(1), v.stride(2), d_out.stride(0), d_out.stride(2), d_out.stride(1))
        # Keys that no query sees (the sink copies of the no-sink ablation) get no program.
        alloc = torch.empty if layout.every_key_seen else torch.zeros
        dk = alloc(B, H, Lk, D, device=q.device, dtype=k.dtype)
        dv = alloc(B, H, Lk, D, device=q.device, dtype=v.dtype)
        k_table = tile_table(layout.k_segments, block_n, q.device)
        _bwd_dkdv_kernel[(k_table.shape[0], B * H)](
            q, k, v, d_out, lse, delta, dk, dv, k_table, *strides,
            H, Lq, Lk, sm_scale, sm_scale * math.log2(math.e), **common)
        dq = torch.empty(B, H, Lq, D, device=q.device, dtype=q.dtype)
        q_table = tile_table(layout.q_segments, block_m, q.device)
        _bwd_dq_kernel[(q_table.shape[0], B * H)](
            q, k, v, d_out, lse, delta, dq, q_table, *strides,
            H, Lq, sm_scale, sm_scale * math.log2(math.e), **common)
        return dq, dk, dv, None


def block_attention(q: Tensor, k: Tensor, v: Tensor, layout: AttentionLayout) -> Tensor:
    """q (B, H, Lq, D), k, v (B, H, Lk, D), any strides with a unit stride on D ->
    (B, Lq, H, D); differentiable. Queries see the keys ``layout`` gives them."""
    B, H, Lq, D = q.shape
    if k.shape != (B, H, layout.k_len, D) or v.shape != k.shape or Lq != layout.q_len:
        raise ValueError(f"block_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         f"do not fit the layout ({layout.q_len} queries, {layout.k_len} keys)")
    if not use_triton(q):
        return block_attention_torch(q, k, v, layout)
    require_triton("block_attention")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("block_attention: q, k, v need a unit stride on D")
    return _BlockAttention.apply(q, k, v, layout)
