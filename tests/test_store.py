"""HDF5 trajectory store: round trips, atomic writes, validation of bad files, `lramlab data check`."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from lramlab.data.store import (
    TaskData,
    TrajectoryFileError,
    check_dataset,
    check_main,
    episode_length,
    find_tasks,
    list_episode_files,
    read_episode,
    returns_to_go,
    write_episode,
    write_stats,
)


def test_round_trip_every_kind(tiny_root, tiny_episodes):
    for task, eps in tiny_episodes.items():
        files = list_episode_files(tiny_root / task)
        assert [p.name for p in files] == [f"episode_{i:06d}.hdf5" for i in range(len(eps))]
        for i, (p, ep) in enumerate(zip(files, eps)):
            got = read_episode(p)
            np.testing.assert_array_equal(got["states"], ep["states"])
            np.testing.assert_array_equal(got["rewards"], ep["rewards"])
            np.testing.assert_array_equal(got["dones"], ep["dones"])
            np.testing.assert_allclose(got["returns_to_go"], np.cumsum(ep["rewards"][::-1])[::-1], rtol=1e-5, atol=1e-4)
            assert got["dones"].dtype == bool and got["rewards"].dtype == np.float32
            if ep["actions"].ndim == 1:
                assert got["actions"].dtype == np.int64
            else:
                assert got["actions"].dtype == np.float32 and np.abs(got["actions"]).max() <= 1
            np.testing.assert_array_equal(got["actions"], ep["actions"].astype(got["actions"].dtype))
            with h5py.File(p, "r") as f:
                assert f.attrs["task"] == task and int(f.attrs["index"]) == i and int(f.attrs["complete"]) == 1
    pong = read_episode(list_episode_files(tiny_root / "atari/pong")[0])
    assert pong["states"].shape[1:] == (1, 64, 64) and pong["states"].dtype == np.uint8
    with h5py.File(list_episode_files(tiny_root / "atari/pong")[0], "r") as f:
        assert f["states"].compression == "gzip"


def test_window_read_is_the_slice(tiny_root):
    for task in ("atari/pong", "control/pendulum"):
        p = list_episode_files(tiny_root / task)[0]
        full = read_episode(p)
        T = len(full["rewards"])
        for start, stop in [(0, 1), (3, 20), (T - 5, T)]:
            w = read_episode(p, start, stop, keys=("states", "returns_to_go"))
            assert set(w) == {"states", "returns_to_go"}
            np.testing.assert_array_equal(w["states"], full["states"][start:stop])
            np.testing.assert_array_equal(w["returns_to_go"], full["returns_to_go"][start:stop])
        with pytest.raises(TrajectoryFileError, match="window"):
            read_episode(p, 5, T + 1)


def test_taskdata_and_find_tasks(tiny_root, tiny_episodes):
    dirs = find_tasks(tiny_root)
    assert sorted(str(d.relative_to(tiny_root)) for d in dirs) == sorted(tiny_episodes)
    flat = tiny_root / "classic" / "cartpole"
    assert find_tasks(flat) == [flat]  # a task dir passed directly (the released layout)
    td = TaskData(flat)
    assert td.task == "classic/cartpole" and td.action_kind == "discrete" and td.obs_kind == "state"
    assert td.lengths.tolist() == [len(e["rewards"]) for e in tiny_episodes["classic/cartpole"]]
    w = td.read(3, 2, 9)
    np.testing.assert_array_equal(w["states"], tiny_episodes["classic/cartpole"][3]["states"][2:9])
    assert TaskData(tiny_root / "control/pendulum").act_dim == 1


def test_stats_json(tmp_path, tiny_episodes):
    eps = tiny_episodes["classic/cartpole"][:4]
    d = tmp_path / "classic" / "cartpole"
    for i, ep in enumerate(eps):
        write_episode(d, i, ep)
    stats = write_stats(d)
    on_disk = json.loads((d / "stats.json").read_text())
    assert on_disk == json.loads(json.dumps(stats))
    assert stats["task"] == "classic/cartpole" and stats["n_episodes"] == 4
    assert stats["lengths"] == [len(e["rewards"]) for e in eps]
    assert stats["returns"] == pytest.approx([float(e["rewards"].sum()) for e in eps])
    assert stats["n_transitions"] == sum(stats["lengths"])
    assert stats["return_stats"]["max"] == pytest.approx(max(stats["returns"]))
    # TaskData takes lengths from stats.json only while it lists exactly the files present
    write_episode(d, 4, tiny_episodes["classic/cartpole"][4])
    assert TaskData(d).lengths.tolist() == [len(e["rewards"]) for e in tiny_episodes["classic/cartpole"][:5]]


def test_write_is_atomic_on_crash(tmp_path, tiny_episodes, monkeypatch):
    ep = tiny_episodes["control/pendulum"][0]
    d = tmp_path / "control" / "pendulum"
    good = write_episode(d, 0, ep)
    before = good.read_bytes()
    calls = {"n": 0}
    real = h5py.Group.create_dataset

    def crash_midway(self, name, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash while writing")
        return real(self, name, *a, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        write_episode(d, 0, tiny_episodes["control/pendulum"][1])  # overwrite: old file must survive
    with pytest.raises(KeyboardInterrupt):
        calls["n"] = 0
        write_episode(d, 1, ep)  # new file: must not appear at all
    monkeypatch.undo()
    assert good.read_bytes() == before
    assert sorted(p.name for p in d.iterdir()) == ["episode_000000.hdf5"]  # no tmp left, no half file


def test_write_rejects_bad_input(tmp_path, tiny_episodes):
    ep = dict(tiny_episodes["control/pendulum"][0])
    ep["rewards"] = ep["rewards"].copy()
    ep["rewards"][5] = np.nan
    with pytest.raises(TrajectoryFileError, match=r"episode_000007\.hdf5.*'rewards'.*finite.*timestep 5"):
        write_episode(tmp_path / "t", 7, ep)
    assert not list((tmp_path / "t").iterdir())
    ep = dict(tiny_episodes["control/pendulum"][0], actions=tiny_episodes["control/pendulum"][0]["actions"] * 2.5)
    with pytest.raises(TrajectoryFileError, match=r"'actions'.*\[-1, 1\]"):
        write_episode(tmp_path / "t", 7, ep)


# -- bad files: each made from a real episode file, each must be named with its reason
def _edit(path, key, value):
    with h5py.File(path, "a") as f:
        del f[key]
        if value is not None:
            f.create_dataset(key, data=value)


def _make_bad_files(task_dir):
    """Corrupt copies of real episodes: {file name: (expected dataset, regex of the reason)}."""
    src = list_episode_files(task_dir)[0]
    with h5py.File(src, "r") as f:
        ep = {k: f[k][()] for k in f}
    T = len(ep["rewards"])
    bad = {}

    def clone(name):
        p = task_dir / name
        shutil.copy(src, p)
        return p

    p = clone("episode_000101.hdf5")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    bad[p.name] = (None, "cannot be opened as HDF5")
    p = clone("episode_000102.hdf5")
    _edit(p, "states", ep["states"][:, :-1, None])
    bad[p.name] = ("states", "expected")
    p = clone("episode_000103.hdf5")
    r = ep["rewards"].copy()
    r[T // 2] = np.nan
    _edit(p, "rewards", r)
    bad[p.name] = ("rewards", "finite")
    p = clone("episode_000104.hdf5")
    _edit(p, "returns_to_go", None)
    bad[p.name] = ("returns_to_go", "missing")
    p = clone("episode_000105.hdf5")
    with h5py.File(p, "a") as f:
        del f.attrs["complete"]
    bad[p.name] = (None, "complete")
    p = clone("episode_000106.hdf5")
    _edit(p, "rewards", ep["rewards"][:-1])
    bad[p.name] = ("rewards", f"expected {T} timesteps|expected .*timesteps")
    p = clone("episode_000107.hdf5")
    _edit(p, "dones", ep["dones"].astype(np.float32))
    bad[p.name] = ("dones", "bool")
    p = clone("episode_000108.hdf5")
    d = np.zeros(T, bool)
    d[3] = True
    _edit(p, "dones", d)
    bad[p.name] = ("dones", "last step")
    p = clone("episode_000109.hdf5")
    _edit(p, "actions", ep["actions"] * 3)
    bad[p.name] = ("actions", r"\[-1, 1\]")
    p = clone("episode_000110.hdf5")
    _edit(p, "returns_to_go", ep["returns_to_go"] * 0.5 + 1)
    bad[p.name] = ("returns_to_go", "sum")
    p = clone("episode_000111.hdf5")
    s = ep["states"].copy()
    s[2, 0] = np.inf
    _edit(p, "states", s)
    bad[p.name] = ("states", "finite")
    return bad


def test_every_bad_file_is_named(tmp_path, tiny_root):
    task_dir = tmp_path / "control" / "pendulum"
    shutil.copytree(tiny_root / "control" / "pendulum", task_dir)
    bad = _make_bad_files(task_dir)
    for name, (dataset, reason) in bad.items():
        with pytest.raises(TrajectoryFileError) as ei:
            read_episode(task_dir / name)
        err = ei.value
        assert isinstance(err, ValueError)
        assert name in str(err) and err.dataset == dataset, (name, str(err))
        assert __import__("re").search(reason, err.problem), (name, str(err))
    # the released layout has no 'complete' attr: allowed on request only
    assert len(read_episode(task_dir / "episode_000105.hdf5", require_complete=False)["rewards"]) > 0
    # a window that does not touch the NaN still reads; one that does is rejected
    T = episode_length(task_dir / "episode_000103.hdf5")
    read_episode(task_dir / "episode_000103.hdf5", 0, T // 2)
    with pytest.raises(TrajectoryFileError, match="finite"):
        read_episode(task_dir / "episode_000103.hdf5", T // 2, T)


def test_image_file_checks(tmp_path, tiny_root):
    d = tmp_path / "atari" / "pong"
    shutil.copytree(tiny_root / "atari" / "pong", d)
    p = list_episode_files(d)[0]
    s = read_episode(p)["states"]
    _edit(p, "states", s.astype(np.float32))
    with pytest.raises(TrajectoryFileError, match=r"'states'.*\(T, 1, 64, 64\) uint8"):
        read_episode(p)


def test_check_lists_every_invalid_file(tmp_path, tiny_root, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    bad = _make_bad_files(root / "control" / "pendulum")
    rep = check_dataset(root)
    assert not rep.ok
    assert sorted(b["file"].rsplit("/", 1)[-1] for b in rep.invalid) == sorted(bad)
    by_task = {t.task: t for t in rep.tasks}
    assert set(by_task) == {"atari/pong", "classic/acrobot", "classic/cartpole", "control/mountaincar", "control/pendulum"}
    assert by_task["control/pendulum"].invalid == len(bad)
    good_eps = len(list_episode_files(tiny_root / "control/pendulum"))
    assert by_task["control/pendulum"].episodes == good_eps
    assert by_task["classic/cartpole"].transitions == int(TaskData(root / "classic/cartpole").lengths.sum())

    assert check_main([str(root), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and len(out["invalid"]) == len(bad) and out["n_tasks"] == 5
    assert check_main([str(root)]) == 1
    text = capsys.readouterr().out
    for name in bad:
        assert name in text
    from lramlab.cli import main as cli

    assert cli(["data", "check", str(tiny_root)]) == 0
    text = capsys.readouterr().out
    assert "5 tasks" in text and "0 invalid" in text and "classic/cartpole" in text
    assert check_main([str(tmp_path / "nope")]) == 2


def test_returns_to_go_helper():
    r = np.array([1.0, 0.0, -2.0, 3.0], np.float32)
    np.testing.assert_array_equal(returns_to_go(r), [2.0, 1.0, 1.0, 3.0])
