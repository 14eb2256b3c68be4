"""Training objectives: the teacher's flow matching and the student's Asynchronous Streaming
Distillation (paper Sec. 3.3, eq. 15-24).

Both models see the same noisy clip ``Z(t)``: the reference frame clean, every chunk at its own
noise level (eq. 15-16). The teacher attends over the whole clip; the student over
[sink | previous chunk | current chunk] (one pass with a block mask). The student is trained with

    L_SD = L_S + lambda_con L_CON + lambda_smo L_SMO                                   (eq. 24)

where L_S is its own flow-matching loss (eq. 20), L_CON pulls each latent frame's velocity
towards the frozen teacher's velocity of the same frame and away from the teacher's other frames
(eq. 21), and L_SMO matches the second temporal difference of the velocities (eq. 22-23).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ASDConfig
from .flow import async_timesteps, flow_matching_loss, motion_weight, noise_and_target


def _frames(v: Tensor) -> Tensor:
    """(B, C, F, h, w) -> (B, F - 1, C*h*w): the non-reference frames, flattened."""
    return v[:, :, 1:].transpose(1, 2).flatten(2).float()


def contrastive_loss(v_student: Tensor, v_teacher: Tensor, tau: float = 0.1,
                     mode: str = "decoupled") -> Tensor:
    """Eq. 21: -1/f sum_i log( exp(sim(s_i, t_i)/tau) / sum_{j != i} exp(sim(s_i, t_j)/tau) ).

    sim is the cosine similarity of frame velocities; frames 1..f are the non-reference frames
    of one clip (negatives never cross clips). ``mode="infonce"`` keeps j = i in the denominator.
    """
    s, t = F.normalize(_frames(v_student), dim=-1), F.normalize(_frames(v_teacher), dim=-1)
    logits = s @ t.transpose(1, 2) / tau                       # (B, f, f): [i, j] = sim(s_i, t_j)
    positive = logits.diagonal(dim1=1, dim2=2)
    if mode == "decoupled":
        eye = torch.eye(logits.shape[-1], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(eye, float("-inf"))
    elif mode != "infonce":
        raise ValueError(f"contrastive mode must be 'decoupled' or 'infonce', not {mode!r}")
    return (torch.logsumexp(logits, dim=-1) - positive).mean()


def second_difference(v: Tensor) -> Tensor:
    """Eq. 22: Delta v_i = v_{i+1} - 2 v_i + v_{i-1} over the non-reference latent frames."""
    x = v[:, :, 1:].float()
    return x[:, :, 2:] - 2 * x[:, :, 1:-1] + x[:, :, :-2]


def smoothness_loss(v_student: Tensor, v_teacher: Tensor) -> Tensor:
    """Eq. 23 as the text describes it: mean_i || Delta v_student_i - Delta v_teacher_i ||^2."""
    return (second_difference(v_student) - second_difference(v_teacher)).pow(2).mean()


# --------------------------------------------------------------------------------------------
# One training example: the noisy clip both models see
# --------------------------------------------------------------------------------------------


@dataclass
class NoisyClip:
    z_t: Tensor       # (B, C, 1 + k c, h, w): Z(t), eq. 16
    t: Tensor         # (B, 1 + k c): 0 for the reference frame, one level per chunk (eq. 15)
    target: Tensor    # eps - Z0 (eq. 17)
    audio: Tensor     # (B, k c, h_w, d_A)
    drop: Tensor      # (B,) bool: null audio and null text for these clips (CFG dropout)
    text: Tensor | None = None
    weight: Tensor | None = None   # (B, 1, 1, h, w) per-position loss weight (asd.motion_weight)


def make_noisy_clip(z0: Tensor, audio: Tensor, chunk_frames: int, asd: ASDConfig,
                    generator: torch.Generator, text: Tensor | None = None,
                    noise=noise_and_target) -> NoisyClip:
    """Asynchronous noise (eq. 15-16) and condition dropout, all random draws from ``generator``.

    Dropout: with probability ``audio_drop`` a clip gets null audio and null text (the
    unconditional branch of Joint CFG; the DiT substitutes them); with ``ref_drop`` its
    reference latent is zeroed (the "neither" branch of multi-CFG). The generator lives on the
    CPU, so a run is reproducible on any device. With ``asd.motion_weight`` > 0 the clip also
    carries the per-position weight of :func:`reference.flow.motion_weight`. ``noise`` makes
    (Z(t), target) from (Z0, t, eps): the DiT's ``noise_and_target`` (fused by apply_kernels).
    """
    B, frames = z0.shape[0], z0.shape[2]
    num_chunks = (frames - 1) // chunk_frames
    t = async_timesteps(B, num_chunks, chunk_frames, generator=generator).to(z0.device)
    eps = torch.randn(z0.shape, generator=generator).to(z0.device, z0.dtype)
    drop = (torch.rand(B, generator=generator) < asd.audio_drop).to(z0.device)
    drop_ref = (torch.rand(B, generator=generator) < asd.ref_drop).to(z0.device)
    z0 = z0.clone()
    z0[:, :, 0] = torch.where(drop_ref[:, None, None, None], torch.zeros_like(z0[:, :, 0]), z0[:, :, 0])
    weight = motion_weight(z0, asd.motion_weight) if asd.motion_weight else None
    z_t, target = noise(z0, t, eps)
    return NoisyClip(z_t, t, target, audio, drop, text, weight)


def teacher_loss(dit, clip: NoisyClip) -> tuple[Tensor, dict]:
    """The teacher's flow-matching loss (eq. 18) under full attention and asynchronous noise."""
    v = dit.forward_teacher(clip.z_t, clip.t, clip.audio, clip.text, clip.drop)
    loss = flow_matching_loss(v, clip.target, clip.t, clip.weight)
    return loss, {"loss": loss.item()}


def student_loss(dit, teacher_dit: nn.Module | None, clip: NoisyClip, asd: ASDConfig
                 ) -> tuple[Tensor, dict]:
    """Eq. 24: L_S + lambda_con L_CON + lambda_smo L_SMO. The teacher is frozen (no grad); with
    both lambdas 0 (or no teacher) this is plain streaming flow matching ("without ASD")."""
    v = dit.forward_student(clip.z_t, clip.t, clip.audio, clip.text, clip.drop)
    l_s = flow_matching_loss(v, clip.target, clip.t, clip.weight)
    logs = {"loss_s": l_s.item()}
    loss = l_s
    if teacher_dit is not None and (asd.lambda_con or asd.lambda_smo):
        with torch.no_grad():
            v_teacher = teacher_dit.forward_teacher(clip.z_t, clip.t, clip.audio, clip.text, clip.drop)
        if asd.lambda_con:
            l_con = contrastive_loss(v, v_teacher, asd.tau, asd.contrastive)
            loss = loss + asd.lambda_con * l_con
            logs["loss_con"] = l_con.item()
        if asd.lambda_smo:
            l_smo = smoothness_loss(v, v_teacher)
            loss = loss + asd.lambda_smo * l_smo
            logs["loss_smo"] = l_smo.item()
    logs["loss"] = loss.item()
    return loss, logs
