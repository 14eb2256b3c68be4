"""Quality figures of a generated talking-head stream against its synthetic ground truth.

All functions take uint8 video ``(T, H, W, 3)`` (what the pipeline outputs) and work frame by
frame or in blocks of frames, so an hour of video never becomes one float array.

* :func:`mouth_opening`: how open the mouth is in each frame, read from pixels: the share of
  the mouth box that is mouth interior (very dark; the synthetic faces draw it ``(40, 10, 18)``,
  luma 21, against lips and skin of luma 90 and more), each pixel counted by how dark it is
  between the two, so that a blurred interior (what a lossy VAE renders) still counts.
* :func:`lip_sync`: Pearson correlation of the generated opening with the true one at lag 0,
  and the lag (in frames) where the correlation peaks: 0 is in sync, +k means the generated
  mouth moves k frames after the true one.
* :func:`identity_drift`: mean absolute error (0-255 scale) against the true frames over the
  static region (pixels whose true value never changes: background, hair, skin; not the eyes,
  the mouth or the edges that head sway moves), per bin of ``bin_seconds``, with its slope.
* :func:`boundary_smoothness`: mean |temporal second difference| of frames whose 3-frame stencil
  straddles a chunk boundary, divided by the same inside chunks: 1.0 is seamless, a jump at each
  boundary gives much more.
* :func:`psnr`, :func:`ssim`: appearance against the true frames (SSIM on luma, 11x11 Gaussian
  window, sigma 1.5, as Wang et al. 2004). Both favour averages: when the head, the blinks or
  the gaze may go either way, the blurred mean of the possibilities scores better than any one
  sharp possibility. The figures below are the ones a mean cannot fake.
* :func:`feature_motion`: how much a video's clip-encoder features (``reference.clip_encoder``,
  mouth box blanked) move over time; the benchmark reports generated over truth: 1 moves as much
  as the truth, a frozen head that only lip-syncs ~0. Pixel differences cannot do this job: a
  lossy VAE's errors change with the mouth and flicker from frame to frame, and those swamp the
  head's few pixels of motion (the truth through the VAE moves 9x as much as the truth by
  :func:`motion_energy`, and so does a frozen head through it).
* :func:`motion_energy`: mean |luma change| from frame to frame over a box (the data's own
  check that its heads move).
* :func:`eye_openness` and :func:`blinks`: how much eye white shows per frame, and the blinks in
  it (dips between open eyes; rate per minute, and completeness: how far the eyes close, 1
  shut), in units of the truth's open level.
* :func:`sharpness`: mean squared Laplacian of luma pooled 2 x 2 (the energy of edges); blur
  lowers it.
* :func:`head_offsets`, :func:`steady_offsets` and :func:`undo_offsets`: where a head that
  shifts its posture (the restless data) has gone in each frame, the search's brief misses taken
  out, and the video moved back, so that the mouth and the eyes can be read in boxes that need
  not be grown by the shift (grown ones catch hair).
* the Frechet distance between generated and true clips is ``reference.clip_encoder``'s.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
MOUTH_INTERIOR_LUMA = 21.0       # the synthetic faces' mouth interior
MOUTH_CLOSED_LUMA = 88.0         # just below the darkest lips/skin (90+): counts as shut
STATIC_TOLERANCE = 2             # a pixel is static if its true value never moves more than this
_BLOCK = 64                      # frames per block in the streaming computations


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) @ LUMA


def _check_pair(frames: np.ndarray, truth: np.ndarray) -> int:
    if frames.shape[1:] != truth.shape[1:]:
        raise ValueError(f"generated frames {frames.shape[1:]} and true frames {truth.shape[1:]} differ in size")
    n = min(len(frames), len(truth))
    if n == 0:
        raise ValueError("no frames to compare")
    return n


# ------------------------------------------------------------------------------------ lip sync

def mouth_opening(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Share of the mouth box ``(top, bottom, left, right)`` that is mouth interior, per frame: a
    pixel of the interior's luma counts 1, one as light as the lips 0, in between linearly (a hard
    threshold reads a blurred open mouth as shut). 0 for a shut mouth."""
    top, bottom, left, right = box
    luma = _luma(frames[:, top:bottom, left:right])
    share = (MOUTH_CLOSED_LUMA - luma) / (MOUTH_CLOSED_LUMA - MOUTH_INTERIOR_LUMA)
    return np.clip(share, 0.0, 1.0).mean(axis=(1, 2))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side does not vary (a mouth that never moves has no
    sync to measure)."""
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denom) if denom > 1e-12 else 0.0


def lip_sync(opening: np.ndarray, truth: np.ndarray, max_offset: int = 12) -> dict:
    """Correlation at lag 0, and the lag in [-max_offset, max_offset] frames where it peaks.

    ``best_offset = k`` means ``opening[n + k]`` matches ``truth[n]`` best: the generated mouth
    is k frames late (negative: early)."""
    n = min(len(opening), len(truth))
    opening, truth = np.asarray(opening[:n], np.float64), np.asarray(truth[:n], np.float64)
    max_offset = min(max_offset, n - 2)
    best_offset, best_corr = 0, -2.0
    for k in range(-max_offset, max_offset + 1):
        c = _corr(opening[k:], truth[:n - k]) if k >= 0 else _corr(opening[:n + k], truth[-k:])
        if c > best_corr + 1e-12 or (abs(c - best_corr) <= 1e-12 and abs(k) < abs(best_offset)):
            best_offset, best_corr = k, c
    return {"corr": _corr(opening, truth), "best_offset": best_offset, "best_corr": best_corr}


# ------------------------------------------------------------------------------------ identity

def static_mask(truth: np.ndarray, tolerance: int = STATIC_TOLERANCE) -> np.ndarray:
    """(H, W) bool: pixels whose every channel stays within ``tolerance`` over the true video."""
    lo = np.full(truth.shape[1:], 255, np.uint8)
    hi = np.zeros(truth.shape[1:], np.uint8)
    for i in range(0, len(truth), _BLOCK):
        block = truth[i:i + _BLOCK]
        np.minimum(lo, block.min(axis=0), out=lo)
        np.maximum(hi, block.max(axis=0), out=hi)
    return ((hi.astype(np.int16) - lo) <= tolerance).all(axis=-1)


def identity_drift(frames: np.ndarray, truth: np.ndarray, fps: int = 25,
                   bin_seconds: float = 10.0) -> dict:
    """Error on the static region as a function of time.

    Returns ``mae_per_bin`` (one figure per ``bin_seconds``, the last one the remainder),
    ``first`` and ``last`` (the first and the last whole ``bin_seconds``), ``slope_per_minute``
    (least-squares slope of the per-frame error against time, in MAE per minute: positive means
    the identity degrades as the stream goes on) and ``static_fraction`` (the share of the image
    the figures cover)."""
    n = _check_pair(frames, truth)
    mask = static_mask(truth[:n])
    if not mask.any():
        raise ValueError("the true video has no static pixels to measure drift on")
    per_frame = np.empty(n)
    for i in range(0, n, _BLOCK):
        diff = np.abs(frames[i:i + _BLOCK].astype(np.int16) - truth[i:i + _BLOCK])
        per_frame[i:i + len(diff)] = diff[:, mask].mean(axis=(1, 2))
    per_bin = max(1, round(bin_seconds * fps))
    bins = [float(per_frame[i:i + per_bin].mean()) for i in range(0, n, per_bin)]
    minutes = np.arange(n) / (fps * 60.0)
    slope = float(np.polyfit(minutes, per_frame, 1)[0]) if n > 1 else 0.0
    # first / last: the first and the last whole bin_seconds of the stream. The last entry of
    # mae_per_bin is a remainder when n is not a multiple of the bin (60 s of whole chunks is
    # 60.48 s: its last "bin" is 12 frames), too short to stand for the end of the stream.
    first, last = float(per_frame[:per_bin].mean()), float(per_frame[-per_bin:].mean())
    return {"mae_per_bin": bins, "first": first, "last": last, "slope_per_minute": slope,
            "static_fraction": float(mask.mean())}


# ------------------------------------------------------------------------------------ smoothness

def second_difference_energy(frames: np.ndarray) -> np.ndarray:
    """Mean |x[n+1] - 2 x[n] + x[n-1]| over pixels, for n = 1 .. T-2 (length T - 2)."""
    out = np.empty(max(0, len(frames) - 2))
    for i in range(1, len(frames) - 1, _BLOCK):
        j = min(i + _BLOCK, len(frames) - 1)
        x = frames[i - 1:j + 1].astype(np.int16)
        out[i - 1:j - 1] = np.abs(x[2:] - 2 * x[1:-1] + x[:-2]).mean(axis=(1, 2, 3))
    return out


def boundary_smoothness(frames: np.ndarray, chunk_frames: int) -> float:
    """Second-difference energy across chunk boundaries / inside chunks (1.0 = seamless).

    The boundary before frame b = k * chunk_frames is straddled by the stencils centred on
    frames b - 1 and b; every other stencil lies inside one chunk."""
    energy = second_difference_energy(frames)
    if len(frames) <= chunk_frames + 1:
        raise ValueError(f"need more than one chunk ({chunk_frames} frames) to measure boundaries, "
                         f"got {len(frames)} frames")
    centres = np.arange(1, len(frames) - 1)
    at_boundary = ((centres % chunk_frames) == 0) | ((centres % chunk_frames) == chunk_frames - 1)
    across, inside = energy[at_boundary].mean(), energy[~at_boundary].mean()
    if inside == 0:
        return 1.0 if across == 0 else float("inf")
    return float(across / inside)


# ------------------------------------------------------------------------------------ appearance

def psnr(frames: np.ndarray, truth: np.ndarray) -> float:
    """PSNR (dB) over the whole video; inf when identical."""
    n = _check_pair(frames, truth)
    sq = 0.0
    for i in range(0, n, _BLOCK):
        diff = frames[i:min(i + _BLOCK, n)].astype(np.float64) - truth[i:min(i + _BLOCK, n)]
        sq += float((diff * diff).sum())
    mse = sq / (n * frames[0].size)
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).float()


def ssim(frames: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM over frames, on luma in [0, 255] (valid-window convolution, no padding)."""
    n = _check_pair(frames, truth)
    if frames is truth:  # 1 by definition: the benchmark asks it of the truth, at ~45 s a minute
        return 1.0
    g = _gaussian_window()
    wx, wy = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def blur(x):
        return F.conv2d(F.conv2d(x, wx), wy)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    total = 0.0
    for i in range(0, n, _BLOCK):
        a = torch.from_numpy(_luma(frames[i:min(i + _BLOCK, n)]))[:, None]
        b = torch.from_numpy(_luma(truth[i:min(i + _BLOCK, n)]))[:, None]
        mu_a, mu_b = blur(a), blur(b)
        var_a = blur(a * a) - mu_a ** 2
        var_b = blur(b * b) - mu_b ** 2
        cov = blur(a * b) - mu_a * mu_b
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
        total += float(s.mean(dim=(1, 2, 3)).double().sum())
    return total / n


