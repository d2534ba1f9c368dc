"""The statistics of the ICL study (`lramlab.icl.study`) and the finished study, `ICLStudy`: per
token layout and variant the curves, trials 1-5 / last-10 windows with their spreads over seeds and
goals, the [7:1] >= DT claim, the paper's claims across layouts, tables and metrics.json."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lramlab.icl.variants import variant_label

#: the paper's claim (§4.3): xLSTM [7:1] attains the highest ICL scores -- compared with the DT here
CLAIM = ("xlstm:7:1", "dt")
FIRST_TRIALS = 5       # trials 1-5
LAST_TRIALS = 10       # the last 10 trials (31-40 of the paper's 40)


def _window(n: int, which: str) -> tuple[int, int]:
    """1-based inclusive trial range of the "first" (1-5) or "last" (last 10) window of n trials."""
    return (1, min(FIRST_TRIALS, n)) if which == "first" else (max(1, n - LAST_TRIALS + 1), n)


def window_stats(returns: np.ndarray, which: str) -> dict:
    """Stats of one window of (S, G, N) returns: mean, std over seeds, std over goals, per seed."""
    r = np.asarray(returns, dtype=np.float64)
    a, b = _window(r.shape[-1], which)
    per_goal = r[:, :, a - 1:b].mean(axis=2)          # (S, G)
    per_seed = per_goal.mean(axis=1)                   # (S,)
    return {"trials": [a, b], "mean": float(per_seed.mean()), "std_seeds": float(per_seed.std()),
            "std_goals": float(per_goal.std(axis=1).mean()), "per_seed": per_seed.tolist()}


def set_summary(returns: np.ndarray) -> dict:
    """Summary of one variant on one goal set from its (S, G, N) returns."""
    r = np.asarray(returns, dtype=np.float64)
    curves = r.mean(axis=1)                            # (S, N) per-seed mean over goals
    first, last = window_stats(r, "first"), window_stats(r, "last")
    ratio = last["mean"] / first["mean"] if first["mean"] > 0 else None
    return {"goals": int(r.shape[1]), "trials": int(r.shape[2]), "seeds": int(r.shape[0]),
            "curve_mean": curves.mean(axis=0).tolist(), "curve_std_seeds": curves.std(axis=0).tolist(),
            "first": first, "last": last, "ratio": ratio}


def compare(a: dict, b: dict, seeds: int) -> dict:
    """Window stats `a` against `b` (`window_stats`): the gap, whether a >= b, and whether the gap is
    no larger than the larger std over seeds (None with one seed)."""
    diff = a["mean"] - b["mean"]
    return {"diff": diff, "holds": diff >= 0,
            "within_seed_spread": abs(diff) <= max(a["std_seeds"], b["std_seeds"]) if seeds > 1 else None,
            "std_seeds": max(a["std_seeds"], b["std_seeds"])}


def verdict(c: dict) -> str:
    """What a `compare` allows: with one seed a gap is a direction; with several it counts only
    beyond the spread over seeds."""
    if c["within_seed_spread"] is None:
        return f"one seed: {'ahead' if c['holds'] else 'behind'} here, not a result (run >= 2 seeds)"
    if c["within_seed_spread"]:
        return "within the spread over seeds: not shown"
    return "holds beyond the seed spread" if c["holds"] else "fails beyond the seed spread"


@dataclass
class ICLStudy:
    """The finished study: `runs[layout][variant][seed]` = `run_agent`'s record. Methods taking
    `layout` default to the study's only layout (name one when it has several)."""

    config: "ICLStudyConfig"  # lramlab.icl.study
    runs: dict[str, dict[str, dict[int, dict]]] = field(default_factory=dict)

    @property
    def layouts(self) -> tuple[str, ...]:
        return self.config.layouts

    def _label(self, variant: str, layout: str) -> str:
        return variant_label(variant) + (f" · {layout}" if self.config.named_layouts else "")

    def returns(self, variant: str, goal_set: str, layout: str | None = None) -> np.ndarray:
        """(S, G, N) returns of a variant on a goal set, seeds in config order."""
        runs = self.runs[self.config.layout_of(layout)][variant]
        return np.stack([np.asarray(runs[s]["evals"][goal_set]["returns"], dtype=np.float64)
                         for s in self.config.seeds])

    def curves(self, goal_set: str, layout: str | None = None) -> dict[str, np.ndarray]:
        """{variant label: (S, N) per-seed mean return per trial} (the figure's lines and bands)."""
        return {variant_label(v): self.returns(v, goal_set, layout).mean(axis=1) for v in self.config.backbones}

    def summary(self, layout: str | None = None) -> dict[str, dict]:
        """Per variant (of one layout): label, tokens, params, training numbers, and per goal set
        `set_summary` (per-seed window means, mean, spreads)."""
        lay = self.config.layout_of(layout)
        out = {}
        for v in self.config.backbones:
            recs = [self.runs[lay][v][s] for s in self.config.seeds]
            out[v] = {"label": variant_label(v), "tokens": lay, "model": recs[0]["model"], "params": recs[0]["params"],
                      "seeds": list(self.config.seeds), "run_dirs": [r["run_dir"] for r in recs],
                      "train_wall_s": [r["train"]["wall_s"] for r in recs],
                      "train_loss": [r["train"]["loss"] for r in recs], "val_loss": [r["train"]["val_loss"] for r in recs],
                      **{g: set_summary(self.returns(v, g, lay)) for g in self.config.eval_goals}}
        return out

    def agents(self) -> dict[str, dict]:
        """{run directory name: variant, tokens, seed, parameters, training wall time} of every agent."""
        out = {}
        for lay in self.layouts:
            for v in self.config.backbones:
                for s in self.config.seeds:
                    r = self.runs[lay][v][s]
                    out[Path(r["run_dir"]).name] = {"variant": v, "tokens": lay, "seed": s,
                                                    "params": r["params"]["total"], "model": r["model"],
                                                    "train_wall_s": r["train"]["wall_s"]}
        return out

    def _last(self, variant: str, goal_set: str, layout: str) -> dict:
        return window_stats(self.returns(variant, goal_set, layout), "last")

    def claim(self, layout: str | None = None) -> dict[str, dict] | None:
        """Whether xLSTM [7:1]'s mean over its last trials is >= the DT's, per goal set (None when the
        study lacks either); `within_seed_spread`: the gap is no larger than the larger std over seeds
        (None with one seed)."""
        a, b = CLAIM
        lay = self.config.layout_of(layout)
        if a not in self.config.backbones or b not in self.config.backbones:
            return None
        out = {}
        for g in self.config.eval_goals:
            la, lb = self._last(a, g, lay), self._last(b, g, lay)
            c = compare(la, lb, len(self.config.seeds))
            out[g] = {"trials": la["trials"], a: la["mean"], b: lb["mean"], "diff": c["diff"], "holds": c["holds"],
                      "within_seed_spread": c["within_seed_spread"],
                      "std_seeds": {a: la["std_seeds"], b: lb["std_seeds"]}}
        return out

    def claim_rows(self) -> list[dict]:
        """`claim()` of every layout as table rows with a verdict that says what the evidence allows:
        with one seed a gap is a direction, not a result; with several it counts only beyond the
        spread over seeds."""
        a, b = CLAIM
        rows = []
        for lay in self.layouts:
            for g, c in (self.claim(lay) or {}).items():
                row = {"tokens": lay} if self.config.named_layouts else {}
                row.update({"goals": g, "trials": f"{c['trials'][0]}-{c['trials'][1]}", a: round(c[a], 1),
                            b: round(c[b], 1), "gap": round(c["diff"], 1), "verdict": verdict(c)})
                rows.append(row)
        return rows

    def paper_claims(self) -> list[dict]:
        """The paper's ICL claims that this study can test, one row per claim, layout and goal set:
        "learns in context" (§4.3: last trials above trials 1-5, per variant and layout), "xLSTM [7:1]
        >= DT" (§4.3, per layout), and across layouts: "same ranking without R̂" (App. E.2: the sign of
        [7:1] - DT in "sr" as in "srr"), "R̂ helps" (E.2: "srr" >= "sr", per variant), and "ad" against
        "srr" (lramlab's recipe against the paper's layout, per variant). Gaps and spreads are of the
        means over goals; a verdict counts a gap only beyond the larger std over seeds."""
        cfg, S, rows = self.config, len(self.config.seeds), []

        def row(claim, g, a_name, b_name, a, b, c, extra=None):  # gaps: + 0.0 turns a rounded -0.0 into 0.0
            rows.append({"claim": claim, "goals": g, "compared": f"{a_name} vs {b_name}",
                         "means": f"{a['mean']:.1f} vs {b['mean']:.1f}", "gap": round(c["diff"], 1) + 0.0,
                         "std over seeds": round(c["std_seeds"], 1), "verdict": extra or verdict(c)})
        for g in cfg.eval_goals:
            for lay in self.layouts:
                for v in cfg.backbones:
                    r = self.returns(v, g, lay)
                    last, first = window_stats(r, "last"), window_stats(r, "first")
                    row("learns in context (last > first trials)", g, f"{self._label(v, lay)} last",
                        "first", last, first, compare(last, first, S))
            a, b = CLAIM
            if a in cfg.backbones and b in cfg.backbones:
                gaps = {}
                for lay in self.layouts:
                    la, lb = self._last(a, g, lay), self._last(b, g, lay)
                    gaps[lay] = compare(la, lb, S)
                    row("xLSTM [7:1] >= DT", g, self._label(a, lay), self._label(b, lay), la, lb, gaps[lay])
                if "srr" in gaps and "sr" in gaps:
                    same = (gaps["srr"]["holds"] == gaps["sr"]["holds"])
                    shown = not gaps["srr"]["within_seed_spread"] and not gaps["sr"]["within_seed_spread"]
                    if S == 1:
                        text = "one seed: " + ("same sign" if same else "signs differ") + ", not a result"
                    elif shown:
                        text = "holds: same sign beyond the spread" if same else "fails: opposite signs beyond the spread"
                    else:
                        text = f"not shown: {'same sign' if same else 'signs differ'}, a gap within the spread"
                    rows.append({"claim": "same ranking without R̂ (E.2)", "goals": g,
                                 "compared": "[7:1] - DT with srr vs with sr",
                                 "means": f"{gaps['srr']['diff']:.1f} vs {gaps['sr']['diff']:.1f}",
                                 "gap": round(gaps["srr"]["diff"] - gaps["sr"]["diff"], 1) + 0.0,
                                 "std over seeds": round(max(gaps["srr"]["std_seeds"], gaps["sr"]["std_seeds"]), 1),
                                 "verdict": text})
            for claim, x, y in (("R̂ helps: srr >= sr (E.2)", "srr", "sr"), ("lramlab's ad vs the paper's srr", "ad", "srr")):
                if x in self.layouts and y in self.layouts:
                    for v in cfg.backbones:
                        lx, ly = self._last(v, g, x), self._last(v, g, y)
                        row(claim, g, self._label(v, x), self._label(v, y), lx, ly, compare(lx, ly, S))
        return rows

    def table(self) -> list[dict]:
        """One row per variant (and layout) and goal set: trials 1-5 / last 10 means, ratio, spreads, params."""
        rows = []
        for lay in self.layouts:
            for v, s in self.summary(lay).items():
                for g in self.config.eval_goals:
                    f, l_ = s[g]["first"], s[g]["last"]
                    row = {"variant": s["label"]}
                    if self.config.named_layouts:
                        row["tokens"] = lay
                    row.update({"goals": f"{g} ({s[g]['goals']})", "seeds": len(s["seeds"]),
                                "trials": f"{f['trials'][0]}-{f['trials'][1]} / {l_['trials'][0]}-{l_['trials'][1]}",
                                "first": round(f["mean"], 1), "last": round(l_["mean"], 1),
                                "ratio": None if s[g]["ratio"] is None else round(s[g]["ratio"], 2),
                                "std over seeds": round(l_["std_seeds"], 1), "std over goals": round(l_["std_goals"], 1),
                                "params": s["params"]["total"]})
                    rows.append(row)
        return rows

    def table_markdown(self) -> str:
        rows = self.table()
        if not rows:
            return ""
        cols = list(rows[0])
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
        return "\n".join(lines) + ("\n\nfirst / last: mean return over the first 5 / last 10 trials (mean over goals "
                                    "and seeds); ratio = last / first; spreads: population std of the last trials' "
                                    "means over seeds and over goals")

    def metrics(self) -> dict:
        """What 03_icl writes to metrics.json: per layout the variants' summaries (per-seed window
        means, mean and spreads) and the [7:1] >= DT claim; every agent's parameters; the parameter
        matching; the table and the paper's claims. One layout (a string `tokens`): also its
        `variants`, `claim` and `xlstm_7_1_ge_dt` at the top, as before layouts."""
        def ge(claim):
            return None if claim is None else claim.get("holdout", next(iter(claim.values())))["holds"]

        layouts = {}
        for lay in self.layouts:
            c = self.claim(lay)
            layouts[lay] = {"variants": self.summary(lay), "claim": c, "xlstm_7_1_ge_dt": ge(c)}
        out = {"config": self.config.to_dict(), "layouts": layouts, "agents": self.agents(),
               "params": self.config.param_match(), "table": self.table(), "claims": self.paper_claims()}
        if not self.config.named_layouts:
            one = layouts[self.layouts[0]]
            out.update(variants=one["variants"], claim=one["claim"], xlstm_7_1_ge_dt=one["xlstm_7_1_ge_dt"])
        return out
