"""Dark-Room: a 10x10 grid with an invisible goal (paper App. D.4; reference/darkroom.yaml).

Our own implementation (no MiniHack). Conventions, fixed here and used everywhere in lramlab:

- Coordinates are ``(x, y)``: ``x`` is the column (grows to the right), ``y`` the row (grows
  downwards). The agent starts at ``(0, 0)``, the top-left corner.
- Actions (5): ``0`` up (y-1), ``1`` right (x+1), ``2`` down (y+1), ``3`` left (x-1), ``4`` stay.
  A move into a wall leaves the agent where it is.
- Observation: the agent's own ``(x, y)`` as a float32 array of shape (2,). The goal is not observed.
- Reward: +1 for every step *after which* the agent stands on the goal (the "Dense" MiniHack variant
  that the paper's ICL experiments use); the episode does not end at the goal.
- Episodes last exactly 100 steps and end with ``truncated=True`` (never ``terminated``).
  Max return for goal (x, y) is ``101 - (x + y)`` (100 for the goal at the start cell).
- Tasks are named ``darkroom/goal-X-Y``; the 80 train and 20 hold-out goals are the ones of
  ml-jku/LRAM (``np.random.RandomState(43)`` permutation of the 100 cells, first 80 / last 20).

Shape letters: G goals (parallel environments in :class:`DarkRoomVec`).
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import numpy as np

SIZE = 10
N_ACTIONS = 5
EPISODE_LENGTH = 100
START = (0, 0)
ACTION_NAMES = ("up", "right", "down", "left", "stay")
#: (dx, dy) per action; y grows downwards, so "up" is dy = -1.
ACTION_DELTAS = np.array([[0, -1], [1, 0], [0, 1], [-1, 0], [0, 0]], dtype=np.int64)

# ml-jku/LRAM configs (reference/darkroom.yaml: goals.train_goals / goals.eval_goals), as (x, y).
TRAIN_GOALS: tuple[tuple[int, int], ...] = (
    (2, 0), (0, 2), (1, 5), (2, 2), (5, 7), (9, 1), (6, 9), (5, 5), (1, 1), (7, 9),
    (0, 9), (3, 8), (8, 5), (0, 0), (8, 9), (1, 3), (0, 5), (0, 1), (9, 5), (8, 3),
    (4, 4), (1, 2), (7, 8), (9, 4), (3, 7), (9, 2), (9, 7), (5, 6), (6, 3), (4, 6),
    (0, 8), (3, 3), (4, 5), (1, 9), (1, 4), (9, 3), (7, 3), (3, 9), (2, 4), (0, 6),
    (6, 2), (2, 3), (1, 8), (4, 2), (8, 0), (8, 6), (3, 1), (6, 7), (2, 7), (1, 0),
    (4, 0), (7, 0), (9, 6), (8, 8), (2, 6), (5, 4), (7, 1), (2, 9), (2, 5), (4, 3),
    (4, 1), (7, 2), (0, 3), (8, 1), (5, 3), (7, 7), (6, 1), (0, 7), (2, 8), (9, 9),
    (5, 2), (4, 8), (8, 2), (6, 0), (7, 4), (3, 2), (4, 7), (7, 6), (3, 6), (0, 4),
)
HOLDOUT_GOALS: tuple[tuple[int, int], ...] = (
    (9, 0), (8, 4), (3, 4), (6, 5), (7, 5), (5, 0), (3, 5), (9, 8), (8, 7), (3, 0),
    (6, 6), (5, 9), (1, 7), (5, 1), (1, 6), (5, 8), (2, 1), (4, 9), (6, 4), (6, 8),
)

_TASK_RE = re.compile(r"^(?:darkroom/)?goal-(\d+)-(\d+)$")


def goal_split_rule(seed: int = 43) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Recompute the train / hold-out goals the way ml-jku/LRAM does (make_train_test_pos)."""
    cells = [(i, j) for i in range(SIZE) for j in range(SIZE)]
    perm = np.random.RandomState(seed).permutation(len(cells))
    ordered = [cells[k] for k in perm]
    return ordered[:80], ordered[80:]


def task_name(goal: Sequence[int]) -> str:
    """``(x, y)`` -> ``"darkroom/goal-x-y"``."""
    x, y = (int(v) for v in goal)
    return f"darkroom/goal-{x}-{y}"


