"""The good default behaviour policies: the Procgen look-ahead planner in real Procgen, and DMControl's
default SAC specialist, trained once beside the data and reused (round trip through its .zip)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lramlab.collect import policies as P
from lramlab.collect.generate import episode_seed, main, rollout_episode
from lramlab.collect.planners import PLANNER_GAMES, PlannerConfig, ProcgenPlanner
from lramlab.collect.specialists import SACConfig, SB3Policy, default_specialist, train_specialist
from lramlab.data.store import TaskData
from lramlab.envs import domain_available, make_env


def _procgen():
    ok, reason = domain_available("procgen")
    if not ok:
        pytest.skip(reason)


def test_planner_beats_random_in_bigfish_and_is_deterministic():
    _procgen()
    env = make_env("procgen/bigfish", seed=0)
    seed = episode_seed(0, 2)  # a level where fish come within reach early (measured: 5 in 120 steps)
    planner = ProcgenPlanner("bigfish", PlannerConfig(horizon=20))
    planner.bind(env)
    ep = rollout_episode(env, planner, seed, "image", max_steps=120)
    rand = [rollout_episode(env, P.make_policy("random", "procgen/bigfish"), episode_seed(0, i), "image", 120)
            for i in (2, 3)]
    got, base = float(ep["rewards"].sum()), max(float(r["rewards"].sum()) for r in rand)
    assert got >= base + 2, (got, base)
    again = rollout_episode(env, planner, seed, "image", max_steps=30)  # seeded: the same actions
    assert np.array_equal(again["actions"], ep["actions"][:30])
    assert set(np.unique(ep["actions"])) <= set(planner.actions)


def test_planner_spec_and_defaults():
    assert P.default_policy("procgen", "bigfish") == "planner" and set(PLANNER_GAMES) >= {"bigfish"}
    assert P.default_policy("procgen", "maze") == "random"
    assert P.default_policy("dmcontrol", "walker-stand") == default_specialist("walker-stand")
    assert default_specialist("walker-stand").startswith("sac:steps=")
    with pytest.raises(ValueError, match="plays Procgen games only"):
        P.make_policy("planner", "darkroom/goal-2-0")
    with pytest.raises(ValueError, match="distinct procgen action indices"):
        P.make_policy("planner:actions=1.99", "procgen/bigfish")
    pol = P.make_policy("planner:horizon=5,actions=1.7", "procgen/fruitbot")
    assert pol.actions == (1, 7) and pol.cfg.horizon == 5
    with pytest.raises(RuntimeError, match="bind"):
        pol.act(np.zeros((1, 64, 64), np.uint8))


def test_dmcontrol_default_specs_name_train_tasks_and_parse():
    """Every tuned default names a DMControl train task of the manifest and is a valid SAC spec
    (a typo in a task name or an option would silently fall back to the generic default)."""
    from lramlab.collect.base import parse_spec
    from lramlab.collect.specialists import DMC_DEFAULT_SPECS, SAC_NET, SAC_SPARSE, parse_specialist_spec
    from lramlab.manifests import list_tasks

    train = {t.name for t in list_tasks("dmcontrol", split="train")}
    assert set(DMC_DEFAULT_SPECS) <= train, set(DMC_DEFAULT_SPECS) - train
    assert len(DMC_DEFAULT_SPECS) >= 5
    for name, spec in DMC_DEFAULT_SPECS.items():
        assert default_specialist(name) == spec and (SAC_NET in spec) != (SAC_SPARSE in spec)
        kind, rest = parse_spec(spec)
        algo, cfg = parse_specialist_spec(spec, kind, rest, f"dmcontrol/{name}", seed=0)
        assert algo == "sac" and isinstance(cfg, SACConfig)
        if SAC_SPARSE in spec:  # the sparse-reward recipe: a low initial entropy weight
            assert (cfg.hidden, cfg.batch_size, cfg.ent_coef, cfg.learning_starts) == (256, 256, "auto_0.1", 2000)
        else:
            assert (cfg.hidden, cfg.batch_size, cfg.ent_coef) == (64, 128, "auto")
    untuned = sorted(train - set(DMC_DEFAULT_SPECS))[0]
    assert default_specialist(untuned) == f"sac:steps=50000,{SAC_NET}"


def test_default_dmcontrol_policy_reuses_the_specialist_beside_the_data(tmp_path, capsys):
    """Without --policy, a DMControl task uses its SAC specialist: one already saved in the task
    directory is loaded, not retrained, and acts exactly as the saved file does."""
    task, name = "dmcontrol/cartpole-swingup", "cartpole-swingup"
    task_dir = tmp_path / "dmcontrol" / name
    task_dir.mkdir(parents=True)
    # a tiny specialist stands in for the default's (which trains for minutes): generate must reuse it
    zip_path = train_specialist(task, task_dir / "sac_specialist.zip",
                                SACConfig(steps=150, learning_starts=50, batch_size=16, hidden=16, action_repeat=8),
                                "sac", progress=False)
    before = zip_path.stat().st_mtime_ns
    rc = main(["--task", task, "--episodes", "1", "--max-steps", "25", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert zip_path.stat().st_mtime_ns == before  # reused, not retrained
    meta = json.loads((task_dir / "meta.json").read_text())
    assert meta["policy"] == default_specialist(name) and meta["policy_config"]["algorithm"] == "sac"
    assert meta["policy_config"]["sac"]["action_repeat"] == 8
    ep = TaskData(task_dir).read(0)
    # each decision is held for the 8 steps of the action repeat the model was trained with
    acts = ep["actions"]
    assert all(np.array_equal(acts[i], acts[i - i % 8]) for i in range(len(acts)))
    # the round trip: the loaded file (its repeat read from its lramlab.json) gives the stored actions
    pol = SB3Policy.load(zip_path, task)  # the default samples (its own seeded stream)
    assert pol.repeat == 8
    pol.reset(episode_seed(0, 0))
    assert np.allclose(np.stack([pol.act(s) for s in ep["states"]]), acts, atol=1e-6)
    pol1 = SB3Policy.load(zip_path, task, repeat=1)  # deciding at every step differs
    pol1.reset(episode_seed(0, 0))
    assert not np.allclose(np.stack([pol1.act(s) for s in ep["states"]]), acts)


def test_sparse_reward_recipe_reaches_sb3_as_a_low_initial_entropy_weight():
    """SAC_SPARSE's point is SB3's initial entropy weight 0.1 (not 1.0, SB3's default, under which the
    sparse tasks never left random acting): the option must arrive in the built model, with its nets."""
    import gymnasium as gym
    from stable_baselines3 import SAC

    from lramlab.collect.base import parse_spec
    from lramlab.collect.specialists import DMC_DEFAULT_SPECS, _algo_kwargs, parse_specialist_spec

    weights = {}
    for name in ("point_mass-easy", "cheetah-run"):
        spec = DMC_DEFAULT_SPECS[name]
        kind, rest = parse_spec(spec)
        algo, cfg = parse_specialist_spec(spec, kind, rest, f"dmcontrol/{name}", seed=0)
        model = SAC("MlpPolicy", gym.make("Pendulum-v1"), **_algo_kwargs(algo, cfg))
        weights[name] = float(model.log_ent_coef.exp())
        assert model.policy.actor.latent_pi[0].out_features == cfg.hidden
    assert weights["point_mass-easy"] == pytest.approx(0.1) and weights["cheetah-run"] == pytest.approx(1.0)
