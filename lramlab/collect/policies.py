"""Behaviour policies and learners that generate trajectories (`lramlab data generate --policy P`).

This module builds a policy from its spec (`make_policy`); the policies live in `base` (random,
noisy), `experts` (Meta-World), `qlearning` (Dark-Room histories), `specialists` (stable-baselines3
PPO / SAC / DQN) and `checkpoints` (policies loaded from files).

Policy specs (the string given to ``--policy``; recorded in meta.json with the resolved config):

- ``random`` -- uniform actions (discrete: each of the env's n actions; continuous: U[-1, 1]).
- ``noisy:<eps>[:<inner>]`` -- with probability eps per step a uniform random action, else the
  inner policy's (default inner: the domain's scripted expert, i.e. Meta-World only).
- ``expert`` / ``expert:noise=<std>`` -- scripted expert, with optional Gaussian action noise of
  that std (clipped to [-1, 1]) for mixed-quality data: Meta-World's own
  (``metaworld.policies.Sawyer<Task>V3Policy``); Composuite (all objectives) and Mimicgen
  (``Stack_D*``, ``StackThree_D*``, ``Square_D*``, ``NutAssembly_D*``)
  waypoint experts reading the simulator's privileged state
  (`lramlab.collect.robotics`; they need ``policy.bind(env)``, which generate does).
- ``checkpoint:<path>`` -- a model file, one of (checked in this order):
  1. a stable-baselines3 model ``.zip`` (PPO, A2C, SAC, TD3, DQN; e.g. from :func:`train_specialist`),
     sampling from its action distribution (DQN: epsilon-greedy with its final exploration rate);
  2. a whole ``torch.nn.Module`` saved with ``torch.save(module, path)`` that maps a float32 obs
     batch ``(1, *obs_shape)`` (images as float 0..255) to either discrete logits ``(1, n)``
     (argmax is taken), continuous actions ``(1, act_dim)`` (clipped to [-1, 1]), or integer
     actions ``(1,)``;
  3. an lramlab model checkpoint (``lramlab.models.load_model``), run recurrently with the task's
     target return as the first return-to-go, greedy decoding.
  An lramlab model loads with ``torch.load(weights_only=True)``; an SB3 model or a whole pickled
  ``nn.Module`` is unpickled, which can run code: name only files you trust (everywhere else --
  eval, icl, fine-tuning, resume -- lramlab refuses such files).
- ``ppo`` / ``sac`` / ``dqn`` with ``:steps=<n>,...`` options -- train a stable-baselines3 specialist
  from scratch (fields of :class:`PPOConfig`, :class:`SACConfig`, :class:`DQNConfig`), save it next
  to the data (``<algo>_specialist.zip``, reused on resume), then act with it
  (``deterministic=1``: its mode / greedy action). ``specialist[:...]``: SAC for continuous actions,
  PPO for discrete ones. The training seed defaults to the run's ``--seed``.
- ``planner[:horizon=<n>,rollouts=<n>,...]`` -- Procgen only: look-ahead through the game's saved
  states (:class:`lramlab.collect.planners.PlannerConfig` fields); the generator binds it to its env.
- ``atari`` / ``atari:kind=<k>,...`` -- Atari only: RAM-scripted policies and look-ahead planners on
  ALE's saved states (:mod:`lramlab.collect.atari_policies`); plain ``atari`` is the game's entry in
  ``GAME_POLICIES``, which is also the default policy of those games.
- ``history`` / ``history:explore_episodes=<n>,...`` -- Dark-Room only: a tabular Q-learning learning
  history (:class:`QLearningConfig` fields), episodes in learning order (for Algorithm Distillation).

Shape letters: G goals (parallel Dark-Rooms), N episodes, T timesteps.
"""
from __future__ import annotations

from pathlib import Path

from lramlab.collect.atari_policies import GAME_POLICIES, AtariPolicyConfig, atari_policy
from lramlab.collect.base import (POLICY_KINDS, SPECIALIST_KINDS, NoisyPolicy, Policy, RandomPolicy, _parse_kv,
                                  bind_policy, get_task_spec, parse_spec, single_thread)
from lramlab.collect.base import default_policy as domain_default_policy
from lramlab.collect.checkpoints import LRAMPolicy, ModulePolicy, load_checkpoint_policy
from lramlab.collect.experts import ExpertConfig, MetaWorldExpert, metaworld_policy_class
from lramlab.collect.planners import PLANNER_GAMES
from lramlab.collect.robotics import MIMICGEN_TASKS as ROBOTICS_MIMICGEN_TASKS
from lramlab.collect.specialists import (ALGORITHMS, default_specialist, DQNConfig, PPOConfig, SACConfig, SB3Policy, SpecialistConfig,
                                         TrainingLog, is_sb3_file, learn, specialist_policy, train_specialist)
