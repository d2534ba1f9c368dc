"""Behaviour policies and learners that generate trajectories (`lramlab data generate --policy P`).

Policy specs (the string given to ``--policy``; recorded in meta.json with the resolved config):

- ``random`` -- uniform actions (discrete: each of the env's n actions; continuous: U[-1, 1]).
- ``noisy:<eps>[:<inner>]`` -- with probability eps per step a uniform random action, else the
  inner policy's (default inner: the domain's scripted expert, i.e. Meta-World only).
- ``expert`` / ``expert:noise=<std>`` -- Meta-World scripted expert
  (``metaworld.policies.Sawyer<Task>V3Policy``), with optional Gaussian action noise of that std
  (clipped to [-1, 1]) for mixed-quality data.
- ``checkpoint:<path>`` -- a torch checkpoint, one of (checked in this order):
  1. a PPO specialist written by :func:`train_ppo` (samples from its action distribution);
  2. a whole ``torch.nn.Module`` saved with ``torch.save(module, path)`` that maps a float32 obs
     batch ``(1, *obs_shape)`` (images as float 0..255) to either discrete logits ``(1, n)``
     (argmax is taken), continuous actions ``(1, act_dim)`` (clipped to [-1, 1]), or integer
     actions ``(1,)``;
  3. an lramlab model checkpoint (``lramlab.models.load_model``), run recurrently with the task's
     target return as the first return-to-go, greedy decoding.
  Loading uses ``torch.load(weights_only=False)`` (pickles): only load files you trust.
- ``ppo`` / ``ppo:steps=<n>,...`` -- train a PPO specialist from scratch (:class:`PPOConfig`
  fields), save it next to the data, then act with it as ``checkpoint:``.
- ``history`` / ``history:explore_episodes=<n>,...`` -- Dark-Room only: a tabular Q-learning learning
  history (:class:`QLearningConfig` fields), episodes in learning order (for Algorithm Distillation).

Shape letters: G goals (parallel Dark-Rooms), N episodes, T timesteps.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from lramlab.envs import darkroom as dr

# ============================================================================ spec parsing


def parse_spec(spec: str) -> tuple[str, str]:
    """``"kind:rest"`` -> ``(kind, rest)``; validates the kind."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"policy spec must be a non-empty string, got {spec!r}")
    kind, _, rest = spec.strip().partition(":")
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy {kind!r} in {spec!r}; expected one of {', '.join(POLICY_KINDS)}")
    return kind, rest


def _parse_kv(text: str, cls, spec: str) -> dict:
    """``"a=1,b=0.5"`` -> keyword arguments for dataclass `cls`, converted by the fields' types."""
    out: dict[str, Any] = {}
    if not text:
        return out
    names = {f.name: str(f.type) for f in fields(cls)}
    for item in text.split(","):
        key, eq, val = (x.strip() for x in item.partition("="))
        if not eq or key not in names:
            raise ValueError(f"policy {spec!r}: bad option {item!r}; expected key=value with key in "
                             f"{', '.join(names)}")
        typ = names[key]
        try:
            if val.lower() == "none" and "None" in typ:
                out[key] = None
            elif typ.startswith("bool"):
                if val.lower() not in ("1", "0", "true", "false"):
                    raise ValueError(val)
                out[key] = val.lower() in ("1", "true")
            elif typ.startswith("int"):
                f = float(val)
                if not f.is_integer():
                    raise ValueError(val)
                out[key] = int(f)
            elif typ.startswith("float"):
                out[key] = float(val)
            else:
                out[key] = val
        except ValueError:
            raise ValueError(f"policy {spec!r}: option {key}={val!r} is not a valid {typ}") from None
    return out


POLICY_KINDS = ("random", "noisy", "expert", "checkpoint", "ppo", "history", "mbq")  # mbq: lramlab.collect.histories


def default_policy(domain: str) -> str:
    """Default spec: Dark-Room -> learning history, Meta-World -> scripted expert, else random."""
    return {"darkroom": "history", "metaworld": "expert"}.get(domain, "random")


# ============================================================================ per-step policies


class Policy:
    """A per-step behaviour policy.

    ``reset(seed)`` at every episode start (policies with randomness reseed from it, so an episode
    depends only on its own seed); ``act(obs)`` returns an int (discrete) or a float32 (act_dim,)
    array in [-1, 1]; ``observe(reward)`` is called after every step (for return-conditioned models).
    """

    spec: str = ""

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs):  # pragma: no cover - abstract
        raise NotImplementedError

    def observe(self, reward: float) -> None:
        pass

    def config(self) -> dict:
        return {}


