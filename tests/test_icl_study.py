"""The ICL study (lramlab.icl.study, notebooks/03_icl.ipynb, studies/icl-*.yaml): variant specs and
config checks, the summary statistics against hand-computed values, a real multi-process study on
real model-based Dark-Room histories (records = the runs' files, reuse, re-evaluation, refused
changes), 01's Dark-Room policy, and a tiny version of the CPU preset through `lramlab pipeline`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from lramlab.icl.study import (ICLStudyConfig, ICLStudyError, parse_variant, run_dir_name, run_icl_study,
                               set_summary, variant_label, variant_name, window_stats)

TRAIN = ("darkroom/goal-6-9", "darkroom/goal-5-7")   # two of the 80 train goals
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Real recipe-style histories (model-based learners, 2 per goal) of two train goals, packed."""
    from lramlab.collect.generate import generate
    from lramlab.data.store import pack_task

    r = tmp_path_factory.mktemp("icl_study_data")
    for t in TRAIN:
        pack_task(generate(t, 8, policy="mbq:eps_start=0.1,eps_decay=0.9,histories=2", out=r, progress=False))
    return r


# ----------------------------------------------------------------------------- variants and config
def test_variant_specs():
    assert parse_variant("xlstm") == ("xlstm", "7:1") and variant_name("xlstm") == "xlstm:7:1"
    assert parse_variant("xlstm:1:0") == ("xlstm", "1:0") and parse_variant("dt") == ("dt", None)
    assert variant_name(" mamba") == "mamba"
    assert [variant_label(v) for v in ("xlstm", "xlstm:1:0", "mamba", "dt")] == ["xLSTM [7:1]", "xLSTM [1:0]",
                                                                                  "Mamba", "DT"]
    assert run_dir_name("xlstm", 1) == "xlstm-7-1-s1" and run_dir_name("dt", 0) == "dt-s0"
    for bad, msg in (("lstm", "unknown backbone 'lstm'"), ("mamba:7:1", "only xlstm takes"),
                     ("xlstm:7", "not a ratio"), ("xlstm:-1:2", "not a ratio"), (3, "expected a string")):
        with pytest.raises(ValueError, match=msg):
            parse_variant(bad)


@pytest.mark.parametrize("kw, msg", [
    ({"backbones": []}, r"backbones is empty"),
    ({"backbones": ["dt", "lstm"]}, r"ICLStudyConfig.backbones: backbone variant 'lstm'"),
    ({"backbones": ["xlstm", "xlstm:7:1"]}, r"\['xlstm:7:1'\] given twice"),
    ({"seeds": []}, r"seeds is empty"),
    ({"seeds": [0, -1]}, r"seeds: -1 is not an integer >= 0"),
    ({"seeds": [True]}, r"seeds: True is not"),
    ({"seeds": [1, 1]}, r"a seed is given twice"),
    ({"eval_goals": ["holdout", "val"]}, r"eval_goals=\['holdout', 'val'\]"),
    ({"eval_goals": []}, r"eval_goals=\[\]"),
    ({"workers": 0}, r"ICLStudyConfig.workers=0: expected an integer >= 1"),
    ({"threads": -1}, r"ICLStudyConfig.threads=-1"),
    ({"eval_max_goals": -2}, r"eval_max_goals=-2"),
    ({"steps": 0}, r"ICLStudyConfig: steps=0: expected >= 1"),
    ({"tokens": "sa"}, r"ICLStudyConfig: tokens='sa'"),
    ({"lr": float("nan")}, r"lr=nan"),
    ({"data_dir": ""}, r"data_dir='': expected the dataset root"),
])
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ICLStudyConfig(**{"data_dir": "d", **kw})


