"""Algorithm Distillation on Dark-Room: history windows across episodes, a trained agent beating a
random policy on its training goal, and the ICL pipeline (train -> 40-trial style evaluation).

Data: real Q-learning learning histories written by `lramlab.collect.generate` (policy "history").
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lramlab.icl import HistoryDataset, ICLConfig, icl_rollouts, run_icl

TRAIN = ("darkroom/goal-6-9", "darkroom/goal-5-7")   # two of the 80 train goals
HOLDOUT = "darkroom/goal-9-0,darkroom/goal-8-4"       # two of the 20 hold-out goals


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from lramlab.collect.generate import generate

    r = tmp_path_factory.mktemp("icl_data")
    for t in TRAIN:
        generate(t, 80, policy="history", out=r, progress=False)
    return r


def _ep(root, task, i):
    from lramlab.data.store import read_episode

    return read_episode(root / task / f"episode_{i:06d}.hdf5")


def test_history_windows_span_consecutive_episodes(root):
    ds = HistoryDataset(root, split="train", context_len=150, tasks=[TRAIN[0]])
    assert list(ds.episodes[0]) == list(range(78))  # the last 2 of 80 (2.5 %) are validation
    b = ds.make_batch("darkroom", [(0, 5, 20)], as_torch=False)
    e3, e4, e5 = (_ep(root, TRAIN[0], i) for i in (3, 4, 5))
    # 150 steps ending at step 20 of episode 5 = last 29 of ep 3 + all of ep 4 + first 21 of ep 5
    want = {k: np.concatenate([e3[k][-29:], e4[k], e5[k][:21]]) for k in ("actions", "rewards", "returns_to_go")}
    assert np.array_equal(b["actions"][0], want["actions"]) and b["mask"].all()
    assert np.array_equal(b["rewards"][0], want["rewards"])
    assert np.array_equal(b["rtg"][0], want["returns_to_go"])  # each episode's own R̂ (scale 1)
    assert np.array_equal(b["states"][0, :, :2], np.concatenate([e3["states"][-29:], e4["states"], e5["states"][:21]]))
    # at the start of the history the window is right-padded: the real steps first, as the agent
    # sees them from init_state
    b = ds.make_batch("darkroom", [(0, 0, 9)], as_torch=False)
    assert b["mask"][0].sum() == 10 and b["mask"][0, :10].all()
    assert np.array_equal(b["actions"][0, :10], _ep(root, TRAIN[0], 0)["actions"][:10])
    # with an explicit start the window stays inside its episode
    b = ds.make_batch("darkroom", [(0, 5, 20, 10)], as_torch=False)
    assert b["mask"][0].sum() == 11 and np.array_equal(b["actions"][0, :11], e5["actions"][10:21])


def test_history_split_is_contiguous_and_validation_tiles_it(root):
    tr = HistoryDataset(root, split="train", context_len=150, history_start=0.5)
    va = HistoryDataset(root, split="val", context_len=150)
    for t in range(2):
        assert list(tr.episodes[t]) == list(range(39, 78)) and list(va.episodes[t]) == [78, 79]
    items = va.validation_items("darkroom")
    # 200 steps per task tiled from the end in windows of 150: ends at 49 and 199 of the stream
    assert [(ti, ep, end) for ti, ep, end in items] == [(0, 78, 49), (0, 79, 99), (1, 78, 49), (1, 79, 99)]
    b = va.make_batch("darkroom", items[:2], as_torch=False)
    assert b["mask"].sum() == 200  # every validation step is a target exactly once
    # the first validation window does not reach back into training episodes
    assert b["mask"][0].sum() == 50 and b["mask"][0, :50].all()
    with pytest.raises(ValueError, match="history_start"):
        HistoryDataset(root, history_start=1.0)


def test_trained_agent_reaches_its_goal_more_often_than_random(root, tmp_path):
    from lramlab.rollout import random_policy_returns, run_task
    from lramlab.train import TrainConfig, run
    from lramlab.train.checkpoint import load_model_from_checkpoint

    task = TRAIN[0]
    res = run(TrainConfig(data=(str(root),), tasks=(task,), backbone="dt", size="tiny", steps=150, batch_size=16,
                          context=20, lr=3e-3, warmup=10, history_start=0.6, amp=False, device="cpu",
                          out=str(tmp_path / "bc"), val_every=0, progress=False, num_threads=1, seed=0))
    model = load_model_from_checkpoint(res.run_dir)
    agent = run_task(model, task, episodes=6, n_envs=6, greedy=True)
    rand = random_policy_returns(task, episodes=30, seed=0)
    agent_success = np.mean([e.ret > 0 for e in agent.episodes])
    rand_success = np.mean(rand > 0)
    assert agent_success >= 0.5 and agent_success > rand_success + 0.3, (agent_success, rand_success)
    assert np.mean([e.ret for e in agent.episodes]) > rand.mean() + 20


def test_run_icl_trains_on_histories_and_evaluates_holdout_goals(root, tmp_path):
    cfg = ICLConfig(data=str(root), backbone="xlstm", size="tiny", steps=3, batch_size=4, warmup=1, trials=3,
                    eval_goals=HOLDOUT, amp=False, device="cpu", num_threads=1, out=str(tmp_path / "icl"),
                    progress=False)
    res = run_icl(cfg)
    assert res.returns.shape == (2, 3) and res.goals == [(9, 0), (8, 4)]
    assert res.mean_curve.shape == (3,) and np.allclose(res.mean_curve, res.returns.mean(0))
    run_cfg = json.loads((tmp_path / "icl" / "config.json").read_text())
    assert run_cfg["train"]["window"] == "history" and run_cfg["train"]["context"] == 200
    assert sorted(run_cfg["tasks"]) == sorted(TRAIN)  # only train-goal histories
    saved = json.loads((tmp_path / "icl" / "icl.json").read_text())
    assert np.allclose(saved["returns"], res.returns) and len(saved["mean_curve"]) == 3


def test_icl_context_carries_over_and_dt_window(tmp_path, capsys):
    from lramlab.icl import darkroom_spec, main
    from lramlab.models import LRAMConfig, build_model
    from lramlab.rollout import Agent

    torch.manual_seed(0)
    model = build_model(LRAMConfig(backbone="dt", size="tiny", context_steps=200))
    model.backbone.window = 30
    agent = Agent(model, darkroom_spec(), 2, target_return=80.0)
    for _ in range(3):
        agent.act(np.zeros((2, 2), np.float32))
        agent.observe(np.array([1.0, 0.0]))
    agent.new_episode()
    assert agent.state.steps == 3 and torch.allclose(agent.rtg, torch.full((2,), 80.0))
    assert torch.allclose(agent.prev_reward, torch.tensor([1.0, 0.0]))  # carried into the next episode
    rets = icl_rollouts(model, ["darkroom/goal-9-0"], trials=2, greedy=True)
    assert rets.shape == (1, 2) and model.backbone.window == 600  # last 2 episodes of 3 tokens
    # the CLI evaluates a saved model without training
    model.save(tmp_path / "model.pt")
    rc = main(["--checkpoint", str(tmp_path / "model.pt"), "--eval-goals", HOLDOUT, "--trials", "2",
               "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert np.asarray(out["returns"]).shape == (2, 2) and out["backbone"] == "dt"
