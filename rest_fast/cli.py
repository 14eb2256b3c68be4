"""The ``rest-fast`` command line: ``generate`` a talking-head mp4, run the bundled ``demo``,
``stream`` an audio file in real time, ``serve`` the live avatar, ``prepare`` raw videos for
training, ``train`` a stage, ``eval`` a checkpoint.

Bad input (unreadable files, empty or non-finite audio, a checkpoint that does not match its
config, a sampler the checkpoint was not made for) ends with one line on stderr and exit code 2;
no partial output file is left behind.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from importlib import resources
from pathlib import Path

EXIT_BAD_INPUT = 2


def demo_asset(name: str) -> Path:
    return Path(str(resources.files("rest_fast") / "assets" / name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rest-fast", description=(
        "Real-time streaming talking-head diffusion (REST): one portrait + speech -> video."))
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="portrait + speech -> talking-head mp4")
    gen.add_argument("--image", required=True, help="portrait: png/jpeg/bmp/webp, any size and mode")
    gen.add_argument("--audio", required=True, help="speech: wav/flac/mp3/m4a/ogg, any rate/channels")
    gen.add_argument("--out", required=True, help="output .mp4 (H.264 + AAC, written atomically)")
    demo = sub.add_parser("demo", help="run generate on the portrait and speech bundled with the package")
    demo.add_argument("--out", default="demo.mp4", help="output .mp4 (default: demo.mp4)")
    stream = sub.add_parser("stream", help="pace an audio file through a live stream in real time and "
                                           "print the latency of every chunk")
    stream.add_argument("--image", default=None, help="portrait (default: the bundled demo portrait)")
    stream.add_argument("--audio", default=None, help="speech file (default: the bundled demo speech)")
    stream.add_argument("--out", default=None, help="also write the frames to this mp4")
    stream.add_argument("--piece-ms", type=float, default=20.0,
                        help="audio arrives in pieces of this many ms, as from a microphone (default 20)")
    stream.add_argument("--no-pace", action="store_true",
                        help="push pieces as fast as possible instead of in real time")
    serve = sub.add_parser("serve", help="the live avatar in a browser (WebRTC page) and over a "
                                         "WebSocket; needs the 'serve' extra")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free one)")
    serve.add_argument("--capacity", type=int, default=2,
                       help="concurrent callers (default 2); more are refused with 503")
    serve.add_argument("--image", default=None, help="the 'bundled' portrait offered by the page "
                                                     "(default: the demo portrait)")
    serve.add_argument("--av-offset-ms", type=float, default=0.0,
                       help="send each frame this long after its speech (default 0: together)")
    serve.add_argument("--prebuffer-ms", type=float, default=None,
                       help="hold each caller's chunks this long before playing them, so that the next "
                            "is made in time (default: sized from the measured jitter of the chunks' "
                            "arrival, 80 ms to 1 s)")
    serve.add_argument("--stun", default=None, metavar="URL",
                       help="a STUN server for WebRTC callers behind NAT, e.g. stun:stun.example.org:3478 "
                            "(default: none; loopback and LAN callers need none)")
    add_prepare_parser(sub)
    add_train_parser(sub)
    add_eval_parser(sub)
    for p in (gen, demo, stream, serve):
        p.add_argument("--checkpoint", help="checkpoint or training run directory, or a bundled "
                                            "checkpoint: default (2 distilled steps, one branch), "
                                            "undistilled (the paper's sampler: 8 steps of Joint CFG) or "
                                            "low-latency (0.32 s chunks: a live face sooner); "
                                            "without it the bundled default (random weights for --preset paper)")
        p.add_argument("--preset", choices=["cpu", "paper"], default=None,
                       help="model size when no checkpoint is given (default: cpu)")
        add_sampler_options(p)
        p.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same video)")
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
        p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                       help="auto (either backend): bfloat16 on a GPU and on CPUs with AMX (faster "
                            "there, frames within rounding of fp32), float32 on other CPUs")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    for p in (gen, demo):
        p.add_argument("--backend", choices=["fast", "reference"], default="fast",
                       help="fast: rest_fast's StreamingGenerator (default); reference: the plain "
                            "PyTorch specification (same frames, slower)")
    return parser


def add_sampler_options(p) -> None:
    """The sampler and decoder a checkpoint's config names, overridable per run."""
    p.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the "
                                                           "checkpoint's; the paper preset's is 8)")
    p.add_argument("--guidance", choices=["none", "joint", "multi"], default=None,
                   help="classifier-free guidance (default: the checkpoint's): none runs one DiT "
                        "branch, joint two (the paper's Joint CFG), multi three")
    p.add_argument("--cfg", type=float, default=None, help="Joint-CFG scale alpha, 0-20 (default: the "
                                                           "checkpoint's; the paper's is 6)")
    p.add_argument("--decoder", choices=["full", "light"], default=None,
                   help="which VAE decoder renders frames (default: the checkpoint's)")
    p.add_argument("--force", action="store_true",
                   help="run a sampler the checkpoint was not made for (e.g. Joint CFG on a distilled "
                        "student), with a warning, instead of refusing it")


