"""Model checkpoints: one file that carries the LRAMConfig and the state_dict (STYLE.md §9).

`save_model` writes atomically (tmp file in the same directory + fsync + os.replace), so a
crash never leaves a half-written checkpoint. `model_payload` / `model_from_payload` let a
training checkpoint embed the model part next to its optimizer state.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .config import LRAMConfig

FORMAT = "lramlab.model"
VERSION = 1


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> Path:
    """torch.save to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def model_payload(model, extra: Optional[dict] = None) -> dict:
    """What a model checkpoint holds: format tag, config dict, state_dict, optional extra."""
    return {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(),
            "state_dict": model.state_dict(), "extra": dict(extra or {})}


def model_from_payload(payload: dict, where: str = "checkpoint", map_location=None):
    """Rebuild the model a payload describes and load its weights (strict)."""
    from .agent import LRAM

    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{where}: not an lramlab model checkpoint (format={got!r}, expected {FORMAT!r})")
    if payload.get("version", 0) > VERSION:
        raise ValueError(f"{where}: checkpoint version {payload['version']} is newer than this lramlab ({VERSION})")
    for key in ("config", "state_dict"):
        if key not in payload:
            raise ValueError(f"{where}: checkpoint has no {key!r}")
    try:
        cfg = LRAMConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: bad model config: {err}") from err
    model = LRAM(cfg)
    if map_location is not None:
        model.to(map_location)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"{where}: weights do not fit the config {cfg}: {err}") from err
    return model


def save_model(model, path: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """Write `model` (config + weights) to `path` atomically."""
    return atomic_torch_save(model_payload(model, extra), path)


def load_checkpoint_payload(path: Union[str, Path], map_location=None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - name the file whatever failed
        raise ValueError(f"{path}: cannot read model checkpoint: {err}") from err


def load_model(path: Union[str, Path], map_location=None):
    """Rebuild the model saved at `path` from its own config; weights on `map_location` (default CPU)."""
    payload = load_checkpoint_payload(path, map_location)
    return model_from_payload(payload, where=str(path), map_location=map_location)
