"""Checking every file of a task against the task's spec, with a per-file result cache.

`inspect_file(path)` fully reads one episode (every value validated as `read_episode` does) and
returns the facts a spec is compared with: per-step state shape and dtype, action kind, dims and
largest discrete id, the file's `task` attribute, length, return. `TaskExpect` is what the task's
spec says (`task_specs` override > `lramlab.manifests` > the task's meta.json, field by field);
`judge` compares one file's facts with it. A fact no spec gives (e.g. the state width of a task
outside the manifests) is expected to be what most of the task's files have, so the odd file out
is named.

Results are cached per task directory in `.lramlab-check.json` (or, where the directory is not
writable, under `~/.cache/lramlab/check/`), keyed by (name, size, mtime): a second check costs a
`stat` per file; a changed file is read again; `full=True` re-reads everything. Only a file's own
facts are cached -- the comparison with the spec runs every time, so a changed manifest applies.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lramlab._io import atomic_write
from lramlab.data.store.episodes import (LRAMLAB_ATTRS, TrajectoryFileError, _check_shapes, _check_values,
                                         _datasets, _open, _slice)

CHECK_VERSION = 2  # bump when inspect_file's facts change: older caches are ignored
CACHE_NAME = ".lramlab-check.json"


# ----------------------------------------------------------------------------- one file
def inspect_file(path, require_complete: bool = True) -> dict:
    """The facts of one episode file, or {"error": [dataset, reason]} if it is damaged or invalid.

    An OS error (EMFILE, EACCES, EIO...) is raised, never recorded: it says nothing of the file."""
    try:
        with _open(path, require_complete) as f:
            attrs = dict(f.attrs)  # one pass over the attributes
            dsets = _datasets(f, path)
            shapes = {k: d.shape for k, d in dsets.items()}
            dtypes = {k: d.dtype for k, d in dsets.items()}
            foreign = not any(k in attrs for k in LRAMLAB_ATTRS)
            T = _check_shapes(path, shapes, dtypes, rtg_optional=foreign and "returns_to_go" not in shapes)
            ep = {k: _slice(path, dsets, k, 0, T) for k in dsets}
        _check_values(path, ep, 0, T)
    except TrajectoryFileError as err:
        return {"error": [err.dataset, err.problem]}
    a = ep["actions"]
    task = attrs.get("task")
    rec: dict[str, Any] = {
        "T": int(T), "states": list(shapes["states"][1:]), "states_dtype": str(dtypes["states"]),
        "action_kind": "discrete" if a.ndim == 1 else "continuous", "actions": list(a.shape[1:]),
        "action_max": int(a.max()) if a.ndim == 1 and len(a) else None,
        "task": task.decode() if isinstance(task, bytes) else (None if task is None else str(task)),
        "foreign": bool(foreign), "return": float(np.sum(ep["rewards"], dtype=np.float64)),
    }
    if "success" in ep:
        rec["success"] = bool(ep["success"].any())
    return rec


# ----------------------------------------------------------------------------- expectations
@dataclass(frozen=True)
class TaskExpect:
    """What a task's files must hold; None where no spec says (then: what most files hold)."""

    task: str
    obs_shape: tuple | None = None  # per-step state shape: (O,) or (1, 64, 64)
    action_kind: str | None = None  # "discrete" | "continuous"
    action_dim: int | None = None  # number of discrete actions, or continuous dims
    source: str = ""  # where the fields came from, for messages


def _field(spec, name):
    if spec is None:
        return None
    return spec.get(name) if isinstance(spec, Mapping) else getattr(spec, name, None)


def manifest_spec(task: str, manifests: Mapping | None = None):
    """The manifest's TaskSpec of a task id, or None (a dict lookup: `get_task` on an unknown id
    spends ~40 ms finding close matches for its error message, 16 s over 400 tasks)."""
    if manifests is None:
        from lramlab.manifests import load_manifests

        try:
            manifests = load_manifests()
        except (OSError, ValueError):  # no manifests here
            return None
    return manifests.get(task)


