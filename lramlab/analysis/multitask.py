"""Figures of the multi-task study (paper Fig. 3, Fig. 15, Fig. 5 / App. F), from numbers that
`lramlab.studies_multitask` computed: scores as mapping backbone -> {domain: score}.

- `score_bars`: the paper's Fig. 3 layout: x = domain, one bar per backbone (mean), a diamond at the IQM.
- `holdout_bars`: hold-out tasks zero-shot and after fine-tuning (App. D.3), x = domain, bars per
  backbone, zero-shot hatched.
- `silhouette_bars`: domain separation of each backbone's hidden states (App. F), in the hidden
  space and in the UMAP plane.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from lramlab.analysis.plots import DOMAIN_ORDER, _go, color_of


def _domains(*tables: Mapping[str, Mapping[str, float]]) -> list[str]:
    found = {d for t in tables for per in t.values() for d in per}
    return sorted(found, key=lambda d: (DOMAIN_ORDER + (d,)).index(d))


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def score_bars(mean: Mapping[str, Mapping[str, float]], iqm: Mapping[str, Mapping[str, float]] | None = None,
               title: str = "Multi-task agent: score per domain (bars: mean over tasks, diamonds: IQM)",
               ytitle: str = "normalised score", seeds: Mapping[str, Mapping[str, Sequence]] | None = None,
               reference: Mapping[str, Mapping[str, float]] | None = None):
    """Grouped bars (x = domain, one per backbone) of `mean`, with `iqm` as diamonds on them;
    `seeds` ({backbone: {domain: [score per training seed]}}): the bar is then the seeds' mean, with
    an error bar from the lowest to the highest seed and a dot per seed; `reference` ({domain:
    {"random", "data"}}): dashed markers at the random policy's and the data's scores."""
    go = _go()
    domains = _domains(mean, iqm or {})
    fig = go.Figure()
    for b, per in mean.items():
        x = [d for d in domains if d in per]
        y = [_num(per[d]) for d in x]
        err = None
        if seeds and b in seeds:
            lo = [min((v for v in seeds[b].get(d, []) if v is not None), default=None) for d in x]
            hi = [max((v for v in seeds[b].get(d, []) if v is not None), default=None) for d in x]
            err = {"type": "data", "symmetric": False,
                   "array": [None if h is None or m is None else h - m for h, m in zip(hi, y)],
                   "arrayminus": [None if v is None or m is None else m - v for v, m in zip(lo, y)]}
        fig.add_trace(go.Bar(x=x, y=y, name=b, offsetgroup=b, marker_color=color_of(b), error_y=err))
        if seeds and b in seeds:
            xs = [d for d in x for v in seeds[b].get(d, []) if v is not None]
            ys = [v for d in x for v in seeds[b].get(d, []) if v is not None]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"{b} seeds", offsetgroup=b, showlegend=False,
                                     marker={"size": 6, "color": "white", "line": {"width": 1, "color": "black"}}))
        if iqm and b in iqm:
            xi = [d for d in domains if d in iqm[b]]
            fig.add_trace(go.Scatter(x=xi, y=[_num(iqm[b][d]) for d in xi], mode="markers", name=f"{b} IQM",
                                     offsetgroup=b, showlegend=False, marker={"symbol": "diamond", "size": 9,
                                                                              "color": "black"}))
    for key, sym in (("random", "line-ew"), ("data", "line-ew-open")):
        xr = [d for d in domains if reference and _num((reference.get(d) or {}).get(key)) is not None]
        if xr:
            fig.add_trace(go.Scatter(x=xr, y=[_num(reference[d][key]) for d in xr], mode="markers", name=key,
                                     marker={"symbol": sym, "size": 40, "line": {"width": 2, "dash": "dash"},
                                             "color": "grey" if key == "random" else "green"}))
    fig.update_layout(title=title, barmode="group", scattermode="group", xaxis_title="domain", yaxis_title=ytitle,
                      template="plotly_white", legend_title_text="backbone")
    return fig


def holdout_bars(zeroshot: Mapping[str, Mapping[str, float]], finetuned: Mapping[str, Mapping[str, float]],
                 title: str = "Hold-out tasks: zero-shot (hatched) and fine-tuned (App. D.3)",
                 ytitle: str = "normalised score (mean over tasks)"):
    """x = domain; per backbone a hatched zero-shot bar and a solid fine-tuned bar."""
    go = _go()
    domains = _domains(zeroshot, finetuned)
    fig = go.Figure()
    for phase, table, pattern in (("zero-shot", zeroshot, "/"), ("fine-tuned", finetuned, "")):
        for b, per in table.items():
            x = [d for d in domains if d in per]
            fig.add_trace(go.Bar(x=x, y=[_num(per[d]) for d in x], name=f"{b} {phase}", offsetgroup=f"{b}|{phase}",
                                 marker={"color": color_of(b), "pattern": {"shape": pattern}}))
    fig.update_layout(title=title, barmode="group", xaxis_title="domain", yaxis_title=ytitle,
                      template="plotly_white", legend_title_text="backbone, phase")
    return fig


def silhouette_bars(silhouettes: Mapping[str, Mapping[str, float]],
                    title: str = "Domain separation of the hidden states (silhouette by domain, App. F)"):
    """`silhouettes`: backbone -> {"hidden": score, "umap": score}; one bar group per space."""
    go = _go()
    fig = go.Figure()
    for b, s in silhouettes.items():
        x = [k for k in ("hidden", "umap") if k in s]
        fig.add_trace(go.Bar(x=x, y=[_num(s[k]) for k in x], name=b, marker_color=color_of(b)))
    fig.update_layout(title=title, barmode="group", xaxis_title="space", yaxis_title="silhouette (higher: better "
                      "separated)", template="plotly_white", legend_title_text="backbone")
    return fig