from lramlab.collect.qlearning import (QLearningConfig, darkroom_histories, history_rng, iter_darkroom_histories,
                                       iter_darkroom_history)

# ============================================================================ building policies


def default_policy(domain: str, name: str | None = None) -> str:
    """The default spec of task `domain/name`: DMControl -> its SAC specialist
    (`specialists.default_specialist`), the Procgen games the planner plays well
    (`planners.PLANNER_GAMES`) -> ``planner``, the Atari games in ``GAME_POLICIES`` -> ``atari``,
    Composuite and Mimicgen Stack* / StackThree* / Square* / NutAssembly* -> ``expert`` (`lramlab.collect.robotics`),
    else the domain's (`base.default_policy`: Dark-Room -> history, Meta-World -> expert, else random)."""
    if domain == "dmcontrol" and name is not None:
        return default_specialist(name)
    if domain == "procgen" and name in PLANNER_GAMES:
        return "planner"
    if domain == "atari" and name in GAME_POLICIES:
        return "atari"
    if domain == "composuite" or (domain == "mimicgen" and name is not None
                                  and name.split("_D")[0] in ROBOTICS_MIMICGEN_TASKS):
        return "expert"  # the privileged-state waypoint experts (lramlab.collect.robotics)
    return domain_default_policy(domain)


def make_policy(spec: str, task, work_dir: str | Path | None = None, progress: bool = True,
                seed: int | None = None) -> Policy:
    """A per-step :class:`Policy` for `spec` on `task` (``history`` is not per-step: see generate).

    ``ppo`` / ``sac`` / ``dqn`` / ``specialist`` train a specialist first (seed: `seed` unless the
    spec sets one) and save it as ``work_dir/<algo>_specialist.zip``, or reuse the one there.
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
            inner = default_policy(t.domain, t.name)
            if inner not in ("expert", "atari"):
                raise ValueError(f"policy {spec!r}: task {t.id!r} has no scripted expert to add noise to; "
                                 f"name the inner policy, e.g. noisy:{eps}:checkpoint:PATH")
        return NoisyPolicy(make_policy(inner, t, work_dir, progress, seed), eps, t.action_kind, t.action_dim)
    if kind == "expert":
        if t.domain in ("composuite", "mimicgen"):  # privileged-state experts: bind(env) before acting
            from lramlab.collect.robotics import RoboticsExpertConfig, robotics_expert

            return robotics_expert(t.id, RoboticsExpertConfig(**_parse_kv(rest, RoboticsExpertConfig, spec)))
        if t.domain != "metaworld":
            raise ValueError(f"policy {spec!r}: scripted experts exist for Meta-World, Composuite and Mimicgen "
                             f"(Stack*, StackThree*, Square*, NutAssembly*) only, not {t.id!r}")
        return MetaWorldExpert(t.name, ExpertConfig(**_parse_kv(rest, ExpertConfig, spec)))
    if kind == "checkpoint":
        if not rest:
            raise ValueError(f"policy {spec!r}: expected checkpoint:<path>")
        return load_checkpoint_policy(rest, t)
    if kind == "planner":
        if t.domain != "procgen":
            raise ValueError(f"policy {spec!r}: the look-ahead planner plays Procgen games only, not {t.id!r}")
        from lramlab.collect.planners import PlannerConfig, ProcgenPlanner

        return ProcgenPlanner(t.name, PlannerConfig(**_parse_kv(rest, PlannerConfig, spec)))
    if kind == "atari":
        return atari_policy(spec, rest, t)
    if kind in SPECIALIST_KINDS:
        if work_dir is None:
            raise ValueError(f"policy {spec!r}: needs a work_dir to save the trained specialist")
        return specialist_policy(spec, kind, rest, t, work_dir, seed, progress)
    raise ValueError(f"policy {spec!r} is not a per-step policy (history is generated by "
                     f"lramlab.collect.generate for Dark-Room tasks)")


def history_config(spec: str) -> QLearningConfig:
    kind, rest = parse_spec(spec)
    if kind != "history":
        raise ValueError(f"{spec!r} is not a history spec")
    return QLearningConfig(**_parse_kv(rest, QLearningConfig, spec))


__all__ = ["POLICY_KINDS", "Policy", "RandomPolicy", "NoisyPolicy", "MetaWorldExpert", "ExpertConfig",
           "metaworld_policy_class", "QLearningConfig", "iter_darkroom_histories", "iter_darkroom_history",
           "darkroom_histories", "history_rng", "ALGORITHMS", "SpecialistConfig", "PPOConfig", "SACConfig",
           "DQNConfig", "SB3Policy", "TrainingLog", "learn", "train_specialist", "is_sb3_file",
           "ModulePolicy", "LRAMPolicy", "load_checkpoint_policy", "make_policy", "history_config",
           "parse_spec", "default_policy", "get_task_spec", "single_thread", "GAME_POLICIES", "AtariPolicyConfig",
           "atari_policy", "bind_policy"]
