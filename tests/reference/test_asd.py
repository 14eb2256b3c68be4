"""ASD losses (eq. 21-24) on hand-made tensors against a direct evaluation of each equation."""
import math

import pytest
import torch

from reference.asd import (contrastive_loss, make_noisy_clip, second_difference, smoothness_loss,
                           student_loss, teacher_loss)
from reference.config import ASDConfig
from reference.dit import A2VDiT


def direct_contrastive(vs, vt, tau, include_positive=False):
    """Eq. 21 with explicit loops over the batch and the non-reference frames 1..f."""
    total, count = 0.0, 0
    for b in range(vs.shape[0]):
        f = vs.shape[2] - 1
        s = [vs[b, :, i].flatten() for i in range(1, f + 1)]
        t = [vt[b, :, j].flatten() for j in range(1, f + 1)]
        for i in range(f):
            sim = lambda j: float(torch.dot(s[i], t[j]) / (s[i].norm() * t[j].norm()))
            num = math.exp(sim(i) / tau)
            den = sum(math.exp(sim(j) / tau) for j in range(f) if include_positive or j != i)
            total += -math.log(num / den)
            count += 1
    return total / count


@pytest.mark.parametrize("mode", ["decoupled", "infonce"])
def test_contrastive_matches_equation_21(mode):
    g = torch.Generator().manual_seed(1)
    vs, vt = torch.randn(2, 3, 7, 2, 2, generator=g), torch.randn(2, 3, 7, 2, 2, generator=g)
    got = contrastive_loss(vs, vt, tau=0.5, mode=mode)
    assert got.item() == pytest.approx(direct_contrastive(vs, vt, 0.5, mode == "infonce"), rel=1e-5)


def test_contrastive_prefers_matching_frames():
    g = torch.Generator().manual_seed(2)
    vt = torch.randn(1, 4, 7, 2, 2, generator=g)
    shuffled = vt[:, :, [0, 2, 1, 4, 3, 6, 5]]
    assert contrastive_loss(vt, vt, 0.1) < contrastive_loss(shuffled, vt, 0.1)
    # The reference frame (frame 0) is not part of the loss.
    changed = vt.clone()
    changed[:, :, 0] = 100.0
    assert contrastive_loss(changed, vt, 0.1) == pytest.approx(contrastive_loss(vt, vt, 0.1).item())


def test_smoothness_matches_equations_22_23():
    g = torch.Generator().manual_seed(3)
    vs, vt = torch.randn(2, 3, 7, 2, 2, generator=g), torch.randn(2, 3, 7, 2, 2, generator=g)
    terms = []
    for i in range(2, 6):  # interior non-reference frames 2..f-1 (frame 0 is the reference)
        ds = vs[:, :, i + 1] - 2 * vs[:, :, i] + vs[:, :, i - 1]
        dt = vt[:, :, i + 1] - 2 * vt[:, :, i] + vt[:, :, i - 1]
        terms.append((ds - dt).pow(2))
    expected = torch.stack(terms).mean()
    assert smoothness_loss(vs, vt).item() == pytest.approx(expected.item(), rel=1e-6)
    # Velocities linear in time have no second difference: no smoothness penalty.
    ramp = torch.arange(7.0).view(1, 1, 7, 1, 1).expand(1, 3, 7, 2, 2)
    assert second_difference(ramp).abs().max() == 0
    assert smoothness_loss(ramp * 2 + 1, ramp).item() == 0


def test_noisy_clip_is_asynchronous_with_a_clean_reference(tiny_config):
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(64, 8, 7, 4, 4)
    audio = torch.randn(64, 6, 4, 16)
    clip = make_noisy_clip(z0, audio, 3, ASDConfig(audio_drop=0.5, ref_drop=0.0), g)
    assert torch.all(clip.t[:, 0] == 0)
    assert torch.equal(clip.z_t[:, :, 0], z0[:, :, 0])              # reference frame stays clean
    assert torch.all(clip.t[:, 1:4] == clip.t[:, 1:2]) and torch.all(clip.t[:, 4:] == clip.t[:, 4:5])
    assert not torch.allclose(clip.t[:, 1], clip.t[:, 4])              # chunks get their own levels
    assert 10 < clip.drop.sum() < 54                                    # about half the clips
    # Same generator seed, same clip.
    again = make_noisy_clip(z0, audio, 3, ASDConfig(audio_drop=0.5, ref_drop=0.0),
                            torch.Generator().manual_seed(0))
    assert torch.equal(again.z_t, clip.z_t) and torch.equal(again.drop, clip.drop)
    assert clip.weight is None                                          # the paper's plain loss


def test_motion_weight_reaches_both_losses(tiny_config):
    torch.manual_seed(0)
    dit = A2VDiT(tiny_config)
    z0, audio = torch.randn(2, 8, 7, 4, 4), torch.randn(2, 6, 4, 16)
    plain = make_noisy_clip(z0, audio, 3, ASDConfig(audio_drop=0, ref_drop=0), torch.Generator().manual_seed(1))
    weighted = make_noisy_clip(z0, audio, 3, ASDConfig(audio_drop=0, ref_drop=0, motion_weight=10),
                               torch.Generator().manual_seed(1))
    assert torch.equal(plain.z_t, weighted.z_t) and weighted.weight.shape == (2, 1, 1, 4, 4)
    for loss_fn in (lambda clip: teacher_loss(dit, clip), lambda clip: student_loss(dit, None, clip, ASDConfig())):
        with torch.no_grad():
            a, b = loss_fn(plain)[0], loss_fn(weighted)[0]
        assert torch.isfinite(b) and not torch.isclose(a, b)


def test_dropped_clips_see_null_conditions(tiny_config):
    dit = A2VDiT(tiny_config)
    t = torch.rand(2, 7)
    audio = torch.randn(2, 6, 4, 16)
    drop = torch.tensor([True, False])
    cond = dit.condition(t, audio, None, 2, 6, drop)
    assert torch.equal(cond.audio[0], dit.null_audio_like(1, 6)[0])
    assert torch.equal(cond.audio[1], audio[1])


def test_student_loss_adds_weighted_terms(tiny_config):
    torch.manual_seed(0)
    student, teacher = A2VDiT(tiny_config), A2VDiT(tiny_config)
    g = torch.Generator().manual_seed(0)
    clip = make_noisy_clip(torch.randn(2, 8, 7, 4, 4), torch.randn(2, 6, 4, 16), 3,
                           ASDConfig(audio_drop=0, ref_drop=0), g)
    plain, logs_plain = student_loss(student, None, clip, ASDConfig())
    full, logs = student_loss(student, teacher, clip, ASDConfig(lambda_con=0.5, lambda_smo=2.0))
    assert logs["loss_s"] == pytest.approx(logs_plain["loss"])
    assert full.item() == pytest.approx(logs["loss_s"] + 0.5 * logs["loss_con"] + 2.0 * logs["loss_smo"], rel=1e-5)
    full.backward()
    assert all(p.grad is None for p in teacher.parameters())           # the teacher is frozen
    loss, _ = teacher_loss(teacher, clip)
    assert loss.item() > 0
