"""Behaviour policies and learners that generate trajectories (`lramlab data generate --policy P`).

This module builds a policy from its spec (`make_policy`); the policies live in `base` (random,
noisy), `experts` (Meta-World), `qlearning` (Dark-Room histories), `ppo` (specialists) and
`checkpoints` (policies loaded from files).

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

from pathlib import Path

from lramlab.collect.base import (POLICY_KINDS, NoisyPolicy, Policy, RandomPolicy, _parse_kv, default_policy,
                                  get_task_spec, parse_spec, single_thread)
from lramlab.collect.checkpoints import LRAMPolicy, ModulePolicy, load_checkpoint_policy
from lramlab.collect.experts import ExpertConfig, MetaWorldExpert, metaworld_policy_class
from lramlab.collect.ppo import PPO_FORMAT, PPOConfig, PPOPolicy, train_ppo
from lramlab.collect.qlearning import (QLearningConfig, darkroom_histories, history_rng, iter_darkroom_histories,
                                       iter_darkroom_history)

# ============================================================================ building policies


def make_policy(spec: str, task, work_dir: str | Path | None = None, progress: bool = True) -> Policy:
    """A per-step :class:`Policy` for `spec` on `task` (``history`` is not per-step: see generate).

    ``ppo`` trains a specialist first and saves it as ``work_dir/ppo_specialist.pt``.
    """
    kind, rest = parse_spec(spec)
    t = get_task_spec(task)
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
                     f"lramlab.collect.generate for Dark-Room tasks)")


def history_config(spec: str) -> QLearningConfig:
    kind, rest = parse_spec(spec)
    if kind != "history":
        raise ValueError(f"{spec!r} is not a history spec")
    return QLearningConfig(**_parse_kv(rest, QLearningConfig, spec))


__all__ = ["POLICY_KINDS", "Policy", "RandomPolicy", "NoisyPolicy", "MetaWorldExpert", "ExpertConfig",
           "metaworld_policy_class", "QLearningConfig", "iter_darkroom_histories", "iter_darkroom_history",
           "darkroom_histories", "history_rng", "PPOConfig", "PPOPolicy", "PPO_FORMAT", "train_ppo",
           "ModulePolicy", "LRAMPolicy", "load_checkpoint_policy", "make_policy", "history_config",
           "parse_spec", "default_policy", "get_task_spec", "single_thread"]