class RandomPolicy(Policy):
    def __init__(self, action_kind: str, action_dim: int):
        self.action_kind, self.action_dim = action_kind, int(action_dim)
        self.spec = "random"
        self.rng = np.random.default_rng(0)

    def act(self, obs):
        if self.action_kind == "discrete":
            return int(self.rng.integers(self.action_dim))
        return self.rng.uniform(-1.0, 1.0, size=self.action_dim).astype(np.float32)


class NoisyPolicy(Policy):
    """With probability `eps` a uniform random action, otherwise the inner policy's."""

    def __init__(self, inner: Policy, eps: float, action_kind: str, action_dim: int):
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"noisy: eps must be in [0, 1], got {eps}")
        self.inner, self.eps = inner, float(eps)
        self.random = RandomPolicy(action_kind, action_dim)
        self.spec = f"noisy:{eps}:{inner.spec}"

    def reset(self, seed: int) -> None:
        ss = np.random.SeedSequence(seed).spawn(2)
        self.rng = np.random.default_rng(ss[0])
        self.random.reset(int(ss[1].generate_state(1)[0]))
        self.inner.reset(seed)

    def act(self, obs):
        inner_action = self.inner.act(obs)  # always query: stateful inner policies stay in step
        if self.rng.random() < self.eps:
            return self.random.act(obs)
        return inner_action

    def observe(self, reward: float) -> None:
        self.inner.observe(reward)

    def config(self) -> dict:
        return {"eps": self.eps, "inner": self.inner.config()}


# ---------------------------------------------------------------------------- Meta-World experts


def metaworld_policy_class(task_name: str):
    """Meta-World task name (``reach-v2`` / ``reach`` / ``reach-v3``) -> its scripted policy class."""
    from lramlab._optional import require

    mp = require("metaworld.policies", "Meta-World scripted experts")
    base = task_name.split("/")[-1]
    base = base[:-3] if base[-3:] in ("-v1", "-v2", "-v3") else base
    key = f"{base}-v3"
    cls = mp.ENV_POLICY_MAP.get(key)
    if cls is None:
        raise ValueError(f"no Meta-World scripted expert for {task_name!r} (looked up {key!r}); "
                         f"known: {', '.join(sorted(mp.ENV_POLICY_MAP))}")
    return cls


@dataclass
class ExpertConfig:
    noise: float = 0.0  # std of Gaussian action noise added to the expert's action (then clipped)

    def __post_init__(self):
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise ValueError(f"expert: noise must be a finite std >= 0, got {self.noise}")


class MetaWorldExpert(Policy):
    def __init__(self, task_name: str, config: ExpertConfig | None = None):
        self.cfg = config or ExpertConfig()
        self.expert = metaworld_policy_class(task_name)()
        self.spec = "expert" + (f":noise={self.cfg.noise}" if self.cfg.noise else "")
        self.rng = np.random.default_rng(0)

    def act(self, obs):
        a = np.asarray(self.expert.get_action(np.asarray(obs, dtype=np.float64)), dtype=np.float32)
        if self.cfg.noise > 0:
            a = a + self.cfg.noise * self.rng.standard_normal(a.shape).astype(np.float32)
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def config(self) -> dict:
        return asdict(self.cfg)


# ============================================================================ Dark-Room learning histories