def add_prepare_parser(sub) -> None:
    from reference.data.prepare import PrepareOptions
    d = PrepareOptions()
    p = sub.add_parser("prepare", help="raw videos of people -> face-cropped training clips and a manifest; "
                                       "needs the 'prepare' extra",
                       description="Find the speaker's face in every video under RAW_DIR, cut at shot changes "
                       "and where the face is lost, crop a steady square about the head and write each "
                       "usable segment to OUT as an mp4 with 16 kHz mono speech, plus OUT/manifest.jsonl "
                       "(every segment's crop track, every dropped span and skipped file with its reason). "
                       "A stopped run resumes: finished files are not done again.")
    p.add_argument("raw", metavar="RAW_DIR", help="folder of raw videos (searched recursively)")
    p.add_argument("--out", required=True, help="folder for the clips and manifest.jsonl "
                                                "(then: rest-fast train ... --data OUT)")
    p.add_argument("--resolution", type=int, default=d.resolution,
                   help=f"output size in pixels, square (default {d.resolution}: the cpu preset's; 512: "
                        "the paper's)")
    p.add_argument("--fps", type=int, default=d.fps, help=f"output frame rate (default {d.fps})")
    p.add_argument("--workers", type=int, default=1,
                   help="files prepared at once, one process each (default 1; up to the cores)")
    p.add_argument("--min-seconds", type=float, default=d.min_seconds,
                   help=f"shorter usable stretches are dropped (default {d.min_seconds:g})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_train_parser(sub) -> None:
    from reference.train import STAGES, TrainArgs
    d = TrainArgs(stage="vae", out="")
    p = sub.add_parser("train", help="train one stage: vae, speech, teacher, student (ASD), decoder or distill",
                       description="Train one stage of REST. Stages chain through --init: "
                       "vae -> speech -> teacher -> student -> distill; decoder distils the light "
                       "streaming decoder from any checkpoint's VAE. Runs under torchrun for DDP/FSDP.")
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--data", default=d.data, help="'synthetic' (default: calm synthetic talking heads), "
                   "'synthetic-lively' (head motion, blinks, brows, gaze and smiles drawn at random), "
                   "'synthetic-restless' (lively, plus sudden posture shifts) or a folder of "
                   "face-cropped mp4 clips with audio (rest-fast prepare makes one from raw videos)")
    p.add_argument("--out", required=True, help="run directory (latest/, step-N/, log.jsonl)")
    p.add_argument("--init", help="checkpoint of the previous stage (required for teacher and student)")
    p.add_argument("--teacher", help="student: the frozen teacher (default: --init)")
    p.add_argument("--preset", choices=["cpu", "paper"], default=d.preset,
                   help="model size when there is no --init (default: cpu)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"total optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per process per step")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-chunks", type=int, default=d.num_chunks, help="chunks per training clip (DiT and decoder stages)")
    p.add_argument("--mouth-weight", type=float, default=d.mouth_weight,
                   help="VAE: extra loss weight inside the mouth box where the data knows it "
                        "(synthetic clips), e.g. 10; 0 (default): uniform")
    p.add_argument("--eye-weight", type=float, default=d.eye_weight,
                   help="VAE: the same inside each eye's box (blinks), e.g. 30; 0 (default): uniform")
    p.add_argument("--vae-frames", type=int, default=d.vae_frames,
                   help="frames per VAE training clip, 1 + 8k (default 9; 1 trains on single images, "
                        "several times more identities per second)")
    p.add_argument("--sampler-steps", type=int, default=d.sampler_steps,
                   help="distill: the sampler steps of the last phase (the init's steps halved "
                        "until this; each phase writes <out>/k<steps>)")
    p.add_argument("--method", dest="distill_method", choices=["progressive", "dmd", "progressive+dmd"],
                   default=d.distill_method,
                   help="distill: progressive (guidance, then halving the steps: <out>/k<steps>), "
                        "dmd (distribution matching on the student's own rollouts against "
                        "--teacher, default the init: <out>/dmd<steps>) or one and then the other")
    p.add_argument("--fake-updates", type=int, default=d.fake_updates,
                   help="distill, dmd: updates of the fake score per update of the student (DMD2 "
                        "uses 5; the other steps train the fake score alone and cost about half)")
    p.add_argument("--guidance-scale", type=float, default=d.guidance_scale,
                   help="distill: the Joint-CFG scale the guidance phase distils into one branch "
                        "and DMD's real score uses (default: the teacher's sampling.cfg_scale; "
                        "above it, the distilled students keep more of the head motion and blinks: "
                        "docs/training.md)")
    p.add_argument("--crop", type=int, default=d.crop,
                   help="decoder stage: train on random crops of this many latent positions a side "
                        "(e.g. 4 at the cpu preset: a quarter of the cost); 0 (default): whole frames")
    p.add_argument("--kernels", choices=["auto", "on", "off"], default="auto",
                   help="teacher, student, distill: run the DiT through rest_fast's fused kernels "
                        "(apply_kernels). auto (default): on for CUDA, off on CPU; on CPU 'on' runs "
                        "their torch twins, or the kernels in Triton's interpreter with "
                        "TRITON_INTERPRET=1. The log's dit_ops says which ran")
    p.add_argument("--cache-dir", help="where the encoded clip pool is kept (default: <out>/../cache)")
    p.add_argument("--cache-clips", type=int, default=d.cache_clips, help="clips in the encoded pool")
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--snapshot-every", type=int, default=d.snapshot_every,
                   help="also keep step-N/ weights every this many steps (0: never)")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--resume", action="store_true", help="continue from <out>/latest (bit-exact on CPU)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard the trained module (FSDP2)")
    p.add_argument("--grad-checkpoint", action="store_true", help="recompute DiT blocks in backward")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="edit the config, e.g. --set asd.lambda_smo=0 --set dit.student_prev=false")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_eval_parser(sub) -> None:
    from reference.evaluate import MODES
    p = sub.add_parser("eval", help="quality benchmark on held-out synthetic identities and speech, or on "
                                    "real clips (--data DIR)")
    p.add_argument("--checkpoint", help="checkpoint or training run directory, or a bundled one (default, "
                                        "undistilled, low-latency); required unless --rescore")
    p.add_argument("--mode", choices=MODES, default="student",
                   help="student: Algorithm 1 streaming; teacher: offline full attention, one "
                        "training-length window at a time; teacher-forced: the teacher drawing each "
                        "chunk after the first from the true chunk before it; vae: the true video "
                        "through the VAE (the ceiling of any model using it)")
    p.add_argument("--identities", type=int, default=2, help="held-out identities (default 2)")
    p.add_argument("--first-identity", type=int, default=0,
                   help="start at this held-out identity (default 0); e.g. 2 checks on fresh identities a "
                        "setting chosen on the default two")
    p.add_argument("--seconds", type=float, default=60.0, help="stream length per identity (default 60)")
    p.add_argument("--data", default="synthetic",
                   help="held-out clips: synthetic (calm, default), synthetic-lively (what the bundled weights "
                        "know), synthetic-restless (lively, plus sudden posture shifts), or a folder of real "
                        "clips (rest-fast prepare's output): --identities clips from --first-identity on, "
                        "measured by the figures that need no synthetic truth (needs the 'prepare' extra)")
    add_sampler_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1,
                   help="streams per identity (noise seeds seed+i .. seed+i+N-1): the figures are their "
                        "mean, and with 2 or more each figure's spread over seeds is its noise floor "
                        "(the paired figures' only one); each costs another generation")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--save-video", help="also write the first identity's video to this mp4")
    p.add_argument("--save-frames", metavar="DIR",
                   help="also keep every generated frame in DIR (compressed: ~220 MB per identity-minute "
                        "at the cpu preset), with the report, for --rescore")
    p.add_argument("--rescore", metavar="DIR",
                   help="generate nothing: measure again the frames an earlier --save-frames kept in DIR "
                        "(after a change to a figure); the other options are ignored but --json, --quiet, "
                        "--report, and --checkpoint: the run's checkpoint, whose VAE renders the truth that "
                        "sharpness is judged against where the kept report has no such figure")
    p.add_argument("--report", metavar="DIR",
                   help="also draw the run into DIR: frame strips (generated above truth), mouth opening "
                        "against loudness, drift and sharpness against time, and an index.html with the "
                        "table (needs matplotlib: pip install -e \".[plots]\"); works with --rescore")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class UsageError(ValueError):
    """A bad combination of options, reported like bad input."""


