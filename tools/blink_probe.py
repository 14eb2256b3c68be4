"""Can a checkpoint's VAE render blinks? Held-out lively clips through the VAE (full decoder),
their eyes compared with the true eyelids:

    python3 tools/blink_probe.py [CHECKPOINT ...] [--seconds 60] [--identities 2] [--latents]

Per identity: how the rendered eye white (``metrics.eye_openness``, what the benchmark's blink
figure counts) follows the true eyelids (correlation with 1 - closure) and how white it is
against the truth's; the blinks found in it against the truth's open level, and the truth's own
count; the same correlation for the irises' darkness (does an eye close at all in the render,
even one drawn without its white?); and the PSNR. A VAE whose row shows no blinks bounds every
model that renders through it: the benchmark's blink figure then ranks nothing (docs/training.md,
"What the cpu-preset VAE can show").

``--latents`` asks the encoder alone: do its latents around the eyes still hold the eyelids? A
ridge regression from them to each frame's eyelid closure, fitted on training-split clips, is
scored on held-out ones (correlation). A low score means the encoder drops the eyelids, and no
decoder, however trained, can draw blinks from those latents.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference import metrics  # noqa: E402
from reference.checkpoint import load_checkpoint  # noqa: E402
from reference.data.synthetic import SyntheticTalkingHeads  # noqa: E402
from reference.evaluate import vae_reconstruct  # noqa: E402

IRIS_POOL = 5   # pixels a side: wider than a brow or a shut lid is tall, narrower than an iris


def iris_darkness(frames: np.ndarray, eye_boxes) -> np.ndarray:
    """Per frame, summed over the eyes' boxes: the darkest ``IRIS_POOL`` square's mean depth
    below the box's median luma (the skin). An open iris is a dark disc that fills the square;
    a brow or a shut lid is a thin line that does not."""
    out = np.zeros(len(frames))
    for top, bottom, left, right in eye_boxes:
        luma = torch.from_numpy(frames[:, max(top, 0):bottom, max(left, 0):right].astype(np.float32) @ metrics.LUMA)
        depth = (luma.flatten(1).median(1).values[:, None, None] - luma).clamp_min(0)
        out += F.avg_pool2d(depth[:, None], IRIS_POOL, 1).amax((1, 2, 3)).numpy()
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0


def compare(truth: np.ndarray, rendered: np.ndarray, closure: np.ndarray, eye_boxes) -> dict:
    """The rendered eyes of one clip against the true eyelids (``closure``, 0 open .. 1 shut)."""
    white_true, white = metrics.eye_openness(truth, eye_boxes), metrics.eye_openness(rendered, eye_boxes)
    level = metrics.open_level(white_true)
    return {"white_corr": _corr(white, -closure),
            "white_level": float(white.mean() / max(white_true.mean(), 1e-9)),
            "blinks": metrics.blinks(white, level=level)["count"],
            "true_blinks": metrics.blinks(white_true, level=level)["count"],
            "iris_corr": _corr(iris_darkness(rendered, eye_boxes), -closure),
            "psnr": metrics.psnr(rendered, truth)}


@torch.inference_mode()
def probe(model, identities: int = 2, seconds: float = 60.0) -> list[dict]:
    """``compare`` for held-out lively clips through the model's full VAE."""
    data = SyntheticTalkingHeads.for_config(model.cfg, split="eval", motion="lively")
    frames = 1 + model.cfg.vae.temporal_compression * round(seconds * model.cfg.fps / model.cfg.vae.temporal_compression)
    rows = []
    for i in range(identities):
        clip = data.clip(i, frames)
        rendered = vae_reconstruct(model, clip.frames, which="full")
        rows.append(compare(clip.frames, rendered, clip.truth["blink"], clip.eye_boxes))
    return rows


def eye_latents(z: torch.Tensor, eye_boxes, spatial_compression: int) -> torch.Tensor:
    """(latent frames, features): the 3 x 3 latent cells around each eye's centre, every
    channel (the latent grid's edge repeated where a window runs off it)."""
    z = F.pad(z, (1, 1, 1, 1), mode="replicate")         # C, T, h + 2, w + 2
    cells = []
    for top, bottom, left, right in eye_boxes:
        row, col = (top + bottom) // 2 // spatial_compression, (left + right) // 2 // spatial_compression
        cells.append(z[:, :, row:row + 3, col:col + 3])  # centred on (row, col) after the pad
    return torch.cat(cells, 2).permute(1, 0, 2, 3).flatten(1)


