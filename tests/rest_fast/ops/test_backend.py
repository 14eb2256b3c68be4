"""The rules that pick an op's implementation and the precision of its matrix products."""
import pytest
import torch

from rest_fast.ops import _triton, force_backend, fp32_dot_precision, set_fp32_dot_precision


def test_fp32_tiles_multiply_in_tf32_unless_asked_for_ieee():
    old = fp32_dot_precision()
    try:
        set_fp32_dot_precision("tf32")
        assert _triton.dot_precision(torch.float32) == "tf32"
        set_fp32_dot_precision("ieee")
        assert _triton.dot_precision(torch.float32) == "ieee"
        assert _triton.dot_precision(torch.bfloat16) == "tf32"   # half types: tensor cores anyway
        with pytest.raises(ValueError, match="one of"):
            set_fp32_dot_precision("fp64")
    finally:
        set_fp32_dot_precision(old)


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="'triton', 'torch' or None"):
        with force_backend("cuda"):
            pass
    with force_backend("torch"):
        assert not _triton.use_triton(torch.zeros(1))
