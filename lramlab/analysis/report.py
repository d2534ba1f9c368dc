"""`lramlab report`: docs/results.md rendered from the committed results, so every number on the
page comes from a file.

    lramlab report                 # (re)write docs/results.md from docs/results.template.md + the JSON
    lramlab report --check         # exit 2, with the differing lines, when docs/results.md is stale
    python -m lramlab.analysis.report --check

The prose lives in `docs/results.template.md`; a placeholder `{{name}}` there is replaced by a value
that a section renderer computed from a committed file (`docs/results/<study>/results.json`, a
committed benchmark output under `docs/results/benchmarks/`). Tables are placeholders too
(`{{icl.table}}`). One rounding rule for the whole page: `num(x, digits)` (Python's correctly
rounded format of the stored float; never a hand-copied figure).

A section renderer is a function `(root: Path) -> dict[str, str]` listed in `SECTIONS`; its keys
share a prefix (the section's name). A study that has not been run yet (its JSON absent) renders
as "not run yet" with the command that produces it -- the six-domain study, the data quality table,
the robotics experts and the Atari policies are such sections until their JSON is committed.

An unknown placeholder is an error naming the template line; `--check` prints the first differing
lines of docs/results.md (line number, what the JSON gives, what the page has).
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lramlab._dataclass_cli import command

TEMPLATE = "docs/results.template.md"
PAGE = "docs/results.md"
RESULTS = "docs/results"
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")


# ============================================================================ formatting: one rule
def num(x: Any, digits: int = 1) -> str:
    """`x` rounded to `digits` decimals (Python's format of the stored float); "-" for None / NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{float(x):.{digits}f}"


def count(x: int) -> str:
    """An integer with thousands separators (1,308,506)."""
    return f"{int(x):,}"


def minutes(seconds: float) -> str:
    """Wall time in minutes, one decimal ("36.9 min")."""
    return f"{num(seconds / 60.0, 1)} min"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    """A markdown table; `align` per column "l" or "r" (default: first left, the rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def load(root: Path, rel: str) -> Any:
    """The JSON at root/rel, None when the file is absent; a malformed file is a ValueError naming it."""
    p = Path(root) / rel
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{p}: not valid JSON ({err})") from None


def need(root: Path, rel: str) -> Any:
    """`load`, but a committed study's file must be there."""
    d = load(root, rel)
    if d is None:
        raise FileNotFoundError(f"{Path(root) / rel}: the results page needs this committed file")
    return d


def not_run(what: str, command: str, produces: str) -> str:
    return f"*Not run yet* ({what}): `{command}` writes `{produces}`."


# ============================================================================ sections
def _pipeline_seconds(d: Mapping) -> dict[str, float]:
    if "pipeline_seconds" in d:
        return dict(d["pipeline_seconds"])
    return dict(d.get("pipeline", {}).get("notebooks", {}))


def section_demo(root: Path) -> dict[str, str]:
    d = need(root, f"{RESULTS}/demo/results.json")
    secs = _pipeline_seconds(d)
    out = {"demo.wall": minutes(sum(secs.values())),
           "demo.notebooks": ", ".join(f"{k[:2]} {num(v, 0)} s" for k, v in secs.items())}
    hold = {r["variant"]: r for r in d["icl_table"] if r["goals"].startswith("holdout")}
    out["demo.icl"] = ", ".join(f"{v} {num(r['first'])} -> {num(r['last'])}" for v, r in hold.items())
    out["demo.icl_trials"] = next(iter(hold.values()))["trials"]
    tr = d["training"]
    out["demo.loss"] = f"{num(tr['loss_first'], 2)} -> {num(tr['loss_last'], 2)}"
    out["demo.ppl_metaworld"] = num(math.exp(tr["val/metaworld/loss"]), 1)
    out["demo.ppl_darkroom"] = num(math.exp(tr["val/darkroom/loss"]), 1)
    return out


def _icl_rows(d: Mapping) -> dict[str, dict[str, dict]]:
    """variant label -> {"holdout": row, "train": row} of the ICL table."""
    rows: dict[str, dict[str, dict]] = {}
    for r in d["metrics"]["table"]:
        rows.setdefault(r["variant"], {})["holdout" if r["goals"].startswith("holdout") else "train"] = r
    return rows


def section_icl(root: Path) -> dict[str, str]:
    d = need(root, f"{RESULTS}/icl/results.json")
    m = d["metrics"]
    rows = _icl_rows(d)
    early = {v["label"]: statistics.fmean(v["holdout"]["curve_mean"][:15]) for v in m["variants"].values()}
    last = {lab: r["holdout"]["last"] for lab, r in rows.items()}
    best_last = max(last, key=last.get)
    best_early = max(early, key=early.get)
    col_max = {k: max(r[g][k2] for r in rows.values()) for k, (g, k2) in
               {"hl": ("holdout", "last"), "hr": ("holdout", "ratio"), "tl": ("train", "last")}.items()}

    def bold(s: str, on: bool) -> str:
        return f"**{s}**" if on else s
    body = []
    for lab, r in rows.items():
        h, t = r["holdout"], r["train"]
        body.append([lab, count(h["params"]), num(h["first"]), bold(num(h["last"]), h["last"] == col_max["hl"]),
                     bold(f"{num(h['ratio'], 2)}x", h["ratio"] == col_max["hr"]), num(h["std over seeds"]),
                     num(t["first"]), bold(num(t["last"]), t["last"] == col_max["tl"]),
                     bold(num(early[lab]), lab == best_early)])
    out = {"icl.table": table(["backbone", "params", "hold-out 1-5", "hold-out 31-40", "ratio", "seed spread (std)",
                               "train 1-5", "train 31-40", "hold-out mean of trials 1-15"], body)}
    ordered = sorted(last, key=lambda k: -last[k])
    out["icl.best"] = best_last
    out["icl.best_last"] = num(last[best_last])
    out["icl.best_ratio"] = f"{num(rows[best_last]['holdout']['ratio'], 2)}x"
    out["icl.spread_last"] = num(max(last.values()) - min(last.values()))
    out["icl.lead_runner_up"] = num(last[ordered[0]] - last[ordered[1]])
    out["icl.runner_up"] = ordered[1]
    rec = [k for k in rows if k != "DT"]
    out["icl.recurrent_last"] = f"{num(min(last[k] for k in rec))}-{num(max(last[k] for k in rec))}"
    out["icl.recurrent_ratio"] = (f"{num(min(rows[k]['holdout']['ratio'] for k in rec), 1)}-"
                                  f"{num(max(rows[k]['holdout']['ratio'] for k in rec), 1)}x")
    tl = [r["train"]["last"] for r in rows.values()]
    out["icl.train_last"] = f"{num(min(tl))}-{num(max(tl))}"
    hf = [r["holdout"]["first"] for r in rows.values()]
    out["icl.first_range"] = f"{num(min(hf), 0)}-{num(max(hf), 0)}"
    out["icl.last_range"] = f"{num(min(last.values()), 0)}-{num(max(last.values()), 0)}"
    out["icl.early"] = ", ".join(f"{k} {num(v)}" for k, v in sorted(early.items(), key=lambda kv: -kv[1]))
    c = m["claim"]
    out["icl.claim_diff"] = num(abs(c["holdout"]["diff"]))
    out["icl.claim_lead"] = (f"DT's lead of {num(-c['holdout']['diff'])} over [7:1]" if c["holdout"]["diff"] < 0
                             else f"[7:1]'s lead of {num(c['holdout']['diff'])} over DT")
    out["icl.claim_dt_std"] = num(c["holdout"]["std_seeds"]["dt"])
    out["icl.claim_inside_holdout"] = "inside" if c["holdout"]["within_seed_spread"] else "outside"
    out["icl.claim_inside_train"] = "is" if c["train"]["within_seed_spread"] else "is not"
    out["icl.xlstm_ge_dt"] = "yes" if m["xlstm_7_1_ge_dt"] else "no"
    out["icl.params_ratio"] = num(100 * (rows["DT"]["holdout"]["params"] / rows["xLSTM [7:1]"]["holdout"]["params"] - 1), 0)
    cfg = m["config"]
    out["icl.steps"], out["icl.batch"], out["icl.trials"] = str(cfg["steps"]), str(cfg["batch_size"]), str(cfg["trials"])
    out["icl.seeds"] = str(len(cfg["seeds"]))
    out["icl.command"] = d["command"]
    out["icl.code"] = d.get("code_commit", "not recorded")
    out["icl.code_short"] = out["icl.code"].split()[0]
    secs = _pipeline_seconds(d)
    out["icl.wall"] = minutes(sum(secs.values()))
    out["icl.wall_parts"] = ", ".join(f"{k} {minutes(v)}" for k, v in secs.items())
    from lramlab.manifests import list_tasks

    best = [t.extra["max_return"] for t in list_tasks("darkroom") if t.split == "holdout"]
    out["icl.oracle_range"] = f"{num(min(best), 0)}-{num(max(best), 0)}"
    rr = load(root, f"{RESULTS}/icl/rerun.json")  # the preset re-run with later code: its wall time only
    out["icl.rerun"] = (f"with the code of {rr['code_commit']} ({rr['date']}, {rr['load']}) the same command took "
                        f"**{minutes(rr['seconds'])}** ({', '.join(f'{k} {minutes(v)}' for k, v in rr['notebooks'].items())}; "
                        f"`{RESULTS}/icl/rerun.json`)" if rr else
                        "later commits made training faster without changing the model or the data; the current "
                        "code's wall time is not re-measured (the command above)")
    return out


def _mt(root: Path, study: str) -> dict:
    return need(root, f"{RESULTS}/{study}/results.json")


def _scores(b: Mapping, phase: str, dom: str) -> Mapping:
    return b["scores"].get(phase, {}).get(dom, {})


MT_LABELS = {"xlstm-7-1": "xLSTM [7:1]", "xlstm-1-0": "xLSTM [1:0]", "mamba": "Mamba", "dt": "DT"}


def _cap_label(d: Mapping) -> str:
    cap = d.get("config", {}).get("eval_max_steps") or 0
    return "whole episodes" if not cap else f"**capped at {cap} steps** (normalised scores left out)"


def _metaworld_zero(d: Mapping, backbone: str = "dt") -> list[str]:
    rows = d.get("per_task", {}).get(backbone, {}).get("train", [])
    return [r["task"].split("/")[1].removesuffix("-v2") for r in rows
            if r["task"].startswith("metaworld/") and r.get("success_rate") == 0]


def _success_se(d: Mapping, backbone: str = "dt") -> float:
    """Standard error of the Meta-World success mean: std over the train tasks' success rates / sqrt(tasks)."""
    rates = [r["success_rate"] for r in d["per_task"][backbone]["train"] if r["task"].startswith("metaworld/")]
    return statistics.stdev(rates) / math.sqrt(len(rates))


def section_multitask(root: Path) -> dict[str, str]:
    d = _mt(root, "multitask-cpu")
    bb = d["metrics"]["backbones"]
    order = [n for n in MT_LABELS if n in bb]
    mw = {n: _scores(bb[n], "train", "metaworld").get("success_rate") for n in order}
    best = max(mw.values())
    body = []
    for n in order:
        b = bb[n]
        w, c, r = (_scores(b, "train", x) for x in ("metaworld", "dmcontrol", "darkroom"))
        z, f = _scores(b, "zeroshot", "metaworld"), _scores(b, "finetuned", "metaworld")
        body.append([MT_LABELS[n], count(b["n_params"]), num(b["train"]["wall_s"], 0),
                     f"**{num(mw[n], 2)}**" if mw[n] == best else num(mw[n], 2), num(w.get("iqm"), 2),
                     num(w.get("data_normalized_mean"), 2), num(c.get("data_normalized_mean"), 2),
                     num(r.get("score"), 2), f"{num(z.get('score'), 1)} -> {num(f.get('score'), 1)}"])
    out = {"mt.table": table(["backbone", "params", "train s", "Meta-World success (45)", "MW IQM",
                              "MW data-normalised (authors' v2 constants)", "DMC data-normalised (/ 926.7)",
                              "Dark-Room return / best", "MW hold-out zero-shot -> fine-tuned (5)"], body)}
    out["mt.wall"] = minutes(sum(_pipeline_seconds(d).values()))
    jobs = d["metrics"]["jobs"]
    tr = [v["seconds"] for k, v in jobs.items() if k.startswith("train-")]
    ev = [v["seconds"] for k, v in jobs.items() if k.startswith("eval-") and k.endswith("-train")]
    out["mt.train_minutes"] = f"{num(min(tr) / 60, 0)}-{num(max(tr) / 60, 0)}"
    out["mt.eval_seconds"] = f"{num(min(ev), 0)}-{num(max(ev), 0)}"
    out["mt.cap"] = _cap_label(d)
    out["mt.episodes"] = str(d["config"]["eval_episodes"])
    out["mt.n_train"] = str(len(d["metrics"]["train_tasks"]))
    out["mt.n_holdout"] = str(len(d["metrics"]["holdout_tasks"]))
    out["mt.n_tasks"] = str(len(d["metrics"]["train_tasks"]) + len(d["metrics"]["holdout_tasks"]))
    xl = max(mw[n] for n in order if n.startswith("xlstm"))
    out["mt.xlstm_mw"], out["mt.dt_mw"] = num(xl, 2), num(mw["dt"], 2)
    se = _success_se(d)
    out["mt.se"] = num(se, 2)
    out["mt.gap_se"] = num((xl - mw["dt"]) / se, 1)
    dr = [_scores(bb[n], "train", "darkroom") for n in order]
    out["mt.darkroom_return"] = num(statistics.fmean(x["mean"] for x in dr), 0)
    dmc = [_scores(bb[n], "train", "dmcontrol").get("data_normalized_mean") for n in order]
    out["mt.dmc_range"] = f"{num(min(dmc), 2)}-{num(max(dmc), 2)}"
    # embeddings (App. F)
    sil = {n: (bb[n]["silhouette"], bb[n]["silhouette_2d"]) for n in order}
    bh, bu = max(sil, key=lambda n: sil[n][0]), max(sil, key=lambda n: sil[n][1])
    out["emb.table"] = table(["backbone", "silhouette, hidden space", "silhouette, UMAP plane"],
                             [[MT_LABELS[n], f"**{num(h, 3)}**" if n == bh else num(h, 3),
                               f"**{num(u, 3)}**" if n == bu else num(u, 3)] for n, (h, u) in sil.items()])
    out["emb.best_umap"] = f"{MT_LABELS[bu]} {num(sil[bu][1], 2)}"
    out["emb.best_umap_name"] = MT_LABELS[bu]
    out["emb.dt_umap"] = num(sil["dt"][1], 2)
    out["emb.hidden_range"] = f"{num(min(h for h, _ in sil.values()), 2)}-{num(max(h for h, _ in sil.values()), 2)}"
    out["emb.n_tasks"] = str(len(d["metrics"]["train_tasks"]))
    out["emb.per_task"] = str(d["config"]["embed_per_task"])
    return out


def section_attempts(root: Path) -> dict[str, str]:
    studies = [("multitask-cpu", "attempt 1", "mt1"), ("multitask-cpu-dt5k", "attempt 2", "mt5k"),
               ("multitask-cpu-dt7k", "attempt 3", "mt7k")]
    body, out, mws = [], {}, []
    for study, name, key in studies:
        d = _mt(root, study)
        b = d["metrics"]["backbones"]["dt"]
        c = d["config"]
        w = _scores(b, "train", "metaworld")
        z, f = _scores(b, "zeroshot", "metaworld"), _scores(b, "finetuned", "metaworld")
        mws.append(w["success_rate"])
        capped = f", capped at {c['eval_max_steps']} steps" if c.get("eval_max_steps") else ""
        body.append([f"{name}, DT, {c['steps']} x {c['batch_size']}{capped}", num(w["success_rate"], 2), num(w["iqm"], 2),
                     num(w["data_normalized_mean"], 2),
                     num(_scores(b, "train", "dmcontrol").get("data_normalized_mean"), 2),
                     num(_scores(b, "train", "darkroom").get("score"), 2),
                     f"{num(z.get('score'), 1)} -> {num(f.get('score'), 1)}"])
        out[f"{key}.wall"] = minutes(sum(_pipeline_seconds(d).values()))
        out[f"{key}.train_wall"] = minutes(b["train"]["wall_s"])
        out[f"{key}.mw"] = num(w["success_rate"], 3)
        out[f"{key}.mw2"] = num(w["success_rate"], 2)
        out[f"{key}.iqm"] = num(w["iqm"], 2)
        out[f"{key}.dn"] = num(w["data_normalized_mean"], 2)
        out[f"{key}.dmc"] = num(_scores(b, "train", "dmcontrol").get("data_normalized_mean"), 2)
        out[f"{key}.darkroom"] = num(_scores(b, "train", "darkroom").get("score"), 2)
        out[f"{key}.holdout"] = f"{num(z.get('score'), 1)} -> {num(f.get('score'), 1)}"
        out[f"{key}.zero"] = ", ".join(_metaworld_zero(d)) or "none"
        n_ep = w["n_tasks"] * c["eval_episodes"]
        out[f"{key}.episodes"] = f"{round(w['success_rate'] * n_ep)} of {n_ep} episodes"
        out[f"{key}.cap"] = _cap_label(d)
        out[f"{key}.se"] = num(_success_se(d), 2)
    out["attempts.table"] = table(["run", "Meta-World success (45 x 2 episodes)", "MW IQM",
                                   "MW data-normalised (authors' v2 constants)", "DMC (/ 926.7)", "Dark-Room return / best",
                                   "MW hold-out zero-shot -> fine-tuned"], body)
    out["attempts.growth"] = " -> ".join(num(x, 2) for x in mws)
    out["attempts.miss"] = num(0.7 - mws[1], 3)
    return out


def _tp_rows(d: Mapping) -> list[dict]:
    return d["metrics"]["rows"]


def section_throughput(root: Path) -> dict[str, str]:
    d = need(root, f"{RESULTS}/throughput-cpu/results.json")
    rows = _tp_rows(d)
    labels = {"xlstm-16h": "xLSTM 16 heads", "xlstm-4h": "xLSTM 4 heads", "mamba": "Mamba", "dt": "DT (KV cache)"}
    Bs = [1, 4, 16, 64, 128]
    body = []
    for bk, lab in labels.items():
        cells = []
        for B in Bs:
            r = next((r for r in rows if r["kind"] == "throughput" and r["mode"] == "model" and r["size"] == "16M-half"
                      and r["backbone"] == bk and r["context"] == 1600 and r["batch_size"] == B), None)
            if r is None:
                cells.append("-")
            elif r["oom"]:
                cells.append("skipped (" + r["note"].removeprefix("skipped: ") + ")")
            else:
                cells.append(num(r["throughput"], 0))
        body.append([lab, "16M-half", *cells])
    out = {"tp.table": table(["backbone", "size", *[f"B={B}" if i == 0 else str(B) for i, B in enumerate(Bs)]], body,
                             ["l", "l"] + ["r"] * len(Bs))}
    cross = d["metrics"]["crossover"]["batch"]
    ratios = [p["ratio"] for c in cross for p in c["points"] if p.get("ratio") is not None]
    out["tp.ratio_range"] = f"{num(min(ratios), 2)}-{num(max(ratios), 2)}x"
    xs = sorted({c["crossover"] for c in cross})
    out["tp.crossover"] = ", ".join(f"B = {x}" for x in xs)
    out["tp.n_series"] = str(len(cross))
    oom = sorted({c["reference_oom_from"] for c in cross if c["reference_oom_from"]})
    out["tp.dt_skipped_from"] = ", ".join(f"B = {x}" for x in oom)
    note = next(r["note"] for r in rows if r["oom"] and r["kind"] == "throughput")
    out["tp.dt_skip_note"] = note.removeprefix("skipped: ")
    out["tp.wall"] = minutes(sum(_pipeline_seconds(d).values()))
    kv = next(r for r in rows if r["backbone"] == "dt" and r["size"] == "16M-half" and r["context"] == 1600
              and r["batch_size"] == 1 and not r["oom"] and r.get("state_mb"))
    out["tp.dt_state_mb"] = f"{num(kv['state_mb'], 0)} MB"
    out["tp.command"] = d["command"]
    # latency at B = 1 (the latency rows, not the throughput rows)
    Cs = [50, 200, 800, 1600, 6400, 25600]
    lat = {}
    body = []
    for bk, lab in labels.items():
        cells = []
        for C in Cs:
            r = next((r for r in rows if r["kind"] == "latency" and r["mode"] == "model" and r["size"] == "16M-half"
                      and r["backbone"] == bk and r["context"] == C and r["batch_size"] == 1), None)
            lat[(bk, C)] = None if r is None or r["oom"] else r["latency_ms"]
            cells.append(num(lat[(bk, C)], 1))
        body.append([lab, *cells])
    out["lat.table"] = table(["backbone", *[f"C={C}" if i == 0 else str(C) for i, C in enumerate(Cs)]], body)
    out["lat.xlstm"] = f"{num(lat[('xlstm-16h', 50)])} -> {num(lat[('xlstm-16h', 25600)])} ms"
    out["lat.dt"] = f"{num(lat[('dt', 50)])} -> {num(lat[('dt', 25600)], 0)} ms"
    return out


BENCH = f"{RESULTS}/benchmarks"


def section_benchmarks(root: Path) -> dict[str, str]:
    """Committed benchmark outputs: padding gaps, training speed (bench train, mamba_train)."""
    out: dict[str, str] = {}
    pad = load(root, f"{BENCH}/padding_gap.json")
    if pad is None:
        out["bench.padding"] = not_run("padding gaps", "python benchmarks/padding_gap.py --context 50 --episodes 2",
                                       f"{BENCH}/padding_gap.json")
    else:
        r = {x["backbone"]: x for x in pad["rows"]}
        out["bench.padding"] = (
            f"max |logit gap| against stepping from the initial state, left-padded (before) -> right-padded (now): "
            + "; ".join(f"{k} {num(v['left'], 2)} -> {v['right']:.1e}" for k, v in r.items())
            + f". `{pad['command']}` (code {pad['code_commit']}; `{BENCH}/padding_gap.json`).")
    ex = load(root, f"{BENCH}/metaworld_experts.json")
    if ex is None:
        out["bench.experts"] = ("the scripted experts' own success rate is not re-measured "
                                "(`python benchmarks/metaworld_experts.py --episodes 10`)")
    else:
        sr = [r["success_rate"] for r in ex["rows"] if r["split"] == "train"]
        out["bench.experts"] = (f"the scripted experts (no action noise, {ex['episodes']} episodes per task) succeed "
                                f"{num(statistics.fmean(sr), 2)} on the 45 train tasks (`{ex['command']}`, code "
                                f"{ex['code_commit']}; `{BENCH}/metaworld_experts.json`)")
    bt, mt = load(root, f"{BENCH}/bench_train.json"), load(root, f"{BENCH}/mamba_train.json")
    names = {"xlstm[7:1]": "xLSTM [7:1]", "xlstm[1:0]": "xLSTM [1:0]", "mamba": "Mamba"}
    groups: dict[tuple[str, int], list[str]] = {}
    if bt is not None:
        for r in bt["rows"]:
            if r.get("vs_dt_cpu") is not None and r["backbone"] in names:
                groups.setdefault((r["size"], r["context_steps"]), []).append(
                    f"{names[r['backbone']]} **{num(r['vs_dt_cpu'], 2)}x**")
    mgroups: dict[tuple[str, int], str] = {}
    if mt is not None:
        for r in mt["rows"]:
            if r["backbone"] == "mamba":
                mgroups[(r["size"], r["C"])] = f"Mamba ({r['impl']} scan, mamba_train) **{num(r['ratio_cpu'], 2)}x**"
    parts = []
    for key in sorted(set(groups) | set(mgroups), key=lambda k: (k[0] != "tiny", k)):
        items = groups.get(key, []) + ([mgroups[key]] if key in mgroups else [])
        parts.append(f"{key[0]} C = {key[1]}: " + ", ".join(items))
    srcs = []
    for name, d in (("bench_train.json", bt), ("mamba_train.json", mt)):
        if d is not None:
            srcs.append(f"`{d['command']}` (code {d['code_commit']}, {d['date']}; {d['load']}; `{BENCH}/{name}`)")
        else:
            srcs.append(f"`{BENCH}/{name}`: not re-measured (`lramlab bench train --json {BENCH}/{name}`)")
    if parts:
        out["bench.train"] = ("Tokens/s of CPU time against DT's in the same run (B = 16, one thread): "
                              + "; ".join(parts) + ". From " + " and ".join(srcs) + ".")
    else:
        out["bench.train"] = not_run("training speed", "lramlab bench train --json F", f"{BENCH}/bench_train.json")
    have16 = {x.split(" **")[0] for x in groups.get(("16M", 50), [])}
    missing = [v for v in ("xLSTM [7:1]", "xLSTM [1:0]") if v not in have16]
    if missing and parts:
        out["bench.train"] += (f" Not re-measured at 16M C = 50: {', '.join(missing)} "
                               f"(`lramlab bench train --sizes 16M --contexts 50`).")
    sixteen = groups.get(("16M", 50), []) + ([mgroups[("16M", 50)]] if ("16M", 50) in mgroups else [])
    out["bench.train_16m"] = ("; ".join(x.replace("**", "") for x in sixteen) + " of DT's tokens/s (CPU time)"
                              if sixteen else "not re-measured")
    return out


# ---------------------------------------------------------------------- sections other helpers' studies fill
def _optional(root: Path, key: str, rel: str, what: str, cmd: str, build: Callable[[Any], str]) -> dict[str, str]:
    """A section another study fills: `build(its JSON)`, or "not run yet" with `cmd` while the file is absent."""
    d = load(root, rel)
    return {key: not_run(what, cmd, rel) if d is None else build(d)}


def _six_domain_table(d: Mapping) -> str:
    doms = d["domains"]
    names = list(dict.fromkeys(n for v in doms.values() for n in v.get("backbones", {})))
    body = []
    for dom, v in doms.items():
        cells = [dom, num(v.get("random"), 2), num(v.get("data"), 2)]
        for n in names:
            s = [x for x in v.get("backbones", {}).get(n, {}).get("seeds", []) if x is not None]
            cells.append("-" if not s else (num(statistics.fmean(s), 2) + (f" ± {num(statistics.pstdev(s), 2)}"
                                                                             if len(s) > 1 else "")))
        body.append(cells)
    params = {n: next((v["backbones"][n].get("params") for v in doms.values() if n in v.get("backbones", {})), None)
              for n in names}
    head = ["domain", "random", "data"] + [f"{n} ({count(params[n])} params)" if params[n] else n for n in names]
    return ("Normalised score per domain (mean over seeds ± std over seeds; `"
            f"{RESULTS}/six-domain-cpu/summary.json`):\n\n" + table(head, body))


def _ms(st: Mapping | None) -> str:
    """'mean ± std (n seeds)' of a seed_stats row; '-' when it has no finite score."""
    if not st or st.get("mean") is None:
        return "-"
    return num(st["mean"], 2) + (f" ± {num(st['std'], 2)}" if st.get("n", 0) > 1 else "")


def _six_targets(summary: Mapping) -> str:
    """Issue 19's per-domain target: the best backbone's seed mean >= random + 0.5 x (data - random)."""
    rows = []
    for dom, v in summary["domains"].items():
        means = {n: statistics.fmean(s) for n, b in v.get("backbones", {}).items()
                 if (s := [x for x in b.get("seeds", []) if x is not None])}
        if not means or v.get("random") is None or v.get("data") is None:
            rows.append([dom, "-", "-", "-", "no score"])
            continue
        best = max(means, key=lambda n: means[n])
        bar = v["random"] + 0.5 * (v["data"] - v["random"])
        rows.append([dom, f"{best} {num(means[best], 2)}", num(bar, 2),
                     num((means[best] - v["random"]) / (v["data"] - v["random"]), 2) if v["data"] != v["random"] else "-",
                     "**met**" if means[best] >= bar else "not met"])
    return ("Target (issue 19): in every domain the best backbone's mean >= random + 0.5 x (data - random):\n\n"
            + table(["domain", "best backbone (mean)", "target", "(best - random) / (data - random)", ""], rows,
                    ["l", "l", "r", "r", "l"]))


def _verdict_rows(tab: Mapping) -> list[list[str]]:
    rows = []
    for dom, pairs in sorted(tab.items()):
        for pair, v in pairs.items():
            rows.append([dom, f"`{pair}`", num(v.get("diff"), 2), num(v.get("spread"), 2),
                         f"{v.get('n_a')} / {v.get('n_b')}", f"**{v['verdict']}**" if v["verdict"] in ("holds", "does not")
                         else v["verdict"]])
    return rows


def _segments(wall: Sequence[Mapping]) -> str:
    """A run's wall time per segment (publish.py's `wall` list): "68.4 min (note); 0.2 min"."""
    return "; ".join(minutes(w["seconds"]) + (f" ({w['note']})" if w.get("note") else "") for w in wall)


def _six_study(d: Mapping) -> str:
    """The parts of the six-domain section that come from results.json (publish.py's output)."""
    m = d["metrics"]
    bb = m.get("backbones", {})
    parts = []
    wall = d.get("wall") or [{"seconds": sum(_pipeline_seconds(d).values()), "note": ""}]
    total = sum(float(w.get("seconds") or 0.0) for w in wall)
    segs = _segments(wall)
    one = f" ({wall[0]['note']})" if wall[0].get("note") else ""
    parts.append(f"Run: `{d.get('command')}` -- wall {minutes(total)}" + (f" over {len(wall)} segments: {segs}"
                                                                             if len(wall) > 1 else one)
                 + f", code {str(d.get('code') or '?')[:7]}, {d.get('versions', {}).get('machine', '?')}, "
                 f"torch {d.get('versions', {}).get('torch', '?')}. {len(m.get('train_tasks', []))} train tasks, "
                 f"{len(m.get('holdout_tasks', []))} hold-out tasks: "
                 + ", ".join(f"`{t}`" for t in m.get("holdout_tasks", [])) + ".")
    figs = m.get("figures") or {}
    for name, cap in (("scores", "Fig. 3 analogue: normalised score per domain, bars = seed mean, dots = seeds"),
                      ("holdout", "hold-out tasks: zero-shot (hatched) and after fine-tuning on the top 5 %"),
                      ("silhouette", "domain separation of the hidden states (silhouette by domain)")):
        if isinstance(figs.get(name), dict) and figs[name].get("png"):
            parts.append(f"![{cap}](results/six-domain-cpu/{figs[name]['png']})")
    pm = m.get("param_match") or {}
    if pm.get("groups"):
        rows = [[f"width {w}", ", ".join(f"{n} {count(c)}" for n, c in g["params"].items()), num(g["ratio"], 3)]
                for w, g in pm["groups"].items()]
        hows = [f"{n}: {v['how']} ({v['n_layers']} blocks)" for k, per in pm.items() if isinstance(per, dict)
                and k not in ("groups",) for n, v in per.items() if isinstance(v, dict) and "how" in v]
        parts.append(f"Parameters (tolerance {num(100 * pm.get('tolerance', 0), 0)} %; DT matched: "
                     + ("; ".join(hows) or "-") + "):\n\n" + table(["group", "parameters", "largest / smallest"], rows,
                                                               ["l", "l", "r"]))
    mw = m.get("metaworld_success") or {}
    if mw:
        best = m.get("best_metaworld", {})
        parts.append("Meta-World success rate (train tasks, seed mean): " + ", ".join(f"{n} {num(x, 2)}"
                                                                                     for n, x in mw.items())
                     + f". Target >= 0.6 for a recurrent backbone: "
                     + ("**met**" if any(x >= 0.6 for n, x in mw.items() if not n.startswith("dt")) else "not met")
                     + f" (best: {best.get('backbone')} {num(best.get('success_rate'), 2)}).")
    if m.get("verdicts"):
        parts.append("Verdicts \"xLSTM / Mamba >= DT\" per domain (train tasks; diff = difference of the seed "
                     "means, spread = the larger seed range; `lramlab.multitask.compare`):\n\n"
                     + table(["domain", "claim", "diff", "spread", "seeds", "verdict"], _verdict_rows(m["verdicts"]),
                             ["l", "l", "r", "r", "r", "l"]))
    if m.get("scaling"):
        parts.append("Scaling (paper §4.2: does the wider model score higher?):\n\n"
                     + table(["domain", "claim", "diff", "spread", "seeds", "verdict"], _verdict_rows(m["scaling"]),
                             ["l", "l", "r", "r", "r", "l"]))
    hold = [[n, dom, _ms(b.get("scores", {}).get("zeroshot", {}).get(dom)),
             _ms(b.get("scores", {}).get("finetuned", {}).get(dom))]
            for n, b in bb.items() for dom in sorted(set(b.get("scores", {}).get("zeroshot", {}))
                                                    | set(b.get("scores", {}).get("finetuned", {})))]
    if hold:
        parts.append("Hold-out tasks (normalised score, mean ± std over seeds):\n\n"
                     + table(["backbone", "domain", "zero-shot", "fine-tuned"], hold, ["l", "l", "r", "r"]))
    sil = [[n, num(b.get("silhouette"), 3), num(b.get("silhouette_2d"), 3), b.get("embedding_agent", "-")]
           for n, b in bb.items() if b.get("silhouette") is not None]
    if sil:
        parts.append("Embeddings (notebook 04's method on these checkpoints; silhouette of the domains in the hidden "
                     "space and in the UMAP plane):\n\n" + table(["backbone", "hidden", "UMAP 2-D", "agent"], sil, ["l", "r", "r", "l"])
                     + "\n\n" + " ".join(f"![UMAP {n}](results/six-domain-cpu/{f['png']})"
                                        for k, f in sorted(figs.items()) if k.startswith("umap_")
                                        and isinstance(f, dict) and f.get("png") for n in [k[5:]]))
    return "\n\n".join(parts)


def section_six_domain(root: Path) -> dict[str, str]:
    summary = load(root, f"{RESULTS}/six-domain-cpu/summary.json")
    if summary is None:
        return {"six.budget": "(not run yet)", "six.section": not_run("the six-domain study",
                                       "lramlab pipeline --params studies/six-domain-cpu.yaml --out runs/six-domain-cpu",
                                       f"{RESULTS}/six-domain-cpu/summary.json")}
    text = _six_domain_table(summary) + "\n\n" + _six_targets(summary)
    res = load(root, f"{RESULTS}/six-domain-cpu/results.json")
    budget = "(no committed run)"
    if res is not None:
        text = _six_study(res) + "\n\n" + text
        c = res.get("config") or {}
        doms = len(summary.get("domains", {}))
        if c.get("steps") and c.get("batch_size"):
            windows = int(c["steps"]) * int(c["batch_size"]) * doms
            budget = (f"{count(c['steps'])} updates x {doms} domains x {c['batch_size']} windows of context "
                      f"{c.get('context')} = {count(windows)} training windows per agent (lr {c.get('lr')}, "
                      f"{c.get('warmup')} warm-up steps, cosine)")
    return {"six.section": text, "six.budget": budget}


def _quality_table(d: Sequence[Mapping]) -> str:
    body = [[r["task"], r["domain"], r["policy"], count(r["episodes"]), count(r["transitions"]), num(r["data_return"], 1),
             num(r["random_return"], 1), num(r["data_score"], 2), num(r["random_score"], 2)] for r in d]
    return f"Per task (`{RESULTS}/data6-cpu/quality.json`):\n\n" + table(
        ["task", "domain", "policy", "episodes", "transitions", "data return", "random return", "data score",
         "random score"], body, ["l", "l", "l"] + ["r"] * 6)


#: issue 18's targets per domain, on the domain's paper score: (description, test(data, random))
QUALITY_TARGETS = {
    "atari": ("human-normalised >= random + 0.2 x (human - random), i.e. >= 0.2",
              lambda d, r: d is not None and d >= 0.2),
    "procgen": ("min-max normalised >= random + 0.15", lambda d, r: d is not None and r is not None and d >= r + 0.15),
    "dmcontrol": ("data-normalised >= 0.5", lambda d, r: d is not None and d >= 0.5),
}


def _quality_targets(d: Sequence[Mapping]) -> str:
    """Per domain: tasks meeting issue 18's target / tasks, the misses by name, the domain's mean data score."""
    lines = []
    for dom in sorted({r["domain"] for r in d}):
        rows = [r for r in d if r["domain"] == dom]
        scores = [r["data_score"] for r in rows if r["data_score"] is not None]
        mean = num(statistics.fmean(scores), 2) if scores else "-"
        if dom in QUALITY_TARGETS:
            what, ok = QUALITY_TARGETS[dom]
            met = [r for r in rows if ok(r["data_score"], r["random_score"])]
            miss = [f"{r['task'].split('/', 1)[1]} {num(r['data_score'], 3)}" for r in rows if r not in met]
            # a target a uniform random policy meets too says little about the data (e.g. fish-upright)
            easy = [f"{r['task'].split('/', 1)[1]} (random {num(r['random_score'], 2)})" for r in met
                    if ok(r["random_score"], r["random_score"])]
            lines.append(f"- {dom}: {len(met)} of {len(rows)} tasks meet {what}; mean data score {mean}"
                         + (f"; missed: {', '.join(miss)}" if miss else "")
                         + (f"; met by a random policy too: {', '.join(easy)}" if easy else ""))
        else:
            lines.append(f"- {dom}: {len(rows)} tasks; mean data score {mean}")
    return "\n".join(lines)


def section_quality(root: Path) -> dict[str, str]:
    out = _optional(root, "quality.section", f"{RESULTS}/data6-cpu/quality.json", "the data quality table",
                    "lramlab pipeline --params studies/data6-cpu.yaml --out runs/data6-cpu --only 01", _quality_table)
    d = load(root, f"{RESULTS}/data6-cpu/quality.json")
    out["quality.targets"] = "(not run yet)" if d is None else _quality_targets(d)
    run = load(root, f"{RESULTS}/data6-cpu/results.json")
    if run is None:
        out["quality.run"] = "The preset `studies/data6-cpu.yaml` has no committed run (no wall time here yet)."
    else:
        wall = run.get("wall") or []
        m = run.get("metrics", {})
        segs = _segments(wall)
        fig = (m.get("figures") or {}).get("quality") or {}
        out["quality.run"] = (f"The preset's run: `{run.get('command')}`: {count(m.get('n_tasks', 0))} tasks, "
                              f"{count(m.get('n_episodes', 0))} episodes, {count(m.get('n_transitions', 0))} transitions; "
                              f"wall {segs} (code {str(run.get('code') or '?')[:7]}, "
                              f"{run.get('versions', {}).get('machine', '?')})."
                              + (f"\n\n![data vs random policy per task](results/data6-cpu/{fig['png']})"
                                 if fig.get("png") else ""))
    return out


def _rate(x: Any) -> str:
    return "-" if x is None else num(x, 2)


def _robotics_table(d: Mapping) -> str:
    """Mimicgen per task; Composuite by robot / objective / object / obstacle; Panda's mean; the misses."""
    tasks = d["tasks"]
    sm = d["summary"]
    mg = [t for t in tasks if t["task"].startswith("mimicgen/")]
    out = ["Mimicgen (`" + f"{RESULTS}/robotics-experts/experts.json`):", "",
           table(["task", "expert success", "episodes", "mean steps", "random success"],
                 [[t["task"], _rate(t["expert_success"]), count(t["expert_episodes"]), num(t["expert_steps_mean"], 0),
                   _rate(t.get("random_success"))] for t in mg], ["l", "r", "r", "r", "r"])]
    n_mg = sum(1 for t in mg if (t["expert_success"] or 0) >= 0.7)
    out += ["", f"Mimicgen tasks at >= 0.7: {n_mg} (target: >= 4).", ""]
    cs = [t for t in tasks if t["task"].startswith("composuite/")]
    groups = []
    for key, label in (("composuite_by_robot", "robot"), ("composuite_by_objective", "objective"),
                       ("composuite_by_object", "object"), ("composuite_by_obstacle", "obstacle")):
        for name, v in sm.get(key, {}).items():
            n = sum(1 for t in cs if name in t["task"].split("/", 1)[1].split("_"))
            groups.append([label, name, _rate(v), count(n)])
    eps = sorted({int(t["expert_episodes"]) for t in cs})
    eps_txt = "?" if not eps else str(eps[0]) if len(eps) == 1 else f"{eps[0]}-{eps[-1]}"
    mean = sm.get("composuite_panda_mean")
    met = "**met**" if mean is not None and mean >= 0.8 else "**not met**"
    below_ids = set(sm.get("composuite_below_0.5", []))
    below = [t for t in cs if t["task"] in below_ids]
    out += [f"Composuite, expert success by factor ({eps_txt} episode(s) per task; other robots: Box tasks only):", "",
            table(["factor", "value", "success", "tasks"], groups, ["l", "l", "r", "r"]), "",
            f"Composuite Panda: mean success **{num(mean, 2)}** over "
            f"{count(sm.get('composuite_panda_tasks'))} tasks (target: >= 0.8, {met}); "
            f"{len(below)} tasks below 0.5. "
            f"Wall time of the longest shard: {minutes(d['wall_seconds_longest_shard'])} ({d['how']})."]
    if below:  # each miss named with where its episodes ended (the waypoint phase): the reason's first clue
        out += ["", "Composuite tasks below 0.5 and the phase each failed episode ended in:", "",
                table(["task", "expert success", "failed episodes ended in"],
                      [[t["task"], _rate(t["expert_success"]),
                        ", ".join(m.get("ended_in_phase", "?") for m in t.get("expert_misses", [])) or "-"]
                       for t in below], ["l", "r", "l"])]
    return "\n".join(out)


def section_robotics_experts(root: Path) -> dict[str, str]:
    return _optional(root, "robotics.section", f"{RESULTS}/robotics-experts/experts.json", "the robotics experts",
                     "python benchmarks/robotics_experts.py --episodes 3 --json "
                     "docs/results/robotics-experts/experts.json", _robotics_table)


def _atari_table(d: Mapping) -> str:
    body = []
    for g in d["games"]:
        cfg = g.get("data_policy_config") or g.get("policy_config") or {}
        kind = cfg.get("kind", "-")
        if kind == "planner":
            kind = f"planner (horizon {cfg.get('horizon')}, every {cfg.get('every')}, {len(cfg.get('candidates', []))} actions)"
        body.append([g["task"], kind, count(g["data_episodes"]), count(g["data_transitions"]), num(g["data_return"], 1),
                     num(g["data_score"], 2), num(g["random_return"], 1), num(g["random_score"], 2),
                     "met" if g.get("meets_0.2") else "**missed**"])
    return (table(["game", "policy", "episodes", "transitions", "data return", "data score", "random return",
                   "random score", ">= 0.2"], body, ["l", "l"] + ["r"] * 7)
            + f"\n\nMean human-normalised data score {num(d['mean_score'], 2)} (target >= 0.5), median "
              f"{num(d['median_score'], 2)}. Protocol: {d['protocol']}. Command: `{d['command']}`.")


def _icl_tokens(d: Mapping) -> str:
    """The token-layout ICL study (publish.py's results.json of 03_icl): run, parameter matching per
    layout, the per-agent table, the paper's claims with their seed spreads, the figures."""
    m = d["metrics"]
    cfg = m.get("config", {})
    out = [f"Run: `{d.get('command')}` -- wall {_segments(d.get('wall') or [])} (code {str(d.get('code') or '?')[:7]}, "
           f"{d.get('versions', {}).get('machine', '?')}); {len(cfg.get('seeds', []))} seeds, {cfg.get('steps')} updates "
           f"of batch {cfg.get('batch_size')}, {cfg.get('trials')} trials per goal.", ""]
    params = m.get("params") or {}
    lay = params.get("layouts", {})
    if lay:
        out += ["Parameters per layout (DT matched to xLSTM [7:1] within "
                f"{num(100 * (params.get('tolerance') or 0.1), 0)} %):", "",
                table(["tokens", "parameters", "largest / smallest"],
                      [[k, ", ".join(f"{v} {count(n)}" for v, n in c["params"].items()), num(c["ratio"], 3)]
                       for k, c in lay.items()], ["l", "l", "r"]), ""]
    rows = m.get("table") or []
    if rows:
        cols = list(rows[0])
        out += ["Per agent (mean over goals and seeds):", "",
                table(cols, [["-" if r.get(c) is None else (count(r[c]) if c == "params" else str(r[c])) for c in cols]
                             for r in rows]), ""]
    claims = m.get("claims") or []
    if claims:
        cols = ["claim", "goals", "compared", "means", "gap", "std over seeds", "verdict"]
        out += ["The paper's ICL claims (a gap counts only beyond the larger std over seeds):", "",
                table(cols, [[str(r.get(c, "")) for c in cols] for r in claims]), ""]
    for name, fig in (m.get("figures") or {}).items():
        if isinstance(fig, Mapping) and fig.get("png"):
            out.append(f"![{name}](results/icl-tokens-cpu/{fig['png']})")
    return "\n".join(out).rstrip()


def section_icl_tokens(root: Path) -> dict[str, str]:
    return _optional(root, "icltok.section", f"{RESULTS}/icl-tokens-cpu/results.json",
                     "the ICL token-layout study",
                     "lramlab pipeline --params studies/icl-tokens-cpu.yaml --only 01 03 --out runs/icl-tokens-cpu "
                     "&& python -m lramlab.analysis.publish runs/icl-tokens-cpu 03_icl docs/results/icl-tokens-cpu "
                     "--preset studies/icl-tokens-cpu.yaml", _icl_tokens)


def section_atari_policies(root: Path) -> dict[str, str]:
    return _optional(root, "atari.section", f"{RESULTS}/atari-policies/policies.json", "the Atari policies",
                     "python benchmarks/atari_policies.py --episodes 3 --json docs/results/atari-policies/policies.json",
                     _atari_table)


SECTIONS: list[Callable[[Path], dict[str, str]]] = [
    section_demo, section_icl, section_multitask, section_attempts, section_throughput, section_benchmarks,
    section_six_domain, section_quality, section_robotics_experts, section_atari_policies, section_icl_tokens,
]


# ============================================================================ render + check
def values(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for sec in SECTIONS:
        for k, v in sec(Path(root)).items():
            if k in out:
                raise ValueError(f"report: {sec.__name__} gives {k!r} twice")
            out[k] = v
    return out


def render(root: Path | str = ".", template: str | None = None) -> str:
    """The page: the template with every `{{name}}` replaced (unknown names: ValueError naming the line)."""
    root = Path(root)
    tpl_path = root / TEMPLATE
    text = template if template is not None else tpl_path.read_text()
    vals = values(root)
    lines = []
    for i, line in enumerate(text.splitlines(keepends=True), 1):
        def sub(m: re.Match) -> str:
            if m.group(1) not in vals:
                raise ValueError(f"{tpl_path}:{i}: unknown placeholder {{{{{m.group(1)}}}}} (known: "
                                 f"{', '.join(sorted(k for k in vals if k.split('.')[0] == m.group(1).split('.')[0]))})")
            return vals[m.group(1)]
        lines.append(PLACEHOLDER.sub(sub, line))
    header = ("<!-- Rendered by `lramlab report` from docs/results.template.md and the JSON under docs/results/; "
              "edit the template, not this file. `lramlab report --check` fails when they disagree. -->\n")
    return header + "".join(lines)


def differences(expected: str, found: str, limit: int = 10) -> list[str]:
    """Human-readable differing lines: 'line N: JSON gives ... / page has ...'."""
    out = []
    a, b = expected.splitlines(), found.splitlines()
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            continue
        n = max(i2 - i1, j2 - j1)
        for k in range(n):
            want = a[i1 + k] if i1 + k < i2 else "(no line)"
            have = b[j1 + k] if j1 + k < j2 else "(no line)"
            out.append(f"line {j1 + k + 1 if j1 + k < j2 else j2 + 1}: the JSON gives: {want}\n"
                       f"{' ' * len(str(j1 + k + 1))}        the page has: {have}")
            if len(out) >= limit:
                return out
    return out


@command("lramlab report")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lramlab report", description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 2 when docs/results.md differs from what the JSON gives")
    ap.add_argument("--root", default=".", help="the repository root (default: .)")
    a = ap.parse_args(argv)
    root = Path(a.root)
    if not (root / TEMPLATE).is_file():
        print(f"lramlab report: {root / TEMPLATE} not found (run from the repository root or give --root)",
              file=sys.stderr)
        return 2
    try:
        page = render(root)
    except (ValueError, FileNotFoundError) as err:
        print(f"lramlab report: {err}", file=sys.stderr)
        return 2
    target = root / PAGE
    if a.check:
        have = target.read_text() if target.is_file() else ""
        if have == page:
            print(f"{target}: up to date with the JSON")
            return 0
        diff = differences(page, have)
        print(f"lramlab report --check: {target} differs from what the JSON gives "
              f"(run `lramlab report` to re-render):\n" + "\n".join(diff), file=sys.stderr)
        return 2
    from lramlab._io import atomic_write_text

    atomic_write_text(target, page)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