def goal_split(goal: Sequence[int]) -> str:
    """"train" or "holdout" for a goal cell."""
    g = (int(goal[0]), int(goal[1]))
    return "train" if g in TRAIN_GOALS else "holdout"


def all_tasks(split: str | None = None) -> list[str]:
    """Task ids of the 80 train goals, then the 20 hold-out goals (or one split)."""
    if split not in (None, "train", "holdout"):
        raise ValueError(f"split must be None, 'train' or 'holdout', got {split!r}")
    goals = (TRAIN_GOALS if split != "holdout" else ()) + (HOLDOUT_GOALS if split != "train" else ())
    return [task_name(g) for g in goals]


def parse_goal(task: Any) -> tuple[int, int]:
    """Goal ``(x, y)`` of a Dark-Room task: a TaskSpec, ``"darkroom/goal-X-Y"``, ``"goal-X-Y"`` or a pair."""
    if hasattr(task, "domain") and hasattr(task, "name"):  # a manifests.TaskSpec
        if task.domain != "darkroom":
            raise ValueError(f"task {task.id!r} is not a Dark-Room task (domain {task.domain!r})")
        task = task.name
    if isinstance(task, str):
        m = _TASK_RE.match(task.strip())
        if not m:
            raise ValueError(
                f"Dark-Room task {task!r} not understood: expected 'darkroom/goal-X-Y' with 0 <= X, Y < {SIZE}"
            )
        goal = (int(m.group(1)), int(m.group(2)))
    else:
        try:
            goal = (int(task[0]), int(task[1]))
            if len(task) != 2:
                raise TypeError
        except (TypeError, IndexError, ValueError):
            raise ValueError(f"Dark-Room goal {task!r} not understood: expected an (x, y) pair") from None
    if not all(0 <= v < SIZE for v in goal):
        raise ValueError(f"Dark-Room goal {goal} is outside the {SIZE}x{SIZE} grid (0 <= x, y < {SIZE})")
    return goal


def max_return(goal: Sequence[int], episode_length: int = EPISODE_LENGTH) -> int:
    """Best achievable return: walk the Manhattan distance, then stay on the goal."""
    d = int(goal[0]) + int(goal[1])  # a goal on the start cell is rewarded on all steps, not one more
    return min(episode_length, max(0, episode_length - d + 1))


