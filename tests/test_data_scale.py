"""Reading many files with bounded resources: one open-file budget per process whatever the number
of tasks or episodes (`handles.POOL`), training under a low `ulimit -n`, and OS errors (EMFILE,
EACCES, ENOSPC) reported as what they are, never as damaged files.

Data: real Dark-Room learning histories written by the scale benchmark's builder
(`lramlab.bench.data_scale.build_scale_dataset`: (goal, learner seed) task directories).
Processes that need a resource limit, another user or a full disk run as real subprocesses.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lramlab.data.sampling import DomainBalancedSampler, SamplerConfig, TrajectoryDataset
from lramlab.data.store import (CACHE_NAME, TaskData, find_tasks, list_episode_files,
                                pack_task, set_max_open_files)
from lramlab.data.store.handles import POOL

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    from lramlab.bench.data_scale import build_scale_dataset

    root = tmp_path_factory.mktemp("many")
    info = build_scale_dataset(root, episode_files=600, tasks=30, progress=False)
    assert info["episode_files"] == 600
    return root


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _batches(root, n, **kw):
    ds = TrajectoryDataset(root, context_len=20, **kw)
    s = DomainBalancedSampler(ds, SamplerConfig(batch_size=32, seed=1), as_torch=False)
    out, peak = [], 0
    for _ in range(n):
        out.append(s.next_update()[0])
        peak = max(peak, _fds())
    return ds, out, peak


def test_open_files_stay_within_one_budget_over_many_tasks(many, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(many, root)
    assert len(find_tasks(root)) == 30
    try:
        POOL.close_all()
        set_max_open_files(8)
        base, opens = _fds(), POOL.opens
        ds, small, peak = _batches(root, 12)
        assert len(ds.tasks) == 30 and sum(len(d) for d in ds.data) == 600
        assert peak - base <= 8 and len(POOL) <= 8
        assert POOL.opens - opens > 100  # handles were evicted and opened again, across tasks
        # the same windows as with every file kept open (the old per-task caches: one descriptor a file)
        set_max_open_files(10_000)
        _, big, peak_big = _batches(root, 12)
        assert peak_big - base > 100
        for x, y in zip(small, big):
            assert all(np.array_equal(x[k], y[k]) for k in x if k != "domain")
        # packed: one descriptor per task read by pread (no memory map holding one per dataset)
        POOL.close_all()
        set_max_open_files(8)
        for d in find_tasks(root):
            pack_task(d)
        ds, packed, peak = _batches(root, 12)
        assert all(d.packed is not None for d in ds.data) and peak - base <= 8
        for x, y in zip(packed, big):
            assert all(np.array_equal(x[k], y[k]) for k in x if k != "domain")
    finally:
        set_max_open_files(None)


def test_a_forked_process_inherits_no_data_descriptors(many):
    d = find_tasks(many)[0]
    td = TaskData(d)
    want = td.read(3)
    assert len(POOL) >= 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report the pool size, read the same episode with its own descriptor
        try:
            got = td.read(3)
            ok = all(np.array_equal(got[k], want[k]) for k in want)
            os.write(w, json.dumps([len(POOL) - 1, ok]).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    inherited, same = json.loads(os.read(r, 1000))
    os.close(r)
    assert inherited == 0 and same
    assert np.array_equal(td.read(3)["states"], want["states"])  # the parent opens it again


_TRAIN_LOW_ULIMIT = textwrap.dedent("""
    import json, os, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    from lramlab.data.store import max_open_files
    from lramlab.train import TrainConfig, run
    cfg = TrainConfig(data=(sys.argv[1],), backbone="dt", size="tiny", steps=4, batch_size=48, context=10,
                      warmup=1, amp=False, device="cpu", out=sys.argv[2], val_every=0, ckpt_every=0,
                      progress=False, num_threads=1, tensorboard=False)
    res = run(cfg)
    print(json.dumps({"step": res.step, "tasks": len(res.tasks), "budget": max_open_files()}))
