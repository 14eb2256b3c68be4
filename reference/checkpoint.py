"""Checkpoints: a directory with ``config.json`` (a RestConfig) and ``model.safetensors``.

Saving is atomic (a temporary directory renamed into place). Loading checks every tensor against
the config before touching the model, and a mismatch names each offending tensor.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import RestConfig
from .media import as_if_created
from .model import RestModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, unreadable or does not match its config."""


def save_checkpoint(model: RestModel, directory: str | os.PathLike, state: dict | None = None,
                    extra: dict | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``directory/config.json`` and ``directory/model.safetensors`` atomically.

    state: the weights to write (default: ``model.state_dict()``); extra: more files for the same
    directory, name -> object written with ``torch.save`` (training state); dtype: store floating
    tensors in this type (float16 halves the size; loading casts back to the model's dtype).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        (tmp / CONFIG_NAME).write_text(model.cfg.to_json())
        state = model.state_dict() if state is None else state
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "rest-fast"})
        for name, obj in (extra or {}).items():
            torch.save(obj, tmp / name)
        for path in tmp.iterdir():
            as_if_created(path)
        as_if_created(tmp, directory=True)
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


def recover_interrupted_save(latest: Path) -> None:
    """save_checkpoint swaps directories in two renames (latest -> .latest.old-PID, then the new
    one -> latest). A run killed between them leaves no ``latest``, and --resume would start
    from step 0; put the previous checkpoint back instead."""
    if latest.exists():
        return
    old = sorted(latest.parent.glob(f".{latest.name}.old-*"), key=lambda p: p.stat().st_mtime)
    old = [p for p in old if all((p / f).is_file() for f in ("config.json", "model.safetensors",
                                                                 "train_state.pt"))]
    if old:
        old[-1].rename(latest)
        print(f"rest-fast train: recovered {latest} from an interrupted save", file=sys.stderr)


def resolve_checkpoint_dir(directory: str | os.PathLike) -> Path:
    """A checkpoint directory, or a training run directory (its ``latest/`` checkpoint)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() and (directory / "latest" / CONFIG_NAME).is_file():
        return directory / "latest"
    return directory


def load_config(directory: str | os.PathLike) -> RestConfig:
    directory = resolve_checkpoint_dir(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} has no {CONFIG_NAME}: "
                              "pass a directory written by save_checkpoint / rest-fast train")
    try:
        return RestConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid rest-fast config: {e}") from None


# Buffers added after checkpoints were first written; a file without them loads with the
# defaults, which reproduce what those versions computed.
OPTIONAL_BUFFERS = ("audio_mean", "audio_whiten")


def mismatches(expected: dict[str, torch.Size], found: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a model's tensors and a file's tensors."""
    problems = [f"shape of {k}: file {tuple(found[k].shape)}, config {tuple(s)}"
                for k, s in expected.items() if k in found and found[k].shape != s]
    problems += [f"missing {k} {tuple(s)}" for k, s in expected.items() if k not in found]
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in found.items() if k not in expected]
    return problems


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu") -> RestModel:
    """Build the model its config describes and load its weights; fail loudly on any mismatch."""
    directory = resolve_checkpoint_dir(directory)
    cfg = load_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{weights} could not be read ({e}); the file is damaged") from None
    model = RestModel(cfg)
    for name in OPTIONAL_BUFFERS:  # written by older versions without them: identity, as then
        state.setdefault(name, model.state_dict()[name])
    problems = mismatches({k: v.shape for k, v in model.state_dict().items()}, state)
    if problems:
        shown = "; ".join(problems[:20]) + (f"; ... {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"checkpoint {str(directory)!r} does not match its config "
                              f"({cfg.name} preset, {len(problems)} tensors): {shown}")
    model.load_state_dict(state)
    model.source = str(directory)
    return model.to(device).eval()
