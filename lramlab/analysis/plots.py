"""Plotly figures for the studies. Every function takes package results and returns a `go.Figure`.

The figures only display numbers computed elsewhere (training logs, `evaluate`, `icl`,
`analysis.embeddings`, `analysis.latency`); widgets reuse the same functions to redraw.

Inputs:
- metrics: a run directory, a `metrics.jsonl` path, or a list of dicts (one JSON line each,
  `{"step": int, "train/loss": float, "val/loss": float, ...}`); several runs as a mapping
  name -> any of those.
- domain scores: mapping backbone -> {domain: normalised score}, or rows `{backbone, domain, score}`.
- ICL returns: mapping backbone -> array (trials,) or (tasks, trials) of episode returns.
- embeddings: an `EmbeddingResult` (or anything with `.task`, `.domain`, `.coords`).
- latency: a `LatencyTable` (or rows with backbone, mode, batch_size, context, latency_ms, ...).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lramlab._optional import require

# one colour per domain / backbone, stable across figures (plotly's qualitative "D3" palette)
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf")
DOMAIN_ORDER = ("atari", "procgen", "dmcontrol", "metaworld", "composuite", "mimicgen", "darkroom", "robosuite")
BACKBONE_ORDER = ("xlstm", "mamba", "dt", "xlstm-4h", "xlstm-16h", "xlstm-8h", "xlstm-32h")  # + head-count labels


def _go():
    return require("plotly.graph_objects", "plots")


def color_of(name: str, order: Sequence[str] = DOMAIN_ORDER + BACKBONE_ORDER) -> str:
    """A stable colour for a domain or backbone name (unknown names hash into the palette)."""
    if name in order:
        return _PALETTE[list(order).index(name) % len(_PALETTE)]
    return _PALETTE[sum(map(ord, name)) % len(_PALETTE)]


# ----------------------------------------------------------------------------- metrics logs
def read_metrics(source: str | Path | Sequence[Mapping]) -> list[dict]:
    """The lines of a `metrics.jsonl` (given a run directory, the file, or the parsed lines).

    A line without "step" gets its line number. A malformed line raises ValueError naming the
    file and line, except a truncated last line (a run still writing it), which is skipped.
    """
    if not isinstance(source, (str, Path)):
        return [dict(r) for r in source]
    path = Path(source)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (expected a run directory or the file itself)")
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:  # a live run may be mid-write on its last line
                continue
            raise ValueError(f"{path}:{i + 1}: not a JSON line ({err})") from err
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{i + 1}: expected a JSON object, got {type(row).__name__}")
        row.setdefault("step", i)
        rows.append(row)
    return rows


def metric_series(rows: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows that hold a finite number under `key`."""
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(float(v))
    return np.asarray(xs), np.asarray(ys)


def _runs(metrics) -> dict[str, list[dict]]:
    if isinstance(metrics, Mapping):
        return {str(k): read_metrics(v) for k, v in metrics.items()}
    return {"": read_metrics(metrics)}


def _keys_matching(runs: Mapping[str, list[dict]], words: Iterable[str]) -> list[str]:
    keys: dict[str, None] = {}
    for rows in runs.values():
        for r in rows:
            for k, v in r.items():
                if k != "step" and isinstance(v, (int, float)) and any(w in k for w in words):
                    keys.setdefault(k)
    return sorted(keys)


def _curve_figure(runs: Mapping[str, list[dict]], keys: Sequence[str], title: str, ytitle: str,
                  log_y: bool = False):
    go = _go()
    fig = go.Figure()
    for run, rows in runs.items():
        for key in keys:
            x, y = metric_series(rows, key)
            if len(x) == 0:
                continue
            name = f"{run} {key}".strip()
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if len(x) < 30 else "lines", name=name,
                                     meta={"run": run, "key": key}))
    fig.update_layout(title=title, xaxis_title="update step", yaxis_title=ytitle, template="plotly_white",
                      legend_title_text="run / metric")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def learning_curves(metrics, keys: Sequence[str] | None = None, log_y: bool = False):
    """Loss vs update step: one trace per run and metric (default: every key containing "loss")."""
    runs = _runs(metrics)
    keys = list(keys) if keys is not None else _keys_matching(runs, ("loss",))
    if not keys:
        raise ValueError("learning_curves: no metric containing 'loss' in the log; pass keys=[...]")
    return _curve_figure(runs, keys, "Learning curves", "loss", log_y)


