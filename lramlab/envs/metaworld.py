"""Meta-World adapter (App. B.3) on metaworld 3.1.1 (v3 tasks; the paper used v2).

The paper's `<task>-v2` names map to `<task>-v3` (same 50 tasks, same split). Built with
`gym.make("Meta-World/MT1", env_name=..., seed=..., max_episode_steps=200)`. Observation (39,)
float32; action (4,) float32 in [-1, 1]; episodes of 200 steps (truncated), no termination on
success; `info["success"]` is a bool.

Each reset puts the env on one of MT1's 50 goal variations ("tasks"). MT1's own wrapper draws it
*before* reseeding, so reset(seed=s) twice gave different goals; here the variation is drawn from
the reset seed itself (and from an RNG seeded by it for later seed-less resets), so the same seed
gives the same task and goal. The 50 variations themselves depend on make_env's seed.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

from lramlab._optional import require

gym = require("gymnasium", "Meta-World environments")

EPISODE_LENGTH = 200
OBS_DIM = 39
ACT_DIM = 4


def v3_name(name: str, env_id: str | None = None) -> str:
    """`reach-v2` / `reach` / `reach-v3` -> `reach-v3`, checked against metaworld's task list."""
    mw = require("metaworld", "Meta-World environments")
    raw = env_id or name
    base = raw[:-3] if raw[-3:] in ("-v1", "-v2", "-v3") else raw
    out = f"{base}-v3"
    known = sorted(mw.ALL_V3_ENVIRONMENTS)
    if out not in known:
        raise ValueError(f"metaworld: {raw!r} maps to {out!r}, not a Meta-World v3 task; known: {known}")
    return out


def _find(env, cls_name: str):
    e = env
    while True:
        if type(e).__name__ == cls_name:
            return e
        if not hasattr(e, "env"):
            return None
        e = e.env


class MetaWorldEnv(gym.Wrapper):
    """Float32 observations, deterministic goal choice per reset seed, bool info["success"]."""

    def __init__(self, env, seed: int | None):
        super().__init__(env)
        self._select = _find(env, "RandomTaskSelectWrapper")
        if self._select is None:
            raise RuntimeError("metaworld: MT1 env has no RandomTaskSelectWrapper; "
                               "this adapter expects metaworld 3.1.x")
        self._select.toggle_sample_tasks_on_reset(False)
        self.tasks = list(self._select.tasks)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=env.observation_space.shape,
                                                dtype=np.float32)
        self._default_seed = seed
        self._task_rng: np.random.Generator | None = None
        self.task_index: int | None = None
        if seed is not None:
            self.action_space.seed(int(seed))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._task_rng is None:
            seed = self._default_seed
        if seed is not None:
            self._task_rng = np.random.default_rng(int(seed))
        elif self._task_rng is None:
            self._task_rng = np.random.default_rng()
        self.task_index = int(self._task_rng.integers(len(self.tasks)))
        self.env.unwrapped.set_task(self.tasks[self.task_index])
        obs, info = self.env.reset(seed=seed, options=options)
        info = dict(info)
        info["task_index"] = self.task_index
        return np.asarray(obs, dtype=np.float32), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["success"] = bool(info.get("success", 0.0))
        return np.asarray(obs, dtype=np.float32), float(reward), terminated, truncated, info


def make_metaworld(name: str, env_id: str | None = None, seed: int | None = None,
                   render: bool = False, *, episode_length: int = EPISODE_LENGTH):
    if episode_length <= 0:
        raise ValueError(f"metaworld: episode_length={episode_length}, expected > 0")
    require("metaworld", "Meta-World environments")  # registers the Meta-World/* ids
    env = gym.make(
        "Meta-World/MT1", env_name=v3_name(name, env_id), seed=seed,
        max_episode_steps=int(episode_length), render_mode="rgb_array" if render else None,
        disable_env_checker=True,  # its obs bounds are narrower than real observations
    )
    return MetaWorldEnv(env, seed)
