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
    try:  # mkstemp makes 0600; a data or result file gets the usual permissions (0666 less the umask)
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def _umask() -> int:
    """The process umask (read from /proc on Linux: setting it to read it races with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


#: free bytes below which a failed write is taken for a full disk (libraries such as torch and
#: HDF5 report ENOSPC in words of their own, or not at all)
FULL_DISK_BYTES = 1 << 20


def free_bytes(directory) -> int | None:
    """Bytes an unprivileged writer may still use on `directory`'s filesystem (None: unknown)."""
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def disk_full_error(path, err: BaseException | None = None) -> OSError | None:
    """An OSError(ENOSPC) naming `path` when `err` is one (or the disk holding `path` is full now),
    else None: what a failed write becomes, so the user reads "No space left on device" and the
    file, not a library's traceback."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return OSError(err.errno, os.strerror(err.errno), str(path))
    text = str(err) if err is not None else ""
    free = free_bytes(Path(path).parent)
    low = free is not None and free < FULL_DISK_BYTES and isinstance(err, (RuntimeError, OSError, type(None)))
    if "errno = 28" in text or "No space left" in text or low:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def check_free_space(path, need: int) -> None:
    """OSError(ENOSPC) naming `path` before a write of about `need` bytes that cannot fit (HDF5 can
    crash the process on a write that fails mid-file: better not to start it)."""
    free = free_bytes(Path(path).parent)
    if free is not None and free < need + (64 << 10):
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (about {need} bytes needed, {free} free)",
                      str(path))


def atomic_write(path, write: Callable[[Path], None], fsync: bool = True) -> Path:
    """Call `write(tmp_path)` to fill a temporary file, then move it to `path` atomically. A write
    that fails on a full disk is an OSError(ENOSPC) naming `path` (the previous version is kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        write(tmp)
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except Exception as err:
        full = disk_full_error(path, err)
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from err
        raise
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


class UnsafeCheckpointError(ValueError):
    """A torch file holds pickled Python objects beyond tensors and plain values; not loaded."""


def _numpy_safe_globals() -> list:
    """numpy's array reconstructors: older lramlab training checkpoints hold numpy RNG state. They
    rebuild plain arrays and run no other code, so `torch.load(weights_only=True)` may allow them."""
    import numpy as np

    out: list = [np.ndarray, np.dtype]
    try:
        from numpy.core.multiarray import _reconstruct
    except ImportError:  # numpy >= 2 moved it
        from numpy._core.multiarray import _reconstruct  # type: ignore[no-redef]
    out.append(_reconstruct)
    for name in ("UInt32DType", "Float64DType", "Int64DType"):
        t = getattr(getattr(np, "dtypes", None), name, None)
        if t is not None:
            out.append(t)
    return out


def safe_torch_load(path, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`: tensors, numbers, strings, lists, dicts (and numpy
    arrays) only -- a file that would run code while loading (a crafted pickle) is refused before
    any of it runs, with an `UnsafeCheckpointError` naming the file and the object it asked for.
    Other read errors propagate as torch raises them."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        m = re.search(r"GLOBAL ([\w.]+)", str(err)) or re.search(r"Unsupported global: ([^\s]+)", str(err))
        if m is None:  # not a pickle of objects: a damaged file, or no torch file at all
            raise
        what = f"it asks for {m.group(1)}"
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the file holds pickled Python objects, not only tensors and plain "
            f"values ({what}); loading it could run code. lramlab checkpoints and model files never do") from None


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
