"""End-to-end speed of the reference pipeline (Algorithm 1 + Whisper + SpeechAE + VAE decode).

Real-time factor = wall time / duration of the video made; below 1.0 keeps up with live audio.
Target: the cpu preset streams at real time (RTF <= 1.0) on 2 CPU cores.
"""
import numpy as np
import pytest
import torch

from reference.config import get_config
from reference.model import RestModel
from reference.pipeline import ReferenceStream, generate
from reference.speech import chunk_windows

SECONDS = 4.8  # five chunks at the paper's chunk length


def speech(seconds, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 140 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


@pytest.mark.parametrize("preset", ["cpu"])
def test_reference_real_time_factor(benchmark, preset):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = RestModel.random(get_config(preset)).to(device).eval()
    res = model.cfg.resolution
    image = np.full((res, res, 3), 128, np.uint8)
    audio = speech(SECONDS)
    generate(model, image, audio[: model.cfg.samples_per_chunk])  # warm-up
    benchmark.pedantic(generate, args=(model, image, audio), rounds=3, iterations=1)
    rtf = benchmark.stats.stats.median / SECONDS
    benchmark.extra_info.update(real_time_factor=round(rtf, 3), device=device,
                                threads=torch.get_num_threads(), preset=preset)
    print(f"\n{preset} preset on {device}: real-time factor {rtf:.3f} (median of 3, {SECONDS} s of video)")
    assert rtf <= 1.0, f"the {preset} preset is slower than real time: RTF {rtf:.2f}"


@pytest.mark.parametrize("preset", ["cpu"])
def test_reference_steady_chunk_latency(benchmark, preset):
    """One chunk (audio features + 8 steps x CFG + decode) once the stream is warm."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = RestModel.random(get_config(preset)).to(device).eval()
    cfg = model.cfg
    stream = ReferenceStream(model, np.full((cfg.resolution,) * 2 + (3,), 128, np.uint8))
    window = chunk_windows(torch.from_numpy(speech(2.0)), cfg, num_chunks=1)[0]
    stream.step(window)
    benchmark.pedantic(stream.step, args=(window,), rounds=5, iterations=1)
    chunk_s = cfg.frames_per_chunk / cfg.fps
    benchmark.extra_info.update(chunk_seconds=chunk_s, device=device)
    print(f"\n{preset}: {benchmark.stats.stats.median * 1000:.0f} ms per {chunk_s:.2f} s chunk")
