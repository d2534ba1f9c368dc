"""Where a recurrent backbone overtakes the Transformer (paper §4.4, Fig. 6/7): crossover points
of a latency table (`lramlab.analysis.latency.LatencyTable`, or its rows).

For each recurrent series -- one backbone label, size and mode, at one fixed context (axis
"batch_size", the throughput rows, paper Fig. 7) or one fixed batch size (axis "context", the
latency rows, Fig. 6) -- the series is compared point by point with the reference backbone (DT)
at the same mode, fixed value and size (DT's "<size>-half" is the same model as "<size>", so a
"-half" series is compared with the DT rows of either name):

- `ratio` = the series' throughput / DT's at that x (at equal B and C, higher throughput is the
  same as lower latency); "cpu" uses the process CPU time per step instead of the wall clock;
- a point **beats** DT when ratio > 1 + rtol (a tie does not beat), or when DT ran out of memory
  there and the series did not (`reference_oom`, the paper's missing bars);
- `crossover`: the smallest measured x at which the series beats DT; `crossover_by`: "faster" or
  "reference_oom"; `beats_from`: the smallest measured x from which it beats DT at every larger
  measured x (differs from `crossover` when the lead flips back); `reference_oom_from`: the
  smallest x at which DT was OOM;
- NO interpolation in `crossover`: it is a measured grid point. `interpolated` is an estimate
  between the last measured x where DT was at least as fast and the crossover point: log(ratio)
  linear in log(x), the x where it reaches 0. It is None when the series beats DT from the
  smallest measured x (the crossover is at or below it: nothing to interpolate from), when it
  never beats DT, and when the crossover is DT's OOM (no ratio there).

Shape letters: B batch size, C context timesteps.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

AXES = {"batch_size": ("throughput", "context"), "context": ("latency", "batch_size")}
METRICS = ("throughput", "cpu")
METHOD = ("crossover: the smallest MEASURED x (no interpolation) where the backbone's throughput (B / median "
          "step latency; 'cpu': B / median process CPU time) is > the reference's * (1 + rtol), or where the "
          "reference is OOM and the backbone is not. interpolated: log(ratio) linear in log(x) between the last "
          "measured x where the reference was at least as fast and the crossover (None when there is no such x "
          "or the crossover is an OOM).")


def _rows(table) -> list[dict]:
    if hasattr(table, "rows"):
        return table.rows()
    return [dict(r) for r in table]


def _base(size: str) -> str:
    return size[: -len("-half")] if size.endswith("-half") else size


def _value(row: Mapping[str, Any], metric: str) -> float:
    if metric == "throughput":
        v = row.get("throughput")
    else:
        cpu = row.get("cpu_ms")
        v = None if cpu is None or not cpu > 0 else row["batch_size"] * 1000.0 / cpu
    return math.nan if v is None else float(v)


def crossover(table, axis: str = "batch_size", reference: str = "dt", metric: str = "throughput",
              rtol: float = 0.0) -> list[dict]:
    """Crossover of every non-reference series against `reference` along `axis` (module docstring).

    -> one dict per series: backbone, size, mode, the fixed key (context or batch_size) and its
    value, reference, reference_size, metric, axis, crossover, crossover_by, beats_from,
    reference_oom_from, interpolated, never (bool), and points [{x, ratio, beats, status}] with
    status "faster" | "slower" | "tie" | "reference_oom" | "oom" (the series itself) |
    "no_reference" (DT not measured there; skipped) | "not_finite"."""
    if axis not in AXES:
        raise ValueError(f"crossover: axis={axis!r}; valid: {', '.join(AXES)}")
    if metric not in METRICS:
        raise ValueError(f"crossover: metric={metric!r}; valid: {', '.join(METRICS)}")
    if not (rtol >= 0 and math.isfinite(rtol)):
        raise ValueError(f"crossover: rtol={rtol!r}; expected a finite number >= 0")
    kind, fixed = AXES[axis]
    rows = [r for r in _rows(table) if r.get("kind", "latency") == kind]
    refs = [r for r in rows if r["backbone"] == reference]
    series: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if r["backbone"] != reference:
            series.setdefault((r["backbone"], r["size"], r["mode"], r[fixed]), {})[int(r[axis])] = r
    out = []
    for (backbone, size, mode, fv), pts in series.items():
        cands = [d for d in refs if d["mode"] == mode and d[fixed] == fv]
        exact = [d for d in cands if d["size"] == size]
        ref_rows = exact or [d for d in cands if _base(d["size"]) == _base(size)]
        ref = {int(d[axis]): d for d in ref_rows}
        points = []
        for x in sorted(pts):
            r, d = pts[x], ref.get(x)
            p: dict[str, Any] = {"x": x, "ratio": None, "beats": False}
            if r.get("oom"):
                p["status"] = "oom"
            elif d is None:
                p["status"] = "no_reference"
            elif d.get("oom"):
                p.update(status="reference_oom", beats=True)
            else:
                a, b = _value(r, metric), _value(d, metric)
                if not (math.isfinite(a) and math.isfinite(b) and b > 0):
                    p["status"] = "not_finite"
                else:
                    ratio = a / b
                    p["ratio"] = ratio
                    p["beats"] = ratio > 1.0 + rtol
                    p["status"] = "faster" if p["beats"] else ("tie" if ratio == 1.0 else "slower")
            points.append(p)
        compared = [p for p in points if p["status"] != "no_reference"]
        first = next((p for p in compared if p["beats"]), None)
        beats_from = None
        for p in reversed(compared):
            if not p["beats"]:
                break
            beats_from = p["x"]
        interp = None
        if first is not None and first["status"] == "faster":
            before = [p for p in compared if p["x"] < first["x"]]
            prev = before[-1] if before else None
            if prev is not None and prev["ratio"] is not None and prev["ratio"] > 0:
                lx0, lx1 = math.log(prev["x"]), math.log(first["x"])
                lr0, lr1 = math.log(prev["ratio"]), math.log(first["ratio"])
                interp = math.exp(lx0 + (0.0 - lr0) * (lx1 - lx0) / (lr1 - lr0)) if lr1 != lr0 else float(prev["x"])
        ref_oom = [p["x"] for p in points if p["status"] == "reference_oom"]
        out.append({"backbone": backbone, "size": size, "mode": mode, fixed: fv, "axis": axis,
                    "reference": reference, "reference_size": ref_rows[0]["size"] if ref_rows else None,
                    "metric": metric, "rtol": rtol,
                    "crossover": first["x"] if first else None,
                    "crossover_by": first["status"] if first else None,
                    "beats_from": beats_from, "reference_oom_from": min(ref_oom) if ref_oom else None,
                    "interpolated": interp, "never": first is None, "points": points})
    return out


def crossover_summary(table, reference: str = "dt") -> dict:
    """metrics.json's "crossover": by batch size (throughput rows) and by context (latency rows),
    on the wall clock and on CPU time, and how they were found (`method`)."""
    rows = _rows(table)
    if not any(r["backbone"] == reference for r in rows):
        return {"reference": reference, "method": METHOD, "note": f"no {reference} rows: nothing to compare"}
    return {"reference": reference, "method": METHOD,
            "batch": crossover(rows, "batch_size", reference), "batch_cpu": crossover(rows, "batch_size", reference,
                                                                                      metric="cpu"),
            "context": crossover(rows, "context", reference), "context_cpu": crossover(rows, "context", reference,
                                                                                       metric="cpu")}


def crossover_markdown(results: Sequence[Mapping[str, Any]]) -> str:
    """A table of `crossover` results: one line per series, with the ratio at every x."""
    if not results:
        return "(no series)"
    fixed = AXES[results[0]["axis"]][1]
    lines = [f"| backbone | size | mode | {fixed} | crossover | by | interpolated | beats from | ref OOM from "
             "| ratio per x |", "|" + "---|" * 10]
    for c in results:
        ratios = ", ".join(f"{p['x']}: " + (f"{p['ratio']:.2f}" if p["ratio"] is not None else p["status"])
                           for p in c["points"])
        interp = "-" if c["interpolated"] is None else f"{c['interpolated']:.1f}"
        lines.append(f"| {c['backbone']} | {c['size']} | {c['mode']} | {c[fixed]} | {c['crossover'] or 'never'} | "
                     f"{c['crossover_by'] or '-'} | {interp} | {c['beats_from'] or '-'} | "
                     f"{c['reference_oom_from'] or '-'} | {ratios} |")
    return "\n".join(lines)
