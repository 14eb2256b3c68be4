"""Synthetic talking heads: procedurally drawn faces whose mouths follow synthesised speech.

Nothing to download, deterministic by seed, and the ground truth is known: every clip carries the
mouth opening of each frame, which is what the lip-sync metric of ``rest-fast eval`` compares to.

Speech: phrases of syllables (an optional noise-burst consonant, then a voiced vowel with its
own formants and a falling pitch contour) separated by pauses. The voiced part is additive
synthesis: harmonics of f0 weighted by three formant resonances, so that the Whisper features
carry both loudness and vowel identity.

Face: a portrait on a two-colour background (hair, face, neck and shirt, eyes with irises, brows,
nose, lips) drawn with soft-edged ellipses. It opens its mouth by the speech envelope times the
vowel's jaw opening; the lips spread for /i/, /e/ and round for /o/, /u/. The mouth interior is
very dark on lighter skin, so the opening can be read back from pixels
(:func:`reference.metrics.mouth_opening`).

Two kinds of clip (``motion``). **Calm** (version 1 of this data, the default, what the bundled
weights were trained on): the head sways slowly and blinks every few seconds, so that once the
speech and the identity are known almost nothing is uncertain. **Lively**: everything else a real
talking head does is drawn too, at random, independently of the words, so that knowing the
speech and the identity leaves much of the video uncertain (a model that predicts the mean of
what may happen then blurs it, and the benchmark sees that):

* head motion: translation, roll, turn (yaw) and nod (pitch), each a sum of sinusoids of random
  frequency and phase with amplitude falling as 1/f (a natural, mostly slow spectrum), of a
  random liveliness per clip; plus nods on stressed syllables, of a random strength per clip
  (0 for some speakers): the one motion that speech predicts, and only in part;
* blinks at random times, about 17 a minute (exponential gaps), slow ones (0.4-0.56 s), with
  the eyes drawn 1.8x as large as calm ones (``LIVELY_EYE_SCALE``), so that the cpu preset's VAE
  can carry them;
* brow raises, gaze shifts (saccades to a new point, often back to the centre) and expression
  changes (a smile coming and going), each at random times.

**Restless** is lively plus sudden posture shifts: every 2.5 s on average the head moves, in
0.8 s, to a new place up to ``POSTURE_SHIFT`` from the centre (14 x 10 pixels at 256, where a
lively head drifts 1-2 pixels and 5 at most). The cpu preset's VAE has a latent cell of 32
pixels: a mean of lively latents over what may happen in a chunk decodes as sharp as the truth
(the motion stays inside a cell), while a mean over whether and where a restless head shifts is
blurred, so a sampler that regresses the mean shows as blur as well as a frozen head
(docs/training.md, "What sharpness can tell").

The ground truth knows all of it per frame (``Clip.truth``; calm clips keep the fields that do
not move at zero), deterministic by seed; the ``eval`` split holds out identities and sentences.
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
    accents: np.ndarray      # float32 per sample: the stress (0..1) at each stressed vowel's onset


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average (same length): turns piecewise-constant targets into articulator motion."""
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    return np.convolve(np.pad(x, (width // 2, width - 1 - width // 2), mode="edge"), kernel, "valid")


def synthesize_speech(seconds: float, rng: np.random.Generator, sample_rate: int = 16000,
                      stress: np.random.Generator | None = None) -> Speech:
    """Babble of syllables and pauses, with the per-sample articulation that produced it. With a
    ``stress`` generator, about 3 in 10 vowels are stressed: louder, and marked in ``accents``
    (the lively data nods on them); without, none are (the calm data of version 1). Stress draws
    come from their own generator, so the syllables themselves are the same either way.

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
    accents = np.zeros(n)
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
            if stress is not None and stress.random() < 0.3:   # louder, and a nod may go with it
                voiced[sl] = np.minimum(1.0, voiced[sl] * 1.3)
                accents[min(pos, n - 1)] = voiced[pos] if pos < n else 0.0
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
                  spread[:wanted].astype(np.float32), accents[:wanted].astype(np.float32))


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


# Bounds of the per-frame state (FaceState), so that the regions below hold the features always.
MAX_SHIFT = (0.02, 0.018)        # head translation (x, y), fraction of the side
MAX_ROLL = 0.08                  # radians
FEATURE_SHIFT = (0.025, 0.02)    # inner features at yaw = +-1 (x) and pitch = +-1 (y)
# Lively eyes are drawn this much wider and taller than calm ones (brows stay where they were):
# at the cpu preset's 256 pixels a calm eye is about 20 x 12 pixels, its white a sliver beside
# the iris, and the 32 x 32-pixel latent cell of that VAE kept its eyelids at a correlation of
# 0.10; at 1.8x, 0.48 before any training on them (docs/training.md, "What the cpu-preset VAE
# can show").
LIVELY_EYE_SCALE = 1.8
LIVELY_BLINK_FRAMES = (10, 14)   # a slow blink (0.4-0.56 s), so that a latent frame of 8 holds it
POSTURE_SHIFT = (0.055, 0.04)    # restless data: a posture shift's reach (x, y), fraction of the side


@dataclass
class FaceState:
    """What changes from frame to frame; all zero is the neutral portrait."""
    dx: float = 0.0          # head translation, fraction of the side (|dx| <= MAX_SHIFT[0] + POSTURE_SHIFT[0])
    dy: float = 0.0
    roll: float = 0.0        # in-plane head rotation, radians, about the neck
    yaw: float = 0.0         # turn, -1 .. 1: the inner features shift sideways, the far eye narrows
    pitch: float = 0.0       # nod, -1 .. 1: the inner features shift down (positive) or up
    opening: float = 0.0     # mouth, 0 shut .. 1 wide open
    spread: float = 0.5      # lips, 0 round .. 1 spread
    blink: float = 0.0       # eyelids, 0 open .. 1 shut
    brow: float = 0.0        # brows, 0 at rest .. 1 raised
    gaze_x: float = 0.0      # irises, -1 .. 1 within the eye
    gaze_y: float = 0.0
    smile: float = 0.0       # 0 .. 1: a wider mouth, raised a little


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
    sway: np.ndarray           # calm data: (amp_x, amp_y, freq_x, freq_y, phase_x, phase_y)
    lively: bool = False       # whose motion bounds the feature boxes below
    posture: tuple = (0.0, 0.0)  # how far posture shifts carry the head (x, y), beyond MAX_SHIFT
    eye_scale: float = 1.0     # eye_w and eye_h over those drawn for the calm data

    @classmethod
    def random(cls, rng: np.random.Generator, lively: bool = False, posture: tuple = (0.0, 0.0)) -> "Identity":
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
            lively=lively, posture=posture,
        )._with_eye_scale(LIVELY_EYE_SCALE if lively else 1.0)

    def _with_eye_scale(self, scale: float) -> "Identity":
        """The same identity with its eyes drawn ``scale`` times as large (drawn after every
        random number, so that the rest of the identity is the calm one's)."""
        self.eye_w, self.eye_h, self.eye_scale = self.eye_w * scale, self.eye_h * scale, scale
        return self

    def _box(self, cx: float, cy: float, half_w: float, up: float, down: float, size: int):
        """(top, bottom, left, right) in pixels around a feature at (cx, cy), grown by how far
        the head's motion can carry it."""
        if self.lively:
            reach = abs(cy - self.face_y - self.face_h * 0.9) * MAX_ROLL   # roll about the neck
            mx = MAX_SHIFT[0] + self.posture[0] + FEATURE_SHIFT[0] + reach
            my = MAX_SHIFT[1] + self.posture[1] + FEATURE_SHIFT[1] + reach
        else:   # the calm head only sways
            mx, my = self.sway[0], self.sway[1]
        half_w += mx
        # Clipped to the frame: a box past the top or left edge would wrap when sliced.
        return (max(0, int((cy - up - my) * size)), min(size, int(math.ceil((cy + down + my) * size))),
                max(0, int((cx - half_w) * size)), min(size, int(math.ceil((cx + half_w) * size))))

    def mouth_box(self, size: int) -> tuple[int, int, int, int]:
        """A box that holds the mouth at any opening, smile and head pose (pixels)."""
        up = 0.035 if self.lively else 0.03           # room for a smile
        return self._box(self.face_x, self.face_y + self.mouth_dy, self.mouth_w * 1.35, up, 0.095, size)

    def eye_boxes(self, size: int) -> tuple[tuple[int, int, int, int], ...]:
        """Boxes that hold each eye (not its brow at rest) at any gaze and head pose (pixels)."""
        return tuple(self._box(self.face_x + side * self.eye_dx, self.face_y + self.eye_dy,
                               self.eye_w * 1.15, self.eye_h * 1.1, self.eye_h * 1.1, size)
                     for side in (-1, 1))

    def head_box(self, size: int) -> tuple[int, int, int, int]:
        """The face and hair at any pose: where head motion shows (pixels)."""
        half_w = self.face_w * self.hair_volume * (1.5 if self.long_hair else 1.05)
        return self._box(self.face_x, self.face_y, half_w, self.face_h * 1.2, self.face_h * 1.05, size)


def _paint_ellipse(img: np.ndarray, color: np.ndarray, cx: float, cy: float, rx: float, ry: float,
                   edge: float = 1.0, angle: float = 0.0) -> None:
    """Composite a soft-edged ellipse (pixel units), rotated by ``angle`` radians, onto img in
    place, inside its bounding box."""
    if rx < 0.25 or ry < 0.25:
        return
    h, w, _ = img.shape
    r = max(rx, ry) if angle else None
    ex, ey = (r, r) if angle else (rx, ry)
    y0, y1 = max(int(cy - ey - 2), 0), min(int(cy + ey + 3), h)
    x0, x1 = max(int(cx - ex - 2), 0), min(int(cx + ex + 3), w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    u, v = xx - cx, yy - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        u, v = c * u + s * v, -s * u + c * v
    dist = (np.sqrt((u / rx) ** 2 + (v / ry) ** 2) - 1.0) * min(rx, ry)
    alpha = np.clip(0.5 - dist / edge, 0.0, 1.0)[..., None]
    region = img[y0:y1, x0:x1]
    region += alpha * (color - region)


def render_frame(ident: Identity, size: int, state: FaceState | None = None) -> np.ndarray:
    """One frame, uint8 (size, size, 3): the identity in ``state`` (None: the neutral portrait)."""
    st = state or FaceState()
    s = float(size)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    img = np.broadcast_to(ident.bg_top + ramp * (ident.bg_bottom - ident.bg_top), (size, size, 3)).copy()
    fx, fy = (ident.face_x + st.dx) * s, (ident.face_y + st.dy) * s
    fw, fh = ident.face_w * s, ident.face_h * s
    pivot_x, pivot_y = fx, fy + fh * 0.9                      # the head rolls about the neck
    cos_r, sin_r = math.cos(st.roll), math.sin(st.roll)

    def at(x: float, y: float) -> tuple[float, float]:
        """A point of the upright head, rolled about the neck."""
        if not st.roll:   # exactly upright (the calm data's frames, bit for bit)
            return x, y
        u, v = x - pivot_x, y - pivot_y
        return pivot_x + cos_r * u - sin_r * v, pivot_y + sin_r * u + cos_r * v

    def paint(color, x, y, rx, ry, edge=1.0):
        px, py = at(x, y)
        _paint_ellipse(img, color, px, py, rx, ry, edge, st.roll)

    # Shoulders and neck move less than the head and do not roll with it.
    _paint_ellipse(img, ident.shirt, ident.face_x * s + st.dx * s * 0.3, s * 1.02, s * 0.42, s * 0.2, 2)
    _paint_ellipse(img, ident.skin * 0.9, fx, fy + fh * 0.9, fw * 0.45, fh * 0.5)
    # A turn moves the inner features one way and the hair a little the other; a nod moves them
    # up or down inside the face outline.
    ix, iy = st.yaw * FEATURE_SHIFT[0] * s, st.pitch * FEATURE_SHIFT[1] * s
    paint(ident.hair, fx - ix * 0.4, fy - fh * 0.12, fw * ident.hair_volume, fh * ident.hair_volume * 0.95)
    if ident.long_hair:
        for side in (-1, 1):
            paint(ident.hair, fx + side * fw * 0.85 - ix * 0.4, fy + fh * 0.35, fw * 0.32, fh * 0.75)
    paint(ident.skin, fx, fy + fh * 0.05, fw, fh)
    paint(ident.hair, fx - ix * 0.3, fy - fh * 0.78 + iy * 0.3, fw * 0.85, fh * 0.28)  # fringe
    for side in (-1, 1):
        ex, ey = fx + side * ident.eye_dx * s + ix, fy + ident.eye_dy * s + iy
        near = 1.0 + 0.15 * side * st.yaw                     # the eye turned away narrows
        ew, eh = ident.eye_w * s * near, ident.eye_h * s
        bh = eh / ident.eye_scale                             # the brow keeps the calm eye's place
        paint(ident.hair * 0.8, ex, ey - bh * (2.2 + 1.4 * st.brow) - (eh - bh), ew * 1.2, bh * 0.35)
        open_h = eh * (1.0 - st.blink)
        if open_h > 0.6:
            r = min(eh * 0.8, open_h)
            gx, gy = st.gaze_x * (ew - eh * 0.8) * 0.8, st.gaze_y * max(open_h - r, 0.0)
            paint(np.array([245.0, 245.0, 240.0]), ex, ey, ew, open_h)
            paint(ident.iris, ex + gx, ey + gy, eh * 0.8, r)
        else:  # a closed lid
            paint(ident.skin * 0.75, ex, ey, ew, 0.8)
    paint(ident.skin * 0.85, fx + ix, fy + 0.07 * s + iy, 0.018 * s, 0.028 * s)  # nose
    mx, my = fx + ix, fy + ident.mouth_dy * s + iy - st.smile * 0.006 * s
    mw = ident.mouth_w * s * (0.85 + 0.3 * st.spread + 0.25 * st.smile)
    gap = st.opening * 0.07 * s
    paint(ident.lips, mx, my + gap * 0.5, mw, 0.012 * s + gap * 0.6)
    paint(_MOUTH_INSIDE, mx, my + gap * 0.5, mw * 0.8, gap * 0.5)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------- what varies by itself

def _pink_motion(t: np.ndarray, rng: np.random.Generator, parts: int = 6, f_lo: float = 0.05,
                 f_hi: float = 1.5) -> np.ndarray:
    """A smooth random signal of std ~1: ``parts`` sinusoids of random frequency in [f_lo, f_hi]
    Hz and phase, amplitudes falling as 1/f, as head motion does (mostly slow drift, some
    quicker moves). A function of t, so any window of a clip is the same window of a longer one."""
    freqs = np.exp(rng.uniform(math.log(f_lo), math.log(f_hi), parts))
    phases = rng.uniform(0, 2 * math.pi, parts)
    amps = 1.0 / freqs
    x = (amps[:, None] * np.sin(2 * math.pi * freqs[:, None] * t[None] + phases[:, None])).sum(0)
    return x / math.sqrt(0.5 * (amps ** 2).sum())


def _events(frames: int, fps: int, rng: np.random.Generator, mean_gap_s: float, first_s: float = 0.5,
            min_gap_s: float = 0.4):
    """Start frames of events at random times: exponential gaps of mean ``mean_gap_s`` seconds
    (at least ``min_gap_s`` apart), drawn in order so that they are prefix-stable. What each
    event is like comes from another generator, drawn event by event: drawn from this one after
    the times, it would depend on how many times a clip's length asks for (lively data version
    2 did that, and its 30 s truth was not the first 30 s of its 60 s truth)."""
    out, pos = [], first_s * rng.uniform(0.2, 4.0) * fps
    while pos < frames:
        out.append(int(pos))
        pos += max(min_gap_s, rng.exponential(mean_gap_s)) * fps
    return out


def calm_blink_track(frames: int, fps: int, rng: np.random.Generator) -> np.ndarray:
    """The calm data's eyelids (version 1): a 5-frame blink every 2-6 s."""
    out = np.zeros(frames, dtype=np.float32)
    pos = int(rng.uniform(0.5, 3.0) * fps)
    shape = np.array([0.5, 1.0, 1.0, 0.6, 0.2])
    while pos < frames:
        out[pos:pos + 5] = shape[: len(out[pos:pos + 5])]
        pos += int(rng.uniform(2.0, 6.0) * fps)
    return out


def blink_track(frames: int, fps: int, rng: np.random.Generator,
                shapes: np.random.Generator) -> np.ndarray:
    """Eyelid closure per frame: blinks at random times (``rng``), about 17 a minute, each
    ``LIVELY_BLINK_FRAMES`` long (``shapes``, drawn blink by blink: prefix-stable)."""
    out = np.zeros(frames, dtype=np.float32)
    # Each blink ends, and the eyes stay open a while, before the next one starts.
    for start in _events(frames, fps, rng, mean_gap_s=3.5, min_gap_s=1.0):
        length = int(shapes.integers(LIVELY_BLINK_FRAMES[0], LIVELY_BLINK_FRAMES[1] + 1))
        shape = np.sin(np.linspace(0, math.pi, length + 2)[1:-1]) ** 0.6   # closes fast, opens slower
        shape = np.minimum(1.0, shape * 1.15)
        end = min(frames, start + length)
        out[start:end] = np.maximum(out[start:end], shape[:end - start])
    return out


def _bumps(frames: int, fps: int, rng: np.random.Generator, shapes: np.random.Generator,
           mean_gap_s: float, seconds: tuple[float, float], amount: tuple[float, float]) -> np.ndarray:
    """Smooth raised-cosine bumps at random times (``rng``), of random length and height
    (``shapes``, drawn bump by bump) (brow raises)."""
    out = np.zeros(frames, dtype=np.float32)
    for start in _events(frames, fps, rng, mean_gap_s):
        length = max(3, int(shapes.uniform(*seconds) * fps))
        height = shapes.uniform(*amount)
        shape = height * 0.5 * (1 - np.cos(np.linspace(0, 2 * math.pi, length)))
        end = min(frames, start + length)
        out[start:end] = np.maximum(out[start:end], shape[:end - start])
    return out


def _held_targets(frames: int, fps: int, rng: np.random.Generator, mean_gap_s: float, draw,
                  ease_frames: int, shape: tuple = ()) -> np.ndarray:
    """A value of ``shape`` held between random times and eased to the next over ``ease_frames``
    (gaze saccades, expression changes), starting at zero; ``draw()`` gives each new value."""
    starts = _events(frames, fps, rng, mean_gap_s, first_s=1.0)
    values = [draw() for _ in starts]
    out = np.zeros((frames,) + shape, dtype=np.float32)
    current = np.zeros(shape, dtype=np.float32)
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else frames
        ease = np.clip((np.arange(end - start) + 1) / ease_frames, 0, 1)
        ease = ease.reshape((-1,) + (1,) * current.ndim)
        out[start:end] = current + ease * (np.asarray(values[i]) - current)
        current = np.asarray(values[i], dtype=np.float32)
    return out


def nod_response(accents: np.ndarray, fps: int) -> np.ndarray:
    """Per-frame stress accents -> a nod of each (down and back in ~0.4 s)."""
    t = np.arange(int(0.5 * fps)) / fps
    kernel = np.sin(math.pi * np.clip(t / 0.4, 0, 1)) * (t < 0.4)
    return np.convolve(accents, kernel)[: len(accents)].astype(np.float32)


# ---------------------------------------------------------------------------------- dataset

SPLITS = {"train": 0, "eval": 1}
MOTIONS = ("calm", "lively", "restless")
# What a clip of each kind looks like changes with these numbers; a cache of encoded clips keys on
# them (lively 2: eyes 1.8x, blinks of 10-14 frames; lively 3 and restless 2: each blink's length
# and each brow raise's length and height drawn from a stream of their own, event by event, so
# that every field of the truth is prefix-stable; the event times are version 2's).
DATA_VERSIONS = {"calm": 1, "lively": 3, "restless": 2}
LIVELY_KINDS = ("lively", "restless")   # restless clips are lively ones plus posture shifts


class SyntheticTalkingHeads:
    """``size`` clips of ``num_chunks`` chunks, each a new identity with new speech.

    Clip i of a split is a pure function of (split, seed, i, motion); the ``eval`` split draws
    from a different seed stream, so its identities and sentences are held out from ``train``.

    ``motion``: ``"lively"`` draws everything the module docstring lists (head motion, blinks,
    brows, gaze, smiles, nods on stress), ``"restless"`` the same plus sudden posture shifts;
    ``"calm"`` (the default, which the first bundled weights knew) is version 1 of this data,
    bit for bit: a slow sway, regular blinks and the mouth, nothing else uncertain. All three
    share their identities and sentences (lively ones stress some syllables).
    """

    def __init__(self, resolution: int, num_chunks: int = 2, size: int = 100_000,
                 split: str = "train", seed: int = 0, fps: int = 25, frames_per_chunk: int = 24,
                 sample_rate: int = 16000, motion: str = "calm"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
        self.motion, self.version = motion, DATA_VERSIONS[motion]
        self.lively = motion in LIVELY_KINDS
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
        return Identity.random(self.rng(index, 0), lively=self.lively,
                               posture=POSTURE_SHIFT if self.motion == "restless" else (0.0, 0.0))

    def __getitem__(self, index: int) -> Clip:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self.clip(index, self.num_chunks * self.frames_per_chunk)

    def _speech(self, index: int, seconds: float) -> Speech:
        stress = self.rng(index, 7) if self.lively else None
        return synthesize_speech(seconds, self.rng(index, 1), self.sample_rate, stress)

    def speech(self, index: int, seconds: float) -> np.ndarray:
        """Clip ``index``'s speech alone (the first ``seconds``), without drawing any frame."""
        return self._speech(index, seconds).audio

    def states(self, index: int, frames: int, speech: Speech | None = None) -> dict[str, np.ndarray]:
        """Clip ``index``'s per-frame ground truth for its first ``frames`` frames: every field of
        FaceState, plus ``nod`` (the part of pitch that follows stressed syllables)."""
        fps, spf = self.fps, self.sample_rate // self.fps
        if speech is None:
            speech = self._speech(index, frames / fps)
        t = np.arange(frames) / fps
        spread, opening = per_frame(speech.spread, spf, frames), per_frame(speech.opening, spf, frames)
        if self.motion == "calm":
            return self._calm_states(index, t, opening, spread)
        motion = self.rng(index, 3)
        lively = motion.uniform(0.3, 1.0)                 # how much this speaker moves
        nod_strength = motion.uniform(0.0, 1.0) ** 2      # how much of it follows the stress

        def track(scale: float, bound: float) -> np.ndarray:
            return np.clip(scale * lively * _pink_motion(t, motion), -bound, bound).astype(np.float32)
        dx, dy = track(0.45 * MAX_SHIFT[0], MAX_SHIFT[0]), track(0.45 * MAX_SHIFT[1], MAX_SHIFT[1])
        if self.motion == "restless":   # drawn from streams of their own: the lively rest stays
            posture = _held_targets(frames, fps, self.rng(index, 8), 2.5, ease_frames=int(0.8 * fps), shape=(2,),
                                    draw=lambda g=self.rng(index, 18): g.uniform(-1, 1, 2) * np.array(POSTURE_SHIFT))
            dx, dy = dx + posture[:, 0], dy + posture[:, 1]
        roll, yaw = track(0.45 * MAX_ROLL, MAX_ROLL), track(0.45, 1.0)
        accents = np.zeros(frames, np.float32)
        onsets = np.nonzero(speech.accents[: frames * spf])[0]
        np.maximum.at(accents, np.minimum(onsets // spf, frames - 1), speech.accents[onsets])
        nod = 0.8 * nod_strength * nod_response(accents, fps)
        pitch = np.clip(track(0.35, 1.0) + nod, -1.0, 1.0)
        gaze = _held_targets(frames, fps, self.rng(index, 5), 2.0, ease_frames=2, shape=(2,),
                             draw=lambda g=self.rng(index, 15): (0.0, 0.0) if g.random() < 0.4
                             else (g.uniform(-1, 1), g.uniform(-0.6, 0.6)))
        smile = _held_targets(frames, fps, self.rng(index, 6), 6.0, ease_frames=int(0.4 * fps),
                              draw=lambda g=self.rng(index, 16): 0.0 if g.random() < 0.5 else g.uniform(0.3, 1.0))
        return {"dx": dx, "dy": dy, "roll": roll, "yaw": yaw, "pitch": pitch.astype(np.float32),
                "nod": nod, "opening": opening, "spread": spread,
                "blink": blink_track(frames, fps, self.rng(index, 2), self.rng(index, 12)),
                "brow": _bumps(frames, fps, self.rng(index, 4), self.rng(index, 14), 6.0, (0.4, 1.2), (0.4, 1.0)),
                "gaze_x": gaze[:, 0], "gaze_y": gaze[:, 1], "smile": smile}

    def _calm_states(self, index: int, t: np.ndarray, opening: np.ndarray, spread: np.ndarray):
        ax, ay, fx, fy, px, py = self.identity(index).sway
        zero = np.zeros(len(t), np.float32)
        truth = {f: zero for f in FaceState.__dataclass_fields__}
        truth.update(dx=ax * np.sin(2 * math.pi * fx * t + px), dy=ay * np.sin(2 * math.pi * fy * t + py),
                     opening=opening, spread=spread, nod=zero,
                     blink=calm_blink_track(len(t), self.fps, self.rng(index, 2)))
        return truth

    def clip(self, index: int, frames: int, start: int = 0) -> Clip:
        """Frames [start, start + frames) of clip ``index``, any length (eval streams use
        minutes of video); its audio and ground truth cover the same frames."""
        ident = self.identity(index)
        spf, end = self.sample_rate // self.fps, start + frames
        speech = self._speech(index, end / self.fps)
        truth = {k: v[start:] for k, v in self.states(index, end, speech).items()}
        # Per-frame values as numpy scalars (float32 ones render in float32, as version 1 did);
        # a field that never moves keeps FaceState's plain 0.0, which leaves the arithmetic alone.
        fields = [f for f in FaceState.__dataclass_fields__ if truth[f].any()]
        video = np.stack([render_frame(ident, self.resolution, FaceState(**{f: truth[f][n] for f in fields}))
                          for n in range(frames)])
        r = self.resolution
        return Clip(reference=render_frame(ident, r), frames=video,
                    audio=speech.audio[start * spf:end * spf], name=f"synthetic-{self.split}-{self.seed}-{index}",
                    mouth_open=truth["opening"], mouth_box=ident.mouth_box(r), eye_boxes=ident.eye_boxes(r),
                    head_box=ident.head_box(r), truth=truth,
                    posture_reach=tuple(math.ceil(p * r) for p in ident.posture))
