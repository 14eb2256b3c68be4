"""async_noise (eq. 15-17): kernel == twin over shapes, dtypes and per-chunk levels."""
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from reference.flow import async_timesteps
from rest_fast.ops import async_noise, force_backend
from rest_fast.ops.async_noise import async_noise_torch

from .conftest import DEVICE, DTYPES, KERNEL_SETTINGS, assert_close, in_fp32, randn, requires_triton


@requires_triton
@KERNEL_SETTINGS
@given(batch=st.integers(1, 3), channels=st.integers(1, 5), chunks=st.integers(1, 3),
       chunk=st.integers(1, 3), side=st.integers(1, 6), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
# 2 x 5 x 7 x 6 x 6 = 2520 values: 3 blocks of 1024, two clips with their own levels.
@example(batch=2, channels=5, chunks=2, chunk=3, side=6, dtype=torch.float32, seed=14)
@example(batch=2, channels=5, chunks=2, chunk=3, side=6, dtype=torch.bfloat16, seed=15)
def test_kernel_equals_twin(batch, channels, chunks, chunk, side, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, channels, 1 + chunks * chunk, side, side)
    z0, eps = randn(*shape, dtype=dtype, generator=g), randn(*shape, dtype=dtype, generator=g)
    t = async_timesteps(batch, chunks, chunk, generator=g).to(DEVICE)
    with force_backend("triton"):
        zt, target = async_noise(z0, t, eps)
    zt_ref, target_ref = in_fp32(async_noise_torch, z0, t, eps)
    assert zt.dtype == dtype and zt.shape == shape
    assert_close(zt, zt_ref, dtype)
    assert_close(target, target_ref, dtype)


@requires_triton
def test_reference_frame_stays_clean_and_levels_are_per_chunk():
    z0, eps = randn(2, 3, 7, 2, 2), randn(2, 3, 7, 2, 2)
    t = torch.tensor([[0, .2, .2, .2, .9, .9, .9], [0, 1., 1., 1., 0., 0., 0.]], device=DEVICE)
    with force_backend("triton"):
        zt, target = async_noise(z0, t, eps)
    torch.testing.assert_close(zt[:, :, 0], z0[:, :, 0])            # t = 0: data
    torch.testing.assert_close(zt[1, :, 1:4], eps[1, :, 1:4])         # t = 1: noise
    torch.testing.assert_close(zt[0, :, 4:], 0.1 * z0[0, :, 4:] + 0.9 * eps[0, :, 4:])
    torch.testing.assert_close(target, eps - z0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"t .* must be \(B, F\)"):
        async_noise(torch.zeros(1, 2, 3, 4, 4), torch.zeros(1, 4), torch.zeros(1, 2, 3, 4, 4))
