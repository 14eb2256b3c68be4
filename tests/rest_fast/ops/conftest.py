"""What every op test shares: the device, the dtypes, and the tolerances per dtype (stated once).

Without a GPU, kernels run in Triton's CPU interpreter (tests/conftest.py switches it on), so the
shapes here are small; on a GPU the same tests run compiled kernels. Each test compares the
kernel (``force_backend("triton")``) with the op's torch twin on the same inputs.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

from rest_fast.ops import HAS_TRITON, fp32_dot_precision

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Absolute and relative tolerance of kernel vs twin, per dtype. Kernels load half-precision
# inputs, compute in fp32 and round once (matmul operands stay in the input dtype, as on tensor
# cores); so they are compared with the twin run in fp32 on the same inputs (``in_fp32``), whose
# result is rounded once too. A twin run in half precision rounds after every op and would drift
# further than the kernel from the exact answer.
TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
# Gradients go through one more reduction (over queries or keys) than the outputs.
GRAD_TOLERANCES = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=6e-2, rtol=6e-2),
}
# Compiled on a GPU, fp32 tiles go through tl.dot in TF32 (10-bit mantissa, like fp16's) unless
# set_fp32_dot_precision("ieee"): kernels with matrix products then get fp16's tolerances.
# The interpreter computes dots in fp32 whatever the setting.
TF32_DOTS = DEVICE.type == "cuda" and fp32_dot_precision() != "ieee"

# Hypothesis: few, small examples (the interpreter runs each program in Python; on a GPU each new
# shape class compiles for seconds). Fixed @examples span several tiles in every grid dimension.
KERNEL_SETTINGS = settings(max_examples=12, deadline=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture])

requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, grad: bool = False,
                 dots: bool = False):
    """Within the tolerance of ``dtype``; ``dots``: the kernel multiplies tiles with tl.dot (fp32
    then means TF32 on a GPU)."""
    if shares_storage(actual, expected):
        raise AssertionError("the expected value is the tested tensor itself (they share storage): "
                             "an in-place twin was given the tensor under test, not a copy")
    if dots and dtype == torch.float32 and TF32_DOTS:
        dtype = torch.float16
    tol = (GRAD_TOLERANCES if grad else TOLERANCES)[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), **tol)


def shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def in_fp32(fn, *args, **kwargs):
    """Run a twin on fp32 copies of its floating tensor arguments (in-place twins update copies:
    ``.float()`` of an fp32 tensor would be the tensor itself)."""
    def up(x):
        return x.to(torch.float32, copy=True) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
    return fn(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})


def randn(*shape, dtype=torch.float32, generator=None, scale=1.0):
    """Normal samples made in fp32 on the CPU (the same on every device), then cast and moved."""
    x = torch.randn(*shape, generator=generator) * scale
    return x.to(DEVICE, dtype)
