"""`lramlab train ...`, `python -m lramlab.train ...` and `torchrun -m lramlab.train ...`.

An entry point (the top of the import graph, like `lramlab.cli`): it parses `TrainConfig` from the
command line and passes `run` the rollout-evaluation callback that `--eval-every` asks for.
"""
from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    """`lramlab train ...`: parse TrainConfig from the command line and run it."""
    from lramlab._dataclass_cli import parse_cli
    from lramlab.evaluate import eval_callback
    from lramlab.train import TrainConfig, run
    from lramlab.train.distributed import env_world

    cfg, as_json = parse_cli(TrainConfig, argv, prog="lramlab train", required=("data", "out"),
                             json_help="print the RunResult as JSON at the end")
    res = run(cfg, evaluate=eval_callback(cfg))
    if env_world()[0] == 0:
        if as_json:
            print(json.dumps(res.to_dict(), indent=2, default=str))
        else:
            keys = ("train/loss", "val/loss", "val/discrete/perplexity", "val/continuous/perplexity")
            summary = ", ".join(f"{k}={res.metrics[k]:.4g}" for k in keys if k in res.metrics)
            print(f"lramlab train: {res.step} steps in {res.wall_s:.1f}s -> {res.run_dir} ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
