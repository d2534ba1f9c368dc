"""`lramlab` console script: a thin dispatcher.

Each subcommand lives in the module that implements it, as `main(argv: list[str]) -> int`
with its own argparse parser; the heavy module is imported only when its command runs.
"""
from __future__ import annotations

import importlib
import sys

# command words -> "module:function"; two-word commands (e.g. "data check") come first.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("tasks",): ("lramlab.manifests:main", "list tasks and whether they run on this machine"),
    ("data", "check"): ("lramlab.data.store:check_main", "validate a dataset directory"),
    ("data", "generate"): ("lramlab.data.generate:main", "generate trajectories in a simulator"),
    ("data", "pack"): ("lramlab.data.store:pack_main", "pack each task's episodes into packed.hdf5 for faster reads"),
    ("data", "import"): ("lramlab.data.importers:main", "import a published dataset format"),
    ("bench", "data"): ("lramlab.data.bench:main", "data-loading throughput benchmark"),
    ("bench", "latency"): ("lramlab.bench.latency:main", "per-timestep agent latency benchmark"),
    ("bench", "train"): ("lramlab.bench.train:main", "training throughput per backbone, side by side"),
    ("train",): ("lramlab.train:main", "train an agent (also: torchrun -m lramlab.train)"),
    ("eval",): ("lramlab.evaluate:main", "evaluate a checkpoint in environments"),
    ("icl",): ("lramlab.icl:main", "in-context learning evaluation on Dark-Room"),
    ("pipeline",): ("lramlab.pipeline:main", "run the study notebooks headlessly"),
}


def _usage() -> str:
    lines = ["usage: lramlab COMMAND [options]", "", "commands:"]
    for words, (_, help_) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {help_}")
    lines.append("")
    lines.append("`lramlab COMMAND --help` shows a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    for words, (target, _) in COMMANDS.items():
        if tuple(argv[: len(words)]) == words:
            module, func = target.split(":")
            rc = getattr(importlib.import_module(module), func)(argv[len(words):])
            return int(rc or 0)
    print(f"lramlab: unknown command {' '.join(argv[:2])!r}\n", file=sys.stderr)
    print(_usage(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
