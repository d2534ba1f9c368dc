"""Dark-Room dynamics, the vectorised version, and Q-learning learning histories."""
from __future__ import annotations

import numpy as np
import pytest

from lramlab.envs import darkroom as dr
from lramlab.collect import policies as P


def _run(env, actions):
    out = []
    for a in actions:
        out.append(env.step(a))
    return out


def test_goal_lists_follow_lram_rule_and_partition_the_grid():
    train, hold = dr.goal_split_rule()
    assert train == list(dr.TRAIN_GOALS) and hold == list(dr.HOLDOUT_GOALS)
    assert len(set(dr.TRAIN_GOALS) | set(dr.HOLDOUT_GOALS)) == 100
    assert len(dr.all_tasks("train")) == 80 and len(dr.all_tasks("holdout")) == 20
    assert dr.all_tasks()[0] == "darkroom/goal-2-0"


def test_manifest_agrees_with_env():
    from lramlab.manifests import list_tasks

    tasks = {t.name: t for t in list_tasks("darkroom")}
    assert len(tasks) == 100
    for goal in dr.TRAIN_GOALS[:5] + dr.HOLDOUT_GOALS[:5]:
        t = tasks[dr.task_name(goal).split("/")[1]]
        assert t.split == dr.goal_split(goal)
        assert dr.parse_goal(t) == goal
        assert t.episode_length == dr.EPISODE_LENGTH and t.action_dim == dr.N_ACTIONS


def test_walls_moves_and_stay():
    env = dr.make_darkroom("darkroom/goal-9-9", seed=0)
    obs, info = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (2,) and tuple(obs) == (0, 0)
    # up and left at (0, 0) hit walls
    for a in (0, 3):
        obs, r, term, trunc, _ = env.step(a)
        assert tuple(obs) == (0, 0) and r == 0.0 and not term and not trunc
    obs, *_ = env.step(1)  # right: x + 1
    assert tuple(obs) == (1, 0)
    obs, *_ = env.step(2)  # down: y + 1
    assert tuple(obs) == (1, 1)
    obs, *_ = env.step(4)  # stay
    assert tuple(obs) == (1, 1)
    for _ in range(20):  # far corner, then walls on the right and bottom
        obs, *_ = env.step(1)
        obs, *_ = env.step(2)
    assert tuple(obs) == (9, 9)
    with pytest.raises(ValueError, match="action"):
        env.step(5)


