"""Triton, when it is installed, and the rule that decides which implementation an op runs.

Every op in this package has two implementations with one signature: a Triton kernel and its
plain-torch twin. By default CUDA tensors run the kernel and CPU tensors the twin (compiled Triton
has no CPU backend). ``force_backend("triton")`` runs the kernels on CPU tensors as well, through
Triton's interpreter, which must be switched on with ``TRITON_INTERPRET=1`` before this package is
imported; that is how the tests prove every kernel equal to its twin without a GPU.

Triton is optional: without it the package still imports (``@triton.jit`` becomes a no-op and the
twins run everywhere); asking for a kernel then fails with a message that says what to install.
"""
from __future__ import annotations

import contextlib
import os

import torch

try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:  # the kernels below stay plain functions that are never launched
    HAS_TRITON = False

    class _Inert:
        """Stands in for ``triton`` / ``triton.language`` so that kernel definitions parse."""

        def __getattr__(self, name):
            return _Inert()

        def __call__(self, *args, **kwargs):
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return args[0]           # @triton.jit
            return lambda fn: fn         # @triton.jit(...), @triton.autotune(...)

    triton = tl = _Inert()

_forced: str | None = None


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(x: torch.Tensor) -> bool:
    """Whether an op on ``x`` runs its Triton kernel (else its torch twin)."""
    if _forced is not None:
        if _forced == "triton" and not x.is_cuda and not interpreting():
            raise RuntimeError("Triton kernels on CPU tensors need its interpreter: set "
                               "TRITON_INTERPRET=1 before importing rest_fast")
        return _forced == "triton"
    return HAS_TRITON and x.is_cuda


def require_triton(op: str) -> None:
    if not HAS_TRITON:
        raise RuntimeError(f"{op}: the Triton kernel was asked for but Triton is not installed "
                           "(pip install triton), or use the torch backend")


@contextlib.contextmanager
def force_backend(name: str | None):
    """Run every op with ``"triton"`` or ``"torch"`` inside the block (None: the default rule)."""
    global _forced
    if name not in (None, "triton", "torch"):
        raise ValueError(f"backend must be 'triton', 'torch' or None, not {name!r}")
    if name == "triton":
        require_triton("force_backend")
    old, _forced = _forced, name
    try:
        yield
    finally:
        _forced = old


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """Whether kernels must upcast tiles to fp32 before ``tl.dot``.

    Triton's interpreter stores bfloat16 as raw uint16 and multiplies the bit patterns in
    ``tl.dot`` (triton-lang/triton#11584), so under the interpreter bf16 tiles are upcast; casts
    are exact there, so bf16 loads, stores and elementwise math (always done in fp32 here) are
    still checked. Compiled kernels keep bf16 operands and accumulate in fp32, as on the GPU."""
    return interpreting() and dtype == torch.bfloat16


FP32_DOT_PRECISIONS = ("tf32", "tf32x3", "ieee")
_fp32_dot = os.environ.get("REST_FAST_FP32_DOT", "tf32")


def set_fp32_dot_precision(name: str) -> None:
    """How compiled kernels multiply fp32 tiles on a GPU: ``"tf32"`` (the default: tensor cores,
    ~1e-3 relative error per product, as torch's ``allow_tf32`` convolutions), ``"tf32x3"``
    (three TF32 products, close to fp32) or ``"ieee"`` (plain fp32 FMAs). IEEE is exact but slow
    here: its tiles spill registers (the sink attention at D = 64 spilled ~40 KB per program on
    sm_90) and each specialisation compiles for 5-17 s. Also settable before import with the
    environment variable REST_FAST_FP32_DOT. bf16/fp16 kernels always use tensor cores, and the
    interpreter (TRITON_INTERPRET=1) computes in fp32 whatever is chosen."""
    global _fp32_dot
    if name not in FP32_DOT_PRECISIONS:
        raise ValueError(f"fp32 dot precision must be one of {FP32_DOT_PRECISIONS}, not {name!r}")
    _fp32_dot = name


def fp32_dot_precision() -> str:
    return _fp32_dot


def dot_precision(dtype: torch.dtype) -> str:
    """The ``input_precision`` of ``tl.dot`` for tiles of ``dtype`` (fp32: see
    set_fp32_dot_precision; half types ignore it)."""
    return _fp32_dot if dtype == torch.float32 else "tf32"


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
