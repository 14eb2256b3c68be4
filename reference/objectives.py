"""What each training stage computes: a module whose ``forward(batch)`` returns (loss, logs), and
how its batch is drawn (``make_batch(trainer, step_gen, rng)``, every draw from the step's seeded
generators). The loop, checkpoints and processes are reference/train.py's.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .asd import make_noisy_clip, student_loss, teacher_loss
from .flow import motion_weight
from .model import RestModel


def region_weights(clip, args) -> list[tuple[tuple[int, int, int, int], float]]:
    """(box, extra weight) for each region the VAE loss weights up: the mouth box by
    ``args.mouth_weight``, each eye's box by ``args.eye_weight``, where the data knows them."""
    regions = []
    if clip.mouth_box is not None and args.mouth_weight:
        regions.append((clip.mouth_box, args.mouth_weight))
    if clip.eye_boxes is not None and args.eye_weight:
        regions += [(box, args.eye_weight) for box in clip.eye_boxes]
    return regions


class VAEObjective(nn.Module):
    """Reconstruction (MSE), motion (MSE of frame differences: moving parts such as the mouth are
    a small share of the pixels but all of the content that matters) and a light KL.

    MSE rather than L1: on this data L1 sat at the dataset-mean plateau for hundreds of steps
    (its gradient has the same size for every pixel) while MSE left it within tens. With
    ``mouth_weight`` w > 0, pixels inside the clip's mouth box (synthetic data knows it) count
    1 + w times in both terms: the mouth is ~3% of the image, and without the weight the VAE
    learned the face but not the open mouth's interior. ``eye_weight`` does the same for each
    eye's box (~4% of the frame each), for blinks; the cpu preset's VAE did not learn them with
    it either (docs/training.md, "What the cpu-preset VAE can show")."""
    kl_weight = 1e-6

    def __init__(self, model: RestModel):
        super().__init__()
        self.vae = model.vae

    def forward(self, batch):
        video, eps, weight = batch["video"], batch["eps"], batch["weight"]
        mean, logvar = self.vae.encode_dist(video)
        rec = self.vae.decode(mean + torch.exp(0.5 * logvar) * eps, "full")

        def weighted(err):
            return (weight * err.pow(2)).mean() / weight.mean()
        mse = weighted(rec - video)
        # Single-frame batches (image pretraining) have no motion to match.
        motion = weighted(rec.diff(dim=2) - video.diff(dim=2)) if video.shape[2] > 1 else mse * 0
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = mse + motion + self.kl_weight * kl
        return loss, {"loss": loss.item(), "mse": mse.item(), "l1": (rec - video).abs().mean().item(),
                      "motion": motion.item(), "kl": kl.item()}

    def make_batch(self, trainer, step_gen, rng):
        clips = [trainer.random_frames(rng, trainer.args.vae_frames) for _ in range(trainer.args.batch_size)]
        video = torch.from_numpy(np.stack([f for f, _ in clips])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        cfg = trainer.cfg
        g, t = cfg.latent_size, (trainer.args.vae_frames - 1) // cfg.vae.temporal_compression + 1
        eps = torch.randn(len(clips), cfg.vae.latent_channels, t, g, g, generator=step_gen)
        weight = torch.ones(len(clips), 1, 1, *video.shape[-2:])
        for i, (_, clip) in enumerate(clips):
            for box, extra in region_weights(clip, trainer.args):
                top, bottom, left, right = box
                weight[i, :, :, top:bottom, left:right] += extra
        return {"video": video, "eps": eps, "weight": weight}


class SpeechObjective(nn.Module):
    """Eq. 6: E = E_A(S), S_hat = D_A(E); MSE between S_hat and the frozen Whisper frames S."""

    def __init__(self, model: RestModel):
        super().__init__()
        self.speech_ae, self.whisper, self.cfg = model.speech_ae, model.whisper, model.cfg

    def forward(self, batch):
        with torch.no_grad():
            feats = self.whisper(batch["windows"])
        s = self.cfg.speech
        feats = feats.view(feats.shape[0], -1, s.whisper_frames_per_latent, s.whisper.d_model)
        rec = self.speech_ae.decode(self.speech_ae.encode(feats))
        loss = F.mse_loss(rec, feats)
        return loss, {"loss": loss.item(), "rel_err": (loss / feats.var()).item()}

    def make_batch(self, trainer, step_gen, rng):
        windows = [trainer.random_window(rng) for _ in range(trainer.args.batch_size)]
        return {"windows": torch.stack(windows)}


class DiTObjective(nn.Module):
    """Teacher (full attention) or student (block mask + ASD against a frozen teacher)."""

    def __init__(self, model: RestModel, teacher: RestModel | None):
        super().__init__()
        self.dit, self.model, self.cfg = model.dit, model, model.cfg
        self.teacher_dit = teacher.dit if teacher is not None else None
        self.is_student = teacher is not None

    def forward(self, batch):
        if self.is_student:
            return student_loss(self.dit, self.teacher_dit, batch["clip"], self.cfg.asd)
        return teacher_loss(self.dit, batch["clip"])

    def make_batch(self, trainer, step_gen, rng):
        z0, audio = pool_batch(trainer, step_gen)
        clip = make_noisy_clip(z0, audio, self.cfg.chunk_latent_frames, self.cfg.asd, step_gen,
                               noise=self.dit.noise_and_target)
        return {"clip": clip}


def pool_batch(trainer, step_gen) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean normalised latents (B, C, 1 + k c, h, w) of random pool clips and their audio tokens
    (B, k c, h_w, d_A): what every DiT stage's batch starts from."""
    z, feats = trainer.pool.sample(trainer.args.batch_size, trainer.args.num_chunks, step_gen)
    with torch.no_grad():
        audio = trainer.model.speech_tokens(feats.to(trainer.device))
    return trainer.model.normalize(z.to(trainer.device)), audio


class DecoderObjective(nn.Module):
    """The light decoder learns to render what the full decoder renders from the same latents (as
    tiny autoencoders are distilled): it reads the full decoder's lowest stage (shared, frozen)
    and matches its upper stages, so no video is needed beyond the latent pool. The loss is
    MSE on frames, weighted towards the pixels that move in the clip (up to 1 + ``motion_weight``:
    the mouth is a few per cent of the image but all of the lip sync;
    ``reference.flow.motion_weight``), plus MSE on frame differences. Latents are windows of the
    encoded pool as the streaming decoder sees them (z_R, then whole chunks); on half of the clips
    they are perturbed by Gaussian noise of ``perturb`` x the latent's per-channel std, because at
    inference the decoder reads the DiT's latents, near the true ones but not on them."""
    perturb = 0.1
    motion_weight = 20.0

    def __init__(self, model: RestModel):
        super().__init__()
        self.vae, self.model = model.vae, model

    def forward(self, batch):
        with torch.no_grad():   # the lowest stage is shared: both decoders read its features
            features = self.vae.decoder.lowest_stage(batch["latents"])
            target = self.vae.decoder.upper_stages(features)
            weight = motion_weight(target, self.motion_weight)
        out = self.vae.light_decoder(features)
        mse = F.mse_loss(out, target)
        weighted = (weight * (out - target).pow(2)).mean() / weight.mean()
        motion = F.mse_loss(out.diff(dim=2), target.diff(dim=2))
        loss = weighted + motion
        return loss, {"loss": loss.item(), "mse": mse.item(), "motion": motion.item(),
                      "psnr_vs_full": 10 * math.log10(4.0 / max(mse.item(), 1e-12))}

    def make_batch(self, trainer, step_gen, rng):
        z, _ = trainer.pool.sample(trainer.args.batch_size, trainer.args.num_chunks, step_gen)
        crop = trainer.args.crop
        if crop and crop < z.shape[-1]:
            # Both decoders are convolutional: a crop's target is the full decoder on that crop,
            # so a quarter of the frame costs a quarter and still teaches every part of it.
            y, x = (int(i) for i in torch.randint(z.shape[-1] - crop + 1, (2,), generator=step_gen))
            z = z[..., y:y + crop, x:x + crop]
        noise = torch.randn(z.shape, generator=step_gen) * self.model.latent_std.view(1, -1, 1, 1, 1).cpu()
        perturbed = (torch.rand(z.shape[0], generator=step_gen) < 0.5).view(-1, 1, 1, 1, 1)
        return {"latents": z + self.perturb * noise * perturbed}
