"""The streaming VAE decoders per chunk: the full decoder against the light one, in one run.

    pytest bench/test_decoders.py --benchmark -s

One steady chunk (3 latent frames -> 24 frames) of one stream through ``decode_stream``, then
the uint8 frames on the host, as ``StreamingGenerator`` renders it: fp32 and bf16 (autocast-free:
the weights and latents in that dtype). The cpu preset on CPU, the paper preset on a GPU (random
weights: speed does not depend on them). Target (cpu preset, 2 cores, fp32): the light decoder
at most 30 ms per chunk. Printed by test_summary, not asserted. On a CPU freed buffers stay in the
process as under ``StreamingGenerator`` (rest_fast.host_memory); ``REST_FAST_KEEP_FREED_MEMORY=0``
measures glibc's default instead.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from reference.config import get_config
from reference.model import videos_to_uint8
from reference.vae import CausalVideoVAE
from rest_fast.host_memory import keep_freed_memory

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
PRESET = "paper" if CUDA else "cpu"
LIGHT_WIDTH = 16
_results: dict[str, float] = {}


@pytest.fixture(scope="module")
def vaes():
    if not CUDA:
        keep_freed_memory()
    cfg = get_config(PRESET)
    torch.manual_seed(0)
    vae = CausalVideoVAE(dataclasses.replace(cfg.vae, light_width=LIGHT_WIDTH)).to(DEVICE).eval()
    return {torch.float32: vae, torch.bfloat16: copy.deepcopy(vae).to(torch.bfloat16)}


def sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("which", ["full", "light"])
def test_decoder_chunk(benchmark, vaes, which, dtype):
    vae = vaes[dtype]
    cfg = get_config(PRESET)
    g = cfg.latent_size
    z = torch.randn(1, cfg.vae.latent_channels, cfg.chunk_latent_frames, g, g, device=DEVICE, dtype=dtype)
    state = vae.new_decode_state()

    def chunk():
        with torch.inference_mode():
            frames = videos_to_uint8(vae.decode_stream(z, state, which))
        sync()
        return frames

    chunk()                                   # the sequence start: later chunks are steady
    frames = benchmark.pedantic(chunk, rounds=10, iterations=1, warmup_rounds=2)
    assert frames.shape == (1, cfg.frames_per_chunk, cfg.resolution, cfg.resolution, 3)
    _results[f"{which}:{dtype}"] = benchmark.stats.stats.median
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if CUDA else "cpu", preset=PRESET,
                                decoder=which, dtype=str(dtype), threads=torch.get_num_threads())


def test_summary(benchmark):
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    host = "" if CUDA else f", freed memory kept: {keep_freed_memory()}"
    lines = [f"\ndecoders per chunk on {torch.cuda.get_device_name() if CUDA else 'cpu'}, {PRESET} preset "
             f"(decode_stream + uint8 frames, median{host}):"]
    for dtype in (torch.float32, torch.bfloat16):
        full, light = _results.get(f"full:{dtype}"), _results.get(f"light:{dtype}")
        if full and light:
            lines.append(f"  {dtype}: full {1e3 * full:.1f} ms, light {1e3 * light:.1f} ms -> "
                         f"{full / light:.1f}x")
    print("\n".join(lines))
