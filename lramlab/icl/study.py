"""The in-context learning study (paper §4.3, App. D.4, Fig. 4/16): Algorithm Distillation agents of
several backbone variants x training seeds on Dark-Room, each evaluated over `trials` ICL trials on
the 20 hold-out goals and on the goals it was trained on.

    cfg = ICLStudyConfig(data_dir="data/ad", backbones=("xlstm:7:1", "xlstm:1:0", "mamba", "dt"), seeds=(0, 1))
    study = run_icl_study(cfg)     # at most cfg.workers training processes at once
    study.summary()                # per variant and goal set: curves, trials 1-5 / 31-40, ratio, spreads
    study.claim()                  # does xLSTM [7:1] >= DT hold here (the paper's claim)?

Variants (`backbones`): "dt", "mamba", "xlstm" (= "xlstm:7:1", the size's [7:1] placement) and
"xlstm:<a>:<b>", an mLSTM:sLSTM ratio (e.g. "xlstm:1:0", mLSTM only; `models.config.slstm_positions_for_ratio`).
All variants share one size preset (`size`); their parameter counts are reported per variant.

Run layout, one directory per agent (resumable: a finished run is reused, a killed one resumes):

    out_dir/<variant>-s<seed>/     a training run (config.json, model.pt, metrics.json, checkpoints/)
        icl-holdout.json           ICL returns (G, trials) on the hold-out goals, with what made them
        icl-train.json             ... on the train goals

An evaluation file is reused only if its goals, trials, target, sampling, seed and the sha256 of
model.pt match; a finished training run only if `train.rundir.resume_changes` accepts the new
config (more `steps` continue the run; a different model, data, lr, ... is refused, named).

Windows: "first" = trials 1-5, "last" = the last 10 trials (31-40 of 40). Spreads are population
standard deviations (ddof=0): over seeds of the per-seed goal means, and over goals of the per-goal
window means (averaged over seeds). Shape letters: S seeds, G goals, N trials.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from lramlab._dataclass_cli import check_fields, json_dumps
from lramlab._io import file_sha256

EVAL_SETS = ("holdout", "train")
#: the paper's claim (§4.3): xLSTM [7:1] attains the highest ICL scores -- compared with the DT here
CLAIM = ("xlstm:7:1", "dt")
FIRST_TRIALS = 5       # trials 1-5
LAST_TRIALS = 10       # the last 10 trials (31-40 of the paper's 40)
#: rough relative CPU cost of a training update (notes/icl-research.md): the slowest runs start
#: first, so the last worker is not left alone with an xLSTM run
_COST = {"xlstm": 3.0, "mamba": 1.0, "dt": 1.0}
_LABELS = {"dt": "DT", "mamba": "Mamba", "xlstm": "xLSTM"}


# ----------------------------------------------------------------------------------------
# variants


def parse_variant(spec: str) -> tuple[str, str | None]:
    """'dt' | 'mamba' | 'xlstm' | 'xlstm:a:b' -> (backbone, sLSTM ratio); "xlstm" is "xlstm:7:1"."""
    from lramlab.models.config import BACKBONES, slstm_positions_for_ratio

    if not isinstance(spec, str):
        raise ValueError(f"backbone variant {spec!r}: expected a string such as 'dt' or 'xlstm:7:1'")
    backbone, _, ratio = spec.strip().partition(":")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone variant {spec!r}: unknown backbone {backbone!r}; expected one of "
                         f"{', '.join(BACKBONES)}, xLSTM with a ratio as 'xlstm:7:1' or 'xlstm:1:0'")
    if backbone != "xlstm":
        if ratio:
            raise ValueError(f"backbone variant {spec!r}: only xlstm takes an mLSTM:sLSTM ratio")
        return backbone, None
    ratio = ratio or "7:1"
    slstm_positions_for_ratio(ratio, 2, "tiny")  # the ratio's syntax (its ValueError names it)
    a, b = (int(x) for x in ratio.split(":"))
    return backbone, f"{a}:{b}"


def variant_name(spec: str) -> str:
    """The canonical name of a variant: 'xlstm' -> 'xlstm:7:1', ' dt' -> 'dt'."""
    backbone, ratio = parse_variant(spec)
    return backbone if ratio is None else f"{backbone}:{ratio}"


def variant_label(spec: str) -> str:
    """'xlstm:7:1' -> 'xLSTM [7:1]', 'dt' -> 'DT' (figure legends and tables)."""
    backbone, ratio = parse_variant(spec)
    return _LABELS[backbone] + (f" [{ratio}]" if ratio else "")


def run_dir_name(variant: str, seed: int) -> str:
    """'xlstm:7:1', 0 -> 'xlstm-7-1-s0'."""
    return f"{variant_name(variant).replace(':', '-')}-s{int(seed)}"


# ----------------------------------------------------------------------------------------
# config


@dataclass
class ICLStudyConfig:
    """The ICL study of notebooks/03_icl.ipynb. Defaults: the demo (a small version of the CPU
    recipe, `lramlab.icl.CPU_RECIPE`); each comment gives the paper's value (App. D.4)."""

    data_dir: str = "data/demo"                 # dataset root holding darkroom/goal-X-Y learning histories
    backbones: tuple[str, ...] = ("dt", "mamba", "xlstm:7:1")  # variants: dt | mamba | xlstm[:a:b] (paper: xlstm:7:1, xlstm:1:0, mamba, dt)
    seeds: tuple[int, ...] = (0,)               # training (and sampling) seeds, one agent per variant and seed
    size: str = "tiny"                          # model preset of every variant (paper: 16M)
    tokens: str = "ad"                          # "ad": AD's (s, a_prev, r_prev) per step (recipe); "srr": the paper's
    train_goals: str = "train"                  # "train": every train-goal history in data_dir, or a comma list of tasks
    eval_goals: tuple[str, ...] = ("holdout", "train")  # goal sets: "holdout" (the 20) and/or "train" (the trained goals)
    eval_max_goals: int = 20                    # evaluate at most this many goals per set (0: all, the study)
    context_episodes: int = 2                   # context in episodes of 100 steps (paper: 2)
    steps: int = 400                            # updates per agent (paper: 20K; CPU recipe: 1500)
    batch_size: int = 16                        # windows per update (paper: 128)
    lr: float = 3e-3                            # AdamW peak learning rate (paper: 1e-4; CPU recipe: 1e-3 over 1500)
    warmup: int = 40                            # linear warm-up steps (paper: 4000)
    history_start: float = 0.0                  # skip this leading fraction of each history in training
    trials: int = 20                            # consecutive ICL trials per goal (paper: 40)
    target_return: float = 80.0                 # R̂ at the start of every trial ("srr" tokens; paper: 80)
    greedy: bool = False                        # greedy actions (paper: sampled)
    amp: bool = False                           # bf16 autocast (off is faster on most CPUs)
    device: str = "auto"                        # auto | cpu | cuda
    workers: int = 2                            # agents trained at once, one process each (one per CPU core)
    threads: int = 1                            # torch threads per agent process (0: torch's default)
    out_dir: str = "runs/notebooks/03_icl"      # metrics.json, figures; each agent in out_dir/<variant>-s<seed>
    save_png: bool = True                       # also write PNG figures (needs kaleido + Chromium)

    def __post_init__(self):
        self.backbones = _as_tuple(self.backbones, "backbones")
        self.seeds = _as_tuple(self.seeds, "seeds")
        self.eval_goals = _as_tuple(self.eval_goals, "eval_goals")
        check_fields(self)
        if not self.backbones:
            raise ValueError("ICLStudyConfig.backbones is empty: expected variants such as 'dt', 'xlstm:7:1'")
        names = []
        for b in self.backbones:
            try:
                names.append(variant_name(b))
            except ValueError as err:
                raise ValueError(f"ICLStudyConfig.backbones: {err}") from None
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"ICLStudyConfig.backbones={list(self.backbones)}: {dup} given twice "
                             f"('xlstm' is 'xlstm:7:1')")
        self.backbones = tuple(names)
        if not self.seeds:
            raise ValueError("ICLStudyConfig.seeds is empty: expected at least one seed")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ValueError(f"ICLStudyConfig.seeds: {s!r} is not an integer >= 0")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"ICLStudyConfig.seeds={list(self.seeds)}: a seed is given twice")
        if not self.eval_goals or any(g not in EVAL_SETS for g in self.eval_goals) \
                or len(set(self.eval_goals)) != len(self.eval_goals):
            raise ValueError(f"ICLStudyConfig.eval_goals={list(self.eval_goals)}: expected distinct goal sets "
                             f"of {', '.join(EVAL_SETS)}")
        for name, low in (("workers", 1), ("threads", 0), ("eval_max_goals", 0), ("warmup", 0)):
            v = getattr(self, name)
            if v < low:
                raise ValueError(f"ICLStudyConfig.{name}={v!r}: expected an integer >= {low}")
        if not self.data_dir:
            raise ValueError("ICLStudyConfig.data_dir='': expected the dataset root (01_data_prep's data_dir)")
        try:  # every other field as the agents' ICLConfig checks it
            self.agent_config(self.backbones[0], self.seeds[0])
        except ValueError as err:
            raise ValueError(f"ICLStudyConfig: {err}") from None

    def agent_config(self, variant: str, seed: int):
        """The ICLConfig of one agent (its run in out_dir/<variant>-s<seed>)."""
        from lramlab.icl import ICLConfig

        backbone, ratio = parse_variant(variant)
        return ICLConfig(data=str(Path(self.data_dir).resolve()), backbone=backbone, slstm_at=ratio, size=self.size,
                         tokens=self.tokens, train_goals=self.train_goals, context_episodes=self.context_episodes,
                         steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup=self.warmup,
                         history_start=self.history_start, trials=self.trials, target_return=self.target_return,
                         greedy=self.greedy, seed=int(seed), amp=self.amp, device=self.device,
                         num_threads=self.threads, out=str(Path(self.out_dir).resolve() / run_dir_name(variant, seed)),
                         progress=False)

    def jobs(self) -> list[tuple[str, int]]:
        """(variant, seed) of every agent, the slowest to train first."""
        order = [(v, s) for s in self.seeds for v in self.backbones]
        return sorted(order, key=lambda j: -_COST[parse_variant(j[0])[0]])

    def to_dict(self) -> dict:
        return asdict(self)


