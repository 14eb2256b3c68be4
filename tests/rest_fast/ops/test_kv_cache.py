"""kv_cache_write: kernel == twin; the ring gets each row's slot (of W + 1), normalised and not
rotated; the other slots are untouched."""
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from rest_fast.ops import force_backend
from rest_fast.ops.kv_cache import RopeTable, kv_cache_write, kv_cache_write_torch

from .conftest import DEVICE, DTYPES, KERNEL_SETTINGS, assert_close, randn, requires_triton


def table(chunk, grid, head_dim, prev_chunks=1):
    """The current chunk's rotation: frames W*c+1..(W+1)*c."""
    start = prev_chunks * chunk + 1
    return RopeTable.for_frames(torch.arange(start, start + chunk + 0.0), grid, head_dim, 10000.0).to(DEVICE)


def inputs(batch, heads, chunk, grid, head_dim, dtype, seed, slots=2):
    g = torch.Generator().manual_seed(seed)
    L = chunk * grid * grid
    qkv = randn(batch, L, 3 * heads * head_dim, dtype=dtype, generator=g).view(batch, L, 3, heads, head_dim)
    weights = [(1 + 0.2 * torch.randn(head_dim, generator=g)).to(DEVICE, dtype) for _ in range(2)]
    ring = [randn(batch, slots, heads, L, head_dim, dtype=dtype, generator=g) for _ in range(2)]
    slot = torch.randint(0, slots, (batch,), generator=g).to(DEVICE)
    return qkv, weights, ring, slot


@requires_triton
@KERNEL_SETTINGS
@given(batch=st.integers(1, 3), heads=st.integers(1, 3), chunk=st.integers(1, 3),
       grid=st.integers(1, 3), head_dim=st.sampled_from([8, 16, 32, 64, 24]),
       prev_chunks=st.integers(1, 4), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
# Several tiles in both grid dimensions: L = 3 * 7 * 7 = 147 tokens (BLOCK_L 64), 2 x 3 rows.
@example(batch=2, heads=3, chunk=3, grid=7, head_dim=32, prev_chunks=1, dtype=torch.float32, seed=1)
@example(batch=2, heads=3, chunk=1, grid=7, head_dim=64, prev_chunks=3, dtype=torch.bfloat16, seed=2)
def test_kernel_equals_twin(batch, heads, chunk, grid, head_dim, prev_chunks, dtype, seed):
    cur = table(chunk, grid, head_dim, prev_chunks)
    qkv, (qw, kw), (ring_k, ring_v), slot = inputs(batch, heads, chunk, grid, head_dim, dtype, seed,
                                                   slots=prev_chunks + 1)
    # The twin writes its ring in place: its fp32 copies are the expected rings (copies, never the
    # tensors the kernel writes, whatever the dtype).
    ring_k_ref, ring_v_ref = (r.to(torch.float32, copy=True) for r in (ring_k, ring_v))
    q_ref, k_ref = kv_cache_write_torch(qkv.float(), qw.float(), kw.float(), 1e-6, cur, ring_k_ref, ring_v_ref, slot)
    with force_backend("triton"):
        q, k = kv_cache_write(qkv, qw, kw, 1e-6, cur, ring_k, ring_v, slot)
    assert q.shape == (batch, heads, chunk * grid * grid, head_dim) and q.dtype == dtype
    assert_close(q, q_ref, dtype)
    assert_close(k, k_ref, dtype)
    assert_close(ring_k, ring_k_ref, dtype)
    assert_close(ring_v, ring_v_ref, dtype)


@requires_triton
def test_only_each_rows_slot_is_written_with_its_keys_normalised_not_rotated():
    cur = table(2, 2, 16, prev_chunks=3)
    qkv, (qw, kw), (ring_k, ring_v), _ = inputs(2, 2, 2, 2, 16, torch.float32, 0, slots=4)
    slot = torch.tensor([0, 3], device=DEVICE)
    before = ring_k.clone()
    with force_backend("triton"):
        kv_cache_write(qkv, qw, kw, 1e-6, cur, ring_k, ring_v, slot)
    for row, written in enumerate(slot.tolist()):
        for s in range(4):
            assert torch.equal(ring_k[row, s], before[row, s]) == (s != written), (row, s)
    normed = torch.nn.functional.rms_norm(qkv[1, :, 1].transpose(0, 1), (16,), kw, 1e-6)
    torch.testing.assert_close(ring_k[1, 3], normed)            # what the reference caches: pre-RoPE
    torch.testing.assert_close(ring_v[0, 0], qkv[0, :, 2].transpose(0, 1))


def test_bad_shapes_are_refused():
    cur = table(1, 2, 8)
    qkv = torch.zeros(1, 4, 3, 2, 8)
    with pytest.raises(ValueError, match="ring"):
        kv_cache_write(qkv, torch.ones(8), torch.ones(8), 1e-6, cur, torch.zeros(1, 2, 2, 5, 8),
                       torch.zeros(1, 2, 2, 5, 8), torch.zeros(1, dtype=torch.long))
