"""Where the head is, frame by frame, and whether it is drawn twice: what the head motion
figure and the ghost figure of ``rest-fast eval`` read.

* :func:`head_pose`: per frame, the head's offset from the portrait and its inner face's shift
  from that (a nod, a turn), found as ``reference.metrics.head_offsets`` finds a restless head
  (phase correlation of the frame's edges against the portrait's), here sub-pixel, low-passed
  (a soft, grainy decoded frame is matched by its coarse outlines, not its grain) and with the
  eyes and the mouth left out. Pixels that merely change (a mouth, a blink, a gaze, a VAE's
  flicker) move no peak, so a head held still reads as still, and a frame whose head the search
  loses (noise) reads as a head thrown about.
* :func:`head_motion`: the spread of the head's offset over time, in pixels; the benchmark reports it
  generated over true (1: as lively as the truth; a frozen head ~0; a head thrown about > 1).
* :func:`ghost_series`: per frame, how strongly the eyes and brows repeat a few pixels away (a
  faint shifted second copy of the head, as a generated head shows when it turns); the benchmark
  reports its mean, generated over true.
"""
from __future__ import annotations

import math

import numpy as np

from .metrics import LUMA, _edges

# Pixels around a left-out box (per 256 of the side, rounded down: none at 128, where the inner
# face is small and it would hide most of the brows): a box's border has a gradient of its own.
_MARGIN = 2
GHOST_REACH = (2.5, 8.0)   # how far from the head a ghost is looked for, pixels (at 256)


def _hann(h: int, w: int) -> np.ndarray:
    """A 2-D Hann window: a region's borders weigh nothing, so they make no edge of their own."""
    return np.outer(np.hanning(h), np.hanning(w))


def _subpixel(window: np.ndarray, iy: int, ix: int) -> tuple[float, float]:
    """The peak at (iy, ix) of ``window`` refined by a parabola through it and its neighbours on
    each axis (at a border: the whole pixel)."""
    def refine(left, centre, right):
        denom = left - 2 * centre + right
        return 0.0 if denom >= 0 else float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))
    h, w = window.shape
    dy = refine(window[iy - 1, ix], window[iy, ix], window[iy + 1, ix]) if 0 < iy < h - 1 else 0.0
    dx = refine(window[iy, ix - 1], window[iy, ix], window[iy, ix + 1]) if 0 < ix < w - 1 else 0.0
    return iy + dy, ix + dx


def _masks(clip) -> tuple[np.ndarray, np.ndarray]:
    """The two regions searched, as weights (H, W): the whole frame but the eyes and the mouth
    (their boxes), and the inner face (brows and nose, :func:`inner_box`, Hann-weighted) but the
    eyes and the mouth. Eyes and mouth are left out because they change by themselves: with the
    eyes in, the search follows the irises when the gaze moves (10 pixels off on a still head)."""
    size = clip.reference.shape[:2]
    outline, m = np.ones(size), _MARGIN * (size[0] // 256)
    for top, bottom, left, right in (*clip.eye_boxes, clip.mouth_box):
        outline[max(top - m, 0):bottom + m, max(left - m, 0):right + m] = 0.0
    inner = np.zeros(size)
    top, bottom, left, right = inner_box(clip)
    inner[top:bottom, left:right] = _hann(bottom - top, right - left)
    return outline, inner * outline


def inner_box(clip) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): the brows (raised), the eyes and the nose, down to the mouth
    box's bottom and across the eye boxes (pixels)."""
    eyes = clip.eye_boxes
    top, bottom = min(b[0] for b in eyes), max(b[1] for b in eyes)
    return (max(0, top - (bottom - top) // 2), max(clip.mouth_box[1], bottom),
            max(0, min(b[2] for b in eyes)), max(b[3] for b in eyes))


# The low-pass weighting the whitened cross-spectrum, cycles per pixel at 256 (scaled with the
# side): a Gaussian of this width in frequency. Whitening alone weighs every frequency alike, and on
# decoded video (sharpness ~0.08 of the truth's) the high ones hold only the VAE's grain, which
# moves from frame to frame: the peak followed it, 2-9 pixels a frame on a head that moves 0.02-0.2
# (the VAE's reconstruction of the truth scored head motion 2.7-4.4). Weighted, the peak follows
# the outlines' coarse shape, which the decoder keeps (the same reconstruction: 0.9).
LOW_PASS = 0.05


def _low_pass(shape: tuple[int, int]) -> np.ndarray:
    """The weights (H, W // 2 + 1) of ``np.fft.rfft2``'s frequencies: a Gaussian of ``LOW_PASS``
    cycles per pixel at 256 pixels, wider at fewer (the same features span fewer pixels)."""
    sigma = LOW_PASS * 256 / shape[0]
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None]
    return np.exp(-(fy ** 2 + fx ** 2) / (2 * sigma ** 2))


