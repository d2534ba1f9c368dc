"""Evaluation: rollouts in the tasks' environments, normalised scores, per-domain mean and IQM.

    res = evaluate(EvalConfig(checkpoint="runs/x", tasks=("metaworld/reach-v2",), episodes=3))
    res.domains["metaworld"]["iqm"]

The protocol is docs/protocol.md. Per task: raw return (mean over episodes of the RAW env rewards),
normalised score (`manifests.normalize_score` of the mean raw return, by the task's `score_kind`:
"human" Atari human-normalised, "minmax" Procgen, "data" DMControl, "success" the success rate,
"raw" the return itself), the paper's data-normalised score (`manifests.data_normalize`, Fig. 3)
where the task has constants, success rate where the env reports success, and what conditioned
the agent: target return and where it came from, reward rule, episode cap, seeds.

Target (R̂_1, in the model's reward units): `target="data"` (default, paper App. C.1) = the highest
return of the task's data (`data.store.data_target_return`, under the `data` roots); "manifest" =
the manifest's constant; a number = that. Dark-Room always uses its flat manifest target (a
per-goal target would reveal the hidden goal's distance).

Per domain: mean and IQM (interquartile mean, Agarwal et al. 2021) of the scores of ONE kind, the
domain's (`manifests.domain_score_kind`: Atari "human"); tasks of another kind (Carnival, Pooyan:
"raw") are aggregated beside it under "other_kinds", never averaged in. Likewise the data-
normalised scores and success rates. A NaN score makes its mean and IQM NaN (listed in "nan_tasks").
Scores of different kinds are never averaged together: per domain "normalized" holds the domain's
0..1-type score (its normalised kind; a "raw" domain with a known best return, Dark-Room, as
return / best return), and the cross-domain headline (`EvalResult.metrics`: eval/normalized_score)
averages only those -- never a raw return.

Caps: an episode cut below the task's whole episode (`max_steps` < the manifest's episode_length)
is never normalised against whole-episode constants: such a task keeps its raw return (and its
success rate), its normalised and data-normalised scores are None, `capped` is True and
`score_note` says why. Whole episodes are the default everywhere.

Failures are never hidden: a task whose rollout raises is recorded with its error (NaN scores);
`on_failure="raise"` (default) raises `EvaluationFailed` (carrying the whole result) after every task
ran, "nan" keeps the failed tasks in the means (which become NaN), "skip" leaves them out of the
means and lists them per domain under "failed". Only a domain whose simulator is missing here is
"unavailable" (`skipped`). Tasks run in parallel worker processes (`workers`, spawn), each task
with `n_envs` environments stepping together in one model batch.

`lramlab eval --checkpoint RUN_DIR --tasks T1,T2 --episodes N [--target data|manifest|X] [--out F] [--json]`:
exit 1 when a task failed (unless --on-failure skip), 2 when no task could run here.
"""
from __future__ import annotations

import errno
import json
import math
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lramlab._dataclass_cli import check_fields, command, json_dumps
from lramlab._io import file_sha256

ON_FAILURE = ("raise", "nan", "skip")
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
    """One task's evaluation (NaN scores and `error` set when its rollout failed)."""

    task: str
    domain: str
    episodes: int
    returns: list[float]
    mean_return: float
    normalized_score: float | None               # None: not normalisable here (capped; see score_note)
    success_rate: float | None = None
    score_kind: str = ""
    available: bool = True
    reason: str = ""
    data_normalized_score: float | None = None   # paper Fig. 3 (None: no constants for the task)
    target_return: float | None = None           # R̂_1 before the reward scale, in the model's units
    target_source: str = ""                      # where target_return came from
    reward_rule: str = ""                        # manifests.reward_rule of the task
    episode_cap: int = 0                         # agent steps
    capped: bool = False                         # episode_cap < the task's whole episode (scores: see score_note)
    score_note: str = ""                         # why a score is None (a capped evaluation)
    seeds: list[int] = field(default_factory=list)  # env seeds, one per episode
    error: str = ""                              # "Type: message" when the rollout raised
    error_traceback: str = ""


