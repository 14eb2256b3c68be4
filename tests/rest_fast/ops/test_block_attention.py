"""block_attention: forward == twin and gradients == autograd through the twin, for the student's
block mask (every ablation) and the teacher's full attention; the layout's mask is the
reference's BlockMaskAttention mask."""
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from reference.dit import BlockMaskAttention
from rest_fast.ops import force_backend
from rest_fast.ops.block_attention import AttentionLayout, block_attention, block_attention_torch

from .conftest import DTYPES, KERNEL_SETTINGS, assert_close, randn, requires_triton


@pytest.mark.parametrize("use_sink", [True, False])
@pytest.mark.parametrize("use_prev", [True, False])
@pytest.mark.parametrize("chunks, prev_chunks", [(1, 1), (2, 1), (4, 1), (4, 3), (6, 2)])
def test_student_layout_is_the_reference_block_mask(chunks, prev_chunks, use_sink, use_prev):
    ref = BlockMaskAttention(chunks, 3, 2, 16, 1e4, "cpu", use_sink, use_prev, prev_chunks)
    layout = AttentionLayout.student(chunks, 4, 12, use_sink, use_prev, prev_chunks)
    assert torch.equal(layout.dense_mask(), ref.mask)
    # Key segments are disjoint and cover exactly the keys some query sees.
    covered = torch.zeros(layout.k_len, dtype=torch.int32)
    for lo, hi, _ in layout.k_segments:
        covered[lo:hi] += 1
    assert torch.equal(covered.bool(), ref.mask.any(0)) and covered.max() == 1
    assert layout.visited_pairs() == int(ref.mask.sum())


layouts = st.one_of(
    st.builds(lambda n: AttentionLayout.full(n), st.integers(1, 70)),
    st.builds(AttentionLayout.student, st.integers(1, 5), st.integers(1, 12), st.integers(1, 30),
              st.booleans(), st.booleans(), st.integers(1, 3)))


@requires_triton
@KERNEL_SETTINGS
@given(layout=layouts, batch=st.integers(1, 2), heads=st.integers(1, 2),
       head_dim=st.sampled_from([16, 32, 64, 24]), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
# Several tiles (64) in every loop of the forward and of both backward kernels: the student's
# 3 chunks of 70 tokens with a sink of 40 (250 queries, 330 keys) and the teacher over 200 tokens.
@example(layout=AttentionLayout.student(3, 40, 70), batch=2, heads=2, head_dim=32, dtype=torch.float32, seed=5)
@example(layout=AttentionLayout.student(3, 40, 70), batch=1, heads=2, head_dim=64, dtype=torch.bfloat16, seed=6)
@example(layout=AttentionLayout.full(200), batch=1, heads=2, head_dim=32, dtype=torch.float32, seed=7)
# Short chunks with a window of 3: 6 chunks of 30 tokens, each seeing 4 of them (up to 120 keys).
@example(layout=AttentionLayout.student(6, 20, 30, True, True, 3), batch=1, heads=2, head_dim=32,
         dtype=torch.float32, seed=8)
def test_forward_and_backward_equal_the_twin(layout, batch, heads, head_dim, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = randn(batch, heads, layout.q_len, head_dim, dtype=dtype, generator=g).requires_grad_()
    k = randn(batch, heads, layout.k_len, head_dim, dtype=dtype, generator=g).requires_grad_()
    v = randn(batch, layout.k_len, heads, head_dim, dtype=dtype, generator=g).transpose(1, 2)
    v = v.detach().requires_grad_()  # a strided (B, H, L, D) view, as the model passes it
    d_out = randn(batch, layout.q_len, heads, head_dim, dtype=dtype, generator=g)
    with force_backend("triton"):
        out = block_attention(q, k, v, layout)
    grads = torch.autograd.grad(out, (q, k, v), d_out)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    expected = block_attention_torch(q32, k32, v32, layout)
    expected_grads = torch.autograd.grad(expected, (q32, k32, v32), d_out.float())
    assert out.shape == (batch, layout.q_len, heads, head_dim) and out.dtype == dtype
    assert_close(out, expected, dtype, dots=True)
    for got, want in zip(grads, expected_grads):
        assert got.dtype == dtype
        assert_close(got, want, dtype, grad=True, dots=True)


@requires_triton
def test_backward_of_a_sum_loss():
    """out.sum()'s gradient is an expanded tensor (every stride 0); the kernels must not read it
    as if D had unit stride."""
    g = torch.Generator().manual_seed(0)
    layout = AttentionLayout.student(2, 4, 12)
    q, k, v = (randn(1, 2, n, 16, generator=g).requires_grad_() for n in
               (layout.q_len, layout.k_len, layout.k_len))
    with force_backend("triton"):
        out = block_attention(q, k, v, layout)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected = torch.autograd.grad(block_attention_torch(q, k, v, layout).sum(), (q, k, v))
    for got, want in zip(grads, expected):
        assert_close(got, want, torch.float32, grad=True)


def test_bad_shapes_are_refused():
    layout = AttentionLayout.full(8)
    with pytest.raises(ValueError, match="do not fit the layout"):
        block_attention(torch.zeros(1, 1, 8, 16), torch.zeros(1, 1, 9, 16), torch.zeros(1, 1, 9, 16), layout)
