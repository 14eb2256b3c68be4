"""Speech front end: Whisper-tiny encoder (eq. 5) over bounded windows, and the SpeechAE (eq. 6).

Timeline (defaults): 16 kHz audio, Whisper at 50 frames/s (mel hop 160, conv stride 2), so one
Whisper frame is 320 samples = 20 ms and one latent frame (8 video frames = 0.32 s) owns
H_w = 16 Whisper frames. Chunk i (c = 3 latent frames, 0.96 s) owns Whisper frames
[48 i, 48 i + 48).

Bounded window: no 30 s padding. For chunk i the encoder runs over Whisper frames
[48 i - left_context, 48 i + 48 + lookahead) (16 and 8 by default: 72 frames = 1.44 s); audio
before 0 or after the end is silence. Training, offline generation and streaming all use these
windows, so offline and streaming results are identical. The lookahead of 8 Whisper frames =
**160 ms** is latency: chunk i can start once its audio plus 160 ms has arrived.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RestConfig, SpeechConfig

HOP = 160                  # mel hop in samples (100 mel frames/s)
SAMPLES_PER_WHISPER = 320  # one encoder frame after the stride-2 conv


def window_frames(cfg: RestConfig) -> int:
    s = cfg.speech
    return s.left_context_frames + cfg.chunk_latent_frames * s.whisper_frames_per_latent + s.lookahead_frames


def window_samples(cfg: RestConfig) -> int:
    return window_frames(cfg) * SAMPLES_PER_WHISPER


def window_start(chunk_index: int, cfg: RestConfig) -> int:
    """First audio sample of chunk i's window (negative: silence before the audio starts)."""
    return chunk_index * cfg.samples_per_chunk - cfg.speech.left_context_frames * SAMPLES_PER_WHISPER


def samples_needed(chunk_index: int, cfg: RestConfig) -> int:
    """Audio samples that must have arrived before chunk i can be computed (end of its window)."""
    return window_start(chunk_index, cfg) + window_samples(cfg)


def chunk_windows(audio: Tensor, cfg: RestConfig, first_chunk: int = 0,
                  num_chunks: int | None = None) -> Tensor:
    """(S,) audio -> (num_chunks, window_samples) zero-padded windows of chunks first_chunk.."""
    if num_chunks is None:
        num_chunks = max(1, math.ceil(audio.numel() / cfg.samples_per_chunk)) - first_chunk
    n = window_samples(cfg)
    out = audio.new_zeros(num_chunks, n)
    for k in range(num_chunks):
        start = window_start(first_chunk + k, cfg)
        lo, hi = max(start, 0), min(start + n, audio.numel())
        if hi > lo:
            out[k, lo - start:hi - start] = audio[lo:hi]
    return out


