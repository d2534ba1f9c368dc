"""Environment adapters: spaces equal the manifests, seeding is reproducible, bad input is named.

Real simulators throughout (ALE, procgen, dm_control, Meta-World, robosuite); one or two tasks
per domain to keep the file fast (robosuite builds take seconds: one task).
"""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from lramlab.envs import check_spaces, domain_available, list_domains, make_env
from lramlab.manifests import get_task

# task -> whether two different seeds must give different first observations (Atari's first
# frames after the random no-ops are often identical, so it is not checked there)
TASKS = {
    "atari/freeway": False,
    "atari/bank-heist": False,
    "procgen/coinrun": True,
    "dmcontrol/cheetah-run": True,
    "dmcontrol/ball_in_cup-catch": True,
    "metaworld/reach-v2": True,
    "robosuite/Lift": True,
}


def _need(domain: str) -> None:
    ok, reason = domain_available(domain)
    if not ok:
        pytest.skip(f"{domain} simulator not installed here: {reason}")


def _rollout(env, actions, seed=None):
    obs, _ = env.reset() if seed is None else env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append(obs)
        if terminated or truncated:
            break
    return out


@pytest.mark.parametrize("task_id", list(TASKS))
def test_spaces_match_manifest_and_seeding_is_reproducible(task_id):
    spec = get_task(task_id)
    _need(spec.domain)
    env_a = make_env(task_id, seed=7)
    env_b = make_env(spec, seed=7)  # a TaskSpec works like its id
    try:
        # spaces as the manifest says
        assert env_a.observation_space.shape == tuple(spec.obs_shape)
        if spec.action_kind == "discrete":
            assert env_a.action_space.n == spec.action_dim
        else:
            assert env_a.action_space.shape == (spec.action_dim,)
            assert np.all(env_a.action_space.low == -1) and np.all(env_a.action_space.high == 1)
        want_dtype = np.uint8 if spec.obs_kind == "image" else np.float32
        assert env_a.observation_space.dtype == want_dtype

        rng = np.random.default_rng(0)
        if spec.action_kind == "discrete":
            actions = [int(a) for a in rng.integers(spec.action_dim, size=6)]
        else:
            actions = [rng.uniform(-1, 1, spec.action_dim).astype(np.float32) for _ in range(6)]
        traj_a = _rollout(env_a, actions)  # first reset without a seed uses make_env's seed
        traj_b = _rollout(env_b, actions)
        assert len(traj_a) == len(traj_b) == 7
        for t, (oa, ob) in enumerate(zip(traj_a, traj_b)):
            assert oa.shape == tuple(spec.obs_shape) and oa.dtype == want_dtype
            np.testing.assert_array_equal(oa, ob, err_msg=f"{task_id}: obs differ at step {t}")

        # reset(seed=s) on a used env reproduces a fresh env's episode
        again = _rollout(env_a, actions, seed=7)
        for t, (oa, ob) in enumerate(zip(traj_a, again)):
            np.testing.assert_array_equal(oa, ob, err_msg=f"{task_id}: reseeded obs differ at {t}")
        if TASKS[task_id]:
            other, _ = env_b.reset(seed=8)
            assert not np.array_equal(other, traj_a[0]), f"{task_id}: seeds 7 and 8 gave one start"
    finally:
        env_a.close()
        env_b.close()


@pytest.mark.parametrize("domain,package", [("composuite", "composuite"), ("mimicgen", "mimicgen")])
def test_registry_only_domains_report_why(domain, package):
    ok, reason = domain_available(domain)
    if importlib.util.find_spec(package) is None:
        assert ok is False
        assert package in reason and "make install" in reason and "github.com/" in reason
        with pytest.raises(RuntimeError, match=package):
            make_env(f"{domain}/" + get_task_name(domain))
    else:  # installed on this machine: then it must report available
        assert ok is True, reason


def get_task_name(domain):
    from lramlab.manifests import list_tasks

    return list_tasks(domain)[0].name


def test_every_domain_answers_and_unknown_domain_is_an_error():
    assert set(list_domains()) == {"atari", "procgen", "dmcontrol", "metaworld", "composuite",
                                   "mimicgen", "robosuite", "darkroom"}
    for d in list_domains():
        ok, reason = domain_available(d)
        assert isinstance(ok, bool) and (ok or reason), f"{d}: unavailable without a reason"
    with pytest.raises(ValueError, match="unknown domain 'mujoco'"):
        domain_available("mujoco")


def test_darkroom_dispatches_to_its_module():
    _need("darkroom")
    spec = get_task("darkroom/goal-2-0")
    env = make_env(spec, seed=0)
    obs, _ = env.reset()
    assert obs.shape == tuple(spec.obs_shape)


def test_metaworld_same_seed_same_goal_and_success_info():
    _need("metaworld")
    env = make_env("metaworld/push-v2", seed=1)
    goals = []
    for seed in (3, 3, 4):
        obs, info = env.reset(seed=seed)
        goals.append((info["task_index"], obs.copy()))
    # obs[-3:] is the goal position (Meta-World puts it at the end of the 39-d vector)
    assert goals[0][0] == goals[1][0]
    np.testing.assert_array_equal(goals[0][1], goals[1][1])
    assert not np.allclose(goals[0][1][-3:], goals[2][1][-3:]), "seeds 3 and 4 gave one goal"
    _, _, terminated, truncated, info = env.step(np.zeros(4, dtype=np.float32))
    assert isinstance(info["success"], bool) and not terminated and not truncated
    env.close()


