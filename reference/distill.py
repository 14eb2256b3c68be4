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

3. **Distribution matching** (dmd{K}, ``--method dmd`` or after the step phases with
   ``--method progressive+dmd``; DMD, Yin et al. 2024, trained on the student's own rollouts as
   Self-Forcing does): the K-step student samples whole clips exactly as Algorithm 1 streams them
   (``rollout``), and each sample x is pushed along ``x0_fake(x_t) - x0_real(x_t)``: the real
   score is the Joint-CFG teacher, the fake score a copy of it that learns, by flow matching on
   the student's samples, what the student makes. Progressive distillation regresses each
   teacher move's mean; DMD matches the teacher's distribution instead (docs/training.md, "What
   distribution matching gave").

Everything else is the student stage's: the streaming topology (block mask, ID sink, previous
chunk), asynchronous per-chunk noise, here with every chunk at a level of the student's own
K-step schedule (the only levels it meets when sampling), and the loss over non-reference frames.
Each phase writes a complete checkpoint that samples the way it was distilled to
(``sampling.steps = k``, ``sampling.cfg_mode = "none"``), so any of them loads in generate, eval
and the streaming API as it is.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import GUIDANCE_BRANCHES
from .flow import add_noise, check_guidance_scale, flow_matching_loss, joint_cfg, timestep_schedule
from .objectives import pool_batch

DISTILL_METHODS = ("progressive", "dmd", "progressive+dmd")


