"""`lramlab data quality`: data vs a random policy on a small real store (real simulators)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lramlab.collect.generate import generate
from lramlab.collect.quality import RANDOM_CACHE, data_quality, main, summarize
from lramlab.data.store import TaskData
from lramlab.manifests import get_task


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    generate("darkroom/goal-2-0", 3, "random", root, progress=False)         # the random policy's own data
    generate("darkroom/goal-0-2", 4, "history:explore_episodes=2", root, progress=False)
    generate("dmcontrol/cartpole-swingup", 3, "random", root, progress=False, max_steps=40)
    return root


def _returns(task_dir):
    td = TaskData(task_dir)
    return [float(td.read(i)["rewards"].sum()) for i in range(len(td))]


def test_numbers_scores_and_cached_baseline(store, capsys):
    assert main([str(store), "--random-episodes", "3", "--json", "-"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["task"]: r for r in out["tasks"]}
    assert set(rows) == {"darkroom/goal-2-0", "darkroom/goal-0-2", "dmcontrol/cartpole-swingup"}
    # random data made with the baseline's episode seeds: the baseline reproduces it exactly
    r = rows["darkroom/goal-2-0"]
    assert r["policy"] == "random" and r["episodes"] == 3 and r["transitions"] == 300
    assert r["data_return"] == pytest.approx(np.mean(_returns(store / "darkroom/goal-2-0")))
    assert r["random_return"] == pytest.approx(r["data_return"])
    best = get_task("darkroom/goal-2-0").extra["max_return"]
    assert r["score_kind"] == "return/best" and r["data_score"] == pytest.approx(r["data_return"] / best)
    h = rows["darkroom/goal-0-2"]
    assert h["policy"] == "history:explore_episodes=2" and h["episodes"] == 4
    # DMControl: data-normalised with the manifest's constants; the baseline uses the data's step cap
    d = rows["dmcontrol/cartpole-swingup"]
    spec = get_task("dmcontrol/cartpole-swingup")
    assert d["transitions"] == 120 and d["score_kind"] == "data"
    assert d["data_score"] == pytest.approx((d["data_return"] - spec.score_low) / (spec.score_high - spec.score_low))
    assert d["random_return"] == pytest.approx(d["data_return"])  # the same seeds, the same cap
    cache = json.loads((store / "dmcontrol/cartpole-swingup" / RANDOM_CACHE).read_text())
    key = "dmcontrol/cartpole-swingup|seed=0|episodes=3|max_steps=40"
    assert cache[key]["transitions"] == 120
    # never mixed: one summary entry per domain and score kind
    assert {(s["domain"], s["score_kind"]) for s in out["summary"]} == {("darkroom", "return/best"),
                                                                         ("dmcontrol", "data")}
    # the cached baseline is reused (a marker value comes back), a new key is measured
    cache[key]["return"] = 123.0
    (store / "dmcontrol/cartpole-swingup" / RANDOM_CACHE).write_text(json.dumps(cache))
    again = {r.task: r for r in data_quality(store / "dmcontrol", random_episodes=3)}
    assert again["dmcontrol/cartpole-swingup"].random_return == 123.0
    other = {r.task: r for r in data_quality(store / "dmcontrol", random_episodes=1)}
    assert other["dmcontrol/cartpole-swingup"].random_return != 123.0


def test_any_source_unknown_policy_and_no_baseline(store, tmp_path, capsys):
    import shutil

    # LRAM's layout / a copy without meta.json: the task comes from the path, the policy is unknown
    src = tmp_path / "lram" / "darkroom" / "goal-2-0"
    shutil.copytree(store / "darkroom" / "goal-2-0", src)
    (src / "meta.json").unlink()
    (src / RANDOM_CACHE).unlink()
    rows = data_quality(tmp_path / "lram", random_episodes=0)
    assert rows[0].policy == "unknown" and rows[0].random_return is None and rows[0].data_score is not None
    assert summarize(rows)[0]["random_score"] is None
    assert main([str(tmp_path / "lram"), "--random-episodes", "0"]) == 0
    assert "unknown" in capsys.readouterr().out
    # LRAM's released files (plain HDF5, own names, no lramlab attributes): --task names the task
    import h5py

    rel = tmp_path / "released"
    rel.mkdir()
    rets = []
    for i, ep in enumerate(TaskData(store / "darkroom" / "goal-0-2").read(j) for j in range(2)):
        with h5py.File(rel / f"{i}.hdf5", "w") as f:
            for k in ("states", "actions", "rewards", "dones"):
                f[k] = ep[k]
        rets.append(float(ep["rewards"].sum()))
    (row,) = data_quality(rel, random_episodes=0, task="darkroom/goal-0-2")
    assert row.task == "darkroom/goal-0-2" and row.policy == "unknown" and row.episodes == 2
    assert row.data_return == pytest.approx(np.mean(rets))
    # imported data records its source format, not its policy
    from lramlab.data.importers import import_dataset

    imp = import_dataset("native", rel, "darkroom/goal-0-2", tmp_path / "imported", progress=False)
    (row,) = data_quality(imp.parent.parent, random_episodes=0)
    assert row.policy == "unknown (imported:native)" and row.data_return == pytest.approx(np.mean(rets))


def test_bad_inputs_exit_2_naming_the_path(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and err.count("\n") == 1
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no task directories with episode files" in err and str(tmp_path / "empty") in err
    assert main([str(tmp_path / "empty" / "notes.txt")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main([str(tmp_path / "empty"), "--task", "darkroom/goal-2-0"]) == 2
    assert "must be one task directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ex:  # argparse's usage error: one line, exit 2
        main([str(tmp_path), "--random-episodes", "-1"])
    assert ex.value.code == 2 and "--random-episodes must be >= 0" in capsys.readouterr().err
