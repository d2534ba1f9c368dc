"""Parameter matching of a study's backbone variants (paper §4.1: "comparable parameter counts"):
the multi-task study (`lramlab.multitask`: variants per width) and the ICL study (`lramlab.icl.study`:
variants per token layout) both use it.

`count_params(model_config)` counts a model's parameters without allocating it (meta device).
`match_dt(target_counts, width, ...)` chooses the Decision Transformer's blocks (and, only where no
block count at the recurrent width is close enough, its width) so that its count lies within
`tolerance` of the recurrent variants it is compared with. `check_param_match(groups, tolerance)`
raises a ValueError naming every variant and its count when a group's largest / smallest count
exceeds 1 + tolerance.

How DT is matched (`MultiTaskConfig.dt_match=True`, `ICLStudyConfig.dt_match=True`): the recurrent backbones keep the paper's
layout (twice DT's preset blocks at the given width); DT first keeps their width and takes the
number of blocks (1 .. twice the recurrent blocks) that gives the smallest largest/smallest ratio
among the group's counts; when that ratio is above 1 + tolerance, widths from half to twice the
group's width (multiples of lcm(8, heads)) are tried too and the (blocks, width) with the smallest
ratio wins (ties: the width nearest the group's, then fewer blocks). Why DT needs it at small
widths: its learned positional table (1600 x width) is parameters the recurrent models lack, so
at width 128 DT with 3 blocks has 11 % more than xLSTM [7:1] with 6, and 2 blocks match (8 %).

DT's count is exactly A(w) + L * B(w) with A, B quadratic in the width w (embeddings, head and
table linear in w; each block 12 w^2 + 13 w); `match_dt` fits A and B from six real builds and
searches the candidates on them, then checks the chosen one with a real build.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence


def count_params(model_config) -> int:
    """Parameters of the model `LRAMConfig` describes, built on the meta device (no memory, ~0.05 s)."""
    import torch

    from lramlab.models import build_model

    with torch.device("meta"):
        model = build_model(model_config)
    return int(sum(p.numel() for p in model.parameters()))


def ratio(counts: Sequence[int]) -> float:
    """Largest / smallest count (1.0 for fewer than two)."""
    counts = [int(c) for c in counts]
    return max(counts) / min(counts) if len(counts) > 1 else 1.0


def check_param_match(groups: Mapping[str, Mapping[str, int]], tolerance: float, owner: str = "MultiTaskConfig",
                      group: str = "at width",
                      hint: str = "set dt_match: true to choose DT's blocks/width, or change d_model / n_layers"
                      ) -> dict[str, float]:
    """{group: largest/smallest ratio}; a ValueError naming the group, each variant and its count and
    the ratio when a group's ratio exceeds 1 + tolerance (tolerance 0: no check, ratios returned).
    `owner` (the config), `group` (what the groups are: "at width", "with tokens") and `hint` (what
    to change) word the message."""
    out = {}
    for g, counts in groups.items():
        r = ratio(list(counts.values()))
        out[g] = r
        if tolerance > 0 and r > 1 + tolerance + 1e-12:
            listed = ", ".join(f"{n}: {c:,}" for n, c in counts.items())
            raise ValueError(f"{owner}: parameter counts of the variants {group} {g} are not within "
                             f"{tolerance:.0%} of each other ({listed}; largest/smallest {r:.3f}); {hint}")
    return out


def _dt_config(base: Mapping, layers: int, width: int):
    from lramlab.models import LRAMConfig

    return LRAMConfig(**{**base, "backbone": "dt", "n_layers": int(layers), "d_model": int(width)})


def _quadratic(xs: Sequence[int], ys: Sequence[int]):
    """The exact quadratic through three points, as a function."""
    import numpy as np

    c = np.polyfit(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64), 2)
    return lambda w: float(np.polyval(c, float(w)))


def match_dt(target_counts: Sequence[int], width: int, max_layers: int, base: Mapping | None = None,
             tolerance: float = 0.10) -> dict:
    """DT's (n_layers, d_model) matched to `target_counts` (the recurrent variants' counts) as the
    module docstring says. `base`: other LRAMConfig fields (size, context_steps, tokens, n_heads).
    Returns {"n_layers", "d_model", "params", "ratio", "how"}."""
    base = dict(base or {})
    base.setdefault("size", "tiny")
    targets = [int(c) for c in target_counts]
    if not targets:
        raise ValueError("match_dt: no recurrent parameter counts to match")
    from lramlab.models.config import preset

    heads = int(base.get("n_heads") or preset("dt", base["size"])["n_heads"])
    step = 8 * heads // math.gcd(8, heads)
    probe = [max(step, (width // step) * step + k * step) for k in (0, 1, 2)]
    a_pts = [count_params(_dt_config(base, 1, w)) for w in probe]
    b_pts = [count_params(_dt_config(base, 2, w)) - a for w, a in zip(probe, a_pts)]
    A, B = _quadratic(probe, [a - b for a, b in zip(a_pts, b_pts)]), _quadratic(probe, b_pts)

    def est(layers: int, w: int) -> int:
        return int(round(A(w) + layers * B(w)))

    layers = range(1, 2 * max(1, int(max_layers)) + 1)
    same = [(ratio(targets + [est(L, width)]), 0, L, width) for L in layers] if width % heads == 0 else []
    best = min(same) if same else None
    how = f"blocks at the recurrent width {width}"
    if best is None or best[0] > 1 + tolerance:
        widths = [w for w in range(step * max(1, (width // 2) // step), 2 * width + 1, step) if w % heads == 0]
        best = min((ratio(targets + [est(L, w)]), abs(w - width), L, w) for L in layers for w in widths)
        how = f"blocks and width (no block count at width {width} is within {tolerance:.0%})"
    _, _, L, w = best
    n = count_params(_dt_config(base, L, w))
    if n != est(L, w):  # the fit is exact for the models lramlab builds; a new layer type would show here
        raise RuntimeError(f"match_dt: DT ({L} blocks, width {w}) has {n} parameters, the fit said {est(L, w)}")
    return {"n_layers": L, "d_model": w, "params": n, "ratio": ratio(targets + [n]), "how": how}