class EvaluationFailed(RuntimeError):
    """At least one task's rollout raised; `.result` is the whole EvalResult (failures included)."""

    def __init__(self, result: "EvalResult"):
        self.result = result
        lines = [f"{t}: {e}" for t, e in result.failed.items()]
        super().__init__(f"{len(lines)} task(s) failed during evaluation:\n  " + "\n  ".join(lines))


@dataclass
class EvalResult:
    tasks: list[TaskScore] = field(default_factory=list)
    domains: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)   # task -> why its domain is unavailable here
    failed: dict[str, str] = field(default_factory=dict)    # task -> the error its rollout raised
    protocol: dict[str, Any] = field(default_factory=dict)  # what conditioned the rollouts (see evaluate_model)

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat, namespaced numbers for metric logs, one kind per key (never a raw return averaged
        with normalised scores):

        - eval/<task>/return (raw), eval/<task>/normalized_score (normalised kinds only),
          eval/<task>/data_normalized_score;
        - eval/<domain>/return: mean raw return over the domain's tasks;
          eval/<domain>/normalized_score, /iqm: the domain's normalised mean and IQM (`aggregate`'s
          "normalized": its kind, or return / best return for Dark-Room); absent when the domain
          has none (a raw domain without a best return, or every task capped);
          eval/<domain>/data_normalized_score, /success_rate;
        - eval/normalized_score: the mean of the domains' normalised means (a NaN domain makes it
          NaN); eval/data_normalized_score likewise; eval/n_failed.
        """
        out: dict[str, float] = {}
        for t in self.tasks:
            out[f"{prefix}/{t.task}/return"] = t.mean_return
            if t.normalized_score is not None and t.score_kind != "raw":
                out[f"{prefix}/{t.task}/normalized_score"] = t.normalized_score
            if t.data_normalized_score is not None:
                out[f"{prefix}/{t.task}/data_normalized_score"] = t.data_normalized_score
        for dom, d in self.domains.items():
            if d.get("return", {}).get("n_tasks"):
                out[f"{prefix}/{dom}/return"] = d["return"]["mean"]
            nz = d.get("normalized", {})
            if nz.get("n_tasks"):  # NaN scores are reported (a failed task), never hidden
                out[f"{prefix}/{dom}/normalized_score"] = nz["mean"]
                out[f"{prefix}/{dom}/iqm"] = nz["iqm"]
            dn = d.get("data_normalized", {})
            if dn.get("n_tasks"):
                out[f"{prefix}/{dom}/data_normalized_score"] = dn["mean"]
                out[f"{prefix}/{dom}/data_normalized_iqm"] = dn["iqm"]
            if d.get("success_rate", {}).get("n_tasks"):
                out[f"{prefix}/{dom}/success_rate"] = d["success_rate"]["mean"]
        # across domains: normalised means only; a NaN domain makes the average NaN
        means = [d["normalized"]["mean"] for d in self.domains.values() if d.get("normalized", {}).get("n_tasks")]
        if means:
            out[f"{prefix}/normalized_score"] = float(np.mean(means))
        dns = [d["data_normalized"]["mean"] for d in self.domains.values()
               if d.get("data_normalized", {}).get("n_tasks")]
        if dns:
            out[f"{prefix}/data_normalized_score"] = float(np.mean(dns))
        if self.failed:
            out[f"{prefix}/n_failed"] = float(len(self.failed))
        return out

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "tasks": [asdict(t) for t in self.tasks], "domains": self.domains,
                "skipped": self.skipped, "failed": self.failed}


def score_task(spec, returns: Sequence[float], success_rate: float | None, **record: Any) -> TaskScore:
    """Scores of a task from its episodes' raw returns (manifest constants). `record`: TaskScore
    fields saying what conditioned the rollouts (target_return, target_source, episode_cap, ...).
    An `episode_cap` below the task's whole episode leaves the normalised and data-normalised
    scores None (module docstring: caps)."""
    from lramlab.manifests import data_normalize, normalize_score, reward_rule

    rets = [float(r) for r in returns]
    mean = float(np.mean(rets)) if rets else float("nan")
    if spec.score_kind == "success":
        if success_rate is None:
            raise ValueError(f"task {spec.id}: score_kind 'success' but the env reported no success flag")
        norm: float | None = float(normalize_score(spec, success_rate))
    else:
        norm = float(normalize_score(spec, mean))
    dn = data_normalize(spec, mean)
    record.setdefault("reward_rule", reward_rule(spec))
    cap = int(record.get("episode_cap") or 0)
    if cap and spec.episode_length and cap < int(spec.episode_length):
        record["capped"] = True
        kept = {"success": "the success rate within the cap and the raw return",
                "raw": "the raw return (no return / best return)"}.get(spec.score_kind, "the raw return only")
        record["score_note"] = (f"capped at {cap} of {int(spec.episode_length)} steps: {kept}; no normalised score "
                                f"against whole-episode constants")
        if spec.score_kind not in ("success", "raw"):
            norm = None
        dn = None
    return TaskScore(task=spec.id, domain=spec.domain, episodes=len(rets), returns=rets, mean_return=mean,
                     normalized_score=norm, success_rate=success_rate, score_kind=spec.score_kind,
                     data_normalized_score=dn, **record)


def failed_score(spec, error: str, error_traceback: str = "", **record: Any) -> TaskScore:
    """A task whose rollout raised: NaN scores (NaN data-normalised score where it has constants)."""
    from lramlab.manifests import data_normalize, reward_rule

    record.setdefault("reward_rule", reward_rule(spec))
    dn = data_normalize(spec, float("nan"))
    return TaskScore(task=spec.id, domain=spec.domain, episodes=0, returns=[], mean_return=float("nan"),
                     normalized_score=float("nan"), score_kind=spec.score_kind, data_normalized_score=dn,
                     error=error, error_traceback=error_traceback, **record)


def _summary(items: Sequence[tuple[str, float]]) -> dict:
    """mean / IQM / n_tasks of (task, value) pairs; any NaN makes mean and IQM NaN (named in nan_tasks)."""
    vals = [float(v) for _, v in items]
    nan_tasks = [t for t, v in items if math.isnan(float(v))]
    out: dict[str, Any] = {"n_tasks": len(vals)}
    if not vals or nan_tasks:
        out.update(mean=float("nan"), iqm=float("nan"))
    else:
        out.update(mean=float(np.mean(vals)), iqm=iqm(vals))
    if nan_tasks:
        out["nan_tasks"] = nan_tasks
    return out


def _domain_kind(domain: str, scores: Sequence[TaskScore]) -> str:
    from collections import Counter

    from lramlab.manifests import domain_score_kind

    try:
        return domain_score_kind(domain)
    except ValueError:  # a domain outside the manifests (custom specs): its scores' most common kind
        return Counter(s.score_kind for s in scores).most_common(1)[0][0]


def best_return(task: str) -> float | None:
    """The best possible return of a raw-scored task when known (Dark-Room: `extra.max_return`)."""
    from lramlab.manifests import get_task

    try:
        best = (get_task(task).extra or {}).get("max_return")
    except (KeyError, ValueError):
        return None
    return float(best) if best else None


def aggregate(scores: Sequence[TaskScore], exclude_failed: bool = False) -> dict[str, dict]:
    """Per domain: mean and IQM of the normalised scores of the domain's score kind (see the module
    docstring), the same for the data-normalised scores and success rates, other kinds beside.

    {domain: {"score_kind", "mean", "iqm", "n_tasks"[, "nan_tasks"],
              "return": {"mean", "iqm", "n_tasks"}  (raw returns),
              "normalized": {"kind", "mean", "iqm", "n_tasks"}  (the 0..1-type score; absent for a raw
                            domain without a best return),
              "data_normalized": {"mean", "iqm", "n_tasks"[, "nan_tasks"], "without_constants": [...]},
              ["success_rate": {...}], ["other_kinds": {kind: {..., "tasks": [...]}}], ["failed": [...]],
              ["capped": {"tasks": [...], "note": ...}]}}
    "mean"/"iqm" are the domain's own kind (for a raw domain: raw returns); capped tasks of a
    normalised kind (score None) are left out of them and listed under "capped".
    exclude_failed: tasks with an error are left out of every mean and listed under "failed".
    """
    by: dict[str, list[TaskScore]] = {}
    for s in scores:
        if s.available:
            by.setdefault(s.domain, []).append(s)
    out: dict[str, dict] = {}
    for dom, ss in sorted(by.items()):
        failed = [s.task for s in ss if s.error] if exclude_failed else []
        use = [s for s in ss if s.task not in failed]
        kind = _domain_kind(dom, ss)
        mine = [s for s in use if s.score_kind == kind and s.normalized_score is not None]
        d: dict[str, Any] = {"score_kind": kind, **_summary([(s.task, s.normalized_score) for s in mine])}
        d["return"] = _summary([(s.task, s.mean_return) for s in use])
        if kind != "raw":
            d["normalized"] = {"kind": kind, **_summary([(s.task, s.normalized_score) for s in mine])}
        else:
            best = {s.task: best_return(s.task) for s in use if s.score_kind == "raw"}
            frac = [s for s in use if s.score_kind == "raw" and not s.capped]
            if best and all(best.values()) and frac:
                d["normalized"] = {"kind": "return / best return",
                                   **_summary([(s.task, s.mean_return / best[s.task]) for s in frac])}
        with_dn = [s for s in use if s.data_normalized_score is not None]
        d["data_normalized"] = {**_summary([(s.task, s.data_normalized_score) for s in with_dn]),
                                "without_constants": [s.task for s in use if s.data_normalized_score is None
                                                      and not s.capped]}
        succ = [(s.task, s.success_rate) for s in use if s.success_rate is not None]
        if succ:
            d["success_rate"] = _summary(succ)
        others = sorted({s.score_kind for s in use} - {kind})
        if others:
            d["other_kinds"] = {k: {**_summary([(s.task, s.normalized_score) for s in use if s.score_kind == k
                                                and s.normalized_score is not None]),
                                    "tasks": [s.task for s in use if s.score_kind == k]} for k in others}
        capped = [s for s in use if s.capped]
        if capped:
            d["capped"] = {"tasks": [s.task for s in capped], "note": capped[0].score_note}
        if failed:
            d["failed"] = failed
        out[dom] = d
    return out


# ----------------------------------------------------------------------------------------
# targets


def resolve_target(spec, target: str | float = "data", data_dirs: dict[str, Path] | None = None) -> tuple[float, str]:
    """(R̂_1 before the reward scale, where it came from) for one task; see the module docstring."""
    from lramlab.manifests import FLAT_TARGET_DOMAINS

    if not isinstance(target, str):
        return float(target), "given"
    if target not in ("data", "manifest"):
        try:
            value = float(target)
        except ValueError:
            raise ValueError(f"target={target!r}: expected 'data', 'manifest' or a number") from None
        if not math.isfinite(value):
            raise ValueError(f"target={target}: expected a finite number (or 'data', 'manifest')")
        return value, "given"
    flat = spec.domain in FLAT_TARGET_DOMAINS
    if target == "manifest" or flat:
        if spec.target_return is None:
            raise ValueError(f"task {spec.id}: the manifest has no target_return; use target='data' or a number")
        why = (f" (flat for {spec.domain}: a per-task target would reveal the hidden goal)"
               if flat and target == "data" else "")
        return float(spec.target_return), "manifest" + why
    from lramlab.data.store import data_target_return

    d = (data_dirs or {}).get(spec.id)
    if d is None:
        raise KeyError(spec.id)
    return data_target_return(d), f"data: max return in {d}"


def resolve_targets(specs: Sequence[Any], target: str | float = "data",
                    data: Sequence[str] = ()) -> dict[str, tuple[float, str]]:
    """`resolve_target` for every task; target "data" without data for some tasks is one error naming them."""
    data_dirs: dict[str, Path] = {}
    if isinstance(target, str) and target == "data" and data:
        from lramlab.data.store import find_task_dirs

        data_dirs = find_task_dirs(list(data))
    out, missing = {}, []
    for s in specs:
        try:
            out[s.id] = resolve_target(s, target, data_dirs)
        except KeyError:
            missing.append(s.id)
    if missing:
        raise ValueError(f"target='data' needs each task's data (its best return is the target, paper App. C.1); "
                         f"none found for {missing} under data={list(data)}. Pass data=ROOT (the run's --data), "
                         f"or target='manifest' for the manifests' constants")
    return out


# ----------------------------------------------------------------------------------------
# workers


_WORKER_MODEL = None


def _init_worker(model_cfg: dict, state: dict, device: str, threads: int) -> None:
    global _WORKER_MODEL
    from lramlab._proc import die_with_parent

    die_with_parent()
    torch.set_num_threads(max(1, threads))
    from lramlab.train.checkpoint import build_from_config_dict

    m = build_from_config_dict(model_cfg)
    m.load_state_dict(state)
    _WORKER_MODEL = m.to(device).eval()


def _play(model, spec, kw: dict) -> tuple[str, Any]:
    """("ok", [(return, success), ...]) or ("error", (message, traceback)) -- a failure stays one task's."""
    from lramlab.rollout import run_task

    try:
        res = run_task(model, spec, **kw)
        return "ok", [(e.ret, e.success) for e in res.episodes]
    except Exception as err:  # noqa: BLE001 - recorded with the task, reported, never swallowed
        return "error", (f"{type(err).__name__}: {err}", traceback.format_exc()[-4000:])


