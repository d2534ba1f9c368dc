"""Minari importer: real simulator rollouts written as Minari datasets by the minari package itself,
read back through `lramlab data import minari` (minari.load_dataset / MinariDataset), compared.

The datasets are written with ``minari.create_dataset_from_buffers`` from episodes of real
simulators (lramlab's Dark-Room and Atari, gymnasium's CartPole and Pendulum). Minari's
``DataCollector`` would do the same stepping, but in minari 0.5.3 it needs jax (``minari[create]``),
which the project does not install; the files written are the same format either way.
"""
from __future__ import annotations

import numpy as np
import pytest

minari = pytest.importorskip("minari")

from lramlab.data.importers import ImportFormatError, import_dataset, main  # noqa: E402
from lramlab.data.store import TaskData, check_dataset  # noqa: E402


def _collect(env, n_episodes: int, seed: int, policy=None):
    """Episodes of a real env as minari EpisodeBuffers (observations and infos include the reset's, as
    DataCollector records them), plus the raw arrays to compare against."""
    from minari.data_collector import EpisodeBuffer

    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    buffers, raw = [], []
    for e in range(n_episodes):
        obs, _ = env.reset(seed=seed + e)
        O, A, R, TE, TR, S = [obs], [], [], [], [], [False]
        while True:
            a = policy(obs, rng) if policy is not None else env.action_space.sample()
            obs, r, term, trunc, info = env.step(a)
            O.append(obs), A.append(a), R.append(float(r)), TE.append(term), TR.append(trunc)
            S.append(bool(info.get("success", False)))
            if term or trunc:
                break
        if isinstance(O[0], dict):
            obs_arr = {k: np.stack([o[k] for o in O]) for k in O[0]}
        else:
            obs_arr = np.stack(O)
        ep = dict(observations=obs_arr, actions=np.asarray(A), rewards=np.asarray(R, np.float32),
                  terminations=np.asarray(TE), truncations=np.asarray(TR), infos={"success": np.asarray(S)})
        buffers.append(EpisodeBuffer(id=e, seed=seed + e, **ep))
        raw.append(ep)
    return buffers, raw


def _make_dataset(dataset_id: str, env, buffers):
    return minari.create_dataset_from_buffers(dataset_id, buffers, env=env, algorithm_name="random",
                                              author="lramlab tests", author_email="tests@lramlab",
                                              code_permalink="tests/test_minari_import.py",
                                              description=f"lramlab test data: {dataset_id}")


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def test_minari_darkroom_by_id_and_by_directory(minari_root, tmp_path):
    from lramlab.envs import make_env

    env = make_env("darkroom/goal-1-1", seed=0)
    # a policy that walks towards the goal half the time: some episodes reach it (success varies)
    policy = lambda obs, rng: int(rng.choice([1, 2])) if rng.random() < 0.5 else int(rng.integers(5))  # noqa: E731
    buffers, raw = _collect(env, 3, seed=7, policy=policy)
    _make_dataset("lramlab/darkroom-goal-1-1-v0", env, buffers)
    d = import_dataset("minari", "lramlab/darkroom-goal-1-1-v0", "darkroom/goal-1-1", tmp_path / "out",
                       progress=False)
    td = TaskData(d)
    assert len(td) == 3
    for i, ep in enumerate(raw):
        got = td.read(i)
        assert got["states"].shape == (100, 2) and got["states"].dtype == np.float32
        assert np.array_equal(got["states"], ep["observations"][:-1])
        assert np.array_equal(got["actions"], ep["actions"]) and got["actions"].dtype == np.int64
        assert np.array_equal(got["rewards"], ep["rewards"])
        assert np.array_equal(got["success"], ep["infos"]["success"][1:])
        assert not got["dones"].any()  # time limit: truncated, never terminated
    assert any(ep["rewards"].sum() > 0 for ep in raw)  # the comparison covers reward and success steps
    # the same dataset by its directory (minari.MinariDataset on a local path) gives the same store
    d2 = import_dataset("minari", minari_root / "lramlab" / "darkroom-goal-1-1-v0", "darkroom/goal-1-1",
                        tmp_path / "out2", progress=False)
    assert all(np.array_equal(TaskData(d2).read(i)[k], td.read(i)[k]) for i in range(3) for k in td.read(i))
    assert check_dataset(tmp_path / "out").ok


