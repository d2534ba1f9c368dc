"""Batched durability for many episode writes: `StoreWriter` and `recover_unsynced` (see the
package docstring, "Atomicity vs durability")."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from lramlab._io import atomic_write_text, fsync_dir as _fsync_dir, fsync_file as _fsync_file, remove_stale_tmp
from lramlab.manifests import reward_rule
from lramlab.data.store.episodes import (UNSYNCED_NAME, _episode_index, _prepare, _read_json, _summary, _task_id_of,
                                         _write_file, list_episode_files)

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
    of killed writes (`remove_stale_tmp`). Safe to call when nothing is pending; only while no writer
    works in `task_dir`.
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
    remove_stale_tmp(task_dir)  # writes (episodes, json) that were killed midway
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
        self.rule = reward_rule(self.task)
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
        self.summaries[final.name] = _summary(final.name, ep, self.rule)
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