def pick_device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    return torch.device(name)


def load_model(args, device):
    from reference.config import get_config
    from reference.model import RestModel
    from rest_fast.streaming import bundled_checkpoint, load_named_checkpoint
    if not args.checkpoint and args.preset in (None, "cpu") and bundled_checkpoint():
        return load_named_checkpoint("default", device)
    if args.checkpoint:
        model = load_named_checkpoint(args.checkpoint, device)
        if args.preset and args.preset != model.cfg.name:
            raise UsageError(f"--preset {args.preset} conflicts with checkpoint {args.checkpoint!r} "
                             f"(preset {model.cfg.name}): drop --preset")
        return model
    print(f"rest-fast: no trained weights for the {args.preset or 'cpu'} preset: using RANDOM weights "
          "(the video will show noise, not a talking face); pass --checkpoint", file=sys.stderr)
    return RestModel.random(get_config(args.preset or "cpu")).to(device).eval()


def chunk_frames(model, image, audio, args):
    """Frames chunk by chunk from the chosen backend, with a progress bar over chunks."""
    if args.backend == "reference":
        from reference.pipeline import iter_generate
        yield from iter_generate(model, image, audio, seed=args.seed, steps=args.steps, cfg_scale=args.cfg,
                                 cfg_mode=args.guidance, progress=not args.quiet, force=args.force)
        return
    from reference.pipeline import frames_for_samples
    from rest_fast.streaming import StreamingGenerator
    cfg = model.cfg
    total = -(-frames_for_samples(len(audio), cfg) // cfg.frames_per_chunk)
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="generating", unit="chunk")
    gen = StreamingGenerator(model, capacity=1, steps=args.steps, cfg_mode=args.guidance, force=args.force)
    with gen.open(image, seed=args.seed, cfg_scale=args.cfg) as stream:
        stream.feed(audio)
        while True:
            frames = gen.step([stream])[0] if stream._ready() else stream.flush()
            if bar is not None:
                bar.update(1 if len(frames) else 0)
            if len(frames):
                yield frames
            if stream.finished:
                break
    if bar is not None:
        bar.close()