class WhisperFrontend(nn.Module):
    """Log-mel features + the Whisper encoder, sized to one chunk's window (eq. 5)."""

    def __init__(self, cfg: RestConfig):
        super().__init__()
        from transformers import WhisperConfig, WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder
        w, s = cfg.speech.whisper, cfg.speech
        self.left = s.left_context_frames
        self.chunk_frames = cfg.chunk_latent_frames * s.whisper_frames_per_latent
        self.whisper_config = WhisperConfig(
            num_mel_bins=w.num_mel_bins, d_model=w.d_model, encoder_layers=w.encoder_layers,
            encoder_attention_heads=w.encoder_attention_heads, encoder_ffn_dim=w.encoder_ffn_dim,
            max_source_positions=window_frames(cfg))
        self.encoder = WhisperEncoder(self.whisper_config)
        self.features = WhisperFeatureExtractor(feature_size=w.num_mel_bins, sampling_rate=s.sample_rate)

    def log_mel(self, windows: Tensor) -> Tensor:
        """(B, window_samples) -> (B, n_mels, window_samples / 160); no padding to 30 s."""
        arrays = list(windows.detach().float().cpu().numpy())
        mel = self.features(arrays, sampling_rate=self.features.sampling_rate, padding="longest",
                            return_tensors="pt")["input_features"]
        return mel.to(windows.device, self.encoder.conv1.weight.dtype)

    def forward(self, windows: Tensor) -> Tensor:
        """(B, window_samples) -> (B, c * 16, d_model): the chunk's Whisper frames."""
        hidden = self.encoder(self.log_mel(windows)).last_hidden_state
        return hidden[:, self.left:self.left + self.chunk_frames]

    def load_pretrained(self, path: str | os.PathLike) -> None:
        """Encoder weights from a LOCAL Hugging Face Whisper directory (model.safetensors).

        Position embeddings are sliced to this window's length. Any other mismatch raises a
        ValueError naming the tensors."""
        from safetensors.torch import load_file
        file = Path(path) / "model.safetensors"
        if not file.is_file():
            raise ValueError(f"{str(path)!r} has no model.safetensors: pass a local Whisper directory")
        state = load_file(str(file))
        own = self.encoder.state_dict()
        picked = {}
        for prefix in ("model.encoder.", "encoder."):
            picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if picked:
                break
        if "embed_positions.weight" in picked:
            picked["embed_positions.weight"] = picked["embed_positions.weight"][: own["embed_positions.weight"].shape[0]]
        problems = [f"missing {k}" for k in own if k not in picked]
        problems += [f"shape of {k}: file {tuple(picked[k].shape)}, config {tuple(v.shape)}"
                     for k, v in own.items() if k in picked and picked[k].shape != v.shape]
        if problems:
            raise ValueError(f"Whisper weights in {str(path)!r} do not fit the config: " + "; ".join(problems[:10]))
        self.encoder.load_state_dict({k: picked[k] for k in own})


class SpeechAE(nn.Module):
    """Eq. 6: E = E_A(S), S_hat = D_A(E); per latent frame (16, D_A) <-> (h_w, d_A)."""

    def __init__(self, cfg: SpeechConfig):
        super().__init__()
        d, h = cfg.whisper.d_model, cfg.ae_hidden
        self.frames, self.tokens = cfg.whisper_frames_per_latent, cfg.audio_tokens_per_frame

        def layers():
            layer = nn.TransformerEncoderLayer(h, cfg.ae_heads, 4 * h, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            return nn.TransformerEncoder(layer, cfg.ae_layers, enable_nested_tensor=False)
        self.enc_in, self.enc_pos, self.enc = nn.Linear(d, h), nn.Parameter(torch.zeros(self.frames, h)), layers()
        self.enc_out = nn.Linear(h, cfg.audio_dim)
        self.dec_in, self.dec_pos, self.dec = nn.Linear(cfg.audio_dim, h), nn.Parameter(torch.zeros(self.frames, h)), layers()
        self.dec_out = nn.Linear(h, d)
        nn.init.normal_(self.enc_pos, std=0.02)
        nn.init.normal_(self.dec_pos, std=0.02)

    def encode(self, feats: Tensor) -> Tensor:
        """(B, F, 16, D_A) -> (B, F, h_w, d_A), a bounded (normalised) latent."""
        B, Fr, T, D = feats.shape
        x = self.enc(self.enc_in(feats.reshape(B * Fr, T, D)) + self.enc_pos)
        x = x.view(B * Fr, self.tokens, T // self.tokens, -1).mean(2)  # pool 16 -> h_w
        x = F.layer_norm(self.enc_out(x), (self.enc_out.out_features,))
        return x.view(B, Fr, self.tokens, -1)

    def decode(self, tokens: Tensor) -> Tensor:
        """(B, F, h_w, d_A) -> (B, F, 16, D_A)."""
        B, Fr, n, d = tokens.shape
        x = self.dec_in(tokens.reshape(B * Fr, n, d)).repeat_interleave(self.frames // n, dim=1)
        return self.dec_out(self.dec(x + self.dec_pos)).view(B, Fr, self.frames, -1)


def chunk_audio_tokens(frontend: WhisperFrontend, speech_ae: SpeechAE, windows: Tensor,
                       cfg: RestConfig) -> Tensor:
    """(B, window_samples) -> (B, c, h_w, d_A): the audio tokens the DiT reads for one chunk."""
    feats = frontend(windows)
    B = feats.shape[0]
    return speech_ae.encode(feats.view(B, cfg.chunk_latent_frames, cfg.speech.whisper_frames_per_latent, -1))