def test_episode_lengths_follow_the_manifest():
    _need("dmcontrol")
    env = make_env("dmcontrol/cartpole-swingup", seed=0)
    env.reset()
    steps, truncated, terminated = 0, False, False
    while not (truncated or terminated):
        _, _, terminated, truncated, _ = env.step(np.zeros(1, dtype=np.float32))
        steps += 1
    assert (steps, truncated, terminated) == (get_task("dmcontrol/cartpole-swingup").episode_length,
                                              True, False)
    _need("atari")
    short = make_env("atari/pong", seed=0, max_episode_steps=40)  # an explicit option wins
    short.reset()
    steps, truncated = 0, False
    while not truncated and steps < 100:
        truncated = short.step(0)[3]
        steps += 1
    # the cap counts emulator frames from reset, the <=30 no-op frames (<8 steps) included
    assert truncated and 32 <= steps <= 40, steps


def test_dmcontrol_actions_and_full_layout():
    _need("dmcontrol")
    from lramlab.envs.dmcontrol import FULL_OBS_DIM, make_dmcontrol

    flat = make_dmcontrol("walker-walk", seed=2)
    full = make_dmcontrol("walker-walk", seed=2, obs_layout="full")
    f, _ = flat.reset()
    g, _ = full.reset()
    assert f.shape == (24,) and g.shape == (FULL_OBS_DIM,)
    # walker keys: orientations (14) at 0, height (1) at 203, velocity (9) at 14 (LRAM layout)
    np.testing.assert_array_equal(g[0:14], f[0:14])
    np.testing.assert_array_equal(g[203:204], f[14:15])
    np.testing.assert_array_equal(g[14:23], f[15:24])
    assert np.count_nonzero(g[23:203]) == 0
    with pytest.raises(ValueError, match="non-finite"):
        flat.step(np.full(6, np.nan))
    # the manifest fixes obs_shape (24,): the 204-d layout through make_env is refused by name
    with pytest.raises(ValueError, match=r"walker-walk.*\(204,\).*\(24,\)"):
        make_env("dmcontrol/walker-walk", obs_layout="full")


def test_atari_reward_clipping_keeps_raw_reward():
    _need("atari")
    env = make_env("atari/boxing", seed=0, clip_rewards=True)
    env.reset()
    for a in np.random.default_rng(0).integers(18, size=40):
        _, r, term, trunc, info = env.step(int(a))
        assert r == np.sign(info["raw_reward"])
        assert r in (-1.0, 0.0, 1.0)


def test_bad_input_is_named():
    from lramlab.manifests import UnknownTaskError

    with pytest.raises(UnknownTaskError, match="freewya"):
        make_env("atari/freewya")
    _need("atari")
    from lramlab.envs.atari import make_atari

    with pytest.raises(ValueError, match="ALE/Freewya-v5.*close matches.*Freeway"):
        make_atari("freewya")
    spec = get_task("atari/pong")
    env = make_env(spec)
    with pytest.raises(ValueError, match=r"atari/pong.*\(1, 64, 64\).*\(1, 84, 84\)"):
        check_spaces(env, dataclasses.replace(spec, obs_shape=(1, 84, 84)))
    with pytest.raises(ValueError, match="discrete action_dim 15"):
        check_spaces(env, dataclasses.replace(spec, action_dim=15))
    _need("procgen")
    pg = make_env("procgen/maze", seed=0)
    pg.reset()
    with pytest.raises(ValueError, match="out of range"):
        pg.step(15)
    _need("metaworld")
    from lramlab.envs.metaworld import v3_name

    assert v3_name("bin-picking-v2") == "bin-picking-v3"
    with pytest.raises(ValueError, match="reach-wal-v3"):
        v3_name("reach-wal-v2")


def test_render_gives_rgb_frames():
    for task_id, hw in (("atari/pong", (210, 160)), ("procgen/coinrun", (512, 512)),
                        ("dmcontrol/cheetah-run", (240, 320))):
        _need(task_id.split("/")[0])
        env = make_env(task_id, seed=0, render=True)
        env.reset()
        env.step(env.action_space.sample())
        frame = env.render()
        assert frame.shape == (*hw, 3) and frame.dtype == np.uint8 and frame.std() > 0
        env.close()
    with pytest.raises(RuntimeError, match="render=True"):
        make_env("dmcontrol/cheetah-run").render()


def test_legacy_gym_env_adapter():
    """CompoSuite speaks the old gym API; check the adapter on a real old-gym env (procgen's)."""
    _need("procgen")
    gym = pytest.importorskip("gym")
    from lramlab.envs.wrappers import LegacyToGymnasium

    seeds = []
    legacy = gym.make("procgen:procgen-coinrun-v0", rand_seed=0, disable_env_checker=True)
    env = LegacyToGymnasium(legacy, seed_fn=seeds.append)
    obs, info = env.reset(seed=5)
    assert seeds == [5] and obs.shape == (64, 64, 3) and isinstance(info, dict)
    assert type(env.action_space).__module__.startswith("gymnasium")
    out = env.step(0)
    assert len(out) == 5 and isinstance(out[2], bool) and isinstance(out[3], bool)
    env.close()