def test_reward_every_step_on_goal_and_truncation_at_100():
    env = dr.make_darkroom("goal-2-1")
    env.reset(seed=3)
    rewards, truncs, terms = [], [], []
    actions = [1, 1, 2] + [4] * 97  # reach (2, 1) after 3 steps, then stay
    for a in actions:
        _, r, term, trunc, info = env.step(a)
        rewards.append(r)
        truncs.append(trunc)
        terms.append(term)
    assert rewards[:2] == [0.0, 0.0] and all(r == 1.0 for r in rewards[2:])
    assert sum(rewards) == dr.max_return((2, 1)) == 98
    assert truncs == [False] * 99 + [True] and not any(terms)
    assert info["success"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(4)
    # leaving the goal stops the reward
    env.reset()
    steps = _run(env, [1, 1, 2, 2])
    assert [s[1] for s in steps] == [0.0, 0.0, 1.0, 0.0]


def test_goal_at_start_pays_for_staying():
    env = dr.make_darkroom("darkroom/goal-0-0")
    env.reset()
    assert sum(s[1] for s in _run(env, [4] * 100)) == 100.0


def test_seed_determinism_and_render():
    def rollout(seed):
        env = dr.make_darkroom("darkroom/goal-5-5", seed=seed, render=True)
        obs, _ = env.reset()
        traj = [obs]
        for _ in range(100):
            obs, *_ = env.step(env.action_space.sample())
            traj.append(obs)
        return np.stack(traj), env.render()

    a, img = rollout(7)
    b, _ = rollout(7)
    c, _ = rollout(8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert img.shape == (160, 160, 3) and img.dtype == np.uint8
    # the goal cell (5, 5) is drawn green, for viewing only
    assert tuple(img[5 * 16 + 8, 5 * 16 + 8]) == (40, 170, 60)


def test_bad_tasks_are_named():
    for bad in ("darkroom/goal-10-0", "goal-a-b", "atari/pong"):
        with pytest.raises(ValueError, match="Dark-Room"):
            dr.make_darkroom(bad)


def test_gym_registration():
    import gymnasium as gym

    env = gym.make(dr.GYM_ID, goal=(1, 0))
    env.reset(seed=0)
    assert env.step(1)[1] == 1.0


def test_vec_matches_gym_env():
    goals = [(2, 0), (9, 9), (3, 4), (0, 0)]
    rng = np.random.default_rng(0)
    acts = rng.integers(0, 5, size=(100, len(goals)))
    vec = dr.DarkRoomVec(goals)
    obs_v = [vec.reset()]
    rew_v, trunc_v = [], []
    for t in range(100):
        o, r, term, trunc, _ = vec.step(acts[t])
        obs_v.append(o)
        rew_v.append(r)
        trunc_v.append(trunc)
        assert not term.any()
    for g, goal in enumerate(goals):
        env = dr.make_darkroom(goal)
        o, _ = env.reset()
        assert np.array_equal(o, obs_v[0][g])
        for t in range(100):
            o, r, _, trunc, _ = env.step(int(acts[t, g]))
            assert np.array_equal(o, obs_v[t + 1][g]) and r == rew_v[t][g] and trunc == trunc_v[t][g]
    with pytest.raises(RuntimeError, match="reset"):
        vec.step(acts[0])
    vec.reset()
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros(3, dtype=np.int64))


# ------------------------------------------------------------------ learning histories


def test_history_replays_in_real_env():
    """Every stored transition of a history is what the gym env does with those actions."""
    eps = list(P.iter_darkroom_history((3, 2), 12, seed=5))
    env = dr.make_darkroom((3, 2))
    for ep in eps:
        o, _ = env.reset()
        for t in range(100):
            assert np.array_equal(o, ep["states"][t])
            o, r, _, trunc, _ = env.step(int(ep["actions"][t]))
            assert r == ep["rewards"][t] and ep["success"][t] == (r > 0)
        assert trunc and not ep["dones"].any()


def test_history_batch_equals_single_and_is_seeded():
    goals = [(9, 9), (0, 3), (6, 4)]
    batch = P.darkroom_histories(goals, 30, seed=2)
    single = P.darkroom_histories([(0, 3)], 30, seed=2)
    for k in ("states", "actions", "rewards"):
        assert np.array_equal(batch[k][1], single[k][0]), k  # scalar fast path == vectorised path
    other = P.darkroom_histories([(0, 3)], 30, seed=3)
    assert not np.array_equal(other["actions"], single["actions"])
    assert batch["states"].shape == (3, 30, 100, 2) and batch["actions"].dtype == np.int64


@pytest.mark.parametrize("goal", [(9, 9), (2, 7), (9, 0), (3, 4), (6, 8)])  # 2 train, 3 hold-out
def test_history_improves(goal):
    n = 200
    R = P.darkroom_histories([goal], n, seed=0)["returns"][0]
    first, last = R[: n // 10].mean(), R[-n // 10:].mean()
    best = dr.max_return(goal)
    assert last > first + 0.25 * best, (first, last)
    assert last >= 0.7 * best, (last, best)  # near-optimal, apart from eps_end = 0.05 exploration


def test_qlearning_config_validation():
    with pytest.raises(ValueError, match="alpha"):
        P.QLearningConfig(alpha=0)
    with pytest.raises(ValueError, match="gamma"):
        P.QLearningConfig(gamma=1.0)
    with pytest.raises(ValueError, match="explore_episodes"):
        P.QLearningConfig(explore_episodes=0)
    assert P.history_config("history:explore_episodes=40,alpha=0.2") == P.QLearningConfig(alpha=0.2, explore_episodes=40)
    with pytest.raises(ValueError, match="bad option"):
        P.history_config("history:bogus=1")
