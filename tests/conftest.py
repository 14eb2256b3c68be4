"""Shared fixtures: a tiny config (same code paths as the presets, seconds not minutes on CPU),
synthetic clips and generated audio."""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Without a GPU the Triton kernels are tested in Triton's CPU interpreter, which must be switched
# on before any kernel is defined (rest_fast.ops reads it at import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from reference.config import RestConfig, get_config


REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    """A script of the repository that is not a package module (tools/, examples/), imported by path."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_config() -> RestConfig:
    """64x64 video, 16x spatial / 8x temporal VAE, a 2-block DiT and a narrow Whisper (the
    ``tiny`` preset; a fresh object each call, so tests may edit it)."""
    return get_config("tiny")


def open_audio_path(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every DiT block's audio cross-attention a random output projection. A fresh DiT
    starts with it at zero (its audio is ignored until trained), which would let tests of the
    audio path pass without exercising it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, sub in module.named_modules():
            if name.endswith("audio_attn"):
                sub.out.weight.copy_(torch.randn(sub.out.weight.shape, generator=gen) * 0.05)
    return module


def sensitive_model(cfg: RestConfig | None = None, seed: int = 1) -> "torch.nn.Module":
    """A random model whose every part of the student visibly counts.

    A random DiT barely uses its context: its AdaLN gates are ~N(0, 1/hidden), its attention is
    near uniform and its audio path starts shut, so dropping the ID sink or the previous chunk,
    shifting RoPE positions or swapping the audio moves the output by a few tenths of a per cent,
    the size of the rounding that tolerances must allow. Here the gates are opened (+1), the
    attention logits sharpened (QK-norm gains 2 and 3), the audio path opened and its tokens
    whitened on speech, so that each of those changes moves the latents by several per cent
    (tests/rest_fast/test_streaming.py checks that it does, by more than MUTATION_FLOOR)."""
    from reference.model import RestModel
    from reference.speech import chunk_windows
    model = open_audio_path(RestModel.random(cfg or make_tiny_config(), seed=seed), seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.dit.blocks:
            block.scale_shift_table[2] += 1.0      # gate of the self-attention
            block.scale_shift_table[5] += 1.0      # gate of the FFN
            block.attn.q_norm.weight.fill_(2.0)
            block.attn.k_norm.weight.fill_(2.0)
            block.audio_attn.q_norm.weight.fill_(3.0)
            block.audio_attn.k_norm.weight.fill_(3.0)
            out = block.audio_attn.out.weight
            out.copy_(torch.randn(out.shape, generator=gen) * 0.3)
        c = model.cfg
        windows = torch.cat([chunk_windows(torch.from_numpy(speech_like(4.0, seed=s)), c, num_chunks=4)
                             for s in range(6)])
        feats = model.whisper(windows)
        model.measure_audio_stats(feats.reshape(-1, 1, c.speech.whisper_frames_per_latent, feats.shape[-1]))
    return model


# ---- comparing two computations of one function ---------------------------------------------
# Two different computations of the same function (the fast path and the reference, one push and
# many pieces, a batch and a stream alone) agree only up to rounding, and how they round depends
# on the processor (BLAS and oneDNN pick the reduction order: AMX, AVX-512 or AVX2 kernels) and on
# the torch version. These are the tolerances, stated once; exact equality is kept only where the
# computation is literally the same (one function run twice on the same input).
LATENT_RTOL = 1e-4            # max |a - b| / max |b| of fp32 latents and cached K/V; rounding
                              # gives ~1e-6 (AMX, AVX-512 and AVX2 kernels measured)
MUTATION_FLOOR = 100 * LATENT_RTOL   # what every wiring bug must move the latents of
                                     # sensitive_model by (measured: 2-17%)
# One training step with rest_fast's kernels (apply_kernels) against the reference's ops: the
# loss, the noisy input and target, and every parameter's gradient, max-relative as above. Both
# run fp32; the kernels sum in tiles (online softmax), SDPA in one pass.
TRAIN_STEP_RTOL = 1e-4
GRAD_SCALE_FLOOR = 1e-3       # a gradient that nearly cancels (1e-8 beside 1e-1 elsewhere) is
                              # compared at this share of the model's largest gradient instead
FRAME_MAX_DIFF = 1            # uint8 levels a pixel may differ by (rounding at a .5 boundary)
FRAME_DIFF_FRACTION = 0.005   # share of pixels that may differ at all (measured: < 0.01%)


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 for two zero tensors)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / scale if scale else (actual - expected).abs().max().item()


def assert_latents_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = LATENT_RTOL) -> None:
    diff = relative_difference(actual, expected)
    assert diff <= rtol, f"relative difference {diff:.3g} > {rtol:.3g}"


def assert_frames_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """uint8 frames equal up to rounding: FRAME_MAX_DIFF levels on FRAME_DIFF_FRACTION of pixels."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == np.uint8, \
        (actual.shape, actual.dtype, expected.shape, expected.dtype)
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= FRAME_MAX_DIFF and (diff > 0).mean() <= FRAME_DIFF_FRACTION, \
        f"frames differ by up to {diff.max()} levels on {100 * (diff > 0).mean():.3f}% of pixels"


@contextlib.contextmanager
def spy(owner, name: str):
    """Record ``(args, result)`` of every call of ``owner.name`` inside the block."""
    original = getattr(owner, name)
    calls: list[tuple[tuple, object]] = []

    def recorded(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, result))
        return result
    setattr(owner, name, recorded)
    try:
        yield calls
    finally:
        setattr(owner, name, original)


