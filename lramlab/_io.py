"""Atomic, durable file writes shared by every layer (the bottom of the import graph).

A write goes to a hidden temporary file in the target's directory (``.<name>.<random>.tmp``),
is flushed and fsync'd, then renamed over the target with `os.replace`, and the directory is
fsync'd: a reader never sees half a file, a killed process leaves the previous version (and a
``.*.tmp`` file that `remove_stale_tmp` deletes), and a finished write survives a power loss.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

TMP_SUFFIX = ".tmp"


def fsync_file(path, missing_ok: bool = False) -> None:
    """fsync a file by path (missing_ok: a file replaced or removed since is nothing to sync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(d) -> None:
    """fsync a directory (makes renames/creations in it durable); a no-op where unsupported."""
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


def tmp_path_for(path: Path) -> Path:
    """A fresh hidden temporary file beside `path` (created empty, closed)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write(path, write: Callable[[Path], None], fsync: bool = True) -> Path:
    """Call `write(tmp_path)` to fill a temporary file, then move it to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        write(tmp)
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write a small text file atomically and durably."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path) -> Path:
    """`torch.save(obj)` to `path` atomically and durably."""
    import torch  # not needed by `import lramlab`

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def remove_stale_tmp(directory) -> list[Path]:
    """Delete the ``.*.tmp`` files killed writes left in `directory`; returns what was removed.

    Only call it while no writer works in `directory` (a live write's tmp file looks the same)."""
    removed = []
    for tmp in Path(directory).glob(f".*{TMP_SUFFIX}"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed
