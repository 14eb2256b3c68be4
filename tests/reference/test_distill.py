"""The distillation objective (reference/distill.py); the stage's phases, checkpoints and resume
are in test_train.py."""
import copy

import pytest
import torch

from reference.distill import DistillObjective
from reference.model import RestModel
from tests.conftest import make_tiny_config, open_audio_path


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