# ------------------------------------------------------------------------- what a mean cannot fake

def _box_mask(shape: tuple[int, int], box, exclude=()) -> np.ndarray:
    mask = np.zeros(shape, bool)
    top, bottom, left, right = box
    mask[max(top, 0):bottom, max(left, 0):right] = True
    for t, b, l, r in exclude:
        mask[max(t, 0):b, max(l, 0):r] = False
    return mask


def motion_energy(frames: np.ndarray, box, exclude=()) -> float:
    """Mean |luma(t) - luma(t-1)| over ``box`` minus the ``exclude`` boxes, over all frames."""
    if len(frames) < 2:
        raise ValueError("motion needs two frames or more")
    mask = _box_mask(frames.shape[1:3], box, exclude)
    total, prev = 0.0, None
    for i in range(0, len(frames), _BLOCK):
        luma = _luma(frames[i:i + _BLOCK])[:, mask]
        if prev is not None:
            luma = np.concatenate([prev, luma])
        total += float(np.abs(np.diff(luma, axis=0)).mean(axis=1).sum())
        prev = luma[-1:]
    return total / (len(frames) - 1)


EYE_WHITE = np.array([245.0, 245.0, 240.0])   # the synthetic eyes' white


def feature_motion(features: np.ndarray) -> float:
    """Temporal spread of per-clip features (N, D): the root of their summed variance over time."""
    return float(np.sqrt(features.var(axis=0).sum()))


