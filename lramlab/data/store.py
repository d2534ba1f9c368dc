"""HDF5 trajectory store: one file per episode, one directory per task (LRAM's released layout).

Layout::

    DIR/<domain>/<name>/episode_000000.hdf5   one episode per file
    DIR/<domain>/<name>/meta.json             {"task": id, "policy": ..., "seed": ..., ...}
    DIR/<domain>/<name>/stats.json            episode lengths, returns (and success), see `write_stats`
    DIR/<domain>/<name>/packed.hdf5           optional: all episodes concatenated (`pack_task`,
                                              `lramlab data pack`); readers use it while current

A task directory may also be passed directly (the released layout: a flat directory of episode
files). Episode datasets (T timesteps, O state dims, A continuous action dims):

    states         (T, O) float32, or (T, 1, 64, 64) uint8 for image tasks
    actions        (T,) int64 (discrete) or (T, A) float32 in [-1, 1] (continuous)
    rewards        (T,) float32
    returns_to_go  (T,) float32, raw (not divided by the reward scale): rtg[t] = sum(rewards[t:])
    dones          (T,) bool, True only at the last step of an episode that terminated
    success        (T,) bool, optional

File attrs: `task`, `index` (written first) and `complete=1` (written last, just before the
atomic rename). A reader rejects a file without `complete` -- unless `require_complete=False`,
for files from LRAM's released data, which never had the attribute.

Atomicity vs durability. Every write goes to a hidden tmp file that is renamed into place only
when whole, so a KILLED process never leaves a file that looks complete. Durability (surviving a
POWER LOSS) needs fsync, which costs milliseconds per file: `write_episode(fsync=True)` (default)
syncs each file; `StoreWriter` (used by `lramlab data generate`) writes without fsync and syncs the
files and the directory once per `sync_every` episodes / `sync_seconds` / at close. Before its
first unsynced write it durably records the lowest unsynced index (and the kernel boot id) in
`.unsynced.json`; the next writer on that directory (`recover_unsynced`) keeps those files if the
machine has not rebooted since (a killed process: the data is whole in the page cache) and
otherwise deletes every episode file from that index on, so after a power loss the possibly
damaged tail (zero-length, truncated or zero-filled files) is regenerated instead of trusted. A
damaged file is also rejected by every reader when it fails to open (HDF5 detects a file shorter
than its superblock says; damaged metadata) or lacks `complete` -- but zeroed blocks inside raw
uncompressed data read back as zeros, which is why the marker, not the reader, guards the tail.

Every read is validated; a bad file raises `TrajectoryFileError` naming the file, the dataset
and what was expected. Reading a window reads only that slice (h5py hyperslab reads).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

REQUIRED_KEYS = ("states", "actions", "rewards", "returns_to_go", "dones")
OPTIONAL_KEYS = ("success",)
ALL_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS
EPISODE_GLOB = ("*.hdf5", "*.h5")
UNSYNCED_NAME = ".unsynced.json"  # StoreWriter's marker: episodes from this index on may not be durable
PACKED_NAME = "packed.hdf5"  # reserved for a packed per-task layout; never read as an episode
# Continuous actions are stored in [-1, 1]; float32 round-off from the writer's clipping is tolerated.
_ACTION_TOL = 1e-5
MAX_ACT_DIM = 8  # = lramlab.tokenizer.MAX_ACT_DIM (kept here: importing the tokenizer imports torch)


class TrajectoryFileError(ValueError):
    """A trajectory file is unreadable or violates the store's layout.

    The message names the file, the dataset and what was expected; the same facts are kept
    as attributes so `check_dataset` can report them.
    """

    def __init__(self, path, dataset: str | None, problem: str):
        self.path = str(path)
        self.dataset = dataset
        self.problem = problem
        where = f"dataset '{dataset}'" if dataset else "file"
        super().__init__(f"{self.path}: {where}: {problem}")


def episode_filename(index: int) -> str:
    return f"episode_{int(index):06d}.hdf5"


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """rtg[t] = sum(rewards[t:]) in float64, returned as float32 (undiscounted, as in DT)."""
    r = np.asarray(rewards, dtype=np.float64)
    return np.cumsum(r[::-1])[::-1].astype(np.float32)


def _h5py():
    import h5py  # a core dependency, imported here to keep `import lramlab` light

    return h5py


# ----------------------------------------------------------------------------- validation
def _check_shapes(path, shapes: Mapping[str, tuple], dtypes: Mapping[str, np.dtype]) -> int:
    """Validate shapes/dtypes from metadata only (no data read). Returns T."""
    for key in REQUIRED_KEYS:
        if key not in shapes:
            raise TrajectoryFileError(path, key, f"missing (an episode needs {', '.join(REQUIRED_KEYS)})")
    for key in ("rewards", "returns_to_go", "dones", "success"):
        if key in shapes and len(shapes[key]) != 1:
            raise TrajectoryFileError(path, key, f"expected shape (T,), got {shapes[key]}")
    # T is the length most datasets agree on, so the odd one out is the one named
    lens = [shapes[k][0] if len(shapes[k]) else -1 for k in REQUIRED_KEYS]
    T = max(lens, key=lambda n: (lens.count(n), n == lens[0]))
    for key, shp in shapes.items():
        if len(shp) == 0 or shp[0] != T:
            raise TrajectoryFileError(
                path, key, f"expected {T} timesteps (the length of the other datasets), got shape {shp}")
    if T < 1:
        raise TrajectoryFileError(path, "rewards", "expected at least 1 timestep, got 0")
    s_shape, s_dtype = shapes["states"], dtypes["states"]
    if len(s_shape) == 2:
        if not np.issubdtype(s_dtype, np.floating):
            raise TrajectoryFileError(path, "states", f"expected a float dtype for (T, obs_dim) states, got {s_dtype}")
    elif len(s_shape) == 4:
        if s_dtype != np.uint8 or s_shape[1:] != (1, 64, 64):
            raise TrajectoryFileError(
                path, "states", f"expected images (T, 1, 64, 64) uint8, got {s_shape} {s_dtype}")
    else:
        raise TrajectoryFileError(
            path, "states", f"expected (T, obs_dim) float or (T, 1, 64, 64) uint8, got shape {s_shape}")
    a_shape, a_dtype = shapes["actions"], dtypes["actions"]
    if len(a_shape) == 1:
        if not np.issubdtype(a_dtype, np.integer):
            raise TrajectoryFileError(path, "actions", f"expected integer dtype for discrete (T,) actions, got {a_dtype}")
    elif len(a_shape) == 2:
        if not np.issubdtype(a_dtype, np.floating):
            raise TrajectoryFileError(path, "actions", f"expected a float dtype for continuous (T, A) actions, got {a_dtype}")
        if not 1 <= a_shape[1] <= MAX_ACT_DIM:
            raise TrajectoryFileError(path, "actions", f"expected 1..{MAX_ACT_DIM} continuous dims, got {a_shape[1]}")
    else:
        raise TrajectoryFileError(path, "actions", f"expected shape (T,) or (T, A), got {a_shape}")
    for key in ("rewards", "returns_to_go"):
        if not np.issubdtype(dtypes[key], np.floating):
            raise TrajectoryFileError(path, key, f"expected a float dtype, got {dtypes[key]}")
    for key in ("dones", "success"):
        if key in dtypes and dtypes[key] != np.bool_:
            raise TrajectoryFileError(path, key, f"expected dtype bool, got {dtypes[key]}")
    return int(T)


def _check_values(path, data: Mapping[str, np.ndarray], start: int, T: int) -> None:
    """Validate values of a (possibly partial) read that starts at timestep `start`."""
    for key in ("rewards", "returns_to_go", "states"):
        x = data.get(key)
        if x is not None and x.dtype != np.uint8 and not np.isfinite(x).all():
            rows = ~np.isfinite(x.reshape(len(x), -1))
            t = int(np.flatnonzero(rows.any(axis=1))[0])
            value = x.reshape(len(x), -1)[t][rows[t]][0]
            raise TrajectoryFileError(path, key, f"expected finite values, got {value} at timestep {t + start}")
    a = data.get("actions")
    if a is not None:
        if a.ndim == 2:
            if not np.isfinite(a).all():
                raise TrajectoryFileError(path, "actions", "expected finite continuous actions, got NaN/inf")
            lo, hi = float(a.min()), float(a.max())
            if lo < -1 - _ACTION_TOL or hi > 1 + _ACTION_TOL:
                raise TrajectoryFileError(path, "actions", f"expected continuous actions in [-1, 1], got range [{lo:.4g}, {hi:.4g}]")
        elif len(a) and a.min() < 0:
            raise TrajectoryFileError(path, "actions", f"expected discrete actions >= 0, got {int(a.min())}")
    d = data.get("dones")
    if d is not None:
        # A done can only mark the episode's final step: an earlier one means two episodes in one file.
        last = T - 1 - start
        early = np.flatnonzero(d[: max(0, min(len(d), last))])
        if len(early):
            raise TrajectoryFileError(
                path, "dones", f"expected True only at the last step ({T - 1}), got True at timestep {int(early[0]) + start}")
    r, g = data.get("rewards"), data.get("returns_to_go")
    if r is not None and g is not None and len(r):
        # rtg[t] - rtg[t+1] == r[t]; the last step of the episode has rtg == r.
        diff = g[:-1].astype(np.float64) - g[1:]
        scale = max(1.0, float(np.abs(g).max()))
        ok = bool((np.abs(diff - r[:-1]) <= 1e-4 * scale).all())  # allclose is slow on small arrays
        if ok and start + len(r) == T:
            ok = abs(float(g[-1]) - float(r[-1])) <= 1e-4 * scale
        if not ok:
            raise TrajectoryFileError(path, "returns_to_go", "expected rtg[t] = sum(rewards[t:]) (raw, undiscounted)")


# ----------------------------------------------------------------------------- write
def _normalise_episode(path, episode: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    ep: dict[str, np.ndarray] = {}
    if "states" not in episode or "actions" not in episode or "rewards" not in episode:
        missing = [k for k in ("states", "actions", "rewards") if k not in episode]
        raise TrajectoryFileError(path, missing[0], "missing from the episode to write")
    states = np.asarray(episode["states"])
    ep["states"] = states if states.dtype == np.uint8 else states.astype(np.float32)
    actions = np.asarray(episode["actions"])
    ep["actions"] = actions.astype(np.int64) if np.issubdtype(actions.dtype, np.integer) else actions.astype(np.float32)
    ep["rewards"] = np.asarray(episode["rewards"], dtype=np.float32)
    T = len(ep["rewards"])
    ep["returns_to_go"] = (np.asarray(episode["returns_to_go"], dtype=np.float32)
                           if "returns_to_go" in episode else returns_to_go(ep["rewards"]))
    if "dones" in episode:
        ep["dones"] = np.asarray(episode["dones"]).astype(bool)
    else:  # an episode given without dones is taken to have terminated at its last step
        ep["dones"] = np.zeros(T, dtype=bool)
        if T:
            ep["dones"][-1] = True
    if episode.get("success") is not None:
        ep["success"] = np.asarray(episode["success"]).astype(bool)
    unknown = set(episode) - set(ALL_KEYS)
    if unknown:
        raise TrajectoryFileError(path, sorted(unknown)[0], f"unknown dataset; allowed: {', '.join(ALL_KEYS)}")
    return ep


def _fsync_file(path, missing_ok: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:  # replaced or removed since it was written: nothing of ours to sync
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # some filesystems / platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (tmp in the same dir, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _prepare(task_dir: Path, index: int, episode: Mapping[str, np.ndarray]) -> tuple[Path, dict]:
    final = task_dir / episode_filename(index)
    ep = _normalise_episode(final, episode)
    T = _check_shapes(final, {k: v.shape for k, v in ep.items()}, {k: v.dtype for k, v in ep.items()})
    _check_values(final, ep, 0, T)
    return final, ep


def _raw_dataset(f, key: str, arr: np.ndarray) -> None:
    """`f.create_dataset(key, data=arr)` (contiguous, no filters, no timestamps: the same file
    structure) through h5py's low-level API, which costs about half as much -- for a short episode
    the high-level calls were the largest share of the write."""
    h5py = _h5py()
    arr = np.ascontiguousarray(arr)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)  # h5py's default too: files do not change with the clock
    tid = h5py.h5t.py_create(arr.dtype, logical=True)
    dsid = h5py.h5d.create(f.id, key.encode(), tid, h5py.h5s.create_simple(arr.shape), dcpl=dcpl)
    dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, arr)


def _int_attr(f, name: str, value: int) -> None:
    """`f.attrs[name] = int(value)` (an int64 scalar), low-level for the same reason."""
    h5py = _h5py()
    a = h5py.h5a.create(f.id, name.encode(), h5py.h5t.py_create(np.dtype(np.int64)), h5py.h5s.create(h5py.h5s.SCALAR))
    a.write(np.array(int(value), dtype=np.int64))


def _write_file(task_dir: Path, final: Path, index: int, ep: Mapping[str, np.ndarray], compress: bool,
                task: str, fsync: bool) -> None:
    """tmp file -> datasets -> `complete` -> (fsync) -> os.replace -> (fsync dir)."""
    h5py = _h5py()
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=task_dir)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["task"] = task
            _int_attr(f, "index", index)
            for key, arr in ep.items():
                if compress:
                    row = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
                    steps = int(max(1, min(len(arr), (64 * 1024) // max(1, row), 256)))  # ~64 KiB chunks
                    f.create_dataset(key, data=arr, compression="gzip", compression_opts=4,
                                     chunks=(steps,) + arr.shape[1:])
                else:
                    _raw_dataset(f, key, arr)
            _int_attr(f, "complete", 1)  # last: a file without it was never finished
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(task_dir)


def write_episode(task_dir, index: int, episode: Mapping[str, np.ndarray], compress: bool = False,
                  task: str | None = None, fsync: bool = True) -> Path:
    """Validate `episode` and write it to `task_dir/episode_{index:06d}.hdf5` atomically.

    `episode` needs `states`, `actions`, `rewards`; `returns_to_go` is computed when absent and
    `dones` defaults to True at the last step. `compress` uses gzip (level 4) with chunks along
    time, so a window read decompresses only the chunks it touches. The file appears under its
    final name only when complete (tmp file + flush + os.replace), whatever `fsync` says.
    `fsync=True` also makes it durable (file and directory fsync'd) before returning; for many
    episodes use `StoreWriter`, which batches the fsyncs and marks what is not yet durable.
    """
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    final, ep = _prepare(task_dir, index, episode)
    _write_file(task_dir, final, index, ep, compress, _task_id_of(task_dir) if task is None else task, fsync)
    return final


def _episode_index(path: Path) -> int | None:
    """Index from an `episode_<digits>.hdf5` name (None for other names)."""
    stem = Path(path).stem
    return int(stem[8:]) if stem.startswith("episode_") and stem[8:].isdigit() else None


def _summary(name: str, ep: Mapping[str, np.ndarray]) -> dict:
    """The stats.json entry of one episode (see `write_stats`)."""
    out = {"file": name, "length": int(len(ep["rewards"])),
           "return": float(np.sum(ep["rewards"], dtype=np.float64))}
    if "success" in ep:
        out["success"] = bool(np.asarray(ep["success"]).any())
    return out


def _boot_id() -> str | None:
    """This kernel boot's id (Linux): unchanged since a write means no crash / power loss since."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def recover_unsynced(task_dir) -> list[Path]:
    """Settle what a `StoreWriter` wrote but never made durable; returns the files deleted.

    `.unsynced.json` (written durably before the first unsynced write) names the lowest such
    index. If the machine has not rebooted since (same kernel boot id: the writer was only killed),
    the files are whole and still in the page cache: they are fsync'd and kept. Otherwise (power
    loss, crash, another machine, no boot id) every episode file with index >= `from_index` is
    deleted, so a possibly damaged tail is regenerated rather than trusted. Also removes tmp files
    of killed writes. Safe to call when nothing is pending; only while no writer works in `task_dir`.
    """
    task_dir = Path(task_dir)
    removed: list[Path] = []
    marker = task_dir / UNSYNCED_NAME
    if marker.exists():
        j = _read_json(marker)
        if not (isinstance(j, dict) and isinstance(j.get("from_index"), int)):
            j = {"from_index": 0}  # unreadable marker: nothing in the directory can be trusted as durable
        same_boot = j.get("boot_id") is not None and j.get("boot_id") == _boot_id()
        for p in list_episode_files(task_dir):
            i = _episode_index(p)
            if i is not None and i >= j["from_index"]:
                if same_boot:
                    _fsync_file(p, missing_ok=True)
                else:
                    p.unlink(missing_ok=True)
                    removed.append(p)
        _fsync_dir(task_dir)  # the fsyncs / deletions are durable before the marker goes
        marker.unlink(missing_ok=True)
    for tmp in task_dir.glob(".*.tmp"):  # writes (episodes, json) that were killed midway
        tmp.unlink(missing_ok=True)
    _fsync_dir(task_dir)
    return removed


class StoreWriter:
    """Writes the episodes of one task directory, atomically, with batched durability.

    Each file is atomic (tmp + `complete` + os.replace) as with `write_episode`; fsync happens
    once per `sync_every` episodes or `sync_seconds`, and at `close()` (also on leaving a `with`
    block by an exception). Until then, `.unsynced.json` (written durably first) names the lowest
    index that may not be durable; `recover_unsynced`, run when a writer opens the directory,
    keeps those files after a mere process kill (fsyncing them) and deletes them after a reboot.
    So: a kill never leaves a file that looks whole and loses nothing finished; a power loss loses
    at most the episodes since the last sync, which are then absent and regenerated.

    `summaries` maps file name -> stats.json entry of each episode written, for `write_stats`.
    One writer per task directory at a time.
    """

    def __init__(self, task_dir, task: str | None = None, compress: bool = False, sync_every: int = 256,
                 sync_seconds: float = 30.0, recover: bool = True):
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        if not sync_seconds > 0:
            raise ValueError(f"sync_seconds must be > 0, got {sync_seconds}")
        self.task_dir = Path(task_dir)
        self.task_dir.mkdir(parents=True, exist_ok=True)
        self.task = _task_id_of(self.task_dir) if task is None else task
        self.compress, self.sync_every, self.sync_seconds = bool(compress), int(sync_every), float(sync_seconds)
        self.recovered = recover_unsynced(self.task_dir) if recover else []
        self.summaries: dict[str, dict] = {}
        self._pending: list[Path] = []
        self._marked: int | None = None  # from_index recorded in the marker, None: no marker
        self._last_sync = time.monotonic()
        self.closed = False

    def _mark(self, index: int) -> None:
        if self._marked is None or index < self._marked:
            atomic_write_text(self.task_dir / UNSYNCED_NAME,
                              json.dumps({"from_index": int(index), "boot_id": _boot_id(), "pid": os.getpid()}))
            self._marked = int(index)

    def write(self, index: int, episode: Mapping[str, np.ndarray]) -> Path:
        """Validate and write episode `index` (atomic; durable at the next sync)."""
        if self.closed:
            raise ValueError(f"StoreWriter({self.task_dir}) is closed")
        final, ep = _prepare(self.task_dir, index, episode)
        self._mark(index)
        _write_file(self.task_dir, final, index, ep, self.compress, self.task, fsync=False)
        self._pending.append(final)
        self.summaries[final.name] = _summary(final.name, ep)
        if len(self._pending) >= self.sync_every or time.monotonic() - self._last_sync >= self.sync_seconds:
            self.sync()
        return final

    def sync(self) -> None:
        """Make every episode written so far durable, then clear the marker."""
        for p in self._pending:
            _fsync_file(p, missing_ok=True)
        _fsync_dir(self.task_dir)
        if self._marked is not None:
            (self.task_dir / UNSYNCED_NAME).unlink(missing_ok=True)  # if this is lost: only a redo
            _fsync_dir(self.task_dir)
            self._marked = None
        self._pending.clear()
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self.closed:
            self.sync()
            self.closed = True

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # the files written are whole: make them durable even when leaving by an error


# ----------------------------------------------------------------------------- read
def _open(path, require_complete: bool = True):
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as err:  # truncated, not HDF5, unreadable
        raise TrajectoryFileError(path, None, f"cannot be opened as HDF5 (truncated or corrupt?): {err}") from err
    try:
        complete = int(f.attrs.get("complete", 0)) if require_complete else 1
    except (KeyError, OSError, RuntimeError, TypeError, ValueError) as err:  # damaged attribute storage
        f.close()
        raise TrajectoryFileError(path, None, f"attr 'complete' cannot be read (corrupt file?): {err}") from err
    if complete != 1:
        f.close()
        raise TrajectoryFileError(path, None, "attr 'complete' is missing: the write never finished")
    return f


# Damaged HDF5 metadata (e.g. a zeroed block) surfaces from h5py as any of these; readers turn them
# into a TrajectoryFileError naming the file and dataset.
_H5_ERRORS = (KeyError, OSError, RuntimeError, ValueError)


def _file_meta(path, f) -> tuple[int, dict, dict]:
    shapes, dtypes = {}, {}
    for key in ALL_KEYS:
        try:
            if key in f:
                ds = f[key]
                shapes[key], dtypes[key] = tuple(ds.shape), ds.dtype
        except _H5_ERRORS as err:
            raise TrajectoryFileError(path, key, f"cannot be opened (corrupt file?): {err}") from err
    return _check_shapes(path, shapes, dtypes), shapes, dtypes


def _datasets(f, path=None) -> dict:
    out = {}
    for k in ALL_KEYS:
        try:
            if k in f:
                out[k] = f[k]
        except _H5_ERRORS as err:
            raise TrajectoryFileError(path or f.filename, k, f"cannot be opened (corrupt file?): {err}") from err
    return out


def _read_open(path, dsets: Mapping, start, stop, keys, T: int, base: int = 0,
               copy: bool = False) -> dict[str, np.ndarray]:
    """Read [start, stop) of the given datasets (T already validated from metadata).

    `dsets` holds h5py datasets or arrays (views of a packed file's memory maps, where the
    episode starts at row `base`; `copy` makes the result own its memory)."""
    s = 0 if start is None else int(start)
    e = T if stop is None else int(stop)
    if not (0 <= s < e <= T):
        raise TrajectoryFileError(path, None, f"expected a window 0 <= start < stop <= {T}, got [{s}, {e})")
    keys = tuple(dsets) if keys is None else tuple(keys)
    out = {}
    for key in keys:
        if key not in dsets:
            raise TrajectoryFileError(path, key, "missing")
        try:
            x = dsets[key][base + s:base + e]  # hyperslab read: only this slice leaves the disk
        except _H5_ERRORS as err:  # a damaged chunk surfaces only when read
            raise TrajectoryFileError(path, key, f"read failed (corrupt data?): {err}") from err
        out[key] = x.copy() if copy and isinstance(x, np.ndarray) else x  # own the memory, not a view of the map
    _check_values(path, out, s, T)
    if "states" in out and out["states"].dtype != np.uint8:
        out["states"] = out["states"].astype(np.float32, copy=False)
    for key in ("rewards", "returns_to_go"):
        if key in out:
            out[key] = out[key].astype(np.float32, copy=False)
    if "actions" in out:
        a = out["actions"]
        out["actions"] = a.astype(np.int64, copy=False) if a.ndim == 1 else a.astype(np.float32, copy=False)
    return out


def read_episode(path, start: int | None = None, stop: int | None = None, keys: Iterable[str] | None = None,
                 require_complete: bool = True) -> dict[str, np.ndarray]:
    """Read timesteps [start, stop) of an episode file (all by default), validated.

    Raises `TrajectoryFileError` (a ValueError) naming the file, dataset and expectation.
    """
    f = _open(path, require_complete)
    with f:
        T = _file_meta(path, f)[0]
        return _read_open(path, _datasets(f, path), start, stop, keys, T)


def is_complete(path) -> bool:
    """The file opens as HDF5 and carries `complete=1` (what resume logic keeps; data not read)."""
    try:
        _open(path).close()
    except TrajectoryFileError:
        return False
    return True


def episode_length(path, require_complete: bool = True) -> int:
    """Number of timesteps, from metadata only (shapes/dtypes are validated, values are not)."""
    with _open(path, require_complete) as f:
        return _file_meta(path, f)[0]


# ----------------------------------------------------------------------------- tasks
_NUM = re.compile(r"(\d+)")


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in _NUM.split(p.name)]


