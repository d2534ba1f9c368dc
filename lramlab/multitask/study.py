"""The multi-task study itself: `plan_jobs` (what runs), `collect_results` / `MultiTaskResult` (what it
found: per backbone and phase, per-domain scores; embeddings), `run_multitask` (both, and
`results.json`). See `lramlab.multitask` for the protocol."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from lramlab.multitask import compare as C
from lramlab.multitask.config import MultiTaskConfig, find_study_tasks, parse_backbone
from lramlab.multitask.jobs import Job, atomic_json, load_embedding, run_jobs

PHASES = ("train", "zeroshot", "finetuned")  # evaluations: training tasks; hold-out before / after fine-tuning


# ============================================================================ the study
_COST_RANK = {"xlstm": 0, "mamba": 1, "dt": 2}  # start the slowest trainings first (CPU)


RANDOM = "random"  # the random-policy reference: a zero-head model sampled (uniform over the task's actions)


def random_policy_model(path: Path) -> Path:
    """A model file whose action head is zero, so sampled actions are uniform over each task's valid
    actions (discrete classes; each continuous dim's 256 bins): the random policy, played by the same
    evaluator as the agents. Written once (its sha256 keys the evaluation's resume)."""
    if path.is_file():
        return path
    import torch

    from lramlab.models import LRAMConfig, build_model, save_model

    torch.manual_seed(0)
    model = build_model(LRAMConfig(backbone="dt", size="tiny", context_steps=2))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, path, extra={"policy": "random (zero action head, sampled)"})
    return path


def plan_jobs(cfg: MultiTaskConfig, train_tasks: Sequence[str], holdout_tasks: Sequence[str]) -> list[Job]:
    """Every job of the study, slowest trainings first; see the module docstring. One training (and
    fine-tuning, evaluations) per agent = (variant, training seed); one embedding per variant (its
    first seed's agent); one random-policy evaluation of the training tasks (the reference score)."""
    out = Path(cfg.out_dir).resolve()
    data = str(Path(cfg.data_dir).resolve())
    trains, fts, evals, embeds, ft_evals = [], [], [], [], []
    ev = dict(episodes=cfg.eval_episodes, seed=cfg.seed, greedy=cfg.greedy, device=cfg.device, data=data,
              on_failure=cfg.on_failure, max_steps=cfg.eval_max_steps, workers=cfg.eval_workers, threads=cfg.threads)
    stamp = dict(episodes=cfg.eval_episodes, seed=cfg.seed, greedy=cfg.greedy, max_steps=cfg.eval_max_steps)
    first_seed = cfg.training_seeds()[0]
    for agent in sorted(cfg.agents(), key=lambda a: (_COST_RANK.get(a["spec"]["backbone"], 9), a["seed"])):
        n, spec = agent["name"], agent["spec"]
        run_dir = out / "runs" / n
        model = str(run_dir / "model.pt")
        tc = cfg.train_config(spec, train_tasks, run_dir, seed=agent["seed"])
        tc.data = (data,)
        trains.append(Job(f"train-{n}", "train", {"train": tc.to_dict(), "threads": cfg.threads},
                          output=str(run_dir / "metrics.json")))
        phases = [("train", list(train_tasks), model, f"train-{n}")]
        if holdout_tasks:
            phases.append(("zeroshot", list(holdout_tasks), model, f"train-{n}"))
            if cfg.finetune_steps:
                ft_dir = out / "runs" / f"{n}-ft"
                ftc = cfg.train_config(spec, holdout_tasks, ft_dir, finetune_from=model, seed=agent["seed"])
                ftc.data = (data,)
                fts.append(Job(f"finetune-{n}", "train", {"train": ftc.to_dict(), "threads": cfg.threads},
                               needs=(f"train-{n}",), output=str(ft_dir / "metrics.json")))
                phases.append(("finetuned", list(holdout_tasks), str(ft_dir / "model.pt"), f"finetune-{n}"))
        for phase, tasks, m, need in phases:
            path = out / "evals" / f"{n}-{phase}.json"
            job = Job(f"eval-{n}-{phase}", "eval", {**ev, "tasks": tasks, "model": m, "out": str(path),
                                                    "stamp": {**stamp, "tasks": tasks, "phase": phase}},
                      needs=(need,), output=str(path))
            (ft_evals if phase == "finetuned" else evals).append(job)
        if cfg.embeddings and agent["seed"] == first_seed:
            path = out / "embeddings" / f"{n}.npz"
            st = dict(n_per_task=cfg.embed_per_task, context=cfg.embed_context, seed=cfg.seed, tasks=list(train_tasks))
            embeds.append(Job(f"embed-{n}", "embed", {**st, "model": model, "data": data, "device": cfg.device,
                                                      "out": str(path), "threads": cfg.threads, "stamp": st},
                              needs=(f"train-{n}",), output=str(path)))
    path = out / "evals" / f"{RANDOM}-train.json"
    rand = Job(f"eval-{RANDOM}-train", "eval",
               {**ev, "greedy": False, "tasks": list(train_tasks), "model": str(out / RANDOM / "model.pt"),
                "out": str(path), "stamp": {**stamp, "greedy": False, "tasks": list(train_tasks), "phase": "train",
                                            "policy": RANDOM}}, output=str(path))
    return trains + fts + evals + embeds + ft_evals + [rand]


# ============================================================================ results
def domain_table(ev: Mapping[str, Any]) -> dict[str, dict]:
    """Per domain of one evaluation (`EvalResult.to_dict()`): the normalised score's kind, mean, IQM,
    n_tasks; the data-normalised mean / IQM (paper Fig. 3); success rate; "score" (the figures'
    0..1 number: `aggregate`'s "normalized" -- the normalised mean, Dark-Room's return / best return;
    None when the domain has none, e.g. every task capped); the episode cap when the evaluation
    cut episodes ("capped": its note); failed tasks."""
    out = {}
    for dom, d in ev["domains"].items():
        dn = d.get("data_normalized", {})
        nz = d.get("normalized", {})
        row = {"score_kind": d["score_kind"], "mean": d["mean"], "iqm": d["iqm"], "n_tasks": d["n_tasks"],
               "data_normalized_mean": dn.get("mean") if dn.get("n_tasks") else None,
               "data_normalized_iqm": dn.get("iqm") if dn.get("n_tasks") else None,
               "success_rate": d.get("success_rate", {}).get("mean"),
               "score": nz.get("mean") if nz.get("n_tasks") else None,
               "score_iqm": nz.get("iqm") if nz.get("n_tasks") else None,
               "score_as": nz.get("kind"),
               "failed": [t for t in ev.get("failed", {}) if t.split("/")[0] == dom]}
        if d["score_kind"] == "raw" and nz.get("n_tasks"):
            row["return_fraction"] = {k: nz[k] for k in ("mean", "iqm", "n_tasks")}
        if d.get("capped"):
            row["capped"] = d["capped"]["note"]
        out[dom] = row
    return out


def data_reference(data_dir: str | Path, tasks: Sequence[str]) -> dict[str, dict]:
    """Per domain the data's own score in the evaluator's normalisation (`domain_table` of the tasks'
    data: mean return of the episodes, success rate where recorded), from each task's stats.json
    (else its episode files)."""
    from lramlab.data.store import find_task_dirs
    from lramlab.data.store.check import task_stats
    from lramlab.evaluate import aggregate, score_task
    from lramlab.manifests import get_task

    dirs = find_task_dirs([str(data_dir)])
    scores = []
    for t in tasks:
        st = None
        p = Path(dirs[t]) / "stats.json"
        if p.is_file():
            try:
                st = json.loads(p.read_text())
            except ValueError:
                st = None
        if not st or "returns" not in st:
            st = task_stats(dirs[t])
        spec = get_task(t)
        if spec.score_kind == "success" and st.get("success_rate") is None:
            continue  # the data recorded no success flag: no data score for this task
        scores.append(score_task(spec, st["returns"], st.get("success_rate")))
    from dataclasses import asdict

    return domain_table({"domains": aggregate(scores), "tasks": [asdict(s) for s in scores]})


def per_task_rows(ev: Mapping[str, Any]) -> list[dict]:
    """One row per task of an evaluation (`EvalResult.to_dict()`), the results JSON's "per_task":
    task, score_kind, mean_return (raw), success_rate, normalized (the task's score of its kind; None
    when capped), data_normalized (paper Fig. 3 constants; None without constants or when capped),
    score (the figures' 0..1 number: normalized, or return / best return for Dark-Room), episode_cap,
    capped and score_note (why a score is None)."""
    from lramlab.evaluate import best_return

    rows = []
    for t in ev["tasks"]:
        best = best_return(t["task"]) if t["score_kind"] == "raw" else None
        frac = None if not best or t.get("capped") else t["mean_return"] / best
        rows.append({"task": t["task"], "score_kind": t["score_kind"], "mean_return": t["mean_return"],
                     "success_rate": t.get("success_rate"), "normalized": t.get("normalized_score"),
                     "data_normalized": t.get("data_normalized_score"),
                     "score": frac if t["score_kind"] == "raw" else t.get("normalized_score"),
                     "episode_cap": t.get("episode_cap"), "capped": bool(t.get("capped")),
                     "score_note": t.get("score_note", "")})
    return rows


@dataclass
class MultiTaskResult:
    """What `run_multitask` found: per agent (variant, training seed) its runs, evaluations and
    embedding (`agents`); per variant the seeds' scores, mean and spread (`backbones`); verdicts."""

    out_dir: str
    train_tasks: list[str]
    holdout_tasks: list[str]
    agents: dict[str, dict] = field(default_factory=dict)      # agent -> variant, seed, n_params, runs, scores
    backbones: dict[str, dict] = field(default_factory=dict)   # variant -> spec, params, seeds, per-seed stats
    evals: dict[str, dict[str, dict]] = field(default_factory=dict)  # agent -> phase -> EvalResult.to_dict()
    reference: dict[str, dict] = field(default_factory=dict)   # domain -> {"random", "data", sources}
    param_match: dict[str, Any] = field(default_factory=dict)  # MultiTaskConfig.param_match()
    jobs: list[Job] = field(default_factory=list)
    seconds: float = 0.0

    def seed_scores(self, phase: str = "train", stat: str = "score") -> dict[str, dict[str, list]]:
        """variant -> {domain: [`stat` of `domain_table` per training seed]}."""
        return C.variant_seed_scores(self.agents, phase, stat)

    def scores(self, phase: str = "train", stat: str = "score") -> dict[str, dict[str, float]]:
        """variant -> {domain: the mean over its seeds of `stat`} for one evaluation phase."""
        return {v: {d: C.seed_stats(xs)["mean"] for d, xs in per.items()}
                for v, per in self.seed_scores(phase, stat).items() if per}

    def verdicts(self, phase: str = "train") -> dict[str, dict]:
        """{domain: {"<recurrent> >= <dt>": verdict}} (`compare.verdict`: holds / does not / inside seed spread)."""
        pairs, _ = C.comparison_pairs(self.backbones)
        return C.verdict_table(self.seed_scores(phase), pairs)

    def scaling(self, phase: str = "train") -> dict[str, dict]:
        """{domain: {"<wider> >= <narrower>": verdict}}: does the bigger model score higher (paper §4.2)?"""
        _, pairs = C.comparison_pairs(self.backbones)
        return C.verdict_table(self.seed_scores(phase), pairs)

    def summary(self) -> dict:
        """summary.json (`compare.build_summary`): per domain random, data and per variant params + seeds."""
        params = {v: b["params"] for v, b in self.backbones.items()}
        return C.build_summary(self.reference, self.seed_scores("train"), params)

    def embeddings(self) -> dict[str, Any]:
        """variant -> EmbeddingResult (its first seed's agent; from the embedding jobs' files)."""
        out = {}
        for n, b in self.backbones.items():
            if b.get("embedding_file"):
                out[n] = load_embedding(b["embedding_file"])
        return out

    def figures(self) -> dict[str, Any]:
        """Fig. 3 (`scores`: seed means, a dot per seed), the hold-out figure (`holdout`), domain
        separation (`silhouette`) and one UMAP per variant (`umap_<name>`), for what the study has."""
        from lramlab.analysis import multitask as F
        from lramlab.analysis.plots import umap_scatter

        figs: dict[str, Any] = {}
        if self.scores("train"):
            figs["scores"] = F.score_bars(self.scores("train"), self.scores("train", "score_iqm"),
                                          ytitle="normalised score" + (" (Dark-Room: return / best return)"
                                                                       if "darkroom" in (self.reference or {}) else ""),
                                          seeds=self.seed_scores("train"), reference=self.reference)
            # (a domain without a normalised score -- every task capped -- shows no bar: None)
        zs, ft = self.scores("zeroshot"), self.scores("finetuned")
        if zs or ft:
            figs["holdout"] = F.holdout_bars(zs, ft)
        sil = {n: {"hidden": b["silhouette"], "umap": b["silhouette_2d"]} for n, b in self.backbones.items()
               if "silhouette" in b}
        if sil:
            figs["silhouette"] = F.silhouette_bars(sil)
        for n, emb in self.embeddings().items():
            figs[f"umap_{n}"] = umap_scatter(emb, title=f"UMAP of {n}'s hidden states (silhouette by domain: "
                                                        f"hidden {emb.silhouette:.2f}, 2-D {emb.silhouette_2d:.2f})")
        return figs

    def table(self) -> list[dict]:
        """One row per variant, phase and domain: per-seed scores, mean, std, min, max (no pandas)."""
        rows = []
        for v, b in self.backbones.items():
            for ph, per in b["scores"].items():
                for d, st in per.items():
                    rows.append({"backbone": v, "params": b["params"], "phase": ph, "domain": d, **st})
        return rows

    def metrics(self) -> dict:
        """metrics.json of the notebook: everything above as numbers, plus the study's verdicts."""
        mw = {v: (b["scores"].get("train", {}).get("metaworld", {}).get("success_rate") or {}).get("mean")
              for v, b in self.backbones.items()}
        mw = {n: x for n, x in mw.items() if x is not None}
        sil = {n: b["silhouette"] for n, b in self.backbones.items() if b.get("silhouette") is not None}
        out = {"out_dir": self.out_dir, "train_tasks": self.train_tasks, "holdout_tasks": self.holdout_tasks,
               "agents": self.agents, "backbones": self.backbones, "reference": self.reference,
               "param_match": self.param_match, "verdicts": self.verdicts(), "scaling": self.scaling(),
               "seconds": round(self.seconds, 1),
               "jobs": {j.name: {"status": j.status, "seconds": round(j.seconds, 1)} for j in self.jobs}}
        if mw:
            best = max(mw, key=lambda n: mw[n])
            out["metaworld_success"] = mw
            out["best_metaworld"] = {"backbone": best, "success_rate": mw[best]}
        if sil:
            out["silhouette_ranking"] = sorted(sil, key=lambda n: -sil[n])
        params = [b["params"] for b in self.backbones.values() if b.get("params")]
        if params:
            out["param_ratio"] = max(params) / min(params)  # largest / smallest model
        return out


_STATS = ("score", "score_iqm", "success_rate", "data_normalized_mean")


def collect_results(cfg: MultiTaskConfig, jobs: Sequence[Job], train_tasks: Sequence[str],
                    holdout_tasks: Sequence[str], seconds: float = 0.0) -> MultiTaskResult:
    """Read the run directories, evaluation files and embeddings the jobs wrote."""
    out = Path(cfg.out_dir).resolve()
    res = MultiTaskResult(str(out), list(train_tasks), list(holdout_tasks), jobs=list(jobs), seconds=seconds,
                          param_match=cfg.param_match())
    status = {j.name: j.status for j in jobs}
    counts = cfg.param_counts()
    for agent in cfg.agents():
        n, spec = agent["name"], agent["spec"]
        b: dict[str, Any] = {"variant": agent["variant"], "seed": agent["seed"], "backbone": spec["backbone"],
                             "slstm_at": spec["slstm_at"], "scores": {}}
        for key, run_dir in (("train", out / "runs" / n), ("finetune", out / "runs" / f"{n}-ft")):
            if (run_dir / "metrics.json").is_file() and status.get(f"{key}-{n}") == "done":
                m = json.loads((run_dir / "metrics.json").read_text())
                c = json.loads((run_dir / "config.json").read_text())
                b[key] = {"run_dir": str(run_dir), "model": str(run_dir / "model.pt"), "step": m.get("step"),
                          "wall_s": m.get("wall_s"), "train_loss": m.get("train/loss"), "val_loss": m.get("val/loss")}
                if key == "train":
                    b["n_params"] = c.get("n_params")
                    b["model"] = {k: c["model"].get(k) for k in ("d_model", "n_layers", "n_heads", "slstm_at")}
        res.evals[n] = {}
        for phase in PHASES:
            p = out / "evals" / f"{n}-{phase}.json"
            if p.is_file() and status.get(f"eval-{n}-{phase}") == "done":
                ev = json.loads(p.read_text())
                res.evals[n][phase] = ev
                b["scores"][phase] = domain_table(ev)
        res.agents[n] = b
    for spec in cfg.specs():
        v = spec["name"]
        mine = [a for a in res.agents.values() if a["variant"] == v]
        b = {"spec": next(x for x in cfg.backbones if parse_backbone(x)["name"] == v), "backbone": spec["backbone"],
             "slstm_at": spec["slstm_at"], "width": cfg.width_of(spec), "params": counts[v],
             "seeds": [a["seed"] for a in mine], "agents": [n for n, a in res.agents.items() if a["variant"] == v],
             "model": next((a["model"] for a in mine if "model" in a), None), "scores": {}}
        for phase in PHASES:
            per = {st: C.variant_seed_scores(res.agents, phase, st).get(v, {}) for st in _STATS}
            if not per["score"]:
                continue
            rows = {}
            for d, xs in per["score"].items():
                kind = next((a["scores"][phase][d]["score_kind"] for a in mine if d in a["scores"].get(phase, {})), None)
                rows[d] = {**C.seed_stats(xs), "score_kind": kind}
                for st in _STATS[1:]:
                    vals = per[st].get(d, [])
                    if any(x is not None for x in vals):
                        rows[d][st] = C.seed_stats(vals)
            b["scores"][phase] = rows
        first = min(cfg.training_seeds())
        name = next((n for n, a in res.agents.items() if a["variant"] == v and a["seed"] == first), None)
        emb = out / "embeddings" / f"{name}.npz"
        if name and emb.is_file() and status.get(f"embed-{name}") == "done":
            meta = json.loads(emb.with_suffix(".meta.json").read_text())
            b.update(embedding_file=str(emb), embedding_agent=name, silhouette=meta["silhouette"],
                     silhouette_2d=meta["silhouette_2d"])
        res.backbones[v] = b
    return res


def _reference(cfg: MultiTaskConfig, jobs: Sequence[Job], train_tasks: Sequence[str]) -> dict[str, dict]:
    """domain -> {"random", "data", "random_source", "data_source"}: the random policy's score from
    its evaluation job (same evaluator, env seeds and episode caps as the agents), the data's from
    its episodes (`data_reference`)."""
    out_dir = Path(cfg.out_dir).resolve()
    status = {j.name: j.status for j in jobs}
    ref: dict[str, dict] = {}
    p = out_dir / "evals" / f"{RANDOM}-train.json"
    if p.is_file() and status.get(f"eval-{RANDOM}-train") == "done":
        for d, row in domain_table(json.loads(p.read_text())).items():
            ref.setdefault(d, {})["random"] = row["score"]
            ref[d]["random_source"] = f"evaluated here: uniform random actions, {cfg.eval_episodes} episode(s) per task"
    try:
        data = data_reference(cfg.data_dir, train_tasks)
    except (OSError, ValueError) as err:  # unreadable data: the study's jobs report it; no data score
        print(f"multitask study: no data scores (summary 'data' is null): {type(err).__name__}: {err}",
              file=sys.stderr)
        return ref
    for d, row in data.items():
        ref.setdefault(d, {})["data"] = row["score"]
        ref[d]["data_source"] = "the training data's episodes (mean return / success rate, same normalisation)"
    return ref


def run_multitask(cfg: MultiTaskConfig, progress: bool = True) -> MultiTaskResult:
    """The whole study (module docstring); writes `out_dir/results.json` and `out_dir/summary.json`.
    Raises RuntimeError naming each failed job (and its log) after every job that could run has run;
    the results of those that finished stay on disk, and a re-run continues from them."""
    t0 = time.perf_counter()
    train_tasks, holdout_tasks = find_study_tasks(cfg.data_dir, cfg.tasks, cfg.holdout_tasks)
    jobs = plan_jobs(cfg, train_tasks, holdout_tasks)
    out = Path(cfg.out_dir).resolve()
    random_policy_model(out / RANDOM / "model.pt")
    run_jobs(jobs, cfg.workers, out / "logs", progress=progress)
    res = collect_results(cfg, jobs, train_tasks, holdout_tasks, time.perf_counter() - t0)
    res.reference = _reference(cfg, jobs, train_tasks)
    per_task = {n: {ph: per_task_rows(ev) for ph, ev in phases.items()} for n, phases in res.evals.items()}
    atomic_json(out / "results.json", {**res.metrics(), "per_task": per_task, "evals": res.evals,
                                       "config": cfg.to_dict()})
    atomic_json(out / "summary.json", res.summary())
    bad = [j for j in jobs if j.status in ("failed", "blocked")]
    if bad:
        raise RuntimeError(f"multitask study: {len(bad)} job(s) did not finish (re-running continues):\n"
                           + "\n".join(f"  {j.name}: {j.status}: {j.error}" for j in bad))
    return res
