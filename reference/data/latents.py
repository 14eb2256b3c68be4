"""Clips encoded once by the frozen VAE and Whisper encoder: what the DiT stages train on.

Rendering or decoding a clip and running the VAE encoder over it costs several times a DiT
training step on a CPU, so the teacher and student stages draw from a pool encoded up front.
Each entry is a whole clip of K chunks, ``[z_R | K c latent frames]`` (z_R encoded from the
portrait, the clip's frames after it, exactly as the streaming decoder sees them) plus the Whisper
features of every chunk's bounded window (the definition used at inference, see speech.py).
Training samples ``num_chunks`` consecutive chunks of an entry after the portrait's z_R.

The pool is cached on disk under a key of the encoder weights and the data, so the teacher, the
student and every ablation of one run share it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..media import as_if_created
from ..model import frames_to_video_tensor
from ..speech import chunk_windows


def encoder_fingerprint(model) -> str:
    """A short hash of the VAE encoder's and Whisper's weights (what the pool depends on; the
    decoders, full or light, do not change it)."""
    h = hashlib.sha256()
    for prefix, module in (("vae.encoder", model.vae.encoder), ("whisper", model.whisper)):
        for name, tensor in sorted(module.state_dict().items()):
            h.update(f"{prefix}.{name}".encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class LatentClips:
    def __init__(self, latents: Tensor, whisper: Tensor, names: list[str], chunk_frames: int,
                 whisper_per_latent: int):
        self.latents = latents            # (N, C, 1 + K c, h, w), raw (un-normalised) VAE means
        self.whisper = whisper            # (N, K c * H_w, D): Whisper frames of every chunk
        self.names = names
        self.c, self.hw = chunk_frames, whisper_per_latent
        self.num_chunks = (latents.shape[2] - 1) // chunk_frames

    def __len__(self) -> int:
        return self.latents.shape[0]

    # ---- building ----------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def build(cls, model, dataset, count: int, device="cpu", progress: bool = True) -> "LatentClips":
        cfg = model.cfg
        latents, feats, names = [], [], []
        items = range(count)
        if progress:
            from tqdm.auto import tqdm
            items = tqdm(items, desc="encoding clips", unit="clip")
        for i in items:
            clip = dataset[i % len(dataset)]
            x = frames_to_video_tensor(np.concatenate([clip.reference[None], clip.frames]), device)
            latents.append(model.vae.encode(x)[0].half().cpu())
            k = len(clip.frames) // cfg.frames_per_chunk
            windows = chunk_windows(torch.from_numpy(clip.audio), cfg, 0, k).to(device)
            feats.append(model.whisper(windows).reshape(-1, cfg.speech.whisper.d_model).half().cpu())
            names.append(clip.name)
        return cls(torch.stack(latents), torch.stack(feats), names, cfg.chunk_latent_frames,
                   cfg.speech.whisper_frames_per_latent)

    @classmethod
    def cached(cls, model, dataset, count: int, cache_dir: str | os.PathLike, data_key: str,
               device="cpu", progress: bool = True) -> "LatentClips":
        """Load the pool for (encoder weights, data, count, audio windows) from ``cache_dir``, or
        build it. The Whisper features depend on the chunk's window (its length and context), so a
        pool of 3-frame chunks is no pool for 1-frame chunks."""
        s = model.cfg.speech
        window = [model.cfg.chunk_latent_frames, s.left_context_frames, s.lookahead_frames]
        # (Pools of the windows every pool had before windows were part of the key keep their key.)
        key = hashlib.sha256(json.dumps([encoder_fingerprint(model), data_key, count]
                                        + ([] if window == [3, 16, 8] else [window])).encode())
        path = Path(cache_dir) / f"latent-clips-{key.hexdigest()[:16]}.safetensors"
        if path.is_file():
            return cls.load(path, model.cfg)
        pool = cls.build(model, dataset, count, device, progress)
        pool.save(path)
        return pool

    def save(self, path: str | os.PathLike) -> None:
        """Atomically: a killed run leaves either the old file or none."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            save_file({"latents": self.latents.contiguous(), "whisper": self.whisper.contiguous()}, tmp,
                      metadata={"names": json.dumps(self.names)})
            as_if_created(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, cfg) -> "LatentClips":
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            names = json.loads(f.metadata()["names"])
        tensors = load_file(str(path))
        return cls(tensors["latents"], tensors["whisper"], names, cfg.chunk_latent_frames,
                   cfg.speech.whisper_frames_per_latent)

    def whisper_frames(self) -> Tensor:
        """Every entry's Whisper frames per latent frame, (N, K c, H_w, D) float32."""
        return self.whisper.float().view(len(self), -1, self.hw, self.whisper.shape[-1])

    # ---- sampling ----------------------------------------------------------------------------
    def sample(self, batch: int, num_chunks: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``batch`` random windows of ``num_chunks`` chunks: latents (B, C, 1 + n c, h, w) with
        z_R first, and Whisper frames (B, n c, H_w, D), both float32."""
        if num_chunks > self.num_chunks:
            raise ValueError(f"the pool holds clips of {self.num_chunks} chunks; {num_chunks} asked for")
        index = torch.randint(len(self), (batch,), generator=generator)
        start = torch.randint(self.num_chunks - num_chunks + 1, (batch,), generator=generator)
        c, n = self.c, num_chunks * self.c
        zs, fs = [], []
        for i, a in zip(index.tolist(), start.tolist()):
            lat = self.latents[i]
            zs.append(torch.cat([lat[:, :1], lat[:, 1 + a * c:1 + a * c + n]], dim=1))
            fs.append(self.whisper[i, a * c * self.hw:(a * c + n) * self.hw].view(n, self.hw, -1))
        return torch.stack(zs).float(), torch.stack(fs).float()
