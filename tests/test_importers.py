"""Importers: real rollouts written in each published format, imported, and compared (round trips)."""
from __future__ import annotations

import gzip
import json

import h5py
import numpy as np
import pytest

from lramlab.data.importers import ImportFormatError, import_dataset, main, to_gray64
from lramlab.data.store import TaskData, check_dataset, read_episode


def _gym_rollout(env_id: str, n_episodes: int, max_steps: int, seed: int = 0):
    """(obs incl. final (T+1, ...), actions, rewards, terminated, truncated) per episode of a real env."""
    import gymnasium as gym

    env = gym.make(env_id, max_episode_steps=max_steps)
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n_episodes):
        obs, _ = env.reset(seed=seed + e)
        O, A, R, TE, TR = [obs], [], [], [], []
        while True:
            if env_id.startswith("CartPole") and rng.random() < 0.5:
                a = int(obs[2] + 0.5 * obs[3] > 0)  # balance a while: varied lengths
            else:
                a = env.action_space.sample()
            obs, r, term, trunc, _ = env.step(a)
            O.append(obs), A.append(a), R.append(r), TE.append(term), TR.append(trunc)
            if term or trunc:
                break
        out.append((np.stack(O), np.asarray(A), np.asarray(R, np.float32), np.asarray(TE), np.asarray(TR)))
    env.close()
    return out


def _pong_frames(n_episodes: int, steps: int, size: int, seed: int = 0):
    """Real ALE Pong frames (frame skip 4, grayscale, size x size) with random actions."""
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing

    gym.register_envs(ale_py)
    env = AtariPreprocessing(gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0),
                             frame_skip=4, screen_size=size, grayscale_obs=True, noop_max=30)
    env.action_space.seed(seed)
    eps = []
    for e in range(n_episodes):
        obs, _ = env.reset(seed=seed + e)
        O, A, R = [], [], []
        for _ in range(steps):
            a = env.action_space.sample()
            O.append(obs)
            obs, r, term, trunc, _ = env.step(a)
            A.append(a), R.append(r)
        eps.append((np.stack(O), np.asarray(A), np.asarray(R, np.float32)))
    env.close()
    return eps


# ------------------------------------------------------------------ native (released LRAM layout)


def _darkroom_episodes(n=4, seed=0):
    from lramlab.collect.policies import iter_darkroom_history

    return list(iter_darkroom_history((4, 1), n, seed=seed))


def test_native_round_trip_natural_order_and_images(tmp_path):
    src = tmp_path / "released"
    src.mkdir()
    eps = _darkroom_episodes(4)
    for i, ep in zip((2, 10, 1, 0), eps):  # released names, written out of order; no 'complete' attr
        with h5py.File(src / f"traj_{i}.h5", "w") as f:
            for k in ("states", "actions", "rewards", "dones"):
                f.create_dataset(k, data=ep[k])
            f.create_dataset("returns_to_go", data=np.cumsum(ep["rewards"][::-1])[::-1])
    d = import_dataset("native", src, "darkroom/goal-4-1", tmp_path / "out", progress=False)
    order = [eps[3], eps[2], eps[0], eps[1]]  # traj_0, traj_1, traj_2, traj_10
    td = TaskData(d)
    assert len(td) == 4 and td.task == "darkroom/goal-4-1"
    for i, ep in enumerate(order):
        got = td.read(i)
        for k in ("states", "actions", "rewards"):
            assert np.array_equal(got[k], ep[k]), k
    assert check_dataset(tmp_path / "out").ok
    assert json.loads((d / "meta.json").read_text())["source_format"] == "native"

    # image episodes stored (T, 64, 64) uint8 get their channel axis
    img_src = tmp_path / "img"
    img_src.mkdir()
    (frames, actions, rewards), = _pong_frames(1, 30, 64)
    with h5py.File(img_src / "0.hdf5", "w") as f:
        f["states"], f["actions"], f["rewards"] = frames, actions, rewards
        f["dones"] = np.zeros(len(rewards), bool)
    d2 = import_dataset("native", img_src, "atari/pong", tmp_path / "out", progress=False)
    got = read_episode(d2 / "episode_000000.hdf5")
    assert got["states"].shape == (30, 1, 64, 64) and np.array_equal(got["states"][:, 0], frames)


