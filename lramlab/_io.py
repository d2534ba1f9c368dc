"""Atomic, durable file writes shared by every layer (the bottom of the import graph).

A write goes to a hidden temporary file in the target's directory (``.<name>.<pid>-<random>.tmp``),
is flushed and fsync'd, then renamed over the target with `os.replace`, and the directory is
fsync'd: a reader never sees half a file, a killed process leaves the previous version (and a
``.*.tmp`` file that `remove_stale_tmp` deletes once its writer's pid is gone, so cleaning up is
safe while others write), and a finished write survives a power loss.
"""
from __future__ import annotations

import errno
import os
import re
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
    """A fresh hidden temporary file beside `path` (created empty, closed), named
    ``.<name>.<pid>-<random>.tmp`` so `remove_stale_tmp` can tell a killed write from a live one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    return Path(tmp)


_TMP_PID = re.compile(r"\.(\d+)-[a-z0-9_]+" + re.escape(TMP_SUFFIX) + "$")


def _pid_alive(pid: int) -> bool:
    """Is a process with this pid running (a zombie -- killed, not yet reaped -- is not)?"""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


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


def remove_stale_tmp(directory, live_ok: bool = True) -> list[Path]:
    """Delete the ``.*.tmp`` files killed writes left in `directory`; returns what was removed.

    A tmp file carries its writer's pid (`tmp_path_for`): it is stale when that process is gone,
    so this is safe while other processes write in `directory` (on this machine; a directory shared
    with other machines should be cleaned only while none writes). Tmp files without a pid (older
    versions) are stale. `live_ok=False` removes every tmp file. Files this process may not delete
    (a read-only dataset) are left, silently."""
    removed = []
    try:
        candidates = list(Path(directory).glob(f".*{TMP_SUFFIX}"))
    except OSError:
        return removed
    for tmp in candidates:
        m = _TMP_PID.search(tmp.name)
        if live_ok and m and _pid_alive(int(m.group(1))):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
        except PermissionError:
            pass
        except OSError as err:
            if err.errno != errno.EROFS:
                raise
    return removed