def _search(edges: np.ndarray, portrait_conj: np.ndarray, reach: int, low_pass: np.ndarray) -> np.ndarray:
    """The (dy, dx), sub-pixel, within +-``reach``, that best aligns ``edges`` with the portrait's
    (given as the conjugate of their transform): the peak of the whitened cross-correlation,
    its spectrum weighted by ``low_pass`` (:func:`_low_pass`)."""
    cross = np.fft.rfft2(edges) * portrait_conj
    peak = np.fft.irfft2(cross / (np.abs(cross) + 1e-6) * low_pass, s=edges.shape)
    window = np.roll(peak, (reach, reach), (0, 1))[:2 * reach + 1, :2 * reach + 1]
    return np.subtract(_subpixel(window, *np.unravel_index(window.argmax(), window.shape)), reach)


def default_reach(clip) -> int:
    """The farthest offset searched: what the lively data's drift and turns (5% of the side),
    and twice a restless head's posture reach, can carry the head."""
    return int(math.ceil(0.05 * clip.reference.shape[0])) + 2 * max(clip.posture_reach)


def head_pose(frames: np.ndarray, clip, reach: int | None = None) -> np.ndarray:
    """(N, 4) per frame: the head's offset from the portrait (dy, dx; the outline's edges, eyes
    and mouth left out), and the inner face's shift from it (dy, dx; the brows and nose, which a
    nod or a turn moves further than the outline), in pixels, sub-pixel. A head held still reads
    0 whatever its eyes and mouth do; on lively truth the columns follow the drawn dy, dx, pitch
    and yaw (correlation 0.9-1.0, the turn 0.5 on some faces)."""
    reach = default_reach(clip) if reach is None else reach
    outline_mask, inner_mask = _masks(clip)
    portrait = _edges(clip.reference)
    outline_conj = np.conj(np.fft.rfft2(portrait * outline_mask))
    inner_conj = np.conj(np.fft.rfft2(portrait * inner_mask))
    low_pass = _low_pass(portrait.shape)
    out = np.zeros((len(frames), 4))
    for n, frame in enumerate(frames):
        edges = _edges(frame)
        head = _search(edges * outline_mask, outline_conj, reach, low_pass)
        out[n] = (*head, *(_search(edges * inner_mask, inner_conj, reach, low_pass) - head))
    return out


def head_motion(poses: np.ndarray) -> float:
    """How far the head travels: the root of the summed variance over time of :func:`head_pose`'s
    head offset (its first two columns), in pixels. 0 for a head held still; large for a head the
    search loses (noise).

    The inner face's shift is left out: on decoded video its search does not follow the drawn
    turn (its dx correlates -0.3-0 with the truth's on the VAE's reconstruction, and jumps +-13
    pixels: with eyes and mouth out, the inner face is the brows, horizontal bars that pin no
    x, and a strip of nose), so it would score a faithful reconstruction 1.3-2.2. The outline
    moves with a nod or a turn too, so a frozen head still reads ~0."""
    return float(np.sqrt(poses[:, :2].var(axis=0).sum())) if len(poses) > 1 else 0.0


def ghost_region(clip) -> tuple[int, int, int, int]:
    """Where a ghost shows: the eyes and the brows (the eye boxes, grown up by half their height),
    pixels, one pixel in from the frame's edges (the Laplacian's stencil)."""
    eyes, size = clip.eye_boxes, clip.reference.shape[0]
    top, bottom = min(b[0] for b in eyes), max(b[1] for b in eyes)
    return (max(1, top - (bottom - top) // 2), min(size - 1, bottom),
            max(1, min(b[2] for b in eyes)), min(size - 1, max(b[3] for b in eyes)))


def ghost_series(frames: np.ndarray, clip) -> np.ndarray:
    """Per frame, how strongly the eyes-and-brows region repeats itself a few pixels away: the
    autocorrelation of its luma Laplacian (Hann-weighted) peaks again at a ghost's shift, after a
    dip. The figure is the highest such peak's prominence (its height over the lowest point on the
    straight path back to shift 0) at ``GHOST_REACH`` pixels, over the autocorrelation at 0. One
    sharp head: ~0.2 (its own parallel lines: lids, brows); a second copy blended at 0.3: ~0.4;
    blur has no second peak (its autocorrelation only falls)."""
    top, bottom, left, right = ghost_region(clip)
    lo, hi = (r * clip.reference.shape[0] / 256 for r in GHOST_REACH)
    k = int(math.ceil(hi))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    ring = np.argwhere((np.hypot(yy, xx) > lo) & (np.hypot(yy, xx) <= hi)) - k
    steps = np.linspace(0.15, 0.85, 8)
    path_y = np.round(ring[:, :1] * steps).astype(int) + k      # (P, 8): the way back to 0
    path_x = np.round(ring[:, 1:] * steps).astype(int) + k
    window, shape = _hann(bottom - top, right - left), (2 * (bottom - top), 2 * (right - left))
    out = np.zeros(len(frames))
    for n, frame in enumerate(frames):
        y = frame[top - 1:bottom + 1, left - 1:right + 1].astype(np.float64) @ LUMA
        lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
        spectrum = np.fft.rfft2((lap - lap.mean()) * window, s=shape)
        auto = np.roll(np.fft.irfft2(np.abs(spectrum) ** 2, s=shape), (k, k), (0, 1))[:2 * k + 1, :2 * k + 1]
        prominence = auto[ring[:, 0] + k, ring[:, 1] + k] - auto[path_y, path_x].min(axis=1)
        out[n] = max(float(prominence.max()), 0.0) / max(float(auto[k, k]), 1e-9)
    return out
