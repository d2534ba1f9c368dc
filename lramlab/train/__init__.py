"""Training (paper App. C): `run(TrainConfig) -> RunResult` is the one entry point.

    from lramlab.train import TrainConfig, run
    res = run(TrainConfig(data=("data/",), backbone="xlstm", size="16M", steps=1000, out="runs/x"))

Command line (the same dataclass, see `lramlab.train.config`):

    lramlab train --data DIR [DIR ...] --backbone xlstm --size 16M --steps N --batch-size B \
        --context C --out RUN_DIR [--resume] [--lr ... --warmup ... --tasks ... --domains ...]
    torchrun --nproc_per_node=N -m lramlab.train ...      # DDP (gloo on CPU, NCCL on GPU)
"""
from __future__ import annotations

import json

from lramlab.train.config import TrainConfig, parse_cli
from lramlab.train.loop import RunResult, run, train_step, validate

__all__ = ["TrainConfig", "RunResult", "run", "train_step", "validate", "main"]


def main(argv: list[str] | None = None) -> int:
    """`lramlab train ...`: parse TrainConfig from the command line and run it."""
    cfg, as_json = parse_cli(TrainConfig, argv, prog="lramlab train", required=("data", "out"),
                             json_help="print the RunResult as JSON at the end")
    res = run(cfg)
    from lramlab.train.distributed import env_world

    if env_world()[0] == 0:
        if as_json:
            print(json.dumps(res.to_dict(), indent=2, default=str))
        else:
            keys = ("train/loss", "val/perplexity", "val/loss")
            summary = ", ".join(f"{k}={res.metrics[k]:.4g}" for k in keys if k in res.metrics)
            print(f"lramlab train: {res.step} steps in {res.wall_s:.1f}s -> {res.run_dir} ({summary})")
    return 0