def distill_phases(init_steps: int, target_steps: int, method: str = "progressive") -> list[tuple[str, int]]:
    """The phases from an N-step guided sampler to a K-step one-branch sampler: progressive
    [("guidance", N), ("steps", N/2), ..., ("steps", K)] (K a power-of-two fraction of N),
    dmd [("dmd", K)] (any K), progressive+dmd the one and then the other."""
    if method not in DISTILL_METHODS:
        raise ValueError(f"distillation method must be one of {DISTILL_METHODS}, not {method!r}")
    if target_steps < 1:
        raise ValueError(f"the distilled sampler needs at least 1 step, got {target_steps}")
    if method == "dmd":
        return [("dmd", target_steps)]
    if init_steps % target_steps or (init_steps // target_steps) & (init_steps // target_steps - 1):
        raise ValueError(f"progressive distillation halves the steps: {target_steps} must be "
                         f"{init_steps} / 2^n (or use --method dmd)")
    phases, k = [("guidance", init_steps)], init_steps
    while k > target_steps:
        k //= 2
        phases.append(("steps", k))
    return phases + [("dmd", target_steps)] * (method == "progressive+dmd")


def guided_velocity(dit: nn.Module, z_t: Tensor, t: Tensor, audio: Tensor, alpha: float) -> Tensor:
    """The streaming DiT's Joint-CFG velocity v_u + alpha (v_c - v_u) over a whole clip."""
    cond = dit.forward_student(z_t, t, audio)
    drop = torch.ones(z_t.shape[0], dtype=torch.bool, device=z_t.device)
    return joint_cfg(cond, dit.forward_student(z_t, t, audio, drop=drop), alpha)


def chunk_levels(levels: Tensor, chunk_frames: int) -> Tensor:
    """(B, k) noise levels, one per chunk -> (B, 1 + k c) per latent frame, z_R at t = 0 (eq. 15)."""
    zero = torch.zeros(levels.shape[0], 1, dtype=levels.dtype, device=levels.device)
    return torch.cat([zero, levels.repeat_interleave(chunk_frames, dim=1)], dim=1)


def frames(x: Tensor) -> Tensor:
    """Per-frame values (B, F) -> broadcastable over latents (B, 1, F, 1, 1)."""
    return x[:, None, :, None, None]


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
        per_frame = chunk_levels(level, self.cfg.chunk_latent_frames)         # (B, 1 + k c)
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
            return guided_velocity(teacher, z_t, t, audio, self.alpha)
        fine = self.fine.to(z_t.device)
        t_mid, t_next = fine[2 * per_frame + 1], fine[2 * per_frame + 2]
        t_mid[:, 0] = t_next[:, 0] = 0.0

        def dt(a, b):
            return frames(b - a).to(z_t.dtype)
        z_mid = z_t + dt(t, t_mid) * teacher.forward_student(z_t, t, audio)
        z_next = z_mid + dt(t_mid, t_next) * teacher.forward_student(z_mid, t_mid, audio)
        step = dt(t, t_next)
        return torch.where(step != 0, (z_next - z_t) / torch.where(step != 0, step, 1.0), torch.zeros_like(z_t))

    def make_batch(self, trainer, step_gen, rng):
        z0, audio = pool_batch(trainer, step_gen)
        level = torch.randint(self.steps, (z0.shape[0], trainer.args.num_chunks), generator=step_gen)
        eps = torch.randn(z0.shape, generator=step_gen)
        return {"z0": z0, "audio": audio, "level": level, "eps": eps}


class DMDObjective(nn.Module):
    """Distribution matching distillation of a K-step one-branch student (the ``model``, its
    config's steps) against a Joint-CFG ``teacher`` (the real score, at ``guidance_scale``,
    default its own CFG scale). Each step:

    1. the student streams a clip from noise as Algorithm 1 does (``rollout``), keeping the
       graph of one step drawn at random (Self-Forcing's gradient truncation): its prediction
       x of the clean clip;
    2. x is noised again at a level per chunk, t ~ U(t_min, t_max), and both scores predict the
       clean clip: the student is moved along ``x0_fake - x0_real``, normalised by the mean of
       ``|x - x0_real|`` per clip (DMD's eq. 7-8 with its normaliser);
    3. the fake score (``auxiliary``, a trained copy of the teacher that is not part of the
       checkpointed model: the trainer keeps it beside the train state, ``latest/auxiliary.pt``)
       learns the student's samples by flow matching, so that it keeps scoring what the student
       makes.

    Both losses are summed and take one optimizer step: no gradient crosses between them (x is
    detached for the fake score's loss, the scores are computed without grad for the student's).
    With ``fake_updates`` k > 1 (DMD2's two time-scale update rule) only the fake score learns
    on k - 1 steps of every k, so that it keeps up with the student.
    """
    t_min, t_max = 0.02, 0.98

    def __init__(self, model, teacher, guidance_scale: float | None = None, fake_updates: int = 1):
        super().__init__()
        self.dit, self.model, self.cfg = model.dit, model, model.cfg
        self.teacher_dit = teacher.dit
        s, t = self.cfg.sampling, teacher.cfg.sampling
        if t.cfg_mode != "joint":
            raise ValueError(f"distribution matching needs a Joint-CFG teacher (the real score), "
                             f"got {t.cfg_mode}")
        if GUIDANCE_BRANCHES[s.cfg_mode] != 1:
            raise ValueError(f"distribution matching trains a one-branch student, got {s.cfg_mode}")
        if s.cache_mode != "per_step":
            raise ValueError("distribution matching rolls the student out with per-step context caches "
                             f"(sampling.cache_mode 'per_step'), got {s.cache_mode!r}")
        self.alpha = t.cfg_scale if guidance_scale is None else \
            check_guidance_scale(guidance_scale, "the real score's guidance scale")
        self.steps, self.schedule = s.steps, timestep_schedule(s.steps, s.shift)
        if fake_updates < 1:
            raise ValueError(f"the fake score needs at least 1 update per student update, got {fake_updates}")
        self.fake_updates = fake_updates
        self.auxiliary = copy.deepcopy(teacher.dit).train().requires_grad_(True)   # the fake score

    def rollout(self, z_ref: Tensor, noise: Tensor, audio: Tensor, exit_step: int) -> Tensor:
        """The clip the student streams from ``noise`` (B, C, k c, h, w) after reference z_R
        (B, C, 1, h, w): its prediction of the clean clip at step ``exit_step`` (the last: the
        sampler's output), with grad through that step only. Every chunk at step j attends to the
        previous chunk at its step j, which is what Algorithm 1's per-step caches hold, so one
        block-mask pass per step is the stream (tests/reference/test_distill.py compares them)."""
        z = torch.cat([z_ref, noise], dim=2)
        levels = self.schedule.to(z.device)
        per_chunk = torch.ones(z.shape[0], noise.shape[2] // self.cfg.chunk_latent_frames, device=z.device)
        for j in range(exit_step + 1):
            t = chunk_levels(per_chunk * levels[j], self.cfg.chunk_latent_frames)
            with torch.set_grad_enabled(j == exit_step and torch.is_grad_enabled()):
                v = self.dit.forward_student(z, t, audio)
            if j == exit_step:
                return z - frames(t).to(z.dtype) * v                           # eq. 2: Z0 = Z(t) - t v
            t_next = chunk_levels(per_chunk * levels[j + 1], self.cfg.chunk_latent_frames)
            z = z + frames(t_next - t).to(z.dtype) * v                         # Euler, z_R unmoved

    def forward(self, batch):
        z0, audio, update_student = batch["z0"], batch["audio"], batch["update_student"]
        with torch.set_grad_enabled(update_student and torch.is_grad_enabled()):
            x = self.rollout(z0[:, :, :1], batch["noise"][:, :, 1:], audio, batch["exit_step"])
        sample = x.detach()
        t_fake = chunk_levels(batch["fake_level"], self.cfg.chunk_latent_frames)
        v_fake = self.auxiliary.forward_student(add_noise(sample, t_fake, batch["fake_eps"]), t_fake, audio)
        loss_fake = flow_matching_loss(v_fake, batch["fake_eps"] - sample, t_fake)
        if not update_student:
            return loss_fake, {"loss": loss_fake.item(), "loss_fake": loss_fake.item()}
        t = chunk_levels(batch["level"], self.cfg.chunk_latent_frames)
        with torch.no_grad():
            x_t = add_noise(x, t, batch["eps"])
            x0_real = x_t - frames(t) * guided_velocity(self.teacher_dit, x_t, t, audio, self.alpha)
            x0_fake = x_t - frames(t) * self.auxiliary.forward_student(x_t, t, audio)
            normaliser = (x - x0_real)[:, :, 1:].abs().mean(dim=(1, 2, 3, 4), keepdim=True)
            grad = (x0_fake - x0_real) / normaliser.clamp_min(1e-6)
        # d/dx of 0.5 |x - sg(x - grad)|^2 is grad: the DMD update, as a loss autograd can take.
        loss_dmd = 0.5 * F.mse_loss(x[:, :, 1:].float(), (x - grad)[:, :, 1:].detach().float())
        loss = loss_dmd + loss_fake
        return loss, {"loss": loss.item(), "loss_dmd": loss_dmd.item(), "loss_fake": loss_fake.item(),
                      "fake_minus_real": (x0_fake - x0_real)[:, :, 1:].abs().mean().item()}

    def exit_step(self, trainer) -> int:
        """The rollout step that keeps its graph: drawn alike on every rank (under FSDP each
        forward gathers the shards, so every rank must run as many)."""
        return int(torch.randint(self.steps, (), generator=trainer.shared_generator()))

    def make_batch(self, trainer, step_gen, rng):
        z0, audio = pool_batch(trainer, step_gen)
        B, k = z0.shape[0], trainer.args.num_chunks

        def level():
            return self.t_min + (self.t_max - self.t_min) * torch.rand(B, k, generator=step_gen)
        return {"z0": z0, "audio": audio, "noise": torch.randn(z0.shape, generator=step_gen),
                "exit_step": self.exit_step(trainer),
                # DMD2's two time-scale rule: the fake score alone for fake_updates - 1 steps,
                # then both (the last of each group, so that log lines every k steps show both).
                "update_student": (trainer.step + 1) % self.fake_updates == 0,
                "level": level(), "eps": torch.randn(z0.shape, generator=step_gen),
                "fake_level": level(), "fake_eps": torch.randn(z0.shape, generator=step_gen)}
