"""Synthetic talking heads: procedurally drawn faces whose mouths follow synthesised speech.

Nothing to download, deterministic by seed, and the ground truth is known: every clip carries the
mouth opening of each frame, which is what the lip-sync metric of ``rest-fast eval`` compares to.

Speech: phrases of syllables (an optional noise-burst consonant, then a voiced vowel with its
own formants and a falling pitch contour) separated by pauses. The voiced part is additive
synthesis: harmonics of f0 weighted by three formant resonances, so that the Whisper features
carry both loudness and vowel identity.

Face: a portrait on a two-colour background (hair, face, neck and shirt, eyes with irises, brows,
nose, lips) drawn with soft-edged ellipses. Per frame it moves a little (slow head sway), blinks
every few seconds, and opens its mouth by the speech envelope times the vowel's jaw opening; the
lips spread for /i/, /e/ and round for /o/, /u/. The mouth interior is very dark on lighter skin,
so the opening can be read back from pixels (:func:`reference.metrics.mouth_opening`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import Clip

# Vowel: (F1, F2, F3) in Hz, jaw opening (0..1), lip spread (0 round .. 1 spread).
VOWELS = {
    "a": ((750, 1250, 2500), 1.00, 0.60),
    "e": ((500, 1850, 2600), 0.60, 0.85),
    "i": ((300, 2250, 3000), 0.30, 1.00),
    "o": ((500, 900, 2400), 0.70, 0.20),
    "u": ((330, 800, 2300), 0.40, 0.00),
}
_FORMANT_BANDWIDTH = (90.0, 110.0, 170.0)


# ---------------------------------------------------------------------------------- speech

@dataclass
class Speech:
    audio: np.ndarray        # float32 mono
    opening: np.ndarray      # float32 per sample, 0 (closed) .. 1 (wide open)
    spread: np.ndarray       # float32 per sample, lip spread 0 (round) .. 1 (spread)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average (same length): turns piecewise-constant targets into articulator motion."""
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    return np.convolve(np.pad(x, (width // 2, width - 1 - width // 2), mode="edge"), kernel, "valid")


def synthesize_speech(seconds: float, rng: np.random.Generator, sample_rate: int = 16000) -> Speech:
    """Babble of syllables and pauses, with the per-sample articulation that produced it.

    Prefix-stable: the first s seconds are the same whatever ``seconds`` is asked for (so a
    window of a long clip equals the same window rendered alone)."""
    wanted = int(round(seconds * sample_rate))
    n = wanted + sample_rate // 2  # a margin, so that smoothing never sees the end
    noise_rng = np.random.default_rng(rng.integers(2**63))
    f0 = np.zeros(n)
    formants = np.zeros((3, n))
    voiced = np.zeros(n)           # voicing amplitude target
    noise = np.zeros(n)            # consonant noise amplitude target
    jaw = np.zeros(n)
    spread = np.full(n, 0.5)
    base_pitch = rng.uniform(95, 230)
    pos = int(rng.uniform(0.05, 0.4) * sample_rate)
    while pos < n:
        syllables = rng.integers(2, 7)
        pitch = base_pitch * rng.uniform(1.0, 1.15)
        for _ in range(syllables):
            if rng.random() < 0.6:  # consonant onset: a short burst with the mouth nearly shut
                length = int(rng.uniform(0.03, 0.08) * sample_rate)
                noise[pos:pos + length] = rng.uniform(0.01, 0.03)
                jaw[pos:pos + length] = 0.1
                pos += length
            name = "aeiou"[rng.integers(5)]
            (f1, f2, f3), opening, lip_spread = VOWELS[name]
            length = int(rng.uniform(0.10, 0.26) * sample_rate)
            sl = slice(pos, pos + length)
            f0[sl] = pitch
            pitch *= rng.uniform(0.93, 1.0)  # declination over the phrase
            formants[:, sl] = (np.array([f1, f2, f3]) * rng.uniform(0.92, 1.08, 3))[:, None]
            voiced[sl] = rng.uniform(0.6, 1.0)
            jaw[sl] = opening * rng.uniform(0.8, 1.0)
            spread[sl] = lip_spread
            pos += length
        pos += int(rng.uniform(0.15, 0.6) * sample_rate)  # pause between phrases

    # Articulators move smoothly (~30-40 ms); pitch and formants glide.
    ms = sample_rate // 1000
    voiced, noise = _smooth(voiced, 30 * ms), _smooth(noise, 10 * ms)
    jaw, spread = _smooth(jaw, 40 * ms), _smooth(spread, 40 * ms)
    f0 = _smooth(np.where(f0 > 0, f0, base_pitch), 20 * ms)
    formants = np.stack([_smooth(np.where(f > 0, f, 500.0), 20 * ms) for f in formants])

    phase = 2 * math.pi * np.cumsum(f0) / sample_rate
    signal = np.zeros(n)
    for k in range(1, int(4000 // base_pitch) + 1):
        freq = k * f0
        gain = sum(1.0 / (1.0 + ((freq - formants[i]) / _FORMANT_BANDWIDTH[i]) ** 2) for i in range(3))
        signal += np.sin(k * phase) * gain / math.sqrt(k)
    hiss = noise_rng.standard_normal(n)
    # Open vowels are louder than close ones (intrinsic intensity), as in real speech.
    signal = voiced * (0.4 + 0.6 * jaw) * signal * 0.1 + (noise + 0.002) * hiss
    signal = np.clip(signal, -0.95, 0.95)
    # The mouth is open while voicing; consonants keep it nearly shut.
    opening = np.clip(jaw * np.clip(voiced * 1.4, 0, 1), 0, 1)
    return Speech(signal[:wanted].astype(np.float32), opening[:wanted].astype(np.float32),
                  spread[:wanted].astype(np.float32))


def per_frame(x: np.ndarray, samples_per_frame: int, frames: int) -> np.ndarray:
    """Mean of a per-sample signal over each video frame's samples."""
    x = np.pad(x, (0, max(0, frames * samples_per_frame - len(x))), mode="edge")
    return x[: frames * samples_per_frame].reshape(frames, samples_per_frame).mean(1).astype(np.float32)


# ---------------------------------------------------------------------------------- faces

_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 145, 105],
                  [170, 120, 85], [141, 100, 70]], dtype=np.float64)
_HAIR = np.array([[30, 22, 18], [70, 45, 30], [120, 80, 45], [200, 160, 90], [150, 150, 150],
                  [110, 40, 25]], dtype=np.float64)
_MOUTH_INSIDE = np.array([40, 10, 18], dtype=np.float64)


@dataclass
class Identity:
    """Everything that stays fixed for one person; sizes are fractions of the image side."""
    bg_top: np.ndarray
    bg_bottom: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    shirt: np.ndarray
    lips: np.ndarray
    iris: np.ndarray
    face_x: float
    face_y: float
    face_w: float
    face_h: float
    hair_volume: float
    long_hair: bool
    eye_dy: float
    eye_dx: float
    eye_w: float
    eye_h: float
    mouth_dy: float
    mouth_w: float
    sway: np.ndarray           # (amp_x, amp_y, freq_x, freq_y, phase_x, phase_y)

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Identity":
        def color(palette):
            return np.clip(palette[rng.integers(len(palette))] + rng.normal(0, 8, 3), 0, 255)
        return cls(
            bg_top=rng.uniform(40, 230, 3), bg_bottom=rng.uniform(20, 200, 3),
            skin=color(_SKIN), hair=color(_HAIR), shirt=rng.uniform(20, 235, 3),
            lips=np.clip(np.array([185, 85, 85]) + rng.normal(0, 12, 3), 0, 255),
            iris=np.clip(np.array([70, 50, 35]) + rng.normal(0, 20, 3), 0, 255),
            face_x=0.5 + rng.uniform(-0.03, 0.03), face_y=0.47 + rng.uniform(-0.03, 0.03),
            face_w=rng.uniform(0.22, 0.28), face_h=rng.uniform(0.29, 0.34),
            hair_volume=rng.uniform(1.05, 1.2), long_hair=bool(rng.random() < 0.4),
            eye_dy=rng.uniform(-0.09, -0.06), eye_dx=rng.uniform(0.085, 0.11),
            eye_w=rng.uniform(0.035, 0.048), eye_h=rng.uniform(0.02, 0.028),
            mouth_dy=rng.uniform(0.15, 0.19), mouth_w=rng.uniform(0.07, 0.095),
            sway=np.array([rng.uniform(0.003, 0.012), rng.uniform(0.002, 0.008),
                           rng.uniform(0.08, 0.3), rng.uniform(0.1, 0.35),
                           rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi)]),
        )

    def mouth_box(self, size: int) -> tuple[int, int, int, int]:
        """A box that holds the mouth at any opening and head position (pixels)."""
        cx, cy = self.face_x, self.face_y + self.mouth_dy
        half_w = self.mouth_w * 1.35 + self.sway[0]
        top, bottom = cy - 0.03 - self.sway[1], cy + 0.095 + self.sway[1]
        return (int(top * size), int(math.ceil(bottom * size)),
                int((cx - half_w) * size), int(math.ceil((cx + half_w) * size)))


def _paint_ellipse(img: np.ndarray, color: np.ndarray, cx: float, cy: float, rx: float, ry: float,
                   edge: float = 1.0) -> None:
    """Composite a soft-edged ellipse (pixel units) onto img in place, inside its bounding box."""
    if rx < 0.25 or ry < 0.25:
        return
    h, w, _ = img.shape
    y0, y1 = max(int(cy - ry - 2), 0), min(int(cy + ry + 3), h)
    x0, x1 = max(int(cx - rx - 2), 0), min(int(cx + rx + 3), w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    dist = (np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) - 1.0) * min(rx, ry)
    alpha = np.clip(0.5 - dist / edge, 0.0, 1.0)[..., None]
    region = img[y0:y1, x0:x1]
    region += alpha * (color - region)


def render_frame(ident: Identity, size: int, dx: float = 0.0, dy: float = 0.0, opening: float = 0.0,
                 spread: float = 0.5, blink: float = 0.0) -> np.ndarray:
    """One frame, uint8 (size, size, 3). dx, dy: head offset as a fraction of the side."""
    s = float(size)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    img = np.broadcast_to(ident.bg_top + ramp * (ident.bg_bottom - ident.bg_top), (size, size, 3)).copy()
    fx, fy = (ident.face_x + dx) * s, (ident.face_y + dy) * s
    fw, fh = ident.face_w * s, ident.face_h * s
    # Shoulders and neck move less than the head.
    _paint_ellipse(img, ident.shirt, ident.face_x * s + dx * s * 0.3, s * 1.02, s * 0.42, s * 0.2, 2)
    _paint_ellipse(img, ident.skin * 0.9, fx, fy + fh * 0.9, fw * 0.45, fh * 0.5)
    _paint_ellipse(img, ident.hair, fx, fy - fh * 0.12, fw * ident.hair_volume, fh * ident.hair_volume * 0.95)
    if ident.long_hair:
        for side in (-1, 1):
            _paint_ellipse(img, ident.hair, fx + side * fw * 0.85, fy + fh * 0.35, fw * 0.32, fh * 0.75)
    _paint_ellipse(img, ident.skin, fx, fy + fh * 0.05, fw, fh)
    _paint_ellipse(img, ident.hair, fx, fy - fh * 0.78, fw * 0.85, fh * 0.28)  # fringe
    for side in (-1, 1):
        ex, ey = fx + side * ident.eye_dx * s, fy + ident.eye_dy * s
        ew, eh = ident.eye_w * s, ident.eye_h * s
        _paint_ellipse(img, ident.hair * 0.8, ex, ey - eh * 2.2, ew * 1.2, eh * 0.35)  # brow
        open_h = eh * (1.0 - blink)
        if open_h > 0.6:
            _paint_ellipse(img, np.array([245.0, 245.0, 240.0]), ex, ey, ew, open_h)
            _paint_ellipse(img, ident.iris, ex, ey, eh * 0.8, min(eh * 0.8, open_h))
        else:  # a closed lid
            _paint_ellipse(img, ident.skin * 0.75, ex, ey, ew, 0.8)
    _paint_ellipse(img, ident.skin * 0.85, fx, fy + 0.07 * s, 0.018 * s, 0.028 * s)  # nose
    mx, my = fx, fy + ident.mouth_dy * s
    mw = ident.mouth_w * s * (0.85 + 0.3 * spread)
    gap = opening * 0.07 * s
    _paint_ellipse(img, ident.lips, mx, my + gap * 0.5, mw, 0.012 * s + gap * 0.6)
    _paint_ellipse(img, _MOUTH_INSIDE, mx, my + gap * 0.5, mw * 0.8, gap * 0.5)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def blink_track(frames: int, fps: int, rng: np.random.Generator) -> np.ndarray:
    """Eyelid closure per frame: a 5-frame blink every 2-6 s."""
    out = np.zeros(frames, dtype=np.float32)
    pos = int(rng.uniform(0.5, 3.0) * fps)
    shape = np.array([0.5, 1.0, 1.0, 0.6, 0.2])
    while pos < frames:
        out[pos:pos + 5] = shape[: len(out[pos:pos + 5])]
        pos += int(rng.uniform(2.0, 6.0) * fps)
    return out


# ---------------------------------------------------------------------------------- dataset

SPLITS = {"train": 0, "eval": 1}


class SyntheticTalkingHeads:
    """``size`` clips of ``num_chunks`` chunks, each a new identity with new speech.

    Clip i of a split is a pure function of (split, seed, i); the ``eval`` split draws from a
    different seed stream, so its identities and sentences are held out from ``train``.
    """

    def __init__(self, resolution: int, num_chunks: int = 2, size: int = 100_000,
                 split: str = "train", seed: int = 0, fps: int = 25, frames_per_chunk: int = 24,
                 sample_rate: int = 16000):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.resolution, self.num_chunks, self.size = resolution, num_chunks, size
        self.split, self.seed, self.fps = split, seed, fps
        self.frames_per_chunk, self.sample_rate = frames_per_chunk, sample_rate

    @classmethod
    def for_config(cls, cfg, **kwargs) -> "SyntheticTalkingHeads":
        return cls(cfg.resolution, fps=cfg.fps, frames_per_chunk=cfg.frames_per_chunk,
                   sample_rate=cfg.speech.sample_rate, **kwargs)

    def __len__(self) -> int:
        return self.size

    def rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([SPLITS[self.split], self.seed, index, stream])

    def identity(self, index: int) -> Identity:
        return Identity.random(self.rng(index, 0))

    def __getitem__(self, index: int) -> Clip:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self.clip(index, self.num_chunks * self.frames_per_chunk)

    def speech(self, index: int, seconds: float) -> np.ndarray:
        """Clip ``index``'s speech alone (the first ``seconds``), without drawing any frame."""
        return synthesize_speech(seconds, self.rng(index, 1), self.sample_rate).audio

    def clip(self, index: int, frames: int, start: int = 0) -> Clip:
        """Frames [start, start + frames) of clip ``index``, any length (eval streams use
        minutes of video); its audio and ground truth cover the same frames."""
        ident = self.identity(index)
        spf, end = self.sample_rate // self.fps, start + frames
        speech = synthesize_speech(end / self.fps, self.rng(index, 1), self.sample_rate)
        opening = per_frame(speech.opening, spf, end)[start:]
        spread = per_frame(speech.spread, spf, end)[start:]
        blinks = blink_track(end, self.fps, self.rng(index, 2))[start:]
        t = np.arange(start, end) / self.fps
        ax, ay, fx, fy, px, py = ident.sway
        dx, dy = ax * np.sin(2 * math.pi * fx * t + px), ay * np.sin(2 * math.pi * fy * t + py)
        video = np.stack([render_frame(ident, self.resolution, dx[n], dy[n], opening[n], spread[n], blinks[n])
                          for n in range(frames)])
        return Clip(reference=render_frame(ident, self.resolution), frames=video,
                    audio=speech.audio[start * spf:end * spf], name=f"synthetic-{self.split}-{self.seed}-{index}",
                    mouth_open=opening, mouth_box=ident.mouth_box(self.resolution))
