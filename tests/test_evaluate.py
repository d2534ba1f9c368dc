"""Evaluation: IQM on hand-made numbers, normalised-score arithmetic from the manifest constants,
rollouts in real envs (vectorised batch, worker processes, recording to the store), the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lramlab.evaluate import EvalResult, TaskScore, aggregate, evaluate_model, iqm, score_task


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lramlab.models import LRAMConfig, build_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("eval_model")
    m = build_model(LRAMConfig(backbone="dt", size="tiny", context_steps=20))
    m.save(d / "model.pt")
    return d


# ---------------------------------------------------------------------------------- IQM
def test_iqm_hand_numbers():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)              # mean(3, 4, 5, 6)
    assert iqm([100, 0, 5, 3, 10, 1, 2, 4]) == pytest.approx((2 + 3 + 4 + 5) / 4)  # order does not matter
    assert iqm([1, 2, 3, 4]) == pytest.approx(2.5)                          # mean(2, 3)
    assert iqm([7.0]) == 7.0 and iqm([1, 1000, 2]) == pytest.approx(1003 / 3)  # n < 4: nothing cut
    assert iqm([0, 0, 0, 0, 0, 1000, 0, 0]) == 0.0                           # an outlier is cut
    assert np.isnan(iqm([]))
    with pytest.raises(ValueError, match="NaN"):
        iqm([1.0, float("nan")])
    scipy_stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(0).normal(size=37)
    assert iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25))


# ---------------------------------------------------------------------------------- scores
@pytest.mark.parametrize("kind", ["human", "minmax", "data"])
def test_normalized_score_from_manifest_constants(kind):
    from lramlab.manifests import list_tasks

    spec = next(t for t in list_tasks() if t.score_kind == kind)
    lo, hi = spec.score_low, spec.score_high
    rets = [lo + 0.25 * (hi - lo), lo + 0.75 * (hi - lo), hi + 0.1 * abs(hi - lo)]
    s = score_task(spec, rets, None)
    mean = sum(rets) / 3
    assert s.mean_return == pytest.approx(mean)
    assert s.normalized_score == pytest.approx((mean - lo) / (hi - lo))
    assert s.score_kind == kind and s.domain == spec.domain


def test_success_and_raw_scores():
    from lramlab.manifests import get_task, list_tasks

    succ = next(t for t in list_tasks() if t.score_kind == "success")
    s = score_task(succ, [3.0, 800.0], 0.5)
    assert s.normalized_score == 0.5 and s.mean_return == pytest.approx(401.5)
    with pytest.raises(ValueError, match="success"):
        score_task(succ, [1.0], None)
    raw = get_task("darkroom/goal-2-0")
    assert score_task(raw, [10.0, 20.0], None).normalized_score == pytest.approx(15.0)


def test_aggregate_mean_and_iqm_per_domain():
    def ts(task, dom, v):
        return TaskScore(task=task, domain=dom, episodes=1, returns=[v], mean_return=v, normalized_score=v)

    scores = [ts(f"a/t{i}", "a", v) for i, v in enumerate([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0])]
    scores += [ts("b/x", "b", 0.5), ts("b/y", "b", 0.7)]
    agg = aggregate(scores)
    assert {k: agg["a"][k] for k in ("mean", "iqm", "n_tasks")} == {
        "mean": pytest.approx(121 / 8), "iqm": pytest.approx(3.5), "n_tasks": 8}
    assert agg["b"]["mean"] == pytest.approx(0.6) and agg["b"]["iqm"] == pytest.approx(0.6)
    res = EvalResult(tasks=scores, domains=agg)
    m = res.metrics()
    assert m["eval/a/iqm"] == pytest.approx(3.5) and m["eval/normalized_score"] == pytest.approx((121 / 8 + 0.6) / 2)


def test_headline_averages_normalised_scores_only_never_a_raw_return():
    """Dark-Room (raw return 0..99) + Meta-World (success) + Atari (human-normalised): the
    cross-domain headline is the mean of normalised scores, Dark-Room entering as return / best."""
    from lramlab.manifests import get_task, normalize_score

    dr, mw, at = get_task("darkroom/goal-2-0"), get_task("metaworld/reach-v2"), get_task("atari/amidar")
    scores = [score_task(dr, [50.0, 50.0], None, episode_cap=dr.episode_length),
              score_task(mw, [300.0], 0.5, episode_cap=mw.episode_length),
              score_task(at, [1000.0], None, episode_cap=at.episode_length)]
    res = EvalResult(tasks=scores, domains=aggregate(scores))
    m = res.metrics()
    atari = normalize_score(at, 1000.0)
    assert res.domains["darkroom"]["normalized"]["mean"] == pytest.approx(50.0 / 99.0)
    assert m["eval/normalized_score"] == pytest.approx((50.0 / 99.0 + 0.5 + atari) / 3)
    # the mix the old metrics made (raw 50 averaged with 0.5 and 0.59) is gone
    assert m["eval/normalized_score"] < 1.0
    assert m["eval/darkroom/normalized_score"] == pytest.approx(50.0 / 99.0) and m["eval/darkroom/return"] == 50.0
    assert "eval/darkroom/goal-2-0/normalized_score" not in m and m["eval/darkroom/goal-2-0/return"] == 50.0
    assert res.domains["darkroom"]["mean"] == 50.0  # the domain's own kind (raw) stays a return, apart


def test_a_capped_evaluation_is_never_normalised_against_whole_episode_constants():
    from lramlab.manifests import get_task

    at, dr = get_task("atari/amidar"), get_task("darkroom/goal-2-0")
    capped = score_task(at, [120.0], None, episode_cap=200)
    assert capped.capped and capped.normalized_score is None and capped.data_normalized_score is None
    assert capped.mean_return == 120.0 and "capped at 200 of 6750 steps" in capped.score_note
    whole = score_task(at, [120.0], None, episode_cap=at.episode_length)
    assert not whole.capped and whole.normalized_score is not None
    dr_capped = score_task(dr, [10.0], None, episode_cap=50)  # raw kind: the return stays, no return / best
    res = EvalResult(tasks=[capped, dr_capped], domains=aggregate([capped, dr_capped]))
    m = res.metrics()
    assert res.domains["atari"]["capped"]["tasks"] == ["atari/amidar"] and res.domains["atari"]["n_tasks"] == 0
    assert "normalized" not in res.domains["darkroom"] and m["eval/atari/return"] == 120.0
    assert "eval/normalized_score" not in m and "eval/atari/normalized_score" not in m
    from lramlab.evaluate import format_table

    assert "capped at 200 of 6750 steps" in format_table(res)


# ---------------------------------------------------------------------------------- rollouts
def test_darkroom_rollouts_vectorised_workers_and_recording(model_dir, tmp_path):
    from lramlab.data.store import TaskData, read_episode
    from lramlab.train.checkpoint import load_model_from_checkpoint

    model = load_model_from_checkpoint(model_dir)
    tasks = ["darkroom/goal-2-0", "goal-0-1"]  # ids or bare names
    # sampled actions so that episodes differ; one batch of 3 envs per task
    one = evaluate_model(model, tasks, episodes=3, n_envs=3, seed=4, greedy=False,
                         record_dir=str(tmp_path / "rec"), frames=True)
    seq = evaluate_model(model, tasks, episodes=3, n_envs=1, seed=4, greedy=False)
    par = evaluate_model(model, tasks, episodes=3, n_envs=3, seed=4, greedy=False, workers=2)
    assert [t.task for t in one.tasks] == ["darkroom/goal-2-0", "darkroom/goal-0-1"]
    for a, b in zip(one.tasks, par.tasks):
        assert a.returns == b.returns  # worker processes compute what the parent does
    for a, b in zip(one.tasks, seq.tasks):
        assert len(a.returns) == len(b.returns) == 3
    assert one.tasks[0].normalized_score == pytest.approx(np.mean(one.tasks[0].returns))  # raw scores
    assert set(one.domains) == {"darkroom"} and one.domains["darkroom"]["n_tasks"] == 2
    # recorded episodes: real store files whose rewards sum to the reported returns
    td = TaskData(tmp_path / "rec" / "darkroom" / "goal-2-0")
    assert td.task == "darkroom/goal-2-0" and len(td) == 3 and list(td.lengths) == [100, 100, 100]
    for i in range(3):
        ep = read_episode(td.episode_paths[i])
        assert float(ep["rewards"].sum()) == pytest.approx(one.tasks[0].returns[i])
        extra = np.load(td.task_dir / f"episode_{i:06d}.extra.npz")
        assert extra["frames"].shape[0] == 100 and extra["frames"].dtype == np.uint8
        # the conditioning R̂ starts at the manifest's target and drops by each reward
        rtg = extra["rtg_condition"]
        from lramlab.manifests import get_task

        assert rtg[0] == pytest.approx(get_task("darkroom/goal-2-0").target_return)
        assert np.allclose(rtg[0] - rtg, np.concatenate([[0], np.cumsum(ep["rewards"])[:-1]]))


def test_metaworld_continuous_rollout_scored_by_success(model_dir):
    pytest.importorskip("metaworld")
    from lramlab.rollout import run_task
    from lramlab.train.checkpoint import load_model_from_checkpoint

    model = load_model_from_checkpoint(model_dir)
    r = run_task(model, "metaworld/reach-v2", episodes=1, n_envs=1, max_steps=30)
    assert r.episodes[0].length == 30 and r.episodes[0].success is not None
    res = evaluate_model(model, ["metaworld/reach-v2"], episodes=1, target="manifest")
    t = res.tasks[0]
    assert t.score_kind == "success" and t.success_rate is not None and t.normalized_score == t.success_rate


def test_eval_cli_json(model_dir, capsys):
    from lramlab.cli import main

    rc = main(["eval", "--checkpoint", str(model_dir), "--tasks", "darkroom/goal-2-0,darkroom/goal-3-1",
               "--episodes", "2", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [t["task"] for t in out["tasks"]] == ["darkroom/goal-2-0", "darkroom/goal-3-1"]
    assert all(len(t["returns"]) == 2 for t in out["tasks"])
    assert {"score_kind", "mean", "iqm", "n_tasks", "data_normalized"} <= set(out["domains"]["darkroom"])
    assert out["protocol"]["episodes"] == 2 and out["protocol"]["checkpoint_sha256"]
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", str(model_dir), "--episodes", "0"])


def test_eval_num_threads_is_applied_and_checked(model_dir, monkeypatch):
    import torch

    from lramlab.evaluate import EvalConfig, evaluate

    with pytest.raises(ValueError, match="num_threads=-1"):
        EvalConfig(checkpoint=str(model_dir), num_threads=-1)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n))
    res = evaluate(EvalConfig(checkpoint=str(model_dir), tasks=("darkroom/goal-2-0",), episodes=1, num_threads=1))
    assert seen == [1] and res.tasks[0].task == "darkroom/goal-2-0"
