"""cfg_euler_step_: kernel == twin (no guidance, joint and multi CFG, per-stream scales), in
place, every branch row updated; the twin equals Algorithm 1's joint_cfg + euler_step."""
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from reference.flow import euler_step, joint_cfg
from rest_fast.ops import cfg_euler_step_, force_backend
from rest_fast.ops.cfg_euler import cfg_euler_step_torch

from .conftest import DEVICE, DTYPES, KERNEL_SETTINGS, assert_close, in_fp32, randn, requires_triton


@requires_triton
@KERNEL_SETTINGS
@given(branches=st.sampled_from([1, 2, 3]), streams=st.integers(1, 3), channels=st.integers(1, 4),
       frames=st.integers(1, 3), side=st.integers(1, 5), dtype=st.sampled_from(DTYPES),
       dt=st.floats(-0.5, -0.01), seed=st.integers(0, 2**16))
# 8 x 3 x 10 x 10 = 2400 values a row: 3 blocks of 1024, for 2 streams.
@example(branches=1, streams=2, channels=8, frames=3, side=10, dtype=torch.float32, dt=-0.5, seed=16)
@example(branches=2, streams=2, channels=8, frames=3, side=10, dtype=torch.float32, dt=-0.125, seed=12)
@example(branches=3, streams=2, channels=8, frames=3, side=10, dtype=torch.bfloat16, dt=-0.125, seed=13)
def test_kernel_equals_twin(branches, streams, channels, frames, side, dtype, dt, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (streams, channels, frames, side, side)
    z = randn(*shape, dtype=dtype, generator=g).unsqueeze(1).repeat(1, branches, 1, 1, 1, 1)
    v = randn(streams, branches, *shape[1:], dtype=dtype, generator=g)
    scales = (torch.rand(streams, branches - 1, generator=g) * 8).to(DEVICE)
    expected = in_fp32(cfg_euler_step_torch, z, v, scales, dt)
    with force_backend("triton"):
        out = cfg_euler_step_(z, v, scales, dt)
    assert out is z
    assert_close(z, expected, dtype)
    assert torch.equal(z[:, 0], z[:, -1])  # every branch row holds the new latent


def test_twin_is_algorithm_1_joint_cfg_and_euler():
    z = randn(1, 2, 3, 2, 2)
    v = randn(1, 2, 2, 3, 2, 2)
    z_all = z.unsqueeze(1).repeat(1, 2, 1, 1, 1, 1)
    cfg_euler_step_torch(z_all, v, torch.full((1, 1), 6.0, device=DEVICE), -0.125)
    expected = euler_step(z, joint_cfg(v[:, 0], v[:, 1], 6.0), 0.75, 0.625)
    torch.testing.assert_close(z_all[:, 0], expected)
    torch.testing.assert_close(z_all[:, 1], expected)


def test_bad_shapes_are_refused():
    z = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="scales must be"):
        cfg_euler_step_(z, z.clone(), torch.zeros(1, 2), -0.1)
    with pytest.raises(ValueError, match="1 \\(none\\), 2 \\(joint\\) or 3"):
        cfg_euler_step_(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 3), -0.1)


def test_one_branch_is_the_plain_euler_step():
    z, v = randn(2, 1, 3, 2, 2), randn(2, 1, 3, 2, 2)
    expected = euler_step(z[:, 0], v[:, 0], 1.0, 0.5)
    cfg_euler_step_torch(z, v, torch.zeros(2, 0, device=DEVICE), -0.5)
    torch.testing.assert_close(z[:, 0], expected)


def test_a_comparison_of_a_tensor_with_itself_is_refused():
    """The kernels' comparisons must compare two computations: an in-place twin handed the tensor
    under test (``z.float()`` of an fp32 ``z`` is ``z``) would compare it with itself."""
    from .conftest import in_fp32
    z = randn(1, 2, 3, 2, 2)
    with pytest.raises(AssertionError, match="share storage"):
        assert_close(z, z.float(), torch.float32)
    z_all = z.unsqueeze(1).repeat(1, 2, 1, 1, 1, 1)
    v = randn(1, 2, 2, 3, 2, 2)
    expected = in_fp32(cfg_euler_step_torch, z_all, v, torch.full((1, 1), 6.0, device=DEVICE), -0.125)
    assert not torch.equal(expected, z_all)               # the twin updated a copy
