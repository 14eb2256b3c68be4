"""Asynchronous noise injection (eq. 15-17) in one pass: Z(t) and the flow-matching target.

    Z(t) = (1 - t) Z0 + t eps,   target = eps - Z0,   t per latent frame (B, F)

With ``t`` from ``reference.flow.async_timesteps`` the reference frame is clean (t = 0) and every
chunk has its own level. The torch twin (``reference.flow.add_noise`` + ``velocity_target``)
reads Z0 and eps twice and writes two tensors through temporaries; the kernel reads each once and
writes each output once.
"""
from __future__ import annotations

import torch
from torch import Tensor

from reference.flow import add_noise, velocity_target

from ._triton import require_triton, tl, triton, use_triton
from .launch import async_noise_launch, target_of


def async_noise_torch(z0: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    return add_noise(z0, t, eps), velocity_target(z0, eps)


@triton.jit
def _async_noise_kernel(z0_ptr, eps_ptr, t_ptr, zt_ptr, target_ptr, numel, channels, frames,
                        frame_size, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    # Element (b, c, f, y, x) of a contiguous (B, C, F, h, w) tensor reads t[b, f].
    f = (offs // frame_size) % frames
    b = offs // (frame_size * frames * channels)
    t = tl.load(t_ptr + b * frames + f, mask=mask, other=0.0)
    z0 = tl.load(z0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(zt_ptr + offs, ((1.0 - t) * z0 + t * eps).to(zt_ptr.dtype.element_ty), mask=mask)
    tl.store(target_ptr + offs, (eps - z0).to(target_ptr.dtype.element_ty), mask=mask)


def async_noise(z0: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """z0, eps (B, C, F, h, w); t (B, F) -> (Z(t), eps - Z0), both like z0."""
    if z0.shape != eps.shape or z0.dim() != 5 or t.shape != (z0.shape[0], z0.shape[2]):
        raise ValueError(f"async_noise: z0 {tuple(z0.shape)} and eps {tuple(eps.shape)} must be "
                         f"(B, C, F, h, w) and t {tuple(t.shape)} must be (B, F)")
    if not use_triton(z0):
        return async_noise_torch(z0, t, eps)
    require_triton("async_noise")
    z0, eps = z0.contiguous(), eps.contiguous()
    B, C, F, h, w = z0.shape
    zt, target = torch.empty_like(z0), torch.empty_like(z0)
    numel = z0.numel()
    launch = async_noise_launch(target_of(z0.device), z0.dtype)
    _async_noise_kernel[(triton.cdiv(numel, launch.tiles["BLOCK"]),)](
        z0, eps, t.to(torch.float32).contiguous(), zt, target, numel, C, F, h * w,
        **launch.tiles, **launch.options)
    return zt, target
