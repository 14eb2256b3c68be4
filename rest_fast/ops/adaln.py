"""LayerNorm fused with AdaLN-single modulation: ``LN(x) * (1 + scale) + shift``.

Every DiT block normalises its tokens twice (before self-attention and before the FFN) and
modulates them with the shift and scale of their own latent frame (per-token timestep
conditioning, eq. 15). In torch that is a LayerNorm and two broadcast ops, three passes over the
activations; the kernel makes one: a program normalises a row of D in fp32 and applies its
frame's modulation before the single store. The op is differentiable: its backward kernel
recomputes each row's statistics from x (nothing but x and scale is kept), writes dx, and sums
d_shift and d_scale over a frame's tokens in partial sums that torch adds up (as Liger-Kernel's
LayerNorm backward does).

    x (B, F, P, D),  shift, scale (B, F, D)  ->  (B, F, P, D)

The torch twin is the reference's ``modulate(norm(x), shift, scale)`` (LayerNorm without affine
parameters, eps 1e-6).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.dit import modulate

from ._triton import require_triton, tl, triton, use_triton
from .launch import adaln_launch, target_of

EPS = 1e-6


def adaln_modulate_torch(x: Tensor, shift: Tensor, scale: Tensor, eps: float = EPS) -> Tensor:
    return modulate(F.layer_norm(x, (x.shape[-1],), eps=eps), shift, scale)


@triton.jit
def _adaln_kernel(x_ptr, shift_ptr, scale_ptr, out_ptr, s_mb, s_mf, n_rows, P, F, eps,
                  D: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    row_ok, col_ok = rows < n_rows, cols < D
    mask = row_ok[:, None] & col_ok[None, :]
    offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
    # Row (b, f, p) is modulated by frame (b, f).
    frame = rows // P
    mod = (frame // F).to(tl.int64)[:, None] * s_mb + (frame % F)[:, None] * s_mf + cols[None, :]
    shift = tl.load(shift_ptr + mod, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + mod, mask=mask, other=0.0).to(tl.float32)
    out = xc * rstd[:, None] * (1.0 + scale) + shift
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _adaln_bwd_kernel(x_ptr, scale_ptr, dout_ptr, dx_ptr, dshift_ptr, dscale_ptr, s_mb, s_mf,
                      P, F, rows_per_program, splits, eps,
                      D: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr):
    """Program (frame, split): rows [split * rows_per_program, ...) of one frame's P tokens."""
    frame, split = tl.program_id(0), tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    mod = (frame // F).to(tl.int64) * s_mb + (frame % F) * s_mf + cols
    gain = 1.0 + tl.load(scale_ptr + mod, mask=col_ok, other=0.0).to(tl.float32)
    d_shift = tl.zeros([BLOCK_D], tl.float32)
    d_scale = tl.zeros([BLOCK_D], tl.float32)
    lo = split * rows_per_program
    hi = tl.minimum(lo + rows_per_program, P)
    for start in range(lo, hi, ROWS):
        tokens = start + tl.arange(0, ROWS)
        mask = (tokens < hi)[:, None] & col_ok[None, :]
        offs = (frame.to(tl.int64) * P + tokens)[:, None] * D + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
        x_hat = xc * rstd[:, None]
        d_shift += tl.sum(g, axis=0)
        d_scale += tl.sum(g * x_hat, axis=0)
        g_hat = g * gain[None, :]
        dx = rstd[:, None] * (g_hat - tl.sum(g_hat, axis=1)[:, None] / D
                              - x_hat * (tl.sum(g_hat * x_hat, axis=1) / D)[:, None])
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    part = (frame.to(tl.int64) * splits + split) * D + cols
    tl.store(dshift_ptr + part, d_shift, mask=col_ok)
    tl.store(dscale_ptr + part, d_scale, mask=col_ok)


ROWS_PER_PROGRAM = 64   # backward: a frame's tokens split this many to a program


class _AdaLNModulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, scale, eps):
        B, Fr, P, D = x.shape
        out = torch.empty_like(x)
        n_rows = B * Fr * P
        launch = adaln_launch(target_of(x.device), x.dtype, D)
        _adaln_kernel[(triton.cdiv(n_rows, launch.tiles["ROWS"]),)](
            x, shift, scale, out, shift.stride(0), shift.stride(1), n_rows, P, Fr, float(eps),
            D=D, **launch.tiles, **launch.options)
        ctx.save_for_backward(x, scale)
        ctx.eps, ctx.shift_dtype = eps, shift.dtype
        return out

    @staticmethod
    def backward(ctx, d_out):
        x, scale = ctx.saved_tensors
        B, Fr, P, D = x.shape
        d_out = d_out.contiguous()
        splits = triton.cdiv(P, ROWS_PER_PROGRAM)
        launch = adaln_launch(target_of(x.device), x.dtype, D)
        dx = torch.empty_like(x)
        parts = torch.empty(2, B * Fr, splits, D, device=x.device, dtype=torch.float32)
        _adaln_bwd_kernel[(B * Fr, splits)](
            x, scale, d_out, dx, parts[0], parts[1], scale.stride(0), scale.stride(1), P, Fr,
            ROWS_PER_PROGRAM, splits, float(ctx.eps), D=D, **launch.tiles, **launch.options)
        d_shift, d_scale = parts.sum(2).view(2, B, Fr, D)
        return dx, d_shift.to(ctx.shift_dtype), d_scale.to(scale.dtype), None


def adaln_modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float = EPS) -> Tensor:
    """x (B, F, P, D) contiguous; shift, scale (B, F, D) with a unit stride on D (views of the
    modulation table are fine) -> LN(x) * (1 + scale) + shift, like x; differentiable."""
    B, Fr, P, D = x.shape
    if shift.shape != (B, Fr, D) or scale.shape != (B, Fr, D):
        raise ValueError(f"adaln_modulate: x {tuple(x.shape)} needs shift and scale (B, F, D) = "
                         f"{(B, Fr, D)}, got {tuple(shift.shape)} and {tuple(scale.shape)}")
    if not use_triton(x):
        return adaln_modulate_torch(x, shift, scale, eps)
    require_triton("adaln_modulate")
    if not x.is_contiguous() or shift.stride() != scale.stride() or shift.stride(-1) != 1:
        raise ValueError("adaln_modulate: x must be contiguous and shift, scale share unit-stride layouts")
    return _AdaLNModulate.apply(x, shift, scale, float(eps))
