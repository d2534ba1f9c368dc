"""Shared fixtures: real trajectories from tiny simulators, written through the store.

- `rollout(env_id, ...)`: episodes from a real gymnasium env (classic control, or ALE Pong as
  64x64 grayscale frames), as dicts ready for `write_episode`.
- `TINY_SPECS`: task specs (domain, reward scale, actions) for the tiny tasks, passed to the
  sampler as an override so these tests do not depend on data_manifests/.
- `tiny_root` (session): a dataset root DIR/<domain>/<name>/episode_*.hdf5 with 3 domains, 5 tasks:
  classic/{cartpole, acrobot} (discrete), control/{pendulum, mountaincar} (continuous),
  atari/pong (images).
"""
from __future__ import annotations

import numpy as np
import pytest


def pytest_addoption(parser):
    parser.addoption("--exhaustive", action="store_true", default=False,
                     help="also run tests marked `exhaustive` (full sweeps, e.g. all 256 Composuite tasks)")


def pytest_collection_modifyitems(config, items):
    """`exhaustive` tests are skipped (by name, with how to run them) unless --exhaustive."""
    if config.getoption("--exhaustive"):
        return
    skip = pytest.mark.skip(reason="exhaustive sweep: run with pytest --exhaustive")
    for item in items:
        if "exhaustive" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny models: one intra-op thread is faster than two on a 2-core CI machine
    (thread hand-off costs more than a tiny matmul), and makes timings of other tests steadier."""
    import torch

    torch.set_num_threads(1)
    yield

TINY_SPECS = {
    "classic/cartpole": {"domain": "classic", "reward_scale": 10.0, "action_kind": "discrete", "action_dim": 2},
    "classic/acrobot": {"domain": "classic", "reward_scale": 10.0, "action_kind": "discrete", "action_dim": 3},
    "control/pendulum": {"domain": "control", "reward_scale": 100.0, "action_kind": "continuous", "action_dim": 1},
    "control/mountaincar": {"domain": "control", "reward_scale": 100.0, "action_kind": "continuous", "action_dim": 1},
    "atari/pong": {"domain": "atari", "reward_scale": 20.0, "action_kind": "discrete", "action_dim": 6},
}
# (env id, episodes, max steps) per tiny task
TINY_ENVS = {
    "classic/cartpole": ("CartPole-v1", 12, 100),
    "classic/acrobot": ("Acrobot-v1", 4, 60),
    "control/pendulum": ("Pendulum-v1", 6, 40),
    "control/mountaincar": ("MountainCarContinuous-v0", 3, 70),
    "atari/pong": ("ALE/Pong-v5", 2, 90),
}


def _make(env_id: str, max_steps: int):
    import gymnasium as gym

    if env_id.startswith("ALE/"):
        import ale_py
        from gymnasium.wrappers import AtariPreprocessing

        gym.register_envs(ale_py)
        env = gym.make(env_id, frameskip=1, repeat_action_probability=0.0, max_episode_steps=max_steps * 4)
        return AtariPreprocessing(env, frame_skip=4, screen_size=64, grayscale_obs=True, noop_max=30)
    return gym.make(env_id, max_episode_steps=max_steps)


def rollout(env_id: str, n_episodes: int, max_steps: int, seed: int = 0) -> list[dict]:
    """Real episodes: a noisy heuristic for CartPole, uniform random actions elsewhere.

    Continuous actions are stored scaled to [-1, 1] (Pendulum's torque range is [-2, 2]).
    """
    env = _make(env_id, max_steps)
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    episodes = []
    for e in range(n_episodes):
        obs, _ = env.reset(seed=seed + e)
        S, A, R, D = [], [], [], []
        for _ in range(max_steps):
            if env_id.startswith("CartPole") and rng.random() > 0.7:
                a = int(obs[2] + 0.5 * obs[3] > 0)  # push toward the pole's lean: longer, varied episodes
            else:
                a = env.action_space.sample()
            S.append(obs[None] if obs.ndim == 2 else obs)  # images get their channel axis (1, 64, 64)
            obs, r, term, trunc, _ = env.step(a)
            if hasattr(env.action_space, "high"):
                a = np.asarray(a, dtype=np.float32) / env.action_space.high
            A.append(a)
            R.append(r)
            D.append(term)
            if term or trunc:
                break
        episodes.append({"states": np.stack(S), "actions": np.asarray(A), "rewards": np.asarray(R, dtype=np.float32),
                         "dones": np.asarray(D, dtype=bool)})
    env.close()
    return episodes


@pytest.fixture(scope="session")
def tiny_episodes() -> dict[str, list[dict]]:
    return {task: rollout(env_id, n, steps, seed=i * 100) for i, (task, (env_id, n, steps)) in enumerate(TINY_ENVS.items())}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory, tiny_episodes):
    from lramlab.data.store import write_episode

    root = tmp_path_factory.mktemp("tiny_data")
    for task, eps in tiny_episodes.items():
        for i, ep in enumerate(eps):
            write_episode(root / task, i, ep, compress=task.startswith("atari"))
    return root
