"""Static per-stream state of the fast DiT: the ID sink, the text K/V and the context rings.

Every buffer is allocated once for ``capacity`` streams and never grows, so a stream of an hour
uses the memory of a stream of a minute, and a CUDA graph captured over these buffers stays valid
chunk after chunk. A stream owns ``branches`` consecutive rows (its CFG branches: joint
[conditional, unconditional], multi [full, reference only, neither]); the n open streams of a
batch occupy rows [0, n * branches), so the batch is a contiguous view (``rows(n)``). When a
stream closes, the last stream moves into its rows (``move``), keeping the batch dense.

Per block:
    sink_k, sink_v   (rows, H, P, D)         ID sink, post-RoPE, computed once per stream
    text_k, text_v   (rows, H, T, D)         the text cross-attention's K/V (text is fixed per stream)
Per context ring (one per denoising step, or one for cache_mode="clean") and block:
    ring_k, ring_v   (rows, W + 1, H, L, D)  the W previous chunks' K/V and the current chunk's
                                             (keys pre-RoPE; see ops/kv_cache.py)
Per row:
    slot             (rows,) int64          the ring slot the current chunk writes
    prev_count       (rows,) int64          previous chunks the row has: 0 for a stream's first
                                            chunk, then one more a chunk up to W
"""
from __future__ import annotations

import torch
from torch import Tensor

from reference.config import RestConfig


def cache_layout(cfg: RestConfig, *, branches: int, steps: int, cache_mode: str) -> dict:
    """The sizes of a stream's caches for a model config and sampler (StreamCaches' arguments)."""
    d, per_frame = cfg.dit, cfg.tokens_per_frame
    return dict(branches=branches, depth=d.depth, rings=steps if cache_mode == "per_step" else 1,
                slots=cfg.prev_chunks + 1, heads=d.heads, head_dim=d.head_dim, sink_tokens=per_frame,
                chunk_tokens=cfg.chunk_latent_frames * per_frame, text_tokens=d.text_tokens)


class StreamCaches:
    def __init__(self, *, capacity: int, branches: int, depth: int, rings: int, slots: int, heads: int,
                 head_dim: int, sink_tokens: int, chunk_tokens: int, text_tokens: int,
                 device, dtype):
        self.capacity, self.branches, self.depth = capacity, branches, depth
        self.rings, self.slots = rings, slots
        rows = capacity * branches
        H, D = heads, head_dim

        def buf(*shape):
            return torch.zeros(*shape, device=device, dtype=dtype)
        self.sink_k, self.sink_v = buf(depth, rows, H, sink_tokens, D), buf(depth, rows, H, sink_tokens, D)
        self.text_k, self.text_v = buf(depth, rows, H, text_tokens, D), buf(depth, rows, H, text_tokens, D)
        self.ring_k = buf(rings, depth, rows, slots, H, chunk_tokens, D)
        self.ring_v = buf(rings, depth, rows, slots, H, chunk_tokens, D)
        self.slot = torch.zeros(rows, dtype=torch.long, device=device)
        self.prev_count = torch.zeros(rows, dtype=torch.long, device=device)

    def _per_row(self) -> list[tuple[Tensor, int]]:
        """Every buffer with the index of its row dimension."""
        return [(self.sink_k, 1), (self.sink_v, 1), (self.text_k, 1), (self.text_v, 1),
                (self.ring_k, 2), (self.ring_v, 2), (self.slot, 0), (self.prev_count, 0)]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t, _ in self._per_row())

    @staticmethod
    def bytes_per_stream(*, branches: int, depth: int, rings: int, slots: int, heads: int, head_dim: int,
                         sink_tokens: int, chunk_tokens: int, text_tokens: int, dtype) -> int:
        """What one stream's rows take (``nbytes() / capacity``), without allocating anything."""
        tokens = 2 * sink_tokens + 2 * text_tokens + rings * slots * 2 * chunk_tokens   # K and V
        itemsize = torch.empty(0, dtype=dtype).element_size()
        return branches * (depth * heads * head_dim * tokens * itemsize + 2 * 8)     # + slot, prev_count

    def stream_rows(self, index: int) -> slice:
        return slice(index * self.branches, (index + 1) * self.branches)

    def reset(self, index: int, sink_kv: list[tuple[Tensor, Tensor]], text_kv: list[tuple[Tensor, Tensor]]) -> None:
        """Stream ``index`` starts: its sink and text K/V per block, no previous chunk."""
        rows = self.stream_rows(index)
        for block, ((sk, sv), (tk, tv)) in enumerate(zip(sink_kv, text_kv)):
            self.sink_k[block, rows] = sk
            self.sink_v[block, rows] = sv
            self.text_k[block, rows] = tk
            self.text_v[block, rows] = tv
        self.slot[rows] = 0
        self.prev_count[rows] = 0

    def move(self, src: int, dst: int) -> None:
        """Stream ``src``'s state becomes stream ``dst``'s (a row copy in every buffer)."""
        if src == dst:
            return
        s, d = self.stream_rows(src), self.stream_rows(dst)
        for t, dim in self._per_row():
            t.narrow(dim, d.start, self.branches).copy_(t.narrow(dim, s.start, self.branches))
