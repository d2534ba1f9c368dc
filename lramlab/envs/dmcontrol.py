"""DMControl adapter (App. B.4) on dm-control's suite, with the gymnasium API.

Task names are `<domain>-<task>` as in the paper (`cheetah-run`, `ball_in_cup-catch`,
`finger-turn_easy`). Observation: the task's observation dict flattened to float32 (D,) in the
suite's own key order (the order dmc2gym uses); `obs_layout="full"` instead places each key at
LRAM's fixed offset in the 204-dim union space (DmcFullObsWrapper, reference/domain_specs.yaml)
for models fed the released LRAM data. Action: float32 in [-1, 1] per dim, rescaled linearly to
the spec's bounds (all suite tasks already use [-1, 1]). Episodes: 1000 control steps, frame
skip 1 (LRAM's dmc2gym defaults); the end of the time limit is `truncated`, a zero discount
`terminated`. `render=True`: env.render() -> (240, 320, 3) uint8 from physics.render (EGL).
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; osmesa is absent on these machines

import numpy as np

from lramlab._optional import require
from lramlab.envs.wrappers import simulator_seed

gym = require("gymnasium", "DMControl environments")

#: LRAM's 204-dim union layout (src/envs/dmcontrol_utils.py: DMC_OBSTYPE_TO_STARTIDX / _TO_DIM)
FULL_OBS_DIM = 204
FULL_OBS_START = {
    "orientations": 0, "velocity": 14, "position": 41, "touch": 49, "target_position": 54,
    "dist_to_target": 56, "joint_angles": 57, "upright": 78, "target": 79, "head_height": 82,
    "extremities": 83, "torso_vertical": 95, "com_velocity": 98, "arm_pos": 101, "arm_vel": 117,
    "hand_pos": 125, "object_pos": 129, "object_vel": 133, "target_pos": 136, "orientation": 140,
    "to_target": 142, "joints": 144, "body_velocities": 158, "height": 203,
}
FULL_OBS_DIMS = {
    "orientations": 14, "velocity": 27, "position": 8, "touch": 5, "target_position": 2,
    "dist_to_target": 1, "joint_angles": 21, "upright": 1, "target": 3, "head_height": 1,
    "extremities": 12, "torso_vertical": 3, "com_velocity": 3, "arm_pos": 16, "arm_vel": 8,
    "hand_pos": 4, "object_pos": 4, "object_vel": 3, "target_pos": 4, "orientation": 2,
    "to_target": 2, "joints": 14, "body_velocities": 45, "height": 1,
}
EPISODE_LENGTH = 1000
RENDER_HW = (240, 320)


def split_name(name: str, env_id: str | None = None) -> tuple[str, str]:
    """`cheetah-run` (or env ids `dm_control/cheetah-run-v0`, `cheetah_run`) -> ("cheetah", "run")."""
    suite = require("dm_control.suite", "DMControl environments")
    raw = (env_id or name).removeprefix("dm_control/")
    raw = raw[:-3] if raw.endswith("-v0") else raw
    if "-" in raw:
        dom, task = raw.split("-", 1)
        if (dom, task) in suite.ALL_TASKS:
            return dom, task
    else:  # data file names use underscores only: find the split that is a suite task
        for dom, task in suite.ALL_TASKS:
            if raw == f"{dom}_{task}":
                return dom, task
    names = sorted(f"{d}-{t}" for d, t in suite.ALL_TASKS)
    raise ValueError(f"dmcontrol: {name!r} (env_id {env_id!r}) is not a dm_control suite task; "
                     f"known: {names}")


def full_obs(obs: dict) -> np.ndarray:
    """Observation dict -> LRAM's 204-dim union vector (keys at fixed offsets, zeros elsewhere)."""
    out = np.zeros(FULL_OBS_DIM, dtype=np.float32)
    for key, val in obs.items():
        flat = np.asarray(val, dtype=np.float32).ravel()
        if key not in FULL_OBS_START or flat.size > FULL_OBS_DIMS[key]:
            raise ValueError(f"dmcontrol: observation key {key!r} of size {flat.size} has no place "
                             f"in LRAM's 204-dim layout ({FULL_OBS_DIMS})")
        start = FULL_OBS_START[key]
        out[start:start + flat.size] = flat
    return out


class DMControlEnv(gym.Env):
    """One dm_control suite task with flat float32 observations and [-1, 1] actions."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, domain: str, task: str, seed: int | None = None, render: bool = False,
                 obs_layout: str = "flat", episode_length: int = EPISODE_LENGTH):
        if obs_layout not in ("flat", "full"):
            raise ValueError(f"dmcontrol: obs_layout={obs_layout!r}, expected 'flat' or 'full'")
        if episode_length <= 0:
            raise ValueError(f"dmcontrol: episode_length={episode_length}, expected > 0")
        suite = require("dm_control.suite", "DMControl environments")
        self._env = suite.load(domain, task, task_kwargs={"random": simulator_seed("dmcontrol", seed),
                                                          "time_limit": float("inf")})
        self.domain, self.task = domain, task
        self.obs_layout = obs_layout
        self.episode_length = int(episode_length)
        self.render_mode = "rgb_array" if render else None
        self._keys = list(self._env.observation_spec().keys())  # suite order, fixed per task
        dim = (FULL_OBS_DIM if obs_layout == "full" else
               sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values()))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
        spec = self._env.action_spec()
        self._lo = spec.minimum.astype(np.float64)
        self._hi = spec.maximum.astype(np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=spec.shape, dtype=np.float32)
        self._default_seed = seed
        self._started = False
        self._t = 0
        if seed is not None:
            self.action_space.seed(simulator_seed("dmcontrol", seed))

    def _obs(self, obs: dict) -> np.ndarray:
        if self.obs_layout == "full":
            return full_obs(obs)
        return np.concatenate(
            [np.asarray(obs[k], dtype=np.float32).ravel() for k in self._keys]
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and not self._started:
            seed = self._default_seed
        super().reset(seed=seed)
        if seed is not None:
            # the suite task draws initial states from its own RandomState: reseed that one
            self._env.task._random = np.random.RandomState(simulator_seed("dmcontrol", seed))
        self._started = True
        self._t = 0
        ts = self._env.reset()
        return self._obs(ts.observation), {}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(self.action_space.shape)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"dmcontrol: non-finite action {a}")
        a = np.clip(a, -1.0, 1.0)
        a = self._lo + (a + 1.0) * 0.5 * (self._hi - self._lo)
        ts = self._env.step(a)
        self._t += 1
        terminated = bool(ts.last() and ts.discount == 0.0)
        truncated = (not terminated) and self._t >= self.episode_length
        return self._obs(ts.observation), float(ts.reward or 0.0), terminated, truncated, {}

    def render(self):
        if self.render_mode is None:
            raise RuntimeError("dmcontrol: made with render=False; use make_env(..., render=True)")
        h, w = RENDER_HW
        return np.asarray(self._env.physics.render(height=h, width=w, camera_id=0), dtype=np.uint8)

    def close(self):
        self._env.close()


def make_dmcontrol(name: str, env_id: str | None = None, seed: int | None = None,
                   render: bool = False, *, obs_layout: str = "flat",
                   episode_length: int = EPISODE_LENGTH):
    domain, task = split_name(name, env_id)
    return DMControlEnv(domain, task, seed=seed, render=render, obs_layout=obs_layout,
                        episode_length=episode_length)
