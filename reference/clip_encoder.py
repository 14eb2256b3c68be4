"""The frozen clip encoder behind the benchmark's Frechet distance (ours, not FID).

FID compares Inception features of single images; a talking head is judged over time, and there
is no pretrained video network to download here. So the benchmark has its own: a small 3D conv
net that reads 8 frames at 64x64 and was trained, once, to regress everything the synthetic
ground truth knows about those frames (head translation, roll, turn and nod, blinks, brows,
gaze, smile, mouth opening and lip spread). Its 32 penultimate features are the space the
Frechet distance is measured in: it sees what moves, where, and how sharply, and two videos
whose motion is distributed alike are close in it however their pixels differ.

The weights are fixed (``reference/assets/clip_encoder.safetensors``), made by
``tools/train_clip_encoder.py`` with seed 0; figures from different weights are not comparable,
so retraining it is a change of the benchmark, to be stated.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FRAMES = 8                     # frames per clip
SIZE = 64                      # pixels a side, after area downsampling
FEATURES = 32
TARGETS = ("dx", "dy", "roll", "yaw", "pitch", "blink", "brow", "gaze_x", "gaze_y", "smile",
           "opening", "spread")
WEIGHTS = Path(__file__).resolve().parent / "assets" / "clip_encoder.safetensors"


class ClipEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(3, 16, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)), nn.SiLU(),     # 32x32
            nn.Conv3d(16, 32, (3, 3, 3), stride=(1, 2, 2), padding=1), nn.SiLU(),            # 16x16
            nn.Conv3d(32, 64, (3, 3, 3), stride=(2, 2, 2), padding=1), nn.SiLU(),            # 8x8, 4 frames
            nn.Conv3d(64, 64, (3, 3, 3), stride=(1, 2, 2), padding=1), nn.SiLU())            # 4x4
        self.features = nn.Linear(64 * 4 * 4 * (FRAMES // 2), FEATURES)
        self.head = nn.Linear(FEATURES, len(TARGETS) * FRAMES)   # training only

    def forward(self, clips: Tensor) -> Tensor:
        """(N, 3, FRAMES, SIZE, SIZE) in [-1, 1] -> (N, FEATURES)."""
        return self.features(self.net(clips).flatten(1))


def to_clips(frames: np.ndarray) -> Tensor:
    """uint8 (T, H, W, 3) -> non-overlapping clips (T // FRAMES, 3, FRAMES, SIZE, SIZE) in
    [-1, 1], area-downsampled (any resolution that is a multiple of SIZE)."""
    n = len(frames) // FRAMES
    x = torch.from_numpy(np.ascontiguousarray(frames[:n * FRAMES])).permute(0, 3, 1, 2).float()
    x = F.adaptive_avg_pool2d(x, SIZE) / 127.5 - 1.0
    return x.view(n, FRAMES, 3, SIZE, SIZE).transpose(1, 2)


@lru_cache(maxsize=1)
def frozen_encoder() -> ClipEncoder:
    from safetensors.torch import load_file
    if not WEIGHTS.is_file():
        raise FileNotFoundError(f"{WEIGHTS} is missing: run tools/train_clip_encoder.py")
    model = ClipEncoder()
    missing, unexpected = model.load_state_dict(load_file(str(WEIGHTS)), strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):     # the head is training's
        raise ValueError(f"{WEIGHTS} does not fit ClipEncoder: missing {missing}, unexpected {unexpected}")
    return model.eval().requires_grad_(False)


@torch.no_grad()
def clip_features(frames: np.ndarray, batch: int = 64, blank: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The frozen encoder's features of every 8-frame clip of a video, (T // 8, FEATURES); a
    batch of clips at a time, so that an hour of video never becomes one float array. ``blank``:
    a (top, bottom, left, right) box painted mid-grey first (the benchmark's head motion blanks
    the mouth, whose motion lip sync measures)."""
    encoder, span = frozen_encoder(), batch * FRAMES
    out = []
    for i in range(0, len(frames) - FRAMES + 1, span):
        piece = frames[i:i + span]
        if blank is not None:
            top, bottom, left, right = blank
            piece = piece.copy()
            piece[:, max(top, 0):bottom, max(left, 0):right] = 128
        out.append(encoder(to_clips(piece)))
    return torch.cat(out).double().numpy()
