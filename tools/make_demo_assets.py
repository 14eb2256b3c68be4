"""Rebuild the demo assets shipped in ``rest_fast/assets/``.

* ``demo_portrait.png``: a 512x512 portrait of a held-out identity of the synthetic dataset
  (drawn procedurally by reference/data/synthetic.py, written with PyAV's png encoder). No photo,
  font or third-party artwork is involved, so it is ours to ship under the project's licence.
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

DEMO_IDENTITY = 1  # a held-out (eval split) identity of the synthetic dataset


def draw_portrait() -> np.ndarray:
    """A held-out identity of the synthetic talking-head dataset (reference/data/synthetic.py)
    at 512x512, mouth closed, drawn as the lively data draws it (its eyes 1.8x the calm size):
    the kind of face the bundled cpu weights were trained on last, but not one they saw.
    Returns uint8 (512, 512, 3)."""
    from reference.data.synthetic import SyntheticTalkingHeads, render_frame
    return render_frame(SyntheticTalkingHeads(SIZE, split="eval", motion="lively").identity(DEMO_IDENTITY), SIZE)


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
