"""Speed and quality of samplers and decoders in one run: the table of docs/training.md and
BENCHMARKS.md ("Less work per chunk").

    python3 tools/sampler_table.py CHECKPOINT [--out runs/sampler_table] [--seconds 60] [--rows ROW ...]

A row is STEPSxGUIDANCE[:DECODER], e.g. ``8xjoint6:full`` (8 steps, Joint CFG alpha 6, the full
decoder) or ``1xnone:light`` (1 step, one branch, the light decoder). For each row:

* DiT forwards per chunk: steps x CFG branches (counted: the batched calls of one chunk of one
  stream times the rows of each call, one row per branch);
* the steady chunk of one stream through ``StreamingGenerator`` in fp32 and in bf16 (median of
  ``--rounds``), and its decoder's share;
* how many streams hold real time on this machine: ticks of 1, 2, 4, 8, 12, 16 streams stepped
  together, the largest count whose median tick is within the chunk's 0.96 s;
* ``rest-fast eval`` figures (2 held-out identities x ``--seconds``);
* the mouth on a real voice: the bundled demo (espeak-ng speech, a held-out face), how far the
  mouth opens over the clip (the range of ``mouth_opening``) and how much more it is open over
  the loudest third of the frames than over the quietest. The synthetic benchmark cannot see
  this: on its in-distribution speech a sampler without guidance scores best, while on a real
  voice guidance is what opens the mouth.

Each row's figures go to OUT/ROW.json as they are made (a re-run skips rows already measured:
delete the file to measure again); the markdown table goes to stdout and OUT/table.md. Timings
need a quiet machine: they are medians, but two cores leave no room for anything else.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference.checkpoint import load_checkpoint  # noqa: E402
from reference.evaluate import evaluate  # noqa: E402
from reference.media import write_text_atomic  # noqa: E402
from rest_fast import StreamingGenerator  # noqa: E402
from rest_fast.model import FastDiT  # noqa: E402
from reference.model import videos_to_uint8  # noqa: E402
from rest_fast.streaming import decode_chunks  # noqa: E402

STREAM_COUNTS = (1, 2, 4, 8, 12, 16)
DEMO_IDENTITY = 1    # tools/make_demo_assets.py draws eval-split identity 1
DEFAULT_ROWS = ["8xjoint6:full", "4xjoint6:full", "2xjoint6:full", "8xnone:full", "4xnone:full",
                "2xnone:full", "1xnone:full", "1xjoint6:full", "1xjoint3:full", "1xjoint2:full",
                "2xnone:light", "1xnone:light", "1xjoint2:light"]


def parse_row(row: str, force: bool = False) -> dict:
    """``8xjoint6:full`` -> steps 8, guidance joint, cfg 6.0, decoder full (``force``: also a
    sampler the checkpoint was not made for, which it refuses otherwise)."""
    sampler, _, decoder = row.partition(":")
    steps, _, guidance = sampler.partition("x")
    mode = guidance.rstrip("0123456789.")
    scale = guidance[len(mode):]
    return dict(steps=int(steps), cfg_mode=mode, cfg_scale=float(scale) if scale else None,
                decoder=decoder or None, force=force)


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    tone = np.sin(2 * np.pi * (120 + 10 * seed) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + seed))
    return (0.3 * tone).astype(np.float32)


def generator(model, spec: dict, capacity: int = 1) -> StreamingGenerator:
    return StreamingGenerator(model, capacity=capacity, steps=spec["steps"], cfg_mode=spec["cfg_mode"],
                              force=spec["force"])


@torch.inference_mode()
def steady_chunk(model, spec: dict, rounds: int) -> dict:
    """Median ms of one stream's steady chunk, of its decoder alone, and DiT forwards per chunk."""
    gen = generator(model, spec)
    cfg = model.cfg
    image = np.full((cfg.resolution, cfg.resolution, 3), 128, np.uint8)
    piece = speech(cfg.samples_per_chunk / 16000, 1)
    forwards = []
    original = FastDiT.forward

    def counted(self, z, *args):
        forwards.append(z.shape[0])
        return original(self, z, *args)
    with gen.open(image, cfg_scale=spec["cfg_scale"]) as stream:
        stream.push(speech(1.2))
        FastDiT.forward = counted
        try:
            stream.push(piece)
        finally:
            FastDiT.forward = original
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            stream.push(piece)
            times.append(time.perf_counter() - start)
        latents = model.denormalize(gen.z[:1, 0])
        state = stream.ref.decode_state          # the stream is done: its decoder goes on alone
        decode = []
        for _ in range(rounds):
            start = time.perf_counter()
            videos_to_uint8(decode_chunks(model.vae, latents, [state]))
            decode.append(time.perf_counter() - start)
    return {"chunk_ms": 1e3 * statistics.median(times), "decode_ms": 1e3 * statistics.median(decode),
            "dit_forwards": len(forwards), "rows_per_forward": max(forwards)}


@torch.inference_mode()
def streams_in_real_time(model, spec: dict, rounds: int = 3) -> tuple[int, dict]:
    """The most streams (of STREAM_COUNTS) whose batched tick stays within a chunk's duration."""
    cfg = model.cfg
    chunk_s = cfg.frames_per_chunk / cfg.fps
    image = np.full((cfg.resolution, cfg.resolution, 3), 128, np.uint8)
    piece = speech(cfg.samples_per_chunk / 16000, 2)
    best, ticks = 0, {}
    for n in STREAM_COUNTS:
        gen = generator(model, spec, capacity=n)
        streams = [gen.open(image, seed=i, cfg_scale=spec["cfg_scale"]) for i in range(n)]
        for i, s in enumerate(streams):
            s.feed(speech(1.2, i))
        gen.step()
        times = []
        for _ in range(rounds):
            for s in streams:
                s.feed(piece)
            start = time.perf_counter()
            gen.step()
            times.append(time.perf_counter() - start)
        ticks[n] = statistics.median(times)
        if ticks[n] > chunk_s:
            break
        best = n
    return best, {str(n): round(1e3 * t, 1) for n, t in ticks.items()}


