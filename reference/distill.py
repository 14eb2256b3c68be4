"""Distillation of a streaming student into a K-step, one-branch sampler (not in the paper).

The paper samples every chunk with 8 Euler steps and Joint CFG: 16 DiT forwards. Two standard
distillations cut that to K forwards, K = 4, 2 or 1, and ``rest-fast train distill`` runs them
as one command, a phase after another, each starting from the last one's weights:

1. **Guidance** (k{N}, N the init's steps): the student, with one branch (conditional only),
   learns the velocity the guided model gives, ``v_u + alpha (v_c - v_u)`` (Meng et al., "On
   Distillation of Guided Diffusion Models"). Same steps, half the forwards. alpha is the
   teacher's CFG scale unless ``guidance_scale`` says otherwise: the step phases that follow
   regress a mean and lose some of the motion and blinks, and a larger alpha here gives them
   more to lose (docs/training.md, "Distillation").
2. **Progressive step distillation** (k{N/2}, ..., k{K}; Salimans and Ho): the student learns
   to make in one Euler step the move its teacher (the previous phase) makes in two, from
   t = T_j of its own K-step schedule to T_{j+1}: target velocity ``(z'' - z_t) / (T_{j+1} - T_j)``
   where z'' is two teacher Euler steps over the finer schedule. Each phase halves the steps.

Everything else is the student stage's: the streaming topology (block mask, ID sink, previous
chunk), asynchronous per-chunk noise, here with every chunk at a level of the student's own
K-step schedule (the only levels it meets when sampling), and the loss over non-reference frames.
Each phase writes a complete checkpoint that samples the way it was distilled to
(``sampling.steps = k``, ``sampling.cfg_mode = "none"``), so any of them loads in generate, eval
and the streaming API as it is.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import GUIDANCE_BRANCHES
from .flow import add_noise, check_guidance_scale, flow_matching_loss, timestep_schedule


def distill_phases(init_steps: int, target_steps: int) -> list[tuple[str, int]]:
    """[("guidance", N), ("steps", N/2), ..., ("steps", K)]: the phases from an N-step guided
    sampler to a K-step one-branch sampler (K a power-of-two fraction of N)."""
    if target_steps < 1 or init_steps % target_steps or (init_steps // target_steps) & (init_steps // target_steps - 1):
        raise ValueError(f"distillation halves the steps: {target_steps} must be {init_steps} / 2^n")
    phases, k = [("guidance", init_steps)], init_steps
    while k > target_steps:
        k //= 2
        phases.append(("steps", k))
    return phases


class DistillObjective(nn.Module):
    """One phase: ``kind`` "guidance" or "steps", the frozen ``teacher`` (a streaming model that
    samples with its config's sampler) and the student ``model`` (its config's steps, one branch).
    ``guidance_scale``: the alpha of the guidance phase (default: the teacher's CFG scale)."""

    def __init__(self, model, teacher, kind: str, guidance_scale: float | None = None):
        super().__init__()
        self.dit, self.model, self.cfg = model.dit, model, model.cfg
        self.teacher_dit, self.kind = teacher.dit, kind
        self.steps, shift = self.cfg.sampling.steps, self.cfg.sampling.shift
        t = teacher.cfg.sampling
        if kind == "guidance":
            if t.cfg_mode != "joint" or t.steps != self.steps:
                raise ValueError(f"guidance distillation needs a Joint-CFG teacher with the student's "
                                 f"{self.steps} steps, got {t.cfg_mode} with {t.steps}")
            self.alpha = t.cfg_scale if guidance_scale is None else \
                check_guidance_scale(guidance_scale, "the distilled guidance scale")
        elif kind == "steps":
            if GUIDANCE_BRANCHES[t.cfg_mode] != 1 or t.steps != 2 * self.steps:
                raise ValueError(f"step distillation needs a one-branch teacher with twice the "
                                 f"student's {self.steps} steps, got {t.cfg_mode} with {t.steps}")
        else:
            raise ValueError(f"distillation kind must be 'guidance' or 'steps', not {kind!r}")
        self.schedule = timestep_schedule(self.steps, shift)                  # the student's
        self.fine = timestep_schedule(2 * self.steps, shift)                  # its teacher's

    def forward(self, batch):
        z0, audio, level = batch["z0"], batch["audio"], batch["level"]
        B, c = z0.shape[0], self.cfg.chunk_latent_frames
        per_frame = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=z0.device),
                               level.repeat_interleave(c, dim=1)], dim=1)     # (B, 1 + k c)
        t = self.schedule.to(z0.device)[per_frame]
        t[:, 0] = 0.0                                                          # z_R stays clean
        z_t = add_noise(z0, t, batch["eps"])
        with torch.no_grad():
            target = self._target(z_t, t, per_frame, audio)
        v = self.dit.forward_student(z_t, t, audio)
        loss = flow_matching_loss(v, target, t)
        return loss, {"loss": loss.item()}

    def _target(self, z_t: Tensor, t: Tensor, per_frame: Tensor, audio: Tensor) -> Tensor:
        teacher = self.teacher_dit
        if self.kind == "guidance":
            cond = teacher.forward_student(z_t, t, audio)
            drop = torch.ones(z_t.shape[0], dtype=torch.bool, device=z_t.device)
            uncond = teacher.forward_student(z_t, t, audio, drop=drop)
            return uncond + self.alpha * (cond - uncond)
        fine = self.fine.to(z_t.device)
        t_mid, t_next = fine[2 * per_frame + 1], fine[2 * per_frame + 2]
        t_mid[:, 0] = t_next[:, 0] = 0.0

        def dt(a, b):   # per latent frame, broadcast over (B, C, F, h, w)
            return (b - a)[:, None, :, None, None].to(z_t.dtype)
        z_mid = z_t + dt(t, t_mid) * teacher.forward_student(z_t, t, audio)
        z_next = z_mid + dt(t_mid, t_next) * teacher.forward_student(z_mid, t_mid, audio)
        step = dt(t, t_next)
        return torch.where(step != 0, (z_next - z_t) / torch.where(step != 0, step, 1.0), torch.zeros_like(z_t))

    def make_batch(self, trainer, step_gen, rng):
        z, feats = trainer.pool.sample(trainer.args.batch_size, trainer.args.num_chunks, step_gen)
        m = self.model
        with torch.no_grad():
            audio = m.speech_tokens(feats.to(trainer.device))
        z0 = m.normalize(z.to(trainer.device))
        level = torch.randint(self.steps, (z0.shape[0], trainer.args.num_chunks), generator=step_gen)
        eps = torch.randn(z0.shape, generator=step_gen)
        return {"z0": z0, "audio": audio, "level": level, "eps": eps}