def _as_tuple(v, name: str) -> tuple:
    if isinstance(v, (str, int)):
        v = (v,)
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"ICLStudyConfig.{name}={v!r}: expected a list")
    return tuple(v)


# ----------------------------------------------------------------------------------------
# one agent


def _training_done(run_dir: Path, tc) -> bool:
    """True when run_dir holds a finished training run of `tc` (ValueError naming refused changes)."""
    from lramlab.train.rundir import resume_changes

    if not ((run_dir / "model.pt").is_file() and (run_dir / "metrics.json").is_file()):
        return False
    saved = json.loads((run_dir / "config.json").read_text())
    step = int(json.loads((run_dir / "metrics.json").read_text()).get("step", -1))
    changes = resume_changes(saved.get("train", {}), tc, run_dir / "config.json", step)
    return step == tc.steps and "steps" not in changes


def eval_goal_set(name: str, run_dir: Path, max_goals: int = 0) -> list[tuple[int, int]]:
    """The goals of a goal set: "holdout" (the 20) or "train" (the goals this run was trained on)."""
    from lramlab.envs import darkroom as dr

    if name == "holdout":
        goals = list(dr.HOLDOUT_GOALS)
    elif name == "train":
        trained = set(json.loads((run_dir / "config.json").read_text())["tasks"])
        goals = [g for g in dr.TRAIN_GOALS if dr.task_name(g) in trained]
    else:
        raise ValueError(f"goal set {name!r}: expected one of {', '.join(EVAL_SETS)}")
    return goals[:max_goals] if max_goals else goals


