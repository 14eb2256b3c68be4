"""frame_audio_attention (eq. 13): forward == twin, gradients == autograd through the twin, and
the twin is the reference's per-frame cross-attention."""
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from rest_fast.ops import force_backend
from rest_fast.ops.audio_attention import frame_audio_attention, frame_audio_attention_torch

from .conftest import DTYPES, KERNEL_SETTINGS, assert_close, randn, requires_triton


@requires_triton
@KERNEL_SETTINGS
@given(frames=st.integers(1, 4), tokens=st.integers(1, 70), audio_tokens=st.integers(1, 6),
       heads=st.integers(1, 3), head_dim=st.sampled_from([8, 16, 32, 64, 24]),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
# Several tiles: 100 tokens per frame (4 of BLOCK_P = 32) in the forward grid and the backward's
# loop, 3 frames x 2 heads of programs.
@example(frames=3, tokens=100, audio_tokens=4, heads=2, head_dim=32, dtype=torch.float32, seed=8)
@example(frames=3, tokens=100, audio_tokens=4, heads=2, head_dim=64, dtype=torch.bfloat16, seed=9)
def test_forward_and_backward_equal_the_twin(frames, tokens, audio_tokens, heads, head_dim, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = randn(frames, tokens, heads, head_dim, dtype=dtype, generator=g).requires_grad_()
    kv = randn(frames, audio_tokens, 2, heads, head_dim, dtype=dtype, generator=g).requires_grad_()
    k, v = kv.unbind(2)  # strided views of one projection, as in the model
    d_out = randn(frames, tokens, heads, head_dim, dtype=dtype, generator=g)
    with force_backend("triton"):
        out = frame_audio_attention(q, k, v)
    grads = torch.autograd.grad(out, (q, kv), d_out)
    q32, kv32 = q.detach().float().requires_grad_(), kv.detach().float().requires_grad_()
    expected = frame_audio_attention_torch(q32, *kv32.unbind(2))
    expected_grads = torch.autograd.grad(expected, (q32, kv32), d_out.float())
    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, expected, dtype)
    for got, want in zip(grads, expected_grads):
        assert_close(got, want, dtype, grad=True)


@requires_triton
def test_backward_of_a_sum_loss():
    """out.sum()'s gradient has every stride 0; the kernel must not read it as unit-stride."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (randn(3, n, 2, 16, generator=g).requires_grad_() for n in (10, 4, 4))
    with force_backend("triton"):
        out = frame_audio_attention(q, k, v)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected = torch.autograd.grad(frame_audio_attention_torch(q, k, v).sum(), (q, k, v))
    for got, want in zip(grads, expected):
        assert_close(got, want, torch.float32, grad=True)


def test_twin_is_the_reference_cross_attention():
    from reference.dit import attention
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 10, 2, 8, generator=g), torch.randn(3, 4, 2, 8, generator=g), torch.randn(3, 4, 2, 8, generator=g)
    expected = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(frame_audio_attention_torch(q, k, v), expected)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(N, A, H, D\)"):
        frame_audio_attention(torch.zeros(2, 5, 2, 8), torch.zeros(3, 4, 2, 8), torch.zeros(3, 4, 2, 8))