@dataclass
class QLearningConfig:
    """Tabular Q-learning with epsilon-greedy exploration over the (x, y) cells of one Dark-Room.

    The goal is fixed within a history, so Q over (x, y, action) is Markov. Exploration decays
    linearly from `eps_start` to `eps_end` over the first `explore_episodes` episodes (None: half
    of the history), then stays at `eps_end`; returns therefore rise along the history from
    random-walk level to near-optimal, a gradual curve suited to Algorithm Distillation.
    Measured with these defaults (benchmarks/darkroom_histories.py, 1000 episodes, seed 0): all 100
    goals improve; mean return of the first 10% of a history 4.1, of the last 10% 88.1 (>= 0.94 of
    the best achievable return on every goal).
    The time limit is not a terminal state, so targets always bootstrap.
    """

    alpha: float = 0.1            # learning rate
    gamma: float = 0.9            # discount
    q_init: float = 0.0           # initial Q-value (rewards are >= 0, so 0 is not optimistic)
    eps_start: float = 1.0
    eps_end: float = 0.05
    explore_episodes: int | None = None

    def __post_init__(self):
        if not 0 < self.alpha <= 1:
            raise ValueError(f"history: alpha must be in (0, 1], got {self.alpha}")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"history: gamma must be in [0, 1), got {self.gamma}")
        for name in ("eps_start", "eps_end"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"history: {name} must be in [0, 1], got {v}")
        if self.explore_episodes is not None and int(self.explore_episodes) < 1:
            raise ValueError(f"history: explore_episodes must be >= 1 or None, got {self.explore_episodes}")
        if not math.isfinite(self.q_init):
            raise ValueError(f"history: q_init must be finite, got {self.q_init}")

    def resolved(self, n_episodes: int) -> "QLearningConfig":
        """A copy with `explore_episodes` fixed for a history of `n_episodes`."""
        d = asdict(self)
        if d["explore_episodes"] is None:
            d["explore_episodes"] = max(1, int(n_episodes) // 2)
        return QLearningConfig(**d)

    def epsilon(self, i: int) -> float:
        n = int(self.explore_episodes or 1)
        frac = min(1.0, i / n)
        return float(self.eps_start + frac * (self.eps_end - self.eps_start))


def history_rng(seed: int, goal: Sequence[int]) -> np.random.Generator:
    """The random stream of one history: episode i uses the i-th (T, 7) block of uniforms."""
    return np.random.default_rng([int(seed), int(goal[0]), int(goal[1])])


def iter_darkroom_histories(goals: Sequence[Sequence[int]], n_episodes: int, seed: int = 0,
                            config: QLearningConfig | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Train one Q-learner per goal from scratch, G goals in lock-step; yield each episode.

    Yields, per episode i (in learning order), ``{"states": (G, T, 2) float32, "actions": (G, T)
    int64, "rewards": (G, T) float32, "success": (G, T) bool, "epsilon": float}``. Each goal's
    history depends only on (seed, goal, config), not on which other goals share the batch.
    Pure numpy: steps all G rooms at once (DarkRoomVec).
    """
    goals = [dr.parse_goal(g) for g in goals]
    n_episodes = int(n_episodes)
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    cfg = (config or QLearningConfig()).resolved(n_episodes)
    G, T, S, A = len(goals), dr.EPISODE_LENGTH, dr.SIZE * dr.SIZE, dr.N_ACTIONS
    # Cells are numbered c = y * SIZE + x. The transition table is built from DarkRoomVec itself,
    # so the learner steps exactly the environment's dynamics (tested against the gym env too).
    probe = dr.DarkRoomVec([(0, 0)] * S * A, max_steps=1)
    probe.reset()
    probe.pos = np.array([(c % dr.SIZE, c // dr.SIZE) for c in range(S) for _ in range(A)])
    probe.step(np.tile(np.arange(A), S))
    next_cell = (probe.pos[:, 1] * dr.SIZE + probe.pos[:, 0]).reshape(S, A)  # (S, A)
    goal_cell = np.array([y * dr.SIZE + x for x, y in goals])  # (G,)
    rngs = [history_rng(seed, g) for g in goals]
    Q = np.full((G * S, A), cfg.q_init, dtype=np.float64)  # row g*S + cell
    base = np.arange(G) * S
    for i in range(n_episodes):
        eps = cfg.epsilon(i)
        U = np.stack([r.random((T, 7)) for r in rngs], axis=1)  # (T, G, 7): explore, random action, ties
        explore = U[:, :, 0] < eps
        rand_a = np.minimum((U[:, :, 1] * A).astype(np.int64), A - 1)
        tie = 1.0 + U[:, :, 2:]
        cells = np.empty((T + 1, G), dtype=np.int64)
        actions = np.empty((T, G), dtype=np.int64)
        c = np.zeros(G, dtype=np.int64)  # start cell (0, 0)
        cells[0] = c
        if G == 1:  # same arithmetic on Python scalars: ~10x faster than tiny numpy ops
            _episode_scalar(Q, next_cell.tolist(), int(goal_cell[0]), explore[:, 0].tolist(),
                            rand_a[:, 0].tolist(), tie[:, 0].tolist(), cfg.alpha, cfg.gamma, cells, actions)
        for t in range(T if G > 1 else 0):
            rows = base + c
            q = Q[rows]  # (G, A)
            best = q >= q.max(axis=1, keepdims=True) - 1e-12
            a = np.where(explore[t], rand_a[t], np.argmax(best * tie[t], axis=1))  # ties broken at random
            c2 = next_cell[c, a]
            r = c2 == goal_cell
            target = r + cfg.gamma * Q[base + c2].max(axis=1)
            Q[rows, a] += cfg.alpha * (target - Q[rows, a])
            actions[t] = a
            cells[t + 1] = c2
            c = c2
        cur = cells[:-1].T  # (G, T) cell before each action
        states = np.stack([cur % dr.SIZE, cur // dr.SIZE], axis=-1).astype(np.float32)
        rewards = (cells[1:].T == goal_cell[:, None])
        yield {"states": states, "actions": actions.T.copy(), "rewards": rewards.astype(np.float32),
               "success": rewards, "epsilon": eps}


def _episode_scalar(Q, next_cell, goal, explore, rand_a, tie, alpha, gamma, cells, actions) -> None:
    """One episode of the Q-learner for a single goal, in Python floats (IEEE-identical to the
    vectorised path: same operations in the same order; tested equal)."""
    q_rows = Q.tolist()
    c = 0
    out_c, out_a = [0], []
    A = len(q_rows[0])
    for t in range(len(explore)):
        q = q_rows[c]
        if explore[t]:
            a = rand_a[t]
        else:
            m = max(q) - 1e-12
            a, best = 0, -1.0
            for k in range(A):
                v = tie[t][k] if q[k] >= m else 0.0
                if v > best:
                    a, best = k, v
        c2 = next_cell[c][a]
        target = (1.0 if c2 == goal else 0.0) + gamma * max(q_rows[c2])
        q[a] += alpha * (target - q[a])
        out_a.append(a)
        out_c.append(c2)
        c = c2
    Q[:] = q_rows
    cells[:, 0] = out_c
    actions[:, 0] = out_a


def iter_darkroom_history(goal: Sequence[int], n_episodes: int, seed: int = 0,
                          config: QLearningConfig | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One goal's learning history, episode by episode, as store-ready dicts ((T, 2) states, ...)."""
    for ep in iter_darkroom_histories([goal], n_episodes, seed, config):
        yield {"states": ep["states"][0], "actions": ep["actions"][0], "rewards": ep["rewards"][0],
               "dones": np.zeros(ep["rewards"].shape[1], dtype=bool),  # truncated, never terminated
               "success": ep["success"][0]}


def darkroom_histories(goals: Sequence[Sequence[int]], n_episodes: int, seed: int = 0,
                       config: QLearningConfig | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """All histories at once: ``states (G, N, T, 2)``, ``actions (G, N, T)``, ``rewards (G, N, T)``,
    ``returns (G, N)``."""
    it = iter_darkroom_histories(goals, n_episodes, seed, config)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=int(n_episodes), desc="Q-learning histories", unit="ep")
    eps = list(it)
    out = {k: np.stack([e[k] for e in eps], axis=1) for k in ("states", "actions", "rewards")}
    out["returns"] = out["rewards"].sum(axis=2)
    return out


# ============================================================================ PPO specialists

PPO_FORMAT = "lramlab-ppo/1"


@dataclass
class PPOConfig:
    """A small PPO (clipped surrogate, GAE) in the style of cleanrl's ppo.py.

    Discrete actions: categorical policy. Continuous: diagonal Gaussian with a state-independent
    log-std; actions are clipped to [-1, 1] when stepping the env (the log-prob uses the sample).
    Image observations (1, 64, 64) get a small Nature-DQN CNN, states an MLP.
    Defaults are small (a few thousand steps) for quick specialists; ent_coef 0.01 as in RA-DT's
    ppo.yaml (reference/darkroom.yaml).
    """

    steps: int = 4096           # total environment steps (over all envs)
    n_envs: int = 4
    n_steps: int = 128          # steps per env per rollout
    epochs: int = 4
    minibatches: int = 4
    lr: float = 2.5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "n_envs", "n_steps", "epochs", "minibatches", "hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ppo: {name} must be >= 1, got {getattr(self, name)}")
        if (self.n_envs * self.n_steps) % self.minibatches:
            raise ValueError(f"ppo: n_envs*n_steps={self.n_envs * self.n_steps} must divide into "
                             f"minibatches={self.minibatches}")
        for name in ("lr", "clip", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ppo: {name} must be > 0, got {getattr(self, name)}")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"ppo: {name} must be in [0, 1], got {getattr(self, name)}")


def _torch():
    import torch

    return torch


class single_thread:
    """Run torch on one thread inside the block: these nets are tiny, and on a busy machine torch's
    thread pool spends milliseconds per call waiting for cores (seen: 8 ms per tiny Linear)."""

    def __enter__(self):
        import sys

        self.torch = sys.modules.get("torch")  # do not import torch just for this
        if self.torch is not None:
            self.prev = self.torch.get_num_threads()
            self.torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.torch is not None:
            self.torch.set_num_threads(self.prev)
        return False


def _build_actor_critic(obs_shape: tuple, action_kind: str, action_dim: int, hidden: int):
    torch = _torch()
    nn = torch.nn

    class ActorCritic(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = len(obs_shape) == 3
            if self.image:
                c = obs_shape[0]
                self.body = nn.Sequential(
                    nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                    nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten())
                with torch.no_grad():
                    n = self.body(torch.zeros(1, *obs_shape)).shape[1]
                self.body = nn.Sequential(self.body, nn.Linear(n, 256), nn.ReLU())
                width = 256
            else:
                d = int(np.prod(obs_shape))
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.Tanh(),
                                          nn.Linear(hidden, hidden), nn.Tanh())
                width = hidden
            out = action_dim
            self.pi = nn.Linear(width, out)
            self.v = nn.Linear(width, 1)
            nn.init.orthogonal_(self.pi.weight, 0.01)
            nn.init.zeros_(self.pi.bias)
            self.log_std = nn.Parameter(torch.full((action_dim,), -0.5)) if action_kind == "continuous" else None

        def features(self, obs):
            x = obs.float()
            if self.image:
                x = x / 255.0
            return self.body(x)

        def dist(self, obs):
            h = self.features(obs)
            if self.log_std is None:
                return torch.distributions.Categorical(logits=self.pi(h)), self.v(h).squeeze(-1)
            mean = self.pi(h)
            return (torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean)),
                    self.v(h).squeeze(-1))

    return ActorCritic()


