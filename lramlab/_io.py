"""Atomic, durable file writes shared by every layer (the bottom of the import graph).

A write goes to a hidden temporary file in the target's directory (``.<name>.<pid>-<random>.tmp``),
is flushed and fsync'd, then renamed over the target with `os.replace`, and the directory is
fsync'd: a reader never sees half a file, a killed process leaves the previous version (and a
``.*.tmp`` file that `remove_stale_tmp` deletes once its writer's pid is gone, so cleaning up is
safe while others write), and a finished write survives a power loss.
A whole directory built aside is put in place with `swap_in_dir` (one atomic rename exchange).
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

TMP_SUFFIX = ".tmp"


def file_sha256(path) -> str:
    """The sha256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def pid_alive(pid) -> bool:
    """Whether process `pid` (an int or its decimal string) is running on this machine."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return pid > 0


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import errno

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def swap_in_dir(new, target) -> Path | None:
    """Put the finished directory `new` at `target` (same filesystem), replacing what is there.

    Returns where the previous `target` now lives (for the caller to delete once it likes), or None
    when there was none. On Linux the swap is one atomic `renameat2(RENAME_EXCHANGE)`: a reader
    sees the old directory or the new one, and a crash at any moment leaves one of them at
    `target`. Elsewhere it is two renames; a crash between them leaves `target` missing and the old
    directory at `.<name>.replaced-<pid>` beside it (`restore_replaced` puts it back).
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        fsync_dir(target.parent)
        return None
    if _exchange(new, target):
        fsync_dir(target.parent)
        return new  # `new` now holds the previous contents
    aside = target.with_name(f".{target.name}.replaced-{os.getpid()}")
    os.rename(target, aside)
    os.rename(new, target)
    fsync_dir(target.parent)
    return aside


def restore_replaced(target) -> None:
    """After a crash inside a two-rename `swap_in_dir`: put a `.<name>.replaced-*` directory back
    at `target` if `target` is missing (delete such leftovers otherwise)."""
    import shutil

    target = Path(target)
    for aside in sorted(target.parent.glob(f".{target.name}.replaced-*")):
        if pid_alive(aside.name.rsplit("-", 1)[-1]):
            continue  # a swap in progress in a live process
        if not target.exists():
            os.rename(aside, target)
        else:
            shutil.rmtree(aside, ignore_errors=True)
