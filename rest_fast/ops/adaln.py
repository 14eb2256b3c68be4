"""LayerNorm fused with AdaLN-single modulation: ``LN(x) * (1 + scale) + shift``.

Every DiT block normalises its tokens twice (before self-attention and before the FFN) and
modulates them with the shift and scale of their own latent frame (per-token timestep
conditioning, eq. 15). In torch that is a LayerNorm and two broadcast ops, three passes over the
activations; the kernel makes one: a program normalises a row of D in fp32 and applies its
frame's modulation before the single store.

    x (B, F, P, D),  shift, scale (B, F, D)  ->  (B, F, P, D)

The torch twin is the reference's ``modulate(norm(x), shift, scale)`` (LayerNorm without affine
parameters, eps 1e-6).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.dit import modulate

from ._triton import next_power_of_2, require_triton, tl, triton, use_triton

EPS = 1e-6
ROWS = 4


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


def adaln_modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float = EPS) -> Tensor:
    """x (B, F, P, D) contiguous; shift, scale (B, F, D) with a unit stride on D (views of the
    modulation table are fine) -> LN(x) * (1 + scale) + shift, like x."""
    B, Fr, P, D = x.shape
    if shift.shape != (B, Fr, D) or scale.shape != (B, Fr, D):
        raise ValueError(f"adaln_modulate: x {tuple(x.shape)} needs shift and scale (B, F, D) = "
                         f"{(B, Fr, D)}, got {tuple(shift.shape)} and {tuple(scale.shape)}")
    if not use_triton(x):
        return adaln_modulate_torch(x, shift, scale, eps)
    require_triton("adaln_modulate")
    if not x.is_contiguous() or shift.stride() != scale.stride() or shift.stride(-1) != 1:
        raise ValueError("adaln_modulate: x must be contiguous and shift, scale share unit-stride layouts")
    out = torch.empty_like(x)
    n_rows = B * Fr * P
    _adaln_kernel[(triton.cdiv(n_rows, ROWS),)](
        x, shift, scale, out, shift.stride(0), shift.stride(1), n_rows, P, Fr, float(eps),
        D=D, BLOCK_D=next_power_of_2(D), ROWS=ROWS)
    return out