def _task_info(task) -> tuple[str, str, tuple, str, int]:
    """(task id, domain, obs_shape, action_kind, action_dim) from a TaskSpec or task name."""
    spec = _get_task(task)
    return spec.id, spec.domain, tuple(spec.obs_shape), spec.action_kind, int(spec.action_dim)


def _get_task(task):
    if hasattr(task, "domain") and hasattr(task, "action_kind"):
        return task
    from lramlab.manifests import get_task

    return get_task(task)


def _make_env(task, seed):
    from lramlab.envs import make_env

    return make_env(task, seed=seed)


def train_ppo(task, out: str | Path, config: PPOConfig | None = None, env_fn=None,
              progress: bool = True) -> Path:
    """Train a PPO specialist on `task` from scratch and save it atomically to `out` (a .pt file).

    `env_fn(seed) -> gymnasium.Env` overrides ``make_env(task, seed)`` (e.g. for a plain gymnasium
    env in tests; its spaces then define the network). The checkpoint is a dict
    ``{"format": "lramlab-ppo/1", "task", "obs_shape", "action_kind", "action_dim", "config",
    "state_dict", "episode_returns"}`` and loads with ``checkpoint:<out>``.
    """
    with single_thread():
        return _train_ppo(task, Path(out), config or PPOConfig(), env_fn, progress)


