"""`lramlab` console script: a thin dispatcher, and the one rule for errors.

Each subcommand lives in the module that implements it, as `main(argv: list[str]) -> int`
with its own argparse parser; the heavy module is imported only when its command runs.

Errors. Every command's `main` runs inside `lramlab._dataclass_cli.command` (so the rule holds
for `lramlab X`, `python -m lramlab.train`, torchrun and a direct `main([...])` call alike):

- A **user error** -- bad data, a bad config value, a missing or corrupt file, a missing optional
  package, no memory -- prints ONE line on stderr, `lramlab X: error: MESSAGE`, where the message
  names the file / field / value and what was expected, and exits 2 (argparse's usage errors:
  one line, exit 2, too). What counts (`is_user_error`): an error lramlab's own code raised after
  checking something -- a ValueError (TrajectoryFileError, ImportFormatError, ManifestError,
  CheckpointError, a config's `__post_init__`, ...), a RuntimeError (a simulator missing here,
  ...), an ImportError (an optional package missing), a KeyError subclass (UnknownTaskError) --
  plus an OSError that names a file or a full / read-only disk, and MemoryError.
- Anything else is a **bug** (TypeError, AttributeError, a bare KeyError, a ValueError or
  RuntimeError raised inside numpy, torch or json, ...): the traceback is printed, then one line
  saying it is a bug; exit 1.
- `--debug` anywhere on the command line, or `LRAMLAB_DEBUG=1`, prints the traceback of a user
  error too. Ctrl-C: one line, exit 130.
- `--json [FILE|-]` on every command: JSON to FILE, or alone on stdout (`--json` / `--json -`).
- A command's own result that is not an error (e.g. `data check` finding invalid files) exits 1.
"""
from __future__ import annotations

import importlib
import sys
import traceback

# command words -> "module:function"; two-word commands (e.g. "data check") come first.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("tasks",): ("lramlab.envs.tasks_cli:main", "list tasks and whether they run on this machine"),
    ("data", "check"): ("lramlab.data.store:check_main", "validate a dataset directory"),
    ("data", "generate"): ("lramlab.collect.generate:main", "generate trajectories in a simulator"),
    ("data", "pack"): ("lramlab.data.store:pack_main", "pack each task's episodes into packed.hdf5 for faster reads"),
    ("data", "import"): ("lramlab.data.importers:main", "import a published dataset format"),
    ("bench", "data"): ("lramlab.bench.data:main", "data-loading throughput benchmark"),
    ("bench", "latency"): ("lramlab.bench.latency:main", "per-timestep agent latency benchmark"),
    ("bench", "train"): ("lramlab.bench.train:main", "training throughput per backbone, side by side"),
    ("train",): ("lramlab.train.__main__:main", "train an agent (also: torchrun -m lramlab.train)"),
    ("eval",): ("lramlab.evaluate:main", "evaluate a checkpoint in environments"),
    ("icl",): ("lramlab.icl:main", "in-context learning evaluation on Dark-Room"),
    ("pipeline",): ("lramlab.pipeline:main", "run the study notebooks headlessly"),
    ("report",): ("lramlab.analysis.report:main", "render docs/results.md from the committed JSON (--check: stale?)"),
}


def _usage() -> str:
    lines = ["usage: lramlab [--debug] COMMAND [options]", "", "commands:"]
    for words, (_, help_) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {help_}")
    lines.append("")
    lines.append("`lramlab COMMAND --help` shows a command's options; --debug (or LRAMLAB_DEBUG=1) shows")
    lines.append("the traceback of an error.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from lramlab._dataclass_cli import command

    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if a != "--debug"]
    if not words or words[0] in ("-h", "--help"):
        print(_usage())
        return 0
    for cmd, (target, _) in COMMANDS.items():
        if tuple(words[: len(cmd)]) == cmd:
            prog = "lramlab " + " ".join(cmd)
            rest = argv[:]
            for w in cmd:  # drop the command words, keep --debug wherever it was
                rest.remove(w)
            def dispatch(args: list[str], target: str = target) -> int:
                module, func = target.split(":")
                return getattr(importlib.import_module(module), func)(args)

            try:  # commands carry the boundary themselves; this one also covers their import
                return int(command(prog)(dispatch)(rest) or 0)
            except Exception:  # noqa: BLE001 - a bug: its traceback, then say so
                traceback.print_exc()
                print(f"{prog}: internal error: this is a bug in lramlab, not in your input; please report it "
                      f"with the traceback above", file=sys.stderr)
                return 1
    print(f"lramlab: error: unknown command {' '.join(words[:2])!r}\n", file=sys.stderr)
    print(_usage(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
