"""Worker processes that do not outlive the process that started them.

A study's workers are spawned by `lramlab pipeline`'s notebook kernel (or by a CLI command). Killed
from outside (a terminal closed, `kill`, the pipeline's kernel shut down), the parent cannot stop
them itself, and they would go on computing for an hour on a machine whose cores someone else now
wants. `die_with_parent()`, run first in a worker, asks Linux to send the worker SIGTERM the moment
its parent exits (prctl PR_SET_PDEATHSIG); what the worker was writing is lost the way an
interrupted write is (our writes are atomic), and a re-run resumes it.
"""
from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGTERM) -> bool:
    """Have this process receive `sig` when its parent exits; return whether that is arranged.

    `parent_pid`: the pid the caller expects as parent (default: multiprocessing's parent process,
    else the current parent). If the parent is already gone (the race between start and this call),
    the signal is sent now. Linux only: elsewhere (or without libc's prctl) nothing changes and False
    is returned. A `ProcessPoolExecutor(initializer=...)` or the first line of a `Process` target."""
    if not sys.platform.startswith("linux"):
        return False
    if parent_pid is None:
        import multiprocessing

        parent = multiprocessing.parent_process()
        parent_pid = parent.pid if parent is not None and parent.pid else os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)
    return True
