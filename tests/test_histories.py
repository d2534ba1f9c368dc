"""Model-based Q-learning histories for AD (lramlab.collect.histories): the episodes replay in the
real Dark-Room, the learner exploits what it has found, histories are reproducible per goal, and
several histories in one task directory never share a training window (lramlab.icl.HistoryDataset).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from lramlab.collect.histories import ModelBasedConfig, iter_model_based_histories, model_based_histories, \
    write_model_based_histories
from lramlab.envs import darkroom as dr

GOALS = [(2, 0), (5, 7), (9, 9)]


def test_episodes_replay_in_the_environment():
    h = model_based_histories(GOALS, 6, seed=3, config=ModelBasedConfig(explore="novelty"))
    for g, goal in enumerate(GOALS):
        env = dr.DarkRoom(goal)
        for i in range(6):
            obs, _ = env.reset()
            for t in range(dr.EPISODE_LENGTH):
                assert np.array_equal(obs, h["states"][g, i, t])
                obs, r, _, _, _ = env.step(int(h["actions"][g, i, t]))
                assert r == h["rewards"][g, i, t]
    assert h["returns"].shape == (3, 6) and np.array_equal(h["returns"], h["rewards"].sum(-1))


def test_greedy_learner_stays_on_the_goal_and_returns_to_it():
    # epsilon 0: before the goal is found a random walk; from the step that first reaches it, it stays;
    # in every later episode it walks a shortest path to the goal and stays there
    cfg = ModelBasedConfig(eps_start=0.0)
    h = model_based_histories(dr.TRAIN_GOALS[:20], 30, seed=0, config=cfg)
    n_found = 0
    for g in range(20):
        R, rew = h["returns"][g], h["rewards"][g]
        first = int(np.argmax(R > 0)) if (R > 0).any() else None
        if first is None:
            assert not rew.any()
            continue
        n_found += 1
        t0 = int(np.argmax(rew[first]))
        assert rew[first, t0:].all()  # stays from the first reward on
        assert (R[first + 1:] == dr.max_return(dr.TRAIN_GOALS[g])).all()  # shortest path, then stay
    assert n_found >= 10  # random walks find most of these goals within 30 episodes


def test_max_return_of_the_start_cell_goal():
    # reward after every step on the goal: a goal on the start cell pays all 100 steps (stay, stay, ...)
    h = model_based_histories([(0, 0)], 2, seed=0, config=ModelBasedConfig(eps_start=0.0))
    assert h["returns"][0, 1] == dr.max_return((0, 0)) == 100 and dr.max_return((1, 0)) == 100


def test_epsilon_decays_per_success_and_histories_are_per_goal():
    cfg = ModelBasedConfig(eps_start=0.5, eps_decay=0.5, eps_end=0.1)
    assert np.allclose(cfg.epsilon(np.array([0, 1, 2, 5])), [0.5, 0.25, 0.125, 0.1])
    eps = list(iter_model_based_histories(GOALS, 8, seed=1, config=cfg))
    alone = list(iter_model_based_histories(GOALS[1:2], 8, seed=1, config=cfg))
    other = list(iter_model_based_histories(GOALS[1:2], 8, seed=1, config=cfg, history=1))
    assert all(np.array_equal(a["actions"][0], b["actions"][1]) for a, b in zip(alone, eps))
    assert not all(np.array_equal(a["actions"][0], b["actions"][0]) for a, b in zip(alone, other))
    succ = np.cumsum([0] + [bool(e["success"][1].any()) for e in eps[:-1]])
    assert np.allclose([e["epsilon"][1] for e in eps], cfg.epsilon(succ))
    sub = list(iter_model_based_histories(GOALS[:1], 4, seed=1, config=ModelBasedConfig(subsample=3)))
    full = list(iter_model_based_histories(GOALS[:1], 10, seed=1, config=ModelBasedConfig()))
    assert [e["index"] for e in sub] == [0, 3, 6, 9]
    assert all(np.array_equal(s["actions"], full[s["index"]]["actions"]) for s in sub)


@pytest.mark.parametrize("kw, needle", [({"gamma": 1.0}, "gamma"), ({"eps_decay": 1.5}, "eps_decay"),
                                        ({"explore": "curious"}, "'curious'"), ({"sweeps": 0}, "sweeps"),
                                        ({"subsample": 0}, "subsample")])
def test_bad_config_raises_naming_the_value(kw, needle):
    with pytest.raises(ValueError, match=needle):
        ModelBasedConfig(**kw)


def test_written_histories_windows_never_span_two_learners(tmp_path):
    from lramlab.icl import HistoryDataset

    dirs = write_model_based_histories(tmp_path, GOALS[:2], 5, seed=0, histories=2, progress=False)
    meta = json.loads((dirs[0] / "meta.json").read_text())
    assert meta["history_episodes"] == 5 and meta["episodes"] == 10 and (dirs[0] / "packed.hdf5").is_file()
    again = write_model_based_histories(tmp_path, GOALS[:2], 5, seed=0, histories=2, progress=False)
    assert again == dirs  # resumable: a current history is kept
    ds = HistoryDataset(tmp_path, split="train", context_len=250, val_fraction=0.0)
    h1 = list(iter_model_based_histories(GOALS[:1], 5, seed=0, history=1))
    # 250 steps ending at step 49 of file episode 6 (= history 1, episode 1): only 150 steps of
    # history 1 exist before it, so the window is padded instead of reaching into history 0
    b = ds.make_batch("darkroom", [(ds.tasks.index("darkroom/goal-2-0"), 6, 49)], as_torch=False)
    assert b["mask"][0].sum() == 150 and not b["mask"][0, 150:].any()  # right-padded: real steps first
    assert np.array_equal(b["actions"][0, :150], np.concatenate([h1[0]["actions"][0], h1[1]["actions"][0, :50]]))
    # inside history 0 windows still span episodes
    b = ds.make_batch("darkroom", [(0, 4, 49)], as_torch=False)
    assert b["mask"][0].all()


def test_lramlab_data_generate_mbq_policy(tmp_path):
    from lramlab.collect.generate import generate
    from lramlab.data.store import read_episode
    from lramlab.icl import HistoryDataset

    d = generate("darkroom/goal-5-7", 6, policy="mbq:eps_start=0.2,histories=2", out=tmp_path, progress=False)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["history_episodes"] == 3 and meta["policy_config"]["eps_start"] == 0.2
    cfg = ModelBasedConfig(eps_start=0.2)
    want = [e for h in range(2) for e in iter_model_based_histories([(5, 7)], 3, seed=0, config=cfg, history=h)]
    for i, e in enumerate(want):
        assert np.array_equal(read_episode(d / f"episode_{i:06d}.hdf5")["actions"], e["actions"][0])
    generate("darkroom/goal-5-7", 6, policy="mbq:eps_start=0.2,histories=2", out=tmp_path, progress=False)  # resume
    ds = HistoryDataset(tmp_path, split="train", context_len=200, val_fraction=0.0)
    assert ds.history_episodes == [3]
    with pytest.raises(ValueError, match="histories=4"):
        generate("darkroom/goal-5-7", 6, policy="mbq:histories=4", out=tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="'temperature=2'"):
        generate("darkroom/goal-5-7", 6, policy="mbq:temperature=2", out=tmp_path / "y", progress=False)
