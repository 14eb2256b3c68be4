"""adaln_modulate: kernel == twin (the reference's modulate(norm(x))) over shapes and dtypes,
with shift and scale as strided views of one modulation tensor, as the DiT block makes them."""
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from rest_fast.ops import force_backend
from rest_fast.ops.adaln import adaln_modulate, adaln_modulate_torch

from .conftest import DTYPES, KERNEL_SETTINGS, assert_close, in_fp32, randn, requires_triton


@requires_triton
@KERNEL_SETTINGS
@given(batch=st.integers(1, 3), frames=st.integers(1, 4), tokens=st.integers(1, 20),
       hidden=st.sampled_from([16, 64, 96, 256]), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
# 2 x 3 x 20 = 120 rows: 30 programs of 4 rows, each modulated by its own frame.
@example(batch=2, frames=3, tokens=20, hidden=256, dtype=torch.float32, seed=10)
@example(batch=2, frames=3, tokens=20, hidden=96, dtype=torch.bfloat16, seed=11)
def test_kernel_equals_twin(batch, frames, tokens, hidden, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = randn(batch, frames, tokens, hidden, dtype=dtype, generator=g, scale=3.0)
    mod = randn(batch, frames, 6, hidden, dtype=dtype, generator=g, scale=0.5)
    shift, scale = mod[:, :, 0], mod[:, :, 1]   # views with a stride of 6 * hidden per frame
    with force_backend("triton"):
        out = adaln_modulate(x, shift, scale)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out, in_fp32(adaln_modulate_torch, x, shift, scale), dtype)


@requires_triton
@KERNEL_SETTINGS
@given(batch=st.integers(1, 2), frames=st.integers(1, 3), tokens=st.integers(1, 150),
       hidden=st.sampled_from([16, 96, 256]), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
# 130 tokens: three backward programs a frame (64 rows each), the last one partly outside.
@example(batch=2, frames=3, tokens=130, hidden=96, dtype=torch.float32, seed=12)
@example(batch=1, frames=2, tokens=130, hidden=256, dtype=torch.bfloat16, seed=13)
def test_backward_equals_the_twins_gradient(batch, frames, tokens, hidden, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = randn(batch, frames, tokens, hidden, dtype=dtype, generator=g, scale=3.0).requires_grad_()
    mod = randn(batch, frames, 6, hidden, dtype=dtype, generator=g, scale=0.5).requires_grad_()
    d_out = randn(batch, frames, tokens, hidden, dtype=dtype, generator=g)
    with force_backend("triton"):
        out = adaln_modulate(x, mod[:, :, 0], mod[:, :, 1])
    grads = torch.autograd.grad(out, (x, mod), d_out)
    x32, mod32 = x.detach().float().requires_grad_(), mod.detach().float().requires_grad_()
    expected = adaln_modulate_torch(x32, mod32[:, :, 0], mod32[:, :, 1])
    expected_grads = torch.autograd.grad(expected, (x32, mod32), d_out.float())
    for got, want in zip(grads, expected_grads):
        assert got.dtype == dtype
        assert_close(got, want, dtype, grad=True)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="needs shift and scale"):
        adaln_modulate(torch.zeros(1, 2, 3, 8), torch.zeros(1, 3, 8), torch.zeros(1, 3, 8))