def _eyelid_samples(encode, data, identities: int, frames: int, temporal: int, spatial: int):
    """Per latent frame after the first (which holds one frame): its eye latents, and the
    eyelid closure of each of its ``temporal`` frames."""
    x, y = [], []
    for i in range(identities):
        clip = data.clip(i, frames)
        video = torch.from_numpy(clip.frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        features = eye_latents(encode(video)[0].float(), clip.eye_boxes, spatial)[1:]
        x.append(features.numpy())
        y.append(clip.truth["blink"][1:1 + len(features) * temporal].reshape(len(features), temporal))
    return np.concatenate(x), np.concatenate(y)


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    return np.linalg.solve(x.T @ x + lam * len(x) * np.eye(x.shape[1]), x.T @ y)


@torch.inference_mode()
def latent_eyelids(encode, cfg, train_identities: int = 24, identities: int = 2,
                   seconds: float = 12.8) -> float:
    """How much of the eyelids ``encode`` (video in [-1, 1], (1, 3, T, H, W) -> latents) keeps
    around the eyes: the held-out correlation of a ridge regression from :func:`eye_latents` to
    the closure of each frame. Fitted on ``train_identities`` training-split lively clips (the
    ridge's strength chosen on the last quarter of them, then refitted on all) and scored on
    ``identities`` held-out ones, ``seconds`` each."""
    ts, ss = cfg.vae.temporal_compression, cfg.vae.spatial_compression
    frames = 1 + ts * round(seconds * cfg.fps / ts)
    x, y = _eyelid_samples(encode, SyntheticTalkingHeads.for_config(cfg, split="train", motion="lively"),
                           train_identities, frames, ts, ss)
    x_eval, y_eval = _eyelid_samples(encode, SyntheticTalkingHeads.for_config(cfg, split="eval", motion="lively"),
                                     identities, frames, ts, ss)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_eval, y_mean = (x - mean) / std, (x_eval - mean) / std, y.mean(0)
    fit = len(x) * 3 // 4
    lam = max((1e-3, 1e-2, 1e-1, 1.0), key=lambda lam: _corr(
        (x[fit:] @ _ridge(x[:fit], y[:fit] - y_mean, lam)).ravel(), y[fit:].ravel()))
    return _corr((x_eval @ _ridge(x, y - y_mean, lam)).ravel(), y_eval.ravel())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="*", default=["rest_fast/assets/rest-cpu"])
    p.add_argument("--seconds", type=float, default=60.0, help="per held-out clip (default 60)")
    p.add_argument("--identities", type=int, default=2, help="held-out identities (default 2)")
    p.add_argument("--latents", action="store_true",
                   help="also ask whether the encoder's latents hold the eyelids (a ridge probe; ~2 min)")
    args = p.parse_args(argv)
    print("| checkpoint | identity | eye white vs eyelids (corr) | eye white / truth's | blinks found "
          "(truth) | iris darkness vs eyelids (corr) | PSNR dB |")
    print("|---|---|---|---|---|---|---|")
    kept = {}
    for checkpoint in args.checkpoints:
        model = load_checkpoint(checkpoint).eval().float()
        for i, r in enumerate(probe(model, args.identities, args.seconds)):
            print(f"| {checkpoint} | {i} | {r['white_corr']:.2f} | {r['white_level']:.2f} | {r['blinks']} "
                  f"({r['true_blinks']}) | {r['iris_corr']:.2f} | {r['psnr']:.2f} |", flush=True)
        if args.latents:
            kept[checkpoint] = latent_eyelids(model.vae.encode, model.cfg, identities=args.identities)
    if kept:
        print("\n| checkpoint | eyelids from the latents around the eyes (held-out corr) |\n|---|---|")
        for checkpoint, corr in kept.items():
            print(f"| {checkpoint} | {corr:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