def run_agent(cfg, eval_sets: Sequence[str] = EVAL_SETS, max_goals: int = 0) -> dict:
    """Train (or reuse, or resume) the agent of `cfg` (an ICLConfig) in cfg.out and evaluate it on
    each goal set; returns its record: params, training numbers, returns per goal set."""
    import torch

    from lramlab.icl import ICLResult, icl_rollouts, train_config_for
    from lramlab.train import run
    from lramlab.train.checkpoint import load_model_from_checkpoint
    from lramlab.train.distributed import pick_device
    from lramlab.train.rundir import existing_run

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run_dir = Path(cfg.out)
    tc = train_config_for(cfg)
    if not _training_done(run_dir, tc):  # fresh, killed (resume) or shorter (continued to more steps)
        run(replace(tc, resume=bool(run_dir.is_dir() and existing_run(run_dir)), tensorboard=False))
    model_path = run_dir / "model.pt"
    sha = file_sha256(model_path)
    model = load_model_from_checkpoint(str(model_path), map_location=pick_device(cfg.device))
    evals = {}
    for name in eval_sets:
        goals = eval_goal_set(name, run_dir, max_goals)
        made_by = {"goals": [list(g) for g in goals], "trials": cfg.trials, "target_return": cfg.target_return,
                   "greedy": cfg.greedy, "seed": cfg.seed, "context_steps": cfg.context,
                   "dt_window_mode": cfg.dt_window_mode, "model_sha256": sha}
        path = run_dir / f"icl-{name}.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        if old.get("made_by") != made_by:
            t0 = time.perf_counter()
            rets = icl_rollouts(model, goals, cfg.trials, target_return=cfg.target_return, greedy=cfg.greedy,
                                seed=cfg.seed, context_steps=cfg.context, dt_window_mode=cfg.dt_window_mode)
            res = ICLResult(backbone=model.cfg.backbone, goals=goals, returns=rets, run_dir=run_dir)
            old = {"goal_set": name, "made_by": made_by, "seconds": time.perf_counter() - t0,
                   "config": asdict(cfg), **res.to_dict()}
            from lramlab._io import atomic_write_text

            atomic_write_text(path, json_dumps(old, indent=1))
        evals[name] = {"goals": old["goals"], "returns": old["returns"], "seconds": old["seconds"], "file": str(path)}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    bb = model.backbone
    pos = sum(p.numel() for n, p in bb.named_parameters() if n.startswith("wpe."))  # DT's learned positions
    mc = model.cfg
    return {"run_dir": str(run_dir), "model_sha256": sha,
            "model": {"backbone": mc.backbone, "size": mc.size, "n_layers": mc.n_layers, "d_model": mc.d_model,
                      "n_heads": mc.n_heads, "slstm_at": list(mc.slstm_at), "tokens": mc.tokens},
            "params": {"total": model.num_parameters(), "backbone": model.num_parameters("backbone"),
                       "position_table": pos},
            "train": {"step": metrics.get("step"), "wall_s": metrics.get("wall_s"), "loss": metrics.get("train/loss"),
                      "val_loss": metrics.get("val/loss")},
            "evals": evals}


