"""The student DiT on the fast path: the reference's modules (weights shared, not copied) run one
chunk at a time through rest_fast's ops over static caches.

What the reference recomputes at every denoising step and what is constant is split here:

    once per generator   RoPE tables of the current positions and of the W previous chunks'; per step j,
                         each block's AdaLN modulation (its table + t_mod(T_j)) and the output
                         head's (every frame of a chunk has the same T_j in Algorithm 1)
    once per stream      the ID sink K/V and the text cross-attention K/V (StreamCaches)
    once per chunk       the audio cross-attention K/V of the chunk's tokens
    per step             patch embedding, the blocks, the output head; then CFG + Euler in place

One step of one block (the walk of docs/model-semantics.md):

    adaln_modulate -> qkv -> kv_cache_write (QK-norm, RoPE, ring write) -> sink_cache_attention
    -> text cross-attention (SDPA over the stream's text K/V) -> frame_audio_attention -> FFN

``denoise`` is the inner loop of Algorithm 1 for n streams at once; it only touches static
buffers and device tensors (no host sync), so on CUDA it is captured as one graph (graphs.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.dit import A2VDiT, timestep_embedding
from reference.flow import timestep_schedule

from .cache import StreamCaches, cache_layout
from .ops import (RopeTable, adaln_modulate, cfg_euler_step_, frame_audio_attention, kv_cache_write,
                  sink_cache_attention)


class FastDiT:
    def __init__(self, dit: A2VDiT, *, capacity: int, branches: int, steps: int, shift: float,
                 cache_mode: str):
        cfg, d = dit.cfg, dit.cfg.dit
        weight = dit.patch_in.weight
        self.dit, self.cfg = dit, cfg
        self.device, self.dtype = weight.device, weight.dtype
        self.branches, self.steps, self.cache_mode = branches, steps, cache_mode
        self.heads, self.head_dim = d.heads, d.head_dim
        c, grid = cfg.chunk_latent_frames, dit.grid
        self.chunk_frames, self.tokens_per_frame = c, grid * grid
        self.use_sink, self.use_prev = d.student_sink, d.student_prev

        self.prev_chunks = cfg.prev_chunks
        window = c * cfg.prev_chunks       # the current chunk at frames window+1.., its past at 1..window
        frames = torch.arange(1, window + c + 1, dtype=torch.float64)
        self.rope_cur = RopeTable.for_frames(frames[window:], grid, d.head_dim, d.rope_theta).to(self.device)
        self.rope_window = RopeTable.for_frames(frames[:window], grid, d.head_dim, d.rope_theta).to(self.device)

        schedule = timestep_schedule(steps, shift).tolist()
        self.dts = [schedule[j + 1] - schedule[j] for j in range(steps)]
        # Conditioning index j: step j at T_j; index `steps` is t = 0 (the "clean" cache refill).
        self.block_mod, self.out_mod = self._timestep_tables(schedule[:steps] + [0.0])

        self.caches = StreamCaches(
            capacity=capacity, device=self.device, dtype=self.dtype,
            **cache_layout(cfg, branches=branches, steps=steps, cache_mode=cache_mode))

    @torch.no_grad()
    def _timestep_tables(self, times: list[float]) -> tuple[Tensor, Tensor]:
        """(len(times), depth, 6, D) block modulations and (len(times), 2, D) output modulations,
        exactly what A2VDiT.condition + DiTBlock compute for a frame at each time."""
        dit = self.dit
        t = torch.tensor(times, device=self.device)
        t_emb = dit.t_embed(timestep_embedding(t, self.cfg.dit.timestep_freq_dim).to(self.dtype))
        t_mod = dit.t_mod(t_emb).unflatten(-1, (6, -1))                    # (n, 6, D)
        blocks = torch.stack([b.scale_shift_table[None] + t_mod for b in dit.blocks], dim=1)
        out = dit.out_table[None] + t_emb[:, None]                          # (n, 2, D)
        return blocks.contiguous(), out.contiguous()

    # ---- per stream -----------------------------------------------------------------------
    @torch.no_grad()
    def text_kv(self, text: Tensor | None, rows: int) -> list[tuple[Tensor, Tensor]]:
        """Per block, the text cross-attention's K/V (rows, H, T, D) for text (rows, T, text_dim)
        or the null text."""
        dit = self.dit
        if text is None:
            text = dit.null_text.expand(rows, -1, -1)
        context = dit.text_proj(text.to(self.dtype))
        out = []
        for block in dit.blocks:
            attn = block.text_attn
            kv = attn.kv(context).view(rows, -1, 2, self.heads, self.head_dim)
            out.append((attn.k_norm(kv[:, :, 0]).transpose(1, 2), kv[:, :, 1].transpose(1, 2)))
        return out

    def open(self, index: int, sink_kv: list[tuple[Tensor, Tensor]], text: Tensor | None) -> None:
        """Stream ``index`` starts with this sink (per block, its branches' rows) and text."""
        self.caches.reset(index, sink_kv, self.text_kv(text, self.branches))

    # ---- per chunk ------------------------------------------------------------------------
    def audio_kv(self, audio: Tensor) -> list[tuple[Tensor, Tensor]]:
        """audio (rows, c, h_w, d_A) -> per block, frame-level K/V (rows * c, h_w, H, D)."""
        rows, c, A, _ = audio.shape
        flat = audio.reshape(rows * c, A, -1)
        out = []
        for block in self.dit.blocks:
            attn = block.audio_attn
            kv = attn.kv(flat).view(rows * c, A, 2, self.heads, self.head_dim)
            out.append((attn.k_norm(kv[:, :, 0]), kv[:, :, 1]))
        return out

    def forward(self, z: Tensor, index: int, audio_kv: list, ring: int) -> Tensor:
        """The velocity of z (rows, C, c, h, w) at conditioning ``index``, reading and writing
        context ring ``ring`` (the student's forward_chunk of the reference)."""
        dit = self.dit
        x = dit.patch_in(dit.patchify(z))
        for i, block in enumerate(dit.blocks):
            x = self._block(block, i, x, self.block_mod[index, i], audio_kv[i], ring)
        shift, scale = self.out_mod[index].unbind(0)
        rows, frames, _, hidden = x.shape
        out = adaln_modulate(x, shift.expand(rows, frames, hidden), scale.expand(rows, frames, hidden))
        return dit.unpatchify(dit.patch_out(out))

    def _block(self, block, i: int, x: Tensor, mod: Tensor, audio_kv, ring: int) -> Tensor:
        rows, frames, P, D = x.shape
        L, H, hd = frames * P, self.heads, self.head_dim
        c = self.caches
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(0)
        per_frame = (rows, frames, D)

        # Self-attention over [sink | W previous chunks | current chunk] (eq. 7-12).
        attn = block.attn
        h = adaln_modulate(x, shift_sa.expand(per_frame), scale_sa.expand(per_frame))
        qkv = attn.qkv(h).view(rows, L, 3, H, hd)
        ring_k, ring_v = c.ring_k[ring, i, :rows], c.ring_v[ring, i, :rows]
        slot, prev_count = c.slot[:rows], c.prev_count[:rows]
        q, k = kv_cache_write(qkv, attn.q_norm.weight, attn.k_norm.weight, attn.q_norm.eps,
                              self.rope_cur, ring_k, ring_v, slot)
        o = sink_cache_attention(q, k, qkv[:, :, 2].transpose(1, 2), c.sink_k[i, :rows], c.sink_v[i, :rows],
                                 ring_k, ring_v, slot, prev_count, self.rope_window, self.use_sink, self.use_prev)
        x = x + gate_sa * attn.out(o.reshape(rows, L, D)).view(rows, frames, P, D)

        # Text cross-attention over the stream's precomputed text K/V.
        text = block.text_attn
        q = text.q_norm(text.q(block.norm_text(x)).view(rows, L, H, hd)).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, c.text_k[i, :rows], c.text_v[i, :rows])
        x = x + text.out(o.transpose(1, 2).reshape(rows, frames, P, D))

        # Frame-level audio cross-attention (eq. 13).
        audio = block.audio_attn
        q = audio.q_norm(audio.q(block.norm_audio(x)).view(rows * frames, P, H, hd))
        o = frame_audio_attention(q, *audio_kv)
        x = x + audio.out(o.reshape(rows, frames, P, D))

        h = adaln_modulate(x, shift_ff.expand(per_frame), scale_ff.expand(per_frame))
        return x + gate_ff * block.ffn(h)

    def denoise(self, z: Tensor, audio: Tensor, scales: Tensor, active: Tensor) -> Tensor:
        """Algorithm 1's inner loop for the n streams in rows [0, n * branches), in place.

        z (n, branches, C, c, h, w): eps of each stream's chunk in every branch row; becomes the
        clean latent. audio (n * branches, c, h_w, d_A): the tokens per branch row (null audio in
        the unconditional rows). scales (n, branches - 1): each stream's CFG scales. active
        (n * branches,) int64: 1 for rows whose stream makes a chunk now. Active rows then point
        at their next ring slot and hold one more previous chunk (up to W). Inactive rows are
        computed too (one batch, one graph) but keep their state: their K/V land only in the ring
        slot they write, which their next real chunk overwrites before anything reads it."""
        n, branches = z.shape[:2]
        rows = n * branches
        flat = z.view(rows, *z.shape[2:])
        audio_kv = self.audio_kv(audio)
        per_step = self.cache_mode == "per_step"
        for j in range(self.steps):
            v = self.forward(flat, j, audio_kv, j if per_step else 0)
            cfg_euler_step_(z, v.reshape(z.shape).contiguous(), scales, self.dts[j])
        if not per_step:  # "clean": refill the one ring with the finished chunk at t = 0
            self.forward(flat, self.steps, audio_kv, 0)
        self.caches.slot[:rows].add_(active).remainder_(self.prev_chunks + 1)
        self.caches.prev_count[:rows].add_(active).clamp_(max=self.prev_chunks)
        return z
