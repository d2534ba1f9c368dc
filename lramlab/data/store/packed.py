"""The packed per-task layout: all episodes of a task in one `packed.hdf5` (`pack_task`)."""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lramlab._io import fsync_dir as _fsync_dir, fsync_file as _fsync_file, tmp_path_for
from lramlab.data.store.episodes import (_H5_ERRORS, PACKED_NAME, TrajectoryFileError, _file_meta, _h5py, _open,
                                         _task_id_of, list_episode_files, read_episode)

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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(task_dir)
    return final, True


