"""Small gymnasium wrappers shared by the domain adapters.

Shape letters: H, W image height/width; D observation dims.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _gym():
    from lramlab._optional import require

    return require("gymnasium", "environments")


gym = _gym()


#: Seeds each simulator accepts, [0, limit): procgen's `rand_seed` (its level option) is an int32
#: the C++ side asserts < 2^31; dm_control's suite draws from numpy RandomState (< 2^32). ALE,
#: Meta-World, robosuite and Dark-Room seed numpy Generators / SeedSequences (any int >= 0).
#: `lramlab data generate` derives episode seeds in [0, 2^32), so they are folded here, the one
#: place every adapter maps a seed before its simulator sees it.
SEED_LIMITS: dict[str, int] = {"procgen": 2**31, "dmcontrol": 2**32}


def simulator_seed(domain: str, seed: int | None) -> int | None:
    """`seed` mapped into `domain`'s simulator range (``seed % limit``); None stays None."""
    if seed is None:
        return None
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"{domain}: seed {seed} must be >= 0")
    limit = SEED_LIMITS.get(domain)
    return seed % limit if limit else seed


class DefaultSeed(gym.Wrapper):
    """Use `make_env`'s seed on the first `reset()` that has none, and seed the action space.

    Why: code that only calls `env.reset()` (vectorisers, rollout loops) must still get the
    reproducible first episode that `make_env(task, seed=s)` promises.
    """

    def __init__(self, env, seed: int | None):
        super().__init__(env)
        self._default_seed = seed
        self._first = True
        if seed is not None:
            self.env.action_space.seed(int(seed))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._first:
            seed = self._default_seed
        self._first = False
        return self.env.reset(seed=seed, options=options)


class Float32Obs(gym.ObservationWrapper):
    """Flat float32 observations with an unbounded Box of the same shape (sims give float64)."""

    def __init__(self, env):
        super().__init__(env)
        shape = env.observation_space.shape
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)

    def observation(self, observation):
        return np.asarray(observation, dtype=np.float32)


class ChannelFirstGray(gym.ObservationWrapper):
    """(H, W) uint8 grayscale -> (1, H, W): the model's image layout (tokenizer.IMAGE_SHAPE)."""

    def __init__(self, env):
        super().__init__(env)
        h, w = env.observation_space.shape[:2]
        self.observation_space = gym.spaces.Box(0, 255, shape=(1, h, w), dtype=np.uint8)

    def observation(self, observation):
        return np.asarray(observation, dtype=np.uint8)[None]


class SignReward(gym.Wrapper):
    """Clip rewards to {-1, 0, +1} (DQN / LRAM Atari recipe); the raw reward stays in info."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["raw_reward"] = float(reward)
        return obs, float(np.sign(reward)), terminated, truncated, info


class LegacyToGymnasium(gym.Env):
    """Adapt an old-gym style env (reset -> obs, step -> 4-tuple) to the gymnasium API.

    Used for simulators that still speak the gym<0.26 API (CompoSuite's own wrapper, procgen's
    `gym.make("procgen:...")`). Spaces are converted to gymnasium spaces; seeding goes through
    `seed_fn(seed)`, called before the inner reset, when given (legacy envs seed differently).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, env, seed_fn=None, render_fn=None):
        self.env = env
        self._seed_fn = seed_fn
        self._render_fn = render_fn
        self.observation_space = convert_space(env.observation_space)
        self.action_space = convert_space(env.action_space)
        self.render_mode = "rgb_array" if render_fn is not None else None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None and self._seed_fn is not None:
            self._seed_fn(int(seed))
        out = self.env.reset()
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            obs, info = out
        else:
            obs, info = out, {}
        return obs, dict(info)

    def step(self, action):
        out = self.env.step(action)
        if len(out) == 5:
            obs, reward, terminated, truncated, info = out
        elif len(out) == 4:
            obs, reward, done, info = out
            # old gym marks time-limit ends in info; anything else is a real terminal state
            truncated = bool(info.get("TimeLimit.truncated", False))
            terminated = bool(done) and not truncated
        else:
            raise ValueError(f"LegacyToGymnasium: step() returned {len(out)} values, expected 4 or 5")
        return obs, float(reward), bool(terminated), bool(truncated), dict(info)

    def render(self):
        if self._render_fn is None:
            raise RuntimeError("this env was made with render=False; use make_env(..., render=True)")
        return self._render_fn()

    def close(self):
        close = getattr(self.env, "close", None)
        if close is not None:
            close()


def convert_space(space: Any):
    """Old-gym Box/Discrete -> gymnasium (gymnasium spaces pass through)."""
    if isinstance(space, gym.spaces.Space):
        return space
    kind = type(space).__name__
    if kind == "Box":
        return gym.spaces.Box(np.asarray(space.low), np.asarray(space.high), dtype=space.dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(int(space.n))
    raise TypeError(f"cannot convert legacy space {space!r} (only Box and Discrete)")


def check_rgb_frame(frame: Any, where: str) -> np.ndarray:
    """An (H, W, 3) uint8 frame or a ValueError naming `where` and what came back."""
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"{where}: render gave shape {arr.shape} dtype {arr.dtype}, expected (H, W, 3) uint8"
        )
    return arr