def render_grid(pos: Sequence[int], goal: Sequence[int] | None, cell: int = 16) -> np.ndarray:
    """RGB image (H, W, 3) uint8 of the room: agent in yellow, goal (for viewing only) in green."""
    img = np.full((SIZE * cell, SIZE * cell, 3), 24, dtype=np.uint8)
    img[::cell, :, :] = 60  # grid lines
    img[:, ::cell, :] = 60
    m = max(2, cell // 8)
    if goal is not None:
        gx, gy = int(goal[0]), int(goal[1])
        img[gy * cell + m:(gy + 1) * cell - m + 1, gx * cell + m:(gx + 1) * cell - m + 1] = (40, 170, 60)
    ax, ay = int(pos[0]), int(pos[1])
    m2 = m + max(1, cell // 8)
    img[ay * cell + m2:(ay + 1) * cell - m2 + 1, ax * cell + m2:(ax + 1) * cell - m2 + 1] = (240, 210, 40)
    return img


try:  # gymnasium is optional for the numpy parts (DarkRoomVec, learning histories)
    import gymnasium as _gym

    _EnvBase = _gym.Env
except ImportError:  # pragma: no cover - exercised only without the envs extra
    _gym = None
    _EnvBase = object


class DarkRoom(_EnvBase):
    """Dark-Room as a gymnasium.Env (see the module docstring for the conventions)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, goal: Sequence[int] = (0, 0), max_steps: int = EPISODE_LENGTH,
                 render_mode: str | None = None, seed: int | None = None):
        if _gym is None:
            from lramlab._optional import require

            require("gymnasium", "the Dark-Room gymnasium environment")
        self.goal = parse_goal(goal)
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.max_steps = int(max_steps)
        self.render_mode = render_mode
        self.observation_space = _gym.spaces.Box(0.0, float(SIZE - 1), shape=(2,), dtype=np.float32)
        self.action_space = _gym.spaces.Discrete(N_ACTIONS)
        # make_env(seed=...) seeds the first reset() that does not pass its own seed
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)
        self._pos = np.array(START, dtype=np.int64)
        self._t = 0
        self._needs_reset = True

    @property
    def position(self) -> tuple[int, int]:
        return int(self._pos[0]), int(self._pos[1])

    def _obs(self) -> np.ndarray:
        return self._pos.astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)  # the dynamics are deterministic; this seeds np_random for callers
        self._pos = np.array(START, dtype=np.int64)
        self._t = 0
        self._needs_reset = False
        return self._obs(), {"goal": self.goal, "position": self.position}

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("Dark-Room: call reset() before step() (the episode has ended or not begun)")
        a = int(np.asarray(action).reshape(()))
        if not 0 <= a < N_ACTIONS:
            raise ValueError(f"Dark-Room action {action!r} is invalid: expected an int in [0, {N_ACTIONS})")
        self._pos = np.clip(self._pos + ACTION_DELTAS[a], 0, SIZE - 1)
        self._t += 1
        on_goal = self.position == self.goal
        truncated = self._t >= self.max_steps
        self._needs_reset = truncated
        info = {"goal": self.goal, "position": self.position, "success": on_goal}
        return self._obs(), float(on_goal), False, truncated, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return render_grid(self._pos, self.goal)


GYM_ID = "lramlab/DarkRoom-10x10-v0"  # the manifests' env_id: gymnasium.make(GYM_ID, goal=(x, y))
if _gym is not None and GYM_ID not in _gym.registry:
    _gym.register(GYM_ID, entry_point="lramlab.envs.darkroom:DarkRoom")


def make_darkroom(task: Any, seed: int | None = None, render: bool = False):
    """`make_env` entry for the darkroom domain: a :func:`DarkRoom` env for the task's goal.

    `seed` seeds the first ``reset()`` (and ``action_space.sample``); `render=True` sets
    ``render_mode="rgb_array"``.
    """
    return DarkRoom(goal=parse_goal(task), render_mode="rgb_array" if render else None, seed=seed)


class DarkRoomVec:
    """G Dark-Rooms stepped together in numpy (same dynamics as :func:`DarkRoom`; no gymnasium).

    All G episodes start and end together (fixed length), so there is no auto-reset: after the
    step that returns ``truncated`` all True, call :meth:`reset` again.
    """

    def __init__(self, goals: Iterable[Sequence[int]], max_steps: int = EPISODE_LENGTH):
        goals = [parse_goal(g) for g in goals]
        if not goals:
            raise ValueError("DarkRoomVec needs at least one goal")
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.goals = np.array(goals, dtype=np.int64)  # (G, 2)
        self.num_envs = len(goals)
        self.max_steps = int(max_steps)
        self.pos = np.zeros_like(self.goals)  # (G, 2)
        self.t = 0
        self._needs_reset = True

    def reset(self) -> np.ndarray:
        self.pos = np.zeros_like(self.goals)
        self.pos[:] = START
        self.t = 0
        self._needs_reset = False
        return self.pos.astype(np.float32)

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """actions (G,) ints -> obs (G, 2) float32, rewards (G,) float32, terminated (G,), truncated (G,), info."""
        if self._needs_reset:
            raise RuntimeError("DarkRoomVec: call reset() before step() (the episodes have ended or not begun)")
        a = np.asarray(actions)
        if a.shape != (self.num_envs,):
            raise ValueError(f"DarkRoomVec.step: actions must have shape ({self.num_envs},), got {a.shape}")
        if not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= N_ACTIONS:
            raise ValueError(f"DarkRoomVec.step: actions must be ints in [0, {N_ACTIONS}), got {a!r}")
        self.pos = np.clip(self.pos + ACTION_DELTAS[a], 0, SIZE - 1)
        self.t += 1
        on_goal = np.all(self.pos == self.goals, axis=1)
        truncated = np.full(self.num_envs, self.t >= self.max_steps)
        self._needs_reset = bool(truncated[0])
        return (self.pos.astype(np.float32), on_goal.astype(np.float32),
                np.zeros(self.num_envs, dtype=bool), truncated, {"success": on_goal})

    def render(self, i: int = 0) -> np.ndarray:
        return render_grid(self.pos[i], self.goals[i])
