"""`TrainConfig`: one dataclass for Python, notebooks and the `lramlab train` command line.

Defaults are the paper's (App. C.1, Table 5; reference/model_presets.yaml): AdamW with
lr 1e-4, 4000 linear warm-up steps then cosine decay to 1e-6, weight decay 0.01, gradient
clipping 0.25, no dropout (the models have none), batch 128, context 50 timesteps, bf16
mixed precision, 200K updates, domain-balanced updates (gradient accumulation over the
domains: one micro-batch per domain per update, loss averaged), per-domain reward scales
(applied by the sampler), 2.5 % of each task's trajectories held out for validation
perplexity, evaluated every 50K updates.

Warm-up: `warmup=None` (the default) resolves to min(4000, steps // 10) -- the paper's 4000 for
its 200K updates, and a tenth of a shorter run, so a short run still learns; a warm-up as long as
the run (given explicitly) is trained as asked, with a warning naming both numbers.

Run directories (`out`): a directory that already holds a run (config.json, metrics, a checkpoint
or model.pt) is refused unless `resume=True` (continue it) or `overwrite=True` (delete that run's
files first). `--resume` and the fields (`RESUME_MAY_CHANGE`): a resumed run compares this config
with the one its checkpoint was written with. `steps` (not below the checkpoint's step: the
cosine decay is re-spread over the new length) and the fields that only say how the run is
executed or logged -- device, amp, num_threads, num_workers, deterministic, log/val/ckpt/keep/eval
intervals, val_batches, eval_episodes, progress, tensorboard -- may change: the new values are
used from the resume on and recorded (config.json `resumes`: step and {field: [old, new]}).
Every other field (data, tasks, model, batch size, context, seed, lr, min_lr, warmup,
weight_decay, betas, grad_clip, freeze, ...) fixes the data order, the model or the optimizer
state and refuses to change: the error names each field with its old and new value.
`finetune_from` refuses a checkpoint whose model settings (backbone, size, heads, sLSTM
positions, tokens, context) differ from this config's, naming them.

`lramlab._dataclass_cli.parser_for(TrainConfig)` builds the argparse parser from the fields, so
the command line can never drift from the dataclass: `--batch-size` is `batch_size`, tuples take
several values (`--data D1 D2`), booleans are `--amp/--no-amp`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, get_args

from lramlab._dataclass_cli import check_fields

#: fields a --resume may change (applied from the resume on, recorded in config.json); every other
#: field must equal the checkpoint's (see the module docstring)
RESUME_MAY_CHANGE = frozenset({
    "steps", "device", "amp", "num_threads", "num_workers", "deterministic", "log_every", "val_every",
    "val_batches", "ckpt_every", "keep_every", "eval_every", "eval_episodes", "progress", "tensorboard"})
#: how this invocation treats the run directory: never compared
RUN_MODE_FIELDS = frozenset({"out", "resume", "overwrite"})
PAPER_WARMUP = 4000


def default_warmup(steps: int) -> int:
    """min(4000, steps // 10): the paper's 4000 warm-up steps, or a tenth of a shorter run."""
    return min(PAPER_WARMUP, int(steps) // 10)


WindowKind = Literal["episode", "history"]
Split = Literal["any", "train", "holdout"]
TokenMode = Literal["srr", "s", "srra", "sr", "ad"]


@dataclass
class TrainConfig:
    """A training run. Every default below is the paper's unless its comment says otherwise."""

    # --- data --------------------------------------------------------------------------
    data: tuple[str, ...] = ()            # dataset roots (DIR/<domain>/<name>/episode_*.hdf5)
    tasks: tuple[str, ...] = ()           # keep only these task ids/names (empty: all found)
    domains: tuple[str, ...] = ()         # keep only these domains (empty: all found)
    split: Split = "any"                  # keep tasks of this manifest split ("any": no filter)
    window: WindowKind = "episode"        # "history": windows span consecutive episodes (ICL, App. D.4)
    history_start: float = 0.0            # train on episodes from this fraction of each task's history on
    val_fraction: float = 0.025           # trajectories per task held out for validation perplexity
    top_fraction: float = 1.0             # keep per task the top fraction of episodes by return (App. D.3: 0.05)
    num_workers: int = 0                  # DataLoader processes reading windows (0: in the training process)
    skip_bad: bool = False                # train on the valid files when the data check finds bad ones (listed
                                          # in OUT/skipped_files.json); default: stop before the first update
    # --- model -------------------------------------------------------------------------
    backbone: str = "xlstm"               # xlstm | mamba | dt
    size: str = "16M"                     # preset: 16M | 48M | 110M | 206M | tiny (tests)
    slstm_at: str | None = None           # xLSTM: ratio "7:1" / "1:0" or positions "1,3" (None: preset's [7:1])
    n_heads: int | None = None            # heads (None: preset's; xLSTM 4, DT width/64)
    d_model: int | None = None            # width (None: the size preset's); sizes between the presets
    n_layers: int | None = None           # blocks (None: the size preset's; recurrent presets have 2x DT's)
    tokens: TokenMode = "srr"             # (s, R, r) per step; "s": behaviour cloning; "srra": + action tokens; "sr"/"ad": AD (ICL)
    # --- optimisation (App. C.1) -------------------------------------------------------
    steps: int = 200_000                  # optimizer updates
    batch_size: int = 128                 # windows per domain micro-batch (global, over all ranks)
    context: int = 50                     # timesteps per window (3 tokens each)
    lr: float = 1e-4                      # AdamW peak learning rate
    min_lr: float = 1e-6                  # end of the cosine decay
    warmup: int | None = None             # linear warm-up steps (None: min(4000, steps // 10); paper 4000)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW defaults (the paper does not state them)
    grad_clip: float = 0.25               # max global grad norm (0: off)
    domain_balanced: bool = True          # one micro-batch per domain per update (grad accumulation)
    amp: bool = True                      # bf16 autocast (CPU and GPU); --no-amp trains in fp32
    # --- fine-tuning (App. D.3) --------------------------------------------------------
    finetune_from: str | None = None      # start from this checkpoint's weights (run dir or file)
    freeze: tuple[str, ...] = ()          # "encoders", "backbone", "backbone:N", "head", or a param prefix
    # --- run ---------------------------------------------------------------------------
    out: str = "runs/lram"                # run directory
    resume: bool = False                  # continue from OUT/checkpoints/last.pt
    overwrite: bool = False               # replace the run already in OUT (default: refuse to touch it)
    seed: int = 0
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    log_every: int = 10                   # steps between train/* metric lines
    val_every: int = 50_000               # steps between validation perplexity (0: only at the end)
    val_batches: int = 8                  # validation batches per domain
    ckpt_every: int = 5_000               # steps between checkpoints/last.pt (0: only at the end)
    keep_every: int = 0                   # also keep checkpoints/step_XXXXXXX.pt every N steps (0: off)
    eval_every: int = 0                   # steps between rollout evaluations in envs (0: off; paper 50K)
    eval_episodes: int = 3                # episodes per task in those evaluations (paper: 3 seeds)
    tensorboard: bool = True              # also write TensorBoard events when tensorboard is installed
    progress: bool = True                 # tqdm bar
    num_threads: int = 0                  # torch CPU threads (0: leave torch's default)
    deterministic: bool = False           # torch.use_deterministic_algorithms (exact-resume tests)

    def __post_init__(self) -> None:
        for name in ("data", "tasks", "domains", "freeze"):
            val = getattr(self, name)
            if isinstance(val, str):
                val = (val,)
            setattr(self, name, tuple(str(v) for v in val))
        if self.slstm_at is not None and not isinstance(self.slstm_at, str):
            self.slstm_at = ",".join(str(int(v)) for v in self.slstm_at)  # positions given as a sequence
        self.betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else self.betas
        check_fields(self)  # types; floats finite (lr=inf would train to NaN without a word)
        if self.tokens not in get_args(TokenMode):
            raise ValueError(f"tokens={self.tokens!r}: expected one of {get_args(TokenMode)}")
        self.betas = tuple(float(b) for b in self.betas)
        if self.window not in get_args(WindowKind):
            raise ValueError(f"window={self.window!r}: expected one of {get_args(WindowKind)}")
        if self.split not in get_args(Split):
            raise ValueError(f"split={self.split!r}: expected one of {get_args(Split)}")
        if self.warmup is None:
            self.warmup = default_warmup(self.steps)
        positive = ("steps", "batch_size", "context")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an integer >= 1")
        for name in ("d_model", "n_layers", "n_heads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}={v!r}: expected an integer >= 1 (or None: the size preset's)")
        non_negative = ("seed", "warmup", "log_every", "val_every", "val_batches", "ckpt_every",
                        "keep_every", "eval_every", "eval_episodes", "num_threads", "num_workers")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an integer >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}: expected > 0")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr={self.min_lr!r}: expected 0 <= min_lr <= lr ({self.lr})")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r}: expected >= 0")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip={self.grad_clip!r}: expected >= 0 (0 turns clipping off)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={self.betas!r}: expected two values in [0, 1)")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction!r}: expected 0 <= value < 1")
        if not 0 <= self.history_start < 1:
            raise ValueError(f"history_start={self.history_start!r}: expected 0 <= value < 1")
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"top_fraction={self.top_fraction!r}: expected 0 < value <= 1")
        if self.top_fraction < 1 and self.window == "history":
            raise ValueError(f"top_fraction={self.top_fraction!r} with window='history': a learning history "
                             "is kept in order, whole; select episodes only for window='episode'")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device={self.device!r}: expected auto | cpu | cuda | cuda:N")
        for spec in self.freeze:
            if spec.startswith("backbone:"):
                n = spec.split(":", 1)[1]
                if not n.isdigit():
                    raise ValueError(f"freeze entry {spec!r}: expected 'backbone:N' with an integer N")
        if not self.out:
            raise ValueError("out='': expected a run directory")
        if self.resume and self.overwrite:
            raise ValueError("resume=True and overwrite=True: choose one (continue the run in out, or replace it)")

    # ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_slstm_at(self):
        """slstm_at in LRAMConfig's form: None, a ratio string, or a tuple of positions."""
        s = self.slstm_at
        if s is None or ":" in s:
            return s
        s = s.strip("[]() ")
        return tuple(int(x) for x in s.split(",") if x.strip() != "")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; valid: {sorted(names)}")
        return cls(**d)

    @property
    def run_dir(self) -> Path:
        return Path(self.out)


# the command-line builder lives at the bottom of the import graph; re-exported for old imports
from lramlab._dataclass_cli import config_from_args, parse_cli, parser_for  # noqa: E402,F401