def _init_worker(threads: int) -> None:
    import os

    if threads:  # one core per agent process: torch, OpenMP and numba (Mamba's CPU kernels)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(threads)
        import torch

        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------
# the study


class ICLStudyError(RuntimeError):
    """An agent of the study failed; the message names its variant, seed and run directory."""


def run_icl_study(cfg: ICLStudyConfig, progress: bool = True) -> "ICLStudy":
    """Train and evaluate every (variant, seed) agent, at most `cfg.workers` at once (each in its
    own process, `spawn`ed; workers=1 runs them in this process). Finished runs are reused.

    When an agent fails, the agents not yet started are cancelled, the running ones finish (their
    runs stay reusable), and ICLStudyError names the first failure. An interrupt (KeyboardInterrupt)
    terminates the agent processes at once; a killed training run resumes from its last checkpoint."""
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    import multiprocessing

    from tqdm.auto import tqdm

    jobs = cfg.jobs()
    records: dict[tuple[str, int], dict] = {}
    bar = tqdm(total=len(jobs), desc="ICL agents", unit="agent", disable=not progress)

    def done(job, rec):
        records[job] = rec
        h = rec["evals"].get(cfg.eval_goals[0], {}).get("returns")
        last = float(np.mean(np.asarray(h)[:, -LAST_TRIALS:])) if h else float("nan")
        bar.set_postfix_str(f"{job[0]} s{job[1]}: {cfg.eval_goals[0]} last trials {last:.1f}")
        bar.update(1)

    def failed(job, err) -> ICLStudyError:
        d = cfg.agent_config(*job).out
        return ICLStudyError(f"ICL agent {job[0]} seed {job[1]} ({d}) failed: {type(err).__name__}: {err}")

    try:
        if cfg.workers == 1 or len(jobs) == 1:
            import torch

            threads = torch.get_num_threads()
            try:
                for job in jobs:
                    try:
                        done(job, run_agent(cfg.agent_config(*job), cfg.eval_goals, cfg.eval_max_goals))
                    except Exception as err:  # noqa: BLE001 - named and re-raised
                        raise failed(job, err) from err
            finally:
                torch.set_num_threads(threads)  # run_agent sets the agent's threads in this process
        else:
            ex = ProcessPoolExecutor(max_workers=min(cfg.workers, len(jobs)),
                                     mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker, initargs=(cfg.threads,))
            try:
                futures = {ex.submit(run_agent, cfg.agent_config(*job), cfg.eval_goals, cfg.eval_max_goals): job
                           for job in jobs}
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in finished:
                        if f.exception() is None:
                            done(futures[f], f.result())
                    bad = [f for f in finished if f.exception() is not None]
                    if bad:
                        for f in pending:
                            f.cancel()
                        wait(pending)  # the running agents finish; their runs are kept
                        err = bad[0].exception()
                        raise failed(futures[bad[0]], err) from err
            except KeyboardInterrupt:  # an interrupted kernel: stop the agents now (their runs resume later)
                for p in list(getattr(ex, "_processes", {}).values()):
                    p.terminate()
                raise
            finally:
                ex.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    runs = {v: {s: records[(v, s)] for s in cfg.seeds} for v in cfg.backbones}
    return ICLStudy(cfg, runs)


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


