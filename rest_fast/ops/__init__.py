"""Fused Triton ops of REST's hot path, each with its plain-torch twin (see _triton.py for which
runs when). One file per op:

    kv_cache.py          QK-norm + 3D RoPE + ring-buffer KV cache write (device-side slot index)
    sink_attention.py    attention over [sink | previous slot | current chunk], no concatenation
    block_attention.py   block-sparse attention for training (student block mask, teacher full)
    audio_attention.py   frame-level audio cross-attention (eq. 13)
    async_noise.py       asynchronous noise injection + flow-matching target (eq. 15-17)
    cfg_euler.py         Joint-CFG (or multi-CFG) + Euler step, in place, for all branch rows
    adaln.py             LayerNorm fused with AdaLN-single modulation
"""
from ._triton import HAS_TRITON, force_backend, interpreting, use_triton
from .async_noise import async_noise
from .cfg_euler import cfg_euler_step_

__all__ = ["HAS_TRITON", "force_backend", "interpreting", "use_triton", "async_noise", "cfg_euler_step_"]
