"""Comparing the study's agents over training seeds: per-seed scores -> mean and spread, the verdict
on "A >= B" per domain, the scaling table, and `summary.json`.

Verdict (`verdict(a, b)`, the question "does A score at least as high as B?" for one domain, each
side a list of per-seed scores): d = mean(a) - mean(b); spread = the larger of the two seed ranges
(max - min over seeds). Then

- "holds"               when d >= 0 and |d| > spread (or spread is 0: one seed each, or equal seeds),
- "does not"            when d < 0 and |d| > spread (same proviso),
- "inside seed spread"  when spread > 0 and |d| <= spread: the seeds of one side alone vary as
                        much as the difference, so the data do not decide;
- "tie"                 when every seed of both sides scores the same (e.g. all 0: no agent
                        solved a task): "A >= B" is true but says nothing about the backbones,
- "no score"            when a side has no finite score.

So a verdict is only "holds" / "does not" when the difference of the means is larger than the
range of scores any one backbone showed over its training seeds. With one seed per side the spread
is 0 and the verdict is the sign of the difference (reported with n_seeds = 1: not a seed-backed claim).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

HOLDS, DOES_NOT, INSIDE, TIE, NO_SCORE = "holds", "does not", "inside seed spread", "tie", "no score"


def _finite(xs: Sequence[Any]) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(float(x))]


def seed_stats(scores: Sequence[Any]) -> dict[str, Any]:
    """{"seeds": the scores as given (None for a missing/NaN one), "n", "mean", "std" (population),
    "min", "max"} over the finite scores; mean etc. None when there is none."""
    vals = _finite(scores)
    out: dict[str, Any] = {"seeds": [None if x is None or not math.isfinite(float(x)) else float(x) for x in scores],
                           "n": len(vals)}
    if not vals:
        return {**out, "mean": None, "std": None, "min": None, "max": None}
    m = sum(vals) / len(vals)
    return {**out, "mean": m, "std": math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals)), "min": min(vals),
            "max": max(vals)}


def verdict(a: Sequence[Any], b: Sequence[Any]) -> dict[str, Any]:
    """"A >= B" on per-seed scores `a`, `b` (module docstring): {"verdict", "diff", "spread", "n_a", "n_b"}."""
    sa, sb = _finite(a), _finite(b)
    if not sa or not sb:
        return {"verdict": NO_SCORE, "diff": None, "spread": None, "n_a": len(sa), "n_b": len(sb)}
    d = sum(sa) / len(sa) - sum(sb) / len(sb)
    spread = max(max(sa) - min(sa), max(sb) - min(sb))
    if len(set(sa) | set(sb)) == 1:
        v = TIE
    elif spread > 0 and abs(d) <= spread:
        v = INSIDE
    else:
        v = HOLDS if d >= 0 else DOES_NOT
    return {"verdict": v, "diff": d, "spread": spread, "n_a": len(sa), "n_b": len(sb)}


def variant_seed_scores(agents: Mapping[str, Mapping[str, Any]], phase: str = "train",
                        stat: str = "score") -> dict[str, dict[str, list]]:
    """{variant: {domain: [score per training seed, in seed order]}} from the per-agent score tables
    (`agents[name]` = {"variant", "seed", "scores": {phase: {domain: row}}}); a seed whose agent has
    no score for the domain gives None."""
    by: dict[str, list] = {}
    for a in agents.values():
        by.setdefault(a["variant"], []).append(a)
    out: dict[str, dict[str, list]] = {}
    for v, ags in by.items():
        ags = sorted(ags, key=lambda a: a["seed"])
        doms = sorted({d for a in ags for d in a.get("scores", {}).get(phase, {})})
        out[v] = {d: [a.get("scores", {}).get(phase, {}).get(d, {}).get(stat) for a in ags] for d in doms}
    return out


def verdict_table(seed_scores: Mapping[str, Mapping[str, Sequence]], pairs: Sequence[tuple[str, str]]) -> dict:
    """{domain: {"A >= B": verdict(...)}} for each (A, B) in `pairs` over the domains both have."""
    out: dict[str, dict] = {}
    for a, b in pairs:
        if a not in seed_scores or b not in seed_scores:
            continue
        for d in sorted(set(seed_scores[a]) & set(seed_scores[b])):
            out.setdefault(d, {})[f"{a} >= {b}"] = verdict(seed_scores[a][d], seed_scores[b][d])
    return out


def comparison_pairs(variants: Mapping[str, Mapping[str, Any]]) -> tuple[list, list]:
    """(backbone pairs, scaling pairs) from {variant: {"backbone", "width"}}: each recurrent variant
    against the DT of its width ("xlstm-7-1 >= dt"), and for each kind (same backbone, same sLSTM
    ratio) present at two widths, the wider against the narrower ("xlstm-7-1-w256 >= xlstm-7-1")."""
    dts = {v["width"]: n for n, v in variants.items() if v["backbone"] == "dt"}
    backbone = [(n, dts[v["width"]]) for n, v in variants.items() if v["backbone"] != "dt" and v["width"] in dts]
    kinds: dict[tuple, list] = {}
    for n, v in variants.items():
        kinds.setdefault((v["backbone"], v.get("slstm_at")), []).append((v["width"], n))
    scaling = []
    for members in kinds.values():
        members = sorted(members)
        scaling += [(members[i + 1][1], members[i][1]) for i in range(len(members) - 1)]
    return backbone, scaling


def build_summary(reference: Mapping[str, Mapping[str, Any]], seed_scores: Mapping[str, Mapping[str, Sequence]],
                  params: Mapping[str, int]) -> dict:
    """summary.json: {"domains": {domain: {"random", "data", "backbones": {variant: {"params", "seeds"}}}}}
    (`reference[domain]` = {"random", "data"} scores; `seed_scores` from `variant_seed_scores`)."""
    doms = sorted(set(reference) | {d for per in seed_scores.values() for d in per})
    out: dict[str, dict] = {}
    for d in doms:
        ref = reference.get(d, {})
        out[d] = {"random": ref.get("random"), "data": ref.get("data"),
                  "backbones": {v: {"params": int(params[v]), "seeds": seed_stats(per[d])["seeds"]}
                                for v, per in seed_scores.items() if d in per}}
    return {"domains": out}
