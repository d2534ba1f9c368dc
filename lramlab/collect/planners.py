"""Look-ahead planners that act through the simulator's saved states (Procgen).

PPO needs tens of millions of Procgen steps; a planner needs none. Procgen's gym3 env saves and
restores its whole game state (``get_state`` / ``set_state``: level, positions, the game's RNG),
so at every step the planner tries each candidate action from the current state with a few short
rollouts and takes the best:

    value(a) = max over R rollouts of  sum_t gamma^t r_t  - gamma^T death_penalty [died at step T < horizon]

Rollout 0 repeats `a` for the whole horizon; the others take `a`, then candidates drawn from the
planner's own RNG (reseeded by ``reset(seed)``, so an episode depends on its seed only). Procgen's
dynamics are deterministic given the state, so the max over rollouts is the value of the best
continuation found. "Died" = the episode ended before the horizon without ``level_complete``.
Ties are broken by the planner's RNG (without reward in sight it wanders instead of drifting
into a corner).

    lramlab data generate --task procgen/bigfish --episodes 10 --policy planner:horizon=20 --out data

Spec ``planner[:key=value,...]`` with the fields of :class:`PlannerConfig`; ``actions`` is a
dot-separated list of procgen action indices (``1.4.7.9``), empty for the game's default set
(`GAME_ACTIONS`). Procgen's 15 actions: 0 left-down, 1 left, 2 left-up, 3 down, 4 none, 5 up,
6 right-down, 7 right, 8 right-up, 9 D (fire / the game's key), 10 A, 11 W, 12 S, 13 Q, 14 E.

The planner steps the simulator the policy acts in: ``bind(env)`` is called by the generator
before the first episode (`lramlab.collect.generate`), and the real env's state is restored
before the chosen action is taken there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lramlab.collect.base import Policy

#: Procgen games whose default behaviour policy is the planner (data min-max score >= random + 0.15,
#: docs/results/data6-cpu/quality.json)
PLANNER_GAMES: tuple[str, ...] = ("bigfish", "starpilot", "fruitbot")
#: the candidate actions per game (others: all 15); duplicates of a game's effective moves left out
GAME_ACTIONS: dict[str, tuple[int, ...]] = {
    "bigfish": (0, 1, 2, 3, 4, 5, 6, 7, 8),       # swim in 8 directions or stay
    "chaser": (1, 3, 4, 5, 7),                      # maze: 4 directions or stay
    "fruitbot": (1, 4, 7, 9),                       # left, stay, right, throw a key
    "starpilot": (1, 3, 4, 5, 7, 9, 10),            # 4 directions, stay, fire forward / backward
    "bossfight": (1, 3, 4, 5, 7, 9),                # 4 directions, stay, fire
    "dodgeball": (1, 3, 4, 5, 7, 9),
    "coinrun": (1, 4, 5, 7, 8),
}


@dataclass
class PlannerConfig:
    """Look-ahead planner settings (see the module doc)."""

    horizon: int = 30             # steps per rollout, the first action included
    rollouts: int = 2             # rollouts per candidate action (the first repeats the action)
    gamma: float = 0.97           # discount inside a rollout: sooner rewards first
    death_penalty: float = 10.0   # subtracted when a rollout dies before its horizon
    actions: str = ""             # dot-separated action indices; "" = GAME_ACTIONS[game] or all 15

    def __post_init__(self):
        if int(self.horizon) < 1 or int(self.rollouts) < 1:
            raise ValueError(f"planner: horizon and rollouts must be >= 1, got {self.horizon}, {self.rollouts}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"planner: gamma must be in (0, 1], got {self.gamma}")
        if self.death_penalty < 0:
            raise ValueError(f"planner: death_penalty must be >= 0, got {self.death_penalty}")
        self.candidates("bigfish")  # validates `actions`

    def candidates(self, game: str) -> tuple[int, ...]:
        if not self.actions:
            return GAME_ACTIONS.get(game, tuple(range(15)))
        try:
            acts = tuple(int(a) for a in str(self.actions).split("."))
        except ValueError:
            acts = ()
        if not acts or not all(0 <= a < 15 for a in acts) or len(set(acts)) != len(acts):
            raise ValueError(f"planner: actions={self.actions!r}, expected distinct procgen action indices "
                             f"0..14 joined by '.', e.g. 1.4.7.9")
        return acts


class ProcgenPlanner(Policy):
    """Picks each action by look-ahead through procgen's saved states (module doc)."""

    def __init__(self, game: str, config: PlannerConfig | None = None):
        self.game = game
        self.cfg = config or PlannerConfig()
        self.actions = self.cfg.candidates(game)
        self.spec = "planner"
        self._sim = None
        self.reset(0)

    def bind(self, env) -> None:
        """The env the policy acts in (a `lramlab.envs.procgen.ProcgenEnv`, wrapped or not)."""
        inner = getattr(env, "unwrapped", env)
        if not hasattr(inner, "_env") or getattr(inner, "game", None) is None:
            raise ValueError(f"planner: needs a Procgen env (lramlab.envs.procgen.ProcgenEnv), got {type(inner).__name__}")
        if inner.game != self.game:
            raise ValueError(f"planner: made for {self.game}, bound to a {inner.game} env")
        self._env = inner

    def _rollout(self, first: int, rng: np.random.Generator | None) -> float:
        g, cfg = self._sim, self.cfg
        total, disc = 0.0, 1.0
        for t in range(int(cfg.horizon)):
            a = first if rng is None or t == 0 else self.actions[int(rng.integers(len(self.actions)))]
            g.act(np.array([a], dtype=np.int32))
            rew, _, done = g.observe()
            total += disc * float(rew[0])
            disc *= cfg.gamma
            if done[0]:
                if not g.get_info()[0].get("prev_level_complete", 0):
                    total -= cfg.death_penalty * disc  # discounted: dying later is less bad
                break
        return total

    def values(self) -> np.ndarray:
        """The value of each candidate action from the current state (the state is restored)."""
        self._sim = self._env._env
        state = self._sim.get_state()
        out = np.empty(len(self.actions))
        for i, a in enumerate(self.actions):
            best = -np.inf
            for r in range(int(self.cfg.rollouts)):
                self._sim.set_state(state)
                best = max(best, self._rollout(a, None if r == 0 else self.rng))
            out[i] = best
        self._sim.set_state(state)
        return out

    def act(self, obs):
        if getattr(self, "_env", None) is None:
            raise RuntimeError("planner: bind(env) before act(); lramlab data generate does this")
        v = self.values()
        best = np.flatnonzero(v >= v.max() - 1e-9)
        return int(self.actions[int(best[self.rng.integers(len(best))]) if len(best) > 1 else int(best[0])])

    def config(self) -> dict:
        from dataclasses import asdict

        return {"kind": "planner", "game": self.game, "candidates": list(self.actions), **asdict(self.cfg)}
