"""One process-wide budget of open files for every reader of the store (`POOL`).

Each open episode file (an h5py File) or packed file (a raw descriptor, or an h5py File for a
gzip pack) is one entry of a least-recently-used pool shared by all `TaskData` objects of the
process, so a run over 400 tasks x 250 files holds at most `max_open_files()` descriptors for
data, however many tasks or episodes there are (the old design kept up to 512 handles per task:
8k descriptors and 6 GB of HDF5 metadata caches on a 24k-file dataset, then EMFILE).

The budget is `LRAMLAB_MAX_OPEN_FILES` (default 128), never more than a quarter of the soft
RLIMIT_NOFILE (so `ulimit -n 256` leaves room for the interpreter, torch and the logs), at least 4.
`set_max_open_files(n)` changes it. Before a fork every handle is closed (an os.register_at_fork
hook): DataLoader workers start with no inherited descriptors and open their own within the
budget, so each process stays within it.

Readers hold `POOL.lock` while they use a handle, so another thread cannot evict it mid-read.
"""
from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

DEFAULT_MAX_OPEN = 128
_MIN_OPEN = 4


def _soft_nofile() -> int | None:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return None if soft == resource.RLIM_INFINITY else int(soft)
    except (ImportError, OSError, ValueError):  # not POSIX
        return None


def default_max_open() -> int:
    """The budget from the environment and the open-file limit (see the module docstring)."""
    raw = os.environ.get("LRAMLAB_MAX_OPEN_FILES", "")
    try:
        n = int(raw) if raw else DEFAULT_MAX_OPEN
    except ValueError:
        raise ValueError(f"LRAMLAB_MAX_OPEN_FILES={raw!r}: expected an integer >= {_MIN_OPEN}") from None
    soft = _soft_nofile()
    if soft is not None:
        n = min(n, soft // 4)
    return max(_MIN_OPEN, n)


class HandlePool:
    """LRU of open handles, keyed by (kind, owner token, path); at most `limit` open at once.

    `get(key, open_fn, close_fn)` returns the open handle, opening it (and closing the least
    recently used one when full) if needed. A failed open leaves the pool unchanged.
    """

    def __init__(self, limit: int | None = None):
        self.lock = threading.RLock()
        self._limit = limit
        self._items: OrderedDict[Hashable, tuple[Any, Callable[[Any], None]]] = OrderedDict()
        self.opens = 0  # counters for benchmarks: handles opened, evictions
        self.evictions = 0

    @property
    def limit(self) -> int:
        if self._limit is None:
            self._limit = default_max_open()
        return self._limit

    def set_limit(self, n: int | None) -> None:
        if n is not None and int(n) < 1:
            raise ValueError(f"max open files must be >= 1, got {n}")
        with self.lock:
            self._limit = None if n is None else int(n)
            self._shrink(self.limit)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, open_fn: Callable[[], Any], close_fn: Callable[[Any], None]) -> Any:
        with self.lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item[0]
            self._shrink(self.limit - 1)  # make room first: the open itself needs a descriptor
            value = open_fn()
            self.opens += 1
            self._items[key] = (value, close_fn)
            return value

    def drop(self, key: Hashable) -> None:
        with self.lock:
            item = self._items.pop(key, None)
            if item is not None:
                item[1](item[0])

    def _shrink(self, n: int) -> None:
        while len(self._items) > max(0, n):
            _, (value, close) = self._items.popitem(last=False)
            self.evictions += 1
            try:
                close(value)
            except Exception:  # noqa: BLE001 - a handle that fails to close is gone all the same
                pass

    def close_all(self) -> None:
        with self.lock:
            self._shrink(0)


POOL = HandlePool()
_OWNERS = itertools.count(1)


def new_owner() -> int:
    """A token for the keys of one reader (a TaskData, a packed index): handles are not shared
    between readers, so one made after a file was replaced (a re-pack, a rewritten episode) never
    gets a descriptor of the old file from another reader."""
    return next(_OWNERS)


def max_open_files() -> int:
    """The current budget of open data files per process."""
    return POOL.limit


def set_max_open_files(n: int | None) -> None:
    """Set the budget (None: back to `default_max_open()`); closes handles beyond it."""
    POOL.set_limit(n)


def _before_fork() -> None:
    POOL.lock.acquire()
    POOL._shrink(0)  # no descriptor is inherited: each process keeps its own budget


def _after_fork_parent() -> None:
    POOL.lock.release()


def _after_fork_child() -> None:
    POOL.lock = threading.RLock()  # the parent's lock is held by the forking thread


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                        after_in_child=_after_fork_child)
