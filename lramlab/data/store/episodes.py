"""Episode files: the layout, validation, atomic writes and validated reads of one episode.

Episode datasets (T timesteps, O state dims, A continuous action dims) are listed in the package
docstring (`lramlab.data.store`). Every read is validated; a bad file raises `TrajectoryFileError`
naming the file, the dataset and what was expected. Reading a window reads only that slice.
"""
from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from lramlab._io import check_free_space, disk_full_error, fsync_dir, fsync_file, tmp_path_for
from lramlab.manifests import model_rewards

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
def _check_shapes(path, shapes: Mapping[str, tuple], dtypes: Mapping[str, np.dtype], rtg_optional: bool = False) -> int:
    """Validate shapes/dtypes from metadata only (no data read). Returns T.

    `rtg_optional`: a foreign file (LRAM's released data) may lack `returns_to_go`; readers compute it."""
    for key in REQUIRED_KEYS:
        if key not in shapes and not (key == "returns_to_go" and rtg_optional):
            raise TrajectoryFileError(path, key, f"missing (an episode needs {', '.join(REQUIRED_KEYS)})")
    for key in ("rewards", "returns_to_go", "dones", "success"):
        if key in shapes and len(shapes[key]) != 1:
            raise TrajectoryFileError(path, key, f"expected shape (T,), got {shapes[key]}")
    # T is the length most datasets agree on, so the odd one out is the one named
    lens = [shapes[k][0] if len(shapes[k]) else -1 for k in REQUIRED_KEYS if k in shapes]
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
        if not np.issubdtype(a_dtype, np.floating) and np.issubdtype(a_dtype, np.integer):
            raise TrajectoryFileError(path, "actions", f"got integer actions of shape {a_shape}: expected discrete "
                                                       f"actions as (T,) integer ids (drop the last axis of size "
                                                       f"{a_shape[1]}), or continuous actions as (T, A) floats")
        if not np.issubdtype(a_dtype, np.floating):
            raise TrajectoryFileError(path, "actions", f"expected a float dtype for continuous (T, A) actions, got {a_dtype}")
        if not 1 <= a_shape[1] <= MAX_ACT_DIM:
            raise TrajectoryFileError(path, "actions", f"expected 1..{MAX_ACT_DIM} continuous dims, got {a_shape[1]}")
    else:
        raise TrajectoryFileError(path, "actions", f"expected shape (T,) or (T, A), got {a_shape}")
    for key in ("rewards", "returns_to_go"):
        if key in dtypes and not np.issubdtype(dtypes[key], np.floating):
            raise TrajectoryFileError(path, key, f"expected a float dtype, got {dtypes[key]}")
    for key in ("dones", "success"):
        if key in dtypes and dtypes[key] != np.bool_:
            raise TrajectoryFileError(path, key, f"expected dtype bool, got {dtypes[key]}")
    return int(T)


#: states, rewards and returns-to-go beyond this magnitude are refused (float32 training overflows)
VALUE_LIMIT = 1e9


def _check_values(path, data: Mapping[str, np.ndarray], start: int, T: int) -> None:
    """Validate values of a (possibly partial) read that starts at timestep `start`."""
    for key in ("rewards", "returns_to_go", "states"):
        x = data.get(key)
        if x is not None and x.dtype != np.uint8 and not np.isfinite(x).all():
            rows = ~np.isfinite(x.reshape(len(x), -1))
            t = int(np.flatnonzero(rows.any(axis=1))[0])
            value = x.reshape(len(x), -1)[t][rows[t]][0]
            raise TrajectoryFileError(path, key, f"expected finite values, got {value} at timestep {t + start}")
        if x is not None and x.dtype != np.uint8 and x.size:
            big = np.abs(x.reshape(len(x), -1)) >= VALUE_LIMIT
            if big.any():  # finite, but a float32 network overflows on it (3e38 gave a NaN loss)
                t = int(np.flatnonzero(big.any(axis=1))[0])
                value = x.reshape(len(x), -1)[t][big[t]][0]
                raise TrajectoryFileError(path, key, f"expected values of magnitude < {VALUE_LIMIT:.0e} (larger ones "
                                                     f"overflow float32 in training), got {value:.4g} at timestep "
                                                     f"{t + start}")
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
    check_free_space(final, sum(int(a.nbytes) for a in ep.values()) + (16 << 10))
    tmp = tmp_path_for(final)
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
            fsync_file(tmp)
        os.replace(tmp, final)
    except Exception as err:
        full = disk_full_error(final, err)
        Path(tmp).unlink(missing_ok=True)
        if full is not None:
            raise full from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(task_dir)


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


def _summary(name: str, ep: Mapping[str, np.ndarray], rule: str = "raw") -> dict:
    """The stats.json entry of one episode (see `write_stats`); `rule`: the task's reward rule
    (`lramlab.manifests.reward_rule`), which adds the episode's return in the model's units."""
    out = {"file": name, "length": int(len(ep["rewards"])),
           "return": float(np.sum(ep["rewards"], dtype=np.float64))}
    if rule != "raw":
        out["model_return"] = float(np.sum(model_rewards(rule, ep["rewards"])))
    if "success" in ep:
        out["success"] = bool(np.asarray(ep["success"]).any())
    return out

