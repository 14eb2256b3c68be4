"""Causal 3D-conv video VAE in the style of LTX-Video: the autoencoder of eq. 4.

    z = E(x),  x_hat = D(z),    x: (B, 3, 1 + 8k, H, W)  <->  z: (B, C, 1 + k, H / 32, W / 32)

(paper preset: 32x space, 8x time, C = 128; every size here comes from ``VAEConfig``.)

Causality is what lets the decoder stream chunk by chunk. Frame 0 is encoded alone, and latent
frame j >= 1 sees video frames <= 8j only (8 = temporal_compression), because every operator
that touches time is causal:

* ``CausalConv3d`` pads only on the past side (kernel - 1 frames); at the start of a sequence it
  repeats the first frame, and while streaming it reads the frames cached from the last call.
* Temporal downsampling is space-to-depth over (2 time, 2, 2 space) with the first frame repeated
  in front, so 1 + 2m frames -> 1 + m and frame 0 pairs only with itself. Upsampling is the
  mirror image, depth-to-space, and drops the first output frame of a sequence: 1 + m -> 1 + 2m.
* Normalisation is per frame and per pixel over channels (RMS "pixel norm"), never over time.

Streaming: ``decode_stream`` carries a ``DecodeState`` holding, per causal conv, its last
(kernel - 1) input frames and, per upsampler, whether the sequence start has been seen. Its size
does not depend on how long the stream is. Concatenating the outputs of any split equals ``decode``.

Two decoders read the same latents: the VAE's own (``Decoder``, trained with the encoder) and
optionally a light one for streaming (not in the paper): the full decoder's lowest stage (causal
3D convs at the latent resolution) followed by ``LightDecoder``, per-frame 2D convs distilled
from the full decoder's upper stages, at a fraction of its cost per chunk. ``VAEConfig.decoder``
says which one renders frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VAEConfig


@dataclass
class DecodeState:
    """What the decoder remembers between ``decode_stream`` calls (bounded: no per-chunk growth)."""
    conv_cache: dict[nn.Module, Tensor] = field(default_factory=dict)  # conv -> last k-1 inputs
    started: set[nn.Module] = field(default_factory=set)  # upsamplers past the sequence start

    def numel(self) -> int:
        return sum(t.numel() for t in self.conv_cache.values())


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


# For a batch of one whose C * T * H is at most this, ATen's CPU conv3d leaves oneDNN for a slow
# fallback kernel (ConvParams::use_mkldnn), 3-10x slower on every low-resolution stage of the
# decoder. Those convs run as an equivalent conv2d instead.
_CPU_CONV3D_SLOW_BELOW = 20480


class CausalConv3d(nn.Module):
    """Conv3d with kernel (kt, kh, kw), 'same' in space, and kt - 1 frames of padding in the past."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int]):
        super().__init__()
        self.time_pad = kernel[0] - 1
        self.conv = nn.Conv3d(cin, cout, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2))

    def forward(self, x: Tensor, state: DecodeState | None = None) -> Tensor:
        if self.time_pad:
            past = state.conv_cache.get(self) if state is not None else None
            if past is None:  # sequence start: the first frame stands in for the missing past
                past = torch.cat([x[:, :, :1]] * self.time_pad, dim=2)
            x = torch.cat([past, x], dim=2)
            if state is not None:  # clone so the cache keeps kt-1 frames, not the whole chunk
                state.conv_cache[self] = x[:, :, -self.time_pad:].detach().clone()
        if not x.is_cpu:
            return self.conv(x)
        if x.shape[0] == 1 and x.shape[1] * x.shape[2] * x.shape[3] <= _CPU_CONV3D_SLOW_BELOW:
            return self._conv_as_2d(x)
        return self.conv(x.contiguous(memory_format=torch.channels_last_3d))  # oneDNN's fast layout

    def _conv_as_2d(self, x: Tensor) -> Tensor:
        """The same conv (valid in time) as one channels-last conv2d over a batch of frames, each
        output frame's kt input frames stacked into kt*C channels; conv2d always runs on oneDNN."""
        b, c, t, h, w = x.shape
        kt = self.conv.kernel_size[0]
        t_out = t - kt + 1
        frames = x.unfold(2, kt, 1).permute(0, 2, 3, 4, 1, 5).reshape(b * t_out, h, w, c * kt)
        weight = self.conv.weight.flatten(1, 2)  # (Co, C*kt, kh, kw): channel c*kt + dt, as above
        y = F.conv2d(frames.permute(0, 3, 1, 2), weight, self.conv.bias, padding=self.conv.padding[1:])
        return y.unflatten(0, (b, t_out)).transpose(1, 2)


