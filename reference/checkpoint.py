"""Checkpoints: a directory with ``config.json`` (a RestConfig) and ``model.safetensors``.

Saving is atomic (a temporary directory renamed into place). Loading checks every tensor against
the config before touching the model, and a mismatch names each offending tensor.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import RestConfig
from .model import RestModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, unreadable or does not match its config."""


def save_checkpoint(model: RestModel, directory: str | os.PathLike) -> Path:
    """Write ``directory/config.json`` and ``directory/model.safetensors`` atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        (tmp / CONFIG_NAME).write_text(model.cfg.to_json())
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "rest-fast"})
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_config(directory: str | os.PathLike) -> RestConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} has no {CONFIG_NAME}: "
                              "pass a directory written by save_checkpoint / rest-fast train")
    try:
        return RestConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid rest-fast config: {e}") from None


def mismatches(expected: dict[str, torch.Size], found: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a model's tensors and a file's tensors."""
    problems = [f"shape of {k}: file {tuple(found[k].shape)}, config {tuple(s)}"
                for k, s in expected.items() if k in found and found[k].shape != s]
    problems += [f"missing {k} {tuple(s)}" for k, s in expected.items() if k not in found]
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in found.items() if k not in expected]
    return problems


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu") -> RestModel:
    """Build the model its config describes and load its weights; fail loudly on any mismatch."""
    cfg = load_config(directory)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{weights} could not be read ({e}); the file is damaged") from None
    model = RestModel(cfg)
    problems = mismatches({k: v.shape for k, v in model.state_dict().items()}, state)
    if problems:
        shown = "; ".join(problems[:20]) + (f"; ... {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"checkpoint {str(directory)!r} does not match its config "
                              f"({cfg.name} preset, {len(problems)} tensors): {shown}")
    model.load_state_dict(state)
    return model.to(device).eval()