# ----------------------------------------------------------------------------- read
# Attributes only lramlab writes: a file with none of them is foreign (LRAM's released data).
LRAMLAB_ATTRS = ("task", "index", "complete", "format")
# Damaged HDF5 metadata (e.g. a zeroed block) surfaces from h5py as any of these; readers turn them
# into a TrajectoryFileError naming the file and dataset.
_H5_ERRORS = (KeyError, OSError, RuntimeError, ValueError)


def os_error_of(err: BaseException, path) -> OSError | None:
    """The operating-system error inside an h5py error (h5py sets `errno` when the OS refused:
    EMFILE, EACCES, ENOENT, EIO, ENOSPC...), as a plain OSError naming `path`; None when the
    failure is the file's content (truncated, not HDF5, damaged metadata: no errno)."""
    code = getattr(err, "errno", None)
    if isinstance(err, OSError) and isinstance(code, int) and code > 0:
        out = OSError(code, os.strerror(code), str(path))
        out.__cause__ = err
        return out
    return None


def _open(path, require_complete: bool = True):
    """Open an episode (or packed) file for reading.

    Accepted: lramlab files with `complete=1`, and foreign files with none of lramlab's attributes
    (`LRAMLAB_ATTRS`: LRAM's released layout never had them). A file with lramlab's first
    attributes but no `complete` is an unfinished lramlab write and is rejected (unless
    `require_complete=False`). An OS error (too many open files, permission, I/O) is raised as the
    OSError it is, never as a damaged file."""
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as err:  # truncated, not HDF5, unreadable
        os_err = os_error_of(err, path)
        if os_err is not None:
            raise os_err from err
        raise TrajectoryFileError(path, None, f"cannot be opened as HDF5 (truncated or corrupt?): {err}") from err
    try:
        complete = f.attrs.get("complete")
        ok = (complete is not None and int(complete) == 1) or not require_complete
        if complete is None and not ok:
            ok = not any(k in f.attrs for k in LRAMLAB_ATTRS)  # foreign: released data
    except (KeyError, OSError, RuntimeError, TypeError, ValueError) as err:  # damaged attribute storage
        f.close()
        raise TrajectoryFileError(path, None, f"attr 'complete' cannot be read (corrupt file?): {err}") from err
    if not ok:
        f.close()
        what = "is missing" if complete is None else f"is {complete!r}, not 1"
        raise TrajectoryFileError(path, None, f"attr 'complete' {what}: the write never finished "
                                              f"(the file has lramlab's other attributes)")
    return f


def is_foreign(f) -> bool:
    """An open file without any of lramlab's attributes (LRAM's released per-episode files)."""
    return not any(k in f.attrs for k in LRAMLAB_ATTRS)


class _Column:
    """One dataset of an open file, read by h5py's low-level API: `[a:b]` opens the dataset, reads
    that hyperslab and closes it again. Keeping h5py Dataset objects open makes every later
    `File.close` enumerate them (~2 ms a close with 128 files held, the cost of a whole read), and
    the high-level `ds[a:b]` spends more on building the selection than on a 50-step read."""

    __slots__ = ("f", "name", "shape", "dtype")

    def __init__(self, f, name: str):
        h5py = _h5py()
        d = h5py.h5d.open(f.id, name.encode())
        self.f, self.name, self.shape, self.dtype = f, name.encode(), tuple(d.shape), d.dtype

    def __getitem__(self, sl: slice) -> np.ndarray:
        h5py = _h5py()
        a = 0 if sl.start is None else int(sl.start)
        b = self.shape[0] if sl.stop is None else min(int(sl.stop), self.shape[0])
        out = np.empty((max(0, b - a),) + self.shape[1:], dtype=self.dtype)
        if out.size:
            d = h5py.h5d.open(self.f.id, self.name)
            space = d.get_space()
            space.select_hyperslab((a,) + (0,) * (len(self.shape) - 1), out.shape)
            d.read(h5py.h5s.create_simple(out.shape), space, out)
        return out


def _datasets(f, path=None) -> dict:
    """{key: _Column} of the store's datasets present in an open file."""
    out = {}
    gid = f.id
    for k in ALL_KEYS:
        try:
            if k.encode() in gid:
                out[k] = _Column(f, k)
        except _H5_ERRORS as err:
            raise TrajectoryFileError(path or f.filename, k, f"cannot be opened (corrupt file?): {err}") from err
    return out


def _file_meta(path, f, dsets: Mapping | None = None) -> tuple[int, dict, dict]:
    """(T, shapes, dtypes) of an open file, validated (metadata only)."""
    dsets = _datasets(f, path) if dsets is None else dsets
    shapes = {k: d.shape for k, d in dsets.items()}
    dtypes = {k: d.dtype for k, d in dsets.items()}
    rtg_optional = "returns_to_go" not in shapes and is_foreign(f)
    return _check_shapes(path, shapes, dtypes, rtg_optional), shapes, dtypes