def check_sampler_args(args) -> None:
    """--steps and --cfg, refused before any work with what is allowed."""
    from reference.flow import check_guidance_scale
    if getattr(args, "steps", None) is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if getattr(args, "cfg", None) is not None:
        try:
            check_guidance_scale(args.cfg, "--cfg")
        except ValueError as e:
            raise UsageError(str(e)) from None


def apply_sampler_options(model, args) -> None:
    """--decoder onto the model; --steps/--guidance/--cfg checked against its config and against
    what its weights were made for (refused before any work unless --force)."""
    from reference.pipeline import sampler_settings
    try:
        if args.decoder:
            model.use_decoder(args.decoder)
        sampler_settings(model.cfg, args.steps, args.guidance, args.cfg, force=args.force, source=model.source)
    except ValueError as e:
        raise UsageError(str(e)) from None


def prepare_model(args, device):
    """The model on ``device`` in the dtype asked for (auto: ``default_dtype(device)``, the same
    for both backends, so that they compute the same function) with the sampler options."""
    import torch
    from rest_fast.streaming import default_dtype
    model = load_model(args, device)
    apply_sampler_options(model, args)
    name = getattr(args, "dtype", "auto")
    return model.to(default_dtype(device) if name == "auto" else getattr(torch, name))


def run_generate(image_path, audio_path, out, args) -> None:
    from reference.media import Mp4Writer, load_audio, load_image
    from reference.pipeline import frames_for_samples

    device = pick_device(args.device)
    check_sampler_args(args)
    model = prepare_model(args, device)
    cfg = model.cfg
    audio = load_audio(audio_path, cfg.speech.sample_rate)
    image = load_image(image_path, cfg.resolution)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with Mp4Writer(out, cfg.fps, cfg.resolution, cfg.resolution, audio=audio,
                   sample_rate=cfg.speech.sample_rate) as writer:
        for frames in chunk_frames(model, image, audio, args):
            writer.write(frames)
    elapsed = time.perf_counter() - start
    seconds = frames_for_samples(len(audio), cfg) / cfg.fps
    print(f"wrote {out}: {seconds:.2f} s of {cfg.resolution}x{cfg.resolution} video at {cfg.fps} fps "
          f"in {elapsed:.2f} s (real-time factor {elapsed / seconds:.2f}, {args.backend} backend, "
          f"device {device})")


