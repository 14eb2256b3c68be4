"""What can a sharpness figure tell through a checkpoint's VAE? Reconstructions of one held-out
lively clip, each scored by ``reference.metrics.sharpness`` over the true clip's, at two scales:

    python3 tools/sharpness_probe.py [CHECKPOINT] [--frames 193] [--data lively|restless]
    python3 tools/sharpness_probe.py --kept DIR [--window 2]
    python3 tools/sharpness_probe.py [CHECKPOINT] --data restless --by-place [--frames 1501]
    python3 tools/sharpness_probe.py --kept DIR --by-place

Rows: the true video through the VAE (full decoder, and the light one where the checkpoint has
it); the same with every latent frame after the first replaced by the clip's mean latent (what a
regressor of the mean in latent space would hand the decoder) and by a 1 s moving average of the
latents; the reconstruction averaged over 5 frames in pixels (flicker removed); and the truth's
own per-pixel mean over time (what a regressor of the mean in pixels renders). docs/training.md,
"What sharpness can tell", has the numbers that led to ``SHARPNESS_SCALE``, and those of restless
clips, whose posture shifts are wide enough for the mean latent to blur.

``--kept DIR`` scores generated video instead: the frames ``rest-fast eval --save-frames DIR``
kept, by a chunk's place in a window of ``--window`` chunks. The teacher's offline evaluation
(``--mode teacher``) starts every window of 2 chunks from the portrait alone, so its first chunk
draws a head free to stand anywhere and its second one must continue the first; for a streaming
student every chunk continues one (``--window 1`` is the plain figure).

``--by-place`` (restless clips) splits sharpness instead by how far the head stands from the
portrait's place (``reference.evaluate.head_offsets``, the steadied search the benchmark reads
the eyes with), each band over the whole true clip's sharpness: the VAE's reconstruction of the
true clip, or with ``--kept`` the generated video, by where *its* head stands. A sampler that
freezes the head at the portrait's place and one that follows the shifts are then compared at
equal places.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference.checkpoint import load_checkpoint  # noqa: E402
from reference.data.synthetic import SyntheticTalkingHeads  # noqa: E402
from reference.evaluate import head_offsets, kept_run, vae_reconstruct  # noqa: E402
from reference.metrics import sharpness  # noqa: E402
from reference.pipeline import video_tensor_to_uint8  # noqa: E402

SCALES = (1, 2)
PLACE_BANDS = (0, 3, 6, 10, 14)   # pixels at 256 from the portrait's place: lively drift is 1-2, a posture shift up to 17


def frame_average(frames: np.ndarray, width: int) -> np.ndarray:
    """Each frame averaged with its neighbours over ``width`` frames (a moving average in time)."""
    x = torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None]
    y = F.avg_pool3d(x, (width, 1, 1), 1, (width // 2, 0, 0), count_include_pad=False)
    return y[0].permute(1, 2, 3, 0).round().byte().numpy()


def latent_average(z: torch.Tensor, width: int | None) -> torch.Tensor:
    """Latent frames after the first (the reference) replaced by their mean (``width`` None) or
    by a moving average over ``width`` latent frames."""
    body = z[:, :, 1:]
    if width is None:
        body = body.mean(2, keepdim=True).expand_as(body)
    else:
        b, c, t, h, w = body.shape
        flat = body.permute(0, 1, 3, 4, 2).reshape(-1, 1, t)
        flat = F.avg_pool1d(flat, width, 1, width // 2, count_include_pad=False)
        body = flat.reshape(b, c, h, w, t).permute(0, 1, 4, 2, 3)
    return torch.cat([z[:, :, :1], body], dim=2)


@torch.inference_mode()
def probe(model, frames: np.ndarray) -> dict[str, dict[int, float]]:
    """Sharpness over the truth's, per row and scale."""
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    z = model.vae.encode(x)
    latents_per_second = model.cfg.fps / model.cfg.vae.temporal_compression
    decoders = ["full"] + (["light"] if model.cfg.vae.light_width else [])
    rows = {}
    for which in decoders:
        def decode(latents):
            return video_tensor_to_uint8(model.vae.decode(latents, which))
        rec = decode(z)
        rows[f"VAE ({which} decoder)"] = rec
        rows[f"VAE ({which}), its frames averaged over 5"] = frame_average(rec, 5)
        rows[f"VAE ({which}), the clip's mean latent"] = decode(latent_average(z, None))
        rows[f"VAE ({which}), latents averaged over 1 s"] = decode(latent_average(z, round(latents_per_second) | 1))
    rows["the truth, averaged over 5 frames"] = frame_average(frames, 5)
    rows["the truth's per-pixel mean over time"] = np.repeat(
        frames.astype(np.float32).mean(0, keepdims=True).round().astype(np.uint8), len(frames), 0)
    truth = {s: sharpness(frames, s) for s in SCALES}
    return {name: {s: sharpness(video, s) / truth[s] for s in SCALES} for name, video in rows.items()}


