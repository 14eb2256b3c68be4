"""Training and evaluation data: talking-head clips as the models consume them.

A dataset is a sequence of :class:`Clip`: a portrait (the identity, what a user would upload), the
video that follows it, whole chunks of it, and the speech that drives it. Frame n of ``frames``
shows time n / fps of ``audio``; the portrait is not part of the timeline. Two sources:

* :mod:`reference.data.synthetic`: procedurally drawn faces whose mouths follow procedurally
  synthesised speech; needs no download and knows the ground-truth mouth opening.
* :mod:`reference.data.folder`: a folder of real talking-head mp4 clips (face-cropped, with audio).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Clip:
    reference: np.ndarray              # uint8 (H, W, 3): the identity portrait
    frames: np.ndarray                 # uint8 (T, H, W, 3), T a multiple of frames_per_chunk
    audio: np.ndarray                  # float32 mono at the model's sample rate, T * samples_per_frame
    name: str                          # where the clip came from (file name or synthetic seed)
    mouth_open: np.ndarray | None = None   # float32 (T,) in [0, 1]: ground truth, synthetic only
    mouth_box: tuple[int, int, int, int] | None = None  # (top, bottom, left, right) around the mouth
    eye_boxes: tuple | None = None         # one such box per eye (synthetic only)
    head_box: tuple[int, int, int, int] | None = None   # the head at any pose (synthetic only)
    truth: dict[str, np.ndarray] | None = None  # per-frame ground truth of everything drawn:
                                                # pose, blinks, brows, gaze, smile (synthetic)
    posture_reach: tuple[int, int] = (0, 0)     # (x, y) pixels a posture shift carries the head
                                                # (restless data), by which the boxes are grown

    def __post_init__(self):
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {self.frames.dtype} {self.frames.shape}")
        if self.reference.shape != self.frames.shape[1:]:
            raise ValueError(f"reference {self.reference.shape} does not match frames {self.frames.shape[1:]}")
