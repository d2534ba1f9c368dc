"""The paper's protocol, pinned (docs/protocol.md): Atari's reward rule from the store to the agent,
scores of one kind per mean, DQN-Replay actions on the full action set, the Atari episode cap and
life loss, evaluation targets from the data, and evaluations that never hide a failure.

Real ALE envs, real store files written by the generator / importer, a tiny real model."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import torch

import lramlab
from lramlab.evaluate import EvaluationFailed, aggregate, evaluate_model, resolve_targets, score_task
from lramlab.manifests import get_task, model_rewards, reward_rule

CSV = lramlab.REPO_ROOT.parent / "shared" / "reference" / "score_normalization.csv"


def _ale(game: str, full: bool, screen: int = 84):
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=full)
    return AtariPreprocessing(env, frame_skip=4, screen_size=screen, grayscale_obs=True, noop_max=30)


def _clipped_rtg(r: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(r, np.float64), -1, 1)
    return np.cumsum(c[::-1])[::-1]


@pytest.fixture(scope="module")
def tiny_model():
    from lramlab.models import LRAMConfig, build_model

    torch.manual_seed(0)
    return build_model(LRAMConfig(backbone="dt", size="tiny", context_steps=20)).eval()


@pytest.fixture(scope="module")
def atari_root(tmp_path_factory):
    """Random play in real Asterix (50-point rewards within a few steps), through the generator."""
    from lramlab.collect.generate import generate

    root = tmp_path_factory.mktemp("atari_data")
    generate("atari/asterix", 3, "random", root, seed=0, progress=False, max_steps=60)
    return root


# ------------------------------------------------------------------------- reward rule
def test_reward_rule_per_domain():
    assert reward_rule("atari/asterix") == reward_rule(get_task("atari/asterix")) == reward_rule("atari") == "clip"
    for d in ("procgen", "dmcontrol", "metaworld", "composuite", "mimicgen", "darkroom", "robosuite"):
        assert reward_rule(d) == "raw"
    pts = np.array([50.0, -3.0, 0.0, 1.0, 200.0, -1.0])
    assert np.array_equal(model_rewards("clip", pts), np.sign(pts))  # = LRAM's ClipRewardEnv on game points
    assert np.array_equal(model_rewards("clip", model_rewards("clip", pts)), model_rewards("clip", pts))
    assert np.array_equal(model_rewards("raw", pts), pts)
    with pytest.raises(ValueError, match="reward rule 'sign'"):
        model_rewards("sign", pts)


def test_store_keeps_raw_atari_rewards_and_the_sampler_clips_them(atari_root):
    from lramlab.data.sampling import TrajectoryDataset
    from lramlab.data.store import TaskData

    td = TaskData(atari_root / "atari" / "asterix")
    eps = [td.read(i) for i in range(len(td))]
    assert max(float(e["rewards"].max()) for e in eps) == 50.0  # raw game points in the store
    stats = json.loads((td.task_dir / "stats.json").read_text())
    model_returns = [float(np.clip(e["rewards"], -1, 1).sum()) for e in eps]
    assert stats["reward_rule"] == "clip"
    assert stats["returns"] == [float(e["rewards"].sum()) for e in eps]
    assert [e["model_return"] for e in stats["episodes"]] == model_returns
    assert stats["model_return_stats"]["max"] == max(model_returns) < stats["return_stats"]["max"]

    C = 16
    ds = TrajectoryDataset(atari_root, split="all", context_len=C)
    i = int(np.argmax([len(e["rewards"]) for e in eps]))
    r = eps[i]["rewards"]
    end = int(np.flatnonzero(r > 1)[0]) + 3  # a window holding a 50-point reward, ending mid-episode
    assert end < len(r) - 1
    b = ds.make_batch("atari", [(0, i, end)], as_torch=False)
    start = max(0, end - C + 1)
    n = end - start + 1
    assert np.array_equal(b["rewards"][0, :n], (np.clip(r[start:end + 1], -1, 1) / 20).astype(np.float32))
    want_rtg = (_clipped_rtg(r)[start:end + 1] / 20).astype(np.float32)  # clipped rewards to the episode's end
    assert np.allclose(b["rtg"][0, :n], want_rtg, atol=1e-6)
    assert not np.allclose(b["rtg"][0, :n], eps[i]["returns_to_go"][start:end + 1] / 20)  # the raw R̂ differs


def test_agent_sees_what_the_sampler_sees_and_scores_raw(tiny_model, tmp_path):
    from lramlab.data.sampling import TrajectoryDataset
    from lramlab.data.store import TaskData
    from lramlab.rollout import run_task

    T0 = 30.0
    ro = run_task(tiny_model, "atari/asterix", episodes=1, n_envs=1, seed=3, greedy=False, target_return=T0,
                  max_steps=40, record_dir=tmp_path)
    td = TaskData(tmp_path / "atari" / "asterix")
    ep = td.read(0)
    r = ep["rewards"]
    assert r.max() > 1  # raw points reached the agent
    assert ro.episodes[0].ret == pytest.approx(float(r.sum()))  # the score sums raw rewards
    cond = np.load(td.task_dir / "episode_000000.extra.npz")["rtg_condition"]
    # R̂ starts at the target and falls by the CLIPPED reward
    assert np.allclose(cond, T0 - np.concatenate([[0.0], np.cumsum(np.clip(r, -1, 1))[:-1]]), atol=1e-4)
    # training windows of this very episode carry R̂ on the same scale: the difference is constant
    C = len(r)
    b = TrajectoryDataset(tmp_path, split="all", context_len=C).make_batch("atari", [(0, 0, C - 1)], as_torch=False)
    diff = cond / 20 - b["rtg"][0]
    assert np.allclose(diff, diff[0], atol=1e-5)
    assert np.allclose(b["rewards"][0], np.clip(r, -1, 1) / 20)


# ------------------------------------------------------------------------- DQN-Replay actions
def _save_gz(path, arr):
    with gzip.open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def _play(env, actions, seed):
    obs, _ = env.reset(seed=seed)
    frames, rewards = [], []
    for a in actions:
        frames.append(obs)
        obs, r, term, trunc, _ = env.step(int(a))
        rewards.append(r)
    return np.stack(frames), np.asarray(rewards, np.float32)


def test_dqn_replay_breakout_minimal_actions_become_full_actions(tmp_path):
    from lramlab.data.importers import ImportFormatError, import_dataset
    from lramlab.data.store import TaskData

    mini_env = _ale("Breakout", full=False)
    minimal = np.array([a.value for a in mini_env.unwrapped.ale.getMinimalActionSet()])
    assert minimal.tolist() == [0, 1, 3, 4] == get_task("atari/breakout").extra["minimal_actions"]
    # Dopamine's indices into the minimal set: serve, then RIGHT (minimal 2) and LEFT (minimal 3)
    acts = np.array([1] + [2] * 12 + [0] * 3 + [3] * 12 + [1, 2, 2, 3], dtype=np.int32)
    frames, rew = _play(mini_env, acts, seed=7)
    term = np.zeros(len(acts), np.uint8)
    term[-1] = 1
    src = tmp_path / "Breakout" / "1" / "replay_logs"
    src.mkdir(parents=True)
    for name, arr in (("observation", frames), ("action", acts), ("reward", rew), ("terminal", term)):
        _save_gz(src / f"$store$_{name}_ckpt.0.gz", arr)
    d = import_dataset("dqn-replay", src, "atari/breakout", tmp_path / "out", progress=False)
    got = TaskData(d).read(0)["actions"]
    assert np.array_equal(got, minimal[acts]) and got.max() == 4 and 2 not in got.tolist()  # full 2 = UP
    assert json.loads((d / "meta.json").read_text())["options"]["minimal_actions"] == [0, 1, 3, 4]
    # the imported actions replay the recorded game in the full-action env; the raw indices do not
    full_env = _ale("Breakout", full=True)
    assert np.array_equal(_play(full_env, got, seed=7)[0], frames)
    assert not np.array_equal(_play(full_env, acts, seed=7)[0], frames)
    # an index outside the game's minimal set is named
    _save_gz(src / "$store$_action_ckpt.0.gz", np.where(np.arange(len(acts)) == 5, 4, acts).astype(np.int32))
    with pytest.raises(ImportFormatError, match=r"action_ckpt\.0\.gz holds action 4, outside"):
        import_dataset("dqn-replay", src, "atari/breakout", tmp_path / "out2", progress=False)


# ------------------------------------------------------------------------- episode cap, life loss
def test_atari_episode_cap_in_frames_and_life_loss_does_not_end_a_game():
    from lramlab.envs import make_env

    spec = get_task("atari/breakout")
    assert spec.episode_length == 6750
    env = make_env(spec, seed=0)
    assert env.unwrapped.ale.getInt("max_num_frames_per_episode") == 27000  # LRAM: 27k frames
    # a short cap: frames (no-op frames included) end the episode, truncated
    short = make_env(spec, seed=0, max_episode_steps=10)
    short.reset(seed=0)
    steps, term, trunc = 0, False, False
    while not (term or trunc):
        _, _, term, trunc, info = short.step(0)
        steps += 1
    assert trunc and not term and info["episode_frame_number"] == 40 and steps <= 10
    # serve and let the ball drop: every life is lost before the episode (the game) ends
    env.reset(seed=0)
    lives, t, term = [], 0, False
    while not term:
        _, _, term, trunc, info = env.step(1 if t % 50 == 0 else 0)
        lives.append(info["lives"])
        t += 1
        assert not trunc
    assert lives[0] == 5 and lives[-1] == 0 and sorted(set(lives)) == [0, 1, 2, 3, 4, 5]


# ------------------------------------------------------------------------- targets
def test_targets_from_data_manifest_or_given(atari_root):
    from lramlab.data.store import data_target_return

    spec = get_task("atari/asterix")
    stats_path = atari_root / "atari" / "asterix" / "stats.json"
    stats = json.loads(stats_path.read_text())
    (value, source), = resolve_targets([spec], "data", [str(atari_root)]).values()
    assert value == stats["model_return_stats"]["max"] and source.startswith("data: max return in")
    assert resolve_targets([spec], "manifest")["atari/asterix"] == (spec.target_return, "manifest")
    assert resolve_targets([spec], "12.5")["atari/asterix"] == (12.5, "given")
    with pytest.raises(ValueError, match=r"none found for \['atari/breakout'\]"):
        resolve_targets([get_task("atari/breakout")], "data", [str(atari_root)])
    # Dark-Room: one flat target whatever the goal's distance (1 or 18 steps away)
    dark = resolve_targets([get_task("darkroom/goal-0-1"), get_task("darkroom/goal-9-9")], "data")
    assert {v for v, _ in dark.values()} == {82.0} and all("flat" in s for _, s in dark.values())
    # a stale / missing stats.json: recomputed from the episodes, nothing written
    stats_path.unlink()
    try:
        assert data_target_return(stats_path.parent) == value and not stats_path.exists()
    finally:
        stats_path.write_text(json.dumps(stats))


# ------------------------------------------------------------------------- scores
def _dn_rows():
    with open(CSV, newline="") as f:
        return {(r["domain"], r["task"]): (float(r["low"]), float(r["high"])) for r in csv.DictReader(f)
                if "dn_scores" in r["source"]}


@pytest.mark.skipif(not CSV.is_file(), reason="reference csv absent")
def test_one_score_kind_per_mean_others_beside_and_data_normalised():
    dn = _dn_rows()
    rets = {"atari/breakout": [30.5, 30.5], "atari/freeway": [14.8], "atari/carnival": [3000.0],
            "atari/pooyan": [1500.0, 1500.0], "procgen/bigfish": [5.0]}
    scores = [score_task(get_task(t), r, None) for t, r in rets.items()]
    agg = aggregate(scores)
    a = agg["atari"]
    assert a["score_kind"] == "human" and a["n_tasks"] == 2
    assert a["mean"] == pytest.approx(((30.5 - 1.7) / (30.5 - 1.7) + (14.8 - 0.0) / 29.6) / 2)
    assert a["other_kinds"] == {"raw": {"n_tasks": 2, "mean": 2250.0, "iqm": 2250.0,
                                        "tasks": ["atari/carnival", "atari/pooyan"]}}
    lo, hi = dn[("atari", "breakout")]
    assert a["data_normalized"]["n_tasks"] == 2 and a["data_normalized"]["without_constants"] == [
        "atari/carnival", "atari/pooyan"]
    assert scores[0].data_normalized_score == pytest.approx((30.5 - lo) / (hi - lo))
    p = agg["procgen"]
    lo, hi = dn[("procgen", "bigfish")]
    assert p["score_kind"] == "minmax" and p["mean"] == pytest.approx((5.0 - 1) / (40 - 1))
    assert p["data_normalized"]["mean"] == pytest.approx((5.0 - lo) / (hi - lo))  # paper Fig. 3


def test_nan_score_is_reported_not_dropped():
    from lramlab.evaluate import EvalResult

    s = [score_task(get_task("atari/breakout"), [float("nan"), 10.0], None),
         score_task(get_task("atari/freeway"), [10.0], None)]
    assert math.isnan(s[0].normalized_score) and math.isnan(s[0].data_normalized_score)
    res = EvalResult(tasks=s, domains=aggregate(s))
    a = res.domains["atari"]
    assert a["n_tasks"] == 2 and math.isnan(a["mean"]) and math.isnan(a["iqm"]) and a["nan_tasks"] == ["atari/breakout"]
    assert math.isnan(res.metrics()["eval/normalized_score"])
    back = json.loads(json.dumps(res.to_dict()))
    assert math.isnan(back["tasks"][0]["normalized_score"]) and math.isnan(back["domains"]["atari"]["mean"])


# ------------------------------------------------------------------------- failures
def test_a_rollout_that_raises_is_a_failure(tiny_model):
    import copy

    bad = copy.deepcopy(tiny_model)
    bad.state_encoder = torch.nn.Linear(3, bad.state_encoder.out_features)  # obs dims that fit no state task
    tasks = ["darkroom/goal-2-0", "atari/asterix"]
    kw = dict(episodes=1, target="manifest", max_steps=5)
    with pytest.raises(EvaluationFailed) as info:
        evaluate_model(bad, tasks, **kw)
    res = info.value.result
    assert list(res.failed) == ["darkroom/goal-2-0"] and "mat1 and mat2" in res.failed["darkroom/goal-2-0"]
    by = {t.task: t for t in res.tasks}
    assert math.isnan(by["darkroom/goal-2-0"].normalized_score) and by["darkroom/goal-2-0"].error
    assert not by["atari/asterix"].error and by["atari/asterix"].episodes == 1
    nan = evaluate_model(bad, tasks, on_failure="nan", **kw)
    assert math.isnan(nan.domains["darkroom"]["mean"]) and nan.domains["darkroom"]["nan_tasks"] == ["darkroom/goal-2-0"]
    assert math.isnan(nan.metrics()["eval/darkroom/normalized_score"])
    skip = evaluate_model(bad, tasks, on_failure="skip", **kw)
    assert skip.domains["darkroom"]["failed"] == ["darkroom/goal-2-0"] and skip.domains["darkroom"]["n_tasks"] == 0
    assert skip.metrics()["eval/n_failed"] == 1.0 and "eval/darkroom/normalized_score" not in skip.metrics()


def _broken_manifests(tmp_path):
    """A manifest copy where goal-2-0 declares 3-dim observations (the env gives 2): its env fails."""
    d = tmp_path / "manifests"
    shutil.copytree(lramlab.REPO_ROOT / "data_manifests", d)
    text = (d / "darkroom.yaml").read_text()
    assert text.count("- name: goal-2-0\n") == 1
    (d / "darkroom.yaml").write_text(text.replace("- name: goal-2-0\n", "- name: goal-2-0\n  obs_shape: [3]\n"))
    return d


def test_eval_cli_exit_codes_and_results_file(tiny_model, tmp_path, monkeypatch):
    from lramlab.cli import main
    from lramlab.envs import domain_available
    from lramlab.manifests import load_manifests

    tiny_model.save(tmp_path / "model.pt")
    sha = hashlib.sha256((tmp_path / "model.pt").read_bytes()).hexdigest()
    monkeypatch.setenv("LRAMLAB_MANIFESTS", str(_broken_manifests(tmp_path)))
    out = tmp_path / "res.json"
    args = ["eval", "--checkpoint", str(tmp_path / "model.pt"), "--tasks", "darkroom/goal-2-0,darkroom/goal-9-9",
            "--episodes", "1", "--seed", "4", "--out", str(out)]
    try:
        assert main(args) == 1
        res = json.loads(out.read_text())
        assert list(res["failed"]) == ["darkroom/goal-2-0"] and "obs" in res["failed"]["darkroom/goal-2-0"]
        ok = next(t for t in res["tasks"] if t["task"] == "darkroom/goal-9-9")
        assert (ok["target_return"], ok["reward_rule"], ok["episode_cap"], ok["seeds"]) == (82.0, "raw", 100, [4])
        assert "flat" in ok["target_source"] and not ok["error"]
        assert res["protocol"]["checkpoint_sha256"] == sha and res["protocol"]["reward_rules"] == {"darkroom": "raw"}
        assert main(args + ["--on-failure", "skip"]) == 0
        assert json.loads(out.read_text())["domains"]["darkroom"]["failed"] == ["darkroom/goal-2-0"]
    finally:
        monkeypatch.delenv("LRAMLAB_MANIFESTS")
        load_manifests.cache_clear()
    # target "data" without the task's data: exit 2, naming the task
    ckpt = str(tmp_path / "model.pt")
    assert main(["eval", "--checkpoint", ckpt, "--tasks", "atari/asterix", "--episodes", "1"]) == 2
    # nothing runnable here: exit 2 (composuite is not installable on this machine)
    if domain_available("composuite")[0]:
        pytest.skip("composuite is installed here")
    task = next(iter(t for t in load_manifests() if t.startswith("composuite/")))
    assert main(["eval", "--checkpoint", str(tmp_path / "model.pt"), "--tasks", task, "--episodes", "1"]) == 2