class PixelNorm(nn.Module):
    """RMS norm over channels (dim 1) at each (frame, pixel), with a learned gain. Never mixes
    time. Takes (B, C, T, H, W) and per-frame (N, C, H, W) tensors alike."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return x * self.weight.view(1, -1, *(1,) * (x.dim() - 2))


class ResBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))), both convs causal in time."""

    def __init__(self, channels: int, kt: int):
        super().__init__()
        self.norm1, self.norm2 = PixelNorm(channels), PixelNorm(channels)
        self.conv1 = CausalConv3d(channels, channels, (kt, 3, 3))
        self.conv2 = CausalConv3d(channels, channels, (kt, 3, 3))

    def forward(self, x: Tensor, state: DecodeState | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)), state)
        return x + self.conv2(F.silu(self.norm2(h)), state)


def space_to_depth(x: Tensor, ft: int, fs: int) -> Tensor:
    """(B, C, T, H, W) -> (B, C*ft*fs*fs, T/ft, H/fs, W/fs); channel order (c, dt, dh, dw)."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * ft * fs * fs, t // ft, h // fs, w // fs)


def depth_to_space(x: Tensor, ft: int, fs: int) -> Tensor:
    """Inverse of ``space_to_depth``: (B, C*ft*fs*fs, T, H, W) -> (B, C, T*ft, H*fs, W*fs)."""
    b, c, t, h, w = x.shape
    c //= ft * fs * fs
    x = x.reshape(b, c, ft, fs, fs, t, h, w)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, c, t * ft, h * fs, w * fs)


class Downsample(nn.Module):
    """Halve time and space: repeat frame 0 in front (1 + 2m -> 2 + 2m frames), fold (2, 2, 2)
    into channels, project. The 3x3 convs of the blocks around it do the spatial mixing."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = CausalConv3d(8 * cin, cout, (1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([x[:, :, :1], x], dim=2)
        return self.proj(space_to_depth(x, 2, 2))


