"""Frame-level audio cross-attention (eq. 13), forward and backward, one launch for all frames
and heads.

The P video tokens of latent frame f attend only to that frame's h_w audio tokens e_f:

    q (N, P, H, D),  k, v (N, A, H, D)  ->  o (N, P, H, D),     N = batch x frames, A = h_w

The reference runs this as SDPA over a batch of B x F tiny attentions (4 keys each, padded and
dispatched per frame). Here a program owns one (frame, head): it keeps that frame's A keys and
values in registers and streams the P queries through them. A is far below a tensor-core tile, so
scores are broadcast products summed over D. The backward recomputes the probabilities (A
exponentials per query are cheaper than storing them) and accumulates dK and dV for the frame in
the same program that writes dQ, so no atomics are needed.

The torch twin is ``F.scaled_dot_product_attention`` over the (N, H, ...) views, as in
``reference.dit.CrossAttention``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._triton import require_triton, tl, triton, use_triton
from .launch import frame_audio_attention_bwd_launch, frame_audio_attention_launch, target_of


def frame_audio_attention_torch(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


@triton.jit
def _scores(q, k, a_ok, sm_scale):
    """q (BLOCK_P, BLOCK_D), k (BLOCK_A, BLOCK_D) -> softmax probabilities (BLOCK_P, BLOCK_A)."""
    s = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * sm_scale
    s = tl.where(a_ok[None, :], s, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, s_qn, s_qp, s_qh, s_kn, s_ka, s_kh, s_vn, s_va, s_vh,
                H, P, A, sm_scale,
                D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_p, pid_nh = tl.program_id(0), tl.program_id(1)
    n, h = (pid_nh // H).to(tl.int64), pid_nh % H
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_a, offs_d = tl.arange(0, BLOCK_A), tl.arange(0, BLOCK_D)
    p_ok, a_ok, d_ok = offs_p < P, offs_a < A, offs_d < D
    kv_mask = a_ok[:, None] & d_ok[None, :]
    k = tl.load(k_ptr + n * s_kn + h * s_kh + offs_a[:, None] * s_ka + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + n * s_vn + h * s_vh + offs_a[:, None] * s_va + offs_d[None, :], mask=kv_mask, other=0.0)
    q_mask = p_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + n * s_qn + h * s_qh + offs_p[:, None] * s_qp + offs_d[None, :], mask=q_mask, other=0.0)
    p = _scores(q.to(tl.float32), k.to(tl.float32), a_ok, sm_scale)
    out = tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
    o_offs = ((n * P + offs_p[:, None]) * H + h) * D + offs_d[None, :]
    tl.store(o_ptr + o_offs, out.to(o_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def _bwd_kernel(q_ptr, k_ptr, v_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr,
                s_qn, s_qp, s_qh, s_kn, s_ka, s_kh, s_vn, s_va, s_vh, s_dn, s_dp, s_dh,
                H, P, A, sm_scale,
                D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_nh = tl.program_id(0)
    n, h = (pid_nh // H).to(tl.int64), pid_nh % H
    offs_a, offs_d = tl.arange(0, BLOCK_A), tl.arange(0, BLOCK_D)
    a_ok, d_ok = offs_a < A, offs_d < D
    kv_mask = a_ok[:, None] & d_ok[None, :]
    k = tl.load(k_ptr + n * s_kn + h * s_kh + offs_a[:, None] * s_ka + offs_d[None, :],
                mask=kv_mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + n * s_vn + h * s_vh + offs_a[:, None] * s_va + offs_d[None, :],
                mask=kv_mask, other=0.0).to(tl.float32)
    dk = tl.zeros([BLOCK_A, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_A, BLOCK_D], tl.float32)
    for start in range(0, P, BLOCK_P):
        offs_p = start + tl.arange(0, BLOCK_P)
        q_mask = (offs_p < P)[:, None] & d_ok[None, :]
        q = tl.load(q_ptr + n * s_qn + h * s_qh + offs_p[:, None] * s_qp + offs_d[None, :],
                    mask=q_mask, other=0.0).to(tl.float32)
        do = tl.load(do_ptr + n * s_dn + h * s_dh + offs_p[:, None] * s_dp + offs_d[None, :],
                     mask=q_mask, other=0.0).to(tl.float32)
        p = _scores(q, k, a_ok, sm_scale)                                # (BLOCK_P, BLOCK_A)
        dv += tl.sum(p[:, :, None] * do[:, None, :], axis=0)
        dp = tl.sum(do[:, None, :] * v[None, :, :], axis=2)
        ds = p * (dp - tl.sum(p * dp, axis=1)[:, None])
        dq = tl.sum(ds[:, :, None] * k[None, :, :], axis=1) * sm_scale
        dk += tl.sum(ds[:, :, None] * q[:, None, :], axis=0)
        dq_offs = ((n * P + offs_p[:, None]) * H + h) * D + offs_d[None, :]
        tl.store(dq_ptr + dq_offs, dq.to(dq_ptr.dtype.element_ty), mask=q_mask)
    kv_offs = ((n * A + offs_a[:, None]) * H + h) * D + offs_d[None, :]
    tl.store(dk_ptr + kv_offs, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + kv_offs, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


def _meta(q: Tensor, A: int, backward: bool = False) -> dict:
    """The head width and the launch (launch.py) of the forward or the backward kernel."""
    choose = frame_audio_attention_bwd_launch if backward else frame_audio_attention_launch
    launch = choose(target_of(q.device), q.dtype, A, q.shape[-1])
    return dict(D=q.shape[-1], **launch.tiles, **launch.options)


class _FrameAudioAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        N, P, H, D = q.shape
        A = k.shape[1]
        out = torch.empty(N, P, H, D, device=q.device, dtype=q.dtype)
        meta = _meta(q, A)
        _fwd_kernel[(triton.cdiv(P, meta["BLOCK_P"]), N * H)](
            q, k, v, out, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), H, P, A, 1.0 / math.sqrt(D), **meta)
        ctx.save_for_backward(q, k, v)
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v = ctx.saved_tensors
        # Unit stride on D, as the kernel reads it (out.sum()'s gradient has every stride 0).
        d_out = d_out if d_out.stride(-1) == 1 else d_out.contiguous()
        N, P, H, D = q.shape
        A = k.shape[1]
        dq = torch.empty(N, P, H, D, device=q.device, dtype=q.dtype)
        dk = torch.empty(N, A, H, D, device=q.device, dtype=k.dtype)
        dv = torch.empty(N, A, H, D, device=q.device, dtype=v.dtype)
        _bwd_kernel[(N * H,)](
            q, k, v, d_out, dq, dk, dv,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), d_out.stride(0), d_out.stride(1), d_out.stride(2),
            H, P, A, 1.0 / math.sqrt(D), **_meta(q, A, backward=True))
        return dq, dk, dv


def frame_audio_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """q (N, P, H, D): the P tokens of each of N frames; k, v (N, A, H, D): that frame's A audio
    tokens (any strides with a unit stride on D) -> (N, P, H, D); differentiable."""
    N, P, H, D = q.shape
    if k.dim() != 4 or k.shape[0] != N or k.shape[2:] != (H, D) or v.shape != k.shape:
        raise ValueError(f"frame_audio_attention: q {tuple(q.shape)} must be (N, P, H, D) and k, v "
                         f"(N, A, H, D), got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not use_triton(q):
        return frame_audio_attention_torch(q, k, v)
    require_triton("frame_audio_attention")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("frame_audio_attention: q, k, v need a unit stride on D")
    return _FrameAudioAttention.apply(q, k, v)
