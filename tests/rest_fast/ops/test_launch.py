"""rest_fast/ops/launch.py is the one place a launch is decided: every kernel that a launcher
starts (``kernel[grid](...)``) has an entry, every entry is a kernel that is started, and each
launcher calls its entry's function (so the compile report checks what runs)."""
import ast
import importlib
from pathlib import Path

import pytest
import torch

from rest_fast.ops import launch

OPS = Path(launch.__file__).parent


def launched_kernels() -> set[str]:
    """``module:kernel`` for every ``kernel[grid](...)`` in rest_fast/ops."""
    found = set()
    for path in OPS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id.endswith("_kernel"):
                found.add(f"{path.stem}:{node.func.value.id}")
    return found


def test_every_launched_kernel_has_a_launch_and_no_other():
    assert launched_kernels() == set(launch.LAUNCHES)


@pytest.mark.parametrize("name", sorted(launch.LAUNCHES))
def test_each_launcher_calls_its_launch_function(name):
    module_name, kernel = name.split(":")
    module = importlib.import_module(f"rest_fast.ops.{module_name}")
    fn = launch.LAUNCHES[name]
    assert module.__dict__.get(fn.__name__) is fn, f"{module_name}.py does not use launch.{fn.__name__}"
    assert Path(module.__file__).read_text().count(fn.__name__) >= 2      # imported, and used
    assert hasattr(module, kernel)


def test_a_launch_is_a_pure_function_of_target_dtype_and_shapes():
    for target in (None, 80, 90):
        a = launch.sink_cache_attention_launch(target, torch.bfloat16, 768, 64)
        assert a == launch.sink_cache_attention_launch(target, torch.bfloat16, 768, 64)
        assert a.options == {"num_warps": a.num_warps, "num_stages": a.num_stages}
    assert launch.target_of(torch.device("cpu")) is None
