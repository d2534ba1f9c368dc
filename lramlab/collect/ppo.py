"""PPO specialists: a small PPO trainer and the policy that acts with its checkpoint (``ppo``)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lramlab._io import atomic_torch_save
from lramlab.collect.base import Policy, get_task_spec, single_thread


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
    spec = get_task_spec(task)
    return spec.id, spec.domain, tuple(spec.obs_shape), spec.action_kind, int(spec.action_dim)


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
    return atomic_torch_save(ckpt, Path(out))


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


