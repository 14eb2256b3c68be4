import pytest
import torch

from reference.flow import (add_noise, async_timesteps, euler_step, flow_matching_loss,
                            joint_cfg, motion_weight, multi_cfg, shift_timesteps, timestep_schedule,
                            velocity_target)


def test_schedule_runs_from_noise_to_data():
    for shift in (1.0, 3.0):
        t = timestep_schedule(8, shift)
        assert t.shape == (9,) and t[0] == 1 and t[-1] == 0
        assert torch.all(t[1:] < t[:-1])
    assert torch.allclose(timestep_schedule(4), torch.tensor([1, 0.75, 0.5, 0.25, 0.0]))
    # shift > 1 keeps more of the steps at high noise
    assert shift_timesteps(torch.tensor(0.5), 3.0) > 0.5


def test_async_noise_levels_per_chunk():
    g = torch.Generator().manual_seed(0)
    t = async_timesteps(batch=4, num_chunks=5, chunk_frames=3, generator=g)
    assert t.shape == (4, 16)
    assert torch.all(t[:, 0] == 0)                       # the reference frame stays clean
    chunks = t[:, 1:].view(4, 5, 3)
    assert torch.all(chunks == chunks[..., :1])          # one level per chunk (eq. 15)
    assert chunks[..., 0].unique().numel() == 20         # drawn independently


def test_add_noise_is_eq16_per_frame():
    z0, eps = torch.randn(2, 4, 7, 3, 3), torch.randn(2, 4, 7, 3, 3)
    t = async_timesteps(2, 2, 3)
    zt = add_noise(z0, t, eps)
    for b in range(2):
        for f in range(7):
            expect = (1 - t[b, f]) * z0[b, :, f] + t[b, f] * eps[b, :, f]
            torch.testing.assert_close(zt[b, :, f], expect)
    assert torch.equal(zt[:, :, 0], z0[:, :, 0])


def test_euler_on_the_exact_field_recovers_data():
    z0, eps = torch.randn(1, 4, 3, 2, 2), torch.randn(1, 4, 3, 2, 2)
    v = velocity_target(z0, eps)
    sched = timestep_schedule(8, 3.0)
    z = eps.clone()
    for j in range(8):
        z = euler_step(z, v, sched[j], sched[j + 1])
    torch.testing.assert_close(z, z0, atol=1e-5, rtol=1e-5)


def test_cfg_formulas():
    vc, vu, vr = torch.randn(3, 5, 5).unbind(0)
    torch.testing.assert_close(joint_cfg(vc, vu, 6.0), vu + 6.0 * (vc - vu))
    torch.testing.assert_close(joint_cfg(vc, vu, 1.0), vc)
    torch.testing.assert_close(joint_cfg(vc, vu, 0.0), vu)
    torch.testing.assert_close(multi_cfg(vc, vr, vu, 1.0, 1.0), vc)
    torch.testing.assert_close(multi_cfg(vc, vr, vu, 4.0, 2.0), vu + 2.0 * (vr - vu) + 4.0 * (vc - vr))


def test_loss_ignores_the_reference_frame():
    target = torch.zeros(2, 4, 4, 2, 2)
    pred = target.clone()
    pred[:, :, 0] = 100.0
    t = async_timesteps(2, 1, 3)
    assert flow_matching_loss(pred, target, t) == 0
    pred[:, :, 2] = 1.0
    assert torch.isclose(flow_matching_loss(pred, target, t), torch.tensor(1 / 3))


def test_weighted_loss_is_a_weighted_mean_over_positions():
    target = torch.zeros(1, 2, 4, 1, 2)          # 2 positions per frame
    pred = target.clone()
    pred[..., 0] = 1.0                            # error 1 at position 0, 0 at position 1
    t = async_timesteps(1, 1, 3)
    assert torch.isclose(flow_matching_loss(pred, target, t), torch.tensor(0.5))
    weight = torch.tensor([3.0, 1.0]).view(1, 1, 1, 1, 2)
    assert torch.isclose(flow_matching_loss(pred, target, t, weight), torch.tensor(0.75))
    # A uniform weight is the plain loss.
    assert torch.isclose(flow_matching_loss(pred, target, t, torch.full_like(weight, 7.0)), torch.tensor(0.5))


def test_motion_weight_finds_the_moving_position():
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 4, 1, 3, 3, generator=g).repeat(1, 1, 7, 1, 1)   # a still clip ...
    z0[:, :, 1:, 1, 2] += torch.randn(2, 4, 6, generator=g)              # ... with one moving position
    z0[:, :, 0, 0, 0] += 5.0                                              # the reference frame does not count
    w = motion_weight(z0, 10.0)
    assert w.shape == (2, 1, 1, 3, 3)
    assert torch.allclose(w[:, 0, 0, 1, 2], torch.tensor(11.0))
    still = torch.ones(3, 3, dtype=torch.bool)
    still[1, 2] = False
    assert torch.all(w[:, 0, 0][:, still] == 1.0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5, 20.5, 1e30])
def test_unusable_guidance_scales_are_refused_everywhere(value):
    import dataclasses
    from reference.config import get_config
    from reference.flow import check_guidance_scale
    with pytest.raises(ValueError, match=r"finite number in \[0, 20\]"):
        check_guidance_scale(value)
    cfg = get_config("tiny")
    with pytest.raises(ValueError, match="sampling.cfg_scale"):
        dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, cfg_scale=value)).validate()
    assert check_guidance_scale(0) == 0.0 and check_guidance_scale(6) == 6.0
