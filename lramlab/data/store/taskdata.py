"""`TaskData`: the episodes of one task directory, read window by window."""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import numpy as np

from lramlab.data.store.episodes import (TrajectoryFileError, _datasets, _file_meta, _open, _read_json, _read_open,
                                         _task_id_of, episode_length, list_episode_files)
from lramlab.data.store.packed import _PackedIndex, _packed_enabled

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