@dataclass
class ICLStudy:
    """The finished study: `runs[variant][seed]` = `run_agent`'s record."""

    config: ICLStudyConfig
    runs: dict[str, dict[int, dict]] = field(default_factory=dict)

    def returns(self, variant: str, goal_set: str) -> np.ndarray:
        """(S, G, N) returns of a variant on a goal set, seeds in config order."""
        return np.stack([np.asarray(self.runs[variant][s]["evals"][goal_set]["returns"], dtype=np.float64)
                         for s in self.config.seeds])

    def curves(self, goal_set: str) -> dict[str, np.ndarray]:
        """{variant label: (S, N) per-seed mean return per trial} (the figure's lines and bands)."""
        return {variant_label(v): self.returns(v, goal_set).mean(axis=1) for v in self.config.backbones}

    def summary(self) -> dict[str, dict]:
        """Per variant: label, params, training numbers, and per goal set `set_summary`."""
        out = {}
        for v in self.config.backbones:
            recs = [self.runs[v][s] for s in self.config.seeds]
            out[v] = {"label": variant_label(v), "model": recs[0]["model"], "params": recs[0]["params"],
                      "seeds": list(self.config.seeds), "run_dirs": [r["run_dir"] for r in recs],
                      "train_wall_s": [r["train"]["wall_s"] for r in recs],
                      "train_loss": [r["train"]["loss"] for r in recs], "val_loss": [r["train"]["val_loss"] for r in recs],
                      **{g: set_summary(self.returns(v, g)) for g in self.config.eval_goals}}
        return out

    def claim(self) -> dict[str, dict] | None:
        """Whether xLSTM [7:1]'s mean over its last trials is >= the DT's, per goal set (None when the
        study lacks either); `within_seed_spread`: the gap is no larger than the larger std over seeds
        (None with one seed)."""
        a, b = CLAIM
        if a not in self.config.backbones or b not in self.config.backbones:
            return None
        out = {}
        for g in self.config.eval_goals:
            la, lb = set_summary(self.returns(a, g))["last"], set_summary(self.returns(b, g))["last"]
            diff = la["mean"] - lb["mean"]
            out[g] = {"trials": la["trials"], a: la["mean"], b: lb["mean"], "diff": diff, "holds": diff >= 0,
                      "within_seed_spread": (abs(diff) <= max(la["std_seeds"], lb["std_seeds"])
                                             if len(self.config.seeds) > 1 else None),
                      "std_seeds": {a: la["std_seeds"], b: lb["std_seeds"]}}
        return out

    def claim_rows(self) -> list[dict]:
        """`claim()` as table rows with a verdict that says what the evidence allows: with one seed a
        gap is a direction, not a result; with several it counts only beyond the spread over seeds."""
        a, b = CLAIM
        rows = []
        for g, c in (self.claim() or {}).items():
            if c["within_seed_spread"] is None:
                verdict = f"one seed: {'ahead' if c['holds'] else 'behind'} here, not a result (run >= 2 seeds)"
            elif c["within_seed_spread"]:
                verdict = "within the spread over seeds: not shown"
            else:
                verdict = "holds beyond the seed spread" if c["holds"] else "fails beyond the seed spread"
            rows.append({"goals": g, "trials": f"{c['trials'][0]}-{c['trials'][1]}", a: round(c[a], 1),
                         b: round(c[b], 1), "gap": round(c["diff"], 1), "verdict": verdict})
        return rows

    def table(self) -> list[dict]:
        """One row per variant and goal set: trials 1-5 / last 10 means, ratio, spreads, params."""
        rows = []
        for v, s in self.summary().items():
            for g in self.config.eval_goals:
                f, l_ = s[g]["first"], s[g]["last"]
                rows.append({"variant": s["label"], "goals": f"{g} ({s[g]['goals']})", "seeds": len(s["seeds"]),
                             "trials": f"{f['trials'][0]}-{f['trials'][1]} / {l_['trials'][0]}-{l_['trials'][1]}",
                             "first": round(f["mean"], 1), "last": round(l_["mean"], 1),
                             "ratio": None if s[g]["ratio"] is None else round(s[g]["ratio"], 2),
                             "std over seeds": round(l_["std_seeds"], 1), "std over goals": round(l_["std_goals"], 1),
                             "params": s["params"]["total"]})
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
        """What 03_icl writes to metrics.json."""
        claim = self.claim()
        return {"config": self.config.to_dict(), "variants": self.summary(), "claim": claim,
                "xlstm_7_1_ge_dt": None if claim is None else claim.get("holdout", next(iter(claim.values())))["holds"],
                "table": self.table()}


__all__ = ["CLAIM", "EVAL_SETS", "ICLStudy", "ICLStudyConfig", "ICLStudyError", "eval_goal_set", "parse_variant",
           "run_agent", "run_dir_name", "run_icl_study", "set_summary", "variant_label", "variant_name",
           "window_stats"]
