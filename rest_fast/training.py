"""The fused training ops in a reference model, as Liger-Kernel's ``apply_liger_kernel_to_*``
puts its kernels into a Hugging Face model:

    from rest_fast import apply_kernels
    patch = apply_kernels(model)        # a reference RestModel (or its A2VDiT), in place
    loss, logs = student_loss(model.dit, teacher.dit, clip, cfg.asd)    # now through the kernels
    patch.undo()                        # the plain reference again

What is routed, per DiT (the model's own and, for the student stage, the frozen teacher's):

    teacher self-attention   FullAttention        -> block_attention, AttentionLayout.full
    student self-attention   BlockMaskAttention   -> block_attention, AttentionLayout.student
                                                     (no (L x L) mask is ever built)
    audio cross-attention    CrossAttention.attend -> frame_audio_attention (eq. 13)
    LayerNorm + AdaLN        DiTBlock.norm_modulate -> adaln_modulate
    noise and target         A2VDiT.noise_and_target -> async_noise (eq. 15-17)

The reference exposes each as a small seam (a class attribute or a method, documented there) and
never imports this module; ``apply_kernels`` shadows them with instance attributes and ``undo``
deletes those. Every op keeps its rule (ops/_triton.py): CUDA tensors run the Triton kernels, CPU
tensors the torch twins, ``force_backend("triton")`` the kernels through Triton's interpreter.
All are differentiable: the attention kernels have FlashAttention-2 style backward kernels, the
fused LayerNorm + AdaLN a backward kernel that recomputes each row's statistics from x.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from reference.dit import A2VDiT, BlockMaskAttention, FullAttention, apply_rope
from reference.train import Backend

from .ops import AttentionLayout, adaln_modulate, async_noise, block_attention, frame_audio_attention
from .ops._triton import HAS_TRITON, force_backend, interpreting, use_triton


# ---- the routed pieces ----------------------------------------------------------------------

class FusedFullAttention(FullAttention):
    """The teacher's full attention through the block-sparse kernel (one rectangle)."""

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k = apply_rope(q, self.angles), apply_rope(k, self.angles)
        return block_attention(q, k, v, _full_layout(q.shape[2])).transpose(1, 2)


class FusedBlockMaskAttention(BlockMaskAttention):
    """The student's [sink | W previous chunks | current chunk] pass through the block-sparse kernel:
    the same keys as the reference, the layout instead of its dense mask."""

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        keys, values = self.keys_values(k, v)
        layout = _student_layout(self.k, self.sink_len, self.chunk_len, self.use_sink, self.use_prev,
                                 self.prev_chunks)
        return block_attention(apply_rope(q, self.q_angles), keys, values, layout).transpose(1, 2)


# Layouts are built once per shape (every block of every step asks for the same one).
_full_layout = functools.lru_cache(maxsize=32)(AttentionLayout.full)
_student_layout = functools.lru_cache(maxsize=32)(AttentionLayout.student)


def fused_audio_attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """CrossAttention.attend for the per-frame audio attention: (N, H, P, hd) queries of a frame
    over its (N, H, A, hd) audio tokens, as the kernel's (N, P, H, hd) views."""
    return frame_audio_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def fused_norm_modulate(norm, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """DiTBlock.norm_modulate in one kernel pass (x (B, F, P, D); shift, scale (B, F, D))."""
    if use_triton(x):   # the kernel reads x contiguous, shift/scale with one shared layout
        x = x.contiguous()
        if shift.stride() != scale.stride() or shift.stride(-1) != 1:
            shift, scale = shift.contiguous(), scale.contiguous()
    return adaln_modulate(x, shift, scale, norm.eps)


# ---- applying and undoing -------------------------------------------------------------------

@dataclass
class KernelPatch:
    """What ``apply_kernels`` changed: (object, attribute) pairs it shadowed; ``undo`` restores."""
    shadowed: list = field(default_factory=list)

    def undo(self) -> None:
        for obj, name in reversed(self.shadowed):
            if name in vars(obj):
                delattr(obj, name)
        self.shadowed.clear()

    def __enter__(self) -> "KernelPatch":
        return self

    def __exit__(self, *exc) -> None:
        self.undo()


def _shadow(patch: KernelPatch, obj, name: str, value) -> None:
    if name in vars(obj):
        raise RuntimeError(f"{type(obj).__name__}.{name} is already patched: apply_kernels once "
                           "per model (undo the earlier patch first)")
    setattr(obj, name, value)
    patch.shadowed.append((obj, name))


def dits_of(model) -> list[A2VDiT]:
    if isinstance(model, A2VDiT):
        return [model]
    dits = [m for m in model.modules() if isinstance(m, A2VDiT)]
    if not dits:
        raise TypeError(f"apply_kernels: no A2VDiT in {type(model).__name__}: pass a RestModel or its dit")
    return dits


def apply_kernels(model, *, attention: bool = True, audio_attention: bool = True,
                  adaln: bool = True, noise: bool = True) -> KernelPatch:
    """Route the training passes of ``model`` (a RestModel, an A2VDiT, or a module holding them)
    through the fused ops, in place; returns the patch (``patch.undo()``, or use it as a context
    manager). Each group can be left out. Parameters, buffers and state dicts are untouched, so
    a checkpoint trained with the kernels is a plain reference checkpoint."""
    patch = KernelPatch()
    try:
        for dit in dits_of(model):
            if attention:
                _shadow(patch, dit, "teacher_topology", FusedFullAttention)
                _shadow(patch, dit, "student_topology", FusedBlockMaskAttention)
            if noise:
                _shadow(patch, dit, "noise_and_target", async_noise)
            for block in dit.blocks:
                if adaln:
                    _shadow(patch, block, "norm_modulate", fused_norm_modulate)
                if audio_attention:
                    _shadow(patch, block.audio_attn, "attend", fused_audio_attend)
    except Exception:
        patch.undo()
        raise
    return patch


def kernels_active(model) -> bool:
    """Whether ``apply_kernels`` has patched (any DiT of) ``model``."""
    return any("teacher_topology" in vars(d) or any("norm_modulate" in vars(b) for b in d.blocks)
               for d in dits_of(model))


class KernelBackend(Backend):
    """``rest-fast train --kernels on``: the DiT stages through ``apply_kernels``. On CUDA the
    Triton kernels run; on CPU the ops' torch twins, or, when TRITON_INTERPRET=1 is set, the
    kernels themselves in Triton's interpreter (slow: for checking, not for training)."""

    def __init__(self, device: torch.device):
        self.interpret = device.type != "cuda" and interpreting() and HAS_TRITON
        self.name = ("kernels (Triton)" if device.type == "cuda" else
                     "kernels (Triton interpreter)" if self.interpret else "kernels (torch twins on CPU)")
        self.patches: list[KernelPatch] = []

    def prepare(self, models) -> None:
        self.patches = [apply_kernels(m) for m in models]

    def step(self):
        return force_backend("triton") if self.interpret else contextlib.nullcontext()


def training_backend(choice: str, device: torch.device) -> Backend:
    """``--kernels auto|on|off`` on ``device``: auto is on for CUDA (the Triton kernels) and off
    on CPU, where the twins compute what the reference does with no gain."""
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"--kernels must be auto, on or off, not {choice!r}")
    if choice == "on" or (choice == "auto" and device.type == "cuda"):
        return KernelBackend(device)
    return Backend()


__all__ = ["apply_kernels", "KernelPatch", "kernels_active", "KernelBackend", "training_backend",
           "FusedFullAttention",
           "FusedBlockMaskAttention", "fused_audio_attend", "fused_norm_modulate"]
