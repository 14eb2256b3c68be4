"""The README's opening picture, docs/images/demo.png: frames of ``rest-fast demo``'s output.

The bundled portrait (rest_fast/assets/demo_portrait.png) and speech (demo_speech.wav) go through
the bundled cpu-preset weights (rest_fast/assets/rest-cpu) exactly as ``rest-fast demo`` sends
them (its defaults: fast backend, seed 0, the checkpoint's sampler); the picture shows the
portrait, then frames where the mouth is shut and open (read from pixels in the demo face's mouth
box) and where the head has gone furthest sideways (``metrics.head_offsets`` against the
portrait, steadied; a lively head sways a few pixels), each at least half a second from the others. The PNG is stored with a
256-colour palette (Pillow, which matplotlib brings), which keeps it near 150 KB.

Run from the repository root: ``python3 tools/make_readme_picture.py`` (needs the ``plots``
extra; about a minute on a laptop CPU). ``--out`` writes elsewhere.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reference import metrics  # noqa: E402
from reference.data.synthetic import SyntheticTalkingHeads  # noqa: E402
from reference.media import write_atomic  # noqa: E402
from reference.report import DPI, require_matplotlib  # noqa: E402

DEMO_IDENTITY = 1    # tools/make_demo_assets.py drew the portrait from this held-out identity
APART_SECONDS = 0.5  # no two frames shown closer than this
GAP, TOP, BOTTOM = 6, 40, 8   # pixels between tiles, above them (labels) and below


def demo_frames() -> tuple[np.ndarray, np.ndarray, int]:
    """(the portrait at the model's size, ``rest-fast demo``'s frames, fps)."""
    from reference.media import load_audio, load_image
    from rest_fast.cli import build_parser, chunk_frames, demo_asset, pick_device, prepare_model
    args = build_parser().parse_args(["demo"])   # the demo's defaults, nothing changed
    model = prepare_model(args, pick_device(args.device))
    cfg = model.cfg
    image = load_image(demo_asset("demo_portrait.png"), cfg.resolution)
    audio = load_audio(demo_asset("demo_speech.wav"), cfg.speech.sample_rate)
    return image, np.concatenate(list(chunk_frames(model, image, audio, args))), cfg.fps


def pick_moments(image: np.ndarray, frames: np.ndarray, fps: int) -> list[tuple[int, str]]:
    """Frames to show, in time order: the mouth shut, open twice, the head furthest sideways."""
    size = frames.shape[1]
    identity = SyntheticTalkingHeads(size, split="eval", motion="lively").identity(DEMO_IDENTITY)
    box = identity.mouth_box(size)
    opening = metrics.mouth_opening(frames, box)
    # Sideways, in pixels (a lively head sways a few); ties go to the mouth most open.
    sideways = metrics.steady_offsets(metrics.head_offsets(frames, image, max_shift=size // 16))[:, 1]
    chosen: list[tuple[int, str]] = []

    def take(score: np.ndarray, label: str) -> None:
        score = score.astype(np.float64).copy()
        for f, _ in chosen:   # keep the moments apart
            score[max(0, f - round(APART_SECONDS * fps)):f + round(APART_SECONDS * fps) + 1] = -np.inf
        chosen.append((int(np.argmax(score)), label))
    take(-opening - np.abs(sideways) / size, "mouth shut")   # shut, and the head near its rest
    take(opening, "mouth open")
    take(opening, "mouth open")
    take(np.abs(sideways) + opening, "head moved")
    f, _ = chosen[-1]
    chosen[-1] = (f, f"head {abs(int(sideways[f]))} px {'right' if sideways[f] > 0 else 'left'}")
    return sorted(chosen)


def draw(path: Path, image: np.ndarray, frames: np.ndarray, moments: list[tuple[int, str]], fps: int) -> None:
    """The portrait, then the chosen frames, pixel for pixel, each labelled with its time."""
    Figure = require_matplotlib()
    size = image.shape[0]
    tiles = [(image, "the portrait (input)")] + [(frames[f], f"{f / fps:.1f} s: {label}") for f, label in moments]
    width, height = len(tiles) * (size + GAP) - GAP, TOP + size + BOTTOM
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    for n, (pixels, label) in enumerate(tiles):
        x = n * (size + GAP)
        fig.figimage(pixels, xo=x, yo=BOTTOM, origin="upper")
        fig.text((x + size / 2) / width, 1 - (TOP - 6) / height, label, ha="center", va="bottom", fontsize=10,
                 weight="bold" if n == 0 else "normal")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image
    canvas = FigureCanvasAgg(fig)   # the rendered pixels, then a palette PNG of them
    canvas.draw()
    rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    write_atomic(path, lambda f: rgb.quantize(256, method=Image.Quantize.MEDIANCUT).save(f, format="png",
                                                                                          optimize=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "demo.png"))
    parser.add_argument("--frames", help="reuse (or first save) the demo's frames in this .npz")
    frames_cache = parser.parse_args().frames
    if frames_cache and Path(frames_cache).is_file():
        with np.load(frames_cache) as saved:
            image, frames, fps = saved["image"], saved["frames"], int(saved["fps"])
    else:
        image, frames, fps = demo_frames()
        if frames_cache:
            np.savez_compressed(frames_cache, image=image, frames=frames, fps=fps)
    out = Path(parser.parse_args().out)
    moments = pick_moments(image, frames, fps)
    draw(out, image, frames, moments, fps)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB): frames "
          + ", ".join(f"{f} ({label})" for f, label in moments))


if __name__ == "__main__":
    main()
