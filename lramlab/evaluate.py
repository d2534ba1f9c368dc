"""Evaluation: rollouts in the tasks' environments, normalised scores, per-domain mean and IQM.

    res = evaluate(EvalConfig(checkpoint="runs/x", tasks=("metaworld/reach-v2",), episodes=3))
    res.domains["metaworld"]["iqm"]

Per task: raw return (mean over episodes), normalised score (`manifests.normalize_score` of the
mean raw return: Atari human-normalised, Procgen min-max, DMControl data-normalised, success
tasks their success rate, raw tasks the return), success rate where the env reports success.
Per domain: mean and IQM (interquartile mean, Agarwal et al. 2021) of the tasks' normalised
scores. Tasks run in parallel worker processes (`workers`, spawn), each task with `n_envs`
environments stepping together in one model batch.

`lramlab eval --checkpoint RUN_DIR --tasks T1,T2 --episodes N [--json]`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lramlab._dataclass_cli import check_fields, command


MAX_ENVS = 64  # environments stepping together when n_envs is not given


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50 % (scipy.stats.trim_mean(x, 0.25), rliable's IQM).

    floor(n/4) values are cut from each end of the sorted values; NaN for no values.
    """
    x = np.sort(np.asarray(list(values), dtype=np.float64).ravel())
    n = len(x)
    if n == 0:
        return float("nan")
    if np.isnan(x).any():
        raise ValueError("iqm: values contain NaN")
    k = int(0.25 * n)
    return float(x[k:n - k].mean())


@dataclass
class TaskScore:
    """One task's evaluation."""

    task: str
    domain: str
    episodes: int
    returns: list[float]
    mean_return: float
    normalized_score: float
    success_rate: float | None = None
    score_kind: str = ""
    available: bool = True
    reason: str = ""


@dataclass
class EvalResult:
    tasks: list[TaskScore] = field(default_factory=list)
    domains: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)   # task -> why it did not run

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat, namespaced numbers for metric logs: eval/<domain>/normalized_score, ..."""
        out: dict[str, float] = {}
        for t in self.tasks:
            out[f"{prefix}/{t.task}/return"] = t.mean_return
            out[f"{prefix}/{t.task}/normalized_score"] = t.normalized_score
        for dom, d in self.domains.items():
            out[f"{prefix}/{dom}/normalized_score"] = d["mean"]
            out[f"{prefix}/{dom}/iqm"] = d["iqm"]
        if self.domains:
            out[f"{prefix}/normalized_score"] = float(np.mean([d["mean"] for d in self.domains.values()]))
        return out

    def to_dict(self) -> dict:
        return {"tasks": [asdict(t) for t in self.tasks], "domains": self.domains, "skipped": self.skipped}


def score_task(spec, returns: Sequence[float], success_rate: float | None) -> TaskScore:
    """Normalised score of a task from its episodes' raw returns (manifest constants)."""
    from lramlab.manifests import normalize_score

    rets = [float(r) for r in returns]
    mean = float(np.mean(rets)) if rets else float("nan")
    if spec.score_kind == "success":
        if success_rate is None:
            raise ValueError(f"task {spec.id}: score_kind 'success' but the env reported no success flag")
        norm = float(normalize_score(spec, success_rate))
    else:
        norm = float(normalize_score(spec, mean))
    return TaskScore(task=spec.id, domain=spec.domain, episodes=len(rets), returns=rets, mean_return=mean,
                     normalized_score=norm, success_rate=success_rate, score_kind=spec.score_kind)


def aggregate(scores: Sequence[TaskScore]) -> dict[str, dict[str, float]]:
    """Per domain: mean and IQM of the tasks' normalised scores, and the task count."""
    by: dict[str, list[float]] = {}
    for s in scores:
        if s.available and not math.isnan(s.normalized_score):
            by.setdefault(s.domain, []).append(s.normalized_score)
    return {d: {"mean": float(np.mean(v)), "iqm": iqm(v), "n_tasks": len(v)} for d, v in sorted(by.items())}


# ----------------------------------------------------------------------------------------
# workers


_WORKER_MODEL = None


def _init_worker(model_cfg: dict, state: dict, device: str, threads: int) -> None:
    global _WORKER_MODEL
    torch.set_num_threads(max(1, threads))
    from lramlab.train.checkpoint import build_from_config_dict

    m = build_from_config_dict(model_cfg)
    m.load_state_dict(state)
    _WORKER_MODEL = m.to(device).eval()


