"""The distillation objective (reference/distill.py); the stage's phases, checkpoints and resume
are in test_train.py."""
import copy

import pytest
import torch

from reference.distill import DistillObjective, DMDObjective
from reference.model import RestModel
from tests.conftest import assert_latents_close, make_tiny_config, open_audio_path


def student_and_teacher(teacher_scale: float):
    """A one-branch 8-step student and its Joint-CFG teacher: the same random tiny DiT, its audio
    path open so that the two guidance branches differ."""
    cfg = make_tiny_config()
    cfg.sampling.steps, cfg.sampling.cfg_mode, cfg.sampling.cfg_scale = 8, "joint", teacher_scale
    teacher = open_audio_path(RestModel.random(cfg, seed=0))
    student = copy.deepcopy(teacher)
    student.cfg.sampling.cfg_mode = "none"
    return student, teacher


@pytest.mark.parametrize("guidance_scale, alpha", [(None, 6.0), (9.0, 9.0)])
def test_the_guidance_phase_distils_the_guided_velocity(guidance_scale, alpha):
    """The target is v_u + alpha (v_c - v_u) of the teacher: alpha its own CFG scale unless the
    stage is given another (`--guidance-scale`)."""
    objective = DistillObjective(*student_and_teacher(6.0), "guidance", guidance_scale)
    torch.manual_seed(0)
    z_t, t = torch.randn(2, 8, 7, 4, 4), torch.rand(2, 7)
    audio = torch.randn(2, 6, 4, 16)
    with torch.no_grad():
        target = objective._target(z_t, t, None, audio)
        teacher = objective.teacher_dit
        cond = teacher.forward_student(z_t, t, audio)
        uncond = teacher.forward_student(z_t, t, audio, drop=torch.ones(2, dtype=torch.bool))
    assert (cond - uncond).abs().max() > 1e-3                          # the branches differ
    torch.testing.assert_close(target, uncond + alpha * (cond - uncond))


def test_a_guidance_scale_out_of_range_is_refused():
    with pytest.raises(ValueError, match="distilled guidance scale"):
        DistillObjective(*student_and_teacher(6.0), "guidance", -1.0)


def dmd_pair(teacher_scale: float, steps: int = 2):
    """A ``steps``-step one-branch student and its Joint-CFG teacher (the real score)."""
    student, teacher = student_and_teacher(teacher_scale)
    student.cfg.sampling.steps = steps
    return student, teacher


@torch.no_grad()
def test_the_dmd_rollout_is_the_stream():
    """The student's rollout over a whole clip (one block-mask pass per step) is what Algorithm 1
    streams chunk by chunk with per-step caches, from the same noise and audio."""
    from reference.pipeline import ReferenceStream
    student, teacher = dmd_pair(6.0)
    objective = DMDObjective(student, teacher)
    cfg, chunks = student.cfg, 3
    c, g, s = cfg.chunk_latent_frames, cfg.latent_size, cfg.speech
    image = torch.randint(0, 256, (cfg.resolution, cfg.resolution, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1)).numpy()
    tokens = torch.randn(1, chunks * c, s.audio_tokens_per_frame, s.audio_dim)
    stream = ReferenceStream(student, image, seed=3)
    streamed = torch.cat([stream.denoise(tokens[:, i * c:(i + 1) * c]) for i in range(chunks)], dim=2)
    gen = torch.Generator().manual_seed(3)        # the stream's noise, chunk after chunk
    noise = torch.cat([torch.randn(1, cfg.vae.latent_channels, c, g, g, generator=gen)
                       for _ in range(chunks)], dim=2)
    z_ref = student.encode_reference(image)
    rolled = objective.rollout(z_ref, noise, tokens, exit_step=cfg.sampling.steps - 1)
    assert torch.equal(rolled[:, :, :1], z_ref)
    assert_latents_close(rolled[:, :, 1:], streamed)


def dmd_step(alpha: float, update_student: bool = True):
    """One DMD loss against a teacher guided at ``alpha``: (objective, loss, logs)."""
    student, teacher = dmd_pair(alpha)
    objective = DMDObjective(student, teacher, fake_updates=2)
    torch.manual_seed(0)
    cfg, B, k = student.cfg, 2, 2
    shape = (B, cfg.vae.latent_channels, 1 + k * cfg.chunk_latent_frames, cfg.latent_size, cfg.latent_size)
    s = cfg.speech
    batch = {"z0": torch.randn(shape), "noise": torch.randn(shape), "exit_step": 1,
             "update_student": update_student,
             "audio": torch.randn(B, k * cfg.chunk_latent_frames, s.audio_tokens_per_frame, s.audio_dim),
             "level": torch.rand(B, k), "eps": torch.randn(shape),
             "fake_level": torch.rand(B, k), "fake_eps": torch.randn(shape)}
    return (objective, *objective(batch))


def test_dmd_moves_the_student_only_where_the_scores_differ():
    """The fake score starts as a copy of the teacher: against the teacher unguided (alpha 1)
    both scores agree and the student's loss is zero up to rounding; against a guided teacher
    the student is moved. The fake score learns from the first step either way."""
    unguided, guided = dmd_step(1.0)[2], dmd_step(6.0)[2]
    assert unguided["loss_dmd"] < 1e-10 and unguided["fake_minus_real"] < 1e-5
    assert guided["loss_dmd"] > 1e-4 and guided["fake_minus_real"] > 1e-3
    assert unguided["loss_fake"] > 0 and guided["loss_fake"] > 0


def test_on_fake_only_steps_the_student_gets_no_gradient():
    """With fake_updates > 1, the steps between the student's train the fake score alone."""
    for update_student in (True, False):
        objective, loss, logs = dmd_step(6.0, update_student)
        loss.backward()
        student_grads = [p.grad for p in objective.dit.parameters() if p.grad is not None]
        assert ("loss_dmd" in logs) == bool(student_grads) == update_student
        assert all(p.grad is not None for p in objective.auxiliary.parameters())


def test_dmd_refuses_a_teacher_without_guidance_and_a_clean_cache():
    student, teacher = dmd_pair(6.0)
    teacher.cfg.sampling.cfg_mode = "none"
    with pytest.raises(ValueError, match="Joint-CFG teacher"):
        DMDObjective(student, teacher)
    student, teacher = dmd_pair(6.0)
    student.cfg.sampling.cache_mode = "clean"
    with pytest.raises(ValueError, match="per-step context caches"):
        DMDObjective(student, teacher)
