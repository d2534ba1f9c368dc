"""Training (paper App. C): `run(TrainConfig) -> RunResult` is the one entry point.

    from lramlab.train import TrainConfig, run
    res = run(TrainConfig(data=("data/",), backbone="xlstm", size="16M", steps=1000, out="runs/x"))

Command line (the same dataclass, see `lramlab.train.config`):

    lramlab train --data DIR [DIR ...] --backbone xlstm --size 16M --steps N --batch-size B \
        --context C --out RUN_DIR [--resume] [--lr ... --warmup ... --tasks ... --domains ...]
    torchrun --nproc_per_node=N -m lramlab.train ...      # DDP (gloo on CPU, NCCL on GPU)

The command line lives in `lramlab/train/__main__.py` (an entry point: it may reach above training,
for the rollout evaluation that `--eval-every` asks for).
"""
from __future__ import annotations

from lramlab.train.config import TrainConfig
from lramlab.train.loop import RunResult, run, train_step, validate

__all__ = ["TrainConfig", "RunResult", "run", "train_step", "validate"]
