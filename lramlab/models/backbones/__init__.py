"""Backbone registry: name -> class, imported lazily (STYLE.md §4).

Every backbone is a `torch.nn.Module` built as `Cls(cfg)` from a resolved `LRAMConfig` with
  forward(x: (B, L, D), output_hidden_states=False) -> y (B, L, D) | (y, [h_0, ..., h_{N-1}])
  init_state(batch_size, device=None, dtype=None) -> state
  step(x: (B, l, D), state) -> (y (B, l, D), state)      l >= 1 tokens
Inputs are already LayerNorm'ed token embeddings; each backbone ends with its own final norm.
"""
from __future__ import annotations

import importlib

# name -> "module:Class"; the module is imported only when the backbone is built.
REGISTRY: dict[str, str] = {
    "xlstm": "lramlab.models.backbones.xlstm:XLSTMBackbone",
    "mamba": "lramlab.models.backbones.mamba:MambaBackbone",
    "dt": "lramlab.models.backbones.dt:DTBackbone",
}


def backbone_class(name: str):
    """The class registered under `name` (imports its module)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_backbone(cfg):
    """Build the backbone named by `cfg.backbone` from the resolved LRAMConfig."""
    return backbone_class(cfg.backbone)(cfg)


def available_backbones() -> dict[str, str]:
    """name -> "" if its module imports here, else the reason it does not."""
    out = {}
    for name in REGISTRY:
        try:
            backbone_class(name)
            out[name] = ""
        except Exception as err:  # noqa: BLE001 - report any import failure by name
            out[name] = f"{type(err).__name__}: {err}"
    return out
