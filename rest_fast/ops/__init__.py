"""Fused Triton ops of REST's hot path, each beside its plain-torch twin (``<op>_torch``). One
file per op:

    kv_cache.py          QK-norm + 3D RoPE + ring-buffer KV cache write (device-side slot index)
    sink_attention.py    attention over [sink | previous slot | current chunk], no concatenation
    block_attention.py   block-sparse attention for training (student block mask, teacher full)
    audio_attention.py   frame-level audio cross-attention (eq. 13), forward and backward
    async_noise.py       asynchronous noise injection + flow-matching target (eq. 15-17)
    cfg_euler.py         Joint-CFG (or multi-CFG) + Euler step, in place, for all branch rows
    adaln.py             LayerNorm fused with AdaLN-single modulation

CUDA tensors run the kernels, CPU tensors the twins; ``force_backend`` overrides that (see
_triton.py). fp32 kernels multiply in TF32 on a GPU unless ``set_fp32_dot_precision("ieee")``.
Tests: tests/rest_fast/ops/; timings: bench/test_ops.py.
"""
from ._triton import (HAS_TRITON, force_backend, fp32_dot_precision, interpreting, set_fp32_dot_precision,
                      use_triton)
from .adaln import adaln_modulate
from .async_noise import async_noise
from .audio_attention import frame_audio_attention
from .block_attention import AttentionLayout, block_attention
from .cfg_euler import cfg_euler_step_
from .kv_cache import RopeTable, kv_cache_write
from .sink_attention import sink_cache_attention

__all__ = ["HAS_TRITON", "force_backend", "fp32_dot_precision", "interpreting", "set_fp32_dot_precision",
           "use_triton", "adaln_modulate",
           "async_noise", "frame_audio_attention", "AttentionLayout", "block_attention",
           "cfg_euler_step_", "RopeTable", "kv_cache_write", "sink_cache_attention"]
