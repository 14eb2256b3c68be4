"""Shared fixtures: a tiny config (same code paths as the presets, seconds not minutes on CPU),
synthetic clips and generated audio."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

# Without a GPU the Triton kernels are tested in Triton's CPU interpreter, which must be switched
# on before any kernel is defined (rest_fast.ops reads it at import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from reference.config import (DiTConfig, RestConfig, SpeechConfig, VAEConfig, WhisperConfigLite)


def make_tiny_config() -> RestConfig:
    """64x64 video, 16x spatial / 8x temporal VAE, a 2-block DiT and a narrow Whisper."""
    return RestConfig(
        name="tiny",
        resolution=64,
        vae=VAEConfig(latent_channels=8, patch_size=2, block_channels=(8, 16, 16, 16),
                      layers_per_block=1),
        speech=SpeechConfig(
            whisper=WhisperConfigLite(d_model=64, encoder_layers=2, encoder_attention_heads=2,
                                      encoder_ffn_dim=128),
            ae_hidden=32, ae_layers=1, ae_heads=2, audio_tokens_per_frame=4, audio_dim=16),
        dit=DiTConfig(depth=2, hidden=64, heads=4, ffn=128, text_dim=16, text_tokens=4,
                      timestep_freq_dim=32),
    ).validate()


def open_audio_path(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every DiT block's audio cross-attention a random output projection. A fresh DiT
    starts with it at zero (its audio is ignored until trained), which would let tests of the
    audio path pass without exercising it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, sub in module.named_modules():
            if name.endswith("audio_attn"):
                sub.out.weight.copy_(torch.randn(sub.out.weight.shape, generator=gen) * 0.05)
    return module


@pytest.fixture
def tiny_config() -> RestConfig:
    return make_tiny_config()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def speech_like(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated signal (pitch + two formant-ish partials), float32 mono."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 120 + 20 * np.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * math.pi * 4.0 * t + rng.uniform(0, 6.28)))
    x = 0.2 * envelope * voiced + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


@pytest.fixture
def speech_3s() -> np.ndarray:
    return speech_like(3.0)


def synthetic_clip(frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """A smooth moving blob video in [-1, 1], shape (1, 3, frames, size, size)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    color = torch.rand(3, generator=g) * 2 - 1
    out = []
    for f in range(frames):
        cx, cy = 0.4 * math.sin(0.3 * f), 0.4 * math.cos(0.2 * f)
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.1)
        out.append(color[:, None, None] * blob - 0.5 * (1 - blob))
    return torch.stack(out, dim=1)[None].clamp(-1, 1)
