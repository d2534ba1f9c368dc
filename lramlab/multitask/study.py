"""The multi-task study itself: `plan_jobs` (what runs), `collect_results` / `MultiTaskResult` (what it
found: per backbone and phase, per-domain scores; embeddings), `run_multitask` (both, and
`results.json`). See `lramlab.multitask` for the protocol."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from lramlab.multitask.config import MultiTaskConfig, find_study_tasks, parse_backbone
from lramlab.multitask.jobs import Job, atomic_json, load_embedding, run_jobs

PHASES = ("train", "zeroshot", "finetuned")  # evaluations: training tasks; hold-out before / after fine-tuning


# ============================================================================ the study
_COST_RANK = {"xlstm": 0, "mamba": 1, "dt": 2}  # start the slowest trainings first (CPU)


def plan_jobs(cfg: MultiTaskConfig, train_tasks: Sequence[str], holdout_tasks: Sequence[str]) -> list[Job]:
    """Every job of the study, slowest trainings first; see the module docstring."""
    out = Path(cfg.out_dir).resolve()
    data = str(Path(cfg.data_dir).resolve())
    trains, fts, evals, embeds, ft_evals = [], [], [], [], []
    for spec in sorted(cfg.specs(), key=lambda s: _COST_RANK.get(s["backbone"], 9)):
        n = spec["name"]
        run_dir = out / "runs" / n
        model = str(run_dir / "model.pt")
        tc = cfg.train_config(spec, train_tasks, run_dir)
        tc.data = (data,)
        trains.append(Job(f"train-{n}", "train", {"train": tc.to_dict(), "threads": cfg.threads},
                          output=str(run_dir / "metrics.json")))
        ev = dict(episodes=cfg.eval_episodes, seed=cfg.seed, greedy=cfg.greedy, device=cfg.device, data=data,
                  on_failure=cfg.on_failure, max_steps=cfg.eval_max_steps, workers=cfg.eval_workers,
                  threads=cfg.threads)
        stamp = dict(episodes=cfg.eval_episodes, seed=cfg.seed, greedy=cfg.greedy, max_steps=cfg.eval_max_steps)
        phases = [("train", list(train_tasks), model, f"train-{n}")]
        if holdout_tasks:
            phases.append(("zeroshot", list(holdout_tasks), model, f"train-{n}"))
            if cfg.finetune_steps:
                ft_dir = out / "runs" / f"{n}-ft"
                ftc = cfg.train_config(spec, holdout_tasks, ft_dir, finetune_from=model)
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
        if cfg.embeddings:
            path = out / "embeddings" / f"{n}.npz"
            st = dict(n_per_task=cfg.embed_per_task, context=cfg.embed_context, seed=cfg.seed, tasks=list(train_tasks))
            embeds.append(Job(f"embed-{n}", "embed", {**st, "model": model, "data": data, "device": cfg.device,
                                                      "out": str(path), "threads": cfg.threads, "stamp": st},
                              needs=(f"train-{n}",), output=str(path)))
    return trains + fts + evals + embeds + ft_evals


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
    """What `run_multitask` found: per backbone its runs, evaluations and embedding (see `metrics`)."""

    out_dir: str
    train_tasks: list[str]
    holdout_tasks: list[str]
    backbones: dict[str, dict] = field(default_factory=dict)   # name -> spec, n_params, runs, scores, silhouettes
    evals: dict[str, dict[str, dict]] = field(default_factory=dict)  # name -> phase -> EvalResult.to_dict()
    jobs: list[Job] = field(default_factory=list)
    seconds: float = 0.0

    def scores(self, phase: str = "train", stat: str = "score") -> dict[str, dict[str, float]]:
        """backbone -> {domain: `stat` of `domain_table`} for one evaluation phase."""
        return {n: {d: r[stat] for d, r in b["scores"][phase].items()}
                for n, b in self.backbones.items() if phase in b["scores"]}

    def embeddings(self) -> dict[str, Any]:
        """backbone -> EmbeddingResult (from the embedding jobs' files)."""
        out = {}
        for n, b in self.backbones.items():
            if b.get("embedding_file"):
                out[n] = load_embedding(b["embedding_file"])
        return out

    def figures(self) -> dict[str, Any]:
        """Fig. 3 (`scores`), the hold-out figure (`holdout`), domain separation (`silhouette`) and one
        UMAP per backbone (`umap_<name>`), for what the study has."""
        from lramlab.analysis import multitask as F
        from lramlab.analysis.plots import umap_scatter

        figs: dict[str, Any] = {}
        if self.scores("train"):
            figs["scores"] = F.score_bars(self.scores("train"), self.scores("train", "score_iqm"),
                                          ytitle="normalised score (Dark-Room: return / best return)")
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
        """One row per backbone, phase and domain (a table without pandas)."""
        return [{"backbone": n, "phase": ph, "domain": d, **{k: v for k, v in r.items() if k != "failed"}}
                for n, b in self.backbones.items() for ph, rows in b["scores"].items() for d, r in rows.items()]

    def metrics(self) -> dict:
        """metrics.json of the notebook: everything above as numbers, plus the study's verdicts."""
        mw = {n: b["scores"].get("train", {}).get("metaworld", {}).get("success_rate")
              for n, b in self.backbones.items()}
        mw = {n: v for n, v in mw.items() if v is not None}
        sil = {n: b["silhouette"] for n, b in self.backbones.items() if b.get("silhouette") is not None}
        out = {"out_dir": self.out_dir, "train_tasks": self.train_tasks, "holdout_tasks": self.holdout_tasks,
               "backbones": self.backbones, "seconds": round(self.seconds, 1),
               "jobs": {j.name: {"status": j.status, "seconds": round(j.seconds, 1)} for j in self.jobs}}
        if mw:
            best = max(mw, key=lambda n: mw[n])
            out["metaworld_success"] = mw
            out["best_metaworld"] = {"backbone": best, "success_rate": mw[best]}
        if sil:
            out["silhouette_ranking"] = sorted(sil, key=lambda n: -sil[n])
        params = [b["n_params"] for b in self.backbones.values() if b.get("n_params")]
        if params:
            out["param_ratio"] = max(params) / min(params)  # largest / smallest model
        return out


def collect_results(cfg: MultiTaskConfig, jobs: Sequence[Job], train_tasks: Sequence[str],
                    holdout_tasks: Sequence[str], seconds: float = 0.0) -> MultiTaskResult:
    """Read the run directories, evaluation files and embeddings the jobs wrote."""
    out = Path(cfg.out_dir).resolve()
    res = MultiTaskResult(str(out), list(train_tasks), list(holdout_tasks), jobs=list(jobs), seconds=seconds)
    status = {j.name: j.status for j in jobs}
    for spec in cfg.specs():
        n = spec["name"]
        b: dict[str, Any] = {"spec": next(x for x in cfg.backbones if parse_backbone(x)["name"] == n),
                             "backbone": spec["backbone"], "slstm_at": spec["slstm_at"], "scores": {}}
        for key, run_dir in (("train", out / "runs" / n), ("finetune", out / "runs" / f"{n}-ft")):
            if (run_dir / "metrics.json").is_file() and status.get(f"{'train' if key == 'train' else 'finetune'}-{n}") == "done":
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
        emb = out / "embeddings" / f"{n}.npz"
        if emb.is_file() and status.get(f"embed-{n}") == "done":
            meta = json.loads(emb.with_suffix(".meta.json").read_text())
            b.update(embedding_file=str(emb), silhouette=meta["silhouette"], silhouette_2d=meta["silhouette_2d"])
        res.backbones[n] = b
    return res


def run_multitask(cfg: MultiTaskConfig, progress: bool = True) -> MultiTaskResult:
    """The whole study (module docstring); writes `out_dir/results.json`. Raises RuntimeError naming
    each failed job (and its log) after every job that could run has run; the results of those
    that finished stay on disk, and a re-run continues from them."""
    t0 = time.perf_counter()
    train_tasks, holdout_tasks = find_study_tasks(cfg.data_dir, cfg.tasks, cfg.holdout_tasks)
    jobs = plan_jobs(cfg, train_tasks, holdout_tasks)
    out = Path(cfg.out_dir).resolve()
    run_jobs(jobs, cfg.workers, out / "logs", progress=progress)
    res = collect_results(cfg, jobs, train_tasks, holdout_tasks, time.perf_counter() - t0)
    per_task = {n: {ph: per_task_rows(ev) for ph, ev in phases.items()} for n, phases in res.evals.items()}
    atomic_json(out / "results.json", {**res.metrics(), "per_task": per_task, "evals": res.evals,
                                       "config": cfg.to_dict()})
    bad = [j for j in jobs if j.status in ("failed", "blocked")]
    if bad:
        raise RuntimeError(f"multitask study: {len(bad)} job(s) did not finish (re-running continues):\n"
                           + "\n".join(f"  {j.name}: {j.status}: {j.error}" for j in bad))
    return res
