"""Rebuild the demo assets shipped in ``rest_fast/assets/``.

* ``demo_portrait.png``: a 512x512 RGB cartoon portrait, drawn procedurally below with numpy
  (anti-aliased signed-distance shapes) and written with PyAV's png encoder. No photo, font or
  third-party artwork is involved, so it is ours to ship under the project's licence.
* ``demo_speech.wav``: about 5.8 s of 16 kHz mono PCM16 speech synthesised by espeak-ng
  (``espeak-ng -v en-us -s 165 -w out.wav TEXT``), resampled with PyAV, trimmed of silence and
  peak-normalised. espeak-ng is GPL-3.0, but the licence covers the program, not the audio it
  produces, so the wav is free to ship. If espeak-ng is not installed (``apt-get install -y
  espeak-ng``) a numpy formant synthesiser makes a speech-like voiced signal instead.

Run from the repository root: ``python3 tools/make_demo_assets.py`` (needs numpy and av).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so `reference.media` imports without installing the package

from reference.media import load_audio  # noqa: E402

ASSETS = ROOT / "rest_fast" / "assets"
SIZE = 512
SAMPLE_RATE = 16000
TEXT = "Hello! I am a talking head from rest fast. I turn a portrait and a voice into video."


# -------------------------------------------------------------------------------- portrait

Y, X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5  # pixel centres


def ellipse(cx, cy, rx, ry):
    """Approximate signed distance (pixels, negative inside) to an axis-aligned ellipse."""
    px, py = (X - cx) / rx, (Y - cy) / ry
    k0 = np.sqrt(px ** 2 + py ** 2)
    k1 = np.sqrt((px / rx) ** 2 + (py / ry) ** 2) + 1e-6
    return k0 * (k0 - 1.0) / k1


def stroke(points, width):
    """Signed distance to a polyline drawn with round caps ``width`` pixels thick."""
    d = np.full(X.shape, np.inf, np.float32)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((X - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        d = np.minimum(d, np.hypot(X - x0 - t * dx, Y - y0 - t * dy))
    return d - width / 2


def curve(x0, x1, y_of_x, n=24):
    """Points of the curve y = y_of_x(x) for x from x0 to x1, for :func:`stroke`."""
    xs = np.linspace(x0, x1, n)
    return list(zip(xs, y_of_x(xs)))


def coverage(d, soft=1.0):
    """Anti-aliased fill: 1 inside, 0 outside, a ramp ``soft`` pixels wide across the edge."""
    return np.clip(0.5 - d / soft, 0.0, 1.0)[..., None]


def paint(img, d, color, alpha=1.0, soft=1.0):
    a = coverage(d, soft) * alpha
    img[:] = img * (1 - a) + np.asarray(color, np.float32) / 255 * a


def draw_portrait() -> np.ndarray:
    """A friendly front-facing cartoon head; returns uint8 (512, 512, 3)."""
    top, bottom = np.array([214, 232, 240]), np.array([174, 202, 222])  # soft blue-grey backdrop
    img = (top + (bottom - top) * (Y[..., None] / SIZE)).astype(np.float32) / 255
    skin, skin_shadow = (240, 196, 160), (214, 160, 126)
    hair = (92, 58, 38)

    paint(img, ellipse(256, 262, 150, 178), hair)  # hair behind the head, framing the face
    paint(img, np.maximum(np.abs(X - 256) - 46, np.abs(Y - 390) - 70), skin_shadow)  # neck
    paint(img, ellipse(256, 596, 210, 170), (70, 110, 160))  # shoulders / shirt over the neck
    paint(img, stroke(curve(212, 300, lambda x: 430 + 14 * np.cos((x - 256) / 30)), 5),
          (96, 136, 186))  # collar
    for side in (-1, 1):  # ears
        paint(img, ellipse(256 + side * 118, 250, 20, 34), skin_shadow)
        paint(img, ellipse(256 + side * 116, 250, 12, 24), skin)
    face = ellipse(256, 238, 120, 150)
    paint(img, face, skin)
    # Volume: darken towards the rim of the face a little.
    rim = np.clip((face + 40) / 40, 0, 1) * (face < 0)
    img[:] = img * (1 - 0.12 * rim[..., None])
    # Fringe: the top of the face, below a wavy, side-swept hairline.
    hairline = 150 - 0.18 * (X - 256) + 10 * np.sin((X - 256) / 22)
    paint(img, np.maximum(face - 3, Y - hairline), hair, soft=1.5)  # -3: no skin halo at the rim

    for side in (-1, 1):
        ex = 256 + side * 50
        paint(img, np.hypot(X - ex, Y - 300) - 22, (236, 140, 140), alpha=0.35, soft=18)  # blush
        paint(img, stroke(curve(ex - 28, ex + 28, lambda x: 196 - 10 * np.cos((x - ex) / 30)), 7),
              (70, 44, 30))  # eyebrow
        paint(img, ellipse(ex, 238, 26, 17), (252, 252, 250))  # white of the eye
        paint(img, np.maximum(np.hypot(X - ex, Y - 238) - 13, ellipse(ex, 238, 26, 17)),
              (96, 64, 40))  # iris, clipped to the eye
        paint(img, np.hypot(X - ex, Y - 238) - 6, (20, 14, 12))  # pupil
        paint(img, np.hypot(X - ex + 4, Y - 233) - 3, (255, 255, 255))  # catch-light
        paint(img, stroke(curve(ex - 28, ex + 28, lambda x: 238 - 17 * np.sqrt(
            np.clip(1 - ((x - ex) / 27) ** 2, 0, 1))), 3.5), (50, 32, 24))  # upper eyelid line

    paint(img, stroke(curve(242, 270, lambda x: 300 + 6 * np.cos((x - 256) / 9)), 4),
          skin_shadow)  # nose tip
    paint(img, ellipse(256, 352, 36, 11), (204, 104, 104))  # lips, closed: neutral mouth
    paint(img, stroke(curve(218, 294, lambda x: 351 + 3 * np.cos((x - 256) / 24)), 3),
          (136, 60, 60))  # line between the lips, corners slightly up
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> None:
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "rgb24"
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)


# ---------------------------------------------------------------------------------- speech

def espeak_speech() -> np.ndarray | None:
    """TEXT spoken by espeak-ng at 16 kHz, or None when espeak-ng is not installed."""
    if shutil.which("espeak-ng") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(out), TEXT], check=True)
        return load_audio(out, SAMPLE_RATE)


def formant_speech(seconds: float = 5.0) -> np.ndarray:
    """Fallback: vowel-like syllables from a gliding-pitch harmonic source shaped by formants."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    vowels = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010],
                       [570, 840, 2410], [300, 870, 2240]], np.float32)  # a e i o u (F1-F3, Hz)
    syllable = (t * 4.2).astype(int)  # ~4 syllables a second, as in conversational speech
    formants = vowels[rng.integers(0, 5, syllable.max() + 1)][syllable]
    f0 = 125 + 25 * np.sin(2 * np.pi * 0.4 * t) - 10 * t / seconds  # slowly falling intonation
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = np.zeros_like(t)
    for k in range(1, 30):  # each harmonic weighted by its distance to the three formants
        gain = sum(1 / (1 + ((k * f0 - formants[:, i]) / 90) ** 2) for i in range(3))
        voice += gain / k * np.sin(k * phase)
    gate = np.clip(np.sin(np.pi * (t * 4.2 % 1)) * 1.6, 0, 1) ** 2  # syllable on/offsets
    pause = (t % 2.2) > 1.9  # short breaths between phrases
    return (voice * gate * ~pause + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def tidy(audio: np.ndarray, pad: float = 0.2) -> np.ndarray:
    """Trim leading/trailing silence to ``pad`` seconds and peak-normalise to -1 dBFS."""
    loud = np.nonzero(np.abs(audio) > 0.02 * np.abs(audio).max())[0]
    n = int(pad * SAMPLE_RATE)
    audio = audio[max(0, loud[0] - n):loud[-1] + n]
    return audio / np.abs(audio).max() * 10 ** (-1 / 20)


def write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = np.clip(np.rint(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(pcm.tobytes())


def main() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    write_png(ASSETS / "demo_portrait.png", draw_portrait())
    speech = espeak_speech()
    source = "espeak-ng" if speech is not None else "numpy formant synthesiser"
    write_wav(ASSETS / "demo_speech.wav", tidy(formant_speech() if speech is None else speech))
    for name in ("demo_portrait.png", "demo_speech.wav"):
        print(f"{ASSETS / name}: {(ASSETS / name).stat().st_size} bytes")
    print(f"speech made with the {source}")


if __name__ == "__main__":
    main()
