"""`lramlab bench data`: its dataset is real rollouts (Meta-World experts, Atari random policy) made
through `generate`, cached and reused; the CLI reports windows/s per domain against training's need."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lramlab.bench import data as bench
from lramlab.bench.data import TINY, BenchDataConfig, build_bench_dataset, main
from lramlab.data.store import TaskData, check_dataset, list_episode_files


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("bench_cache")
    root, info = build_bench_dataset(cache, TINY, progress=False)
    return cache, root, info


def _files(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("episode_*.hdf5"))}


def test_bench_dataset_is_real_rollouts(built):
    from lramlab.collect.generate import episode_seed, rollout_episode
    from lramlab.collect.policies import make_policy
    from lramlab.envs import make_env

    cache, root, info = built
    assert root.parent == cache and not info["reused"]
    rep = check_dataset(root)
    assert rep.ok and sorted(t.task for t in rep.tasks) == sorted(TINY.state_tasks + TINY.image_tasks)
    for t in TINY.state_tasks + TINY.image_tasks:
        d = root / t
        meta = json.loads((d / "meta.json").read_text())
        assert meta["generator"] == "lramlab.collect.generate" and meta["seed"] == TINY.seed
        assert meta["policy"] == ("expert" if t in TINY.state_tasks else "random")
        assert len(list_episode_files(d)) == (TINY.state_episodes if t in TINY.state_tasks else TINY.image_episodes)
    mw = TaskData(root / TINY.state_tasks[0]).read(0)
    assert mw["states"].shape == (TINY.state_steps, 39) and mw["actions"].shape == (TINY.state_steps, 4)
    atari = TaskData(root / TINY.image_tasks[0])
    frames = atari.read(0)["states"]
    assert frames.dtype == np.uint8 and frames.shape[1:] == (1, 64, 64) and len(frames) <= TINY.image_steps
    assert len(np.unique(frames.reshape(len(frames), -1), axis=0)) > 1  # the game moves
    # the stored episode is exactly what the expert does in the simulator with that episode's seed
    task = TINY.state_tasks[0]
    env = make_env(task, seed=TINY.seed)
    try:
        ref = rollout_episode(env, make_policy("expert", task), episode_seed(TINY.seed, 0), "state", TINY.state_steps)
    finally:
        env.close()
    np.testing.assert_array_equal(mw["states"], ref["states"])
    np.testing.assert_array_equal(mw["actions"], ref["actions"])


def test_second_build_reuses_the_cache(built, monkeypatch):
    cache, root, _ = built
    before = _files(root)

    def no_generate(*a, **kw):
        raise AssertionError("the cached dataset was generated again")

    monkeypatch.setattr("lramlab.collect.generate.generate", no_generate)
    root2, info = build_bench_dataset(cache, TINY, progress=False)
    assert root2 == root and info["reused"] and _files(root) == before
    # another recipe is another directory, never a mix with the cached one
    assert BenchDataConfig(**{**TINY.__dict__, "image_steps": 61}).key() != TINY.key()


def test_partial_cache_is_completed(tmp_path, built):
    import shutil

    _, root, _ = built
    cache = tmp_path / "c"
    shutil.copytree(root, cache / root.name)
    victim = cache / root.name / TINY.image_tasks[0] / "episode_000001.hdf5"
    want = TaskData(victim.parent).read(1)
    victim.unlink()
    root2, info = build_bench_dataset(cache, TINY, progress=False)
    assert not info["reused"] and victim.exists()
    got = TaskData(victim.parent).read(1)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_bench_cli_reports_real_domains(built, capsys):
    cache, _, _ = built
    assert main(["--tiny", "--cache", str(cache), "--windows", "32", "--batch-size", "16", "--json",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["content"].startswith("real rollouts") and out["dataset"]["reused"]
    # both layouts side by side: per-episode files and the packed copy made in the cache
    assert sorted((r["domain"], r["obs"], r["layout"]) for r in out["results"]) == [
        ("atari", "image", "episode"), ("atari", "image", "packed"),
        ("metaworld", "state", "episode"), ("metaworld", "state", "packed")]
    assert out["notes"] == [] and {s["layout"] for s in out["per_update"]} == {"episode", "packed"}
    for r in out["results"]:
        assert r["windows_per_s"] > 0 and r["needed_windows_per_s"] == 16.0
        assert r["ratio"] == pytest.approx(r["windows_per_s"] / 16.0)
    assert main(["--tiny", "--cache", str(cache), "--windows", "16", "--batch-size", "16", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "metaworld" in text and "atari" in text and "ratio" in text and "packed / episode" in text


def test_bench_on_a_user_dataset(tmp_path, built, capsys):
    import shutil

    _, root, _ = built
    user = tmp_path / "user"
    shutil.copytree(root / "metaworld", user / "metaworld")
    for p in user.rglob("packed.hdf5"):
        p.unlink()  # a user's dataset without packs: only the per-episode layout can be timed
    assert main(["--data", str(user), "--windows", "16", "--batch-size", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] is None and {r["layout"] for r in out["results"]} == {"episode"}
    assert "lramlab data pack" in out["notes"][0]
    assert main(["--data", str(user), "--layout", "packed", "--windows", "16", "--batch-size", "16"]) == 2
    assert "no task" in capsys.readouterr().err and not list(user.rglob("packed.hdf5"))  # never packs user data


def test_bad_bench_input_is_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="state_episodes must be an int >= 1, got 0"):
        BenchDataConfig(state_episodes=0)
    with pytest.raises(ValueError, match="atari/pong has image observations, listed as a state task"):
        build_bench_dataset(tmp_path, BenchDataConfig(state_tasks=("atari/pong",), image_tasks=()))
    assert main(["--data", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--image-episodes", "0"])
    assert bench.default_cache().parts[-2:] == ("lramlab", "bench-data")
