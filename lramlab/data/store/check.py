"""Dataset summaries and checks: `write_stats`, `check_dataset` (every file against its task's
spec, results cached per file: `validate`), and the `lramlab data check` / `lramlab data pack`
commands."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from lramlab._dataclass_cli import ArgumentParser, JsonOutput, USER_ERROR_EXIT, add_json_option, command, json_dumps
from lramlab._io import atomic_write_text, remove_stale_tmp
from lramlab.data.store.episodes import (PACKED_NAME, TrajectoryFileError, _read_json, _read_open, _summary,
                                         _task_id_of, find_tasks, list_episode_files, read_episode)
from lramlab.data.store.handles import POOL
from lramlab.data.store.packed import _PackedIndex, pack_task
from lramlab.data.store.validate import (inspect_file, judge, load_cache, manifest_spec, save_cache, stat_key,
                                         task_expect)
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
    atomic_write_text(Path(task_dir) / "stats.json", json_dumps(stats, indent=1))
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
    episodes: int = 0  # valid episode files
    transitions: int = 0
    invalid: int = 0
    returns: dict = field(default_factory=dict)
    success_rate: float | None = None
    packed: str = "absent"  # packed.hdf5: absent | current | stale | unreadable | corrupt
    read: int = 0  # files read by this check (the others' results came from the cache)
    tmp_removed: int = 0  # leftover tmp files of killed writes removed
    note: str = ""  # why training cannot use the task as it is (e.g. no reward scale), else ""


@dataclass
class DatasetReport:
    """What `check_dataset` found: per-task summaries, every invalid file with its reason, and every
    packed.hdf5 that is stale, unreadable or damaged."""

    root: str
    tasks: list[TaskReport] = field(default_factory=list)
    invalid: list[dict] = field(default_factory=list)  # {"file", "dataset", "reason"}
    packs: list[dict] = field(default_factory=list)  # {"file", "status", "reason"} of packs not usable
    _valid: dict = field(default_factory=dict, repr=False)  # task dir -> (names, lengths) of valid files

    @property
    def ok(self) -> bool:
        return not self.invalid and not self.packs and bool(self.tasks)

    @property
    def episodes(self) -> int:
        return sum(t.episodes for t in self.tasks)

    @property
    def transitions(self) -> int:
        return sum(t.transitions for t in self.tasks)

    def valid_files(self) -> dict[str, tuple[list[str], list[int]]]:
        """{task dir: (names of the valid episode files, their lengths)}, for `TaskData(files=, lengths=)`."""
        return dict(self._valid)

    def to_dict(self) -> dict:
        return {"root": self.root, "ok": self.ok, "n_tasks": len(self.tasks), "episodes": self.episodes,
                "transitions": self.transitions, "tasks": [asdict(t) for t in self.tasks],
                "invalid": list(self.invalid), "packs": list(self.packs),
                "files_read": sum(t.read for t in self.tasks)}


def _pack_problem(index, names: list[str], recs: list[dict], expect=None) -> str | None:
    """Validate every episode stored in a current pack (values, lengths, and the task's spec: discrete
    ids < n_actions, continuous dims); None if all are whole."""
    by_name = {n: r for n, r in zip(names, recs)}
    cols = index.columns()
    with POOL.lock:
        try:
            for j, name in enumerate(index.names):
                a, b = int(index.offsets[j]), int(index.offsets[j + 1])
                rec = by_name.get(name, {})
                if "T" in rec and rec["T"] != b - a:
                    return f"episode {name}: {b - a} steps packed, the file has {rec['T']}"
                where = f"{index.path} (its copy of {name})"
                try:
                    ep = _read_open(where, cols, None, None, None, b - a, base=a)
                except TrajectoryFileError as err:
                    return str(err)
                act = ep["actions"]
                if expect is not None and expect.action_dim is not None:
                    if act.ndim == 1 and len(act) and int(act.max()) >= expect.action_dim:
                        return (f"{where}: [actions] expected ids < {expect.action_dim} (task {expect.task}'s "
                                f"n_actions), got {int(act.max())}")
                    if act.ndim == 2 and act.shape[1] != expect.action_dim:
                        return (f"{where}: [actions] expected {expect.action_dim} continuous dims (task "
                                f"{expect.task}), got {act.shape[1]}")
        finally:
            index.drop_handles()
    return None


def check_task(task_dir, task_specs: Mapping | None = None, full: bool = False, cache: bool = True,
               require_complete: bool = True, bar=None,
               manifests: Mapping | None = None) -> tuple[TaskReport, list[dict], dict | None, tuple]:
    """Check one task directory (see `check_dataset`). Returns (report, invalid entries, pack
    problem or None, (valid names, their lengths))."""
    task_dir = Path(task_dir)
    removed = remove_stale_tmp(task_dir)  # only tmp files whose writer is dead
    paths = list_episode_files(task_dir)
    task = _task_id_of(task_dir)
    expect = task_expect(task, _read_json(task_dir / "meta.json"), task_specs, manifests,
                         meta_path=str(task_dir / "meta.json"))
    use_cache = cache and require_complete  # facts of unfinished files differ with require_complete
    stored = load_cache(task_dir) if use_cache else {"files": {}}
    old = {} if full else stored["files"]
    names, recs, files, n_read = [], [], {}, 0
    for p in paths:
        try:
            key = stat_key(p.stat())
        except FileNotFoundError:  # removed since it was listed, or a dangling symbolic link
            if p.is_symlink():
                names.append(p.name)
                recs.append({"error": [None, f"a dangling symbolic link (-> {os.readlink(p)}): its target does "
                                             f"not exist"]})
            continue
        c = old.get(p.name)
        if isinstance(c, list) and len(c) == 3 and c[:2] == key:
            rec = c[2]
        else:
            rec = inspect_file(p, require_complete)
            n_read += 1
        names.append(p.name)
        recs.append(rec)
        files[p.name] = key + [rec]
        if bar is not None:
            bar.update(1)
    verdicts = judge(recs, expect)
    tr = TaskReport(task=task, dir=str(task_dir), read=n_read, tmp_removed=len(removed))
    invalid, good, lengths, rets, succ = [], [], [], [], []
    meta_path = task_dir / "meta.json"
    meta = _read_json(meta_path)
    scaled = isinstance(meta, dict) and meta.get("reward_scale") is not None
    if manifest_spec(task, manifests) is None and not scaled and not (task_specs and task_specs.get(task) is not None):
        tr.note = (f"not in lramlab.manifests (a typo?) and {meta_path} gives no 'reward_scale': training cannot "
                   f"scale its rewards")
    if meta_path.exists() and not isinstance(meta, dict):
        try:
            json.loads(meta_path.read_text())
            why = "expected a JSON object"
        except (OSError, ValueError) as err:
            why = f"not valid JSON ({err})"
        invalid.append({"file": str(meta_path), "dataset": None,
                        "reason": f"{why}; the task's id, specs and reward scale come from it"})
    for name, rec, v in zip(names, recs, verdicts):
        if v is not None:
            tr.invalid += 1
            invalid.append({"file": str(task_dir / name), "dataset": v[0], "reason": v[1]})
            continue
        good.append(name)
        lengths.append(rec["T"])
        rets.append(rec["return"])
        if "success" in rec:
            succ.append(rec["success"])
    tr.episodes, tr.transitions = len(good), int(sum(lengths))
    tr.returns = _return_stats(rets)
    if succ and len(succ) == len(good):
        tr.success_rate = float(np.mean(succ))
    # the pack: current for these files? its content whole? Cached by the pack's own (size, mtime)
    # and a fingerprint of the episode files' (name, size, mtime), so a second check opens nothing.
    pack_cache = stored.get("packed") if not full else None
    pack_path = task_dir / PACKED_NAME
    reason, pkey = "", None
    try:
        pkey = stat_key(pack_path.stat())
    except FileNotFoundError:
        tr.packed, pack_cache = "absent", None
    if pkey is not None:
        sources = hashlib.sha1(json.dumps([[n] + files[n][:2] for n in names if n in files]).encode()).hexdigest()
        if isinstance(pack_cache, list) and len(pack_cache) == 5 and pack_cache[:2] == pkey and pack_cache[4] == sources:
            tr.packed, reason = pack_cache[2], pack_cache[3]
        else:
            index, tr.packed, reason = _PackedIndex.status(task_dir, paths)
            if index is not None:
                reason = _pack_problem(index, names, recs, expect) or ""
                n_read += 1
                if reason:
                    tr.packed = "corrupt"
            pack_cache = pkey + [tr.packed, reason, sources]
    problem = None
    if tr.packed in ("stale", "unreadable", "corrupt"):
        problem = {"file": str(task_dir / PACKED_NAME), "status": tr.packed, "reason": reason}
    if use_cache and (n_read or removed or set(files) != set(stored["files"]) or pack_cache != stored.get("packed")):
        save_cache(task_dir, files, pack_cache)
    return tr, invalid, problem, (good, lengths)


def check_dataset(root, require_complete: bool = True, progress: bool = False, full: bool = False,
                  cache: bool = True, task_specs: Mapping | None = None,
                  tasks: Sequence[str] | None = None) -> DatasetReport:
    """Validate every episode under `root` (a path or several) against its task's spec; never stops
    at the first bad file.

    Each file is read in full (finite values, shapes, returns-to-go consistent with rewards,
    `complete`) and compared with the task's spec (`validate.task_expect`: state shape, action kind
    and dims, discrete ids < n_actions, the file's `task` attribute). Results are cached per file by
    (name, size, mtime) (`validate`), so a second check reads only what changed; `full` re-reads
    everything. A `packed.hdf5` that is stale, unreadable or damaged is listed in `.packs`. Leftover
    tmp files of killed writes are removed. `tasks` restricts the check to these task ids. An OS
    error (too many open files, permission, I/O) is raised as such, never taken for a bad file.
    """
    roots = [root] if isinstance(root, (str, Path)) else list(root)
    task_dirs = [d for r in roots for d in find_tasks(r)]
    if tasks is not None:
        want = set(tasks)
        task_dirs = [d for d in task_dirs if _task_id_of(d) in want]
    report = DatasetReport(root=", ".join(str(r) for r in roots))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(list_episode_files(d)) for d in task_dirs), desc="check", unit="file")
    manifests = None
    try:
        from lramlab.manifests import load_manifests

        manifests = load_manifests()
    except (OSError, ValueError):  # no manifests: specs come from task_specs and meta.json
        manifests = {}
    try:
        for d in task_dirs:
            tr, invalid, problem, valid = check_task(d, task_specs, full, cache, require_complete, bar, manifests)
            report.tasks.append(tr)
            report.invalid.extend(invalid)
            if problem:
                report.packs.append(problem)
            report._valid[str(d)] = valid
    finally:
        if bar is not None:
            bar.close()
    return report


@command("lramlab data check")
def check_main(argv: list[str]) -> int:
    """`lramlab data check DIR [--json [FILE|-]] [--full]`: validate every file of a dataset against
    its tasks' specs; list every invalid file and every stale or damaged packed.hdf5."""
    ap = ArgumentParser(prog="lramlab data check", description=check_main.__doc__)
    ap.add_argument("dir", help="dataset root (DIR/<domain>/<name>/...) or one task directory")
    add_json_option(ap, "the report as JSON")
    ap.add_argument("--full", action="store_true",
                    help="read every file again (default: files unchanged since the last check keep its result)")
    ap.add_argument("--no-cache", action="store_true", help="neither use nor write the per-file result cache")
    ap.add_argument("--released", action="store_true",
                    help="also accept lramlab files whose write never finished (no 'complete' attribute); "
                         "LRAM's released files (no lramlab attributes at all) are read without it")
    ap.add_argument("--progress", action="store_true", help="show a progress bar")
    args = ap.parse_args(argv)
    with JsonOutput(args.json) as out:
        rep = check_dataset(args.dir, require_complete=not args.released, progress=args.progress,
                            full=args.full, cache=not args.no_cache)
        out.write(rep.to_dict())
    if not out.to_stdout:
        read = sum(t.read for t in rep.tasks)
        print(f"{rep.root}: {len(rep.tasks)} tasks, {rep.episodes} valid episodes, "
              f"{rep.transitions} transitions, {len(rep.invalid)} invalid files "
              f"({read} files read, the others unchanged since the last check)")
        for t in rep.tasks:
            r = t.returns
            ret = ("return mean {mean:.3f} std {std:.3f} min {min:.3f} max {max:.3f}".format(**r)
                   if r.get("mean") is not None else "no valid episodes")
            sr = f", success {t.success_rate:.2f}" if t.success_rate is not None else ""
            bad = f", {t.invalid} invalid" if t.invalid else ""
            pk = f", packed {t.packed}" if t.packed != "absent" else ""
            print(f"  {t.task:<32} {t.episodes:>6} eps {t.transitions:>9} steps  {ret}{sr}{bad}{pk}")
        if not rep.tasks:
            print("  no task directories with episode files found")
        for t in rep.tasks:
            if t.note:
                print(f"NOTE {t.task}: {t.note}")
        removed = sum(t.tmp_removed for t in rep.tasks)
        if removed:
            print(f"removed {removed} leftover tmp files of killed writes")
        for bad in rep.invalid:
            ds = f" [{bad['dataset']}]" if bad["dataset"] else ""
            print(f"INVALID {bad['file']}{ds}: {bad['reason']}")
        for pk in rep.packs:
            what = {"stale": "STALE", "unreadable": "UNREADABLE", "corrupt": "DAMAGED"}[pk["status"]]
            print(f"{what} {pk['file']}: {pk['reason']} (run `lramlab data pack --force` on its task, or delete it)")
    return 0 if rep.ok else USER_ERROR_EXIT  # invalid files: the user's data (2), as every user error