class Upsample(nn.Module):
    """Double time and space: project to 8x channels, unfold (2, 2, 2). Frame 0 of a sequence
    mirrors the encoder's repeated first frame, so its first copy is dropped: 1 + m -> 1 + 2m."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = CausalConv3d(cin, 8 * cout, (1, 1, 1))

    def forward(self, x: Tensor, state: DecodeState | None = None) -> Tensor:
        x = depth_to_space(self.proj(x), 2, 2)
        at_start = state is None or self not in state.started
        if state is not None:
            state.started.add(self)
        return x[:, :, 1:] if at_start else x


# --------------------------------------------------------------------------------------------
# Encoder and decoder
# --------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """patchify -> conv_in -> [blocks, downsample] per stage -> norm, SiLU, conv_out (mean, logvar)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, kt, p = cfg.block_channels, cfg.temporal_kernel, cfg.patch_size
        self.patch_size = p
        self.conv_in = CausalConv3d(cfg.in_channels * p * p, ch[0], (kt, 3, 3))
        self.blocks = nn.ModuleList(
            nn.ModuleList(ResBlock(c, kt) for _ in range(cfg.layers_per_block)) for c in ch)
        self.down = nn.ModuleList(Downsample(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
        self.norm_out = PixelNorm(ch[-1])
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels, (kt, 3, 3))
        # Start from a nearly deterministic posterior (std ~0.05): with logvar ~0 the sampling
        # noise would swamp the latent mean at first and the decoder would learn to ignore it.
        nn.init.constant_(self.conv_out.conv.bias[cfg.latent_channels:], -6.0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(space_to_depth(x, 1, self.patch_size))
        for i, blocks in enumerate(self.blocks):
            for block in blocks:
                x = block(x)
            if i < len(self.down):
                x = self.down[i](x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """conv_in -> [blocks, upsample] per stage (lowest resolution first) -> norm, SiLU, conv_out
    -> unpatchify. Every module takes the optional streaming state."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, kt, p = cfg.block_channels[::-1], cfg.temporal_kernel, cfg.patch_size
        self.patch_size = p
        self.conv_in = CausalConv3d(cfg.latent_channels, ch[0], (kt, 3, 3))
        self.blocks = nn.ModuleList(
            nn.ModuleList(ResBlock(c, kt) for _ in range(cfg.layers_per_block)) for c in ch)
        self.up = nn.ModuleList(Upsample(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
        self.norm_out = PixelNorm(ch[-1])
        self.conv_out = CausalConv3d(ch[-1], cfg.in_channels * p * p, (kt, 3, 3))

    def forward(self, z: Tensor, state: DecodeState | None = None) -> Tensor:
        return self.upper_stages(self.lowest_stage(z, state), state)

    def lowest_stage(self, z: Tensor, state: DecodeState | None = None) -> Tensor:
        """conv_in and the blocks at the latent resolution: the part the light decoder shares."""
        x = self.conv_in(z, state)
        for block in self.blocks[0]:
            x = block(x, state)
        return x

    def upper_stages(self, x: Tensor, state: DecodeState | None = None) -> Tensor:
        """Each upsampler and the blocks above it, the output conv and the unpatchify."""
        for up, blocks in zip(self.up, self.blocks[1:]):
            x = up(x, state)
            for block in blocks:
                x = block(x, state)
        x = self.conv_out(F.silu(self.norm_out(x)), state)
        return depth_to_space(x, 1, self.patch_size)


# --------------------------------------------------------------------------------------------
# The light streaming decoder
# --------------------------------------------------------------------------------------------


def to_frames(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> the T frames of every clip as one channels-last batch (B T, C, H, W)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 3, 4, 1).reshape(b * t, h, w, c).permute(0, 3, 1, 2)


def shuffle_up(x: Tensor, rt: int, rs: int) -> Tensor:
    """Depth-to-time-and-space of per-frame features: channels-last (N, rt*rs*rs*C, H, W) with
    channels ordered (dt, dy, dx, c) -> (N rt, C, rs H, rs W), channels-last again (one copy)."""
    n, channels, h, w = x.shape
    c = channels // (rt * rs * rs)
    x = x.permute(0, 2, 3, 1).reshape(n, h, w, rt, rs, rs, c).permute(0, 3, 1, 4, 2, 5, 6)
    return x.reshape(n * rt, h * rs, w * rs, c).permute(0, 3, 1, 2)


class MemoryBlock(nn.Module):
    """x + conv2d(SiLU(norm([x, previous frame of x]))), per frame, causal in time: each frame
    also reads its stream's previous frame at the same stage (the sequence's first frame reads
    itself, as ``CausalConv3d`` repeats it). While streaming the state keeps each stream's last
    frame, so a chunk's first frame reads the previous chunk's last one."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = PixelNorm(2 * channels)
        self.conv = nn.Conv2d(2 * channels, channels, 3, padding=1)

    def forward(self, x: Tensor, batch: int, state: DecodeState | None = None) -> Tensor:
        frames = x.unflatten(0, (batch, -1))                              # (b, t, c, h, w)
        past = state.conv_cache.get(self) if state is not None else None
        if past is None:
            past = frames[:, :1]
        if state is not None:  # clone: keep one frame per stream, not the whole chunk
            state.conv_cache[self] = frames[:, -1:].detach().clone()
        previous = torch.cat([past, frames[:, :-1]], dim=1).flatten(0, 1)
        return x + self.conv(F.silu(self.norm(torch.cat([x, previous], dim=1))))


class LightDecoder(nn.Module):
    """The light streaming decoder's own part, a fraction of the full decoder's cost, distilled
    from it (as tiny autoencoders are: TAESD, TAEHV). It reads the full decoder's lowest stage
    (``Decoder.lowest_stage``: ``conv_in`` and the causal 3x3x3 blocks at the latent resolution,
    shared, not copied, and cheap there) and replaces every stage above it, where the full decoder
    spends nearly all of its work on 3x3x3 convs over every frame. Above the latent resolution it
    is per frame:

    * per resolution: a 1x1 conv and a shuffle doubling time and space (the sequence's first
      latent frame gives one frame, as ``Upsample`` makes it), then a ``MemoryBlock`` (a 3x3 conv
      per frame that also reads the previous frame) below the top resolution;
    * norm, SiLU, a 3x3 output conv and the patch shuffle.

    Widths halve at each doubling, ``light_width`` at the top: (4w, 2w, w) above the latent
    resolution of a 4-stage VAE. Frames are batched channels-last, the layout oneDNN convolves
    without reordering, and the output is a channels-last view: its bytes are already
    (B, T, H, W, 3). Streaming decode equals whole decode: the state keeps the shared stage's
    causal-conv frames and each memory block's last frame. Trained by ``rest-fast train decoder``."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ups, p = len(cfg.block_channels) - 1, cfg.patch_size
        widths = [cfg.block_channels[-1]] + [cfg.light_width * 2 ** (ups - 1 - i) for i in range(ups)]
        self.patch_size = p
        self.up = nn.ModuleList(nn.Conv2d(widths[i], 8 * widths[i + 1], 1) for i in range(ups))
        self.blocks = nn.ModuleList(MemoryBlock(c) for c in widths[1:-1])
        self.norm_out = PixelNorm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], cfg.in_channels * p * p, 3, padding=1)

    def forward(self, x: Tensor, state: DecodeState | None = None) -> Tensor:
        """The full decoder's lowest-stage features (B, C, T, h, w) -> frames (B, 3, T', H, W):
        T' = 8T, or 8T - 7 at the sequence start (for the cpu and paper presets' 8x in time)."""
        b = x.shape[0]
        at_start = state is None or self not in state.started
        if state is not None:
            state.started.add(self)
        x = to_frames(x)                                                     # (b t, c, h, w)
        for i, up in enumerate(self.up):
            x = shuffle_up(up(x), 2, 2)                                       # time and space x2
            if at_start:   # the sequence's first frame mirrors the encoder's repeated frame 0
                x = x.unflatten(0, (b, -1))[:, 1:].flatten(0, 1)
            if i < len(self.blocks):
                x = self.blocks[i](x, b, state)
        x = shuffle_up(self.conv_out(F.silu(self.norm_out(x))), 1, self.patch_size)
        return x.unflatten(0, (b, -1)).transpose(1, 2)                       # (b, 3, T', H, W)


# --------------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------------


class CausalVideoVAE(nn.Module):
    """Eq. 4: video (B, 3, 1 + 8k, H, W) in [-1, 1] <-> latent (B, C, 1 + k, H/s, W/s).

    The decoder's output is not clamped; the pipeline clamps before converting to pixels.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.light_decoder = LightDecoder(cfg) if cfg.light_width else None

    def decoder_for(self, which: str | None = None):
        """What renders frames, as ``fn(z, state=None)``: ``which`` ("full" or "light"), else the
        config's decoder. The light one is the full decoder's lowest stage and the light decoder."""
        which = which or self.cfg.decoder
        if which == "full":
            return self.decoder
        if which == "light" and self.light_decoder is not None:
            return lambda z, state=None: self.light_decoder(self.decoder.lowest_stage(z, state), state)
        raise ValueError(f"no {which!r} decoder in this model (a light decoder is trained with "
                         "`rest-fast train decoder`); choose 'full' or 'light'")

    def encode_dist(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, logvar) of q(z | x), each (B, C, 1 + k, H/s, W/s)."""
        _, _, t, h, w = video.shape
        s, ts = self.cfg.spatial_compression, self.cfg.temporal_compression
        if (t - 1) % ts or h % s or w % s:
            raise ValueError(f"video of {t} frames at {h}x{w} does not fit the VAE: need 1 + "
                             f"{ts}k frames and sides divisible by {s}")
        mean, logvar = self.encoder(video).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, video: Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
        """The posterior mean, or a sample mean + std * eps drawn from ``generator``."""
        mean, logvar = self.encode_dist(video)
        if not sample:
            return mean
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: Tensor, which: str | None = None) -> Tensor:
        """Whole sequence: (B, C, 1 + k, h, w) -> (B, 3, 1 + 8k, h*s, w*s), by the config's
        decoder (or ``which``)."""
        return self.decoder_for(which)(z)

    def new_decode_state(self) -> DecodeState:
        return DecodeState()

    def decode_stream(self, z_part: Tensor, state: DecodeState, which: str | None = None) -> Tensor:
        """Decode the next latent frames of a stream, updating ``state`` in place.

        The first latent frame of the first call is the sequence start and gives 1 video frame;
        every later latent frame gives ``temporal_compression`` frames. The state keeps a fixed
        number of frames however long the stream, detached so that no autograd graph links one
        call to the next.
        """
        if z_part.shape[2] == 0:
            b, _, _, h, w = z_part.shape
            s = self.cfg.spatial_compression
            return z_part.new_zeros(b, self.cfg.in_channels, 0, h * s, w * s)
        return self.decoder_for(which)(z_part, state)