def _strict_int(x) -> int:
    """int(x) for an integer or a whole number; ValueError for anything else ("two", 2.5, True)."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)) or int(x) != x:
        raise ValueError(x)
    return int(x)


def task_expect(task: str, meta: Mapping | None = None, task_specs: Mapping | None = None,
                manifests: Mapping | None = None, meta_path: str | None = None) -> TaskExpect:
    """Merge, field by field, `task_specs[task]` > the manifest (`lramlab.manifests`) >
    meta.json (`obs_shape`, `action_kind`, `action_dim` or `n_actions`)."""
    sources = []
    if task_specs and task_specs.get(task) is not None:
        sources.append(("task_specs", task_specs[task]))
    spec = manifest_spec(task, manifests)
    if spec is not None:
        sources.append(("manifest", spec))
    if meta:
        m = dict(meta)
        if m.get("action_dim") is None and m.get("n_actions") is not None:
            m["action_dim"] = m["n_actions"]
        sources.append(("meta.json", m))
    out: dict[str, Any] = {}
    used = []
    for name in ("obs_shape", "action_kind", "action_dim"):
        for src, spec in sources:
            v = _field(spec, name)
            if v is not None:
                try:
                    if name == "obs_shape":
                        if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
                            raise TypeError
                        out[name] = tuple(_strict_int(x) for x in v)
                    else:
                        out[name] = str(v) if name == "action_kind" else _strict_int(v)
                except (TypeError, ValueError):
                    want = "a list of integers such as [2]" if name == "obs_shape" else "an integer"
                    if name == "action_kind":
                        want = "'discrete' or 'continuous'"
                    where = f"{meta_path or 'meta.json'}" if src == "meta.json" else f"{src} of task {task}"
                    raise ValueError(f"{where}: field {name!r} is {v!r}: expected {want}") from None
                used.append(src)
                break
    return TaskExpect(task=task, source=", ".join(dict.fromkeys(used)) or "no spec", **out)


def _majority(values: list):
    return Counter(values).most_common(1)[0][0] if values else None


def judge(recs: list[dict], expect: TaskExpect) -> list[tuple[str | None, str] | None]:
    """Per file: None (valid) or (dataset, reason), comparing each file's facts with `expect`
    (and, where `expect` is silent, with what most of the task's files hold)."""
    good = [r for r in recs if "error" not in r]
    shape = expect.obs_shape or _majority([tuple(r["states"]) for r in good])
    shape_src = f"task {expect.task}'s spec ({expect.source})" if expect.obs_shape else "most files of the task"
    kind = expect.action_kind or _majority([r["action_kind"] for r in good])
    act_tail = _majority([tuple(r["actions"]) for r in good if r["action_kind"] == kind])
    out: list = []
    for r in recs:
        if "error" in r:
            out.append(tuple(r["error"]))
            continue
        st = tuple(r["states"])
        if r["task"] is not None and r["task"] != expect.task:
            out.append((None, f"attr 'task': expected {expect.task!r} (this directory's task), got {r['task']!r}"))
        elif shape is not None and st != tuple(shape):
            out.append(("states", f"expected per-step shape {tuple(shape)} ({shape_src}), got {st}"))
        elif kind is not None and r["action_kind"] != kind:
            want = "(T,) integer ids" if kind == "discrete" else "(T, A) floats"
            out.append(("actions", f"expected {kind} actions {want} (task {expect.task}), got "
                                   f"{r['action_kind']} actions of per-step shape {tuple(r['actions'])}"))
        elif kind == "continuous" and expect.action_dim is not None and r["actions"] != [expect.action_dim]:
            out.append(("actions", f"expected {expect.action_dim} continuous dims (task {expect.task}'s spec, "
                                   f"{expect.source}), got {r['actions'][0]}"))
        elif kind == "continuous" and expect.action_dim is None and tuple(r["actions"]) != act_tail:
            out.append(("actions", f"expected {act_tail[0]} continuous dims (most files of the task), "
                                   f"got {r['actions'][0]}"))
        elif (kind == "discrete" and expect.action_dim is not None and r["action_max"] is not None
              and r["action_max"] >= expect.action_dim):
            out.append(("actions", f"expected ids < {expect.action_dim} (task {expect.task}'s n_actions, "
                                   f"{expect.source}), got {r['action_max']}"))
        else:
            out.append(None)
    return out


# ----------------------------------------------------------------------------- cache
def _fallback_cache(task_dir: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lramlab" / "check"
    h = hashlib.sha1(str(Path(task_dir).resolve()).encode()).hexdigest()[:20]
    return base / f"{h}.json"


def load_cache(task_dir: Path) -> dict:
    """{"files": {name: [size, mtime_ns, facts]}, "packed": [...]} from the task's cache (empty if
    none, unreadable or of another version)."""
    for path in (Path(task_dir) / CACHE_NAME, _fallback_cache(task_dir)):
        try:
            j = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(j, dict) and j.get("version") == CHECK_VERSION and isinstance(j.get("files"), dict):
            if path.parent != Path(task_dir) and j.get("dir") != str(Path(task_dir).resolve()):
                continue
            return j
    return {"files": {}}


def save_cache(task_dir: Path, files: dict, packed: list | None) -> Path | None:
    """Write the cache (no fsync: losing it costs a re-check). Falls back to the user cache when
    the directory is not writable; a failed write is a warning naming the OS error, not a failure."""
    body = json.dumps({"version": CHECK_VERSION, "dir": str(Path(task_dir).resolve()), "files": files,
                       "packed": packed}, separators=(",", ":"))
    first_err = None
    for path in (Path(task_dir) / CACHE_NAME, _fallback_cache(task_dir)):
        try:
            atomic_write(path, lambda tmp: tmp.write_text(body), fsync=False)
            return path
        except OSError as err:
            first_err = first_err or err
    warnings.warn(f"{task_dir}: the data check's results were not cached ({first_err}); the next check "
                  f"reads every file again", stacklevel=3)
    return None


def stat_key(st: os.stat_result) -> list:
    return [int(st.st_size), int(st.st_mtime_ns)]
