"""Does a DiT use its audio? A fast check on the latent pool, minutes before a full `rest-fast eval`.

    python3 tools/audio_use.py CHECKPOINT [CHECKPOINT ...] [--pool runs/cache/latent-clips-*.safetensors]

For 48 pool windows it noises the clean latents to t (the same noise for every model), lets the
DiT (full attention, as the teacher) predict the clean latent x0 = z_t - t v, and reports the
error at the positions that move in the clip (the mouth; reference.flow.motion_weight) twice:
with each clip's own audio tokens and with another clip's. A model that ignores its audio scores
the same with both; the gap is what the audio is worth to it. docs/training.md ("Why the audio
path needed help") has the numbers that led to audio-token whitening.
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference.checkpoint import load_checkpoint  # noqa: E402
from reference.data.latents import LatentClips  # noqa: E402
from reference.flow import add_noise, motion_weight  # noqa: E402


@torch.no_grad()
def mouth_error(model, z: torch.Tensor, feats: torch.Tensor, t_level: float, seed: int = 5) -> tuple[float, float]:
    """x0 MSE at the moving positions with own audio and with the batch's audio rolled by one."""
    z0 = model.normalize(z)
    audio = model.speech_tokens(feats)
    moving = ((motion_weight(z0, 1.0) - 1) > 0.3).float()          # (B, 1, 1, h, w)
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    t = torch.full((z0.shape[0], z0.shape[2]), t_level)
    t[:, 0] = 0
    z_t = add_noise(z0, t, eps)
    errors = []
    for tokens in (audio, audio.roll(1, 0)):
        x0 = z_t - t_level * model.dit.forward_teacher(z_t, t, tokens)
        err = (x0 - z0)[:, :, 1:].pow(2).mean(1, keepdim=True)
        errors.append(((err * moving).sum() / (moving.sum() * err.shape[2])).item())
    return errors[0], errors[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--pool", default="runs/cache/latent-clips-*.safetensors",
                   help="the latent pool of the training run (a glob; the first match is used)")
    p.add_argument("--clips", type=int, default=48)
    args = p.parse_args(argv)
    matches = sorted(glob.glob(args.pool))
    if not matches:
        sys.exit(f"audio_use: no latent pool matches {args.pool!r}; a teacher or student run writes one "
                 "to <runs>/cache, or pass --pool")
    pool = None
    for path in args.checkpoints:
        model = load_checkpoint(path).eval()
        if pool is None:
            pool = LatentClips.load(matches[0], model.cfg)
            z, feats = pool.sample(args.clips, 2, torch.Generator().manual_seed(123))
        cells = []
        for t_level in (0.95, 0.6):
            own, other = mouth_error(model, z, feats, t_level)
            cells.append(f"t={t_level}: own audio {own:.4f}, other audio {other:.4f}, gap {other - own:+.4f}")
        print(f"{path}\n  mouth x0 MSE  " + "\n                ".join(cells))


if __name__ == "__main__":
    main()