def test_native_bad_files_are_named(tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    ep = _darkroom_episodes(1)[0]
    with h5py.File(src / "e0.hdf5", "w") as f:
        f["states"], f["actions"], f["rewards"] = ep["states"], ep["actions"], ep["rewards"]
        f["returns_to_go"] = np.cumsum(ep["rewards"])  # wrong convention (forward sums)
    ep["rewards"][-1] = 1.0  # make the wrong rtg detectably wrong
    with h5py.File(src / "e0.hdf5", "a") as f:
        f["rewards"][...] = ep["rewards"]
    with pytest.raises(ImportFormatError, match=r"e0\.hdf5.*returns_to_go"):
        import_dataset("native", src, "darkroom/goal-4-1", tmp_path / "out", progress=False)
    # into a non-empty task dir only with --overwrite
    good = tmp_path / "good"
    good.mkdir()
    with h5py.File(good / "a.hdf5", "w") as f:
        f["states"], f["actions"], f["rewards"] = ep["states"], ep["actions"], ep["rewards"]
    import_dataset("native", good, "darkroom/goal-4-1", tmp_path / "out2", progress=False)
    with pytest.raises(ValueError, match="overwrite"):
        import_dataset("native", good, "darkroom/goal-4-1", tmp_path / "out2", progress=False)
    # a shape that contradicts the manifest is refused, naming the task
    with pytest.raises(ImportFormatError, match="obs_shape"):
        import_dataset("native", good, "metaworld/reach-v2", tmp_path / "out3", progress=False)


# ------------------------------------------------------------------ robomimic / Mimicgen


def _write_robomimic(path, eps):
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Pendulum-v1", "type": 2})
        total = 0
        for i, (O, A, R, _, _) in enumerate(eps):
            obs = O[:-1]
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = len(A)
            g.create_dataset("obs/joint_vel", data=obs[:, 2:])
            g.create_dataset("obs/joint_pos", data=obs[:, :2])
            g.create_dataset("obs/agentview_image", data=np.zeros((len(A), 8, 8, 3), np.uint8))
            g.create_dataset("next_obs/joint_pos", data=O[1:, :2])
            g.create_dataset("actions", data=(A / 2.0).astype(np.float32))  # torque [-2, 2] -> [-1, 1]
            success = (O[1:, 0] > 0.9).astype(np.float32)  # pole near upright
            g.create_dataset("rewards", data=success)
            d = np.zeros(len(A), np.int64)
            d[-1] = 1
            g.create_dataset("dones", data=d)
            total += len(A)
        data.attrs["total"] = total
        f.create_group("mask").create_dataset("train", data=np.array([b"demo_0", b"demo_1"]))


def test_robomimic_round_trip(tmp_path):
    eps = _gym_rollout("Pendulum-v1", 3, 40, seed=1)
    src = tmp_path / "low_dim.hdf5"
    _write_robomimic(src, eps)
    d = import_dataset("robomimic", src, "mimicgen/pendulum-test", tmp_path / "out", progress=False, new_task=True)
    td = TaskData(d)
    assert len(td) == 3
    for i, (O, A, R, _, _) in enumerate(eps):
        got = td.read(i)
        # default keys: low-dim (T, d) only, sorted -> joint_pos then joint_vel; the image key is skipped
        assert np.allclose(got["states"], O[:-1], atol=1e-7)
        assert np.allclose(got["actions"], A / 2.0)
        assert got["dones"][-1] and not got["dones"][:-1].any()
        assert np.array_equal(got["success"], O[1:, 0] > 0.9)
    # chosen keys, in the given order
    d2 = import_dataset("robomimic", src, "mimicgen/pendulum-test", tmp_path / "out2", progress=False, new_task=True,
                        obs_keys=["joint_vel"])
    assert np.allclose(read_episode(d2 / "episode_000000.hdf5")["states"], eps[0][0][:-1, 2:])
    with pytest.raises(ImportFormatError, match="'nope' missing"):
        import_dataset("robomimic", src, "mimicgen/pendulum-test", tmp_path / "out3", progress=False, new_task=True,
                       obs_keys=["nope"])
    assert check_dataset(tmp_path / "out").ok


# ------------------------------------------------------------------ Minari: tests/test_minari_import.py


# ------------------------------------------------------------------ DQN-Replay


def _minimal_set(game: str) -> np.ndarray:
    """ale-py's minimal action set of a game, as full-set indices (what Dopamine's actions index)."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5")
    out = np.array([a.value for a in env.unwrapped.ale.getMinimalActionSet()])
    env.close()
    return out


def _save_gz(path, arr):
    with gzip.open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def test_dqn_replay_round_trip(tmp_path):
    import cv2

    eps = _pong_frames(3, 25, 84, seed=5)  # three episodes, each ended by dopamine's terminal
    tail = _pong_frames(1, 10, 84, seed=9)[0]  # an unfinished episode at the end of the buffer
    obs = np.concatenate([e[0] for e in eps] + [tail[0]])
    act = np.concatenate([e[1] for e in eps] + [tail[1]]).astype(np.int32)
    rew = np.concatenate([e[2] for e in eps] + [tail[2]]).astype(np.float32)
    term = np.zeros(len(obs), np.uint8)
    term[[24, 49, 74]] = 1
    src = tmp_path / "Pong" / "1" / "replay_logs"
    src.mkdir(parents=True)
    for name, arr in (("observation", obs), ("action", act), ("reward", rew), ("terminal", term)):
        _save_gz(src / f"$store$_{name}_ckpt.0.gz", arr)
    _save_gz(src / "add_count_ckpt.0.gz", np.array(len(obs)))
    # checkpoint 1: the same stream in a wrapped circular buffer (cursor at 30)
    k = 30
    for name, arr in (("observation", obs), ("action", act), ("reward", rew), ("terminal", term)):
        _save_gz(src / f"$store$_{name}_ckpt.1.gz", np.roll(arr, k, axis=0))
    _save_gz(src / "add_count_ckpt.1.gz", np.array(2 * len(obs) + k))

    assert main(["dqn-replay", str(src), "--task", "atari/pong", "--out", str(tmp_path / "out"),
                 "--ckpt", "0", "--no-progress"]) == 0
    td = TaskData(tmp_path / "out" / "atari" / "pong")
    assert len(td) == 3  # the unfinished tail is dropped
    for i, (frames, A, R) in enumerate(eps):
        got = td.read(i)
        want = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in frames])[:, None]
        assert got["states"].shape == (25, 1, 64, 64) and np.array_equal(got["states"], want)
        # Dopamine's minimal-set indices come out as full 18-action indices (ale-py's minimal set)
        assert np.array_equal(got["actions"], _minimal_set("Pong")[A]) and np.array_equal(got["rewards"], R)
        assert got["dones"][-1]
    # wrapped checkpoint: unrolled oldest-first; its first (partial) segment and the tail are dropped
    d1 = import_dataset("dqn-replay", src, "atari/pong", tmp_path / "out1", progress=False, checkpoints=[1])
    td1 = TaskData(d1)
    assert len(td1) == 2
    assert np.array_equal(td1.read(0)["actions"], _minimal_set("Pong")[eps[1][1]])
    assert np.array_equal(td1.read(1)["actions"], _minimal_set("Pong")[eps[2][1]])
    assert check_dataset(tmp_path / "out").ok and check_dataset(tmp_path / "out1").ok


def test_dqn_replay_missing_file_is_named(tmp_path):
    _save_gz(tmp_path / "$store$_observation_ckpt.3.gz", np.zeros((5, 84, 84), np.uint8))
    with pytest.raises(ImportFormatError, match=r"\$store\$_action_ckpt\.3\.gz missing"):
        import_dataset("dqn-replay", tmp_path, "atari/pong", tmp_path / "out", progress=False)


def test_to_gray64_rgb():
    rgb = np.zeros((2, 64, 64, 3), np.uint8)
    rgb[..., 1] = 200
    g = to_gray64(rgb)
    assert g.shape == (2, 1, 64, 64) and int(g[0, 0, 0, 0]) == round(200 * 0.587)
    with pytest.raises(ImportFormatError, match="uint8"):
        to_gray64(np.zeros((2, 64, 64), np.float32))
