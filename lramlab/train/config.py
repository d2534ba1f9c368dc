"""`TrainConfig`: one dataclass for Python, notebooks and the `lramlab train` command line.

Defaults are the paper's (App. C.1, Table 5; reference/model_presets.yaml): AdamW with
lr 1e-4, 4000 linear warm-up steps then cosine decay to 1e-6, weight decay 0.01, gradient
clipping 0.25, no dropout (the models have none), batch 128, context 50 timesteps, bf16
mixed precision, 200K updates, domain-balanced updates (gradient accumulation over the
domains: one micro-batch per domain per update, loss averaged), per-domain reward scales
(applied by the sampler), 2.5 % of each task's trajectories held out for validation
perplexity, evaluated every 50K updates.

`parser_for(TrainConfig)` builds the argparse parser from the fields, so the command line
can never drift from the dataclass: `--batch-size` is `batch_size`, tuples take several
values (`--data D1 D2`), booleans are `--amp/--no-amp`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

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
    num_workers: int = 0                  # DataLoader processes reading windows (0: in the training process)
    # --- model -------------------------------------------------------------------------
    backbone: str = "xlstm"               # xlstm | mamba | dt
    size: str = "16M"                     # preset: 16M | 48M | 110M | 206M | tiny (tests)
    slstm_at: str | None = None           # xLSTM: ratio "7:1" / "1:0" or positions "1,3" (None: preset's [7:1])
    n_heads: int | None = None            # heads (None: preset's; xLSTM 4, DT width/64)
    tokens: TokenMode = "srr"             # (s, R, r) per step; "s": behaviour cloning; "srra": + action tokens; "sr"/"ad": AD (ICL)
    # --- optimisation (App. C.1) -------------------------------------------------------
    steps: int = 200_000                  # optimizer updates
    batch_size: int = 128                 # windows per domain micro-batch (global, over all ranks)
    context: int = 50                     # timesteps per window (3 tokens each)
    lr: float = 1e-4                      # AdamW peak learning rate
    min_lr: float = 1e-6                  # end of the cosine decay
    warmup: int = 4000                    # linear warm-up steps
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
        if self.tokens not in get_args(TokenMode):
            raise ValueError(f"tokens={self.tokens!r}: expected one of {get_args(TokenMode)}")
        self.betas = tuple(float(b) for b in self.betas)
        if self.window not in get_args(WindowKind):
            raise ValueError(f"window={self.window!r}: expected one of {get_args(WindowKind)}")
        if self.split not in get_args(Split):
            raise ValueError(f"split={self.split!r}: expected one of {get_args(Split)}")
        positive = ("steps", "batch_size", "context")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an integer >= 1")
        non_negative = ("warmup", "log_every", "val_every", "val_batches", "ckpt_every",
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
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device={self.device!r}: expected auto | cpu | cuda | cuda:N")
        for spec in self.freeze:
            if spec.startswith("backbone:"):
                n = spec.split(":", 1)[1]
                if not n.isdigit():
                    raise ValueError(f"freeze entry {spec!r}: expected 'backbone:N' with an integer N")
        if not self.out:
            raise ValueError("out='': expected a run directory")

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


# ---------------------------------------------------------------------------------------
# dataclass -> argparse


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _comment_help(cls: type) -> dict[str, str]:
    """Trailing `# comments` of the field lines, used as --help text."""
    import inspect

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        s = line.strip()
        if ":" in s and "#" in s and not s.startswith("#"):
            name = s.split(":", 1)[0].strip()
            if name.isidentifier():
                out[name] = s.split("#", 1)[1].strip()
    return out


def parser_for(cls: type, prog: str | None = None, description: str | None = None,
               required: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """An argparse parser with one option per dataclass field (`--field-name`)."""
    hints = typing.get_type_hints(cls)
    helps = _comment_help(cls)
    p = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": helps.get(f.name, "")}
        origin = get_origin(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            args = get_args(tp)
            elem = args[0]
            kw["type"] = elem if elem in (int, float, str) else str
            kw["nargs"] = len(args) if (len(args) > 1 and args[-1] is not Ellipsis) else "*"
            kw["metavar"] = f.name.upper()
        elif origin is Literal:
            kw["choices"] = list(get_args(tp))
            kw["type"] = type(get_args(tp)[0])
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            kw["type"] = str
        if f.name in required:
            kw["required"] = True
        p.add_argument(flag, **kw)
    return p


def config_from_args(cls: type, args: argparse.Namespace):
    """Build the dataclass from parsed args (tuples/commas normalised)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        val = getattr(args, f.name)
        tp, _ = _unwrap_optional(hints[f.name])
        if get_origin(tp) is tuple and val is not None:
            items = []
            for v in (val if isinstance(val, (list, tuple)) else [val]):
                if isinstance(v, str):
                    # "T1,T2" and "T1 T2" both work for lists of names
                    items.extend(x for x in v.split(",") if x != "")
                else:
                    items.append(v)
            elem = get_args(tp)[0]
            val = tuple(elem(x) if elem in (int, float) else x for x in items)
        kwargs[f.name] = val
    return cls(**kwargs)


def parse_cli(cls: type, argv: list[str] | None, prog: str, required: tuple[str, ...] = (),
              json_help: str = "print the result as JSON"):
    """Parse a config dataclass from the command line, plus `--json`: returns (cfg, as_json).

    A value the dataclass rejects becomes an argparse error (exit 2) with its message."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser_for(cls, prog=prog, required=required)
    p.add_argument("--json", action="store_true", help=json_help)
    args = p.parse_args(argv)
    as_json = args.json
    del args.json
    try:
        return config_from_args(cls, args), as_json
    except ValueError as err:
        p.error(str(err))