def run_stream(args) -> int:
    """Audio arrives in small pieces at the speed of speech; each chunk's frames are reported when
    they are ready, with their latency: from the arrival of the last sample the chunk needed
    (its window's end: the chunk plus Whisper's lookahead) to its frames."""
    import numpy as np
    from reference.media import Mp4Writer, load_audio, load_image
    from rest_fast.streaming import StreamingGenerator

    device = pick_device(args.device)
    check_sampler_args(args)
    args.backend = "fast"
    model = prepare_model(args, device)
    cfg = model.cfg
    audio = load_audio(args.audio or demo_asset("demo_speech.wav"), cfg.speech.sample_rate)
    image = load_image(args.image or demo_asset("demo_portrait.png"), cfg.resolution)
    piece = max(1, round(args.piece_ms * cfg.speech.sample_rate / 1000))
    gen = StreamingGenerator(model, capacity=1, steps=args.steps, cfg_mode=args.guidance, force=args.force)
    latencies = []
    print(f"streaming {len(audio) / cfg.speech.sample_rate:.2f} s of audio in {args.piece_ms:g} ms pieces "
          f"({'as fast as possible' if args.no_pace else 'real time'}); chunk = "
          f"{1000 * cfg.frames_per_chunk / cfg.fps:.0f} ms + {cfg.speech.lookahead_ms:.0f} ms lookahead")
    with contextlib.ExitStack() as stack:
        writer = None
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            writer = stack.enter_context(Mp4Writer(args.out, cfg.fps, cfg.resolution, cfg.resolution,
                                                   audio=audio, sample_rate=cfg.speech.sample_rate))
        stream = stack.enter_context(gen.open(image, seed=args.seed, cfg_scale=args.cfg))
        t0 = time.perf_counter()
        for start in range(0, len(audio), piece):
            if not args.no_pace:  # the piece ending at `start + piece` exists from then on
                time.sleep(max(0.0, t0 + (start + piece) / cfg.speech.sample_rate - time.perf_counter()))
            arrived = time.perf_counter()
            frames = stream.push(audio[start:start + piece])
            if len(frames):
                latencies.append(time.perf_counter() - arrived)
                print(f"chunk {stream.chunks - 1:3d}: {len(frames)} frames, compute "
                      f"{1000 * stream.timings[-1]:6.1f} ms, ready {1000 * latencies[-1]:6.1f} ms after "
                      f"its last sample arrived")
                if writer:
                    writer.write(frames)
        rest = stream.flush()
        if writer and len(rest):
            writer.write(rest)
        lat = stream.latency
    if latencies:
        print(f"latency per chunk: median {1000 * float(np.median(latencies)):.1f} ms, max "
              f"{1000 * max(latencies):.1f} ms after the last needed sample; voice to face, from the end "
              f"of a frame's speech to its frame: worst {lat['worst_ms']:.0f} ms (the rest of its chunk's "
              f"speech {lat['speech_wait_ms']:.0f} + lookahead {lat['lookahead_ms']:.0f} + compute "
              f"{lat['compute_ms']:.0f}), median {lat['median_ms']:.0f} ms")
    return 0