def _slice(path, dsets: Mapping, key: str, a: int, b: int) -> np.ndarray:
    try:
        return dsets[key][a:b]
    except _H5_ERRORS as err:  # a damaged chunk surfaces only when read
        os_err = os_error_of(err, path)
        if os_err is not None:
            raise os_err from err
        raise TrajectoryFileError(path, key, f"read failed (corrupt data?): {err}") from err


def _read_open(path, dsets: Mapping, start, stop, keys, T: int, base: int = 0,
               copy: bool = False) -> dict[str, np.ndarray]:
    """Read [start, stop) of the given datasets (T already validated from metadata).

    `dsets` holds h5py datasets or arrays (views of a packed file's memory maps, where the
    episode starts at row `base`; `copy` makes the result own its memory)."""
    s = 0 if start is None else int(start)
    e = T if stop is None else int(stop)
    if not (0 <= s < e <= T):
        raise TrajectoryFileError(path, None, f"expected a window 0 <= start < stop <= {T}, got [{s}, {e})")
    keys = tuple(dsets) + (("returns_to_go",) if "returns_to_go" not in dsets else ()) if keys is None else tuple(keys)
    out = {}
    for key in keys:
        if key == "returns_to_go" and key not in dsets and "rewards" in dsets:
            # a released file without returns-to-go: sum(rewards[t:]) needs the rest of the episode
            out[key] = returns_to_go(_slice(path, dsets, "rewards", base + s, base + T))[: e - s]
            continue
        if key not in dsets:
            raise TrajectoryFileError(path, key, "missing")
        x = _slice(path, dsets, key, base + s, base + e)  # hyperslab read: only this slice leaves the disk
        out[key] = x.copy() if copy and isinstance(x, np.ndarray) and not x.flags.owndata else x
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
        dsets = _datasets(f, path)
        T = _file_meta(path, f, dsets)[0]
        return _read_open(path, dsets, start, stop, keys, T)


def is_complete(path) -> bool:
    """The file exists, opens as HDF5 and is whole: `complete=1`, or a foreign file (released data)
    -- what resume logic keeps; data not read. Other OS errors (EMFILE, EACCES) are raised."""
    try:
        _open(path).close()
    except (TrajectoryFileError, FileNotFoundError):
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
    # a dangling symbolic link is listed (the check reports it by name), not skipped in silence
    files = {p for pat in EPISODE_GLOB for p in task_dir.glob(pat)
             if (p.is_file() or (p.is_symlink() and not p.exists()))
             and not p.name.startswith(".") and p.name != PACKED_NAME}
    return sorted(files, key=_natural_key)


def find_tasks(root) -> list[Path]:
    """Task directories under `root` (any directory holding episode files); `root` itself if it is one."""
    root = Path(root)
    if not root.is_dir():
        if root.exists():
            raise NotADirectoryError(errno.ENOTDIR, "expected a dataset directory (DIR/<domain>/<name>/episode_*.hdf5) "
                                     "or one task directory, got a file", str(root))
        if root.is_symlink():
            raise FileNotFoundError(errno.ENOENT, f"dataset directory is a dangling symbolic link (-> "
                                    f"{os.readlink(root)})", str(root))
        raise FileNotFoundError(f"dataset directory {root} does not exist")
    if list_episode_files(root):
        return [root]
    found = []
    seen = {os.path.realpath(root)}
    # symbolic links to task (or domain) directories are followed -- each real directory once, so a
    # link cycle ends -- and a dangling one is an error naming it, never a task skipped in silence
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        for d in list(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen:
                dirnames.remove(d)
            seen.add(real)
        for f in filenames:
            link = os.path.join(dirpath, f)
            if not f.startswith(".") and "." not in f and os.path.islink(link) and not os.path.exists(link):
                # a dangling link named like a task or domain directory (episode files: the check lists them)
                    raise FileNotFoundError(errno.ENOENT, f"a dangling symbolic link in the dataset (-> "
                                            f"{os.readlink(link)}); remove it or restore its target", link)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if list_episode_files(dirpath):
            found.append(Path(dirpath))
    return sorted(found)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def task_id_of(task_dir) -> str:
    """The task id of a task directory (meta.json, stats.json, else '<parent>/<dir>')."""
    return _task_id_of(Path(task_dir))


def _task_id_of(task_dir: Path) -> str:
    """Task id from meta.json / stats.json, else '<parent>/<dir>' (the DIR/<domain>/<name> layout)."""
    task_dir = Path(task_dir)
    for name in ("meta.json", "stats.json"):
        j = _read_json(task_dir / name)
        if isinstance(j, dict) and isinstance(j.get("task"), str):
            return j["task"]
    resolved = task_dir.resolve()
    return f"{resolved.parent.name}/{resolved.name}"