def eye_openness(frames: np.ndarray, eye_boxes) -> np.ndarray:
    """Eye white per frame, summed over the eyes' boxes: each pixel counts by how far its colour
    has gone from the box's median colour (the skin around the eye) toward the eyes' white,
    clipped to 0..1 (dark irises, lids and brows count 0). A white blended with the skin, as a
    VAE renders it ((236, 222, 204) where the truth is (245, 245, 240)), counts about half a
    pixel each and spreads over more pixels, so its sum stays near the truth's; the measure
    before, near-white pixels only, counted it 2% (docs/training.md)."""
    out = np.zeros(len(frames))
    for top, bottom, left, right in eye_boxes:
        px = frames[:, max(top, 0):bottom, max(left, 0):right].astype(np.float32)
        skin = np.median(px.reshape(len(px), -1, 3), axis=1)[:, None, None]
        toward = EYE_WHITE - skin
        step = ((px - skin) * toward).sum(-1) / np.maximum((toward * toward).sum(-1), 1.0)
        out += np.clip(step, 0, 1).sum(axis=(1, 2))
    return out


def open_level(openness: np.ndarray) -> float:
    """The open eyes' level of an eye-openness signal: its 90th percentile."""
    return float(np.percentile(openness, 90))


# A blink, in eye white over the (truth's) open level: a dip whose bottom is below BLINK_BOTTOM,
# whose prominence is at least BLINK_DEPTH, reading the eyes' level on each side up to
# BLINK_REOPEN_SECONDS away (open before it, open again after it), and which stays below its
# shoulders by half that depth for at least BLINK_MIN_SECONDS (shorter is flicker). Prominence
# is the topographic one (the rise to the lower shoulder, each side's search stopping at a lower
# point), so one blink with a flat or a double bottom counts once.
# Depth is measured from the eyes' own level, not only from the truth's: through the cpu VAE
# some identities' open eyes render at 0.8 of the truth's white, and their blinks dip by 0.2-0.3
# without reaching 0.6 of it. On the VAE's reconstructions of 4 held-out lively identities this
# finds 46 of the truth's 65 blinks, with 8 more (a blink read twice, flicker), on the truth all
# 65 and none more. Before 2026-12-02 a blink was any closure of 0.08-0.8 s below 0.6 of the
# truth's level, and eyes that settle half open and wander about 0.6 "blinked" at every crossing:
# 39 a minute on a fresh identity whose truth blinks 17, where this counts none
# (docs/training.md, "The blink figure").
BLINK_DEPTH = 0.2
BLINK_BOTTOM = 0.75             # a dip that keeps the eyes three quarters open is not a blink
BLINK_REOPEN_SECONDS = 0.6      # the lively data's blinks take 0.4-0.56 s
BLINK_MIN_SECONDS = 0.08