def run_serve(args) -> int:
    """Load the model once, then serve the page and the WebSocket endpoint until Ctrl-C."""
    import asyncio
    from reference.media import load_image
    from rest_fast.serve import missing_extra, serve
    from rest_fast.streaming import StreamingGenerator
    problem = missing_extra()
    if problem:
        print(f"rest-fast: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.capacity < 1:
        raise UsageError(f"--capacity must be at least 1, got {args.capacity}")
    if args.prebuffer_ms is not None and args.prebuffer_ms < 0:
        raise UsageError(f"--prebuffer-ms must be 0 or more, got {args.prebuffer_ms:g}")
    device = pick_device(args.device)
    check_sampler_args(args)
    model = prepare_model(args, device)
    image = load_image(args.image or demo_asset("demo_portrait.png"), model.cfg.resolution)
    gen = StreamingGenerator(model, capacity=args.capacity, steps=args.steps, cfg_mode=args.guidance,
                             force=args.force)
    gen.warmup()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"rest-fast serve: listening on {args.host}: reachable from other machines, with no "
              "authentication", file=sys.stderr)

    def ready(url):
        print(f"rest-fast serve: open {url} in a browser ({args.capacity} caller(s) at most, "
              f"{model.cfg.resolution}x{model.cfg.resolution} at {model.cfg.fps} fps on {device}; "
              "Ctrl-C stops)", flush=True)
    asyncio.run(serve(gen, image, host=args.host, port=args.port, ready=ready,
                      cfg_scale=args.cfg, first_seed=args.seed, av_offset_s=args.av_offset_ms / 1000,
                      prebuffer_s=None if args.prebuffer_ms is None else args.prebuffer_ms / 1000,
                      stun_url=args.stun))
    return 0


def run_prepare(args) -> int:
    from reference.data.prepare import PrepareOptions, prepare_folder
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {args.workers})")
    opts = PrepareOptions(resolution=args.resolution, fps=args.fps, min_seconds=args.min_seconds)
    try:
        counts = prepare_folder(args.raw, args.out, opts, workers=args.workers, progress=not args.quiet)
    except KeyboardInterrupt:
        print("rest-fast prepare: interrupted; the files finished so far are kept: run the same command "
              "again to go on", file=sys.stderr)
        return 130
    print(f"rest-fast prepare: {counts['segments']} segments ({counts['seconds']:.1f} s) from "
          f"{counts['files']} files ({counts['resumed']} done before), {counts['dropped']} spans "
          f"dropped, {counts['skipped']} files skipped; reasons in {Path(args.out) / 'manifest.jsonl'}")
    return 0


def run_train(args) -> int:
    from reference.train import TrainArgs, train
    if args.stage in ("teacher", "student", "decoder", "distill") and not args.init:
        previous = {"teacher": "speech", "student": "teacher", "decoder": "vae (or any later)",
                    "distill": "student"}[args.stage]
        raise UsageError(f"train {args.stage} needs --init: the checkpoint of the previous stage "
                         f"({previous})")
    fields = {k: v for k, v in vars(args).items() if k in TrainArgs.__dataclass_fields__}
    fields["progress"] = not args.quiet
    from rest_fast.training import training_backend
    backend = training_backend(args.kernels, pick_device(args.device))
    try:
        out = train(TrainArgs(**fields), backend)
    except ValueError as e:  # bad overrides, a stage mismatch on resume, ...
        raise UsageError(str(e)) from None
    print(f"rest-fast train: {args.stage} done; checkpoint in {out}")
    return 0