def test_config_agents_and_order(tmp_path):
    cfg = ICLStudyConfig(data_dir=str(tmp_path), backbones=("dt", "xlstm:1:0", "mamba", "xlstm"), seeds=(3, 1),
                         out_dir=str(tmp_path / "o"), steps=7, threads=1)
    assert cfg.backbones == ("dt", "xlstm:1:0", "mamba", "xlstm:7:1")  # canonical
    jobs = cfg.jobs()
    assert sorted(jobs) == sorted((v, s, "ad") for v in cfg.backbones for s in (3, 1))  # one layout: the default
    assert {v for v, *_ in jobs[:4]} == {"dt", "mamba"}  # the slowest start first (variants._COST)
    a = cfg.agent_config("xlstm:1:0", 3)
    assert (a.backbone, a.slstm_at, a.seed, a.steps, a.num_threads) == ("xlstm", "1:0", 3, 7, 1)
    assert a.out == str((tmp_path / "o" / "xlstm-1-0-s3").resolve()) and Path(a.data).is_absolute()


# ----------------------------------------------------------------------------- statistics
def test_window_stats_and_summary_by_hand():
    S, G, N = 2, 3, 40
    t = np.arange(1, N + 1, dtype=float)
    r = np.stack([np.stack([t * (g + 1) + 10 * s for g in range(G)]) for s in range(S)])  # (S, G, N)
    f, last = window_stats(r, "first"), window_stats(r, "last")
    assert f["trials"] == [1, 5] and last["trials"] == [31, 40]
    # trials 1-5: mean of t is 3, goal g scales it by g+1, seed adds 10 s
    seed_means = [np.mean([3 * (g + 1) + 10 * s for g in range(G)]) for s in range(S)]
    assert f["per_seed"] == pytest.approx(seed_means) and f["mean"] == pytest.approx(np.mean(seed_means))
    assert f["std_seeds"] == pytest.approx(5.0)                       # seeds 10 apart: population std 5
    assert f["std_goals"] == pytest.approx(np.std([3, 6, 9]))        # the seed offset does not spread goals
    assert last["mean"] == pytest.approx(np.mean([35.5 * (g + 1) + 10 * s for g in range(G) for s in range(S)]))
    sm = set_summary(r)
    assert (sm["goals"], sm["trials"], sm["seeds"]) == (G, N, S)
    assert sm["curve_mean"] == pytest.approx(r.mean(axis=(0, 1)))
    assert sm["curve_std_seeds"] == pytest.approx(np.full(N, 5.0))
    assert sm["ratio"] == pytest.approx(last["mean"] / f["mean"])
    short = set_summary(np.ones((1, 2, 3)))  # fewer trials than the windows: both windows are 1-3
    assert short["first"]["trials"] == [1, 3] and short["last"]["trials"] == [1, 3] and short["ratio"] == 1.0
    assert set_summary(np.zeros((1, 2, 6)))["ratio"] is None            # no return in the first trials


# ----------------------------------------------------------------------------- a real study
def _base(root, out, **kw):
    return ICLStudyConfig(**{"data_dir": str(root), "backbones": ["dt", "xlstm:1:0"], "seeds": [0, 1], "steps": 2, "lr": 0.001,
                             "batch_size": 2, "warmup": 1, "trials": 3, "eval_max_goals": 2, "workers": 2,
                             "device": "cpu", "out_dir": str(out), "save_png": False, **kw})


