"""Workers die with the process that started them (lramlab._proc.die_with_parent): killing a study, or
the notebook kernel running it, must not leave its workers computing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# The parent: starts a worker (a spawned Process, or a ProcessPoolExecutor worker), writes the worker's
# pid to a file once the worker runs, then sleeps until it is killed.
PARENT = textwrap.dedent("""
    import concurrent.futures as cf, multiprocessing as mp, os, sys, time
    from pathlib import Path
    from lramlab._proc import die_with_parent

    def work(out, arm):
        if arm:
            die_with_parent()
        Path(out).write_text(str(os.getpid()))
        time.sleep(120)

    def noop():
        pass

    if __name__ == "__main__":
        out, arm, how = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
        ctx = mp.get_context("spawn")
        if how == "process":
            ctx.Process(target=work, args=(out, arm)).start()
        else:
            pool = cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=die_with_parent if arm else noop)
            pool.submit(work, out, False)
        time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _worker_after_parent_killed(tmp_path: Path, arm: bool, how: str) -> tuple[int, bool]:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    out = tmp_path / f"worker-{arm}-{how}.pid"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen([sys.executable, str(script), str(out), "1" if arm else "0", how], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (out.is_file() and out.read_text()):
            assert parent.poll() is None, "the parent exited before its worker started"
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
        pid = int(out.read_text())
        assert _alive(pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pid, _alive(pid)


@pytest.mark.parametrize("how", ["process", "pool"])
def test_worker_dies_when_its_parent_is_killed(tmp_path, how):
    pid, alive = _worker_after_parent_killed(tmp_path, True, how)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"worker {pid} outlived its SIGKILLed parent ({how})"


def test_without_it_the_worker_is_orphaned(tmp_path):
    """The control: the same worker without die_with_parent survives its parent (what the fix is for)."""
    pid, alive = _worker_after_parent_killed(tmp_path, False, "process")
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert alive


def test_parent_already_gone_sends_the_signal_now():
    """The race: the parent died between the worker's start and its call; the worker ends at once."""
    code = ("import signal, sys; from lramlab._proc import die_with_parent; "
            "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(7)); "
            "die_with_parent(parent_pid=1, sig=signal.SIGUSR1); sys.exit(0)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 7