def _level_before_lower(side: np.ndarray, floor: float, or_equal: bool = False) -> float:
    """The highest value of ``side`` (read outward from a dip) before the first value below
    ``floor`` (``or_equal``: at or below it)."""
    lower = np.nonzero(side <= floor if or_equal else side < floor)[0]
    side = side[:lower[0]] if lower.size else side
    return float(side.max()) if side.size else floor


def blinks(openness: np.ndarray, fps: int = 25, level: float | None = None) -> dict:
    """Blinks in an eye-openness signal: dips below ``BLINK_BOTTOM`` of the open ``level``, at
    least ``BLINK_DEPTH`` of it deep against the eyes on both sides within
    ``BLINK_REOPEN_SECONDS`` (the constants above say the rest). ``level`` defaults to the
    signal's own :func:`open_level`; the benchmark passes the truth's, so that the depth asked is
    a share of the truth's open eyes, not of dim ones.
    ``rate_per_min``; ``completeness``: mean over blinks of how far the eyes close (1 - lowest
    openness / open level; 1 shut), 0 with no blinks; ``count``."""
    level = open_level(openness) if level is None else level
    if level <= 0:
        return {"rate_per_min": 0.0, "completeness": 0.0, "count": 0}
    r = openness / level
    reach, shortest = round(BLINK_REOPEN_SECONDS * fps), round(BLINK_MIN_SECONDS * fps)
    depths = []
    # The first frame of each local minimum (a flat bottom counts once).
    for m in np.nonzero((r[1:-1] < r[:-2]) & (r[1:-1] <= r[2:]) & (r[1:-1] < BLINK_BOTTOM))[0] + 1:
        # Of two equal bottoms the first is the dip's: the second reads the first as lower.
        shoulder = min(_level_before_lower(r[max(m - reach, 0):m][::-1], r[m], or_equal=True),
                       _level_before_lower(r[m + 1:m + reach + 1], r[m]))
        if shoulder - r[m] < BLINK_DEPTH:
            continue
        below = r < shoulder - BLINK_DEPTH / 2
        start, end = m, m + 1
        while start > 0 and below[start - 1]:
            start -= 1
        while end < len(below) and below[end]:
            end += 1
        if end - start >= shortest:
            depths.append(1.0 - float(r[m]))
    minutes = len(openness) / (fps * 60.0)
    return {"rate_per_min": len(depths) / minutes, "completeness": float(np.mean(depths)) if depths else 0.0,
            "count": len(depths)}