def _train_ppo(task, out: Path, cfg: PPOConfig, env_fn, progress: bool) -> Path:
    torch = _torch()
    if env_fn is None:
        task_id, _, obs_shape, action_kind, action_dim = _task_info(task)
        env_fn = lambda s: _make_env(task, s)  # noqa: E731
    else:
        task_id = str(task)
        probe = env_fn(cfg.seed)
        obs_shape = tuple(probe.observation_space.shape)
        if hasattr(probe.action_space, "n"):
            action_kind, action_dim = "discrete", int(probe.action_space.n)
        else:
            action_kind, action_dim = "continuous", int(probe.action_space.shape[0])
        probe.close()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = _build_actor_critic(obs_shape, action_kind, action_dim, cfg.hidden)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, eps=1e-5)
    envs = [env_fn(cfg.seed + 1000 * (k + 1)) for k in range(cfg.n_envs)]
    obs = [np.asarray(e.reset(seed=cfg.seed + 1000 * (k + 1))[0]) for k, e in enumerate(envs)]
    ep_ret = np.zeros(cfg.n_envs)
    finished: list[float] = []
    batch = cfg.n_envs * cfg.n_steps
    n_updates = max(1, math.ceil(cfg.steps / batch))
    it = range(n_updates)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"PPO {task_id}", unit="update")
    for update in it:
        for g in opt.param_groups:  # linear lr annealing, as cleanrl
            g["lr"] = cfg.lr * (1.0 - update / n_updates)
        B_obs, B_act, B_logp, B_val, B_rew, B_done = [], [], [], [], [], []
        for _ in range(cfg.n_steps):
            o = torch.as_tensor(np.stack(obs))
            with torch.no_grad():
                d, v = net.dist(o)
                if action_kind == "discrete":
                    probs = d.probs
                    a = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
                    logp = d.log_prob(a)
                else:
                    noise = torch.randn(d.mean.shape, generator=gen)
                    a = d.mean + d.stddev * noise
                    logp = d.log_prob(a).sum(-1)
            rew, done = np.zeros(cfg.n_envs, np.float32), np.zeros(cfg.n_envs, np.float32)
            for k, e in enumerate(envs):
                act = int(a[k]) if action_kind == "discrete" else np.clip(a[k].numpy(), -1, 1).astype(np.float32)
                o2, r, term, trunc, _ = e.step(act)
                rew[k], ep_ret[k] = r, ep_ret[k] + r
                # a truncated episode is bootstrapped from the value of its last obs (cleanrl ignores
                # this; for fixed-length Dark-Room / Meta-World episodes it matters)
                if trunc and not term:
                    with torch.no_grad():
                        rew[k] += cfg.gamma * float(net.dist(torch.as_tensor(np.asarray(o2))[None])[1][0])
                if term or trunc:
                    done[k] = 1.0
                    finished.append(float(ep_ret[k]))
                    ep_ret[k] = 0.0
                    o2, _ = e.reset()
                obs[k] = np.asarray(o2)
            B_obs.append(o)
            B_act.append(a)
            B_logp.append(logp)
            B_val.append(v)
            B_rew.append(torch.as_tensor(rew))
            B_done.append(torch.as_tensor(done))
        with torch.no_grad():
            next_v = net.dist(torch.as_tensor(np.stack(obs)))[1]
        vals = torch.stack(B_val)
        rews = torch.stack(B_rew)
        dones = torch.stack(B_done)
        adv = torch.zeros_like(rews)
        last = torch.zeros(cfg.n_envs)
        for t in reversed(range(cfg.n_steps)):
            nv = next_v if t == cfg.n_steps - 1 else vals[t + 1]
            nonterminal = 1.0 - dones[t]
            delta = rews[t] + cfg.gamma * nv * nonterminal - vals[t]
            last = delta + cfg.gamma * cfg.gae_lambda * nonterminal * last
            adv[t] = last
        ret = (adv + vals).flatten()
        b_obs = torch.cat(B_obs)
        b_act = torch.cat(B_act)
        b_logp = torch.cat(B_logp)
        b_adv = adv.flatten()
        mb = batch // cfg.minibatches
        for _ in range(cfg.epochs):
            perm = torch.randperm(batch, generator=gen)
            for s in range(0, batch, mb):
                idx = perm[s:s + mb]
                d, v = net.dist(b_obs[idx])
                logp = d.log_prob(b_act[idx])
                ent = d.entropy()
                if action_kind == "continuous":
                    logp, ent = logp.sum(-1), ent.sum(-1)
                ratio = (logp - b_logp[idx]).exp()
                a_ = b_adv[idx]
                a_ = (a_ - a_.mean()) / (a_.std() + 1e-8)
                pg = torch.max(-a_ * ratio, -a_ * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
                vloss = 0.5 * ((v - ret[idx]) ** 2).mean()
                loss = pg + cfg.vf_coef * vloss - cfg.ent_coef * ent.mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
                opt.step()
        if progress and finished:
            it.set_postfix(ret=f"{np.mean(finished[-10:]):.2f}")
    for e in envs:
        e.close()
    ckpt = {"format": PPO_FORMAT, "task": task_id, "obs_shape": list(obs_shape), "action_kind": action_kind,
            "action_dim": action_dim, "config": asdict(cfg), "state_dict": net.state_dict(),
            "episode_returns": finished}
    return _atomic_torch_save(ckpt, Path(out))


def _atomic_torch_save(obj, path: Path) -> Path:
    import os
    import tempfile

    torch = _torch()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class PPOPolicy(Policy):
    """Acts with a PPO checkpoint: samples its action distribution (greedy=True: the mode)."""

    def __init__(self, ckpt: dict, path: str, greedy: bool = False):
        torch = _torch()
        cfg = ckpt["config"]
        self.action_kind, self.action_dim = ckpt["action_kind"], int(ckpt["action_dim"])
        self.net = _build_actor_critic(tuple(ckpt["obs_shape"]), self.action_kind, self.action_dim, cfg["hidden"])
        self.net.load_state_dict(ckpt["state_dict"])
        self.net.eval()
        self.greedy = greedy
        self.spec = f"checkpoint:{path}"
        self.gen = torch.Generator().manual_seed(0)

    def reset(self, seed: int) -> None:
        self.gen = _torch().Generator().manual_seed(int(seed))

    def act(self, obs):
        torch = _torch()
        with torch.no_grad():
            d, _ = self.net.dist(torch.as_tensor(np.asarray(obs))[None])
            if self.action_kind == "discrete":
                if self.greedy:
                    return int(d.probs.argmax(-1)[0])
                return int(torch.multinomial(d.probs, 1, generator=self.gen)[0, 0])
            a = d.mean if self.greedy else d.mean + d.stddev * torch.randn(d.mean.shape, generator=self.gen)
            return np.clip(a[0].numpy(), -1, 1).astype(np.float32)

    def config(self) -> dict:
        return {"kind": "ppo", "greedy": self.greedy}


class ModulePolicy(Policy):
    """A plain torch.nn.Module: obs batch (1, *obs_shape) float32 -> logits / actions (see module doc)."""

    def __init__(self, module, path: str, action_kind: str, action_dim: int):
        self.module = module.eval()
        self.action_kind, self.action_dim = action_kind, int(action_dim)
        self.spec = f"checkpoint:{path}"
        self.path = path

    def act(self, obs):
        torch = _torch()
        with torch.no_grad():
            out = self.module(torch.as_tensor(np.asarray(obs, dtype=np.float32))[None])
        out = out.detach().cpu()
        if not out.dtype.is_floating_point:  # integer actions
            if self.action_kind != "discrete":
                raise ValueError(f"{self.path}: module returned integer actions for a continuous task")
            return int(out.reshape(-1)[0])
        if self.action_kind == "discrete":
            if out.shape[-1] < self.action_dim:
                raise ValueError(f"{self.path}: module returned {out.shape[-1]} logits, the task has "
                                 f"{self.action_dim} actions")
            return int(out.reshape(-1, out.shape[-1])[0, : self.action_dim].argmax())
        a = out.reshape(-1)
        if a.numel() != self.action_dim:
            raise ValueError(f"{self.path}: module returned {a.numel()} action dims, expected {self.action_dim}")
        return np.clip(a.numpy(), -1, 1).astype(np.float32)

    def config(self) -> dict:
        return {"kind": "module"}


class LRAMPolicy(Policy):
    """An lramlab model (``lramlab.models.load_model``) run recurrently, conditioned on the target return."""

    def __init__(self, path: str, task):
        from lramlab.models import load_model  # lazy: torch models are only needed here

        torch = _torch()
        from lramlab.tokenizer import pad_state

        self._pad = pad_state
        self.model = load_model(path)
        self.model.eval()
        self.spec = f"checkpoint:{path}"
        spec = _get_task(task)
        self.task = spec
        self.scale = float(spec.reward_scale or 1.0)
        self.target = float(spec.target_return) if spec.target_return is not None else 0.0
        self.discrete = spec.action_kind == "discrete"
        self.n_actions = int(spec.action_dim) if self.discrete else 0
        self.act_dim = 0 if self.discrete else int(spec.action_dim)
        self.torch = torch

    def reset(self, seed: int) -> None:
        self.torch.manual_seed(int(seed))
        self.state = self.model.init_state(batch_size=1)
        self.rtg = self.target
        self.prev_reward = 0.0
        self.prev_action = None

    def act(self, obs):
        torch = self.torch
        o = np.asarray(obs)
        o = torch.as_tensor(o[None] if o.dtype == np.uint8 else self._pad(o)[None])
        with torch.no_grad():
            logits, self.state = self.model.step(
                self.state, obs=o, rtg=torch.tensor([self.rtg / self.scale], dtype=torch.float32),
                prev_reward=torch.tensor([self.prev_reward / self.scale], dtype=torch.float32),
                prev_action=self.prev_action)  # only read by the action-token variant
            a = self.model.decode(logits, n_actions=self.n_actions, act_dim=self.act_dim, greedy=True)
        self.prev_action = a
        a = a[0].cpu().numpy()
        if self.discrete:
            return int(a)
        return np.clip(a[: self.act_dim], -1, 1).astype(np.float32)

    def observe(self, reward: float) -> None:
        self.rtg -= float(reward)
        self.prev_reward = float(reward)

    def config(self) -> dict:
        return {"kind": "lram", "target_return": self.target}


def load_checkpoint_policy(path: str | Path, task, greedy: bool = False) -> Policy:
    """A policy from a checkpoint file (PPO specialist, nn.Module, or lramlab model; see module doc)."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint policy: {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - report any unreadable file the same way
        raise ValueError(f"checkpoint policy: {path} is not a torch checkpoint ({err})") from err
    if isinstance(obj, dict) and obj.get("format") == PPO_FORMAT:
        try:  # the checkpoint knows its spaces; check them against the task when it is known
            spec = _get_task(task)
        except KeyError:
            spec = None
        if spec is not None and (spec.action_kind != obj["action_kind"] or int(spec.action_dim) != int(obj["action_dim"])):
            raise ValueError(f"checkpoint policy: {path} acts in {obj['action_kind']}({obj['action_dim']}), "
                             f"task {spec.id} needs {spec.action_kind}({spec.action_dim})")
        return PPOPolicy(obj, str(path), greedy=greedy)
    if isinstance(obj, torch.nn.Module):
        spec = _get_task(task)
        return ModulePolicy(obj, str(path), spec.action_kind, spec.action_dim)
    try:
        return LRAMPolicy(str(path), task)
    except ImportError as err:
        raise ValueError(f"checkpoint policy: {path} is neither a PPO checkpoint ({PPO_FORMAT}) nor a "
                         f"torch.nn.Module, and lramlab.models is unavailable to load it ({err})") from err


# ============================================================================ building policies


def make_policy(spec: str, task, work_dir: str | Path | None = None, progress: bool = True) -> Policy:
    """A per-step :class:`Policy` for `spec` on `task` (``history`` is not per-step: see generate).

    ``ppo`` trains a specialist first and saves it as ``work_dir/ppo_specialist.pt``.
    """
    kind, rest = parse_spec(spec)
    t = _get_task(task)
    if kind == "random":
        if rest:
            raise ValueError(f"policy {spec!r}: 'random' takes no options")
        return RandomPolicy(t.action_kind, t.action_dim)
    if kind == "noisy":
        eps_text, _, inner = rest.partition(":")
        try:
            eps = float(eps_text)
        except ValueError:
            raise ValueError(f"policy {spec!r}: expected noisy:<eps>[:<inner policy>], eps a number in [0, 1]") from None
        if not inner:
            inner = default_policy(t.domain)
            if inner != "expert":
                raise ValueError(f"policy {spec!r}: domain {t.domain!r} has no scripted expert to add noise to; "
                                 f"name the inner policy, e.g. noisy:{eps}:checkpoint:PATH")
        return NoisyPolicy(make_policy(inner, t, work_dir, progress), eps, t.action_kind, t.action_dim)
    if kind == "expert":
        if t.domain != "metaworld":
            raise ValueError(f"policy {spec!r}: scripted experts exist for Meta-World only, not {t.id!r}")
        return MetaWorldExpert(t.name, ExpertConfig(**_parse_kv(rest, ExpertConfig, spec)))
    if kind == "checkpoint":
        if not rest:
            raise ValueError(f"policy {spec!r}: expected checkpoint:<path>")
        return load_checkpoint_policy(rest, t)
    if kind == "ppo":
        cfg = PPOConfig(**_parse_kv(rest, PPOConfig, spec))
        if work_dir is None:
            raise ValueError(f"policy {spec!r}: needs a work_dir to save the trained specialist")
        path = Path(work_dir) / "ppo_specialist.pt"
        if not path.exists():  # trained once per data directory, reused when generation resumes
            train_ppo(t, path, cfg, progress=progress)
        pol = load_checkpoint_policy(path, t)
        pol.spec = spec
        return pol
    raise ValueError(f"policy {spec!r} is not a per-step policy (history is generated by "
                     f"lramlab.data.generate for Dark-Room tasks)")


def history_config(spec: str) -> QLearningConfig:
    kind, rest = parse_spec(spec)
    if kind != "history":
        raise ValueError(f"{spec!r} is not a history spec")
    return QLearningConfig(**_parse_kv(rest, QLearningConfig, spec))