@pytest.fixture
def tiny_config() -> RestConfig:
    return make_tiny_config()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def speech_like(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated signal (pitch + two formant-ish partials), float32 mono."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 120 + 20 * np.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * math.pi * 4.0 * t + rng.uniform(0, 6.28)))
    x = 0.2 * envelope * voiced + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)


@pytest.fixture(scope="session")
def wav(tmp_path_factory) -> str:
    """1.5 s of speech-like audio as a stereo 44.1 kHz wav (what the CLI must resample)."""
    import soundfile
    path = tmp_path_factory.mktemp("a") / "speech.wav"
    soundfile.write(path, np.stack([speech_like(1.5, 44100)] * 2, 1), 44100)
    return str(path)


def distilled_config(steps: int = 2, checked: float = 2.0) -> RestConfig:
    """The tiny model as a student distilled to ``steps`` steps of one branch, Joint CFG 6
    folded in, checked to give faces under Joint CFG up to ``checked`` (as the bundled default)."""
    import dataclasses
    from reference.config import ProvenanceConfig
    cfg = make_tiny_config()
    cfg.sampling = dataclasses.replace(cfg.sampling, steps=steps, cfg_mode="none", cfg_scale=checked)
    cfg.provenance = ProvenanceConfig(kind="distilled", method="progressive+dmd", steps=steps,
                                      guidance_scale=6.0, joint_scale_checked=checked)
    return cfg.validate()


@pytest.fixture(scope="session")
def distilled_dir(tmp_path_factory) -> Path:
    """A saved checkpoint of random tiny weights that says it is distilled (distilled_config)."""
    from reference.checkpoint import save_checkpoint
    from reference.model import RestModel
    return save_checkpoint(RestModel.random(distilled_config()), tmp_path_factory.mktemp("c") / "k2")


@pytest.fixture
def speech_3s() -> np.ndarray:
    return speech_like(3.0)


def synthetic_clip(frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """A smooth moving blob video in [-1, 1], shape (1, 3, frames, size, size)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    color = torch.rand(3, generator=g) * 2 - 1
    out = []
    for f in range(frames):
        cx, cy = 0.4 * math.sin(0.3 * f), 0.4 * math.cos(0.2 * f)
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.1)
        out.append(color[:, None, None] * blob - 0.5 * (1 - blob))
    return torch.stack(out, dim=1)[None].clamp(-1, 1)


def without_blinks(data, index: int, clip) -> np.ndarray:
    """Clip ``index`` of the synthetic ``data`` re-rendered frame by frame from its own truth, but
    with the eyes never closing (the known answer of the blink figure: none)."""
    from reference.data.synthetic import FaceState, render_frame
    ident, size = data.identity(index), clip.frames.shape[1]
    return np.stack([render_frame(ident, size, FaceState(**{f: 0.0 if f == "blink" else float(clip.truth[f][n])
                                                            for f in FaceState.__dataclass_fields__}))
                     for n in range(len(clip.frames))])


# ------------------------------------------------------------------ raw videos of real people

RAW_SIZE = (640, 360)   # the test videos' frame: large enough for faces of 100+ pixels


@pytest.fixture(scope="session")
def raw_videos(tmp_path_factory):
    """A folder of raw videos as `rest-fast prepare` meets them, and the truth of the good one.

    ``people.mp4``: registry photographs of real people moved, scaled and turned along known
    paths beside distractors, with a cut, a faceless stretch and a second face, and speech
    (reference.data.portrait_videos.people_shots). Beside it, one file per kind of bad input, each
    named for the reason it must be skipped."""
    pytest.importorskip("dlib", reason="needs the prepare extra")
    pytest.importorskip("skimage", reason="needs scikit-image's photographs")
    import dataclasses

    import av
    from PIL import Image
    from reference.data.portrait_videos import Shot, people_shots, write_video
    root = tmp_path_factory.mktemp("raw")
    speech = speech_like(4.0)
    truth = write_video(root / "people.mp4", people_shots(RAW_SIZE), size=RAW_SIZE, speech=speech)
    faceless = [Shot(3.0, None, background="rocket", distractors=(("chelsea", (0.5, 0.5), 0.6),))]
    write_video(root / "bad" / "faceless.mp4", faceless, size=RAW_SIZE, speech=speech)
    still = [Shot(1.0, "hopper", centre=lambda t: (320, 180), scale=lambda t: 0.75)]
    write_video(root / "bad" / "silent.mp4", still, size=RAW_SIZE, speech=np.zeros(100, np.float32))
    write_video(root / "bad" / "short.mp4", [dataclasses.replace(still[0], seconds=1.48)], size=RAW_SIZE,
                speech=speech)
    write_video(root / "bad" / "no_audio.mp4", still, size=RAW_SIZE)
    (root / "bad" / "unreadable.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(root / "bad" / "still_image.mp4", format="PNG")
    with av.open(str(root / "bad" / "audio_only.mp4"), "w") as c:
        stream = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(speech[None, :16000], format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    with av.open(str(root / "bad" / "zero_seconds.mp4"), "w") as c:   # headers, no frames
        video = c.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        c.add_stream("aac", rate=16000)
        c.start_encoding()
    return root, truth


@pytest.fixture(scope="session")
def prepared(raw_videos, tmp_path_factory):
    """`prepare` run over :func:`raw_videos` with two worker processes: (out dir, manifest lines,
    counts)."""
    from reference.data.prepare import PrepareOptions, prepare_folder, read_manifest
    root, _ = raw_videos
    out = tmp_path_factory.mktemp("prepared")
    # Segments from 2 s on (the default keeps 4 s, a training window): the test shots are short.
    counts = prepare_folder(root, out, PrepareOptions(min_seconds=2.0), workers=2, progress=False)
    return out, read_manifest(out), counts
