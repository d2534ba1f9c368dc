"""Which parameters a fine-tuning run trains (`TrainConfig.freeze`, App. D.3)."""
from __future__ import annotations

from typing import Sequence

import torch

def _encoder_modules(model) -> list[str]:
    names = [n for n, _ in model.named_children()]
    return [n for n in names if "enc" in n.lower() or "embed" in n.lower() or n.lower() in ("ln", "norm", "embed_ln")]


def apply_freeze(model: torch.nn.Module, specs: Sequence[str]) -> list[str]:
    """Freeze parameters by part; returns the names of the frozen parameters.

    "encoders": state/image/RTG/reward encoders and their LayerNorm; "backbone": all backbone
    blocks; "backbone:N": the first N backbone blocks; "head": the action head; anything else is
    a parameter-name prefix.
    """
    frozen: list[str] = []
    params = dict(model.named_parameters())

    def _freeze(prefixes: Sequence[str], what: str):
        hit = [n for n in params if any(n == p or n.startswith(p + ".") for p in prefixes)]
        if not hit:
            raise ValueError(f"freeze={what!r} matches no parameter; top-level modules: "
                             f"{[n for n, _ in model.named_children()]}")
        for n in hit:
            params[n].requires_grad_(False)
        frozen.extend(hit)

    for spec in specs:
        if spec == "encoders":
            _freeze(_encoder_modules(model), spec)
        elif spec == "backbone":
            _freeze(["backbone"], spec)
        elif spec.startswith("backbone:"):
            k = int(spec.split(":", 1)[1])
            blocks = _backbone_block_prefixes(model)
            if k > len(blocks):
                raise ValueError(f"freeze={spec!r}: the backbone has only {len(blocks)} blocks")
            if k:
                _freeze(blocks[:k], spec)
        elif spec == "head":
            _freeze([n for n, _ in model.named_children() if "head" in n.lower()], spec)
        else:
            _freeze([spec], spec)
    return sorted(set(frozen))


def _backbone_block_prefixes(model) -> list[str]:
    """Parameter prefixes of the backbone's blocks, in depth order."""
    bb = getattr(model, "backbone", None)
    if bb is None:
        raise ValueError("model has no .backbone to freeze blocks of")
    if hasattr(bb, "block_prefixes"):
        return [f"backbone.{p}" for p in bb.block_prefixes()]
    # the first ModuleList of the backbone holds its blocks
    for name, mod in bb.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            return [f"backbone.{name}.{i}" for i in range(len(mod))]
    raise ValueError("cannot find the backbone's block list (no nn.ModuleList inside .backbone)")


