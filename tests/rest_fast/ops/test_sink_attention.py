"""sink_cache_attention: kernel == twin over shapes, dtypes, windows of W previous chunks, slots,
previous-chunk counts and the ablation switches; and kv_cache_write + sink_cache_attention chunk
after chunk == the reference's ChunkCacheAttention (pre-RoPE cache, rotated on read to its place
in the window): the positional handling of docs/model-semantics.md, which a window read one slot
or one chunk off fails."""
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from reference.dit import ChunkCacheAttention, SinkAttention, push_context
from rest_fast.ops import force_backend
from rest_fast.ops.kv_cache import RopeTable, kv_cache_write
from rest_fast.ops.sink_attention import sink_cache_attention, sink_cache_attention_torch

from .conftest import DEVICE, DTYPES, KERNEL_SETTINGS, assert_close, in_fp32, randn, requires_triton


def window_table(chunk_tokens_frames, grid, head_dim, prev_chunks, shift=0):
    """The W previous chunks' rotation: frames 1..W*c (``shift`` frames off, for a planted fault)."""
    frames = torch.arange(1, prev_chunks * chunk_tokens_frames + 1.0) + shift
    return RopeTable.for_frames(frames, grid, head_dim, 1e4).to(DEVICE)


@requires_triton
@KERNEL_SETTINGS
@given(batch=st.integers(1, 3), heads=st.integers(1, 2), frames=st.integers(1, 3), grid=st.integers(1, 4),
       P=st.integers(1, 20), prev_chunks=st.integers(1, 4), head_dim=st.sampled_from([16, 32, 64, 24]),
       dtype=st.sampled_from(DTYPES), use_sink=st.booleans(), use_prev=st.booleans(), seed=st.integers(0, 2**16))
# Several tiles everywhere: 147 queries (3 tiles of 64), 100 sink keys (2), each of 3 previous
# chunks and the current one 147 keys (3); 2 x 2 rows with mixed slots and previous-chunk counts.
@example(batch=2, heads=2, frames=3, grid=7, P=100, prev_chunks=1, head_dim=32, dtype=torch.float32,
         use_sink=True, use_prev=True, seed=3)
@example(batch=2, heads=2, frames=3, grid=7, P=100, prev_chunks=3, head_dim=64, dtype=torch.bfloat16,
         use_sink=True, use_prev=True, seed=4)
def test_kernel_equals_twin(batch, heads, frames, grid, P, prev_chunks, head_dim, dtype, use_sink, use_prev, seed):
    g = torch.Generator().manual_seed(seed)
    L, slots = frames * grid * grid, prev_chunks + 1
    q, k = (randn(batch, heads, L, head_dim, dtype=dtype, generator=g) for _ in range(2))
    v = randn(batch, L, heads, head_dim, dtype=dtype, generator=g).transpose(1, 2)  # a strided view
    sink_k, sink_v = (randn(batch, heads, P, head_dim, dtype=dtype, generator=g) for _ in range(2))
    ring_k, ring_v = (randn(batch, slots, heads, L, head_dim, dtype=dtype, generator=g) for _ in range(2))
    slot = torch.randint(0, slots, (batch,), generator=g).to(DEVICE)
    prev_count = torch.randint(0, slots, (batch,), generator=g).to(DEVICE)
    window = window_table(frames, grid, head_dim, prev_chunks)
    args = (q, k, v, sink_k, sink_v, ring_k, ring_v, slot, prev_count, window, use_sink, use_prev)
    expected = in_fp32(sink_cache_attention_torch, *args)
    with force_backend("triton"):
        out = sink_cache_attention(*args)
    assert out.shape == (batch, L, heads, head_dim) and out.dtype == dtype
    assert_close(out, expected, dtype, dots=True)


