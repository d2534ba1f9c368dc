"""Dataset summaries and checks: `write_stats`, `check_dataset`, and the `lramlab data check` /
`lramlab data pack` commands."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from lramlab._dataclass_cli import ArgumentParser, JsonOutput, add_json_option, command
from lramlab._io import atomic_write_text
from lramlab.data.store.episodes import TrajectoryFileError, _summary, _task_id_of, find_tasks, list_episode_files, read_episode
from lramlab.data.store.packed import pack_task
from lramlab.manifests import reward_rule

# ----------------------------------------------------------------------------- stats and check
def _episode_summary(path: Path, require_complete: bool, rule: str = "raw") -> dict:
    return _summary(path.name, read_episode(path, require_complete=require_complete), rule)


def _return_stats(returns: list[float]) -> dict:
    if not returns:
        return {"mean": None, "std": None, "min": None, "max": None}
    r = np.asarray(returns, dtype=np.float64)
    return {"mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()), "max": float(r.max())}


def task_stats(task_dir, require_complete: bool = True, summaries: Mapping[str, dict] | None = None) -> dict:
    """What `write_stats` writes, computed without writing (see there for the keys)."""
    task_dir = Path(task_dir)
    task = _task_id_of(task_dir)
    rule = reward_rule(task)
    summaries = summaries or {}
    eps = []
    for p in list_episode_files(task_dir):
        e = summaries.get(p.name)
        if e is None or (rule != "raw" and "model_return" not in e):
            e = _episode_summary(p, require_complete, rule)
        eps.append(dict(e))
    model = [e.get("model_return", e["return"]) for e in eps]
    stats = {
        "task": task,
        "n_episodes": len(eps),
        "n_transitions": int(sum(e["length"] for e in eps)),
        "episodes": eps,
        "lengths": [e["length"] for e in eps],
        "returns": [e["return"] for e in eps],
        "return_stats": _return_stats([e["return"] for e in eps]),
        "reward_rule": rule,
        "model_return_stats": _return_stats(model),
    }
    if eps and all("success" in e for e in eps):
        stats["success_rate"] = float(np.mean([e["success"] for e in eps]))
    return stats


def write_stats(task_dir, require_complete: bool = True, summaries: Mapping[str, dict] | None = None) -> dict:
    """Read every episode of `task_dir` (validated) and write `stats.json` atomically; returns it.

    Keys: task, n_episodes, n_transitions, episodes [{file, length, return[, model_return][, success]}],
    lengths, returns, return_stats {mean, std, min, max} (raw env returns), reward_rule (the task's
    `lramlab.manifests.reward_rule`), model_return_stats (returns in the model's units: under the
    rule, e.g. Atari's clipped rewards; per episode `model_return` when the rule is not "raw"; the
    max is the evaluation target, `data_target_return`), and success_rate when recorded.
    `summaries` (file name -> entry, e.g. `StoreWriter.summaries`) gives the entries of episodes
    the caller has just written and validated, so those files are not read again.
    """
    stats = task_stats(task_dir, require_complete, summaries)
    atomic_write_text(Path(task_dir) / "stats.json", json.dumps(stats, indent=1))
    return stats


def find_task_dirs(roots) -> dict[str, Path]:
    """Task id -> task directory over one or more dataset roots (a task found twice is an error)."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    out: dict[str, Path] = {}
    for root in roots:
        for d in find_tasks(root):
            task = _task_id_of(d)
            if task in out and out[task].resolve() != d.resolve():
                raise ValueError(f"task {task} found twice: {out[task]} and {d}")
            out[task] = d
    return out


def data_target_return(task_dir, require_complete: bool = True) -> float:
    """The highest return in a task's data, in the model's units (its reward rule): the paper's
    evaluation target (App. C.1: "the maximum return achieved for a particular task in the
    training datasets"), before the reward scale.

    Read from `stats.json` when it is current (its episode files and reward rule match the
    directory); otherwise computed from the episode files (nothing is written)."""
    task_dir = Path(task_dir)
    files = [p.name for p in list_episode_files(task_dir)]
    if not files:
        raise FileNotFoundError(f"{task_dir}: no episode files, so no data target return")
    stats = None
    path = task_dir / "stats.json"
    if path.is_file():
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            stats = None
    current = (isinstance(stats, dict) and stats.get("reward_rule") == reward_rule(_task_id_of(task_dir))
               and [e.get("file") for e in stats.get("episodes", [])] == files
               and (stats.get("model_return_stats") or {}).get("max") is not None)
    if not current:
        stats = task_stats(task_dir, require_complete)
    return float(stats["model_return_stats"]["max"])


@dataclass
class TaskReport:
    task: str
    dir: str
    episodes: int = 0
    transitions: int = 0
    invalid: int = 0
    returns: dict = field(default_factory=dict)
    success_rate: float | None = None