def perplexity_curves(metrics, keys: Sequence[str] | None = None):
    """Validation perplexity vs update step (default: every key containing "perplexity"/"ppl")."""
    runs = _runs(metrics)
    keys = list(keys) if keys is not None else _keys_matching(runs, ("perplexity", "ppl"))
    if not keys:
        raise ValueError("perplexity_curves: no metric containing 'perplexity' in the log; pass keys=[...]")
    return _curve_figure(runs, keys, "Validation perplexity", "perplexity")


def scores_from_metrics(metrics: Mapping[str, Any], prefix: str = "eval", stat: str = "normalized_score") -> dict:
    """{domain: score} from flat metrics such as `eval/<domain>/normalized_score` (task keys,
    `eval/<domain>/<name>/...`, are left out)."""
    out = {}
    for k, v in metrics.items():
        parts = k.split("/")
        if len(parts) == 3 and parts[0] == prefix and parts[2] == stat and isinstance(v, (int, float)):
            out[parts[1]] = float(v)
    return out


def training_figures(run_dir: str | Path, label: str = "") -> dict[str, Any]:
    """The figures a training run supports: "loss", and "perplexity" (when measured at least twice)
    / "scores" when logged."""
    rows = read_metrics(run_dir)
    runs = {label: rows}
    figs = {"loss": learning_curves(runs)}
    ppl_keys = _keys_matching(runs, ("perplexity", "ppl"))
    # a curve needs two points: a perplexity measured once (at the end) is a number in the summary
    if any(len(metric_series(rows, k)[0]) > 1 for k in ppl_keys):
        figs["perplexity"] = perplexity_curves(runs)
    last: dict[str, Any] = {}
    for r in rows:
        last.update(r)
    scores = scores_from_metrics(last)
    if scores:
        figs["scores"] = domain_scores({label or "model": scores})
    return figs


# ----------------------------------------------------------------------------- datasets
def _summary_rows(summary) -> list[dict]:
    return list(summary.tasks) if hasattr(summary, "tasks") else [dict(r) for r in summary]


def dataset_overview(summary):
    """Transitions per task (bars coloured by domain) of a `studies.DataSummary` (or its rows)."""
    go = _go()
    rows = _summary_rows(summary)
    fig = go.Figure()
    for dom in sorted({r["domain"] for r in rows}, key=lambda d: (DOMAIN_ORDER + (d,)).index(d)):
        sel = [r for r in rows if r["domain"] == dom]
        fig.add_trace(go.Bar(x=[r["task"] for r in sel], y=[r["transitions"] for r in sel], name=dom,
                             marker_color=color_of(dom), customdata=[[r["episodes"]] for r in sel],
                             hovertemplate="%{x}: %{y} steps, %{customdata[0]} episodes<extra></extra>"))
    fig.update_layout(title="Dataset: transitions per task", xaxis_title="task", yaxis_title="transitions",
                      template="plotly_white", legend_title_text="domain")
    return fig


def episode_returns(summary, domains: Sequence[str] | None = None):
    """Return of each episode in file order, one panel per domain (each on its own scale: Meta-World
    returns are ~1000x Dark-Room's): a thin line per task and, with several tasks, their mean in
    bold. A learning history (Dark-Room) rises along the episodes; an expert's or a random policy's
    stays flat."""
    go = _go()
    from plotly.subplots import make_subplots

    rows = [r for r in _summary_rows(summary) if (domains is None or r["domain"] in domains) and r.get("returns")]
    doms = sorted({r["domain"] for r in rows}, key=lambda d: ((DOMAIN_ORDER + (d,)).index(d), d))
    n = max(1, len(doms))
    titles = []
    for d in doms:
        k = sum(r["domain"] == d for r in rows)
        titles.append(f"{d} ({k} task{'s' if k > 1 else ''})")
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles or None, horizontal_spacing=0.06)
    for col, dom in enumerate(doms, start=1):
        sel = [r for r in rows if r["domain"] == dom]
        many = len(sel) > 1
        for r in sel:
            rets = list(r["returns"])
            fig.add_trace(go.Scatter(x=np.arange(len(rets)), y=rets, mode="lines" if len(rets) > 20 else "lines+markers",
                                     name=r["task"], showlegend=False, opacity=0.35 if many else 1.0,
                                     line={"color": color_of(dom), "width": 1 if many else 2},
                                     meta={"domain": dom, "task": r["task"]}), row=1, col=col)
        if many:
            L = max(len(r["returns"]) for r in sel)
            mat = np.full((len(sel), L), np.nan)
            for i, r in enumerate(sel):
                mat[i, : len(r["returns"])] = r["returns"]
            fig.add_trace(go.Scatter(x=np.arange(L), y=np.nanmean(mat, 0), mode="lines", name=f"{dom}: mean over tasks",
                                     line={"color": "black", "width": 3}, meta={"domain": dom, "task": "mean"}),
                          row=1, col=col)
        fig.update_xaxes(title_text="episode", row=1, col=col)
    fig.update_yaxes(title_text="return", row=1, col=1)
    fig.update_layout(title="Episode returns in file order, one panel per domain", template="plotly_white",
                      width=max(700, 330 * n + 120), height=420, legend={"orientation": "h", "y": -0.2})
    return fig