@torch.inference_mode()
def demo_mouth(model, spec: dict) -> dict:
    """The demo's mouth under this sampler (see the module docstring)."""
    from reference.data.synthetic import SyntheticTalkingHeads
    from reference.media import load_audio, load_image
    from reference.metrics import mouth_opening
    from reference.pipeline import generate
    from rest_fast.cli import demo_asset
    cfg = model.cfg
    audio = load_audio(demo_asset("demo_speech.wav"), cfg.speech.sample_rate)
    image = load_image(demo_asset("demo_portrait.png"), cfg.resolution)
    frames = generate(model, image, audio, seed=0, steps=spec["steps"], cfg_mode=spec["cfg_mode"],
                      cfg_scale=spec["cfg_scale"], force=spec["force"])
    box = SyntheticTalkingHeads(cfg.resolution, split="eval").identity(DEMO_IDENTITY).mouth_box(cfg.resolution)
    from reference.report import loudness as loudness_of
    opening, loudness = mouth_opening(frames, box), loudness_of(audio, cfg.samples_per_frame, len(frames))
    order, third = np.argsort(loudness), len(loudness) // 3
    return {"mouth_range": float(opening.max() - opening.min()),
            "loud_over_quiet": float(opening[order[-third:]].mean() / max(opening[order[:third]].mean(), 1e-6))}


def measure(checkpoint: str, row: str, seconds: float, rounds: int, force: bool = False) -> dict:
    spec = parse_row(row, force)
    model = load_checkpoint(checkpoint).eval()
    if spec["decoder"]:
        model.use_decoder(spec["decoder"])
    result = {"row": row, **spec, "checkpoint": str(checkpoint), "threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d")}
    result["fp32"] = steady_chunk(model, spec, rounds)
    result["bf16"] = steady_chunk(copy.deepcopy(model).to(torch.bfloat16), spec, rounds)
    result["streams_real_time_fp32"], result["ticks_fp32_ms"] = streams_in_real_time(model, spec)
    report = evaluate(model, identities=2, seconds=seconds, steps=spec["steps"], cfg_mode=spec["cfg_mode"],
                      cfg_scale=spec["cfg_scale"], force=spec["force"])
    result["eval"] = report["generated"]
    result["demo"] = demo_mouth(model, spec)
    return result


COLUMNS = [("DiT forwards/chunk (steps x branches)",
            lambda r: f"{r['fp32']['dit_forwards'] * r['fp32']['rows_per_forward']}"),
           ("chunk fp32 ms", lambda r: f"{r['fp32']['chunk_ms']:.0f}"),
           ("decoder fp32 ms", lambda r: f"{r['fp32']['decode_ms']:.0f}"),
           ("chunk bf16 ms", lambda r: f"{r['bf16']['chunk_ms']:.0f}"),
           ("streams in real time (fp32)", lambda r: f"{r['streams_real_time_fp32']}"),
           ("lip sync", lambda r: f"{r['eval']['lip_sync_corr']:.3f}"),
           ("drift first -> last 10 s", lambda r: f"{r['eval']['drift_first_10s']:.2f} -> {r['eval']['drift_last_10s']:.2f}"),
           ("drift slope /min", lambda r: f"{r['eval']['drift_slope_per_min']:+.2f}"),
           ("boundary", lambda r: f"{r['eval']['boundary_smoothness']:.3f}"),
           ("PSNR", lambda r: f"{r['eval']['psnr']:.2f}"),
           ("SSIM", lambda r: f"{r['eval']['ssim']:.3f}"),
           ("demo (real voice): mouth range", lambda r: f"{r['demo']['mouth_range']:.3f}"),
           ("demo: open loud / quiet", lambda r: f"{r['demo']['loud_over_quiet']:.1f}x")]


def table(results: list[dict]) -> str:
    lines = ["| sampler : decoder | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for r in results:
        lines.append(f"| {r['row']} | " + " | ".join(f(r) for _, f in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", default="runs/sampler_table")
    p.add_argument("--rows", nargs="+", default=DEFAULT_ROWS)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rounds", type=int, default=24)
    p.add_argument("--force", action="store_true",
                   help="also rows the checkpoint was not made for (a distilled student's 8xjoint6: "
                        "timed as any, but they draw noise)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for row in args.rows:
        path = out / f"{row.replace(':', '_')}.json"
        if not path.is_file():
            print(f"[{time.strftime('%T')}] measuring {row}", file=sys.stderr, flush=True)
            write_text_atomic(path, json.dumps(measure(args.checkpoint, row, args.seconds, args.rounds, args.force),
                                                   indent=2))
        result = json.loads(path.read_text())
        if "demo" not in result:       # rows measured before the demo column: add it alone
            spec, model = parse_row(row, args.force), load_checkpoint(args.checkpoint).eval()
            if spec["decoder"]:
                model.use_decoder(spec["decoder"])
            result["demo"] = demo_mouth(model, spec)
            write_text_atomic(path, json.dumps(result, indent=2))
        results.append(result)
    text = table(results)
    write_text_atomic(out / "table.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
