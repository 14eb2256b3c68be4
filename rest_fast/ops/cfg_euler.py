"""Classifier-free guidance + Euler step, in place, for every CFG branch row at once.

The fast sampler keeps one input buffer ``z`` of shape (S, branches, ...): the latent of each of S
streams repeated for its CFG branches (none: [conditional]; joint: [conditional, unconditional];
multi: [full, reference only, neither]), so the DiT runs all branches of all streams as one batch
of S * branches rows. After the forward gives ``v`` (S, branches, ...), one pass computes the
guided velocity and the Euler step (Algorithm 1):

    none:   v = v_c
    joint:  v = v_u + alpha (v_c - v_u)
    multi:  v = v_none + ref_scale (v_ref - v_none) + audio_scale (v_full - v_ref)
    z <- z + (T_next - T_cur) v                         written back into every branch row

``scales`` is per stream, (S, 0) for none, (S, 1) for joint ([alpha]) or (S, 2) for multi
([audio_scale, ref_scale]), so streams with different guidance share a batch. The torch twin is built from
``reference.flow`` (``joint_cfg`` / ``multi_cfg`` and ``euler_step``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from reference.flow import euler_step, joint_cfg, multi_cfg

from ._triton import require_triton, tl, triton, use_triton
from .launch import cfg_euler_launch, target_of


def guided_velocity(v: Tensor, scales: Tensor) -> Tensor:
    """v (S, branches, ...) -> the guided velocity (S, ...) (reference formulas)."""
    shape = (v.shape[0],) + (1,) * (v.dim() - 2)
    if v.shape[1] == 1:
        return v[:, 0]
    if v.shape[1] == 2:
        return joint_cfg(v[:, 0], v[:, 1], scales[:, 0].view(shape).to(v.dtype))
    return multi_cfg(v[:, 0], v[:, 1], v[:, 2], scales[:, 0].view(shape).to(v.dtype),
                     scales[:, 1].view(shape).to(v.dtype))


def cfg_euler_step_torch(z: Tensor, v: Tensor, scales: Tensor, dt: float) -> Tensor:
    new = euler_step(z[:, 0], guided_velocity(v, scales), 0.0, dt)
    z.copy_(new.unsqueeze(1).expand_as(z))
    return z


@triton.jit
def _cfg_euler_kernel(z_ptr, v_ptr, scales_ptr, per_row, dt,
                      BRANCHES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(1)                       # stream s
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < per_row
    base = row.to(tl.int64) * BRANCHES * per_row + offs
    branch = per_row                             # stride between a stream's branch rows
    z = tl.load(z_ptr + base, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + base, mask=mask, other=0.0).to(tl.float32)
    if BRANCHES == 2:
        v1 = tl.load(v_ptr + branch + base, mask=mask, other=0.0).to(tl.float32)
        alpha = tl.load(scales_ptr + row)
        v = v1 + alpha * (v - v1)
    elif BRANCHES == 3:
        v0 = v
        v1 = tl.load(v_ptr + branch + base, mask=mask, other=0.0).to(tl.float32)
        audio_scale = tl.load(scales_ptr + 2 * row)
        ref_scale = tl.load(scales_ptr + 2 * row + 1)
        v2 = tl.load(v_ptr + 2 * branch + base, mask=mask, other=0.0).to(tl.float32)
        v = v2 + ref_scale * (v1 - v2) + audio_scale * (v0 - v1)
    z = (z + dt * v).to(z_ptr.dtype.element_ty)
    for k in tl.static_range(BRANCHES):
        tl.store(z_ptr + k * branch + base, z, mask=mask)


def cfg_euler_step_(z: Tensor, v: Tensor, scales: Tensor, dt: float) -> Tensor:
    """In place: z, v (S, branches, ...) contiguous, branches 1 (no guidance), 2 (joint) or 3
    (multi); scales (S, branches - 1) float32; dt = T_next - T_cur. Returns z."""
    if z.shape != v.shape or z.dim() < 2 or z.shape[1] not in (1, 2, 3):
        raise ValueError(f"cfg_euler_step_: z {tuple(z.shape)} and v {tuple(v.shape)} must both be "
                         "(S, branches, ...) with 1 (none), 2 (joint) or 3 (multi) branches")
    if scales.shape != (z.shape[0], z.shape[1] - 1):
        raise ValueError(f"cfg_euler_step_: scales must be (S, {z.shape[1] - 1}), got {tuple(scales.shape)}")
    if not use_triton(z):
        return cfg_euler_step_torch(z, v, scales, dt)
    require_triton("cfg_euler_step_")
    if not (z.is_contiguous() and v.is_contiguous()):
        raise ValueError("cfg_euler_step_: z and v must be contiguous (z is updated in place)")
    streams, branches = z.shape[:2]
    per_row = z[0, 0].numel()
    launch = cfg_euler_launch(target_of(z.device), z.dtype)
    grid = (triton.cdiv(per_row, launch.tiles["BLOCK"]), streams)
    _cfg_euler_kernel[grid](z, v, scales.to(torch.float32).contiguous(), per_row, float(dt),
                            BRANCHES=branches, **launch.tiles, **launch.options)
    return z
