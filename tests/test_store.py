"""HDF5 trajectory store: round trips, atomic writes, validation of bad files, `lramlab data check`,
batched durability (StoreWriter, fsync batching, recovery of the unsynced tail after a power loss)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from lramlab.data import store
from lramlab.data.store import (
    StoreWriter,
    TaskData,
    TrajectoryFileError,
    check_dataset,
    check_main,
    episode_length,
    find_tasks,
    is_complete,
    list_episode_files,
    read_episode,
    recover_unsynced,
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
    real = store.episodes._raw_dataset  # the uncompressed path's dataset writer

    def crash_midway(f, name, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash while writing")
        return real(f, name, *a, **kw)

    monkeypatch.setattr(store.episodes, "_raw_dataset", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        write_episode(d, 0, tiny_episodes["control/pendulum"][1])  # overwrite: old file must survive
    with pytest.raises(KeyboardInterrupt):
        calls["n"] = 0
        write_episode(d, 1, ep)  # new file: must not appear at all
    monkeypatch.undo()
    assert calls["n"] == 3 and good.read_bytes() == before
    assert sorted(p.name for p in d.iterdir()) == ["episode_000000.hdf5"]  # no tmp left, no half file


def test_low_level_write_makes_the_high_level_layout(tmp_path, tiny_episodes):
    """The fast write path gives the same datasets and attrs as h5py's create_dataset / attrs."""
    ep = tiny_episodes["control/pendulum"][0]
    p = write_episode(tmp_path / "t", 4, ep, task="control/pendulum")
    ref = tmp_path / "ref.hdf5"
    got = read_episode(p)
    with h5py.File(ref, "w") as f:
        f.attrs["task"] = "control/pendulum"
        f.attrs["index"] = 4
        for k, v in got.items():
            f.create_dataset(k, data=v)
        f.attrs["complete"] = 1
    with h5py.File(p, "r") as a, h5py.File(ref, "r") as b:
        assert sorted(a) == sorted(b) and list(a.attrs) == list(b.attrs)
        for k in b.attrs:
            assert a.attrs.get_id(k).dtype == b.attrs.get_id(k).dtype and a.attrs[k] == b.attrs[k]
        for k in b:
            x, y = a[k], b[k]
            assert (x.dtype, x.shape, x.chunks, x.compression) == (y.dtype, y.shape, y.chunks, y.compression)
            assert x.id.get_create_plist().get_layout() == y.id.get_create_plist().get_layout()
            assert x.id.get_create_plist().get_obj_track_times() == y.id.get_create_plist().get_obj_track_times()
            np.testing.assert_array_equal(x[()], y[()])


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

    assert check_main([str(root), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and len(out["invalid"]) == len(bad) and out["n_tasks"] == 5
    assert check_main([str(root)]) == 2
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


# ----------------------------------------------------------------------------- durability
def test_max_act_dim_matches_tokenizer():
    from lramlab.tokenizer import MAX_ACT_DIM

    assert store.MAX_ACT_DIM == MAX_ACT_DIM


def test_write_episode_fsync_flag(tmp_path, tiny_episodes, monkeypatch):
    import os

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    ep = tiny_episodes["control/pendulum"][0]
    write_episode(tmp_path / "a", 0, ep)
    assert len(synced) == 2  # the file, then its directory
    synced.clear()
    p = write_episode(tmp_path / "b", 0, ep, fsync=False)
    assert synced == [] and is_complete(p) and sorted(x.name for x in p.parent.iterdir()) == [p.name]
    np.testing.assert_array_equal(read_episode(p)["states"], ep["states"])


def _spy_fsync(monkeypatch) -> list:
    """Record the episode files StoreWriter fsyncs (names, in order)."""
    seen = []
    real = store.writer._fsync_file

    def spy(path, missing_ok=False):
        seen.append(Path(path).name)
        return real(path, missing_ok)

    monkeypatch.setattr(store.writer, "_fsync_file", spy)
    return seen


def _marker(d):
    p = d / store.UNSYNCED_NAME
    return json.loads(p.read_text())["from_index"] if p.exists() else None


def test_store_writer_batches_fsync_and_marks_the_unsynced(tmp_path, tiny_episodes, monkeypatch):
    eps = tiny_episodes["control/pendulum"]
    d = tmp_path / "control" / "pendulum"
    synced = _spy_fsync(monkeypatch)
    names = [f"episode_{i:06d}.hdf5" for i in range(6)]
    with StoreWriter(d, sync_every=3, sync_seconds=1e9) as w:
        w.write(0, eps[0])
        assert _marker(d) == 0 and synced == [] and is_complete(d / names[0])
        w.write(1, eps[1])
        assert synced == []
        w.write(2, eps[2])  # third write: the batch is synced, the marker goes
        assert synced == names[:3] and _marker(d) is None
        w.write(5, eps[5])
        w.write(3, eps[3])  # a lower index than the marker's: the marker is lowered first
        assert _marker(d) == 3 and synced == names[:3]
        with pytest.raises(TrajectoryFileError, match="finite"):
            w.write(4, dict(eps[4], rewards=np.full(len(eps[4]["rewards"]), np.nan, np.float32)))
        assert not (d / names[4]).exists() and _marker(d) == 3
    assert sorted(synced) == sorted(names[:3] + [names[5], names[3]]) and _marker(d) is None
    assert not list(d.glob(".*"))  # no marker, no tmp files
    # the writer's summaries are what reading the files gives
    from_files = write_stats(d)
    assert write_stats(d, summaries=w.summaries) == from_files
    assert sorted(w.summaries) == [names[i] for i in (0, 1, 2, 3, 5)]
    for i in (0, 1, 2, 3, 5):
        np.testing.assert_array_equal(read_episode(d / names[i])["actions"], eps[i]["actions"].astype(np.float32))
    with pytest.raises(ValueError, match="closed"):
        w.write(4, eps[4])
    with pytest.raises(ValueError, match="sync_every must be >= 1, got 0"):
        StoreWriter(d, sync_every=0)


def _zero_dataset(path, key):
    """Zero the raw bytes of a contiguous dataset in place: what a lost data block reads back as."""
    with h5py.File(path, "r") as f:
        off, n = f[key].id.get_offset(), f[key].id.get_storage_size()
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(bytes(n))


def test_power_loss_tail_is_deleted_a_kill_keeps_it(tmp_path, tiny_episodes, monkeypatch):
    eps = tiny_episodes["control/pendulum"]
    d = tmp_path / "t"
    w = StoreWriter(d, task="control/pendulum", sync_every=3, sync_seconds=1e9)
    for i in range(5):
        w.write(i, eps[i])
    # power loss: the writer never closes; 3 and 4 were never fsync'd. Model the damage a power
    # loss can do to them: a truncated file, and a whole-looking file whose data blocks are zeros.
    assert _marker(d) == 3
    p3, p4 = d / "episode_000003.hdf5", d / "episode_000004.hdf5"
    _zero_dataset(p3, "actions")
    data = p4.read_bytes()
    p4.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrajectoryFileError, match="cannot be opened as HDF5"):
        read_episode(p4)
    assert is_complete(p3) and not read_episode(p3)["actions"].any()  # no reader can tell: the marker must
    monkeypatch.setattr(store.writer, "_boot_id", lambda: "a-later-boot")
    w2 = StoreWriter(d, task="control/pendulum")
    assert sorted(p.name for p in w2.recovered) == [p3.name, p4.name]
    assert [p.name for p in list_episode_files(d)] == [f"episode_{i:06d}.hdf5" for i in range(3)]
    assert _marker(d) is None and all(is_complete(p) for p in list_episode_files(d))
    # a process kill (same boot): the unsynced files are whole; they are fsync'd and kept
    monkeypatch.undo()
    for i in range(3, 6):
        w2.write(i, eps[i])
    assert _marker(d) == 3
    (d / ".episode_000006.hdf5.x.tmp").write_bytes(b"killed mid-write")
    synced = _spy_fsync(monkeypatch)
    assert recover_unsynced(d) == []
    assert synced == [f"episode_{i:06d}.hdf5" for i in range(3, 6)]
    assert len(list_episode_files(d)) == 6 and not list(d.glob(".*"))


def test_every_truncation_and_damage_is_rejected_by_name(tmp_path, tiny_root):
    """A cut file never reads as an episode; damaged metadata is a TrajectoryFileError, never a KeyError."""
    for task in ("control/pendulum", "atari/pong"):
        src = list_episode_files(tiny_root / task)[0]
        data = src.read_bytes()
        n = len(data)
        p = tmp_path / "episode_000000.hdf5"
        for cut in sorted({*range(0, n, max(1, n // 40)), n - 1}):
            p.write_bytes(data[:cut])
            assert not is_complete(p), cut
            with pytest.raises(TrajectoryFileError, match="cannot be opened as HDF5"):
                read_episode(p)
        meta_end = min(n, 4096)  # superblock, object headers and attributes live in the first blocks
        for off in range(0, meta_end, 128):
            b = bytearray(data)
            b[off:off + 128] = bytes(len(b[off:off + 128]))
            p.write_bytes(bytes(b))
            try:
                read_episode(p)
            except TrajectoryFileError as err:
                assert err.path == str(p)


def test_generate_after_power_loss_regenerates_the_tail(tmp_path, monkeypatch):
    from lramlab.collect.generate import generate

    ref = generate("darkroom/goal-5-5", 10, "history", tmp_path / "ref", seed=2, progress=False, sync_every=4)
    out = tmp_path / "lost"

    class PowerLoss(BaseException):
        pass

    real_write = StoreWriter.write

    def write(self, index, ep):
        if index == 6:
            raise PowerLoss  # the machine dies while generating episode 6: no cleanup runs
        return real_write(self, index, ep)

    monkeypatch.setattr(StoreWriter, "write", write)
    monkeypatch.setattr(StoreWriter, "close", lambda self: None)
    with pytest.raises(PowerLoss):
        generate("darkroom/goal-5-5", 10, "history", out, seed=2, progress=False, sync_every=4)
    monkeypatch.undo()
    d = out / "darkroom" / "goal-5-5"
    assert _marker(d) == 4 and len(list_episode_files(d)) == 6
    _zero_dataset(d / "episode_000004.hdf5", "actions")  # whole-looking, wrong data
    (d / "episode_000005.hdf5").write_bytes(b"")  # delayed allocation: a zero-length file
    monkeypatch.setattr(store.writer, "_boot_id", lambda: "after-the-reboot")
    generate("darkroom/goal-5-5", 10, "history", out, seed=2, progress=False, sync_every=4)
    ta, tb = TaskData(ref), TaskData(d)
    for i in range(10):
        a, b = ta.read(i), tb.read(i)
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a), i
    assert check_dataset(out).ok and _marker(d) is None
    assert json.loads((d / "stats.json").read_text()) == json.loads((ref / "stats.json").read_text())


# ----------------------------------------------------------------------------- packed layout
def _same_reads(a: TaskData, b: TaskData, windows=((0, None), (3, 9))):
    assert a.lengths.tolist() == b.lengths.tolist()
    for i in range(len(a)):
        for start, stop in windows:
            x, y = a.read(i, start, stop), b.read(i, start, stop)
            assert set(x) == set(y), i
            for k in x:
                assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), (i, k)


@pytest.fixture
def data_copy(tmp_path, tiny_root):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    return root


def test_packed_reads_equal_episode_reads(data_copy, capsys):
    import pickle

    from lramlab.data.store import pack_main, pack_task, use_packed

    assert pack_main([str(data_copy)]) == 0
    assert capsys.readouterr().out.count("-> packed.hdf5") == 5
    for task in ("atari/pong", "control/pendulum", "classic/cartpole"):
        d = data_copy / task
        packed, files = TaskData(d), TaskData(d, packed=False)
        assert packed.packed == d / "packed.hdf5" and files.packed is None
        assert (packed.obs_kind, packed.obs_shape, packed.act_dim) == (files.obs_kind, files.obs_shape, files.act_dim)
        _same_reads(packed, files)
        _same_reads(pickle.loads(pickle.dumps(packed)), files)  # what a DataLoader worker gets
        with use_packed(False):
            assert TaskData(d).packed is None
    # gzip packs read through h5py instead of memory maps: same windows
    d = data_copy / "atari/pong"
    assert pack_task(d) == (d / "packed.hdf5", False)  # current: kept
    pack_task(d, compress=True, force=True)
    with h5py.File(d / "packed.hdf5") as f:
        assert f["states"].compression == "gzip"
    _same_reads(TaskData(d), TaskData(d, packed=False))
    assert check_dataset(data_copy).ok  # the pack is never taken for an episode
    assert pack_main([str(data_copy)]) == 0 and "current, kept" in capsys.readouterr().out
    assert pack_main([str(data_copy / "nope")]) == 2


def test_stale_or_broken_pack_is_ignored(data_copy, tiny_episodes):
    from lramlab.data.store import pack_task

    d = data_copy / "control/pendulum"
    pack_task(d)
    n = len(list_episode_files(d))
    write_episode(d, n, tiny_episodes["control/pendulum"][0])  # a new episode: the pack lacks it
    with pytest.warns(UserWarning, match="stale"):
        td = TaskData(d)
    assert td.packed is None and len(td) == n + 1
    pack_task(d)
    assert TaskData(d).packed is not None and len(TaskData(d)) == n + 1
    write_episode(d, 1, tiny_episodes["control/pendulum"][2])  # an episode rewritten in place
    with pytest.warns(UserWarning, match=r"episode_000001\.hdf5 changed"):
        td = TaskData(d)
    np.testing.assert_array_equal(td.read(1)["states"], tiny_episodes["control/pendulum"][2]["states"])
    pack_task(d)
    data = (d / "packed.hdf5").read_bytes()
    (d / "packed.hdf5").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="unreadable"):
        assert TaskData(d).packed is None


def test_pack_is_atomic_and_checks_its_input(data_copy, tiny_episodes, monkeypatch):
    from lramlab.data.store import pack_task

    d = data_copy / "control/pendulum"
    real = h5py.Group.create_dataset

    def crash(self, name, *a, **kw):
        if name == "offsets":
            raise KeyboardInterrupt("killed while packing")
        return real(self, name, *a, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", crash)
    with pytest.raises(KeyboardInterrupt):
        pack_task(d)
    monkeypatch.undo()
    assert not (d / "packed.hdf5").exists() and not list(d.glob(".*.tmp"))
    first = tiny_episodes["control/pendulum"][0]
    ep = dict(first, success=np.zeros(len(first["rewards"]), bool))
    write_episode(d, 50, ep)
    with pytest.raises(TrajectoryFileError, match=r"episode_000050\.hdf5.*'success'.*not others"):
        pack_task(d)


def test_sampler_batches_identical_packed_or_not(data_copy):
    from conftest import TINY_SPECS
    from lramlab.data.sampling import DomainBalancedSampler, SamplerConfig, TrajectoryDataset
    from lramlab.data.store import pack_task, use_packed

    for d in find_tasks(data_copy):
        pack_task(d)
    with use_packed(False):
        plain = TrajectoryDataset(data_copy, task_specs=TINY_SPECS)
    packed = TrajectoryDataset(data_copy, task_specs=TINY_SPECS)
    assert all(t.packed is not None for t in packed.data) and all(t.packed is None for t in plain.data)
    a = DomainBalancedSampler(plain, SamplerConfig(batch_size=16, seed=5), as_torch=False)
    b = DomainBalancedSampler(packed, SamplerConfig(batch_size=16, seed=5), as_torch=False)
    for _ in range(3):
        for x, y in zip(a.next_update(), b.next_update()):
            assert x["domain"] == y["domain"]
            assert all(np.array_equal(x[k], y[k]) for k in x if k != "domain")
