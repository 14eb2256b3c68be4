"""RestModel: the four networks of REST in one module, the unit a checkpoint stores.

    video VAE (eq. 4)  ->  z_R, decoded frames
    Whisper encoder (eq. 5) + SpeechAE (eq. 6)  ->  audio tokens E, h_w x d_A per latent frame
    A2V-DiT (eq. 7-13)  ->  velocity of the latent video

The DiT works on normalised latents, (z - latent_mean) / latent_std per channel; the statistics
are buffers (saved in the checkpoint), identity until a trained VAE's statistics are measured.
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
        self.vae = CausalVideoVAE(cfg.vae)
        self.whisper = WhisperFrontend(cfg)
        self.speech_ae = SpeechAE(cfg.speech)
        self.dit = A2VDiT(cfg)
        self.register_buffer("latent_mean", torch.zeros(cfg.vae.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.vae.latent_channels))

    @classmethod
    def random(cls, cfg: RestConfig, seed: int = 0) -> "RestModel":
        """Randomly initialised weights, the same for the same seed on every machine."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(cfg)

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
        """Audio windows (B, window_samples) -> E (B, c, h_w, d_A) for those chunks."""
        return chunk_audio_tokens(self.whisper, self.speech_ae, windows, self.cfg)


def image_to_video_tensor(image: np.ndarray, device=None, dtype=torch.float32) -> Tensor:
    """uint8 (H, W, 3) -> (1, 3, 1, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    return (x.permute(2, 0, 1)[None, :, None].to(dtype) / 127.5 - 1.0)


def video_tensor_to_uint8(video: Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    x = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()
