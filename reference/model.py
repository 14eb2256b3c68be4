"""RestModel: the four networks of REST in one module, the unit a checkpoint stores.

    video VAE (eq. 4)  ->  z_R, decoded frames
    Whisper encoder (eq. 5) + SpeechAE (eq. 6)  ->  audio tokens E, h_w x d_A per latent frame
    A2V-DiT (eq. 7-13)  ->  velocity of the latent video

The DiT works on normalised latents, (z - latent_mean) / latent_std per channel, and on whitened
audio tokens, (e - audio_mean) @ audio_whiten. The statistics are buffers (saved in the
checkpoint), identity until measured: the latents' after the VAE stage, the tokens' when a
teacher stage starts from a checkpoint without them (:meth:`RestModel.measure_audio_stats` says
why whitening).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .config import RestConfig
from .dit import A2VDiT
from .speech import SpeechAE, WhisperFrontend, chunk_audio_tokens
from .vae import CausalVideoVAE


class RestModel(nn.Module):
    def __init__(self, cfg: RestConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.source: str | None = None      # the checkpoint it was loaded from, named in errors
        self.vae = CausalVideoVAE(cfg.vae)
        self.whisper = WhisperFrontend(cfg)
        self.speech_ae = SpeechAE(cfg.speech)
        self.dit = A2VDiT(cfg)
        self.register_buffer("latent_mean", torch.zeros(cfg.vae.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.vae.latent_channels))
        d_a = cfg.speech.audio_dim
        self.register_buffer("audio_mean", torch.zeros(d_a))
        self.register_buffer("audio_whiten", torch.eye(d_a))

    @classmethod
    def random(cls, cfg: RestConfig, seed: int = 0) -> "RestModel":
        """Randomly initialised weights, the same for the same seed on every machine."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(cfg)

    def use_decoder(self, which: str) -> None:
        """Render frames with the "full" or the "light" decoder from now on (the config's
        ``vae.decoder``); the light one must be in the checkpoint."""
        self.vae.decoder_for(which)       # refuses a decoder the model does not have
        self.cfg.vae.decoder = which

    # ---- latents ---------------------------------------------------------------------------
    def _stats(self, z: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return self.latent_mean.view(shape).to(z.dtype), self.latent_std.view(shape).to(z.dtype)

    def normalize(self, z: Tensor) -> Tensor:
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, z: Tensor) -> Tensor:
        mean, std = self._stats(z)
        return z * std + mean

    def encode_reference(self, image: np.ndarray) -> Tensor:
        """uint8 (H, W, 3) at the model's resolution -> normalised z_R (1, C, 1, h, w) (eq. 14)."""
        x = image_to_video_tensor(image, self.latent_mean.device, self.latent_mean.dtype)
        return self.normalize(self.vae.encode(x))

    # ---- audio -----------------------------------------------------------------------------
    def audio_tokens(self, windows: Tensor) -> Tensor:
        """Audio windows (B, window_samples) -> whitened E (B, c, h_w, d_A) for those chunks."""
        return self.whiten_audio(chunk_audio_tokens(self.whisper, self.speech_ae, windows, self.cfg))

    def speech_tokens(self, feats: Tensor) -> Tensor:
        """Whisper frames (B, F, 16, D) -> whitened E (B, F, h_w, d_A): the DiT's audio input."""
        return self.whiten_audio(self.speech_ae.encode(feats))

    def whiten_audio(self, tokens: Tensor) -> Tensor:
        return (tokens - self.audio_mean.to(tokens.dtype)) @ self.audio_whiten.to(tokens.dtype)

    def audio_stats_measured(self) -> bool:
        """False while the audio statistics are still the identity they start as."""
        return bool(self.audio_mean.any()) or not torch.equal(
            self.audio_whiten, torch.eye(len(self.audio_mean), device=self.audio_whiten.device,
                                         dtype=self.audio_whiten.dtype))

    @torch.no_grad()
    def measure_audio_stats(self, feats: Tensor, floor: float = 1e-2) -> None:
        """Set audio_mean and audio_whiten (ZCA) from the SpeechAE tokens of Whisper frames
        ``feats`` (B, F, 16, D), so that the DiT reads tokens of identity covariance.

        Not in the paper; it conditions the audio cross-attention's learning problem. The
        SpeechAE's tokens (layer-normed, d_A wide) span a low-rank subspace whose few large
        directions carry little of the speech that moves the mouth: on the cpu preset a ridge
        probe from the raw tokens to the mouth's latent explained 36% of its variance at
        lambda 1 but 2% at lambda 1000, the whitened tokens 38-39% at any lambda. With raw
        tokens a teacher's mouth error was the same with another clip's audio after 1500 steps;
        whitened, the audio was worth a fifth of that error after 300 (docs/training.md).
        Directions below ``floor`` x the mean eigenvalue (numerically empty) are not blown up."""
        tokens = self.speech_ae.encode(feats).reshape(-1, self.cfg.speech.audio_dim).double()
        mean = tokens.mean(0)
        eigvals, vectors = torch.linalg.eigh(torch.cov((tokens - mean).T))
        scale = eigvals.clamp_min(floor * eigvals.mean().item()).rsqrt()
        self.audio_mean.copy_(mean)
        self.audio_whiten.copy_(vectors @ torch.diag(scale) @ vectors.T)


def frames_to_video_tensor(frames: np.ndarray, device=None, dtype=torch.float32) -> Tensor:
    """uint8 frames (T, H, W, 3) -> (1, 3, T, H, W) in [-1, 1]: what the VAE encodes."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return x.permute(3, 0, 1, 2)[None].to(dtype) / 127.5 - 1.0


def image_to_video_tensor(image: np.ndarray, device=None, dtype=torch.float32) -> Tensor:
    """uint8 (H, W, 3) -> (1, 3, 1, H, W) in [-1, 1]."""
    return frames_to_video_tensor(image[None], device, dtype)


def videos_to_uint8(video: Tensor) -> np.ndarray:
    """(B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3) on the host: rounded, clamped, and
    converted on the tensor's device so that only bytes cross to the host. In place on one
    temporary; rounding is +0.5 before the conversion's truncation (values are >= 0 after the
    clamp, so this is round-half-up: one pass fewer than ``round_``). A channels-last video (the
    light decoder's) needs no copy for the permute."""
    x = video.float().mul(127.5).add_(128.0).clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).contiguous().cpu().numpy()


def video_tensor_to_uint8(video: Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    return videos_to_uint8(video[:1])[0]
