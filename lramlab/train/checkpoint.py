"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is one `torch.save` dict (written to a temporary file, fsynced, then
`os.replace`d, so a reader never sees half a file and a crash leaves the previous one):

    format        "lramlab-train-checkpoint", version 1
    step          optimizer updates done
    model_config  the LRAMConfig as a dict (a checkpoint alone rebuilds its model)
    model         model state dict (unwrapped from DDP)
    optimizer, scheduler, scaler   their state dicts
    optimizer_param_names   per optimizer group, its parameters' names (so a resume maps the
                  moments by name when the grouping changed; older checkpoints lack it and
                  `train.step.load_optimizer_state` assumes the grouping they were made with)
    rng           per rank: python, numpy, torch (and CUDA) generator states
    sampler       per rank: the batch sampler's state_dict()
    train_config  the TrainConfig as a dict
    metrics       last logged metrics (for humans)

`load_model_from_checkpoint(path)` rebuilds the model from a training checkpoint or from a
file written by `model.save` (models' own format), so eval and fine-tuning accept either.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lramlab._io import UnsafeCheckpointError, atomic_torch_save, safe_torch_load
from lramlab.models.checkpoint import check_finite_weights

FORMAT = "lramlab-train-checkpoint"
VERSION = 1


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint file is missing, unreadable or not what was expected; the message names its path.

    A ValueError (bad input: `lramlab.cli` prints it as one line) and, as before, a RuntimeError."""


def rng_state() -> dict:
    """The generators a training step draws from (python, numpy, torch, CUDA)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {  # plain values and tensors only: checkpoints load with torch.load(weights_only=True)
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]) if isinstance(py, (list, tuple)) else py)
    kind, keys, *rest = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_to_dict(cfg: Any) -> dict:
    """A config (e.g. LRAMConfig) as a plain dict: its own to_dict() when it has one."""
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if is_dataclass(cfg):
        return dict(asdict(cfg))
    if isinstance(cfg, dict):
        return dict(cfg)
    raise TypeError(f"cannot turn a {type(cfg).__name__} into a config dict")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(
        model, torch.nn.parallel.DistributedDataParallel) else model


def save_checkpoint(path: str | os.PathLike, *, step: int, model: torch.nn.Module,
                    optimizer=None, scheduler=None, scaler=None,
                    rng: list[dict] | None = None, sampler: list[dict] | None = None,
                    train_config: dict | None = None, metrics: dict | None = None,
                    optimizer_param_names: list[list[str]] | None = None) -> Path:
    """Write a training checkpoint atomically. `rng` / `sampler` are lists indexed by rank."""
    m = unwrap(model)
    mcfg = getattr(m, "config", None) or getattr(m, "cfg", None)
    state = m.state_dict()
    check_finite_weights(state, f"checkpoint {path} (not written)")
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "model_config": config_to_dict(mcfg) if mcfg is not None else None,
        "model": state,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_param_names": optimizer_param_names,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng if rng is not None else [rng_state()],
        "sampler": sampler,
        "train_config": train_config,
        "metrics": metrics or {},
    }
    return atomic_torch_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a training checkpoint written by `save_checkpoint` (validated)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = safe_torch_load(path, map_location=map_location)
    except UnsafeCheckpointError as err:
        raise CheckpointError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - report which file failed, with the cause
        raise CheckpointError(f"checkpoint {path} could not be read: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a training checkpoint (field 'format' is "
            f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}, "
            f"expected {FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r}, expected {VERSION}")
    if isinstance(ckpt.get("model"), dict):
        try:
            check_finite_weights(ckpt["model"], f"checkpoint {path}")
        except ValueError as err:
            raise CheckpointError(str(err)) from None
    return ckpt


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory -> its checkpoint (model.pt, else checkpoints/last.pt); a file -> itself."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "checkpoints" / "last.pt", p / "model.pt"):
            if cand.is_file():
                return cand
        raise CheckpointError(
            f"run directory {p} holds neither checkpoints/last.pt nor model.pt")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    return p


def build_from_config_dict(d: dict) -> torch.nn.Module:
    from lramlab.models import LRAMConfig, build_model

    if hasattr(LRAMConfig, "from_dict"):
        return build_model(LRAMConfig.from_dict(d))
    return build_model(LRAMConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}))


def load_model_from_checkpoint(path: str | os.PathLike,
                               map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Model from a run dir, a training checkpoint, or a `model.save` file (eval mode)."""
    p = resolve_checkpoint(path)
    try:
        raw = safe_torch_load(p, map_location=map_location)
    except UnsafeCheckpointError as err:
        raise CheckpointError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - truncated, not a torch file, unpickling: name the file
        raise CheckpointError(f"checkpoint {p} could not be read (damaged, or not a checkpoint): "
                              f"{type(err).__name__}: {err}") from err
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        if raw.get("model_config") is None:
            raise CheckpointError(f"{p}: training checkpoint carries no model_config")
        if isinstance(raw.get("model"), dict):
            try:
                check_finite_weights(raw["model"], f"checkpoint {p}")
            except ValueError as err:
                raise CheckpointError(str(err)) from None
        try:
            model = build_from_config_dict(raw["model_config"])
            model.load_state_dict(raw["model"])
        except (TypeError, ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{p}: its model config and weights do not rebuild a model: {err}") from err
    else:
        from lramlab.models import load_model

        try:
            model = load_model(p)
        except ValueError as err:
            raise CheckpointError(str(err)) from err
    model.to(map_location)
    model.eval()
    return model
