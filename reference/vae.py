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
    """RMS norm over channels at each (frame, pixel), with a learned gain. Never mixes time."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return x * self.weight.view(1, -1, 1, 1, 1)


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
        x = self.conv_in(z, state)
        for i, blocks in enumerate(self.blocks):
            for block in blocks:
                x = block(x, state)
            if i < len(self.up):
                x = self.up[i](x, state)
        x = self.conv_out(F.silu(self.norm_out(x)), state)
        return depth_to_space(x, 1, self.patch_size)


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

    def decode(self, z: Tensor) -> Tensor:
        """Whole sequence: (B, C, 1 + k, h, w) -> (B, 3, 1 + 8k, h*s, w*s)."""
        return self.decoder(z)

    def new_decode_state(self) -> DecodeState:
        return DecodeState()

    def decode_stream(self, z_part: Tensor, state: DecodeState) -> Tensor:
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
        return self.decoder(z_part, state)