def data_quality_bars(rows: Sequence[Mapping]):
    """Data vs random-policy score per task (`lramlab data quality` rows), one panel per score kind
    (human-normalised, min-max, data-normalised, success, return/best are never on one axis)."""
    go = _go()
    from plotly.subplots import make_subplots

    rows = [r for r in rows if r.get("data_score") is not None]
    kinds = list(dict.fromkeys(r["score_kind"] for r in rows))
    # x labels: the task without its domain when a panel holds one domain (the bar's colour says it);
    # long labels (many tasks, rotated) get room below their panel so they do not run into the next one
    by_kind = {k: [r for r in rows if r["score_kind"] == k] for k in kinds}
    label = {r["task"]: r["task"] for r in rows}
    for sel in by_kind.values():
        if len({r["domain"] for r in sel}) == 1:
            label.update({r["task"]: r["task"].split("/", 1)[-1] for r in sel})
    longest = max((len(label[r["task"]]) for sel in by_kind.values() if len(sel) > 8 for r in sel), default=0)
    pad = 7 * longest                                  # px under a panel whose labels are rotated
    panel = 220
    n = max(len(kinds), 1)
    height = n * (panel + pad) + 120
    fig = make_subplots(rows=n, cols=1, subplot_titles=[f"score: {k}" for k in kinds] or None,
                        vertical_spacing=min(0.9 / n, (pad + 60) / height) if n > 1 else 0.1)
    for i, sel in enumerate(by_kind.values(), start=1):
        x = [label[r["task"]] for r in sel]
        fig.add_trace(go.Bar(x=x, y=[r["data_score"] for r in sel], name="data",
                             marker_color=[color_of(r["domain"]) for r in sel], showlegend=i == 1,
                             customdata=[[r["task"], r.get("policy", "unknown")] for r in sel],
                             hovertemplate="%{customdata[0]}: %{y:.3f} (%{customdata[1]})<extra>data</extra>"),
                      row=i, col=1)
        fig.add_trace(go.Bar(x=x, y=[r.get("random_score") for r in sel], name="random policy",
                             marker_color="#9e9e9e", showlegend=i == 1), row=i, col=1)
    fig.update_xaxes(tickmode="linear", dtick=1)          # every task named (plotly skips labels otherwise)
    fig.update_layout(title="Data quality: the data's score vs a random policy's", barmode="group",
                      template="plotly_white", height=height)
    return fig


# ----------------------------------------------------------------------------- scores
def _score_rows(scores, stat: str = "mean") -> list[dict]:
    if hasattr(scores, "domains") and isinstance(scores.domains, Mapping):  # one lramlab.evaluate.EvalResult
        scores = {"": scores}
    if isinstance(scores, Mapping):
        rows = []
        for backbone, per_domain in scores.items():
            if hasattr(per_domain, "domains"):  # EvalResult: each domain's normalised score only (its kind;
                # Dark-Room as return / best return); raw returns never share the normalised axis
                per_domain = {d: v["normalized"] for d, v in per_domain.domains.items()
                              if v.get("normalized", {}).get("n_tasks")}
            per_domain = {d: (v[stat] if isinstance(v, Mapping) else v) for d, v in per_domain.items()} \
                if isinstance(per_domain, Mapping) else per_domain
            if not isinstance(per_domain, Mapping):
                raise ValueError(f"domain_scores: scores[{backbone!r}] must map domain -> score, "
                                 f"got {type(per_domain).__name__}")
            for dom, s in per_domain.items():
                rows.append({"backbone": str(backbone), "domain": str(dom), "score": float(s)})
        return rows
    rows = [dict(r) for r in scores]
    for r in rows:
        missing = {"backbone", "domain", "score"} - set(r)
        if missing:
            raise ValueError(f"domain_scores: row {r} lacks {sorted(missing)}")
    return rows