""")


def test_training_on_600_files_under_ulimit_48(many, tmp_path):
    p = subprocess.run([sys.executable, "-c", _TRAIN_LOW_ULIMIT, str(many), str(tmp_path / "run")],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"step": 4, "tasks": 30, "budget": 12}


_EMFILE = textwrap.dedent("""
    import contextlib, io, json, os, sys
    from lramlab.data.store import TaskData, TrajectoryFileError, check_main, read_episode
    root, task_dir, path = sys.argv[1:4]
    td = TaskData(task_dir)
    fds = []
    try:
        while True:
            fds.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    out = {}
    for name, fn in (("read_episode", lambda: read_episode(path)), ("TaskData.read", lambda: td.read(5))):
        try:
            fn()
            out[name] = "no error"
        except TrajectoryFileError as e:
            out[name] = "TrajectoryFileError: " + str(e)
        except OSError as e:
            out[name] = [e.errno, str(e)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = check_main([root])
    out["check"] = [rc, err.getvalue()]
    for fd in fds:
        os.close(fd)
    print(json.dumps(out))
""")


def test_too_many_open_files_is_said_as_such(many):
    d = find_tasks(many)[0]
    path = list_episode_files(d)[2]
    p = subprocess.run([sys.executable, "-c", _EMFILE, str(many), str(d), str(path)],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["read_episode"] == [24, f"[Errno 24] Too many open files: '{path}'"]
    assert out["TaskData.read"][0] == 24 and "Too many open files" in out["TaskData.read"][1]
    rc, err = out["check"]
    assert rc == 2 and "Too many open files" in err and "corrupt" not in err


_UNPRIVILEGED = textwrap.dedent("""
    import json, sys
    from lramlab.data.store import TrajectoryFileError, check_dataset, read_episode
    out = {}
    for name, fn in (("read", lambda: read_episode(sys.argv[2])), ("check", lambda: check_dataset(sys.argv[1]))):
        try:
            fn()
            out[name] = "no error"
        except TrajectoryFileError as e:
            out[name] = "TrajectoryFileError: " + str(e)
        except OSError as e:
            out[name] = [e.errno, e.filename]
    print(json.dumps(out))
""")


def test_permission_denied_is_said_as_such(many, tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv to run a process without the permission-override capabilities")
    root = tmp_path / "data"
    src = find_tasks(many)[0]
    # without the check cache other tests may have written (a file whose size and mtime are unchanged
    # is not opened again by a check; its reader meets the error later, as the same PermissionError)
    shutil.copytree(src, root / src.relative_to(many), ignore=shutil.ignore_patterns(CACHE_NAME))
    locked = list_episode_files(root / src.relative_to(many))[4]
    locked.chmod(0o000)
    # as root, file modes are ignored unless the process gives up CAP_DAC_OVERRIDE / _READ_SEARCH
    drop = "-dac_override,-dac_read_search"
    p = subprocess.run(["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", sys.executable, "-c", _UNPRIVILEGED,
                        str(root), str(locked)], capture_output=True, text=True, env=ENV, timeout=120)
    if p.returncode != 0 and "setpriv" in p.stderr:
        pytest.skip(f"setpriv refused: {p.stderr[:200]}")
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"read": [13, str(locked)], "check": [13, str(locked)]}


_FULL_DISK = textwrap.dedent("""
    set -e
    mount -t tmpfs -o size=512k tmpfs "$1"
    cp -r "$2" "$1/task"
    # fill what is left, so the pack's first write meets ENOSPC
    dd if=/dev/zero of="$1/filler" bs=4k 2>/dev/null || true
    "$3" -m lramlab.cli data pack "$1/task" && echo "pack: rc 0" || echo "pack: rc $?"
    ls -a "$1/task"
""")


def test_no_space_left_is_said_as_such(many, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {tmp_path}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {probe.stderr.decode()[:200]}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    src = find_tasks(many)[0]
    p = subprocess.run(["unshare", "-m", "sh", "-c", _FULL_DISK, "sh", str(mnt), str(src), sys.executable],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert "pack: rc 2" in p.stdout, (p.stdout, p.stderr[-2000:])
    assert "No space left on device" in p.stderr and "corrupt" not in p.stderr
    listing = p.stdout.split("pack: rc 2", 1)[1].split()
    assert "packed.hdf5" not in listing and not [n for n in listing if n.endswith(".tmp")]


def test_scale_bench_reports_both_layouts_within_the_limit(tmp_path):
    from lramlab.bench.data_scale import main

    out = tmp_path / "bench.json"
    rc = main(["--episode-files", "40", "--tasks", "8", "--cache", str(tmp_path / "cache"), "--updates", "3",
               "--batch-size", "8", "--context", "20", "--loader-windows", "32", "--nofile", "64", "--no-progress",
               "--save", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["dataset"]["episode_files"] == 40 and res["dataset"]["check_again_files_read"] == 0
    by = {r["layout"]: r for r in res["results"]}
    assert set(by) == {"episode", "packed"}
    for layout, r in by.items():
        assert r["nofile"] == 64 and r["budget"] == 16 and r["train_updates"] == 3
        assert r["episode_files"] == 40 and r["tasks"] == 8
        assert r["baseline_open_files"] < r["peak_open_files"] <= 64
        assert r["peak_rss_bytes"] > 0 and r["loader_windows_per_s"] > 0
    assert by["packed"]["packed_tasks"] == 8 and by["episode"]["packed_tasks"] == 0
