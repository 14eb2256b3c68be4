"""Flow matching (eq. 1-3), asynchronous per-chunk noise (eq. 15-18), Euler sampling and CFG.

Conventions: t = 1 is pure noise, t = 0 is data. Latents are (B, C, F, h, w) with F latent frames,
frame 0 being the reference frame z_R; timesteps are per latent frame, shape (B, F).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Guidance scales outside [0, MAX_GUIDANCE_SCALE] are refused: the sampler extrapolates by the
# scale, and far beyond the usual 1-10 every frame saturates (a NaN or 1e30 turned the whole video
# black before this check).
MAX_GUIDANCE_SCALE = 20.0


def shift_timesteps(t: Tensor, shift: float) -> Tensor:
    """SD3/LTX timestep shift: t' = s t / (1 + (s - 1) t); s > 1 spends more steps at high noise."""
    return shift * t / (1 + (shift - 1) * t)


def timestep_schedule(steps: int, shift: float = 1.0) -> Tensor:
    """T_1 = 1 > T_2 > ... > T_{steps+1} = 0 (Algorithm 1's time schedule)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_timesteps(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).float()


def add_noise(z0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Eq. 2 / eq. 16: Z(t) = (1 - t) Z0 + t eps, with t given per latent frame (B, F)."""
    t = t[:, None, :, None, None].to(z0.dtype)
    return (1 - t) * z0 + t * eps


def velocity_target(z0: Tensor, eps: Tensor) -> Tensor:
    """Eq. 17 / 19: the vector field the network regresses, v = eps - Z0."""
    return eps - z0


def noise_and_target(z0: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """A training input and its target: (Z(t), eps - Z0), eq. 16-17."""
    return add_noise(z0, t, eps), velocity_target(z0, eps)


def async_timesteps(batch: int, num_chunks: int, chunk_frames: int,
                    generator: torch.Generator | None = None, device=None) -> Tensor:
    """Eq. 15: t = [0 | t_1 x c | ... | t_k x c], each chunk's level drawn independently, U(0, 1).

    Returns (batch, 1 + num_chunks * chunk_frames); the reference frame stays clean (t = 0).
    """
    levels = torch.rand(batch, num_chunks, generator=generator, device=device)
    per_frame = levels.repeat_interleave(chunk_frames, dim=1)
    return torch.cat([torch.zeros(batch, 1, device=per_frame.device), per_frame], dim=1)


def flow_matching_loss(v_pred: Tensor, v_target: Tensor, t: Tensor,
                       weight: Tensor | None = None) -> Tensor:
    """Eq. 18 / 20: MSE over non-reference latent frames (those with t > 0 by construction).

    ``weight`` (B, 1, 1, h, w), optional: a per-position weight (see ``motion_weight``); the
    error is then a weighted mean over positions, so the loss keeps its scale."""
    err = (v_pred - v_target).float().pow(2)
    if weight is None:
        return err.mean(dim=(1, 3, 4))[:, 1:].mean()
    weight = weight.float()
    per_frame = (err * weight).mean(dim=(1, 3, 4)) / weight.mean(dim=(1, 3, 4))  # (B, F)
    return per_frame[:, 1:].mean()


def motion_weight(z0: Tensor, strength: float) -> Tensor:
    """Per-position loss weight 1 + strength (m / max m)^2, m the temporal std of a clip's
    non-reference latent frames (averaged over channels): (B, C, F, h, w) -> (B, 1, 1, h, w).

    Not in the paper; a training aid for small budgets. The audio-driven part of a talking head
    (the mouth) is a few latent positions whose values vary over time by a fraction of the
    latent's scale, so what the audio can explain is a small share of the plain loss. The
    weight finds the moving positions in the data itself (no mouth box needed, so it works on
    real clips too); squaring keeps slow head sway near 1 while the mouth gets the full
    ``1 + strength``. The cpu recipe uses it together with audio-token whitening
    (:meth:`reference.model.RestModel.measure_audio_stats`); alone it did not make the audio
    path learn."""
    m = z0[:, :, 1:].float().std(dim=2).mean(dim=1)                      # (B, h, w)
    m = m / m.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    return (1 + strength * m.pow(2))[:, None, None]


def euler_step(z: Tensor, v: Tensor, t_cur: float | Tensor, t_next: float | Tensor) -> Tensor:
    """One Euler step of eq. 1 from t_cur down to t_next: Z <- Z + (t_next - t_cur) v."""
    return z + (t_next - t_cur) * v


def check_guidance_scale(value: float, name: str = "CFG scale") -> float:
    """``value`` as a float if it is a usable guidance scale, else ValueError saying the range."""
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= MAX_GUIDANCE_SCALE:
        raise ValueError(f"{name} must be a finite number in [0, {MAX_GUIDANCE_SCALE:g}] (1 = no "
                         f"guidance, the paper uses 6); got {value!r}")
    return value


def joint_cfg(v_cond: Tensor, v_uncond: Tensor, alpha: float) -> Tensor:
    """Joint CFG (two branches): v = v_u + alpha (v_c - v_u)."""
    return v_uncond + alpha * (v_cond - v_uncond)


def multi_cfg(v_full: Tensor, v_ref: Tensor, v_none: Tensor, audio_scale: float,
              ref_scale: float) -> Tensor:
    """Three-branch option: separate scales for the reference image and for the audio.

    v_none: no reference, null audio; v_ref: reference, null audio; v_full: reference and audio.
    """
    return v_none + ref_scale * (v_ref - v_none) + audio_scale * (v_full - v_ref)


def guide(v: Tensor, branches: int, cfg_scale: float, audio_scale: float = 0.0,
          ref_scale: float = 0.0) -> Tensor:
    """The guided velocity of one stream from its branches stacked on dim 0: 1 branch (no
    guidance: the conditional velocity itself), 2 (Joint CFG) or 3 (multi-CFG)."""
    if branches == 1:
        return v[:1]
    if branches == 2:
        return joint_cfg(v[:1], v[1:2], cfg_scale)
    return multi_cfg(v[:1], v[1:2], v[2:3], audio_scale, ref_scale)