def domain_scores(scores, title: str = "Normalised score per domain", error: Mapping | None = None,
                  stat: str = "mean"):
    """Grouped bars: one trace per backbone, x = domain, y = normalised score.

    `scores`: backbone -> {domain: score}, backbone -> `EvalResult` (its per-domain normalised
    `stat`, "mean" or "iqm"; Dark-Room as return / best return, a domain without one left out), one EvalResult, or rows {backbone, domain, score}. `error` (optional)
    mirrors `scores` with a spread (e.g. std over seeds) shown as error bars.
    """
    go = _go()
    rows = _score_rows(scores, stat)
    err_rows = {(r["backbone"], r["domain"]): r["score"] for r in _score_rows(error)} if error else {}
    domains = sorted({r["domain"] for r in rows}, key=lambda d: (DOMAIN_ORDER + (d,)).index(d))
    fig = go.Figure()
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        by_dom = {r["domain"]: r["score"] for r in rows if r["backbone"] == backbone}
        x = [d for d in domains if d in by_dom]
        kw = {}
        if err_rows:
            kw["error_y"] = {"type": "data", "array": [err_rows.get((backbone, d), 0.0) for d in x]}
        fig.add_trace(go.Bar(x=x, y=[by_dom[d] for d in x], name=backbone, marker_color=color_of(backbone), **kw))
    fig.update_layout(title=title, barmode="group", xaxis_title="domain", yaxis_title="normalised score",
                      template="plotly_white")
    return fig


# ----------------------------------------------------------------------------- ICL
# the ICL study's variants (lramlab.icl.study.variant_label), as in the paper's Fig. 4 legend
_ICL_COLORS = {"xLSTM [7:1]": "#d62728", "xLSTM [1:0]": "#ff7f0e", "Mamba": "#2ca02c", "DT": "#1f77b4"}


def icl_curves(returns: Mapping[str, Any], title: str = "In-context learning on Dark-Room",
               band: bool = True, band_over: str = "tasks", colors: Mapping[str, str] | None = None):
    """Return per ICL trial, one line per backbone: the mean over the rows of each (rows, trials)
    array, with a ±1 std band over the rows (`band_over` names them: "tasks", or "seeds" when
    each row is one seed's mean over goals, as in the ICL study's Fig. 4-style figure)."""
    go = _go()
    fig = go.Figure()
    for i, (name, arr) in enumerate(returns.items()):
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] == 0:
            raise ValueError(f"icl_curves: returns[{name!r}] must have shape (trials,) or ({band_over}, trials), "
                             f"got {np.asarray(arr).shape}")
        mean, std = a.mean(0), a.std(0)
        trials = np.arange(1, a.shape[1] + 1)
        col = ((colors or {}).get(name) or _ICL_COLORS.get(name)
               or (color_of(name) if name in BACKBONE_ORDER else _PALETTE[i % len(_PALETTE)]))
        if band and a.shape[0] > 1:
            fig.add_trace(go.Scatter(x=np.concatenate([trials, trials[::-1]]),
                                     y=np.concatenate([mean + std, (mean - std)[::-1]]), fill="toself", mode="lines",
                                     line={"width": 0}, fillcolor=col, opacity=0.2, hoverinfo="skip",
                                     showlegend=False, name=f"{name} ±1 std over {band_over}"))
        fig.add_trace(go.Scatter(x=trials, y=mean, mode="lines+markers", name=name, line={"color": col},
                                 meta={f"n_{band_over}": int(a.shape[0])}))
    fig.update_layout(title=title, xaxis_title="ICL trial (episode)", yaxis_title="return",
                      template="plotly_white")
    return fig