def run_eval(args) -> int:
    from reference.evaluate import evaluate, format_table, rescore
    from reference.train import SYNTHETIC_DATA
    if args.data not in SYNTHETIC_DATA and not args.rescore:
        return run_eval_folder(args)
    if args.report:
        from reference.report import require_matplotlib
        try:
            require_matplotlib()
        except ImportError as e:
            raise UsageError(str(e)) from None
        if not (args.rescore or args.save_frames):
            # The pictures are drawn from kept frames: kept beside them until drawn, then deleted.
            import tempfile
            Path(args.report).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".frames-", dir=args.report) as kept:
                args.save_frames = kept
                return run_eval(args)
    if args.rescore:
        from rest_fast.streaming import load_named_checkpoint
        model = load_named_checkpoint(args.checkpoint, pick_device(args.device)) if args.checkpoint else None
        try:
            report = rescore(args.rescore, model, progress=not args.quiet)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
        if report["sharpness_reference"] == "truth":
            warnings.warn(f"{args.rescore} keeps no VAE rendering of its truth: sharpness is read against the "
                          "true video (pass --checkpoint with the run's checkpoint to read it against its VAE)")
    else:
        if not args.checkpoint:
            raise UsageError("rest-fast eval needs --checkpoint (or --rescore DIR)")
        device = pick_device(args.device)
        check_sampler_args(args)
        if args.seeds < 1:
            raise UsageError(f"--seeds must be at least 1 (got {args.seeds})")
        if args.identities < 1 or args.first_identity < 0:
            raise UsageError(f"--identities must be at least 1 and --first-identity at least 0 "
                             f"(got {args.identities} and {args.first_identity})")
        from rest_fast.streaming import load_named_checkpoint
        model = load_named_checkpoint(args.checkpoint, device)
        apply_sampler_options(model, args)
        report = evaluate(model, mode=args.mode, identities=args.identities, seconds=args.seconds,
                          steps=args.steps, cfg_scale=args.cfg, cfg_mode=args.guidance, seed=args.seed,
                          progress=not args.quiet, video_path=args.save_video,
                          motion=SYNTHETIC_DATA[args.data],
                          first_identity=args.first_identity, frames_dir=args.save_frames, force=args.force,
                          seeds=args.seeds)
    print(format_table(report))
    write_json(args.json, report)
    if args.report:
        from reference.report import write_report
        write_report(args.report, args.rescore or args.save_frames, report, progress=not args.quiet)
        print(f"rest-fast eval: report in {Path(args.report) / 'index.html'}")
    return 0


def run_eval_folder(args) -> int:
    """``eval --data DIR``: real clips, the figures that need no synthetic truth."""
    from reference.evaluate_real import evaluate_folder, format_real_table
    from reference.train import SYNTHETIC_DATA
    if not Path(args.data).is_dir():
        raise UsageError(f"--data '{args.data}' is neither {', '.join(sorted(SYNTHETIC_DATA))} nor a folder "
                         "of clips: pass a folder that rest-fast prepare wrote")
    for flag, value in (("--save-frames", args.save_frames), ("--report", args.report),
                        ("--seeds", args.seeds > 1), ("--mode teacher-forced", args.mode == "teacher-forced")):
        if value:
            raise UsageError(f"{flag} is for the synthetic benchmark only; leave it out with --data DIR")
    if not args.checkpoint:
        raise UsageError("rest-fast eval needs --checkpoint")
    check_sampler_args(args)
    from rest_fast.streaming import load_named_checkpoint
    model = load_named_checkpoint(args.checkpoint, pick_device(args.device))
    apply_sampler_options(model, args)
    report = evaluate_folder(model, args.data, mode=args.mode, clips=args.identities, seconds=args.seconds,
                             first=args.first_identity, steps=args.steps, cfg_scale=args.cfg,
                             cfg_mode=args.guidance, seed=args.seed, progress=not args.quiet,
                             force=args.force, video_path=args.save_video)
    print(format_real_table(report))
    write_json(args.json, report)
    return 0


def write_json(path, report: dict) -> None:
    """``--json``: the report, written atomically; nothing without a path."""
    if path:
        import json
        from reference.media import write_text_atomic
        write_text_atomic(path, json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown = set()

    def warning_line(message, category, filename, lineno, file=None, line=None) -> None:
        """Warnings (a forced sampler, ...) as one line, like errors, each once: every layer that
        checks a forced sampler (the CLI, the generator, each stream) warns alike."""
        if str(message) not in shown:
            shown.add(str(message))
            print(f"rest-fast: warning: {message}", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = warning_line
        return run(args)


def run(args) -> int:
    from reference.checkpoint import CheckpointError
    from reference.media import InputError
    try:
        if args.command == "train":
            return run_train(args)
        if args.command == "eval":
            return run_eval(args)
        if args.command == "stream":
            return run_stream(args)
        if args.command == "serve":
            return run_serve(args)
        if args.command == "prepare":
            return run_prepare(args)
        if args.command == "demo":
            run_generate(demo_asset("demo_portrait.png"), demo_asset("demo_speech.wav"), args.out, args)
        else:
            run_generate(args.image, args.audio, args.out, args)
    except (InputError, CheckpointError, UsageError) as e:
        print(f"rest-fast: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("rest-fast: interrupted; no output written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
