"""sink_cache_attention: kernel == twin over shapes, dtypes, slots, first chunk or not and the
ablation switches; and kv_cache_write + sink_cache_attention chunk after chunk == the reference's
ChunkCacheAttention (pre-RoPE cache, rotated on read): the positional handling of
docs/model-semantics.md."""
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from reference.dit import ChunkCacheAttention, SinkAttention
from rest_fast.ops import force_backend
from rest_fast.ops.kv_cache import RopeTable, kv_cache_write
from rest_fast.ops.sink_attention import sink_cache_attention, sink_cache_attention_torch

from .conftest import DEVICE, DTYPES, KERNEL_SETTINGS, assert_close, in_fp32, randn, requires_triton


@requires_triton
@KERNEL_SETTINGS
@given(batch=st.integers(1, 3), heads=st.integers(1, 2), L=st.integers(1, 40), P=st.integers(1, 20),
       head_dim=st.sampled_from([16, 32, 64, 24]), dtype=st.sampled_from(DTYPES),
       use_sink=st.booleans(), use_prev=st.booleans(), seed=st.integers(0, 2**16))
# Several tiles everywhere: 150 queries (3 tiles of 64), 100 sink keys (2), previous and current
# chunk 150 keys each (3), 2 x 2 rows; mixed slots and has_prev.
@example(batch=2, heads=2, L=150, P=100, head_dim=32, dtype=torch.float32, use_sink=True, use_prev=True, seed=3)
@example(batch=2, heads=2, L=150, P=100, head_dim=64, dtype=torch.bfloat16, use_sink=True, use_prev=True, seed=4)
def test_kernel_equals_twin(batch, heads, L, P, head_dim, dtype, use_sink, use_prev, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = (randn(batch, heads, L, head_dim, dtype=dtype, generator=g) for _ in range(2))
    v = randn(batch, L, heads, head_dim, dtype=dtype, generator=g).transpose(1, 2)  # a strided view
    sink_k, sink_v = (randn(batch, heads, P, head_dim, dtype=dtype, generator=g) for _ in range(2))
    ring_k, ring_v = (randn(batch, 2, heads, L, head_dim, dtype=dtype, generator=g) for _ in range(2))
    slot = torch.randint(0, 2, (batch,), generator=g).to(DEVICE)
    has_prev = torch.randint(0, 2, (batch,), generator=g).to(DEVICE)
    args = (q, k, v, sink_k, sink_v, ring_k, ring_v, slot, has_prev, use_sink, use_prev)
    expected = in_fp32(sink_cache_attention_torch, *args)
    with force_backend("triton"):
        out = sink_cache_attention(*args)
    assert out.shape == (batch, L, heads, head_dim) and out.dtype == dtype
    assert_close(out, expected, dtype, dots=True)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize("use_sink, use_prev", [(True, True), (False, True), (True, False)])
def test_chunk_after_chunk_equals_the_reference_cache(backend, use_sink, use_prev):
    """Three chunks through one layer: the ring (rotated on write, slot flipped on the device)
    gives what the reference gives with pre-RoPE keys rotated on read."""
    B, H, D, c, grid = 2, 2, 16, 2, 2
    L, P = c * grid * grid, grid * grid
    g = torch.Generator().manual_seed(0)
    qw, kw = torch.ones(D, device=DEVICE), torch.ones(D, device=DEVICE)
    cur = RopeTable.for_frames(torch.arange(c + 1, 2 * c + 1.0), grid, D, 1e4).to(DEVICE)
    prev_t = RopeTable.for_frames(torch.arange(1, c + 1.0), grid, D, 1e4).to(DEVICE)
    sink_q, sink_k, sink_v = (randn(B, H, P, D, generator=g) for _ in range(3))
    sink_topo = SinkAttention(grid, D, 1e4, DEVICE)
    sink_topo(0, sink_q, sink_k, sink_v)  # records the post-RoPE sink K/V, as the model does
    ring_k, ring_v = torch.zeros(2, B, 2, H, L, D, device=DEVICE).unbind(0)
    slot = torch.zeros(B, dtype=torch.long, device=DEVICE)
    has_prev = torch.zeros(B, dtype=torch.long, device=DEVICE)
    ref_prev = None
    with force_backend(backend):
        for _ in range(3):
            qkv = randn(B, L, 3, H, D, generator=g)
            normed = [torch.nn.functional.rms_norm(qkv[:, :, i].transpose(1, 2), (D,), eps=1e-6) for i in range(2)]
            ref = ChunkCacheAttention(sink_topo.kv, ref_prev, c, grid, D, 1e4, DEVICE, use_sink, use_prev)
            expected = ref(0, normed[0], normed[1], qkv[:, :, 2].transpose(1, 2))
            ref_prev = ref.new_kv
            q, k = kv_cache_write(qkv, qw, kw, 1e-6, cur, prev_t, ring_k, ring_v, slot)
            out = sink_cache_attention(q, k, qkv[:, :, 2].transpose(1, 2), *sink_topo.kv[0], ring_k, ring_v,
                                       slot, has_prev, use_sink, use_prev)
            torch.testing.assert_close(out.transpose(1, 2), expected, atol=2e-5, rtol=2e-5)
            slot.bitwise_xor_(1)   # what the stream does on the device after each chunk
            has_prev.fill_(1)


def test_bad_shapes_are_refused():
    x = torch.zeros(1, 2, 4, 16)
    with pytest.raises(ValueError, match="sink must be"):
        sink_cache_attention(x, x, x, torch.zeros(1, 3, 4, 16), torch.zeros(1, 3, 4, 16),
                             torch.zeros(1, 2, 2, 4, 16), torch.zeros(1, 2, 2, 4, 16),
                             torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