def icl_study_figures(study) -> dict:
    """Fig. 4 / 16 of the paper from an `lramlab.icl.study.ICLStudy`: one figure per goal set
    ("icl_holdout", "icl_train"), the mean return per trial per variant, ±1 std over seeds; a study
    of several token layouts: one panel per layout, the same y axis, one colour per variant."""
    names = {"holdout": "hold-out", "train": "train"}
    figs = {}
    layouts = study.layouts
    for g in study.config.eval_goals:
        n_goals = next(iter(study.summary(layouts[0]).values()))[g]["goals"]
        seeds = len(study.config.seeds)
        title = (f"ICL on Dark-Room, {n_goals} {names[g]} goals: mean over goals"
                 + (f", band ±1 std over {seeds} seeds" if seeds > 1 else " (one seed: no band)"))
        if not study.config.named_layouts:
            figs[f"icl_{g}"] = icl_curves(study.curves(g), band_over="seeds", title=title)
            continue
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=len(layouts), shared_yaxes=True, horizontal_spacing=0.04,
                            subplot_titles=[f"tokens {lay}" for lay in layouts])
        for col, lay in enumerate(layouts, start=1):
            for tr in icl_curves(study.curves(g, lay), band_over="seeds").data:
                tr.legendgroup = tr.name.split(" ±")[0]
                tr.showlegend = col == 1 and tr.showlegend is not False
                fig.add_trace(tr, row=1, col=col)
            fig.update_xaxes(title_text="ICL trial (episode)", row=1, col=col)
        fig.update_yaxes(title_text="return", row=1, col=1)
        fig.update_layout(title=title + " (one panel per token layout)", template="plotly_white",
                          width=max(700, 380 * len(layouts)), height=450)
        figs[f"icl_{g}"] = fig
    return figs


# ----------------------------------------------------------------------------- embeddings
def umap_scatter(result, title: str | None = None):
    """UMAP points coloured by domain (one trace per domain), the task id on hover."""
    go = _go()
    coords = np.asarray(result.coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"umap_scatter: coords must have shape (N, 2), got {coords.shape}")
    task, domain = np.asarray(result.task), np.asarray(result.domain)
    if not len(task) == len(domain) == len(coords):
        raise ValueError(f"umap_scatter: {len(task)} tasks, {len(domain)} domains, {len(coords)} points")
    fig = go.Figure()
    for dom in sorted(set(domain.tolist()), key=lambda d: (DOMAIN_ORDER + (d,)).index(d)):
        sel = domain == dom
        fig.add_trace(go.Scatter(x=coords[sel, 0], y=coords[sel, 1], mode="markers", name=dom,
                                 text=task[sel], hovertemplate="%{text}<extra>" + dom + "</extra>",
                                 marker={"color": color_of(dom), "size": 6, "opacity": 0.8}))
    if title is None:
        title = "UMAP of hidden states"
        sil = getattr(result, "silhouette_2d", None)
        if sil is not None and math.isfinite(sil):
            title += f" (silhouette by domain: 2-D {sil:.2f}"
            sil_hd = getattr(result, "silhouette", None)
            title += f", hidden {sil_hd:.2f})" if sil_hd is not None and math.isfinite(sil_hd) else ")"
    fig.update_layout(title=title, xaxis_title="UMAP 1", yaxis_title="UMAP 2", template="plotly_white",
                      legend_title_text="domain")
    return fig


# ----------------------------------------------------------------------------- latency
def _latency_rows(table) -> list[dict]:
    rows = table.rows() if hasattr(table, "rows") else [dict(r) for r in table]
    return rows