def _run_one(args: tuple) -> tuple[str, Any]:
    task, kw = args
    from lramlab.rollout import run_task

    try:
        res = run_task(_WORKER_MODEL, task, **kw)
        return task, [(e.ret, e.success) for e in res.episodes]
    except Exception as err:  # noqa: BLE001 - report which task failed and why, keep the others
        return task, f"{type(err).__name__}: {err}"


def evaluate_model(model: torch.nn.Module, tasks: Sequence[Any], episodes: int = 3, *, n_envs: int = 0,
                   workers: int = 1, seed: int = 0, greedy: bool = True, device: Any = None,
                   record_dir: str | None = None, frames: bool = False, skip_unavailable: bool = False,
                   target_return: float | None = None, progress: bool = False) -> EvalResult:
    """Roll out `model` on `tasks` and score them (see the module docstring).

    n_envs: environments per task stepping together (0: all `episodes` at once, at most MAX_ENVS).
    workers > 1: tasks spread over that many spawned processes (CPU), each with its own model copy.
    skip_unavailable: a task whose simulator is missing here is listed in `skipped` instead of failing.
    record_dir: rollouts are written there as episode_000000.hdf5, ...; a task directory there that
    already holds episodes is refused (they would be overwritten).
    """
    from lramlab.envs import domain_available
    from lramlab.rollout import run_task, task_spec

    specs = [task_spec(t) for t in tasks]
    if record_dir is not None:
        from lramlab.data.store import list_episode_files

        for s in specs:
            d = Path(record_dir) / s.domain / s.name
            n = len(list_episode_files(d)) if d.is_dir() else 0
            if n:
                raise ValueError(f"--record {record_dir}: {d} already holds {n} episode files, which the recorded "
                                 f"rollouts (episode_000000.hdf5, ...) would overwrite; give a new directory")
    res = EvalResult()
    runnable = []
    for s in specs:
        ok, why = domain_available(s.domain)
        if ok:
            runnable.append(s)
        elif skip_unavailable:
            res.skipped[s.id] = why
        else:
            raise RuntimeError(f"cannot evaluate {s.id}: {why}")
    # 0: all episodes in one batch, up to MAX_ENVS (--episodes 10^9 must not build 10^9 envs at once)
    kw = dict(episodes=episodes, n_envs=n_envs or min(episodes, MAX_ENVS), seed=seed, greedy=greedy,
              record_dir=record_dir, frames=frames, target_return=target_return)
    outcomes: dict[str, Any] = {}
    if workers > 1 and len(runnable) > 1:
        import multiprocessing as mp

        from lramlab.train.checkpoint import config_to_dict

        base = model.module if hasattr(model, "module") else model
        cfg = config_to_dict(base.cfg)
        state = {k: v.detach().cpu() for k, v in base.state_dict().items()}
        ctx = mp.get_context("spawn")
        dev = "cpu" if device is None else str(device)
        threads = max(1, (torch.get_num_threads() or 1) // workers)
        with ctx.Pool(min(workers, len(runnable)), initializer=_init_worker,
                      initargs=(cfg, state, dev, threads)) as pool:
            it = pool.imap_unordered(_run_one, [(s.id, kw) for s in runnable])
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(it, total=len(runnable), desc="eval", unit="task")
            for task, out in it:
                outcomes[task] = out
    else:
        it = runnable
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(runnable, desc="eval", unit="task")
        for s in it:
            r = run_task(model, s, **kw)
            outcomes[s.id] = [(e.ret, e.success) for e in r.episodes]
    for s in runnable:
        out = outcomes[s.id]
        if isinstance(out, str):
            if skip_unavailable:
                res.skipped[s.id] = out
                continue
            raise RuntimeError(f"evaluation of {s.id} failed: {out}")
        rets = [r for r, _ in out]
        succ = [x for _, x in out if x is not None]
        res.tasks.append(score_task(s, rets, float(np.mean(succ)) if succ else None))
    res.domains = aggregate(res.tasks)
    return res


def eval_callback(cfg) -> "Callable[[torch.nn.Module, list, int], dict] | None":
    """The periodic rollout evaluation a `TrainConfig` asks for (`eval_every`, `eval_episodes`),
    as the callback `lramlab.train.run(cfg, evaluate=...)` takes; None when `cfg.eval_every` is 0.

    It plays `eval_episodes` episodes of every training task (tasks whose simulator is missing
    here are skipped, and listed) and returns `EvalResult.metrics(prefix="eval")`."""
    if not cfg.eval_every:
        return None

    def evaluate_run(model: torch.nn.Module, tasks: list, step: int) -> dict:
        device = next(model.parameters()).device
        res = evaluate_model(model, tasks, episodes=cfg.eval_episodes, seed=cfg.seed, device=device,
                             skip_unavailable=True)
        return res.metrics(prefix="eval")

    return evaluate_run


# ----------------------------------------------------------------------------------------
# config + CLI


@dataclass
class EvalConfig:
    """An evaluation. Paper: every task, 3 evaluation seeds (App. C.1)."""

    checkpoint: str = ""                 # run dir, training checkpoint or model.save file
    tasks: tuple[str, ...] = ()          # task ids/names (empty: the run's training tasks)
    episodes: int = 3                    # episodes per task (paper: 3 seeds)
    n_envs: int = 0                      # envs per task stepping together (0: all episodes at once, up to 64)
    workers: int = 1                     # parallel processes across tasks
    seed: int = 0
    greedy: bool = True                  # argmax actions (False: sample)
    device: str = "cpu"
    record: str | None = None            # write rollouts to this trajectory store
    frames: bool = False                 # also record rendered frames
    skip_unavailable: bool = True        # list tasks whose simulator is missing instead of failing
    target_return: float | None = None   # override the manifest's target return (raw units)

    def __post_init__(self):
        if isinstance(self.tasks, str):
            self.tasks = tuple(t for t in self.tasks.split(",") if t)
        self.tasks = tuple(self.tasks)
        check_fields(self)  # types; target_return finite
        if not self.checkpoint:
            raise ValueError("EvalConfig.checkpoint is empty: give a run directory or checkpoint file")
        for name in ("episodes",):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected >= 1")
        for name in ("n_envs", "workers", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected >= 0")


def run_tasks_of(checkpoint: str) -> list[str]:
    """The training tasks recorded in a run directory's config.json."""
    p = Path(checkpoint)
    cfg = (p if p.is_dir() else p.parent.parent) / "config.json"
    if cfg.is_file():
        return list(json.loads(cfg.read_text()).get("tasks", []))
    return []


def evaluate(cfg: EvalConfig) -> EvalResult:
    from lramlab.train.checkpoint import load_model_from_checkpoint

    model = load_model_from_checkpoint(cfg.checkpoint, map_location=cfg.device)
    tasks = list(cfg.tasks) or run_tasks_of(cfg.checkpoint)
    if not tasks:
        raise ValueError(f"no tasks given and no config.json with the run's tasks near {cfg.checkpoint}")
    return evaluate_model(model, tasks, cfg.episodes, n_envs=cfg.n_envs, workers=cfg.workers, seed=cfg.seed,
                          greedy=cfg.greedy, device=cfg.device, record_dir=cfg.record, frames=cfg.frames,
                          skip_unavailable=cfg.skip_unavailable, target_return=cfg.target_return,
                          progress=True)


def format_table(res: EvalResult) -> str:
    lines = [f"{'task':<36} {'return':>10} {'score':>8} {'success':>8}"]
    for t in res.tasks:
        sr = "" if t.success_rate is None else f"{t.success_rate:.2f}"
        lines.append(f"{t.task:<36} {t.mean_return:>10.3f} {t.normalized_score:>8.3f} {sr:>8}")
    lines.append("")
    lines.append(f"{'domain':<16} {'mean':>8} {'iqm':>8} {'tasks':>6}")
    for d, v in res.domains.items():
        lines.append(f"{d:<16} {v['mean']:>8.3f} {v['iqm']:>8.3f} {v['n_tasks']:>6}")
    for t, why in res.skipped.items():
        lines.append(f"skipped {t}: {why}")
    return "\n".join(lines)


@command("lramlab eval")
def main(argv: list[str] | None = None) -> int:
    """`lramlab eval --checkpoint RUN_DIR --tasks T1,T2 --episodes N [--json [FILE|-]]`."""
    from lramlab._dataclass_cli import JsonOutput, parse_cli

    cfg, json_dest = parse_cli(EvalConfig, argv, prog="lramlab eval", required=("checkpoint",))
    with JsonOutput(json_dest) as out:
        res = evaluate(cfg)
        out.write(res.to_dict())
    if not out.to_stdout:
        print(format_table(res))
    return 0


__all__ = ["iqm", "TaskScore", "EvalResult", "EvalConfig", "score_task", "aggregate", "evaluate_model",
           "evaluate", "main"]
