"""Per-step behaviour policies and the policy-spec language of `lramlab data generate --policy P`.

A `Policy` acts one step at a time: ``reset(seed)`` at every episode start, ``act(obs)`` -> an int
(discrete) or a float32 (act_dim,) array in [-1, 1], ``observe(reward)`` after every step.
Specs are ``"kind[:options]"`` strings (see `lramlab.collect.policies` for the kinds).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np

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


POLICY_KINDS = ("random", "noisy", "expert", "checkpoint", "ppo", "sac", "dqn", "specialist", "history",
                "mbq",  # mbq: model-based Dark-Room learning histories (lramlab.collect.histories)
                "planner",  # planner: Procgen look-ahead through saved states (lramlab.collect.planners)
                "atari")  # atari: RAM-scripted / look-ahead Atari policies (lramlab.collect.atari_policies)
#: kinds that train an SB3 specialist first (lramlab.collect.specialists)
SPECIALIST_KINDS = ("ppo", "sac", "dqn", "specialist")


def default_policy(domain: str) -> str:
    """Default spec of a domain: Dark-Room -> learning history, Meta-World -> scripted expert, else
    random (per task: `lramlab.collect.policies.default_policy`)."""
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

    def bind(self, env) -> None:
        """Pass the env on to an inner policy that reads the simulator (see `bind_policy`)."""
        bind_policy(self.inner, env)

    def act(self, obs):
        inner_action = self.inner.act(obs)  # always query: stateful inner policies stay in step
        if self.rng.random() < self.eps:
            return self.random.act(obs)
        return inner_action

    def observe(self, reward: float) -> None:
        self.inner.observe(reward)

    def bind_env(self, env) -> None:
        bind = getattr(self.inner, "bind_env", None)  # inner policies that read the emulator (atari)
        if bind is not None:
            bind(env)

    def config(self) -> dict:
        return {"eps": self.eps, "inner": self.inner.config()}




def bind_policy(policy: Policy, env) -> None:
    """Give `policy` the env it will act in, when it reads the simulator's state (privileged-state
    experts, `lramlab.collect.robotics`); other policies have no ``bind`` and are left as they are."""
    bind = getattr(policy, "bind", None)
    if bind is not None:
        bind(env)


def get_task_spec(task):
    """A TaskSpec from a spec-like object (returned as is) or a task id / name (the manifests)."""
    if hasattr(task, "domain") and hasattr(task, "action_kind"):
        return task
    from lramlab.manifests import get_task

    return get_task(task)


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
