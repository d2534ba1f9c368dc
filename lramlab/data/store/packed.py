"""The packed per-task layout: all episodes of a task in one `packed.hdf5` (`pack_task`)."""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lramlab._io import (check_free_space, disk_full_error, fsync_dir as _fsync_dir, fsync_file as _fsync_file,
                         tmp_path_for)
from lramlab.data.store.episodes import (_H5_ERRORS, PACKED_NAME, TrajectoryFileError, _file_meta, _h5py, _open,
                                         _task_id_of, list_episode_files, os_error_of, read_episode)
from lramlab.data.store.handles import POOL, new_owner

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


#: packs found damaged in this process (`ignore_packs`), by (resolved path, size, mtime): readers use
#: the episode files; a pack written again since is read again
_IGNORED: set[tuple] = set()


def _pack_key(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def ignore_packs(paths) -> None:
    """Never read these packed.hdf5 files, as they are now, in this process (and the worker processes
    it forks): the data check found them damaged, so a reader takes the episode files instead."""
    _IGNORED.update(k for k in (_pack_key(Path(p)) for p in paths) if k is not None)


def _source_stat(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    st = [p.stat() for p in paths]
    return (np.asarray([x.st_size for x in st], dtype=np.int64),
            np.asarray([x.st_mtime_ns for x in st], dtype=np.int64))


@dataclass
class _PackedIndex:
    """What a reader needs from a packed.hdf5: names, offsets, shapes, and where raw datasets lie."""

    path: Path
    names: list  # episode file names, in pack order
    offsets: np.ndarray  # (E+1,) row of each episode's first step; offsets[-1] = N
    shapes: dict  # key -> full (N, ...) shape
    raw: dict  # key -> (byte offset, dtype) for contiguous uncompressed datasets, else absent
    owner: int = 0  # pool key token of this index (handles.new_owner)

    @classmethod
    def load(cls, task_dir: Path, episode_paths, warn: bool = False) -> "_PackedIndex | None":
        """The index if task_dir/packed.hdf5 exists and is current for `episode_paths`, else None
        (with a warning naming why when `warn`). A pack `ignore_packs` named (the data check found
        it damaged) is never read."""
        if _pack_key(Path(task_dir) / PACKED_NAME) in _IGNORED:
            return None
        index, status, reason = cls.status(task_dir, episode_paths)
        if index is None and status != "absent" and warn:
            if status == "stale":
                warnings.warn(f"{Path(task_dir) / PACKED_NAME} is stale ({reason}); reading the episode files "
                              f"instead. Run `lramlab data pack {task_dir}` again.", stacklevel=3)
            else:
                warnings.warn(f"{Path(task_dir) / PACKED_NAME}: unreadable, reading the episode files instead "
                              f"({reason})", stacklevel=3)
        return index

    @classmethod
    def status(cls, task_dir: Path, episode_paths) -> tuple["_PackedIndex | None", str, str]:
        """(index or None, "absent" | "current" | "stale" | "unreadable", reason)."""
        path = Path(task_dir) / PACKED_NAME
        if not path.exists():
            return None, "absent", ""
        try:
            with _open(path) as f:
                if f.attrs.get("format") != _PACKED_FORMAT:
                    raise TrajectoryFileError(path, None, f"attr 'format': expected {_PACKED_FORMAT!r}, "
                                                          f"got {f.attrs.get('format')!r}")
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["files"][()]]
                size, mtime = f["source_size"][()], f["source_mtime_ns"][()]
                offsets = np.asarray(f["offsets"][()], dtype=np.int64)
                N, shapes, _ = _file_meta(path, f)
                raw = {}
                for key in shapes:
                    ds = f[key]
                    off = ds.id.get_offset()
                    if ds.chunks is None and off is not None and ds.dtype.isnative:
                        raw[key] = (int(off), ds.dtype)
            # a truncated pack can still open (HDF5 checks its superblock's end of file only when the
            # metadata lies at the end); raw data past the end of the file would read short
            file_size = path.stat().st_size
            for key, (off, dt) in raw.items():
                end = off + int(np.prod(shapes[key], dtype=np.int64)) * dt.itemsize
                if end > file_size:
                    raise TrajectoryFileError(path, key, f"truncated: the data ends at byte {end}, "
                                                         f"the file has {file_size} bytes")
        except (TrajectoryFileError, *_H5_ERRORS) as err:
            os_err = os_error_of(err, path)
            if os_err is not None:
                raise os_err from err
            return None, "unreadable", str(err)
        cur = [Path(p).name for p in episode_paths]
        stale = None
        if names != cur:
            stale = f"it packs {len(names)} episode files, the directory has {len(cur)} (or other names)"
        else:
            cs, cm = _source_stat([Path(p) for p in episode_paths])
            if not (np.array_equal(cs, size) and np.array_equal(cm, mtime)):
                bad = int(np.flatnonzero((cs != size) | (cm != mtime))[0])
                stale = f"{cur[bad]} changed since it was packed"
        if stale is None and not (len(offsets) == len(cur) + 1 and offsets[0] == 0 and offsets[-1] == N
                                  and (np.diff(offsets) > 0).all()):
            return None, "unreadable", "its offsets do not match its datasets"
        if stale:
            return None, "stale", stale
        return cls(path=path, names=names, offsets=offsets, shapes=shapes, raw=raw, owner=new_owner()), "current", ""

    def columns(self) -> dict:
        """{key: column} whose `[a:b]` reads rows a..b-1: raw datasets by `os.preadv` on a descriptor,
        chunked / compressed ones through h5py (hyperslab reads); both opened through `POOL`."""
        return {key: _RawColumn(self.path, self.owner, key, *self.raw[key], self.shapes[key][1:]) if key in self.raw
                else _H5Column(self.path, self.owner, key) for key in self.shapes}

    def drop_handles(self) -> None:
        POOL.drop(("raw", self.owner, str(self.path)))
        POOL.drop(("pk", self.owner, str(self.path)))


def _close_fd(fd: int) -> None:
    os.close(fd)


class _RawColumn:
    """Rows of one contiguous raw dataset of a packed file, read with pread: no memory map, so no
    descriptor or mapping per dataset (an np.memmap keeps a descriptor open for its lifetime)."""

    def __init__(self, path: Path, owner: int, key: str, offset: int, dtype: np.dtype, row: tuple):
        self.path, self.owner, self.key, self.offset, self.dtype, self.row = str(path), owner, key, offset, dtype, tuple(row)
        self.row_bytes = int(np.prod(row, dtype=np.int64)) * dtype.itemsize

    def _fd(self) -> int:
        return POOL.get(("raw", self.owner, self.path), lambda: os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)),
                        _close_fd)

    def __getitem__(self, sl: slice) -> np.ndarray:
        a, b = sl.start, sl.stop
        out = np.empty((b - a,) + self.row, dtype=self.dtype)
        n = out.nbytes
        if n:
            got = os.preadv(self._fd(), [memoryview(out).cast("B")], self.offset + a * self.row_bytes)
            if got != n:
                raise TrajectoryFileError(self.path, self.key, f"short read ({got} of {n} bytes): truncated file?")
        return out


