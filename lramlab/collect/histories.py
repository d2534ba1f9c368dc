"""Dark-Room learning histories for Algorithm Distillation whose progress fits a 2-episode context.

AD (Laskin et al., 2022) can only distil the part of a learner's progress that its context shows.
With the paper's context of 2 episodes (App. D.4), a learner whose knowledge lives in slowly
accumulated weights (epsilon-greedy tabular Q-learning with an episode-count schedule, PPO) looks
the same from one window to the next: the model sees two random walks and cannot tell that the
next episode should be better (measured: notes/icl-research.md). This module's learner keeps its
knowledge where the next episode's context can read it:

- **Model-based Q-learning with a learned reward map**: the learner knows how it moves in the
  room (the transition table) but not where the goal is; it records the reward of every cell it
  has stepped into, and after every step runs `sweeps` Bellman sweeps
  Q(c, a) = R(c') + gamma * max_a' Q(c', a'), c' = next(c, a), with R = 0 for cells not yet seen.
  Before the goal is found all Q are 0, so the greedy action is a uniform tie-break (a random
  walk; `explore="novelty"` instead prefers, among the tied actions, moves into cells never
  visited in this history). The step that first reaches the goal makes staying there the best
  action: the learner stays, and from then on walks a shortest path to it (ties between shortest
  paths broken at random) -- so an episode that shows a reward at a cell is followed by
  episodes that go there. (A learner that also had to learn the moves, Dyna-Q with untried
  pairs at 0, never tries "stay" on the goal once it knows a loop through it: it oscillates.)
- **Exploration decays with successes**: epsilon = max(eps_end, eps_start * eps_decay ** k), k the
  number of earlier episodes of this history that reached the goal. The noise of the last
  episode (and its return) tells where in the history a window is, so improvement from one
  episode to the next is visible within 2 episodes (an episode-count schedule is not: before
  the first success it changes nothing that can be seen).

`iter_model_based_histories(goals, n_episodes, seed, cfg)` steps G goals in lock-step in numpy
and yields one episode of every goal at a time, like `lramlab.collect.qlearning.iter_darkroom_histories`;
each goal's history depends only on (seed, goal, config).

Shape letters: G goals, S = 100 cells, A = 5 actions, T = 100 timesteps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from lramlab.envs import darkroom as dr

EXPLORE_MODES = ("random", "novelty")
ALGORITHM = ("model-based Q-learning (known moves, learned reward map, value iteration), "
             "epsilon-greedy decayed per successful episode")


@dataclass
class ModelBasedConfig:
    """The model-based Q-learner of this module (`--policy mbq:<field>=<value>,...`)."""

    gamma: float = 0.9            # discount of the value sweeps
    eps_start: float = 0.8        # epsilon until the first successful episode ...
    eps_decay: float = 0.9        # ... times this per successful episode
    eps_end: float = 0.0          # floor
    sweeps: int = 2               # Bellman sweeps of the learned model after every step
    explore: str = "random"       # before/besides the goal: "random" tie-breaks | "novelty" (unvisited cells first)
    subsample: int = 1            # keep every k-th episode of the history (AD's subsampling; 1: all)

    def __post_init__(self):
        if not 0 <= self.gamma < 1:
            raise ValueError(f"mbq: gamma must be in [0, 1), got {self.gamma}")
        for name in ("eps_start", "eps_decay", "eps_end"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1):
                raise ValueError(f"mbq: {name} must be in [0, 1], got {v!r}")
        if int(self.sweeps) < 1:
            raise ValueError(f"mbq: sweeps must be >= 1, got {self.sweeps}")
        if self.explore not in EXPLORE_MODES:
            raise ValueError(f"mbq: explore={self.explore!r}; expected one of {', '.join(EXPLORE_MODES)}")
        if int(self.subsample) < 1:
            raise ValueError(f"mbq: subsample must be >= 1, got {self.subsample}")

    def epsilon(self, successes: np.ndarray) -> np.ndarray:
        """(G,) epsilon of goals with `successes` earlier successful episodes each."""
        return np.maximum(self.eps_end, self.eps_start * self.eps_decay ** np.asarray(successes, dtype=np.float64))


def transition_table() -> np.ndarray:
    """(S, A) next cell of every (cell, action), cells numbered y * SIZE + x (from DarkRoomVec)."""
    S, A = dr.SIZE * dr.SIZE, dr.N_ACTIONS
    probe = dr.DarkRoomVec([(0, 0)] * S * A, max_steps=1)
    probe.reset()
    probe.pos = np.array([(c % dr.SIZE, c // dr.SIZE) for c in range(S) for _ in range(A)])
    probe.step(np.tile(np.arange(A), S))
    return (probe.pos[:, 1] * dr.SIZE + probe.pos[:, 0]).reshape(S, A)


def iter_model_based_histories(goals: Sequence[Sequence[int]], n_episodes: int, seed: int = 0,
                               config: ModelBasedConfig | None = None,
                               history: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Yield the stored episodes of G model-based Q-learners (one per goal), in learning order.

    Each item: ``{"states": (G, T, 2) float32, "actions": (G, T) int64, "rewards": (G, T) float32,
    "success": (G, T) bool, "epsilon": (G,) float, "index": int}`` -- `index` is the episode's
    number in the full history (with `subsample` k, episodes 0, k, 2k, ... are yielded,
    `n_episodes` of them). `history` numbers independent learners of the same goal and seed.
    """
    cfg = config or ModelBasedConfig()
    goals = [dr.parse_goal(g) for g in goals]
    n_episodes = int(n_episodes)
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    G, T, S, A = len(goals), dr.EPISODE_LENGTH, dr.SIZE * dr.SIZE, dr.N_ACTIONS
    nxt = transition_table()                                  # (S, A)
    goal_cell = np.array([y * dr.SIZE + x for x, y in goals])  # (G,)
    rngs = [np.random.default_rng([int(seed), int(g[0]), int(g[1]), 7, int(history)]) for g in goals]
    visited = np.zeros((G, S), dtype=bool)
    R = np.zeros((G, S), dtype=np.float64)        # learned reward of stepping into a cell (0: unseen)
    V = np.zeros((G, S), dtype=np.float64)        # max_a Q(c, a)
    successes = np.zeros(G, dtype=np.int64)
    rows = np.arange(G)
    k = int(cfg.subsample)
    for i in range(n_episodes * k):
        eps = cfg.epsilon(successes)                           # fixed within the episode
        U = np.stack([r.random((T, 2 + A)) for r in rngs], axis=1)  # (T, G, 2 + A)
        cells = np.empty((T + 1, G), dtype=np.int64)
        actions = np.empty((T, G), dtype=np.int64)
        c = np.zeros(G, dtype=np.int64)
        cells[0] = c
        visited[rows, c] = True
        for t in range(T):
            w = R + cfg.gamma * V                               # (G, S) value of arriving in a cell
            q = w[rows[:, None], nxt[c]]                        # (G, A)
            score = (q >= q.max(axis=1, keepdims=True) - 1e-12) * (1.0 + U[t, :, 2:])  # random tie-break
            if cfg.explore == "novelty":  # among the best, prefer moves into never-visited cells
                score = score + 2.0 * (score > 0) * ~visited[rows[:, None], nxt[c]]
            greedy = np.argmax(score, axis=1)
            rand_a = np.minimum((U[t, :, 1] * A).astype(np.int64), A - 1)
            a = np.where(U[t, :, 0] < eps, rand_a, greedy)
            c2 = nxt[c, a]
            visited[rows, c2] = True
            R[rows, c2] = c2 == goal_cell
            for _ in range(int(cfg.sweeps)):  # value iteration on the learned reward map
                V = (R + cfg.gamma * V)[:, nxt].max(axis=2)
            actions[t] = a
            cells[t + 1] = c2
            c = c2
        for _ in range(4 * dr.SIZE):  # between episodes: plan to convergence (paths are < 2 * SIZE long)
            V = (R + cfg.gamma * V)[:, nxt].max(axis=2)
        rewards = cells[1:].T == goal_cell[:, None]             # (G, T)
        successes += rewards.any(axis=1)
        if i % k == 0:
            cur = cells[:-1].T
            states = np.stack([cur % dr.SIZE, cur // dr.SIZE], axis=-1).astype(np.float32)
            yield {"states": states, "actions": actions.T.copy(), "rewards": rewards.astype(np.float32),
                   "success": rewards, "epsilon": eps, "index": i}


def model_based_histories(goals: Sequence[Sequence[int]], n_episodes: int, seed: int = 0,
                          config: ModelBasedConfig | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """All histories at once: ``states (G, N, T, 2)``, ``actions (G, N, T)``, ``rewards (G, N, T)``,
    ``returns (G, N)``, ``epsilon (G, N)``."""
    it = iter_model_based_histories(goals, n_episodes, seed, config)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=int(n_episodes), desc="model-based Q histories", unit="ep")
    eps = list(it)
    out = {k: np.stack([e[k] for e in eps], axis=1) for k in ("states", "actions", "rewards", "epsilon")}
    out["returns"] = out["rewards"].sum(axis=2)
    return out


def history_source(spec: str, episodes: int) -> tuple[dict, dict, Callable]:
    """For `lramlab data generate --policy mbq[:key=value,...]` (ModelBasedConfig fields, plus
    ``histories=H``: the `episodes` files of a task are H learners of episodes / H episodes each).

    Returns (policy_config for meta.json, extra meta.json keys, iter_history(goal, seed) -> the
    store-ready episodes of the task in file order).
    """
    from dataclasses import asdict, fields

    kind, _, rest = spec.partition(":")
    if kind != "mbq":
        raise ValueError(f"{spec!r} is not an mbq spec")
    types = {f.name: f.type for f in fields(ModelBasedConfig)}
    kw: dict = {}
    H = 1
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, val = (x.strip() for x in item.partition("="))
        if not eq or (key not in types and key != "histories"):
            raise ValueError(f"policy {spec!r}: bad option {item!r}; expected key=value with key in "
                             f"{', '.join(list(types) + ['histories'])}")
        try:
            if key == "histories":
                H = int(val)
            else:
                kw[key] = val if types[key] in ("str", str) else int(val) if types[key] in ("int", int) else float(val)
        except ValueError:
            raise ValueError(f"policy {spec!r}: {key}={val!r} is not a number") from None
    cfg = ModelBasedConfig(**kw)
    if H < 1 or int(episodes) % H:
        raise ValueError(f"policy {spec!r}: histories={H} must be >= 1 and divide --episodes {episodes}")
    n = int(episodes) // H

    def iter_history(goal, seed: int) -> Iterator[dict[str, np.ndarray]]:
        for h in range(H):
            for ep in iter_model_based_histories([goal], n, seed, cfg, history=h):
                yield {"states": ep["states"][0], "actions": ep["actions"][0], "rewards": ep["rewards"][0],
                       "dones": np.zeros(ep["rewards"].shape[1], dtype=bool), "success": ep["success"][0]}

    policy_config = {"algorithm": ALGORITHM, **asdict(cfg)}
    extra = {"history_episodes": n, "histories": H,
             "episode_seeds": "learner h of a goal: numpy default_rng([seed, goal_x, goal_y, 7, h])"}
    return policy_config, extra, iter_history


def write_model_based_histories(out, goals: Sequence[Sequence[int]], n_episodes: int, seed: int = 0,
                                config: ModelBasedConfig | None = None, pack: bool = True,
                                progress: bool = True, histories: int = 1) -> list:
    """Generate the goals' histories together and write them to the store under `out`
    (``out/darkroom/goal-X-Y/episode_*.hdf5`` + meta.json + stats.json [+ packed.hdf5]).

    `histories` H > 1 writes H independent learners per goal one after the other (episode files
    h * n_episodes + i); meta.json's ``history_episodes`` = n_episodes tells
    `lramlab.icl.HistoryDataset` where one history ends, so no window spans two.

    A task directory that already holds a history with the same meta is kept as it is (resumable
    at the granularity of the whole batch of goals: histories are generated in lock-step).
    Returns the task directories.
    """
    import json
    from dataclasses import asdict
    from pathlib import Path

    from lramlab.data.store import StoreWriter, atomic_write_text, list_episode_files, pack_task, write_stats

    cfg = config or ModelBasedConfig()
    goals = [dr.parse_goal(g) for g in goals]
    dirs = [Path(out) / "darkroom" / dr.task_name(g).split("/")[1] for g in goals]
    H = int(histories)
    if H < 1:
        raise ValueError(f"histories must be >= 1, got {histories}")
    metas = [{"task": dr.task_name(g), "policy": "mbq", "seed": int(seed), "episodes": int(n_episodes) * H,
              "history_episodes": int(n_episodes), "histories": H,
              "generator": "lramlab.collect.histories",
              "policy_config": {"algorithm": ALGORITHM, **asdict(cfg)},
              "episode_seeds": "learner h of a goal: numpy default_rng([seed, goal_x, goal_y, 7, h])"}
             for g in goals]
    done = []
    for d, m in zip(dirs, metas):
        ok = (d / "meta.json").is_file() and json.loads((d / "meta.json").read_text()) == m \
            and len(list_episode_files(d)) == int(n_episodes) * H
        done.append(ok)
    todo = [i for i, ok in enumerate(done) if not ok]
    if todo:
        writers = []
        for i in todo:
            dirs[i].mkdir(parents=True, exist_ok=True)
            for f in list_episode_files(dirs[i]):  # a different or partial history: replace it
                f.unlink()
            for name in ("packed.hdf5", "stats.json", "meta.json"):
                (dirs[i] / name).unlink(missing_ok=True)
            writers.append(StoreWriter(dirs[i], task=metas[i]["task"]))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(n_episodes) * H, desc=f"mbq histories ({len(todo)} goals)", unit="ep")
        try:
            for h in range(H):
                for n, ep in enumerate(iter_model_based_histories([goals[i] for i in todo], n_episodes, seed, cfg, h)):
                    if bar is not None:
                        bar.update(1)
                    for j, w in enumerate(writers):
                        w.write(h * int(n_episodes) + n, {"states": ep["states"][j], "actions": ep["actions"][j],
                                    "rewards": ep["rewards"][j], "success": ep["success"][j],
                                    "dones": np.zeros(ep["rewards"].shape[1], dtype=bool)})
        finally:
            for w in writers:
                w.close()
            if bar is not None:
                bar.close()
        for j, i in enumerate(todo):
            write_stats(dirs[i], summaries=writers[j].summaries)
            atomic_write_text(dirs[i] / "meta.json", json.dumps(metas[i], indent=1, sort_keys=True))
    if pack:
        for d in dirs:
            pack_task(d)
    return dirs


__all__ = ["EXPLORE_MODES", "ModelBasedConfig", "iter_model_based_histories", "model_based_histories",
           "history_source", "transition_table", "write_model_based_histories"]