@command("lramlab data pack")
def pack_main(argv: list[str]) -> int:
    """`lramlab data pack DIR`: write one packed.hdf5 per task (concatenated episodes + offsets)."""
    ap = ArgumentParser(prog="lramlab data pack", description=pack_main.__doc__)
    ap.add_argument("dir", help="dataset root (DIR/<domain>/<name>/...) or one task directory")
    ap.add_argument("--compress", action="store_true",
                    help="gzip chunks (smaller, slower reads); default raw arrays read with pread")
    ap.add_argument("--force", action="store_true", help="re-pack tasks whose pack is current")
    ap.add_argument("--released", action="store_true",
                    help="also accept lramlab files whose write never finished (no 'complete' attribute); "
                         "LRAM's released files (no lramlab attributes at all) are read without it")
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
            remove_stale_tmp(d)  # tmp files of killed writes (a live writer's are kept)
            path, written = pack_task(d, compress=args.compress, force=args.force,
                                      require_complete=not args.released)
            print(f"{d}: {'packed' if written else 'current, kept'} -> {path.name} "
                  f"({path.stat().st_size / 2**20:.1f} MiB)")
            rows.append({"dir": str(d), "pack": str(path), "packed": bool(written), "bytes": path.stat().st_size})
        out.write(rows)
    return 0