def list_episode_files(task_dir) -> list[Path]:
    """Episode files of a task dir in natural order (hidden tmp files and packed.hdf5 skipped)."""
    task_dir = Path(task_dir)
    files = {p for pat in EPISODE_GLOB for p in task_dir.glob(pat)
             if p.is_file() and not p.name.startswith(".") and p.name != PACKED_NAME}
    return sorted(files, key=_natural_key)


def find_tasks(root) -> list[Path]:
    """Task directories under `root` (any directory holding episode files); `root` itself if it is one."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory {root} does not exist")
    if list_episode_files(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if list_episode_files(dirpath):
            found.append(Path(dirpath))
    return sorted(found)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _task_id_of(task_dir: Path) -> str:
    """Task id from meta.json / stats.json, else '<parent>/<dir>' (the DIR/<domain>/<name> layout)."""
    task_dir = Path(task_dir)
    for name in ("meta.json", "stats.json"):
        j = _read_json(task_dir / name)
        if isinstance(j, dict) and isinstance(j.get("task"), str):
            return j["task"]
    resolved = task_dir.resolve()
    return f"{resolved.parent.name}/{resolved.name}"


class TaskData:
    """The episodes of one task directory, with file handles kept open for fast window reads.

    `.task` id, `.episode_paths`, `.lengths` (np.ndarray of T per episode), `.read(i, start, stop)`.
    Lengths come from `stats.json` when it lists exactly the files present, else from file metadata.
    Handles are cached per process (re-opened after a fork) in an LRU of `max_open` files.

    When the directory holds a `packed.hdf5` (`pack_task`) that is current -- made from exactly
    the episode files present, unchanged since (name, size, mtime) -- reads come from it instead
    (`.packed` is its path, else None); a stale or unreadable one is ignored with a warning.
    `packed=False` (or `use_packed(False)`, or LRAMLAB_NO_PACKED=1) always reads the episode files.
    """

    def __init__(self, task_dir, require_complete: bool = True, max_open: int = 512, packed: bool | None = None):
        self.task_dir = Path(task_dir)
        self.episode_paths = list_episode_files(self.task_dir)
        if not self.episode_paths:
            raise FileNotFoundError(f"{self.task_dir}: no episode files (*.hdf5) found")
        self.task = _task_id_of(self.task_dir)
        self.meta = _read_json(self.task_dir / "meta.json") or {}
        self.require_complete = require_complete
        self.max_open = max_open
        self._handles: OrderedDict[int, object] = OrderedDict()
        self._pid = os.getpid()
        self._pk = None  # index of a current packed.hdf5 (see _PackedIndex)
        self._pk_arrays = None  # per-process {key: memmap | h5py dataset} of the packed file
        self._pk_file = None
        if _packed_enabled() if packed is None else packed:
            self._pk = _PackedIndex.load(self.task_dir, self.episode_paths, warn=True)
        self.packed = self._pk.path if self._pk is not None else None
        self.lengths = np.diff(self._pk.offsets) if self._pk is not None else self._lengths()
        first = self.meta_of(0)
        self.obs_kind = "image" if len(first["states"]) == 4 else "state"
        self.obs_shape = first["states"][1:]
        self.action_kind = "discrete" if len(first["actions"]) == 1 else "continuous"
        self.act_dim = 0 if self.action_kind == "discrete" else first["actions"][1]

    def __len__(self) -> int:
        return len(self.episode_paths)

    def _lengths(self) -> np.ndarray:
        stats = _read_json(self.task_dir / "stats.json")
        names = [p.name for p in self.episode_paths]
        if isinstance(stats, dict) and isinstance(stats.get("episodes"), list):
            eps = stats["episodes"]
            if [e.get("file") for e in eps] == names:
                return np.asarray([int(e["length"]) for e in eps], dtype=np.int64)
        return np.asarray([episode_length(p, self.require_complete) for p in self.episode_paths], dtype=np.int64)

    def meta_of(self, i: int) -> dict[str, tuple]:
        if self._pk is not None:
            return {k: (int(self.lengths[i]),) + shp[1:] for k, shp in self._pk.shapes.items()}
        return self._file(i)[2]

    def _packed_arrays(self) -> dict:
        if os.getpid() != self._pid:  # h5py handles must not cross a fork
            self._handles.clear()
            self._pk_arrays = self._pk_file = None
            self._pid = os.getpid()
        if self._pk_arrays is None:
            self._pk_file, self._pk_arrays = self._pk.open()
        return self._pk_arrays

    def _file(self, i: int):
        """(h5py file, {name: dataset}, shapes) of episode i, opened and shape-checked once."""
        if os.getpid() != self._pid:  # h5py handles must not cross a fork
            self._handles.clear()
            self._pid = os.getpid()
        h = self._handles.get(i)
        if h is not None:
            self._handles.move_to_end(i)
            return h
        path = self.episode_paths[i]
        f = _open(path, self.require_complete)
        try:
            T, shapes, _ = _file_meta(path, f)
            if T != self.lengths[i]:
                raise TrajectoryFileError(path, None, f"expected {self.lengths[i]} timesteps (stats.json), got {T}")
        except BaseException:
            f.close()
            raise
        # dataset objects are cached: an h5py name lookup costs more than a 50-step slice read
        h = self._handles[i] = (f, _datasets(f, path), shapes)
        while len(self._handles) > self.max_open:
            _, old = self._handles.popitem(last=False)
            old[0].close()
        return h

    def read(self, i: int, start: int | None = None, stop: int | None = None,
             keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Validated read of episode i, timesteps [start, stop)."""
        if self._pk is not None:
            where = f"{self._pk.path} (episode {self.episode_paths[i].name})"
            return _read_open(where, self._packed_arrays(), start, stop, keys, int(self.lengths[i]),
                              base=int(self._pk.offsets[i]), copy=True)
        return _read_open(self.episode_paths[i], self._file(i)[1], start, stop, keys, int(self.lengths[i]))

    def close(self) -> None:
        for h in self._handles.values():
            h[0].close()
        self._handles.clear()
        self._pk_arrays = None
        if self._pk_file is not None:
            self._pk_file.close()
            self._pk_file = None

    def __getstate__(self):  # picklable for DataLoader workers: handles are re-opened there
        d = dict(self.__dict__)
        d["_handles"] = OrderedDict()
        d["_pk_arrays"] = d["_pk_file"] = None
        return d

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