def _edges(frame: np.ndarray) -> np.ndarray:
    """Gradient magnitude of luma, mean removed: outlines, which move with the head, rather than
    the background's colour ramp."""
    gy, gx = np.gradient(_luma(frame))
    edges = np.hypot(gx, gy)
    return edges - edges.mean()


def head_offsets(frames: np.ndarray, reference: np.ndarray, max_shift: int) -> np.ndarray:
    """Per frame, the (dy, dx) in whole pixels, within +-``max_shift``, that best aligns the
    frame's edges with the portrait's: phase correlation, which a translated head peaks sharply.
    On restless clips (256 pixels) it finds the drawn translation to 0.3-3.3 pixels on average, 12
    at worst where a turn and the hair move the outline against the head."""
    if max_shift < 1:
        raise ValueError(f"max_shift must be at least 1 pixel, got {max_shift}")
    portrait = np.conj(np.fft.rfft2(_edges(reference)))
    out = np.zeros((len(frames), 2), dtype=np.int64)
    for n, frame in enumerate(frames):
        cross = np.fft.rfft2(_edges(frame)) * portrait
        peak = np.fft.irfft2(cross / (np.abs(cross) + 1e-6), s=reference.shape[:2])
        window = np.roll(peak, (max_shift, max_shift), (0, 1))[:2 * max_shift + 1, :2 * max_shift + 1]
        out[n] = np.unravel_index(window.argmax(), window.shape)
    return out - max_shift


# The head search's running median, in frames (0.36 s at 25 fps): long enough to take out the
# misses of a search on decoded video (most last 1-4 frames), short against a posture shift's
# 0.8 s ease, which is monotone over it and so kept.
STEADY_FRAMES = 9


def steady_offsets(offsets: np.ndarray, frames: int = STEADY_FRAMES) -> np.ndarray:
    """``offsets`` (N, 2) with the search's brief misses taken out: a running median of each axis
    over ``frames`` frames (odd), the ends held. On decoded video the search loses the head now
    and then, for a frame or a few, to blurred outlines and grain (on the restless VAE's
    reconstruction of a held-out identity it is 5+ pixels off the drawn offset on 30% of the
    frames, 10+ on 4%), and eyes read in the wrong place dip like a blink: that stream counted
    27.8 blinks a minute where the truth has 17.9, and 18.8 read through this median, the same
    as at the drawn offsets (docs/training.md, "The blink figure on restless heads")."""
    if frames < 1 or frames % 2 == 0:
        raise ValueError(f"the running median needs an odd number of frames, got {frames}")
    half = frames // 2
    padded = np.pad(offsets, ((half, half), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, frames, axis=0)
    return np.median(windows, axis=-1).astype(offsets.dtype)   # of an odd count: one of them


def undo_offsets(frames: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each frame moved back by its (dy, dx); what leaves one edge comes in at the other (the
    boxes read inside the frame, away from its edges)."""
    out = np.empty_like(frames)
    for n, (dy, dx) in enumerate(offsets):
        out[n] = np.roll(frames[n], (-int(dy), -int(dx)), (0, 1))
    return out


SHARPNESS_SCALE = 2              # pixels pooled per side before the Laplacian


def sharpness(frames: np.ndarray, scale: int = SHARPNESS_SCALE) -> float:
    """Mean squared Laplacian (4-neighbour, valid pixels) of luma averaged over ``scale`` x
    ``scale`` pixels: the energy of edges. At ``scale`` 1 the figure of a decoded video is mostly
    its grain, which flickers from frame to frame: averaging 5 frames of the cpu VAE's
    reconstruction removes 36% of it at scale 1 and 5% at scale 2 (the truth loses 10% and 6%;
    docs/training.md, "What sharpness can tell")."""
    total = 0.0
    for i in range(0, len(frames), _BLOCK):
        y = F.avg_pool2d(torch.from_numpy(_luma(frames[i:i + _BLOCK]))[:, None], scale)[:, 0].double().numpy()
        lap = 4 * y[:, 1:-1, 1:-1] - y[:, :-2, 1:-1] - y[:, 2:, 1:-1] - y[:, 1:-1, :-2] - y[:, 1:-1, 2:]
        total += float((lap ** 2).mean(axis=(1, 2)).sum())
    return total / len(frames)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D), as FID
    computes it: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # (S_a S_b)^1/2 through the symmetric form S_a^1/2 S_b S_a^1/2, which has real eigenvalues.
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = float(np.sqrt(np.clip(middle, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
