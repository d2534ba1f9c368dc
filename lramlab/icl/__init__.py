"""In-context learning on Dark-Room with Algorithm Distillation (paper §4.3, App. D.4).

Training: the learning histories of the 80 train goals (one task directory per goal, episodes in
learning order, `lramlab data generate --task 'darkroom/*' --policy history`), cut into windows
of C = 2 episodes = 200 timesteps that span consecutive episodes of one history (`HistoryDataset`),
so the model sees how returns improve from one episode to the next.
Evaluation: on the 20 hold-out goals, 40 consecutive episodes ("ICL trials") per goal with the
recurrent state / KV cache carried across episodes and no weight update. Token sets with a
return-to-go ("srr", "srra") restart R̂ at `target_return` (80, the paper's value) every trial; the
CPU recipe's "ad" tokens (s_t, a_{t-1}, r_{t-1}) carry no R̂ at all -- and they include the
previous action, which the paper removes from its agents' context (§4, "Removing Actions").
The Transformer attends to the last 2 episodes (its KV window is set to the training context), by
default in the DT's "hop" window mode (re-encode the last episode once per episode instead of the
last 2 episodes every step; backbones/dt.py). All goals step together in one `DarkRoomVec`.

    res = run_icl(ICLConfig(data="data/", backbone="xlstm", size="16M", steps=20_000, out="runs/icl-xlstm"))
    res.returns        # (G, trials) return per hold-out goal and trial
    res.mean_curve     # (trials,) mean over goals

`lramlab icl --data DIR --backbone xlstm --steps N --out RUN_DIR [--checkpoint CKPT] [--json]`.

Shape letters: G goals, N trials, C context timesteps, B windows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lramlab._dataclass_cli import check_fields, command, json_dumps
from lramlab.data.history import HistoryDataset

EPISODE_LENGTH = 100

#: A recipe that learns in context on a laptop CPU (notes/icl-research.md, issue #12): histories of the
#: model-based Q-learner (4 learners x 20 episodes per goal, exploiting from the first reward on),
#:     lramlab data generate --task 'darkroom/*' --episodes 80 \
#:         --policy mbq:eps_start=0.1,eps_decay=0.9,histories=4 --out DIR && lramlab data pack DIR
#: and these ICLConfig fields (AD's one-token-per-step conditioning, no R̂; tiny models):
#: DT tiny: hold-out trials 1-5 -> 31-40: 24.5 -> 84.2, train goals 31-40: 87.0 (one seed).
CPU_RECIPE = dict(size="tiny", tokens="ad", steps=1500, batch_size=16, lr=1e-3, warmup=100, amp=False)
#: the recipe's data: `lramlab data generate --task 'darkroom/*' --episodes 80 --policy RECIPE_POLICY`
#: (01_data_prep: `darkroom_policy="recipe"`)
RECIPE_POLICY = "mbq:eps_start=0.1,eps_decay=0.9,histories=4"


# ----------------------------------------------------------------------------------------
# in-context evaluation


def darkroom_spec():
    """The TaskSpec fields every Dark-Room goal shares (reward scale, 5 actions, (x, y) obs)."""
    from lramlab.envs.darkroom import HOLDOUT_GOALS, task_name
    from lramlab.manifests import get_task

    return get_task(task_name(HOLDOUT_GOALS[0]))


def goals_of(which: str | Sequence) -> list[tuple[int, int]]:
    """"holdout" (20) | "train" (80) | a list of tasks/goals -> goal cells."""
    from lramlab.envs import darkroom as dr

    if isinstance(which, str):
        if which == "holdout":
            return list(dr.HOLDOUT_GOALS)
        if which == "train":
            return list(dr.TRAIN_GOALS)
        return [dr.parse_goal(t) for t in which.split(",") if t]
    return [dr.parse_goal(g) for g in which]


@torch.no_grad()
def icl_rollouts(model: torch.nn.Module, goals: Sequence, trials: int = 40, *, target_return: float = 80.0,
                 greedy: bool = False, seed: int = 0, context_steps: int | None = None,
                 progress: bool = False, dt_window_mode: str | None = "hop") -> np.ndarray:
    """Returns (G, trials): `trials` consecutive Dark-Room episodes per goal, context carried over.

    All G goals step together (DarkRoomVec, one model batch). No weight updates. For the DT the
    KV window is `context_steps` timesteps (default: the model's training context) and its window
    mode `dt_window_mode` ("hop" | "exact"; None: the model's own, LRAMConfig.dt_window_mode).
    """
    from lramlab.envs.darkroom import DarkRoomVec
    from lramlab.rollout import Agent

    goals = goals_of(goals)
    if trials < 1:
        raise ValueError(f"trials={trials}: expected >= 1")
    cfg = model.cfg
    steps = int(context_steps or cfg.context_steps)
    bb = getattr(model, "backbone", None)
    if cfg.backbone == "dt" and bb is not None and hasattr(type(bb), "window"):
        bb.window = min(cfg.tokens_per_step * steps, bb.n_positions)  # the last C timesteps
        if dt_window_mode is not None:
            bb.window_mode = dt_window_mode
    was_training = model.training
    model.eval()
    env = DarkRoomVec(goals)
    agent = Agent(model, darkroom_spec(), len(goals), greedy=greedy, target_return=target_return, seed=seed)
    out = np.zeros((len(goals), trials), dtype=np.float64)
    it = range(trials)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"ICL {cfg.backbone}", unit="trial")
    for k in it:
        obs = env.reset()
        if k > 0:
            agent.new_episode()  # same context, R̂ back to the target
        done = False
        while not done:
            a = agent.act(obs)
            obs, r, _, trunc, _ = env.step(a)
            agent.observe(r)
            out[:, k] += r
            done = bool(trunc.all())
    if was_training:
        model.train()
    return out


# ----------------------------------------------------------------------------------------
# config, result, run


@dataclass
class ICLConfig:
    """An AD experiment on Dark-Room (paper App. D.4 values as defaults)."""

    data: str = ""                        # dataset root holding darkroom/goal-X-Y learning histories
    backbone: str = "xlstm"               # xlstm | mamba | dt
    size: str = "16M"                     # paper: 16M agents
    slstm_at: str | None = None           # xLSTM ratio/positions (None: [7:1])
    d_model: int | None = None            # width (None: the size preset's; the ICL study's parameter-matched DT)
    n_layers: int | None = None           # blocks (None: the size preset's)
    tokens: str = "srr"                   # "srr" (s, R̂, r): the paper; "sr" (s, r): no R̂; "ad" (s, a_prev, r_prev) summed
    #                                       into one token: no R̂, previous action included (the paper removes actions)
    train_goals: str = "train"            # "train" (the 80 goals found in data) or a comma list of tasks
    eval_goals: str = "holdout"           # "holdout" (20 goals), "train", or a comma list
    context_episodes: int = 2             # context = 2 episodes = 200 timesteps
    steps: int = 20_000                   # updates
    batch_size: int = 128
    lr: float = 1e-4
    warmup: int | None = None             # linear warm-up steps (None: min(4000, steps // 10), as TrainConfig)
    history_start: float = 0.0            # skip this leading fraction of each history in training
    val_fraction: float = 0.025
    trials: int = 40                      # consecutive in-context episodes per goal
    target_return: float = 80.0           # R̂ at the start of every trial (raw units; unused by "sr" / "ad" tokens)
    greedy: bool = False                  # paper samples (deterministic: false)
    dt_window_mode: str = "hop"           # DT step past its window: "hop" (fast) | "exact" (backbones/dt.py)
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    num_threads: int = 0
    out: str = "runs/icl"                 # run directory (training run + icl.json)
    checkpoint: str | None = None         # evaluate this model instead of training one
    overwrite: bool = False               # replace a run / icl.json already in OUT (default: refuse)
    progress: bool = True

    def __post_init__(self):
        check_fields(self)  # types; lr, target_return, ... finite
        if not self.data and not self.checkpoint:
            raise ValueError("ICLConfig: give data=DIR (to train) or checkpoint=... (to evaluate only)")
        for name in ("context_episodes", "steps", "batch_size", "trials"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected >= 1")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed!r}: expected >= 0")
        for name in ("d_model", "n_layers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected >= 1 (or None: the size preset's)")
        if not self.target_return > 0:
            raise ValueError(f"target_return={self.target_return!r}: expected > 0")
        from lramlab.models.config import TOKEN_MODES

        if self.tokens not in TOKEN_MODES:
            raise ValueError(f"tokens={self.tokens!r}: expected one of {', '.join(TOKEN_MODES)}")
        if self.dt_window_mode not in ("exact", "hop"):
            raise ValueError(f"dt_window_mode={self.dt_window_mode!r}: expected 'exact' or 'hop'")

    @property
    def context(self) -> int:
        return self.context_episodes * EPISODE_LENGTH


@dataclass
class ICLResult:
    backbone: str
    goals: list[tuple[int, int]]
    returns: np.ndarray                   # (G, trials)
    run_dir: Path | None = None
    train_metrics: dict = field(default_factory=dict)

    @property
    def mean_curve(self) -> np.ndarray:
        """(trials,) mean return over goals per trial."""
        return self.returns.mean(axis=0)

    def to_dict(self) -> dict:
        return {"backbone": self.backbone, "goals": [list(g) for g in self.goals],
                "returns": self.returns.tolist(), "mean_curve": self.mean_curve.tolist(),
                "run_dir": str(self.run_dir) if self.run_dir else None, "train_metrics": self.train_metrics}


def train_config_for(cfg: ICLConfig, tasks: Sequence[str] | None = None):
    """The TrainConfig of the AD training run (history windows, context of 2 episodes); `tasks`
    given (e.g. () to count a model's parameters): used as they are, the data is not looked at."""
    from lramlab.envs import darkroom as dr
    from lramlab.train import TrainConfig
    from lramlab.train.loop import found_tasks

    if tasks is not None:
        tasks = tuple(tasks)
    elif cfg.train_goals == "train":
        found = set(found_tasks([cfg.data]))
        tasks = tuple(t for t in dr.all_tasks("train") if t in found)
        if not tasks:
            raise ValueError(f"no Dark-Room train-goal histories (darkroom/goal-X-Y) under {cfg.data}")
    else:
        tasks = tuple(dr.task_name(g) for g in goals_of(cfg.train_goals))
    return TrainConfig(data=(cfg.data,), tasks=tasks, window="history", history_start=cfg.history_start,
                       val_fraction=cfg.val_fraction, backbone=cfg.backbone, size=cfg.size, slstm_at=cfg.slstm_at,
                       d_model=cfg.d_model, n_layers=cfg.n_layers, tokens=cfg.tokens,
                       steps=cfg.steps, batch_size=cfg.batch_size, context=cfg.context, lr=cfg.lr,
                       warmup=cfg.warmup, amp=cfg.amp, seed=cfg.seed, device=cfg.device,
                       out=cfg.out, val_every=0, ckpt_every=max(1, cfg.steps // 4), log_every=10,
                       progress=cfg.progress, num_threads=cfg.num_threads, overwrite=cfg.overwrite)


def run_icl(cfg: ICLConfig) -> ICLResult:
    """Train an AD agent on the train goals' histories (unless `checkpoint`), then run ICL trials."""
    from lramlab.train.checkpoint import load_model_from_checkpoint
    from lramlab.train.distributed import pick_device

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    metrics: dict = {}
    run_dir = Path(cfg.out)
    if (run_dir / "icl.json").exists() and not cfg.overwrite:
        raise ValueError(f"{run_dir / 'icl.json'} exists (an earlier ICL run): pass --overwrite to replace it, "
                         f"or another --out")
    goals = goals_of(cfg.eval_goals)  # a bad goal list is refused before minutes of training
    if cfg.train_goals != "train":
        goals_of(cfg.train_goals)
    if cfg.checkpoint:
        src = cfg.checkpoint
    else:
        from lramlab.train import run

        res = run(train_config_for(cfg))
        metrics, src, run_dir = res.metrics, str(res.model_path), res.run_dir
    device = pick_device(cfg.device)
    model = load_model_from_checkpoint(src, map_location=device)
    rets = icl_rollouts(model, goals, cfg.trials, target_return=cfg.target_return, greedy=cfg.greedy,
                        seed=cfg.seed, context_steps=cfg.context, progress=cfg.progress,
                        dt_window_mode=cfg.dt_window_mode)
    result = ICLResult(backbone=model.cfg.backbone, goals=goals, returns=rets, run_dir=run_dir,
                       train_metrics=metrics)
    run_dir.mkdir(parents=True, exist_ok=True)
    from lramlab.data.store import atomic_write_text

    atomic_write_text(run_dir / "icl.json", json_dumps({"config": asdict(cfg), **result.to_dict()}, indent=1))
    return result


@command("lramlab icl")
def main(argv: list[str] | None = None) -> int:
    """`lramlab icl --data DIR --backbone B --steps N --out RUN_DIR [--checkpoint CKPT] [--json [FILE|-]]`."""
    from lramlab._dataclass_cli import JsonOutput, parse_cli

    cfg, json_dest = parse_cli(ICLConfig, argv, prog="lramlab icl")
    with JsonOutput(json_dest) as out:
        res = run_icl(cfg)
        out.write(res.to_dict())
    if not out.to_stdout:
        curve = res.mean_curve
        print(f"ICL {res.backbone}: {len(res.goals)} goals x {len(curve)} trials -> {res.run_dir}/icl.json")
        print("mean return per trial: " + " ".join(f"{v:.1f}" for v in curve))
    return 0


__all__ = ["CPU_RECIPE", "RECIPE_POLICY", "HistoryDataset", "ICLConfig", "ICLResult", "icl_rollouts", "run_icl", "train_config_for", "main"]