@dataclass
class DatasetReport:
    """What `check_dataset` found: per-task summaries and every invalid file with its reason."""

    root: str
    tasks: list[TaskReport] = field(default_factory=list)
    invalid: list[dict] = field(default_factory=list)  # {"file", "dataset", "reason"}

    @property
    def ok(self) -> bool:
        return not self.invalid and bool(self.tasks)

    @property
    def episodes(self) -> int:
        return sum(t.episodes for t in self.tasks)

    @property
    def transitions(self) -> int:
        return sum(t.transitions for t in self.tasks)

    def to_dict(self) -> dict:
        return {"root": self.root, "ok": self.ok, "n_tasks": len(self.tasks), "episodes": self.episodes,
                "transitions": self.transitions, "tasks": [asdict(t) for t in self.tasks],
                "invalid": list(self.invalid)}


def check_dataset(root, require_complete: bool = True, progress: bool = False) -> DatasetReport:
    """Fully read and validate every episode under `root`; never stops at the first bad file."""
    report = DatasetReport(root=str(root))
    task_dirs = find_tasks(root)
    files = [(d, p) for d in task_dirs for p in list_episode_files(d)]
    it = files
    if progress:
        from tqdm import tqdm

        it = tqdm(files, desc="check", unit="file")
    per_dir: dict[Path, TaskReport] = {d: TaskReport(task=_task_id_of(d), dir=str(d)) for d in task_dirs}
    rets: dict[Path, list] = {d: [] for d in task_dirs}
    succ: dict[Path, list] = {d: [] for d in task_dirs}
    for d, p in it:
        tr = per_dir[d]
        try:
            s = _episode_summary(p, require_complete)
        except TrajectoryFileError as err:
            tr.invalid += 1
            report.invalid.append({"file": err.path, "dataset": err.dataset, "reason": err.problem})
            continue
        tr.episodes += 1
        tr.transitions += s["length"]
        rets[d].append(s["return"])
        if "success" in s:
            succ[d].append(s["success"])
    for d in task_dirs:
        per_dir[d].returns = _return_stats(rets[d])
        if succ[d]:
            per_dir[d].success_rate = float(np.mean(succ[d]))
        report.tasks.append(per_dir[d])
    return report


@command("lramlab data check")
def check_main(argv: list[str]) -> int:
    """`lramlab data check DIR [--json [FILE|-]]`: summarise a dataset and list every invalid file."""
    ap = ArgumentParser(prog="lramlab data check", description=check_main.__doc__)
    ap.add_argument("dir", help="dataset root (DIR/<domain>/<name>/...) or one task directory")
    add_json_option(ap, "the report as JSON")
    ap.add_argument("--released", action="store_true",
                    help="files come from LRAM's released data (no 'complete' attribute required)")
    ap.add_argument("--progress", action="store_true", help="show a progress bar")
    args = ap.parse_args(argv)
    with JsonOutput(args.json) as out:
        rep = check_dataset(args.dir, require_complete=not args.released, progress=args.progress)
        out.write(rep.to_dict())
    if not out.to_stdout:
        print(f"{rep.root}: {len(rep.tasks)} tasks, {rep.episodes} valid episodes, "
              f"{rep.transitions} transitions, {len(rep.invalid)} invalid files")
        for t in rep.tasks:
            r = t.returns
            ret = ("return mean {mean:.3f} std {std:.3f} min {min:.3f} max {max:.3f}".format(**r)
                   if r.get("mean") is not None else "no valid episodes")
            sr = f", success {t.success_rate:.2f}" if t.success_rate is not None else ""
            bad = f", {t.invalid} invalid" if t.invalid else ""
            print(f"  {t.task:<32} {t.episodes:>6} eps {t.transitions:>9} steps  {ret}{sr}{bad}")
        if not rep.tasks:
            print("  no task directories with episode files found")
        for bad in rep.invalid:
            ds = f" [{bad['dataset']}]" if bad["dataset"] else ""
            print(f"INVALID {bad['file']}{ds}: {bad['reason']}")
    return 0 if rep.ok else 1


@command("lramlab data pack")
def pack_main(argv: list[str]) -> int:
    """`lramlab data pack DIR`: write one packed.hdf5 per task (concatenated episodes + offsets)."""
    ap = ArgumentParser(prog="lramlab data pack", description=pack_main.__doc__)
    ap.add_argument("dir", help="dataset root (DIR/<domain>/<name>/...) or one task directory")
    ap.add_argument("--compress", action="store_true",
                    help="gzip chunks (smaller, slower reads); default raw arrays that readers memory-map")
    ap.add_argument("--force", action="store_true", help="re-pack tasks whose pack is current")
    ap.add_argument("--released", action="store_true",
                    help="files come from LRAM's released data (no 'complete' attribute required)")
    ap.add_argument("--progress", action="store_true", help="show a progress bar")
    add_json_option(ap, "one {dir, pack, packed, bytes} record per task as a JSON list")
    args = ap.parse_args(argv)
    rows = []
    with JsonOutput(args.json) as out:
        dirs = find_tasks(args.dir)
        it = dirs
        if args.progress:
            from tqdm import tqdm

            it = tqdm(dirs, desc="pack", unit="task")
        for d in it:
            path, written = pack_task(d, compress=args.compress, force=args.force,
                                      require_complete=not args.released)
            print(f"{d}: {'packed' if written else 'current, kept'} -> {path.name} "
                  f"({path.stat().st_size / 2**20:.1f} MiB)")
            rows.append({"dir": str(d), "pack": str(path), "packed": bool(written), "bytes": path.stat().st_size})
        out.write(rows)
    return 0


