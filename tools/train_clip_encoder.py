"""Train the frozen clip encoder of the benchmark's Frechet distance (reference/clip_encoder.py).

    python3 tools/train_clip_encoder.py [--clips 2000] [--steps 2000] [--seed 0]

Renders ``--clips`` random 8-frame windows of the synthetic ``train`` split at 256x256 (the cpu
preset's resolution; the encoder reads them area-downsampled to 64x64, as it reads any video),
then regresses each window's per-frame ground truth (standardised) from its pixels. Writes
reference/assets/clip_encoder.safetensors atomically and prints the held-out regression error
per target (1.0 = no better than the mean). Seeded: the same run on the same machine gives the
same weights. About 10 min on 2 CPU cores. Retraining changes what the benchmark's FD means.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference.clip_encoder import FRAMES, TARGETS, WEIGHTS, ClipEncoder, to_clips  # noqa: E402
from reference.data.synthetic import SyntheticTalkingHeads  # noqa: E402
from reference.media import as_if_created  # noqa: E402


def render(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = SyntheticTalkingHeads(256, split="train", seed=seed + 1000, motion="lively")
    rng = np.random.default_rng(seed)
    clips, targets = [], []
    from tqdm.auto import tqdm
    for i in tqdm(range(count), desc="rendering clips", unit="clip"):
        clip = data.clip(i, FRAMES, start=int(rng.integers(0, 240)))
        clips.append(to_clips(clip.frames)[0])
        targets.append(np.stack([clip.truth[k] for k in TARGETS], 1))     # (FRAMES, targets)
    return torch.stack(clips), torch.from_numpy(np.stack(targets)).float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=2000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    start = time.time()
    x, y = render(args.clips, args.seed)
    mean, std = y.mean((0, 1)), y.std((0, 1)).clamp_min(1e-3)
    y = ((y - mean) / std).flatten(1)                                   # (N, FRAMES * targets)
    held = args.clips // 10
    model = ClipEncoder()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        idx = torch.randint(held, len(x), (args.batch_size,), generator=g)
        loss = F.mse_loss(model.head(model(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)
    with torch.no_grad():
        pred = model.head(model(x[:held])).view(held, FRAMES, -1)
        err = ((pred - y[:held].view(held, FRAMES, -1)) ** 2).mean((0, 1))
    print("held-out error per target (1 = the mean):",
          ", ".join(f"{k} {e:.2f}" for k, e in zip(TARGETS, err.tolist())))
    from safetensors.torch import save_file
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=WEIGHTS.parent, prefix=".clip_encoder.")
    os.close(fd)
    save_file(state, tmp, metadata={"seed": str(args.seed), "clips": str(args.clips), "steps": str(args.steps)})
    as_if_created(tmp)                   # mkstemp makes it private; it is a package file
    os.replace(tmp, WEIGHTS)
    print(f"wrote {WEIGHTS} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
