"""`TaskData`: the episodes of one task directory, read window by window, with handles from the
process-wide pool (`lramlab.data.store.handles.POOL`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from lramlab.data.store.episodes import (TrajectoryFileError, _datasets, _file_meta, _open, _read_json, _read_open,
                                         _task_id_of, episode_length, list_episode_files)
from lramlab.data.store.handles import POOL, new_owner
from lramlab.data.store.packed import _PackedIndex, _packed_enabled


class _EpisodePaths(Sequence):
    """The episode paths of a task, made on access from the directory and the file names (a list
    of 100k Path objects costs ~10x the memory of their names)."""

    def __init__(self, task_dir: Path, names: list[str]):
        self._dir, self._names = task_dir, names

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._dir / n for n in self._names[i]]
        return self._dir / self._names[i]

    def __iter__(self) -> Iterator[Path]:
        return (self._dir / n for n in self._names)

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def __repr__(self) -> str:
        return f"<{len(self)} episode files in {self._dir}>"


def _close_h5(handle) -> None:
    handle[0].close()


class TaskData:
    """The episodes of one task directory, read window by window.

    `.task` id, `.episode_paths`, `.names`, `.lengths` (np.ndarray of T per episode),
    `.read(i, start, stop)`. `files` restricts the task to these episode file names (e.g. the
    ones a data check found valid, `check_dataset(...).valid_files()`) and `lengths` gives their
    lengths; otherwise lengths come from `stats.json` when it lists exactly the files present,
    else from file metadata. Open files come from the process-wide pool (`handles.POOL`, at most
    `max_open_files()` for all tasks together); `max_open` is accepted for compatibility and unused.

    When the directory holds a `packed.hdf5` (`pack_task`) that is current -- made from exactly
    the episode files present, unchanged since (name, size, mtime) -- reads come from it instead
    (`.packed` is its path, else None); a stale or unreadable one is ignored with a warning.
    `packed=False` (or `use_packed(False)`, or LRAMLAB_NO_PACKED=1) always reads the episode files.
    """

    def __init__(self, task_dir, require_complete: bool = True, max_open: int | None = None,
                 packed: bool | None = None, files: Sequence[str] | None = None,
                 lengths: Sequence[int] | None = None):
        self.task_dir = Path(task_dir)
        present = list_episode_files(self.task_dir)
        names = [p.name for p in present]
        if files is not None:
            missing = sorted(set(files) - set(names))
            if missing:
                raise FileNotFoundError(f"{self.task_dir}: episode files {missing[:5]} not found")
            names = list(files)
        if not names:
            raise FileNotFoundError(f"{self.task_dir}: no episode files (*.hdf5) found")
        self.names = names
        self.episode_paths = _EpisodePaths(self.task_dir, names)
        self._dir_s = str(self.task_dir)
        self.task = _task_id_of(self.task_dir)
        self.meta = _read_json(self.task_dir / "meta.json") or {}
        self.require_complete = require_complete
        self._owner = new_owner()  # this reader's handles in the pool (see handles.new_owner)
        self._pk = None  # index of a current packed.hdf5 (see _PackedIndex)
        self._pk_rows = None  # row of each selected episode in the pack
        self._cols = None  # {key: column} of the packed file (no handles of its own)
        if _packed_enabled() if packed is None else packed:
            self._pk = _PackedIndex.load(self.task_dir, present, warn=True)
        if self._pk is not None:
            pos = {n: j for j, n in enumerate(self._pk.names)}
            self._pk_rows = np.asarray([pos[n] for n in names], dtype=np.int64)
            self._pk.names = []  # not needed any more: one copy of the names per task is enough
        self.packed = self._pk.path if self._pk is not None else None
        if lengths is not None:
            self.lengths = np.asarray(lengths, dtype=np.int64)
            if len(self.lengths) != len(names):
                raise ValueError(f"{self.task_dir}: {len(self.lengths)} lengths for {len(names)} files")
        elif self._pk is not None:
            self.lengths = np.diff(self._pk.offsets)[self._pk_rows]
        else:
            self.lengths = self._lengths([p.name for p in present])
        first = self.meta_of(0)
        self.obs_kind = "image" if len(first["states"]) == 4 else "state"
        self.obs_shape = first["states"][1:]
        self.action_kind = "discrete" if len(first["actions"]) == 1 else "continuous"
        self.act_dim = 0 if self.action_kind == "discrete" else first["actions"][1]

    def __len__(self) -> int:
        return len(self.names)

    def _lengths(self, present: list[str]) -> np.ndarray:
        stats = _read_json(self.task_dir / "stats.json")
        if isinstance(stats, dict) and isinstance(stats.get("episodes"), list):
            eps = stats["episodes"]
            if [e.get("file") for e in eps] == present:  # current for the directory
                by_name = {e["file"]: int(e["length"]) for e in eps}
                return np.asarray([by_name[n] for n in self.names], dtype=np.int64)
        return np.asarray([episode_length(p, self.require_complete) for p in self.episode_paths], dtype=np.int64)

    def meta_of(self, i: int) -> dict[str, tuple]:
        if self._pk is not None:
            return {k: (int(self.lengths[i]),) + shp[1:] for k, shp in self._pk.shapes.items()}
        with POOL.lock:
            return self._file(i)[2]

    def _file(self, i: int):
        """(h5py file, {name: dataset}, shapes, T) of episode i, from the pool (opened and
        shape-checked when not already open). Call with POOL.lock held."""
        path = os.path.join(self._dir_s, self.names[i])

        def open_():
            f = _open(path, self.require_complete)
            try:
                dsets = _datasets(f, path)  # low-level columns: no h5py Dataset objects stay open
                T, shapes, _ = _file_meta(path, f, dsets)
                return f, dsets, shapes, T
            except BaseException:
                f.close()
                raise

        h = POOL.get(("ep", self._owner, path), open_, _close_h5)
        if h[3] != self.lengths[i]:
            raise TrajectoryFileError(path, None, f"expected {self.lengths[i]} timesteps (stats.json or the "
                                                  f"data check), got {h[3]}")
        return h

    def read(self, i: int, start: int | None = None, stop: int | None = None,
             keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Validated read of episode i, timesteps [start, stop)."""
        with POOL.lock:  # no other thread evicts a handle while it is read
            if self._pk is not None:
                if self._cols is None:
                    self._cols = self._pk.columns()
                where = f"{self._pk.path} (its copy of {self.names[i]}; the episode file itself was not read)"
                return _read_open(where, self._cols, start, stop, keys, int(self.lengths[i]),
                                  base=int(self._pk.offsets[self._pk_rows[i]]))
            h = self._file(i)
            return _read_open(os.path.join(self._dir_s, self.names[i]), h[1], start, stop, keys, int(self.lengths[i]))

    def close(self) -> None:
        """Close this task's handles in the pool (others' stay open)."""
        with POOL.lock:
            for n in self.names:
                POOL.drop(("ep", self._owner, os.path.join(self._dir_s, n)))
            if self._pk is not None:
                self._pk.drop_handles()
