"""rest_fast.ops.roofline: the FLOPs each launch is charged are the ones its torch twin does
(counted by torch's FlopCounterMode), and the chunk's launches cover every kernel a streaming
forward calls."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from reference.config import get_config
from rest_fast.ops import launch, roofline
from rest_fast.ops.audio_attention import frame_audio_attention_torch
from rest_fast.ops.kv_cache import RopeTable
from rest_fast.ops.sink_attention import sink_cache_attention_torch


def counted_flops(fn, *args) -> int:
    """FLOPs of fn's matmuls (SDPA through its math path: the CPU's fused one is not counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


@pytest.mark.parametrize("W", [1, 3])
def test_sink_attention_is_charged_the_twins_matmuls(W):
    rows, H, frames, grid, D, sink = 2, 3, 2, 3, 16, 5
    L = frames * grid * grid
    q, k = torch.randn(rows, H, L, D), torch.randn(rows, H, L, D)
    v = torch.randn(rows, L, H, D).transpose(1, 2)
    sk, sv = torch.randn(rows, H, sink, D), torch.randn(rows, H, sink, D)
    rk, rv = torch.randn(rows, W + 1, H, L, D), torch.randn(rows, W + 1, H, L, D)
    slot, prev_count = torch.zeros(rows, dtype=torch.long), torch.full((rows,), W)
    window = RopeTable.for_frames(torch.arange(1, W * frames + 1.0), grid, D, 1e4)
    twin = counted_flops(sink_cache_attention_torch, q, k, v, sk, sv, rk, rv, slot, prev_count, window)
    cost = roofline.sink_cache_attention_cost(rows, L, H, D, sink, W)
    attention_flops = 4 * rows * H * L * (sink + (W + 1) * L) * D        # QK^T and PV
    assert twin == attention_flops
    assert attention_flops <= cost.flops <= 1.1 * attention_flops      # plus RoPE on read


def test_audio_attention_is_charged_the_twins_matmuls():
    frames, P, A, H, D = 3, 7, 4, 2, 16
    q = torch.randn(frames, P, H, D)
    k, v = torch.randn(frames, A, H, D), torch.randn(frames, A, H, D)
    cost = roofline.frame_audio_attention_cost(1, frames, P, A, H, D)
    assert counted_flops(frame_audio_attention_torch, q, k, v) == cost.flops


def test_a_blocks_linear_layers_are_charged_what_they_compute():
    """A block's per-token linear layers at the cpu preset, run on its tokens, against the cost."""
    cfg = get_config("cpu")
    weights = roofline.block_linear_weights(cfg)
    tokens = cfg.chunk_latent_frames * cfg.tokens_per_frame
    x = torch.randn(1, tokens, cfg.dit.hidden)
    from reference.dit import A2VDiT
    block = A2VDiT(cfg).blocks[0]
    layers = [m for name, m in block.named_modules() if isinstance(m, torch.nn.Linear) and not name.endswith(".kv")]
    assert sum(m.weight.numel() for m in layers) == weights
    with FlopCounterMode(display=False) as counter:
        for m in layers:
            m(torch.randn(1, tokens, m.in_features))
    assert counter.get_total_flops() == roofline.linear_cost(1, tokens, weights).flops
    assert roofline.linear_cost(1, tokens, weights).bytes == 2 * weights        # bf16, read once


def test_the_chunk_counts_every_streaming_kernel_and_scales_with_the_sampler():
    cfg = get_config("paper")
    bundled = roofline.chunk_launches(cfg, steps=2, branches=1)
    paper = roofline.chunk_launches(cfg, steps=8, branches=2)
    kernels = {cost.op for cost, _ in bundled if not cost.op.startswith("torch")}
    # What rest_fast/model.py launches in a streaming forward (training kernels aside).
    assert kernels == {"adaln:_adaln_kernel", "kv_cache:_kv_cache_write_kernel",
                       "sink_attention:_sink_cache_attention_kernel", "audio_attention:_fwd_kernel",
                       "cfg_euler:_cfg_euler_kernel"} and kernels <= set(launch.LAUNCHES)
    depth = cfg.dit.depth
    counts = {cost.op: n for cost, n in bundled}
    assert counts["sink_attention:_sink_cache_attention_kernel"] == 2 * depth
    assert counts["adaln:_adaln_kernel"] == 2 * (2 * depth + 1) and counts["cfg_euler:_cfg_euler_kernel"] == 2
    h100 = roofline.PEAKS["H100 SXM"]
    for (b, nb), (p, n_p) in zip(bundled, paper):       # 4x the forwards of 2x the rows: at least 8x
        assert n_p == 4 * nb and p.flops == pytest.approx(2 * b.flops)
        assert n_p * p.floor_s(h100) >= 4 * nb * b.floor_s(h100)
    md, data = roofline.table(cfg, roofline.SAMPLERS)
    assert "the chunk, rest_fast's kernels" in md
    assert data["the paper's sampler"]["chunk_all_s"]["A100"] > data["the paper's sampler"]["chunk_all_s"]["H100 SXM"]
