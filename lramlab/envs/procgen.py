"""Procgen adapter (App. B.7) on procgen2's gym3 env (module `procgen`), with the gymnasium API.

Observation (1, 64, 64) uint8: the native 64x64 RGB frame converted to grayscale (the paper
gray-scales for training efficiency). Action: an int in [0, 15). Defaults from the LRAM
multi-domain config (reference/domain_specs.yaml: procgen): distribution_mode "easy",
num_levels 200, start_level 0 (the data was generated on levels 0..199), no extra time limit
(the games end their own episodes). make_env passes a TaskSpec's `extra` values for
`distribution_mode`, `num_levels`, `start_level`; `max_episode_steps` adds a TimeLimit.

Seeding: procgen has no `reset(seed=...)`; the level sequence comes from `rand_seed` given when
the gym3 env is built. `reset(seed=s)` therefore rebuilds it with rand_seed=s (~0.4 s; s mod 2^31, procgen's range:
`lramlab.envs.wrappers.simulator_seed`);
`reset()` after an episode ended reuses the episode procgen already started (gym3 auto-resets),
and `reset()` in mid-episode rebuilds with a seed drawn from the env's seeded RNG.
"""
from __future__ import annotations

import numpy as np

from lramlab._optional import require
from lramlab.envs.wrappers import simulator_seed

N_ACTIONS = 15
GAMES = (
    "bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot",
    "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot",
)
DEFAULTS = {"distribution_mode": "easy", "num_levels": 200, "start_level": 0}

gym = require("gymnasium", "Procgen environments")


def _gray(rgb: np.ndarray) -> np.ndarray:
    cv2 = require("cv2", "Procgen grayscale observations")
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[None]  # (1, 64, 64)


class ProcgenEnv(gym.Env):
    """One Procgen game as a gymnasium env (see module docstring for seeding)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        game: str,
        seed: int | None = None,
        render: bool = False,
        distribution_mode: str = DEFAULTS["distribution_mode"],
        num_levels: int = DEFAULTS["num_levels"],
        start_level: int = DEFAULTS["start_level"],
    ):
        if game not in GAMES:
            raise ValueError(f"procgen: unknown game {game!r}; expected one of {list(GAMES)}")
        if distribution_mode not in ("easy", "hard", "extreme", "memory", "exploration"):
            raise ValueError(f"procgen: distribution_mode={distribution_mode!r}, expected easy|hard|"
                             "extreme|memory|exploration")
        if num_levels < 0 or start_level < 0:
            raise ValueError(f"procgen: num_levels={num_levels}, start_level={start_level}, "
                             "expected both >= 0")
        self._procgen = require("procgen", "Procgen environments")
        self.game = game
        self.kwargs = dict(distribution_mode=distribution_mode, num_levels=int(num_levels),
                           start_level=int(start_level))
        self.render_mode = "rgb_array" if render else None
        self.observation_space = gym.spaces.Box(0, 255, shape=(1, 64, 64), dtype=np.uint8)
        self.action_space = gym.spaces.Discrete(N_ACTIONS)
        self._default_seed = seed
        self._env = None
        self._pending: tuple[np.ndarray, dict] | None = None  # first obs of an auto-reset episode
        self._frame = None
        if seed is not None:
            self.action_space.seed(int(seed))

    def _build(self, rand_seed: int) -> tuple[np.ndarray, dict]:
        if self._env is not None:
            self._env.close()
        self._env = self._procgen.ProcgenGym3Env(
            num=1, env_name=self.game, rand_seed=simulator_seed("procgen", rand_seed),
            render_mode="rgb_array" if self.render_mode else None, **self.kwargs,
        )
        _, ob, _ = self._env.observe()
        return _gray(ob["rgb"][0]), self._info()

    def _info(self) -> dict:
        raw = self._env.get_info()[0]
        if self.render_mode:
            self._frame = raw.get("rgb")
        return {k: v for k, v in raw.items() if k != "rgb"}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._env is None:
            seed = self._default_seed
        super().reset(seed=seed)
        if seed is not None:
            obs, info = self._build(seed)
        elif self._pending is not None:
            obs, info = self._pending
        else:
            obs, info = self._build(int(self.np_random.integers(2**31 - 1)))
        self._pending = None
        return obs, info

    def step(self, action):
        if self._env is None:
            raise RuntimeError("procgen: call reset() before step()")
        a = int(action)
        if not 0 <= a < N_ACTIONS:
            raise ValueError(f"procgen: action {action!r} out of range [0, {N_ACTIONS})")
        self._env.act(np.array([a], dtype=np.int32))
        rew, ob, first = self._env.observe()
        info = self._info()
        obs = _gray(ob["rgb"][0])
        terminated = bool(first[0])
        if terminated:
            # gym3 has already started the next episode: keep its first frame for reset(); the
            # step returns that frame too, as procgen's own gym wrapper does
            info["level_complete"] = bool(info.get("prev_level_complete", 0))
            self._pending = (obs, {k: v for k, v in info.items() if k != "level_complete"})
        return obs, float(rew[0]), terminated, False, info

    def render(self):
        if self.render_mode is None:
            raise RuntimeError("procgen: made with render=False; use make_env(..., render=True)")
        return None if self._frame is None else np.asarray(self._frame, dtype=np.uint8)

    def close(self):
        if self._env is not None:
            self._env.close()
            self._env = None


def make_procgen(name: str, env_id: str | None = None, seed: int | None = None,
                 render: bool = False, *, distribution_mode: str = DEFAULTS["distribution_mode"],
                 num_levels: int = DEFAULTS["num_levels"], start_level: int = DEFAULTS["start_level"],
                 max_episode_steps: int | None = None):
    """Build one Procgen game (`name` like `coinrun`; env_id like `procgen:procgen-coinrun-v0`)."""
    game = name
    if env_id:
        game = env_id.removeprefix("procgen:").removeprefix("procgen-").split("-v")[0]
    max_steps = max_episode_steps
    env = ProcgenEnv(game, seed=seed, render=render, distribution_mode=distribution_mode,
                     num_levels=num_levels, start_level=start_level)
    if max_steps:
        env = gym.wrappers.TimeLimit(env, int(max_steps))
    return env
