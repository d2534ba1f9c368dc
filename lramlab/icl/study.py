"""The in-context learning study (paper §4.3, App. D.4, Fig. 4/16): Algorithm Distillation agents of
several backbone variants x training seeds on Dark-Room, each evaluated over `trials` ICL trials on
the 20 hold-out goals and on the goals it was trained on.

    cfg = ICLStudyConfig(data_dir="data/ad", backbones=("xlstm:7:1", "xlstm:1:0", "mamba", "dt"), seeds=(0, 1))
    study = run_icl_study(cfg)     # at most cfg.workers training processes at once
    study.summary()                # per variant and goal set: curves, trials 1-5 / 31-40, ratio, spreads
    study.claim()                  # does xLSTM [7:1] >= DT hold here (the paper's claim)?

Variants (`backbones`): "dt", "mamba", "xlstm" (= "xlstm:7:1", the size's [7:1] placement) and
"xlstm:<a>:<b>", an mLSTM:sLSTM ratio (e.g. "xlstm:1:0", mLSTM only; `models.config.slstm_positions_for_ratio`).
All variants share one size preset (`size`); their parameter counts are reported per agent.
`dt_match` chooses the DT's blocks (and its width where no block count at the recurrent width is
close enough) so that its parameters match the recurrent variants' (`lramlab.models.params`, as the
multi-task study); with `param_tolerance` > 0 the config refuses variants whose counts are further
apart than that, naming the counts.

Token layouts (`tokens`, `lramlab.models.config.TOKEN_MODES`): "srr" = (s, R̂, r) per step, the
paper's (App. D.4); "sr" = (s, r), the same without R̂ (App. E.2); "ad" = AD's one (s, a_prev, r_prev)
token per step (the CPU recipe; it adds the previous action, which the paper removes). One layout
(a string) names runs `<variant>-s<seed>`; a list (e.g. ["srr", "sr", "ad"]) trains one agent per
variant x layout x seed, runs `<variant>-<layout>-s<seed>`, and the summary, claims and metrics are
grouped per layout.

Run layout, one directory per agent (resumable: a finished run is reused, a killed one resumes):

    out_dir/<variant>[-<layout>]-s<seed>/   a training run (config.json, model.pt, metrics.json, checkpoints/)
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from lramlab._dataclass_cli import check_fields, json_dumps
from lramlab._io import file_sha256
from lramlab.icl.summary import CLAIM, LAST_TRIALS, ICLStudy, compare, set_summary, verdict, window_stats
from lramlab.icl.variants import check_layouts, job_cost, parse_variant, run_dir_name, variant_label, variant_name

EVAL_SETS = ("holdout", "train")


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
    tokens: str | tuple[str, ...] = "ad"        # "ad": AD's (s, a_prev, r_prev) per step (recipe); "srr": the paper's
                                                # (s, R̂, r); "sr": (s, r), no R̂; a list: one agent per variant x layout
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
    dt_match: bool = False                      # choose DT's blocks (width where blocks cannot) to match the recurrent
                                                # variants' parameters, per layout (lramlab.models.params)
    param_tolerance: float = 0.0                # refuse to start unless each layout's variants are within this fraction
                                                # of each other in parameters (0: no check; with dt_match: 0.10)
    workers: int = 2                            # agents trained at once, one process each (one per CPU core)
    threads: int = 1                            # torch threads per agent process (0: torch's default)
    out_dir: str = "runs/notebooks/03_icl"      # metrics.json, figures; each agent in out_dir/<variant>-s<seed>
    save_png: bool = True                       # also write PNG figures (needs kaleido + Chromium)

    def __post_init__(self):
        self.backbones = _as_tuple(self.backbones, "backbones")
        self.seeds = _as_tuple(self.seeds, "seeds")
        self.eval_goals = _as_tuple(self.eval_goals, "eval_goals")
        self.tokens = check_layouts(self.tokens)
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
        if not 0 <= self.param_tolerance < 1:
            raise ValueError(f"ICLStudyConfig.param_tolerance={self.param_tolerance!r}: expected 0 <= value < 1 "
                             f"(0: no check)")
        self._shapes: dict[str, dict] = {}   # layout -> the matched DT's {"d_model", "n_layers"}
        self._match: dict[str, dict] = {}    # layout -> what match_dt chose, and the counts it matched
        try:  # every other field as the agents' ICLConfig checks it
            for layout in self.layouts:
                self.agent_config(self.backbones[0], self.seeds[0], layout)
        except ValueError as err:
            raise ValueError(f"ICLStudyConfig: {err}") from None
        if self.dt_match:
            self._match_dts()
        if self.param_tolerance > 0:
            from lramlab.models.params import check_param_match

            check_param_match(self.param_counts(), self.param_tolerance, owner="ICLStudyConfig", group="with tokens",
                              hint="set dt_match: true to choose DT's blocks (and width) to match, or "
                                   "param_tolerance: 0 (no check)")

    # -------------------------------------------------------------------- token layouts
    @property
    def layouts(self) -> tuple[str, ...]:
        """The token layouts of the study (one for a string `tokens`)."""
        return (self.tokens,) if isinstance(self.tokens, str) else tuple(self.tokens)

    @property
    def named_layouts(self) -> bool:
        """True when `tokens` is a list: run directories, tables and metrics name each agent's layout."""
        return not isinstance(self.tokens, str)

    def layout_of(self, layout: str | None = None) -> str:
        """`layout`, checked; None: the study's only layout (a ValueError when it has several)."""
        if layout is None:
            if len(self.layouts) > 1:
                raise ValueError(f"the study has token layouts {list(self.layouts)}: name one")
            return self.layouts[0]
        if layout not in self.layouts:
            raise ValueError(f"token layout {layout!r} is not in the study's {list(self.layouts)}")
        return layout

    # -------------------------------------------------------------------- parameters
    def model_config(self, variant: str, layout: str | None = None):
        """The LRAMConfig an agent of `variant` with `layout` trains (as its training run builds it)."""
        from lramlab.icl import train_config_for
        from lramlab.train.loop import make_model_config

        return make_model_config(train_config_for(self.agent_config(variant, 0, layout), tasks=()))

    def param_counts(self) -> dict[str, dict[str, int]]:
        """{layout: {variant: parameters}} of the models the agents train (meta device, no memory)."""
        from lramlab.models.params import count_params

        if not hasattr(self, "_counts"):
            self._counts = {lay: {v: count_params(self.model_config(v, lay)) for v in self.backbones}
                            for lay in self.layouts}
        return {lay: dict(c) for lay, c in self._counts.items()}

    def _match_dts(self) -> None:
        from lramlab.models.config import preset
        from lramlab.models.params import count_params, match_dt

        if "dt" not in self.backbones:
            return
        ref = [v for v in self.backbones if v != "dt"] or ["xlstm:7:1"]  # none: the paper's model
        width, layers = preset("xlstm", self.size)["d_model"], preset("xlstm", self.size)["n_layers"]
        for lay in self.layouts:
            targets = [count_params(self.model_config(v, lay)) for v in ref]
            dt = self.model_config("dt", lay)  # the preset DT: what the match may change is its blocks and width
            m = match_dt(targets, width, layers, {"size": dt.size, "context_steps": dt.context_steps, "tokens": lay,
                                                  "n_heads": dt.n_heads}, self.param_tolerance or 0.10)
            self._shapes[lay] = {"d_model": m["d_model"], "n_layers": m["n_layers"]}
            self._match[lay] = {**m, "matched_to": dict(zip(ref, targets))}

    def param_match(self) -> dict:
        """What the parameter matching did: per layout the counts and largest/smallest ratio, and per
        layout the matched DT's blocks / width and the counts it was matched to."""
        from lramlab.models.params import ratio

        counts = self.param_counts()
        return {"tolerance": self.param_tolerance, "dt_match": self.dt_match,
                "layouts": {lay: {"params": c, "ratio": ratio(list(c.values()))} for lay, c in counts.items()},
                "dt": {lay: dict(m) for lay, m in self._match.items()}}

    # -------------------------------------------------------------------- agents
    def agent_config(self, variant: str, seed: int, layout: str | None = None):
        """The ICLConfig of one agent (its run in out_dir/<variant>[-<layout>]-s<seed>)."""
        from lramlab.icl import ICLConfig

        layout = self.layout_of(layout)
        backbone, ratio = parse_variant(variant)
        shape = self._shapes.get(layout, {}) if backbone == "dt" else {}
        name = run_dir_name(variant, seed, layout if self.named_layouts else None)
        return ICLConfig(data=str(Path(self.data_dir).resolve()), backbone=backbone, slstm_at=ratio, size=self.size,
                         d_model=shape.get("d_model"), n_layers=shape.get("n_layers"),
                         tokens=layout, train_goals=self.train_goals, context_episodes=self.context_episodes,
                         steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup=self.warmup,
                         history_start=self.history_start, trials=self.trials, target_return=self.target_return,
                         greedy=self.greedy, seed=int(seed), amp=self.amp, device=self.device,
                         num_threads=self.threads, out=str(Path(self.out_dir).resolve() / name), progress=False)

    def jobs(self) -> list[tuple[str, int, str]]:
        """(variant, seed, layout) of every agent, the slowest to train first."""
        order = [(v, s, lay) for s in self.seeds for lay in self.layouts for v in self.backbones]
        return sorted(order, key=lambda j: -job_cost(j[0], j[2]))

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

    from lramlab._proc import die_with_parent

    die_with_parent()  # a killed study (or its notebook kernel) leaves no agent training

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
    records: dict[tuple[str, int, str], dict] = {}
    bar = tqdm(total=len(jobs), desc="ICL agents", unit="agent", disable=not progress)

    def done(job, rec):
        records[job] = rec
        h = rec["evals"].get(cfg.eval_goals[0], {}).get("returns")
        last = float(np.mean(np.asarray(h)[:, -LAST_TRIALS:])) if h else float("nan")
        lay = f" {job[2]}" if cfg.named_layouts else ""
        bar.set_postfix_str(f"{job[0]}{lay} s{job[1]}: {cfg.eval_goals[0]} last trials {last:.1f}")
        bar.update(1)

    def failed(job, err) -> ICLStudyError:
        d = cfg.agent_config(*job).out
        lay = f" tokens {job[2]}" if cfg.named_layouts else ""
        return ICLStudyError(f"ICL agent {job[0]}{lay} seed {job[1]} ({d}) failed: {type(err).__name__}: {err}")

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
    runs = {lay: {v: {s: records[(v, s, lay)] for s in cfg.seeds} for v in cfg.backbones} for lay in cfg.layouts}
    return ICLStudy(cfg, runs)


__all__ = ["CLAIM", "EVAL_SETS", "ICLStudy", "ICLStudyConfig", "ICLStudyError", "check_layouts", "compare",
           "eval_goal_set", "parse_variant", "run_agent", "run_dir_name", "run_icl_study", "set_summary", "variant_label",
           "variant_name", "verdict", "window_stats"]