def by_chunk_position(video: np.ndarray, truth: np.ndarray, chunk_frames: int, window: int) -> list[float]:
    """Sharpness over the truth's of the chunks at each place 0 .. window - 1 of their window."""
    chunk = np.arange(len(video)) // chunk_frames
    reference = sharpness(truth)
    return [sharpness(video[chunk % window == k]) / reference for k in range(window)]


def by_head_place(video: np.ndarray, offsets: np.ndarray, reference: float,
                  bands: tuple[int, ...] = PLACE_BANDS) -> list[tuple[int, float]]:
    """(frames, sharpness over ``reference``) of the frames whose head stands in each band of
    distance from the portrait's place (``offsets``: (T, 2) pixels); nan where a band is empty."""
    distance = np.hypot(offsets[:, 0], offsets[:, 1])
    edges = (*bands, np.inf)
    out = []
    for low, high in zip(edges[:-1], edges[1:]):
        chosen = (distance >= low) & (distance < high)
        out.append((int(chosen.sum()), sharpness(video[chosen]) / reference if chosen.any() else float("nan")))
    return out


def place_table_header() -> str:
    edges = (*PLACE_BANDS, None)
    names = [f"{lo}-{hi} px" if hi is not None else f"{lo}+ px" for lo, hi in zip(edges[:-1], edges[1:])]
    return "| video | " + " | ".join(names) + " |\n|---|" + "---|" * len(names)


def place_row(name: str, bands: list[tuple[int, float]]) -> str:
    return f"| {name} | " + " | ".join(f"{v:.3f} ({n})" if n else "" for n, v in bands) + " |"


def sharpness_by_place(video: np.ndarray, clip) -> list[tuple[int, float]]:
    """:func:`by_head_place` of a video of ``clip``, its head found in it, over the truth's sharpness."""
    offsets = head_offsets(video, clip)
    if offsets is None:
        raise ValueError("--by-place needs a clip whose head shifts its posture (restless data)")
    return by_head_place(video, offsets, sharpness(clip.frames))


def kept(directory: str, window: int, by_place: bool = False) -> None:
    report, cfg, streams = kept_run(directory)
    if by_place:
        print(f"{report['mode']} on {report['data']} data: sharpness over the truth's by the head's distance "
              "from the portrait's place (frames)")
        print(place_table_header())
        for n, (video, clip) in enumerate(streams):
            print(place_row(f"identity {report['first_identity'] + n}", sharpness_by_place(video, clip)))
        return
    print(f"{report['mode']} on {report['data']} data: sharpness over the truth's by the chunk's place "
          f"in a window of {window}")
    print("| identity | " + " | ".join(f"chunk {k + 1}" for k in range(window)) + " | all |")
    print("|---|" + "---|" * (window + 1))
    first = report["first_identity"]
    for n, (video, clip) in enumerate(streams):
        places = by_chunk_position(video, clip.frames, cfg.frames_per_chunk, window)
        print(f"| {first + n} | " + " | ".join(f"{v:.3f}" for v in places)
              + f" | {sharpness(video) / sharpness(clip.frames):.3f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default="rest_fast/assets/rest-cpu")
    p.add_argument("--frames", type=int, default=193, help="frames of the held-out clip, 1 + 8k (default 193)")
    p.add_argument("--identity", type=int, default=1, help="held-out identity (default 1)")
    p.add_argument("--data", choices=["lively", "restless"], default="lively",
                   help="held-out clip kind (default lively; restless adds posture shifts)")
    p.add_argument("--kept", metavar="DIR", help="score the frames `rest-fast eval --save-frames DIR` kept")
    p.add_argument("--window", type=int, default=2, help="with --kept: chunks per window (default 2)")
    p.add_argument("--by-place", action="store_true",
                   help="restless clips: sharpness by the head's distance from the portrait's place")
    args = p.parse_args(argv)
    if args.kept:
        if args.window < 1:
            p.error(f"--window must be at least 1, got {args.window}")
        try:
            kept(args.kept, args.window, args.by_place)
        except (FileNotFoundError, ValueError) as e:   # not a kept run, or not restless: say what to pass
            p.error(str(e))
        return 0
    if args.by_place and args.data != "restless":
        p.error("--by-place needs --data restless (only restless heads leave the portrait's place)")
    model = load_checkpoint(args.checkpoint).eval()
    data = SyntheticTalkingHeads.for_config(model.cfg, split="eval", motion=args.data)
    clip = data.clip(args.identity, args.frames)
    frames = clip.frames
    if args.by_place:
        print("sharpness over the truth's by the head's distance from the portrait's place (frames)")
        print(place_table_header())
        print(place_row("the truth", sharpness_by_place(frames, clip)))
        print(place_row("VAE (full decoder)", sharpness_by_place(vae_reconstruct(model, frames), clip)))
        return 0
    print("| video | " + " | ".join(f"sharpness at scale {s} (truth 1)" for s in SCALES) + " |")
    print("|---|" + "---|" * len(SCALES))
    for name, scores in probe(model, frames).items():
        print(f"| {name} | " + " | ".join(f"{scores[s]:.3f}" for s in SCALES) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