def chunk_after_chunk(backend, chunk, prev_chunks, use_sink=True, use_prev=True, chunks=7,
                      slot_fault=0, rope_fault=0):
    """``chunks`` chunks through one layer, the fast path (kv_cache_write, then
    sink_cache_attention over the ring of W + 1 slots, slots advanced on the device) against the
    reference's ChunkCacheAttention with push_context; the largest difference over all chunks.
    ``slot_fault`` reads the ring that many slots off, ``rope_fault`` rotates the past that many
    frames off: planted faults that this comparison must see."""
    B, H, D, grid = 2, 2, 16, 2
    L, P, slots = chunk * grid * grid, grid * grid, prev_chunks + 1
    g = torch.Generator().manual_seed(0)
    qw, kw = torch.ones(D, device=DEVICE), torch.ones(D, device=DEVICE)
    start = prev_chunks * chunk + 1
    cur = RopeTable.for_frames(torch.arange(start, start + chunk + 0.0), grid, D, 1e4).to(DEVICE)
    window = window_table(chunk, grid, D, prev_chunks, shift=rope_fault)
    sink_q, sink_k, sink_v = (randn(B, H, P, D, generator=g) for _ in range(3))
    sink_topo = SinkAttention(grid, D, 1e4, DEVICE)
    sink_topo(0, sink_q, sink_k, sink_v)  # records the post-RoPE sink K/V, as the model does
    ring_k, ring_v = torch.zeros(2, B, slots, H, L, D, device=DEVICE).unbind(0)
    slot = torch.zeros(B, dtype=torch.long, device=DEVICE)
    prev_count = torch.zeros(B, dtype=torch.long, device=DEVICE)
    ref_prev, worst = None, 0.0
    with force_backend(backend):
        for _ in range(chunks):
            qkv = randn(B, L, 3, H, D, generator=g)
            normed = [torch.nn.functional.rms_norm(qkv[:, :, i].transpose(1, 2), (D,), eps=1e-6) for i in range(2)]
            ref = ChunkCacheAttention(sink_topo.kv, ref_prev, chunk, grid, D, 1e4, DEVICE, use_sink, use_prev,
                                      prev_chunks)
            expected = ref(0, normed[0], normed[1], qkv[:, :, 2].transpose(1, 2))
            ref_prev = push_context(ref_prev, ref.new_kv, L, prev_chunks)
            q, k = kv_cache_write(qkv, qw, kw, 1e-6, cur, ring_k, ring_v, slot)
            out = sink_cache_attention(q, k, qkv[:, :, 2].transpose(1, 2), *sink_topo.kv[0], ring_k, ring_v,
                                       (slot + slot_fault) % slots, prev_count, window, use_sink, use_prev)
            worst = max(worst, (out.transpose(1, 2) - expected).abs().max().item())
            slot.add_(1).remainder_(slots)      # what FastDiT.denoise does on the device
            prev_count.add_(1).clamp_(max=prev_chunks)
    return worst


TOLERANCE = 2e-5   # fp32, one layer: the ring's rotation on read against the reference's


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize("chunk, prev_chunks", [(3, 1), (1, 3), (2, 2), (1, 1)])
@pytest.mark.parametrize("use_sink, use_prev", [(True, True), (False, True), (True, False)])
def test_chunk_after_chunk_equals_the_reference_cache(backend, chunk, prev_chunks, use_sink, use_prev):
    """Seven chunks: the ring fills over the first W chunks, then wraps around more than once; the
    pre-RoPE keys rotated on read to their place in the window give what the reference gives."""
    assert chunk_after_chunk(backend, chunk, prev_chunks, use_sink, use_prev) < TOLERANCE


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize("chunk, prev_chunks", [(3, 1), (1, 3)])
@pytest.mark.parametrize("fault", [{"slot_fault": 1}, {"slot_fault": -1}, {"rope_fault": 1}, {"rope_fault": -1}])
def test_a_window_off_by_one_is_seen(backend, chunk, prev_chunks, fault):
    """The previous chunks read one slot off, or rotated one frame off (a chunk of one frame: one
    chunk off), fail the comparison above by far more than its tolerance."""
    assert chunk_after_chunk(backend, chunk, prev_chunks, **fault) > 100 * TOLERANCE


def test_bad_shapes_are_refused():
    x = torch.zeros(1, 2, 4, 16)
    window = window_table(2, 1, 16, 1)   # W * L = 2 tokens, where the ring holds chunks of 4
    with pytest.raises(ValueError, match="sink must be"):
        sink_cache_attention(x, x, x, torch.zeros(1, 3, 4, 16), torch.zeros(1, 3, 4, 16),
                             torch.zeros(1, 2, 2, 4, 16), torch.zeros(1, 2, 2, 4, 16),
                             torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), window)
    with pytest.raises(ValueError, match="window's rotation table"):
        sink_cache_attention(x, x, x, torch.zeros(1, 2, 4, 16), torch.zeros(1, 2, 4, 16),
                             torch.zeros(1, 2, 2, 4, 16), torch.zeros(1, 2, 2, 4, 16),
                             torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), window)
