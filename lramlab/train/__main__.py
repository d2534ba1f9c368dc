"""`lramlab train ...`, `python -m lramlab.train ...` and `torchrun -m lramlab.train ...`.

An entry point (the top of the import graph, like `lramlab.cli`): it parses `TrainConfig` from the
command line and passes `run` the rollout-evaluation callback that `--eval-every` asks for.
Errors follow `lramlab.cli`'s rule (one line for a user error, `--debug` for the traceback).
"""
from __future__ import annotations

import sys

from lramlab._dataclass_cli import command


@command("lramlab train")
def main(argv: list[str] | None = None) -> int:
    """`lramlab train ...`: parse TrainConfig from the command line and run it."""
    from lramlab._dataclass_cli import JsonOutput, parse_cli
    from lramlab.evaluate import eval_callback
    from lramlab.train import TrainConfig, run
    from lramlab.train.distributed import env_world

    cfg, json_dest = parse_cli(TrainConfig, argv, prog="lramlab train", required=("data", "out"),
                               json_help="the RunResult as JSON at the end")
    main_rank = env_world()[0] == 0
    with JsonOutput(json_dest if main_rank else None) as out:
        res = run(cfg, evaluate=eval_callback(cfg))
        if main_rank:
            out.write(res.to_dict())
    if main_rank and not out.to_stdout:
        keys = ("train/loss", "val/loss", "val/discrete/perplexity", "val/continuous/perplexity")
        summary = ", ".join(f"{k}={res.metrics[k]:.4g}" for k in keys if k in res.metrics)
        print(f"lramlab train: {res.step} steps in {res.wall_s:.1f}s -> {res.run_dir} ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