def test_study_runs_agents_in_processes_and_reuses_them(root, tmp_path):
    cfg = _base(root, tmp_path / "study")
    study = run_icl_study(cfg, progress=False)
    for v in cfg.backbones:
        for s in cfg.seeds:
            d = tmp_path / "study" / run_dir_name(v, s)
            rec = study.runs["ad"][v][s]
            assert rec["run_dir"] == str(d) and rec["train"]["step"] == 2
            saved = json.loads((d / "config.json").read_text())
            assert saved["train"]["seed"] == s and sorted(saved["tasks"]) == sorted(TRAIN)
            for g in ("holdout", "train"):
                f = json.loads((d / f"icl-{g}.json").read_text())
                assert np.asarray(f["returns"]).shape == (2, 3) and f["returns"] == rec["evals"][g]["returns"]
                assert f["made_by"]["seed"] == s and f["made_by"]["trials"] == 3
            assert sorted(tuple(g) for g in rec["evals"]["train"]["goals"]) == [(5, 7), (6, 9)]  # the trained goals
    # the metrics are the runs' numbers: curve = mean over seeds of each run's mean over goals
    m = study.metrics()
    for v in cfg.backbones:
        files = [json.loads((tmp_path / "study" / run_dir_name(v, s) / "icl-holdout.json").read_text())
                 for s in cfg.seeds]
        want = np.mean([f["mean_curve"] for f in files], axis=0)
        assert m["variants"][v]["holdout"]["curve_mean"] == pytest.approx(want)
        assert all(np.isfinite(m["variants"][v]["holdout"]["curve_mean"]))
    p = m["variants"]["dt"]["params"]
    assert p["position_table"] == 1600 * 64 and p["total"] > m["variants"]["xlstm:1:0"]["params"]["total"]
    assert m["claim"] is None and m["xlstm_7_1_ge_dt"] is None  # no [7:1] in this study
    # a second study reuses every run: nothing is trained or evaluated again
    files = sorted((tmp_path / "study").rglob("*.json")) + sorted((tmp_path / "study").rglob("model.pt"))
    stamp = {f: os.stat(f).st_mtime_ns for f in files}
    again = run_icl_study(cfg, progress=False)
    assert {f: os.stat(f).st_mtime_ns for f in files} == stamp
    assert again.metrics()["variants"] == m["variants"]
    # more trials: evaluated again, not retrained (in this process: workers=1)
    more = run_icl_study(_base(root, tmp_path / "study", trials=4, workers=1, backbones=["dt"], seeds=[0]),
                         progress=False)
    d = tmp_path / "study" / "dt-s0"
    assert os.stat(d / "model.pt").st_mtime_ns == stamp[d / "model.pt"]
    assert np.asarray(more.runs["ad"]["dt"][0]["evals"]["holdout"]["returns"]).shape == (2, 4)
    # a change that would make another model is refused, naming the field and the run
    with pytest.raises(ICLStudyError, match=r"dt seed 0 .*dt-s0.*lr=0\.001 -> 0\.002"):
        run_icl_study(_base(root, tmp_path / "study", lr=0.002, workers=1, backbones=["dt"], seeds=[0]),
                      progress=False)


def test_claim_compares_xlstm_7_1_with_dt(root, tmp_path):
    from lramlab.analysis.plots import icl_study_figures

    cfg = _base(root, tmp_path / "claim", backbones=["xlstm", "dt"], seeds=[0], workers=1, eval_goals=["holdout"])
    study = run_icl_study(cfg, progress=False)
    c = study.claim()["holdout"]
    x, d = (np.mean(study.returns(v, "holdout")[0]) for v in ("xlstm:7:1", "dt"))  # 3 trials: one window
    assert c["xlstm:7:1"] == pytest.approx(x) and c["dt"] == pytest.approx(d)
    assert c["holds"] == (x >= d) and c["diff"] == pytest.approx(x - d)
    assert study.metrics()["xlstm_7_1_ge_dt"] == c["holds"]
    rows = study.table()
    assert [r["variant"] for r in rows] == ["xLSTM [7:1]", "DT"] and "| xLSTM [7:1] |" in study.table_markdown()
    fig = icl_study_figures(study)["icl_holdout"]
    line = [t for t in fig.data if t.name == "DT"][0]
    assert list(line.y) == pytest.approx(study.returns("dt", "holdout").mean(axis=(0, 1)))
    # one seed: no band drawn or promised, and the claim is a direction, not a result
    assert len(fig.data) == 2 and "one seed: no band" in fig.layout.title.text
    (row,) = study.claim_rows()
    assert row["gap"] == pytest.approx(round(x - d, 1)) and row["verdict"].startswith("one seed: ")
    assert ("ahead" if c["holds"] else "behind") in row["verdict"]