# ----------------------------------------------------------------------------- packed layout
_PACKED_FORMAT = "lramlab-packed-v1"
_USE_PACKED = [True]


def _packed_enabled() -> bool:
    return _USE_PACKED[-1] and os.environ.get("LRAMLAB_NO_PACKED", "") in ("", "0")


@contextmanager
def use_packed(enabled: bool):
    """Within the block, new `TaskData` objects read packed.hdf5 files (True) or never (False)."""
    _USE_PACKED.append(bool(enabled))
    try:
        yield
    finally:
        _USE_PACKED.pop()


def _source_stat(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    st = [p.stat() for p in paths]
    return (np.asarray([x.st_size for x in st], dtype=np.int64),
            np.asarray([x.st_mtime_ns for x in st], dtype=np.int64))


@dataclass
class _PackedIndex:
    """What a reader needs from a packed.hdf5: offsets, shapes, and how to map each dataset."""

    path: Path
    offsets: np.ndarray  # (E+1,) row of each episode's first step; offsets[-1] = N
    shapes: dict  # key -> full (N, ...) shape
    mmap: dict  # key -> (byte offset, dtype) for contiguous uncompressed datasets, else absent

    @classmethod
    def load(cls, task_dir: Path, episode_paths: list[Path], warn: bool = False) -> "_PackedIndex | None":
        """The index if task_dir/packed.hdf5 exists and is current for `episode_paths`, else None."""
        path = Path(task_dir) / PACKED_NAME
        if not path.exists():
            return None
        try:
            with _open(path) as f:
                if f.attrs.get("format") != _PACKED_FORMAT:
                    raise TrajectoryFileError(path, None, f"attr 'format': expected {_PACKED_FORMAT!r}, "
                                                          f"got {f.attrs.get('format')!r}")
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["files"][()]]
                size, mtime = f["source_size"][()], f["source_mtime_ns"][()]
                offsets = np.asarray(f["offsets"][()], dtype=np.int64)
                N, shapes, dtypes = _file_meta(path, f)
                mmap = {}
                for key in shapes:
                    ds = f[key]
                    off = ds.id.get_offset()
                    if ds.chunks is None and off is not None and ds.dtype.isnative:
                        mmap[key] = (int(off), ds.dtype)
        except (TrajectoryFileError, *_H5_ERRORS) as err:
            if warn:
                warnings.warn(f"{path}: unreadable, reading the episode files instead ({err})", stacklevel=3)
            return None
        cur = [p.name for p in episode_paths]
        stale = None
        if names != cur:
            stale = f"it packs {len(names)} episode files, the directory has {len(cur)} (or other names)"
        else:
            cs, cm = _source_stat(episode_paths)
            if not (np.array_equal(cs, size) and np.array_equal(cm, mtime)):
                bad = int(np.flatnonzero((cs != size) | (cm != mtime))[0])
                stale = f"{cur[bad]} changed since it was packed"
        if stale is None and not (len(offsets) == len(cur) + 1 and offsets[0] == 0 and offsets[-1] == N
                                  and (np.diff(offsets) > 0).all()):
            stale = "its offsets do not match its datasets"
        if stale:
            if warn:
                warnings.warn(f"{path} is stale ({stale}); reading the episode files instead. "
                              f"Run `lramlab data pack {task_dir}` again.", stacklevel=3)
            return None
        return cls(path=path, offsets=offsets, shapes=shapes, mmap=mmap)

    def open(self) -> tuple[object, dict]:
        """(open h5py file, {key: array-like}): np.memmap where the dataset is contiguous raw bytes,
        else the h5py dataset (chunked / compressed: hyperslab reads)."""
        f = _open(self.path)
        out = {}
        for key, shp in self.shapes.items():
            if key in self.mmap:
                off, dt = self.mmap[key]
                # a plain ndarray view (it keeps the map alive): slicing it skips np.memmap's overhead
                out[key] = np.memmap(self.path, dtype=dt, mode="r", offset=off, shape=shp).view(np.ndarray)
            else:
                out[key] = f[key]
        return f, out


