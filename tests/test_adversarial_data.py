"""Issue 20, data: nothing skipped in silence, every error naming the right thing.

Symbolic links (followed, or refused by name when dangling), extreme-but-finite values, damaged
meta.json files, packs that hold what the episode files may not, imports that name the source
episode, and `data check`'s exit status 2 for invalid data (the README's code for user errors).
The episodes are real Dark-Room histories from the generator, edited in place with h5py.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from lramlab.cli import main

TASKS = ("darkroom/goal-2-0", "darkroom/goal-0-2")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from lramlab.collect.generate import generate

    root = tmp_path_factory.mktemp("adv_data") / "base"
    for t in TASKS:
        generate(t, 3, policy="history", out=root, progress=False)
    return root


@pytest.fixture
def data(base, tmp_path):
    """A copy of `base` each test may damage."""
    return Path(shutil.copytree(base, tmp_path / "data"))


def _line(err: str, prog: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _episodes(d: Path, task: str) -> list[Path]:
    return sorted((d / task).glob("episode_*.hdf5"))


# ----------------------------------------------------------------------------- symbolic links
def test_symlinked_task_directory_is_followed(data, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(data / TASKS[1]), elsewhere)
    os.symlink(elsewhere, data / TASKS[1])
    assert main(["data", "check", str(data), "--json", "-"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert sorted(t["task"] for t in rep["tasks"]) == sorted(TASKS)
    from lramlab.train.data import found_tasks

    assert found_tasks([str(data)]) == sorted(TASKS)


def test_symlink_cycle_ends(data, capsys):
    os.symlink("..", data / "darkroom" / "loop")  # darkroom/loop -> data
    assert main(["data", "check", str(data), "--json", "-"]) == 0
    assert len(json.loads(capsys.readouterr().out)["tasks"]) == 2


def test_dangling_task_symlink_refused_by_name(data, capsys):
    os.symlink(data / "gone", data / "darkroom" / "goal-9-9")
    rc = main(["data", "check", str(data)])
    line = _line(capsys.readouterr().err, "lramlab data check")
    assert rc == 2 and "goal-9-9" in line and "dangling symbolic link" in line


def test_dangling_episode_symlink_is_an_invalid_file(data, capsys):
    os.symlink(data / "nowhere.hdf5", data / TASKS[0] / "episode_000099.hdf5")
    rc = main(["data", "check", str(data)])
    out = capsys.readouterr().out
    assert rc == 2
    assert "INVALID" in out and "episode_000099.hdf5" in out and "dangling symbolic link" in out


# ----------------------------------------------------------------------------- values, meta.json, shapes
def test_extreme_finite_states_flagged(data, capsys):
    with h5py.File(_episodes(data, TASKS[0])[1], "r+") as f:
        s = f["states"][()]
        s[5, 0] = 3e38
        f["states"][...] = s
    rc = main(["data", "check", str(data)])
    out = capsys.readouterr().out
    assert rc == 2 and "INVALID" in out and "3e+38" in out and "timestep 5" in out


def test_meta_json_obs_shape_word_named(data, capsys):
    meta = data / TASKS[0] / "meta.json"
    m = json.loads(meta.read_text())
    m["obs_shape"] = "two"
    meta.write_text(json.dumps(m))
    from lramlab.data.store.validate import task_expect

    with pytest.raises(ValueError, match="'obs_shape' is 'two': expected a list of integers"):
        task_expect("darkroom/nonesuch", m, meta_path=str(meta))
    m["task"] = "darkroom/nonesuch"  # outside the manifests: meta.json's shape is what counts
    meta.write_text(json.dumps(m))
    rc = main(["data", "check", str(data)])
    line = _line(capsys.readouterr().err, "lramlab data check")
    assert rc == 2 and str(meta) in line and "'obs_shape' is 'two'" in line


def test_corrupt_meta_json_is_invalid(data, capsys):
    meta = data / TASKS[0] / "meta.json"
    meta.write_text('{"task": "darkroom/goal-2-0", ')
    rc = main(["data", "check", str(data)])
    out = capsys.readouterr().out
    assert rc == 2 and f"INVALID {meta}" in out and "not valid JSON" in out


def test_discrete_actions_shaped_t_by_1_named(data, capsys):
    ep = _episodes(data, TASKS[0])[0]
    with h5py.File(ep, "r+") as f:
        a = f["actions"][()]
        del f["actions"]
        f["actions"] = a.reshape(-1, 1)
    rc = main(["data", "check", str(data)])
    out = capsys.readouterr().out
    assert rc == 2 and "drop the last axis" in out and ep.name in out


def test_data_check_of_a_file_says_so(data, capsys):
    ep = _episodes(data, TASKS[0])[0]
    rc = main(["data", "check", str(ep)])
    line = _line(capsys.readouterr().err, "lramlab data check")
    assert rc == 2 and str(ep) in line and "got a file" in line and "does not exist" not in line


def test_data_check_invalid_files_exit_2(data, capsys):
    ep = _episodes(data, TASKS[0])[0]
    ep.write_bytes(ep.read_bytes()[:500])
    assert main(["data", "check", str(data)]) == 2


# ----------------------------------------------------------------------------- imports and unknown tasks
def test_import_probable_typo_refused_unless_new_task(data, tmp_path, capsys):
    src = data / TASKS[0]
    rc = main(["data", "import", "native", str(src), "--task", "darkroom/goal-42", "--out", str(tmp_path / "imp"),
               "--no-progress"])
    line = _line(capsys.readouterr().err, "lramlab data import")
    assert rc == 2 and "goal-42" in line and "--new-task" in line
    assert not (tmp_path / "imp" / "darkroom" / "goal-42").exists()
    assert main(["data", "import", "native", str(src), "--task", "darkroom/goal-42", "--out", str(tmp_path / "imp"),
                 "--no-progress", "--new-task"]) == 0
    capsys.readouterr()
    # training on it names the missing reward scale, where to put it, and the probable typo
    rc = main(["train", "--data", str(tmp_path / "imp"), "--out", str(tmp_path / "run"), "--backbone", "dt",
               "--size", "tiny", "--steps", "1", "--batch-size", "2", "--context", "10", "--no-amp", "--device", "cpu",
               "--no-progress", "--num-threads", "1"])
    line = _line(capsys.readouterr().err, "lramlab train")
    assert rc == 2 and "goal-42" in line and "meta.json" in line and "typo" in line
    assert "task_specs / reward_scale override" not in line


def test_import_nan_named_under_the_source_file(data, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i, ep in enumerate(_episodes(data, TASKS[0])):
        with h5py.File(ep, "r") as f, h5py.File(src / f"{i}.hdf5", "w") as g:
            for k in ("states", "actions", "rewards", "dones"):
                g[k] = f[k][()]
            if i == 1:
                s = g["states"][()]
                s[3, 1] = np.nan
                g["states"][...] = s
    rc = main(["data", "import", "native", str(src), "--task", TASKS[0], "--out", str(tmp_path / "imp"),
               "--no-progress"])
    line = _line(capsys.readouterr().err, "lramlab data import")
    assert rc == 2 and str(src / "1.hdf5") in line and "nan" in line.lower()
    assert ".import-" not in line


# ----------------------------------------------------------------------------- packed.hdf5
def test_check_full_finds_out_of_range_actions_inside_the_pack(data, capsys):
    assert main(["data", "pack", str(data)]) == 0
    with h5py.File(data / TASKS[0] / "packed.hdf5", "r+") as f:
        a = f["actions"][()]
        a[7] = 99
        f["actions"][...] = a
    capsys.readouterr()
    rc = main(["data", "check", str(data), "--full"])
    out = capsys.readouterr().out
    assert rc == 2 and "DAMAGED" in out and "packed.hdf5" in out and "got 99" in out


def test_damaged_pack_is_not_read_by_training(data, tmp_path, capsys):
    assert main(["data", "pack", str(data)]) == 0
    with h5py.File(data / TASKS[0] / "packed.hdf5", "r+") as f:
        s = f["states"][()]
        s[:, 0] = np.nan  # every window of the pack would hold a NaN
        f["states"][...] = s
    capsys.readouterr()
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--backbone", "dt", "--size", "tiny",
               "--steps", "3", "--batch-size", "4", "--context", "10", "--no-amp", "--device", "cpu", "--no-progress",
               "--num-threads", "1", "--no-tensorboard", "--val-every", "0"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "packed.hdf5 is corrupt" in err
    loss = json.loads((tmp_path / "run" / "metrics.json").read_text())["train/loss"]
    assert loss is not None and np.isfinite(loss)


def test_generate_rerun_with_fewer_episodes_names_episodes(base, tmp_path, capsys):
    out = tmp_path / "gen"
    shutil.copytree(base, out)
    rc = main(["data", "generate", "--task", TASKS[0], "--episodes", "2", "--policy", "history", "--out", str(out),
               "--no-progress"])
    line = _line(capsys.readouterr().err, "lramlab data generate")
    assert rc == 2 and "--episodes" in line and "is 3 but this run has 2" in line


def test_generate_policy_config_that_follows_episodes_names_episodes(tmp_path):
    from lramlab.collect.generate import _check_meta

    (tmp_path / "meta.json").write_text(json.dumps({"task": TASKS[0], "policy": "history", "episodes": 20,
                                                     "policy_config": {"explore_episodes": 10}}))
    with pytest.raises(ValueError, match=r"--episodes 5: .* --episodes 20, .*Give --episodes 20"):
        _check_meta(tmp_path, {"task": TASKS[0], "policy": "history", "episodes": 5,
                               "policy_config": {"explore_episodes": 2}},
                    ("task", "policy", "policy_config", "episodes"))


def test_unrelated_dangling_file_link_is_not_fatal(data, capsys):
    os.symlink(data / "gone.txt", data / "notes.txt")
    assert main(["data", "check", str(data)]) == 0


def test_a_repacked_pack_is_read_again(data):
    from lramlab.data.store import pack_task
    from lramlab.data.store.packed import _PackedIndex, ignore_packs

    task = data / TASKS[0]
    pack_task(task)
    paths = sorted(task.glob("episode_*.hdf5"))
    ignore_packs([task / "packed.hdf5"])
    assert _PackedIndex.load(task, paths) is None
    pack_task(task, force=True)  # a new pack: not the one found damaged
    assert _PackedIndex.load(task, paths) is not None


def test_data_check_notes_a_task_training_cannot_scale(data, capsys):
    meta = data / TASKS[0] / "meta.json"
    m = json.loads(meta.read_text())
    m["task"] = "darkroom/goal-42"
    meta.write_text(json.dumps(m))
    for ep in _episodes(data, TASKS[0]):
        with h5py.File(ep, "r+") as f:
            f.attrs["task"] = "darkroom/goal-42"
    assert main(["data", "check", str(data)]) == 0
    out = capsys.readouterr().out
    assert "NOTE darkroom/goal-42: not in lramlab.manifests (a typo?)" in out and "reward_scale" in out
    assert "NOTE darkroom/goal-0-2" not in out