def test_minari_terminations_dict_obs_and_rescaled_box(minari_root, tmp_path):
    import gymnasium as gym

    cart = gym.make("CartPole-v1", max_episode_steps=40)
    policy = lambda obs, rng: int(obs[2] + 0.5 * obs[3] > 0) if rng.random() < 0.3 else int(rng.integers(2))  # noqa: E731
    buffers, raw = _collect(cart, 6, seed=3, policy=policy)
    _make_dataset("cartpole/random-v0", cart, buffers)
    d = import_dataset("minari", "cartpole/random-v0", "classic/cartpole", tmp_path / "out", progress=False)
    td = TaskData(d)
    for i, ep in enumerate(raw):
        got = td.read(i)
        assert np.array_equal(got["states"], ep["observations"][:-1]) and np.array_equal(got["actions"], ep["actions"])
        assert got["dones"][-1] == ep["terminations"][-1] and not got["dones"][:-1].any()
    ends = [(ep["terminations"][-1], ep["truncations"][-1]) for ep in raw]
    assert (True, False) in ends and (False, True) in ends  # both endings occur

    # Pendulum with a Dict observation (a real wrapper over the real simulator), actions in [-2, 2]
    space = gym.spaces.Dict({"cos_sin": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                             "vel": gym.spaces.Box(-8.0, 8.0, (1,), np.float32)})
    pend = gym.wrappers.TransformObservation(
        gym.make("Pendulum-v1", max_episode_steps=30), lambda o: {"cos_sin": o[:2], "vel": o[2:]}, space)
    pbuffers, praw = _collect(pend, 2, seed=4)
    _make_dataset("pendulum/dict-v0", pend, pbuffers)
    d2 = import_dataset("minari", "pendulum/dict-v0", "control/pendulum", tmp_path / "out", progress=False)
    for i, ep in enumerate(praw):
        got = TaskData(d2).read(i)
        full = np.concatenate([ep["observations"]["cos_sin"], ep["observations"]["vel"]], axis=1)
        assert np.array_equal(got["states"], full[:-1])  # default keys: low-dim Boxes, sorted
        assert np.allclose(got["actions"], ep["actions"] / 2.0, atol=1e-6)  # [-2, 2] -> [-1, 1]
    d3 = import_dataset("minari", "pendulum/dict-v0", "control/pendulum", tmp_path / "out3", progress=False,
                        obs_keys=["vel"])
    assert np.array_equal(TaskData(d3).read(0)["states"], praw[0]["observations"]["vel"][:-1])
    with pytest.raises(ImportFormatError, match="episode 0.*'nope' missing"):
        import_dataset("minari", "pendulum/dict-v0", "control/pendulum", tmp_path / "out4", progress=False,
                       obs_keys=["nope"])


def test_minari_atari_images(minari_root, tmp_path):
    import gymnasium as gym

    from lramlab.envs import make_env

    env = gym.wrappers.TimeLimit(make_env("atari/pong", seed=0), max_episode_steps=25)
    buffers, raw = _collect(env, 1, seed=1)
    _make_dataset("pong/random-v0", env, buffers)
    d = import_dataset("minari", minari_root / "pong" / "random-v0", "atari/pong", tmp_path / "out", progress=False)
    got = TaskData(d).read(0)
    assert got["states"].shape == (25, 1, 64, 64) and got["states"].dtype == np.uint8
    assert np.array_equal(got["states"], raw[0]["observations"][:-1]) and np.array_equal(got["actions"], raw[0]["actions"])


def test_minari_bad_input_is_named(minari_root, tmp_path, capsys):
    from lramlab.envs import make_env

    env = make_env("darkroom/goal-3-3", seed=0)
    buffers, _ = _collect(env, 1, seed=0)
    _make_dataset("lramlab/darkroom-goal-3-3-v0", env, buffers)
    # the dataset's spaces do not fit the task: the error names the dataset, episode and field
    with pytest.raises(ImportFormatError, match=r"lramlab/darkroom-goal-3-3-v0.*episode 0: states have shape \(2,\)"):
        import_dataset("minari", "lramlab/darkroom-goal-3-3-v0", "dmcontrol/cartpole-balance", tmp_path / "o1",
                       progress=False)
    with pytest.raises(FileNotFoundError, match="'lramlab/nope-v0'.*MINARI_DATASETS_PATH"):
        import_dataset("minari", "lramlab/nope-v0", "darkroom/goal-3-3", tmp_path / "o2", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportFormatError, match="no Minari dataset here"):
        import_dataset("minari", tmp_path / "empty", "darkroom/goal-3-3", tmp_path / "o3", progress=False)
    # the CLI: success prints the summary, bad input exits 2 naming the problem
    assert main(["minari", "lramlab/darkroom-goal-3-3-v0", "--task", "darkroom/goal-3-3", "--out",
                 str(tmp_path / "cli"), "--no-progress"]) == 0
    assert "imported 1 episodes, 100 steps" in capsys.readouterr().out
    assert main(["minari", "lramlab/nope-v0", "--task", "darkroom/goal-3-3", "--out", str(tmp_path / "cli2"),
                 "--no-progress"]) == 2
    assert "lramlab/nope-v0" in capsys.readouterr().err
