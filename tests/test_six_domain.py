"""The six-domain study machinery (issue 19): training seeds, parameter-matched variants, widths,
verdicts over seeds, summary.json. The end-to-end run (real simulators, 2 seeds x 2 matched
backbones through papermill) is `tests/test_multitask.py`'s tiny preset."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from lramlab.multitask import MultiTaskConfig, parse_backbone, plan_jobs
from lramlab.multitask import compare as C
from lramlab.models.params import check_param_match, count_params, match_dt

REPO = Path(__file__).parent.parent
FOUR = ["xlstm:7:1", "xlstm:1:0", "mamba", "dt"]


# ----------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize("a, b, want", [
    ([0.8, 0.9, 0.85], [0.5, 0.6, 0.55], C.HOLDS),          # d = 0.3 > spread 0.1
    ([0.5, 0.6, 0.55], [0.8, 0.9, 0.85], C.DOES_NOT),       # d = -0.3
    ([0.6, 0.9], [0.5, 0.7], C.INSIDE),                      # d = 0.15 <= spread 0.3
    ([0.5, 0.7], [0.6, 0.9], C.INSIDE),                      # d = -0.15, also inside
    ([0.7], [0.6], C.HOLDS),                                 # one seed each: the sign
    ([0.6], [0.7], C.DOES_NOT),
    ([0.5, 0.5], [0.5, 0.5], C.TIE),                         # every seed equal: true, but no information
    ([0.0, 0.0], [0.0], C.TIE),                              # nobody solved anything (the six-domain run)
    ([0.5, 0.5], [0.4, 0.4], C.HOLDS),                       # no spread: the sign
    ([None, float("nan")], [0.5], C.NO_SCORE),
])
def test_verdict_on_constructed_seed_scores(a, b, want):
    v = C.verdict(a, b)
    assert v["verdict"] == want
    if want != C.NO_SCORE:
        sa = [x for x in a if x is not None]
        assert math.isclose(v["diff"], sum(sa) / len(sa) - sum(b) / len(b))
        assert math.isclose(v["spread"], max(max(a) - min(a), max(b) - min(b)))


def test_verdict_boundary_is_the_larger_seed_range():
    # A's seeds range 0.2, B's 0.0; the difference of means exactly 0.2 is inside, 0.21 is not
    assert C.verdict([0.6, 0.8], [0.5, 0.5])["verdict"] == C.INSIDE
    assert C.verdict([0.61, 0.81], [0.5, 0.5])["verdict"] == C.HOLDS
    assert C.verdict([0.29, 0.09], [0.4, 0.4])["verdict"] == C.DOES_NOT


def test_verdict_table_and_pairs_from_variants():
    variants = {"xlstm-7-1": {"backbone": "xlstm", "slstm_at": "7:1", "width": 128},
                "mamba": {"backbone": "mamba", "slstm_at": None, "width": 128},
                "dt": {"backbone": "dt", "slstm_at": None, "width": 128},
                "xlstm-7-1-w256": {"backbone": "xlstm", "slstm_at": "7:1", "width": 256},
                "dt-w256": {"backbone": "dt", "slstm_at": None, "width": 256}}
    pairs, scaling = C.comparison_pairs(variants)
    assert sorted(pairs) == [("mamba", "dt"), ("xlstm-7-1", "dt"), ("xlstm-7-1-w256", "dt-w256")]
    assert sorted(scaling) == [("dt-w256", "dt"), ("xlstm-7-1-w256", "xlstm-7-1")]
    seeds = {"xlstm-7-1": {"metaworld": [0.9, 0.8], "atari": [0.1, 0.3]},
             "dt": {"metaworld": [0.5, 0.4], "atari": [0.2, 0.25]}}
    t = C.verdict_table(seeds, pairs)
    assert set(t) == {"metaworld", "atari"} and set(t["metaworld"]) == {"xlstm-7-1 >= dt"}
    assert t["metaworld"]["xlstm-7-1 >= dt"]["verdict"] == C.HOLDS
    assert t["atari"]["xlstm-7-1 >= dt"]["verdict"] == C.INSIDE


def test_seed_stats_and_summary_schema():
    st = C.seed_stats([0.2, None, 0.6])
    assert st["seeds"] == [0.2, None, 0.6] and st["n"] == 2 and math.isclose(st["mean"], 0.4)
    assert math.isclose(st["std"], 0.2) and (st["min"], st["max"]) == (0.2, 0.6)
    agents = {"dt-s0": {"variant": "dt", "seed": 0, "scores": {"train": {"metaworld": {"score": 0.5}}}},
              "dt-s1": {"variant": "dt", "seed": 1, "scores": {"train": {"metaworld": {"score": 0.7},
                                                                          "darkroom": {"score": 0.3}}}}}
    seeds = C.variant_seed_scores(agents)
    assert seeds == {"dt": {"darkroom": [None, 0.3], "metaworld": [0.5, 0.7]}}
    s = C.build_summary({"metaworld": {"random": 0.0, "data": 0.9}}, seeds, {"dt": 1234})
    assert s == {"domains": {"darkroom": {"random": None, "data": None,
                                          "backbones": {"dt": {"params": 1234, "seeds": [None, 0.3]}}},
                             "metaworld": {"random": 0.0, "data": 0.9,
                                           "backbones": {"dt": {"params": 1234, "seeds": [0.5, 0.7]}}}}}


# ----------------------------------------------------------------------------- specs, widths, seeds
def test_backbone_specs_take_a_width():
    assert parse_backbone("xlstm:7:1@256") == {"name": "xlstm-7-1-w256", "backbone": "xlstm", "slstm_at": "7:1",
                                               "width": 256}
    assert parse_backbone("dt@128")["name"] == "dt-w128" and parse_backbone("dt")["width"] is None
    for bad in ("dt@", "dt@x", "dt@0", "gru@128"):
        with pytest.raises(ValueError, match="backbone spec"):
            parse_backbone(bad)


def test_unmatched_variants_fail_up_front_naming_counts():
    with pytest.raises(ValueError, match=r"width 128 are not within 10% .*xlstm-7-1: 1,308,506.*dt: 1,452,978.*1\.110"):
        MultiTaskConfig(backbones=["xlstm:7:1", "dt"], d_model=128, n_layers=3, context=5, dt_match=False)
    with pytest.raises(ValueError, match="param_tolerance=1.5"):
        MultiTaskConfig(param_tolerance=1.5)
    with pytest.raises(ValueError, match=r"seeds=\[0, 0\]"):
        MultiTaskConfig(seeds=[0, 0])
    # with the check off the same config builds (the committed multitask-cpu results were made so)
    MultiTaskConfig(backbones=["xlstm:7:1", "dt"], d_model=128, n_layers=3, context=5, dt_match=False,
                    param_tolerance=0)


def test_dt_is_matched_to_the_four_and_two_widths(tmp_path):
    """The six-domain layout: four backbones at width 128 and xLSTM [7:1] + DT at 256; the counts the
    config reports are those of the models training builds."""
    from lramlab.models import build_model
    from lramlab.train.loop import make_model_config

    cfg = MultiTaskConfig(backbones=FOUR + ["xlstm:7:1@256", "dt@256"], d_model=128, n_layers=3, context=5,
                          seeds=[0, 1], out_dir=str(tmp_path))
    m = cfg.param_match()
    assert set(m["groups"]) == {"128", "256"}
    assert set(m["groups"]["128"]["params"]) == {"xlstm-7-1", "xlstm-1-0", "mamba", "dt"}
    for g in m["groups"].values():
        assert g["ratio"] <= 1.10 and math.isclose(g["ratio"], max(g["params"].values()) / min(g["params"].values()))
    assert (m["dt"]["dt"]["n_layers"], m["dt"]["dt"]["d_model"]) == (2, 128)       # 3 blocks would be +11 %
    assert (m["dt"]["dt-w256"]["n_layers"], m["dt"]["dt-w256"]["d_model"]) == (3, 256)
    tcs = {a["name"]: cfg.train_config(a["spec"], ["metaworld/reach-v2"], tmp_path / a["name"], seed=a["seed"])
           for a in cfg.agents()}
    assert sorted(tcs) == sorted(f"{v}-s{s}" for v in ["xlstm-7-1", "xlstm-1-0", "mamba", "dt", "xlstm-7-1-w256",
                                                        "dt-w256"] for s in (0, 1))
    assert {(t.steps, t.batch_size, t.context, t.lr, t.warmup) for t in tcs.values()} == {(100, 8, 5, 0.001, 10)}
    assert tcs["dt-s1"].seed == 1 and tcs["dt-s0"].seed == 0 and (tcs["dt-s0"].n_layers, tcs["dt-s0"].d_model) == (2, 128)
    assert tcs["xlstm-7-1-w256-s0"].d_model == 256 and tcs["xlstm-7-1-w256-s0"].n_layers == 6
    for name in ("dt-s0", "xlstm-7-1-w256-s0"):
        real = sum(p.numel() for p in build_model(make_model_config(tcs[name])).parameters())
        assert real == cfg.param_counts()[name.rsplit("-s", 1)[0]]


def test_match_dt_fit_is_exact_and_widens_when_blocks_cannot_match():
    from lramlab.models import LRAMConfig

    # tiny (width 64): DT's 1600-position table alone is 102K of ~440K; no block count matches
    m = match_dt([439994], 64, 2, {"size": "tiny", "context_steps": 10}, 0.10)
    assert m["ratio"] <= 1.10 and m["d_model"] != 64 and "width" in m["how"]
    assert m["params"] == count_params(LRAMConfig(backbone="dt", size="tiny", context_steps=10,
                                                  n_layers=m["n_layers"], d_model=m["d_model"]))
    with pytest.raises(ValueError, match="no recurrent parameter counts"):
        match_dt([], 64, 2)
    assert check_param_match({"64": {"a": 100, "b": 109}}, 0.10) == {"64": 1.09}


def test_jobs_per_seed_one_embedding_per_variant_and_the_random_reference(tmp_path):
    cfg = MultiTaskConfig(backbones=["xlstm:1:0", "dt"], seeds=[3, 5], out_dir=str(tmp_path))
    jobs = {j.name: j for j in plan_jobs(cfg, ["metaworld/reach-v2"], ["metaworld/door-lock-v2"])}
    for v in ("xlstm-1-0", "dt"):
        for s in (3, 5):
            n = f"{v}-s{s}"
            assert jobs[f"train-{n}"].args["train"]["seed"] == s
            assert jobs[f"finetune-{n}"].args["train"]["seed"] == s
            assert {f"eval-{n}-{p}" for p in ("train", "zeroshot", "finetuned")} <= set(jobs)
            # the same env seeds for every agent: the seeds differ only in training
            assert jobs[f"eval-{n}-train"].args["seed"] == cfg.seed
        assert f"embed-{v}-s3" in jobs and f"embed-{v}-s5" not in jobs
    r = jobs["eval-random-train"]
    assert r.args["greedy"] is False and r.args["tasks"] == ["metaworld/reach-v2"] and not r.needs


def test_random_policy_model_samples_uniform_actions(tmp_path):
    import torch

    from lramlab.multitask.study import random_policy_model
    from lramlab.train.checkpoint import load_model_from_checkpoint

    path = random_policy_model(tmp_path / "random" / "model.pt")
    model = load_model_from_checkpoint(path)
    g = torch.Generator().manual_seed(0)
    logits = torch.zeros(4000, model.head.out_features)
    acts = model.decode(logits, n_actions=3, greedy=False, generator=g)
    counts = torch.bincount(acts, minlength=3).tolist()
    assert len(counts) == 3 and all(1200 < c < 1470 for c in counts)  # ~1333 each
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    sha = path.read_bytes()
    random_policy_model(path)
    assert path.read_bytes() == sha  # written once: its evaluation stays current on a re-run