def _run_one(args: tuple) -> tuple[str, tuple[str, Any]]:
    spec, kw = args
    return spec.id, _play(_WORKER_MODEL, spec, kw)


def evaluate_model(model: torch.nn.Module, tasks: Sequence[Any], episodes: int = 3, *, n_envs: int = 0,
                   workers: int = 1, seed: int = 0, greedy: bool = True, device: Any = None,
                   record_dir: str | None = None, frames: bool = False, skip_unavailable: bool = False,
                   target: str | float = "data", data: Sequence[str] = (), on_failure: str = "raise",
                   max_steps: int | None = None, progress: bool = False) -> EvalResult:
    """Roll out `model` on `tasks` and score them (see the module docstring).

    n_envs: environments per task stepping together (0: all `episodes` at once, at most MAX_ENVS).
    workers > 1: tasks spread over that many spawned processes (CPU), each with its own model copy.
    skip_unavailable: a task whose domain's simulator is missing here is listed in `skipped`
    instead of raising. target / data: R̂_1 (see `resolve_target`). on_failure: "raise" | "nan" |
    "skip" (module docstring). max_steps: cap episodes below the manifest's episode_length (None / 0:
    whole episodes, the default; a capped task's normalised scores are None, see the module docstring).
    record_dir: rollouts are written there as episode_000000.hdf5, ...; a task directory there that
    already holds episodes is refused (they would be overwritten).
    """
    from lramlab.envs import domain_available
    from lramlab.manifests import reward_rule
    from lramlab.rollout import task_spec

    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure={on_failure!r}; expected one of {list(ON_FAILURE)}")
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
    targets = resolve_targets(runnable, target, data)
    seeds = [seed + i for i in range(episodes)]
    res.protocol = {"episodes": episodes, "seed": seed, "env_seeds": seeds, "greedy": greedy,
                    "target": target if isinstance(target, str) else float(target), "data": [str(d) for d in data],
                    "reward_rules": {s.domain: reward_rule(s) for s in runnable}, "on_failure": on_failure,
                    "episode_end": "the env's own end or the cap (Atari: a whole game; life loss does not end it)",
                    "checkpoint": None, "checkpoint_sha256": None}
    # n_envs 0: all episodes in one batch, up to MAX_ENVS (not 10^9 envs at once)
    base = dict(episodes=episodes, n_envs=n_envs or min(episodes, MAX_ENVS), seed=seed, greedy=greedy, record_dir=record_dir,
                frames=frames, max_steps=max_steps)
    jobs = [(s, {**base, "target_return": targets[s.id][0]}) for s in runnable]
    outcomes: dict[str, tuple[str, Any]] = {}
    if workers > 1 and len(runnable) > 1:
        import multiprocessing as mp

        from lramlab.train.checkpoint import config_to_dict

        net = model.module if hasattr(model, "module") else model
        cfg = config_to_dict(net.cfg)
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        ctx = mp.get_context("spawn")
        dev = "cpu" if device is None else str(device)
        threads = max(1, (torch.get_num_threads() or 1) // workers)
        with ctx.Pool(min(workers, len(runnable)), initializer=_init_worker,
                      initargs=(cfg, state, dev, threads)) as pool:
            it = pool.imap_unordered(_run_one, jobs)
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(it, total=len(jobs), desc="eval", unit="task")
            for task, out in it:
                outcomes[task] = out
    else:
        it = jobs
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(jobs, desc="eval", unit="task")
        for s, kw in it:
            outcomes[s.id] = _play(model, s, kw)
    for s in runnable:
        status, out = outcomes[s.id]
        cap = int(min(max_steps, s.episode_length) if max_steps else s.episode_length)
        record = dict(target_return=targets[s.id][0], target_source=targets[s.id][1], episode_cap=cap,
                      seeds=list(seeds))  # score_task: a cap below the whole episode -> no normalised scores
        if status == "error":
            res.failed[s.id] = out[0]
            res.tasks.append(failed_score(s, out[0], out[1], **record))
            continue
        rets = [r for r, _ in out]
        succ = [x for _, x in out if x is not None]
        res.tasks.append(score_task(s, rets, float(np.mean(succ)) if succ else None, **record))
    res.domains = aggregate(res.tasks, exclude_failed=on_failure == "skip")
    if res.failed and on_failure == "raise":
        raise EvaluationFailed(res)
    return res


def eval_callback(cfg) -> "Callable[[torch.nn.Module, list, int], dict] | None":
    """The periodic rollout evaluation a `TrainConfig` asks for (`eval_every`, `eval_episodes`),
    as the callback `lramlab.train.run(cfg, evaluate=...)` takes; None when `cfg.eval_every` is 0.

    It plays `eval_episodes` episodes of every training task, conditioned on the best return of
    the task's data (`cfg.data`), and returns `EvalResult.metrics(prefix="eval")`. Tasks whose
    simulator is missing here are skipped; a task whose rollout raises does not stop training:
    its scores are NaN (so are its domain's), `eval/n_failed` counts it and the error goes to stderr."""
    if not cfg.eval_every:
        return None

    def evaluate_run(model: torch.nn.Module, tasks: list, step: int) -> dict:
        device = next(model.parameters()).device
        res = evaluate_model(model, tasks, episodes=cfg.eval_episodes, seed=cfg.seed, device=device,
                             skip_unavailable=True, target="data", data=tuple(cfg.data), on_failure="nan")
        for task, err in res.failed.items():
            print(f"eval at step {step}: {task} failed: {err}", file=sys.stderr)
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
    target: str = "data"                 # R̂_1: "data" (best return in the data), "manifest", or a number
    data: tuple[str, ...] = ()           # dataset roots for target "data" (empty: the run's --data)
    on_failure: str = "raise"            # a task whose rollout raises: raise (exit 1) | nan | skip
    out: str | None = None               # write the results JSON here (also when tasks failed)
    num_threads: int = 0                 # torch CPU threads (0: torch's default); 1 on a busy 2-core machine

    def __post_init__(self):
        if isinstance(self.tasks, str):
            self.tasks = tuple(t for t in self.tasks.split(",") if t)
        self.tasks = tuple(self.tasks)
        self.data = (self.data,) if isinstance(self.data, str) else tuple(self.data)
        check_fields(self)  # types; target finite
        if not self.checkpoint:
            raise ValueError("EvalConfig.checkpoint is empty: give a run directory or checkpoint file")
        for name in ("episodes",):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected >= 1")
        for name in ("n_envs", "workers", "seed", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected >= 0")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure={self.on_failure!r}: expected one of {list(ON_FAILURE)}")
        self.target = str(self.target)
        if self.target not in ("data", "manifest"):
            try:
                value = float(self.target)
            except ValueError:
                raise ValueError(f"EvalConfig.target={self.target!r}: expected 'data', 'manifest' or a number") from None
            if not math.isfinite(value):
                raise ValueError(f"EvalConfig.target={self.target}: expected a finite number (or 'data', 'manifest')")


def _run_config(checkpoint: str) -> dict:
    p = Path(checkpoint)
    cfg = (p if p.is_dir() else p.parent.parent) / "config.json"
    return json.loads(cfg.read_text()) if cfg.is_file() else {}


def run_tasks_of(checkpoint: str) -> list[str]:
    """The training tasks recorded in a run directory's config.json."""
    return list(_run_config(checkpoint).get("tasks", []))


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Load the checkpoint and `evaluate_model` it; the result's protocol names the checkpoint file
    and its sha256. Raises EvaluationFailed (with the result) as `evaluate_model` does."""
    from lramlab.train.checkpoint import load_model_from_checkpoint, resolve_checkpoint

    if cfg.num_threads:  # tiny per-step ops on more threads than free cores wait on each other
        torch.set_num_threads(cfg.num_threads)
    if cfg.record and Path(cfg.record).exists() and not Path(cfg.record).is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "--record: exists and is not a directory (expected a trajectory "
                                 "store directory, created when missing)", cfg.record)
    path = resolve_checkpoint(cfg.checkpoint)
    model = load_model_from_checkpoint(cfg.checkpoint, map_location=cfg.device)
    tasks = list(cfg.tasks) or run_tasks_of(cfg.checkpoint)
    if not tasks:
        raise ValueError(f"no tasks given and no config.json with the run's tasks near {cfg.checkpoint}")
    run_cfg = _run_config(cfg.checkpoint)  # the run's data by resolved path: eval may run from another directory
    data = cfg.data or tuple(run_cfg.get("data_resolved") or (run_cfg.get("train") or {}).get("data", ()))
    target: str | float = cfg.target if cfg.target in ("data", "manifest") else float(cfg.target)
    stamp = {"checkpoint": str(path), "checkpoint_sha256": file_sha256(path)}
    try:
        res = evaluate_model(model, tasks, cfg.episodes, n_envs=cfg.n_envs, workers=cfg.workers, seed=cfg.seed,
                             greedy=cfg.greedy, device=cfg.device, record_dir=cfg.record, frames=cfg.frames,
                             skip_unavailable=cfg.skip_unavailable, target=target, data=data,
                             on_failure=cfg.on_failure, progress=True)
    except EvaluationFailed as err:
        err.result.protocol.update(stamp)
        raise
    res.protocol.update(stamp)
    return res


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def format_table(res: EvalResult) -> str:
    lines = [f"{'task':<36} {'kind':>7} {'return':>10} {'score':>8} {'data-n':>8} {'success':>8} {'target':>9}"]
    for t in res.tasks:
        sr = "" if t.success_rate is None else f"{t.success_rate:.2f}"
        sc = "-" if t.normalized_score is None else f"{t.normalized_score:.3f}"
        lines.append(f"{t.task:<36} {t.score_kind:>7} {t.mean_return:>10.3f} {sc:>8} "
                     f"{_fmt(t.data_normalized_score):>8} {sr:>8} {_fmt(t.target_return):>9}"
                     + (f"  FAILED {t.error}" if t.error else "") + (f"  ({t.score_note})" if t.capped else ""))
    lines.append("")
    lines.append(f"{'domain':<16} {'kind':>7} {'mean':>8} {'iqm':>8} {'tasks':>6} "
                 f"{'data-n mean':>12} {'data-n iqm':>11}")
    for d, v in res.domains.items():
        dn = v.get("data_normalized", {})
        dn_txt = f"{dn['mean']:>12.3f} {dn['iqm']:>11.3f}" if dn.get("n_tasks") else f"{'-':>12} {'-':>11}"
        lines.append(f"{d:<16} {v['score_kind']:>7} {v['mean']:>8.3f} {v['iqm']:>8.3f} {v['n_tasks']:>6} {dn_txt}")
        nz = v.get("normalized", {})
        if v["score_kind"] == "raw" and nz.get("n_tasks"):
            lines.append(f"{'  as ' + nz['kind']:<24} {nz['mean']:>8.3f} {nz['iqm']:>8.3f} {nz['n_tasks']:>6}")
        for k, o in v.get("other_kinds", {}).items():
            lines.append(f"{'  beside: ' + k:<16} {k:>7} {o['mean']:>8.3f} {o['iqm']:>8.3f} {o['n_tasks']:>6}  "
                         f"({', '.join(o['tasks'])}; not averaged in)")
        if v.get("capped"):
            lines.append(f"  {len(v['capped']['tasks'])} task(s) {v['capped']['note']}")
        if v.get("failed"):
            lines.append(f"  left out (failed, --on-failure skip): {', '.join(v['failed'])}")
    head = res.metrics()
    if "eval/normalized_score" in head:
        lines.append(f"headline (mean of the domains' normalised scores; Dark-Room as return / best): "
                     f"{head['eval/normalized_score']:.3f}")
    for t, why in res.skipped.items():
        lines.append(f"unavailable {t}: {why}")
    for t, err in res.failed.items():
        lines.append(f"FAILED {t}: {err}")
    return "\n".join(lines)


@command("lramlab eval")
def main(argv: list[str] | None = None) -> int:
    """`lramlab eval --checkpoint RUN_DIR --tasks T1,T2 --episodes N [--json [FILE|-]]`: exit 0 when
    every task ran, 1 when a task failed (unless --on-failure skip), 2 when no task could run here."""
    from lramlab._dataclass_cli import JsonOutput, parse_cli

    cfg, json_dest = parse_cli(EvalConfig, argv, prog="lramlab eval", required=("checkpoint",))
    with JsonOutput(json_dest) as out:
        try:
            res = evaluate(cfg)
        except EvaluationFailed as err:
            res = err.result
        if cfg.out:
            from lramlab._io import atomic_write_text

            atomic_write_text(Path(cfg.out), json_dumps(res.to_dict(), indent=1))
        out.write(res.to_dict())
    if not out.to_stdout:
        print(format_table(res))
    if not res.tasks:
        print(f"lramlab eval: no task could run here ({len(res.skipped)} unavailable)", file=sys.stderr)
        return 2
    if res.failed and cfg.on_failure != "skip":
        print(f"lramlab eval: {len(res.failed)} task(s) failed: {', '.join(res.failed)}", file=sys.stderr)
        return 1
    return 0


__all__ = ["iqm", "TaskScore", "EvalResult", "EvalConfig", "EvaluationFailed", "score_task", "failed_score",
           "aggregate", "best_return", "resolve_target", "resolve_targets", "evaluate_model", "evaluate", "eval_callback", "main"]
