"""Model checkpoints: one file that carries the LRAMConfig and the state_dict (STYLE.md §9).

`save_model` (= `LRAM.save`) writes atomically (`lramlab._io.atomic_torch_save`), so a crash never
leaves a half-written checkpoint. `model_payload` / `model_from_payload` let a
training checkpoint embed the model part next to its optimizer state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from lramlab._io import UnsafeCheckpointError, safe_torch_load

from .agent import FORMAT, LRAM, VERSION, check_finite_weights, model_payload, nonfinite_tensors  # noqa: F401
from .config import LRAMConfig


def model_from_payload(payload: dict, where: str = "checkpoint", map_location=None):
    """Rebuild the model a payload describes and load its weights (strict)."""
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
    if isinstance(payload["state_dict"], dict):
        check_finite_weights(payload["state_dict"], where)
    model = LRAM(cfg)
    if map_location is not None:
        model.to(map_location)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"{where}: weights do not fit the config {cfg}: {err}") from err
    return model


def save_model(model, path: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """Write `model` (config + weights) to `path` atomically; refuses non-finite weights."""
    return LRAM.save(model, path, extra)


def load_checkpoint_payload(path: Union[str, Path], map_location=None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint {path} does not exist")
    try:
        return safe_torch_load(path, map_location=map_location or "cpu")
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - name the file whatever failed
        raise ValueError(f"{path}: cannot read model checkpoint: {err}") from err


def load_model(path: Union[str, Path], map_location=None):
    """Rebuild the model saved at `path` from its own config; weights on `map_location` (default CPU)."""
    payload = load_checkpoint_payload(path, map_location)
    return model_from_payload(payload, where=str(path), map_location=map_location)