# ----------------------------------------------------------------------------- data prep
def test_data_prep_darkroom_policy_and_packing(tmp_path):
    from lramlab.studies import DataPrepConfig, run_data_prep

    assert DataPrepConfig().darkroom_policy == "history"  # the default is unchanged
    for bad, msg in (("ppo", "expected 'history"), ("mbq:eps=3", "bad option 'eps=3'"),
                     ("recipe", r"divide --episodes 6 \(darkroom_episodes=6\)")):
        with pytest.raises(ValueError, match=r"DataPrepConfig.darkroom_policy=.*" + msg):
            DataPrepConfig(darkroom_policy=bad, darkroom_episodes=6)
    cfg = DataPrepConfig(data_dir=str(tmp_path / "d"), darkroom_goals=1, darkroom_episodes=8, darkroom_policy="recipe",
                         metaworld_episodes=0, atari_episodes=0, out_dir=str(tmp_path / "o"))
    summary = run_data_prep(cfg, progress=False)
    task = summary.tasks[0]["task"]
    d = tmp_path / "d" / task
    meta = json.loads((d / "meta.json").read_text())
    assert meta["policy"] == "mbq:eps_start=0.1,eps_decay=0.9,histories=4" and meta["history_episodes"] == 2
    assert (d / "packed.hdf5").is_file() and summary.metrics()["n_episodes"] == 8
    from lramlab.data.store import TaskData, read_episode

    td = TaskData(d)
    np.testing.assert_array_equal(td.read(3)["actions"], read_episode(d / "episode_000003.hdf5")["actions"])


# ----------------------------------------------------------------------------- presets
def _preset(name):
    from lramlab import pipeline as P

    return P.load_params(REPO / "studies" / name)


@pytest.mark.parametrize("name", ["icl-cpu.yaml", "icl-gpu.yaml"])
def test_presets_are_valid_pipeline_parameters(name):
    from lramlab import pipeline as P
    from lramlab.studies import DataPrepConfig

    params = _preset(name)
    assert set(params) == {"01_data_prep", "03_icl"}
    for nb in params:
        P.check_overrides(params, nb, P.notebook_parameters(P.NOTEBOOK_DIR / f"{nb}.ipynb"))
    data = DataPrepConfig(**params["01_data_prep"])
    cfg = ICLStudyConfig(data_dir="d", **params["03_icl"])
    assert data.darkroom_goals == 80 and data.darkroom_policy.startswith("mbq:") and not data.metaworld_episodes
    assert set(cfg.backbones) == {"xlstm:7:1", "xlstm:1:0", "mamba", "dt"} and len(cfg.seeds) >= 2
    assert cfg.eval_goals == ("holdout", "train") and cfg.trials == 40
    assert (cfg.size, cfg.steps, cfg.batch_size) == (("tiny", 1500, 16) if "cpu" in name else ("16M", 20000, 128))


def test_cpu_preset_shrunk_runs_through_the_pipeline(tmp_path):
    """The CPU preset with its sizes shrunk (goals, episodes, updates, trials) through papermill:
    the same notebooks, variants, seeds, goal sets and workers; the metrics are the runs' own."""
    pytest.importorskip("papermill")
    from lramlab import pipeline as P

    params = _preset("icl-cpu.yaml")
    params["01_data_prep"].update(darkroom_goals=2, darkroom_episodes=8, save_png=False)
    params["03_icl"].update(steps=2, batch_size=2, warmup=1, trials=3, eval_max_goals=2, save_png=False)
    res = P.run_pipeline(tmp_path, params, only=["01", "03"], progress=False)
    assert [(r.name, r.status) for r in res.runs] == [("01_data_prep", "ran"), ("03_icl", "ran")]
    m = json.loads((tmp_path / "03_icl" / "metrics.json").read_text())
    assert m["config"]["data_dir"] == str(tmp_path / "data")  # chained from 01
    assert set(m["variants"]) == {"xlstm:7:1", "xlstm:1:0", "mamba", "dt"}
    for v, s in m["variants"].items():
        for g in ("holdout", "train"):
            runs = [json.loads((tmp_path / "03_icl" / run_dir_name(v, seed) / f"icl-{g}.json").read_text())
                    for seed in (0, 1)]
            assert s[g]["curve_mean"] == pytest.approx(np.mean([r["mean_curve"] for r in runs], axis=0))
            assert s[g]["seeds"] == 2 and np.isfinite(s[g]["last"]["mean"]) and np.isfinite(s[g]["last"]["std_seeds"])
    assert set(m["claim"]) == {"holdout", "train"} and isinstance(m["xlstm_7_1_ge_dt"], bool)
    for f in ("icl_holdout", "icl_train"):
        assert (tmp_path / "03_icl" / f"{f}.html").stat().st_size > 1000