def _group(rows, keys):
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _err(rows, lo_key, hi_key, mid_key):
    lo = [r[mid_key] - r[lo_key] for r in rows]
    hi = [r[hi_key] - r[mid_key] for r in rows]
    return {"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}


def latency_curves(table, batch_size: int | None = None, mode: str | None = None, log_x: bool = True):
    """Per-step latency (median, p10-p90 bars) vs context length, one trace per backbone/size/mode.

    Rows that ran out of memory (`oom`) are left out, as the paper's missing bars.
    """
    go = _go()
    rows = [r for r in _latency_rows(table) if r.get("kind", "latency") == "latency" and not r.get("oom")]
    if batch_size is not None:
        rows = [r for r in rows if r["batch_size"] == batch_size]
    if mode is not None:
        rows = [r for r in rows if r["mode"] == mode]
    fig = go.Figure()
    for (backbone, size, md, B), grp in _group(rows, ("backbone", "size", "mode", "batch_size")).items():
        grp = sorted(grp, key=lambda r: r["context"])
        fig.add_trace(go.Scatter(x=[r["context"] for r in grp], y=[r["latency_ms"] for r in grp],
                                 error_y=_err(grp, "latency_p10_ms", "latency_p90_ms", "latency_ms"),
                                 mode="lines+markers", name=f"{backbone} {size} ({md}, B={B})",
                                 line={"color": color_of(backbone), "dash": "solid" if md == "model" else "dot"},
                                 meta={"backbone": backbone, "size": size, "mode": md, "batch_size": B}))
    fig.update_layout(title="Per-step latency vs context" + (f" (B={batch_size})" if batch_size else ""),
                      xaxis_title="context C (timesteps)", yaxis_title="latency per step (ms)",
                      template="plotly_white")
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def throughput_curves(table, context: int | None = None, mode: str | None = None):
    """Steps per second vs batch size at a fixed context, one trace per backbone/size/mode."""
    go = _go()
    rows = [r for r in _latency_rows(table) if r.get("kind") == "throughput" and not r.get("oom")]
    if context is not None:
        rows = [r for r in rows if r["context"] == context]
    if mode is not None:
        rows = [r for r in rows if r["mode"] == mode]
    fig = go.Figure()
    for (backbone, size, md, C), grp in _group(rows, ("backbone", "size", "mode", "context")).items():
        grp = sorted(grp, key=lambda r: r["batch_size"])
        fig.add_trace(go.Scatter(x=[r["batch_size"] for r in grp], y=[r["throughput"] for r in grp],
                                 mode="lines+markers", name=f"{backbone} {size} ({md}, C={C})",
                                 line={"color": color_of(backbone), "dash": "solid" if md == "model" else "dot"},
                                 meta={"backbone": backbone, "size": size, "mode": md, "context": C}))
    fig.update_layout(title="Throughput vs batch size" + (f" (C={context})" if context else ""),
                      xaxis_title="batch size B (parallel environments)", yaxis_title="steps per second",
                      template="plotly_white")
    fig.update_xaxes(type="log")
    return fig


def memory_bars(table, batch_size: int | None = 1, mode: str = "model", metric: str | None = None):
    """Memory per context length, one bar group per backbone. `metric` "state_mb": the recurrent
    state's / KV cache's own tensors (exact; DT's cache grows with C, a recurrent state does not);
    "peak_memory_mb": the allocator's peak growth (CUDA). Default: the peak on CUDA, the state size
    on a CPU, where the peak is read from the process's memory and is mostly noise at small sizes."""
    go = _go()
    rows = [r for r in _latency_rows(table) if r.get("kind", "latency") == "latency" and r["mode"] == mode
            and not r.get("oom")]
    if batch_size is not None:
        rows = [r for r in rows if r["batch_size"] == batch_size]
    if metric is None:
        metric = "peak_memory_mb" if rows and all(str(r.get("device", "cpu")).startswith("cuda") for r in rows) \
            else "state_mb"
    rows = [r for r in rows if r.get(metric) is not None]
    fig = go.Figure()
    for (backbone, size), grp in _group(rows, ("backbone", "size")).items():
        grp = sorted(grp, key=lambda r: r["context"])
        fig.add_trace(go.Bar(x=[str(r["context"]) for r in grp], y=[r[metric] for r in grp],
                             name=f"{backbone} {size}", marker_color=color_of(backbone), meta={"metric": metric}))
    what = "State size (recurrent state / KV cache)" if metric == "state_mb" else "Peak memory"
    fig.update_layout(title=what + (f", B={batch_size}" if batch_size else ""), barmode="group",
                      xaxis_title="context C (timesteps)", yaxis_title="MiB", template="plotly_white")
    return fig


def throughput_crossover(table, metric: str = "throughput", reference: str = "dt", cols: int = 3):
    """Throughput vs batch size, one panel per recurrent backbone and size, with the reference (DT)
    beside it; DT's OOM points as crosses on the backbone's curve, the crossover (the smallest
    measured B at which the backbone beats DT, `analysis.crossover`; no interpolation) as a star
    and a dashed line. Solid: "model" mode, dotted: "env" (in the loop). metric "cpu": throughput
    from the process CPU time per step instead of the wall clock."""
    go = _go()
    from plotly.subplots import make_subplots

    from lramlab.analysis.crossover import crossover

    rows = [r for r in _latency_rows(table) if r.get("kind") == "throughput"]
    res = crossover(rows, "batch_size", reference, metric=metric)
    panels = list(dict.fromkeys((c["backbone"], c["size"]) for c in res))
    n = max(1, len(panels))
    ncols = min(cols, n)
    nrows = -(-n // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=[f"{b} {s}" for b, s in panels] or None,
                        horizontal_spacing=0.08, vertical_spacing=0.14)
    shown: set[str] = set()

    def y_of(r):
        if metric == "cpu":
            return r["batch_size"] * 1000.0 / r["cpu_ms"] if r.get("cpu_ms") else None
        return r["throughput"]

    def legend(name):
        first = name not in shown
        shown.add(name)
        return first

    for k, (backbone, size) in enumerate(panels):
        row, col = k // ncols + 1, k % ncols + 1
        for c in [c for c in res if (c["backbone"], c["size"]) == (backbone, size)]:
            md, C, dash = c["mode"], c["context"], "solid" if c["mode"] == "model" else "dot"
            mine = sorted((r for r in rows if r["backbone"] == backbone and r["size"] == size and r["mode"] == md
                           and r["context"] == C and not r.get("oom")), key=lambda r: r["batch_size"])
            ref = sorted((r for r in rows if r["backbone"] == reference and r["size"] == c["reference_size"]
                          and r["mode"] == md and r["context"] == C), key=lambda r: r["batch_size"])
            common = {"backbone": backbone, "size": size, "mode": md, "context": C}
            for who, pts, color in ((backbone, mine, color_of(backbone)),
                                    (reference, [r for r in ref if not r.get("oom")], color_of(reference))):
                name = f"{who} ({md}, C={C})"
                fig.add_trace(go.Scatter(x=[r["batch_size"] for r in pts], y=[y_of(r) for r in pts],
                                         mode="lines+markers", name=name, legendgroup=name, showlegend=legend(name),
                                         line={"color": color, "dash": dash},
                                         meta={**common, "role": "series" if who == backbone else "reference"}),
                              row=row, col=col)
            at = {r["batch_size"]: y_of(r) for r in mine}
            oom_x = [p["x"] for p in c["points"] if p["status"] == "reference_oom" and p["x"] in at]
            if oom_x:
                name = f"{reference} OOM"
                fig.add_trace(go.Scatter(x=oom_x, y=[at[x] for x in oom_x], mode="markers",
                                         marker={"symbol": "x", "size": 11, "color": color_of(reference)},
                                         name=name, legendgroup=name, showlegend=legend(name),
                                         hovertext=[f"{reference} OOM at B={x}" for x in oom_x],
                                         meta={**common, "role": "reference_oom"}), row=row, col=col)
            if c["crossover"] is not None and c["crossover"] in at:
                x = c["crossover"]
                name = f"crossover (smallest measured B beating {reference})"
                fig.add_trace(go.Scatter(x=[x], y=[at[x]], mode="markers", name=name, legendgroup=name,
                                         showlegend=legend(name), hovertext=[f"{md}: B={x} ({c['crossover_by']})"],
                                         marker={"symbol": "star", "size": 14, "color": color_of(backbone),
                                                 "line": {"width": 1, "color": "black"}},
                                         meta={**common, "role": "crossover", "by": c["crossover_by"]}),
                              row=row, col=col)
                fig.add_vline(x=x, line={"dash": "dash", "color": color_of(backbone), "width": 1}, row=row, col=col)
    batches = sorted({r["batch_size"] for r in rows})
    fig.update_xaxes(type="log", tickvals=batches, ticktext=[str(b) for b in batches])
    fig.update_yaxes(type="log")
    for r in range(1, nrows + 1):
        fig.update_yaxes(title_text="steps/s" + (" (CPU time)" if metric == "cpu" else ""), row=r, col=1)
    for c in range(1, ncols + 1):
        fig.update_xaxes(title_text="batch size B", row=nrows, col=c)
    fig.update_layout(title=f"Where recurrent backbones overtake {reference}: throughput vs batch size"
                      + (" (from CPU time per step)" if metric == "cpu" else " (wall clock)"),
                      template="plotly_white", height=320 * nrows + 120, width=max(700, 380 * ncols + 260))
    return fig


def latency_figures(table) -> dict[str, Any]:
    """The study's figures: latency vs context per batch size, throughput vs batch, the crossover
    with DT (when DT and another backbone have throughput rows), memory at the smallest B."""
    rows = _latency_rows(table)
    figs: dict[str, Any] = {}
    lat_B = sorted({r["batch_size"] for r in rows if r.get("kind", "latency") == "latency"})
    for B in lat_B:
        figs[f"latency_B{B}"] = latency_curves(table, batch_size=B)
    if any(r.get("kind") == "throughput" for r in rows):
        figs["throughput"] = throughput_curves(table)
        names = {r["backbone"] for r in rows if r.get("kind") == "throughput"}
        if "dt" in names and len(names) > 1:
            figs["crossover"] = throughput_crossover(table)
            cpu = [r for r in rows if r.get("kind") == "throughput" and not r.get("oom")]
            if cpu and all(r.get("device", "cpu") == "cpu" and (r.get("cpu_ms") or 0) > 0 for r in cpu):
                # on a shared CPU the wall clock waits for a core; one thread's CPU time does not
                figs["crossover_cpu"] = throughput_crossover(table, metric="cpu")
    if lat_B:
        figs["memory"] = memory_bars(table, batch_size=lat_B[0])
    return figs


# ----------------------------------------------------------------------------- export
def save_figures(figures: Mapping[str, Any], out_dir: str | Path, png: bool = True,
                 rendered: Mapping[str, bytes | None] | None = None) -> dict[str, dict]:
    """Write each figure as `out_dir/<name>.html`, and `.png` when kaleido finds a Chromium.

    The HTML embeds plotly.js (~4.6 MB a file): it opens offline and on its own, no CDN. PNGs
    are `png_size` (the layout's size, else 1000 x 560; kaleido's 700 x 500 cut titles),
    taken from `rendered` ({name: PNG bytes}, as `display.show_figures` made them) or rendered in
    one batch (one browser start, ~2-3 s per figure on 2 cores). Returns {name: {"html": file,
    "png": file or None}} plus "_png_error": why PNGs are missing (None if they were written) so
    notebooks and the pipeline can report it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for name, fig in figures.items():
        html = out_dir / f"{name}.html"
        tmp = html.with_name(html.name + ".tmp")
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
        os.replace(tmp, html)
        out[name] = {"html": str(html), "png": None}
    png_error = None
    if png and figures:
        ok, png_error = png_export_available()
        if ok and rendered is not None and all(rendered.get(n) for n in figures):
            for n in figures:
                p = out_dir / f"{n}.png"
                tmp = p.with_name(p.name + ".tmp")
                tmp.write_bytes(rendered[n])
                os.replace(tmp, p)
                out[n]["png"] = str(p)
        elif ok:
            pio = require("plotly.io", "PNG export")
            names = list(figures)
            paths = [str(out_dir / f"{n}.png") for n in names]
            try:
                figs = [figures[n] for n in names]
                sizes = [png_size(f) for f in figs]
                pio.write_images(figs, paths, width=[w for w, _ in sizes], height=[h for _, h in sizes])
                for n, p in zip(names, paths):
                    out[n]["png"] = p
                png_error = None
            except Exception as err:  # noqa: BLE001 - kaleido/Chromium failures are reported, not fatal
                png_error = f"{type(err).__name__}: {err}"
    elif not png:
        png_error = "PNG export turned off"
    out["_png_error"] = png_error
    return out


#: PNG size of a figure whose layout sets none (kaleido's own default, 700 x 500, cuts long titles)
DEFAULT_PNG_SIZE = (1000, 560)


def png_size(fig) -> tuple[int, int]:
    """(width, height) in pixels of a figure's static image: its layout's size, else 1000 x 560."""
    return int(fig.layout.width or DEFAULT_PNG_SIZE[0]), int(fig.layout.height or DEFAULT_PNG_SIZE[1])


_PNG_STATUS: tuple[bool, str | None] | None = None


def png_export_available() -> tuple[bool, str | None]:
    """(True, None) if kaleido can render PNGs here (it needs a Chromium), else (False, reason). Cached."""
    global _PNG_STATUS
    if _PNG_STATUS is None:
        import shutil

        try:
            import kaleido  # noqa: F401
        except ImportError:
            _PNG_STATUS = (False, 'kaleido is not installed (pip install -e ".[analysis]")')
        else:
            names = ("chromium", "chromium-browser", "google-chrome", "chrome")
            if os.environ.get("BROWSER_PATH") or any(shutil.which(b) for b in names):
                _PNG_STATUS = (True, None)
            else:
                _PNG_STATUS = (False, "no Chromium found for kaleido's PNG export (apt-get install chromium)")
    return _PNG_STATUS