class _H5Column:
    def __init__(self, path: Path, owner: int, key: str):
        self.path, self.owner, self.key = str(path), owner, key

    def __getitem__(self, sl: slice) -> np.ndarray:
        f = POOL.get(("pk", self.owner, self.path), lambda: _open(self.path), lambda f: f.close())
        return f[self.key][sl]


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
            T, shapes, dtypes = _file_meta(p, f)
        if "returns_to_go" not in shapes:  # a released file without them: the pack stores them computed
            shapes["returns_to_go"], dtypes["returns_to_go"] = (T,), np.dtype(np.float32)
        metas.append((T, shapes, dtypes))
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
    need = sum(N * int(np.prod(shp[1:], dtype=np.int64)) * dtypes0[k].itemsize for k, shp in shapes0.items())
    if not compress:  # HDF5 can crash the process on a full disk: refuse a pack that cannot fit
        check_free_space(final, need + 64 * len(paths) + (64 << 10))
    tmp = tmp_path_for(final)
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
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        os_err = os_error_of(err, final)  # e.g. ENOSPC inside h5py (no file name on it): name the pack
        if os_err is not None and getattr(err, "filename", None) is None:
            raise os_err from err
        full = disk_full_error(final, err) if isinstance(err, Exception) else None
        if full is not None:
            raise full from None
        raise
    _fsync_dir(task_dir)
    return final, True