def pack_task(task_dir, compress: bool = False, force: bool = False,
              require_complete: bool = True) -> tuple[Path, bool]:
    """Write `task_dir/packed.hdf5`: every episode of the task concatenated, for faster window reads.

    Datasets as in an episode file but (N, ...) over all N steps, in `list_episode_files` order,
    plus `offsets` (E+1,), `files` (episode names) and `source_size` / `source_mtime_ns`, by which
    a reader knows the pack is current. `compress=False` stores raw contiguous arrays, which
    readers memory-map (fastest; images take their uncompressed size); `compress=True` uses gzip
    chunks as `write_episode` does. Every episode is read validated; the file appears atomically.
    Returns (path, written); a current pack is kept unless `force`.
    """
    h5py = _h5py()
    task_dir = Path(task_dir)
    paths = list_episode_files(task_dir)
    if not paths:
        raise FileNotFoundError(f"{task_dir}: no episode files (*.hdf5) to pack")
    final = task_dir / PACKED_NAME
    if not force and _PackedIndex.load(task_dir, paths) is not None:
        return final, False
    size, mtime = _source_stat(paths)
    metas = []
    for p in paths:
        with _open(p, require_complete) as f:
            metas.append(_file_meta(p, f))
    _, shapes0, dtypes0 = metas[0]
    for p, (_, shapes, dtypes) in zip(paths, metas):
        if set(shapes) != set(shapes0):
            odd = sorted(set(shapes) ^ set(shapes0))[0]
            raise TrajectoryFileError(p, odd, f"present in some episodes of {task_dir} but not others: "
                                              f"a packed file needs the same datasets in every episode")
        for k in shapes:
            if shapes[k][1:] != shapes0[k][1:] or dtypes[k] != dtypes0[k]:
                raise TrajectoryFileError(p, k, f"expected shape (T,) + {shapes0[k][1:]} {dtypes0[k]} "
                                                f"like {paths[0].name}, got {shapes[k]} {dtypes[k]}")
    lengths = np.asarray([m[0] for m in metas], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    fd, tmp = tempfile.mkstemp(prefix=f".{PACKED_NAME}.", suffix=".tmp", dir=task_dir)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["task"] = _task_id_of(task_dir)
            f.attrs["format"] = _PACKED_FORMAT
            dsets = {}
            for k, shp in shapes0.items():
                kw = {}
                if compress:
                    row = int(np.prod(shp[1:], dtype=np.int64)) * dtypes0[k].itemsize
                    steps = int(max(1, min(N, (64 * 1024) // max(1, row), 256)))
                    kw = dict(compression="gzip", compression_opts=4, chunks=(steps,) + shp[1:])
                dsets[k] = f.create_dataset(k, shape=(N,) + shp[1:], dtype=dtypes0[k], **kw)
            for p, a, b in zip(paths, offsets[:-1], offsets[1:]):
                ep = read_episode(p, require_complete=require_complete)  # validated
                for k, arr in ep.items():
                    dsets[k][a:b] = arr
            f.create_dataset("offsets", data=offsets)
            f.create_dataset("files", data=[p.name for p in paths], dtype=h5py.string_dtype())
            f.create_dataset("source_size", data=size)
            f.create_dataset("source_mtime_ns", data=mtime)
            f.attrs["n_episodes"] = len(paths)
            f.attrs["complete"] = 1
        after = _source_stat(paths)
        if not (np.array_equal(after[0], size) and np.array_equal(after[1], mtime)):
            raise RuntimeError(f"{task_dir}: episode files changed while packing; run the pack again")
        _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(task_dir)
    return final, True


def pack_main(argv: list[str]) -> int:
    """`lramlab data pack DIR`: write one packed.hdf5 per task (concatenated episodes + offsets)."""
    ap = argparse.ArgumentParser(prog="lramlab data pack", description=pack_main.__doc__)
    ap.add_argument("dir", help="dataset root (DIR/<domain>/<name>/...) or one task directory")
    ap.add_argument("--compress", action="store_true",
                    help="gzip chunks (smaller, slower reads); default raw arrays that readers memory-map")
    ap.add_argument("--force", action="store_true", help="re-pack tasks whose pack is current")
    ap.add_argument("--released", action="store_true",
                    help="files come from LRAM's released data (no 'complete' attribute required)")
    ap.add_argument("--progress", action="store_true", help="show a progress bar")
    args = ap.parse_args(argv)
    try:
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
    except (FileNotFoundError, TrajectoryFileError, RuntimeError) as err:
        print(f"lramlab data pack: {err}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------- stats and check
def _episode_summary(path: Path, require_complete: bool) -> dict:
    return _summary(path.name, read_episode(path, require_complete=require_complete))


def _return_stats(returns: list[float]) -> dict:
    if not returns:
        return {"mean": None, "std": None, "min": None, "max": None}
    r = np.asarray(returns, dtype=np.float64)
    return {"mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()), "max": float(r.max())}


def write_stats(task_dir, require_complete: bool = True, summaries: Mapping[str, dict] | None = None) -> dict:
    """Read every episode of `task_dir` (validated) and write `stats.json` atomically; returns it.

    Keys: task, n_episodes, n_transitions, episodes [{file, length, return[, success]}],
    lengths, returns, return_stats {mean, std, min, max}, and success_rate when recorded.
    `summaries` (file name -> entry, e.g. `StoreWriter.summaries`) gives the entries of episodes
    the caller has just written and validated, so those files are not read again.
    """
    task_dir = Path(task_dir)
    summaries = summaries or {}
    eps = [dict(summaries[p.name]) if p.name in summaries else _episode_summary(p, require_complete)
           for p in list_episode_files(task_dir)]
    stats = {
        "task": _task_id_of(task_dir),
        "n_episodes": len(eps),
        "n_transitions": int(sum(e["length"] for e in eps)),
        "episodes": eps,
        "lengths": [e["length"] for e in eps],
        "returns": [e["return"] for e in eps],
        "return_stats": _return_stats([e["return"] for e in eps]),
    }
    if eps and all("success" in e for e in eps):
        stats["success_rate"] = float(np.mean([e["success"] for e in eps]))
    atomic_write_text(task_dir / "stats.json", json.dumps(stats, indent=1))
    return stats


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


def check_main(argv: list[str]) -> int:
    """`lramlab data check DIR [--json]`: summarise a dataset and list every invalid file."""
    ap = argparse.ArgumentParser(prog="lramlab data check", description=check_main.__doc__)
    ap.add_argument("dir", help="dataset root (DIR/<domain>/<name>/...) or one task directory")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--released", action="store_true",
                    help="files come from LRAM's released data (no 'complete' attribute required)")
    ap.add_argument("--progress", action="store_true", help="show a progress bar")
    args = ap.parse_args(argv)
    try:
        rep = check_dataset(args.dir, require_complete=not args.released, progress=args.progress)
    except FileNotFoundError as err:
        print(f"lramlab data check: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1))
    else:
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
