"""A2V-DiT: the streaming audio-to-video diffusion transformer (paper Sec. 3.2).

Each block: self-attention with 3D RoPE (the ID-Context Cache topology, eq. 7-12), cross-attention
to text tokens, frame-level cross-attention to audio tokens (eq. 13), and an FFN; AdaLN-single
modulates every token with the timestep of its own latent frame (asynchronous noise, eq. 15).

Latents are (B, C, F, h, w). Frame 0 is always the reference frame z_R (the ID sink, t = 0, null
audio). Three attention topologies share all weights:

* ``forward_teacher``: full bidirectional attention over [z_R | all chunks].
* ``forward_student``: one pass over a whole clip with a block mask, each chunk seeing
  [sink | W previous chunks | itself] (what training uses; W = ``cfg.prev_chunks``, the paper's 1).
* ``sink_kv`` + ``forward_chunk``: the same student function, one chunk at a time with a KV cache
  (what streaming inference uses, Algorithm 1).

Positions: the student uses window-relative frame positions: sink at 0, the previous W chunks at
1..W*c (the one a chunks back at (W-a)*c+1..), current chunk at W*c+1..(W+1)*c, for every chunk.
The cache therefore stores *pre-RoPE* keys and rotates them to their place in the window when
they are read. In the single pass, RoPE is relative, so chunk i can sit at absolute frames
c*(W+i-1)+1.. (the chunks it sees keep their offsets) as long as the sink is seen at frame
c*(i-1); the sink's key is therefore replicated once per chunk. docs/model-semantics.md has the
reading.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import RestConfig
from .flow import noise_and_target

# --------------------------------------------------------------------------------------------
# Rotary position embedding over (frame, row, column)
# --------------------------------------------------------------------------------------------


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split a head into (frame, row, column) rotary widths, each even: 64 -> (16, 24, 24)."""
    spatial = 2 * (3 * head_dim // 16)
    return head_dim - 2 * spatial, spatial, spatial


def rope_angles(frame_pos: Tensor, grid: int, head_dim: int, theta: float) -> Tensor:
    """Rotation angles (len(frame_pos) * grid * grid, head_dim // 2) for frames at ``frame_pos``."""
    dims = rope_axis_dims(head_dim)
    device = frame_pos.device
    rows = torch.arange(grid, device=device, dtype=torch.float64)
    pos = torch.stack(torch.meshgrid(frame_pos.double(), rows, rows, indexing="ij"), dim=-1)
    pos = pos.reshape(-1, 3)
    parts = []
    for axis, d in enumerate(dims):
        inv_freq = theta ** (-torch.arange(0, d, 2, device=device, dtype=torch.float64) / d)
        parts.append(pos[:, axis:axis + 1] * inv_freq)
    return torch.cat(parts, dim=-1)


def apply_rope(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate (B, H, L, D) by angles (L, D/2), rotate-half layout, computed in float32."""
    cos, sin = angles.cos().float(), angles.sin().float()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Attention topologies. A block computes pre-RoPE q, k, v and hands them to one of these, which
# decides where every token sits and what it may see.
# --------------------------------------------------------------------------------------------


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class FullAttention:
    """Teacher: every token sees every token; frame f sits at position f."""

    def __init__(self, num_frames: int, grid: int, head_dim: int, theta: float, device):
        self.angles = rope_angles(torch.arange(num_frames, device=device), grid, head_dim, theta)

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention(apply_rope(q, self.angles), apply_rope(k, self.angles), v)


class SinkAttention:
    """The sink (reference frame) alone at frame 0; records its post-RoPE K and V per block."""

    def __init__(self, grid: int, head_dim: int, theta: float, device):
        self.angles = rope_angles(torch.zeros(1, device=device), grid, head_dim, theta)
        self.kv: list[tuple[Tensor, Tensor]] = []

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        k = apply_rope(k, self.angles)
        self.kv.append((k, v))
        return attention(apply_rope(q, self.angles), k, v)


class ChunkCacheAttention:
    """Student, one chunk: queries at frames W*c+1..(W+1)*c see [sink | W previous chunks |
    current chunk] (W = ``prev_chunks``; the paper's W = 1: frames c+1..2c).

    ``prev_kv`` holds, per block, the pre-RoPE K/V of up to W previous chunks, oldest first, one
    chunk after another along the tokens (None for the first chunk). The n most recent chunks sit
    at the window's last n places: the chunk a chunks back at frames (W-a)*c+1..(W-a+1)*c,
    wherever the stream is, so a chunk is always a*c frames behind the one that reads it. The
    current chunk's pre-RoPE K/V are collected in ``new_kv`` (:func:`push_context` makes the next
    chunk's cache of them).
    """

    def __init__(self, sink_kv: list[tuple[Tensor, Tensor]], prev_kv: list | None, chunk: int,
                 grid: int, head_dim: int, theta: float, device, use_sink: bool = True,
                 use_prev: bool = True, prev_chunks: int = 1):
        self.sink_kv, self.prev_kv = sink_kv, prev_kv
        self.use_sink, self.use_prev = use_sink, use_prev
        self.chunk_tokens = chunk * grid * grid
        self.window_angles = rope_angles(torch.arange(1, prev_chunks * chunk + 1, device=device), grid,
                                         head_dim, theta)
        self.cur_angles = rope_angles(torch.arange(prev_chunks * chunk + 1, (prev_chunks + 1) * chunk + 1,
                                                   device=device), grid, head_dim, theta)
        self.new_kv: list[tuple[Tensor, Tensor]] = []

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        self.new_kv.append((k, v))
        keys, values = [], []
        if self.use_sink:
            sink_k, sink_v = self.sink_kv[layer]
            keys.append(sink_k)
            values.append(sink_v)
        if self.prev_kv is not None and self.use_prev:
            prev_k, prev_v = self.prev_kv[layer]
            keys.append(apply_rope(prev_k, self.window_angles[-prev_k.shape[2]:]))  # the last places
            values.append(prev_v)
        keys.append(apply_rope(k, self.cur_angles))
        values.append(v)
        return attention(apply_rope(q, self.cur_angles), torch.cat(keys, 2), torch.cat(values, 2))


def push_context(prev_kv: list | None, new_kv: list[tuple[Tensor, Tensor]], chunk_tokens: int,
                 prev_chunks: int) -> list[tuple[Tensor, Tensor]]:
    """The next chunk's cache: per block, the last ``prev_chunks`` chunks' pre-RoPE K/V, oldest
    first (``prev_kv`` with ``new_kv``, the chunk just made, appended and the oldest dropped)."""
    if prev_kv is None:
        return new_kv
    keep = (prev_chunks - 1) * chunk_tokens
    return [(torch.cat([pk[:, :, pk.shape[2] - keep:], k], 2), torch.cat([pv[:, :, pv.shape[2] - keep:], v], 2))
            for (pk, pv), (k, v) in zip(prev_kv, new_kv)]


class BlockMaskAttention:
    """Student, whole clip in one pass: chunk i sees [sink | chunks i-W..i-1 | chunk i] (eq. 10-11;
    W = ``prev_chunks``, the paper's 1).

    Token order is [sink | chunk 1 | ... | chunk k]. Chunk i sits at frames c*(W+i-1)+1..c*(W+i),
    so its offsets to the chunks before it equal the window-relative ones of streaming; the sink
    key is replicated at frames 0, c, 2c, ... (chunk i's copy at c*(i-1), W*c frames before the
    window's first chunk) so that chunk i sees it at the same relative offset as in streaming.
    """

    def __init__(self, num_chunks: int, chunk: int, grid: int, head_dim: int, theta: float, device,
                 use_sink: bool = True, use_prev: bool = True, prev_chunks: int = 1):
        per_frame = grid * grid
        self.sink_len, self.chunk_len, self.k = per_frame, chunk * per_frame, num_chunks
        self.use_sink, self.use_prev, self.prev_chunks = use_sink, use_prev, prev_chunks
        start = chunk * prev_chunks + 1
        frames = torch.cat([torch.zeros(1), torch.arange(start, start + chunk * num_chunks)])
        self.q_angles = rope_angles(frames.to(device), grid, head_dim, theta)
        self.sink_angles = [rope_angles(torch.full((1,), float(chunk * i), device=device), grid,
                                        head_dim, theta) for i in range(num_chunks)]
        self.device, self._dense_mask = device, None

    @property
    def mask(self) -> Tensor:
        """The (q_len, k_len) boolean mask, built on first use: the fused path never asks for it
        (paper preset, 5 chunks: 4096 x 5120 entries; SDPA's math path would also hold the
        scores, 1.25 GiB a block in bf16)."""
        if self._dense_mask is None:
            self._dense_mask = self._mask(self.device)
        return self._dense_mask

    def keys_values(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Post-RoPE keys and values in key order [k sink copies | chunk 1 .. k]."""
        s = self.sink_len
        k_rot = apply_rope(k, self.q_angles)
        sink_keys = [apply_rope(k[:, :, :s], a) for a in self.sink_angles]
        keys = torch.cat(sink_keys + [k_rot[:, :, s:]], dim=2)
        values = torch.cat([v[:, :, :s]] * self.k + [v[:, :, s:]], dim=2)
        return keys, values

    def _mask(self, device) -> Tensor:
        s, n, k = self.sink_len, self.chunk_len, self.k
        q_len, k_len = s + k * n, k * s + k * n
        mask = torch.zeros(q_len, k_len, dtype=torch.bool, device=device)
        mask[:s, :s] = True                                   # the sink sees itself only
        back = self.prev_chunks if self.use_prev else 0
        for i in range(k):
            rows = slice(s + i * n, s + (i + 1) * n)
            mask[rows, i * s:(i + 1) * s] = self.use_sink      # its copy of the sink
            lo = k * s + max(i - back, 0) * n
            mask[rows, lo:k * s + (i + 1) * n] = True          # the previous W chunks and itself
        return mask

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        keys, values = self.keys_values(k, v)
        return attention(apply_rope(q, self.q_angles), keys, values, self.mask)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled to [0, 1000] as in DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.q_norm = nn.RMSNorm(hidden // heads, eps=1e-6)  # QK-norm keeps logits bounded
        self.k_norm = nn.RMSNorm(hidden // heads, eps=1e-6)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, layer: int, topology) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = topology(layer, self.q_norm(q), self.k_norm(k), v)  # eq. 7-12
        return self.out(out.transpose(1, 2).reshape(B, L, D))


class CrossAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, context_dim: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(context_dim, 2 * hidden)
        self.q_norm = nn.RMSNorm(hidden // heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(hidden // heads, eps=1e-6)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        B, L, D = x.shape
        H, hd = self.heads, D // self.heads
        q = self.q(x).view(B, L, H, hd).transpose(1, 2)
        k, v = self.kv(context).view(B, -1, 2, H, hd).permute(2, 0, 3, 1, 4)
        out = self.attend(self.q_norm(q), self.k_norm(k), v)
        return self.out(out.transpose(1, 2).reshape(B, L, D))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(B, H, L, hd) queries over (B, H, S, hd) keys. A seam: rest_fast.apply_kernels routes
        the audio cross-attention's through its frame-level kernel."""
        return attention(q, k, v)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, F, P, D) with per-frame shift/scale (B, F, D): every token gets its frame's t."""
    return x * (1 + scale[:, :, None]) + shift[:, :, None]


class DiTBlock(nn.Module):
    def __init__(self, cfg: RestConfig):
        super().__init__()
        d = cfg.dit
        self.norm1 = nn.LayerNorm(d.hidden, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(d.hidden, d.heads)
        self.norm_text = nn.LayerNorm(d.hidden, eps=1e-6)
        self.text_attn = CrossAttention(d.hidden, d.heads, d.hidden)
        self.norm_audio = nn.LayerNorm(d.hidden, eps=1e-6)
        self.audio_attn = CrossAttention(d.hidden, d.heads, cfg.speech.audio_dim)
        # The audio path starts shut (as ControlNet-style adapters do): a random output projection
        # adds speech-dependent noise to every token, and the first steps of training then learn
        # to project the speech out rather than to use it.
        nn.init.zeros_(self.audio_attn.out.weight)
        nn.init.zeros_(self.audio_attn.out.bias)
        self.norm2 = nn.LayerNorm(d.hidden, elementwise_affine=False, eps=1e-6)
        self.ffn = nn.Sequential(nn.Linear(d.hidden, d.ffn), nn.GELU(approximate="tanh"),
                                 nn.Linear(d.ffn, d.hidden))
        # AdaLN-single (PixArt-alpha): a per-block table added to the shared timestep projection.
        self.scale_shift_table = nn.Parameter(torch.randn(6, d.hidden) / d.hidden ** 0.5)

    def forward(self, x: Tensor, t_mod: Tensor, text: Tensor, audio: Tensor, layer: int,
                topology) -> Tensor:
        """x (B, F, P, D); t_mod (B, F, 6, D); text (B, T, D); audio (B, F, h_w, d_A)."""
        B, Fr, P, D = x.shape
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (
            self.scale_shift_table[None, None] + t_mod).unbind(2)
        h = self.norm_modulate(self.norm1, x, shift_sa, scale_sa).reshape(B, Fr * P, D)
        x = x + gate_sa[:, :, None] * self.attn(h, layer, topology).view(B, Fr, P, D)
        x = x + self.text_attn(self.norm_text(x).reshape(B, Fr * P, D), text).view(B, Fr, P, D)
        # Eq. 13: frame-level cross-attention, the tokens of frame f see only e_f.
        per_frame = self.norm_audio(x).reshape(B * Fr, P, D)
        x = x + self.audio_attn(per_frame, audio.flatten(0, 1)).view(B, Fr, P, D)
        h = self.norm_modulate(self.norm2, x, shift_ff, scale_ff)
        return x + gate_ff[:, :, None] * self.ffn(h)

    def norm_modulate(self, norm: nn.LayerNorm, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        """LayerNorm (no affine), then AdaLN. A seam: rest_fast.apply_kernels fuses the two."""
        return modulate(norm(x), shift, scale)


@dataclass
class Conditioning:
    """What every block reads besides the video tokens, already projected."""
    t_mod: Tensor   # (B, F, 6, D)
    t_emb: Tensor   # (B, F, D), for the output head
    text: Tensor    # (B, T, D)
    audio: Tensor   # (B, F, h_w, d_A)


class A2VDiT(nn.Module):
    # The attention topologies of the two training passes, and the construction of the noisy
    # input and its target (eq. 15-17). Seams for rest_fast.apply_kernels, which swaps fused
    # versions in on one model (and back); the reference never looks at them otherwise.
    teacher_topology = FullAttention
    student_topology = BlockMaskAttention
    noise_and_target = staticmethod(noise_and_target)

    def __init__(self, cfg: RestConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.dit, cfg.dit.patch_size
        c_lat = cfg.vae.latent_channels
        self.patch_in = nn.Linear(c_lat * p * p, d.hidden)
        self.t_embed = nn.Sequential(nn.Linear(d.timestep_freq_dim, d.hidden), nn.SiLU(),
                                     nn.Linear(d.hidden, d.hidden))
        self.t_mod = nn.Sequential(nn.SiLU(), nn.Linear(d.hidden, 6 * d.hidden))  # AdaLN-single
        self.text_proj = nn.Sequential(nn.Linear(d.text_dim, d.hidden), nn.GELU(approximate="tanh"),
                                       nn.Linear(d.hidden, d.hidden))
        s = cfg.speech
        self.null_text = nn.Parameter(torch.randn(d.text_tokens, d.text_dim) * 0.02)
        self.null_audio = nn.Parameter(torch.randn(s.audio_tokens_per_frame, s.audio_dim) * 0.02)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(d.depth))
        self.norm_out = nn.LayerNorm(d.hidden, elementwise_affine=False, eps=1e-6)
        self.out_table = nn.Parameter(torch.randn(2, d.hidden) / d.hidden ** 0.5)
        self.patch_out = nn.Linear(d.hidden, c_lat * p * p)
        nn.init.normal_(self.patch_out.weight, std=0.02)
        nn.init.zeros_(self.patch_out.bias)
        self.gradient_checkpointing = False  # recompute blocks in backward (saves memory)

    # ---- inputs and outputs ----------------------------------------------------------------
    @property
    def grid(self) -> int:
        return self.cfg.latent_size // self.cfg.dit.patch_size

    def patchify(self, z: Tensor) -> Tensor:
        """(B, C, F, h, w) -> (B, F, P, C p^2)."""
        B, C, Fr, h, w = z.shape
        p = self.cfg.dit.patch_size
        z = z.view(B, C, Fr, h // p, p, w // p, p).permute(0, 2, 3, 5, 1, 4, 6)
        return z.reshape(B, Fr, (h // p) * (w // p), C * p * p)

    def unpatchify(self, x: Tensor) -> Tensor:
        B, Fr, P, _ = x.shape
        p, g, C = self.cfg.dit.patch_size, self.grid, self.cfg.vae.latent_channels
        x = x.view(B, Fr, g, g, C, p, p).permute(0, 4, 1, 2, 5, 3, 6)
        return x.reshape(B, C, Fr, g * p, g * p)

    def null_audio_like(self, batch: int, frames: int) -> Tensor:
        return self.null_audio.expand(batch, frames, -1, -1)

    def condition(self, t: Tensor, audio: Tensor | None, text: Tensor | None,
                  batch: int, frames: int, drop: Tensor | None = None) -> Conditioning:
        """t (B, F) per latent frame; audio (B, F, h_w, d_A) or None (null); text (B, T, text_dim)
        or None (null). ``drop`` (B,) bool: rows that get null audio and null text (condition
        dropout for classifier-free guidance, as DiT's label dropout)."""
        # The sinusoids are made in fp32; cast to the weights' dtype (a bf16/fp16 model).
        freq = timestep_embedding(t, self.cfg.dit.timestep_freq_dim).to(self.null_text.dtype)
        t_emb = self.t_embed(freq)
        t_mod = self.t_mod(t_emb).unflatten(-1, (6, -1))
        null_text = self.null_text.expand(batch, -1, -1)
        null_audio = self.null_audio_like(batch, frames)
        if text is None:
            text = null_text
        if audio is None:
            audio = null_audio
        if drop is not None:
            text = torch.where(drop[:, None, None], null_text.to(text.dtype), text)
            audio = torch.where(drop[:, None, None, None], null_audio.to(audio.dtype), audio)
        return Conditioning(t_mod, t_emb, self.text_proj(text), audio)

    def run_blocks(self, x: Tensor, cond: Conditioning, topology) -> Tensor:
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # Training topologies are stateless, so recomputing a block is safe.
                x = checkpoint(block, x, cond.t_mod, cond.text, cond.audio, i, topology,
                               use_reentrant=False)
            else:
                x = block(x, cond.t_mod, cond.text, cond.audio, i, topology)
        shift, scale = (self.out_table[None, None] + cond.t_emb[:, :, None]).unbind(2)
        return self.patch_out(modulate(self.norm_out(x), shift, scale))

    def _with_sink_audio(self, audio: Tensor | None, batch: int) -> Tensor | None:
        """Prepend the sink frame's null audio tokens to the chunks' audio tokens."""
        if audio is None:
            return None
        return torch.cat([self.null_audio_like(batch, 1).to(audio.dtype), audio], dim=1)

    # ---- the three topologies --------------------------------------------------------------
    def forward_teacher(self, z: Tensor, t: Tensor, audio: Tensor | None = None,
                        text: Tensor | None = None, drop: Tensor | None = None) -> Tensor:
        """Non-streaming teacher. z (B, C, 1+F, h, w) with frame 0 = z_R; t (B, 1+F);
        audio (B, F, h_w, d_A) for the non-reference frames. Returns v like z."""
        B, Fr = z.shape[0], z.shape[2]
        cond = self.condition(t, self._with_sink_audio(audio, B), text, B, Fr, drop)
        topo = self.teacher_topology(Fr, self.grid, self.cfg.dit.head_dim, self.cfg.dit.rope_theta, z.device)
        return self.unpatchify(self.run_blocks(self.patch_in(self.patchify(z)), cond, topo))

    def forward_student(self, z: Tensor, t: Tensor, audio: Tensor | None = None,
                        text: Tensor | None = None, drop: Tensor | None = None) -> Tensor:
        """Streaming student over a whole clip in one pass (block mask). Same inputs as the
        teacher; F must be a multiple of the chunk length c."""
        B, Fr = z.shape[0], z.shape[2]
        c = self.cfg.chunk_latent_frames
        if (Fr - 1) % c:
            raise ValueError(f"the student needs 1 + k*{c} latent frames, got {Fr}")
        cond = self.condition(t, self._with_sink_audio(audio, B), text, B, Fr, drop)
        d = self.cfg.dit
        topo = self.student_topology((Fr - 1) // c, c, self.grid, d.head_dim, d.rope_theta, z.device,
                                     d.student_sink, d.student_prev, self.cfg.prev_chunks)
        return self.unpatchify(self.run_blocks(self.patch_in(self.patchify(z)), cond, topo))

    def sink_kv(self, z_ref: Tensor, text: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """ID-Sink: K/V of the reference frame per block at t = 0 with null audio. It attends only
        to itself, so this is computed once per stream (and per CFG branch: text may differ)."""
        B = z_ref.shape[0]
        cond = self.condition(torch.zeros(B, 1, device=z_ref.device), None, text, B, 1)
        topo = SinkAttention(self.grid, self.cfg.dit.head_dim, self.cfg.dit.rope_theta, z_ref.device)
        self.run_blocks(self.patch_in(self.patchify(z_ref)), cond, topo)
        return topo.kv

    def forward_chunk(self, z: Tensor, t: Tensor, audio: Tensor | None,
                      sink_kv: list, prev_kv: list | None, text: Tensor | None = None
                      ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """One chunk with the ID-Context Cache. z (B, C, c, h, w); t (B, c); audio (B, c, h_w, d_A)
        or None; ``prev_kv``: up to W previous chunks' pre-RoPE K/V per block, oldest first (or
        None). Returns (v, this chunk's pre-RoPE K/V per block: :func:`push_context` adds it to
        the next chunk's context)."""
        B, Fr = z.shape[0], z.shape[2]
        cond = self.condition(t, audio, text, B, Fr)
        d = self.cfg.dit
        topo = ChunkCacheAttention(sink_kv, prev_kv, Fr, self.grid, d.head_dim, d.rope_theta, z.device,
                                   d.student_sink, d.student_prev, self.cfg.prev_chunks)
        v = self.unpatchify(self.run_blocks(self.patch_in(self.patchify(z)), cond, topo))
        return v, topo.new_kv
