"""The ICL study across token layouts (issue 19 item 6): the paper's (s, R̂, r) "srr", "sr" without
R̂ and lramlab's "ad" side by side, DT matched in parameters.

- a list of layouts trains one agent per variant x layout x seed in its own directory; a string
  keeps the old names; a bad layout is refused naming it;
- `dt_match` sizes the DT within `param_tolerance` of the recurrent variants, per layout; counts
  further apart are refused naming them; the trained agents' counts are the config's;
- a real study (real model-based Dark-Room histories) of three layouts: records, metrics grouped per
  layout, the claims' numbers against the runs' returns, the figure's panels;
- the DT's KV cache on Dark-Room history windows past its attention window, per layout (1, 2 and 3
  tokens per step, read at s or at R̂), equals the full forward over the window of the last C steps
  ("exact") or over the tokens since its last re-encode ("hop", what ICL rollouts use).
  Recurrent step == parallel forward for every layout (xLSTM, Mamba, DT within its window) is in
  tests/test_model.py (srr: test_step_through_three_episodes..., sr: test_sr_tokens..., ad:
  test_ad_tokens..., s / srra: test_token_variants_step_equals_forward).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lramlab.icl.study import ICLStudyConfig, run_dir_name, run_icl_study, window_stats

TASK = "darkroom/goal-6-9"           # one of the 80 train goals
LAYOUTS = ("srr", "sr", "ad")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Real model-based learning histories (2 learners x 4 episodes) of one train goal, packed."""
    from lramlab.collect.generate import generate
    from lramlab.data.store import pack_task

    r = tmp_path_factory.mktemp("icl_tokens_data")
    pack_task(generate(TASK, 8, policy="mbq:eps_start=0.1,eps_decay=0.9,histories=2", out=r, progress=False))
    return r


# ----------------------------------------------------------------------------- config
def test_a_list_of_layouts_makes_one_agent_per_layout_with_its_own_directory(tmp_path):
    cfg = ICLStudyConfig(data_dir="d", backbones=["xlstm:7:1", "dt"], tokens=["srr", "sr", "ad"], seeds=[0, 2],
                         out_dir=str(tmp_path))
    jobs = cfg.jobs()
    assert sorted(jobs) == sorted((v, s, t) for v in ("xlstm:7:1", "dt") for s in (0, 2) for t in LAYOUTS)
    outs = {j: cfg.agent_config(*j).out for j in jobs}
    assert len(set(outs.values())) == len(jobs) == 12
    assert outs[("xlstm:7:1", 0, "srr")] == str(tmp_path.resolve() / "xlstm-7-1-srr-s0")
    assert outs[("dt", 2, "ad")] == str(tmp_path.resolve() / "dt-ad-s2")
    assert all(cfg.agent_config(*j).tokens == j[2] for j in jobs)
    # the costliest first (3 tokens per step, the DT), the cheapest last (1 token, xLSTM)
    assert jobs[0][::2] == ("dt", "srr") and jobs[-1][::2] == ("xlstm:7:1", "ad")
    # one layout given as a string: today's names (existing results stay valid)
    one = ICLStudyConfig(data_dir="d", backbones=["dt"], tokens="srr", out_dir=str(tmp_path))
    assert one.jobs() == [("dt", 0, "srr")] and one.agent_config("dt", 0).out.endswith("/dt-s0")
    assert one.layouts == ("srr",) and not one.named_layouts
    # ... and a list of one names it
    assert ICLStudyConfig(data_dir="d", backbones=["dt"], tokens=["srr"]).agent_config("dt", 0).out.endswith("/dt-srr-s0")
    with pytest.raises(ValueError, match=r"token layouts \['srr', 'sr', 'ad'\]: name one"):
        cfg.agent_config("dt", 0)
    assert run_dir_name("xlstm", 1, "sr") == "xlstm-7-1-sr-s1"


@pytest.mark.parametrize("tokens, msg", [
    ("rs", r"ICLStudyConfig: tokens='rs': expected one of srr, s, srra, sr, ad \(srr: the paper's"),
    (["srr", "sa"], r"ICLStudyConfig.tokens=\['srr', 'sa'\]: layout 'sa' is not one of srr, s, srra, sr, ad"),
    (["sr", "sr"], r"tokens=\['sr', 'sr'\]: a layout is given twice"),
    ([], r"tokens=\[\]: expected a token layout"),
    (3, r"tokens=3: expected a token layout"),
])
def test_a_wrong_layout_is_refused_naming_it(tokens, msg):
    with pytest.raises(ValueError, match=msg):
        ICLStudyConfig(data_dir="d", tokens=tokens)


def test_a_wrong_layout_in_a_preset_is_refused_before_any_notebook_runs(tmp_path):
    pytest.importorskip("papermill")
    from lramlab import pipeline as P

    f = tmp_path / "p.yaml"
    f.write_text("03_icl:\n  tokens: [srr, sa]\n")
    params = P.load_params(f)
    declared = P.notebook_parameters(P.NOTEBOOK_DIR / "03_icl.ipynb")
    P.check_overrides(params, "03_icl", declared)  # a string or a list: the type is the config's to check
    with pytest.raises(ValueError, match=r"p\.yaml:2: parameters for 03_icl: .*layout 'sa' is not one of"):
        P.check_values(params, "03_icl", declared)


def test_dt_match_brings_dt_within_tolerance_of_the_recurrent_variants_per_layout():
    from lramlab.models import build_model
    from lramlab.models.params import count_params

    cfg = ICLStudyConfig(data_dir="d", backbones=["xlstm:7:1", "dt"], tokens=["srr", "sr", "ad"], dt_match=True,
                         param_tolerance=0.10)
    counts = cfg.param_counts()
    assert set(counts) == set(LAYOUTS)
    for lay, c in counts.items():
        assert max(c.values()) / min(c.values()) <= 1.10, (lay, c)
        dt = cfg.model_config("dt", lay)
        assert dt.tokens == lay and (dt.n_layers, dt.d_model) == (cfg._shapes[lay]["n_layers"], cfg._shapes[lay]["d_model"])
        assert c["dt"] == count_params(dt) == sum(p.numel() for p in build_model(dt).parameters())
        # the preset DT (2 blocks, width 64, its 1600 x 64 position table) is 30 % larger: matching changed it
        assert count_params(cfg.model_config("dt", lay).__class__(**{**dt.to_dict(), "n_layers": 2, "d_model": 64})) \
            > 1.25 * c["xlstm:7:1"]
        assert cfg.agent_config("dt", 0, lay).d_model == dt.d_model
        assert cfg.agent_config("xlstm:7:1", 0, lay).d_model is None  # the recurrent variants keep the preset
    m = cfg.param_match()
    assert m["dt_match"] and set(m["dt"]) == set(LAYOUTS) and m["layouts"]["sr"]["ratio"] <= 1.10
    assert m["dt"]["srr"]["matched_to"] == {"xlstm:7:1": counts["srr"]["xlstm:7:1"]}


def test_counts_further_apart_than_the_tolerance_are_refused_naming_them():
    from lramlab.models.params import count_params

    base = dict(data_dir="d", backbones=["xlstm:7:1", "dt"], tokens=["ad", "srr"])
    cfg = ICLStudyConfig(**base)  # no check asked for: the preset DT builds, counts are only reported
    x, d = cfg.param_counts()["ad"]["xlstm:7:1"], cfg.param_counts()["ad"]["dt"]
    assert (x, d) == (count_params(cfg.model_config("xlstm:7:1", "ad")), count_params(cfg.model_config("dt", "ad")))
    with pytest.raises(ValueError, match=rf"ICLStudyConfig: parameter counts of the variants with tokens ad are not "
                                         rf"within 10% of each other \(xlstm:7:1: {x:,}, dt: {d:,}; largest/smallest "
                                         rf"{d / x:.3f}\); set dt_match: true"):
        ICLStudyConfig(**base, param_tolerance=0.10)
    with pytest.raises(ValueError, match=r"param_tolerance=1.5: expected 0 <= value < 1"):
        ICLStudyConfig(**base, param_tolerance=1.5)


# ----------------------------------------------------------------------------- a real study
def test_study_of_three_layouts_records_metrics_and_claims_per_layout(root, tmp_path):
    pytest.importorskip("plotly")
    from lramlab.analysis.plots import icl_study_figures

    # DT alone (matched to the paper's xLSTM [7:1], no recurrent variant here), a context of 1 episode: fast
    cfg = ICLStudyConfig(data_dir=str(root), backbones=["dt"], tokens=list(LAYOUTS), seeds=[0, 1], steps=2,
                         batch_size=2, warmup=1, lr=0.001, trials=3, eval_goals=["holdout"], eval_max_goals=2,
                         context_episodes=1,
                         dt_match=True, param_tolerance=0.10, workers=1, device="cpu", out_dir=str(tmp_path / "s"),
                         save_png=False)
    study = run_icl_study(cfg, progress=False)
    counts = cfg.param_counts()
    for lay in LAYOUTS:
        for v in cfg.backbones:
            for s in cfg.seeds:
                d = tmp_path / "s" / run_dir_name(v, s, lay)
                rec = study.runs[lay][v][s]
                saved = json.loads((d / "config.json").read_text())
                assert rec["run_dir"] == str(d) and saved["train"]["tokens"] == lay and rec["model"]["tokens"] == lay
                assert rec["params"]["total"] == counts[lay][v]  # what trained is what was matched
                assert rec["params"]["total"] <= 1.10 * cfg.param_match()["dt"][lay]["matched_to"]["xlstm:7:1"]
                f = json.loads((d / "icl-holdout.json").read_text())
                assert f["returns"] == rec["evals"]["holdout"]["returns"] and np.asarray(f["returns"]).shape == (2, 3)
        assert study.runs[lay]["dt"][0]["model"]["d_model"] == cfg._shapes[lay]["d_model"]
    assert not (tmp_path / "s" / "dt-s0").exists()
    m = study.metrics()
    assert "variants" not in m and set(m["layouts"]) == set(LAYOUTS)  # grouped per layout
    assert len(m["agents"]) == 6 and m["agents"]["dt-sr-s1"] == {**m["agents"]["dt-sr-s1"], "variant": "dt",
                                                                  "tokens": "sr", "seed": 1, "params": counts["sr"]["dt"]}
    for lay in LAYOUTS:
        for v in cfg.backbones:
            r = np.stack([study.runs[lay][v][s]["evals"]["holdout"]["returns"] for s in cfg.seeds])  # (S, G, N)
            got = m["layouts"][lay]["variants"][v]["holdout"]
            assert got["last"]["per_seed"] == pytest.approx(r.mean(axis=(1, 2)))  # 3 trials: one window
            assert got["last"]["std_seeds"] == pytest.approx(np.std(r.mean(axis=(1, 2))))
            assert got["curve_mean"] == pytest.approx(r.mean(axis=(0, 1)))
    assert {r["tokens"] for r in m["table"]} == set(LAYOUTS) and len(m["table"]) == 3
    # the claims: "R̂ helps" compares srr with sr per variant on the runs' own numbers
    rhat = [c for c in m["claims"] if c["claim"].startswith("R̂ helps")]
    assert [c["compared"] for c in rhat] == ["DT · srr vs DT · sr"]
    a, b = (window_stats(study.returns("dt", "holdout", lay), "last") for lay in ("srr", "sr"))
    assert rhat[0]["gap"] == pytest.approx(round(a["mean"] - b["mean"], 1))
    assert rhat[0]["std over seeds"] == pytest.approx(round(max(a["std_seeds"], b["std_seeds"]), 1))
    assert sum(c["claim"].startswith("learns in context") for c in m["claims"]) == 3
    assert any(c["claim"] == "lramlab's ad vs the paper's srr" for c in m["claims"])
    fig = icl_study_figures(study)["icl_holdout"]
    assert [a.text for a in fig.layout.annotations] == ["tokens srr", "tokens sr", "tokens ad"]
    lines = [t for t in fig.data if t.name == "DT" and t.mode == "lines+markers"]
    assert len(lines) == 3 and list(lines[1].y) == pytest.approx(study.returns("dt", "holdout", "sr").mean(axis=(0, 1)))
    assert sum(t.showlegend is not False for t in fig.data if t.mode == "lines+markers") == 1  # one legend entry


# ----------------------------------------------------------------------------- DT past its window, per layout
def _history_batch(root, context: int):
    """Two real learning-history windows of `context` steps that cross an episode boundary."""
    from lramlab.data.history import HistoryDataset

    ds = HistoryDataset(root, split="train", context_len=context, tasks=[TASK])
    b = ds.make_batch("darkroom", [(0, 1, context // 2), (0, 2, context // 3)])
    assert b["mask"].all()
    return b


def _dt(layout: str, C: int, mode: str):
    from lramlab.models import LRAMConfig, build_model

    torch.manual_seed(0)
    model = build_model(LRAMConfig(backbone="dt", size="tiny", tokens=layout, context_steps=C, d_model=32)).eval()
    model.backbone.window_mode = mode
    return model


def _step_logits(model, b):
    state, out = model.init_state(b["states"].shape[0]), []
    T = b["states"].shape[1]
    with torch.no_grad():
        for t in range(T):
            logits, state = model.step(state, obs=b["states"][:, t], rtg=b["rtg"][:, t],
                                       prev_reward=b["rewards"][:, t - 1] if t else None,
                                       prev_action=b["actions"][:, t - 1] if t else None)
            out.append(logits)
    return torch.stack(out, 1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["exact", "hop"])
def test_dt_kv_cache_equals_full_forward_over_its_window_per_layout(root, layout, mode):
    C, T = 6, 40                      # 40 steps through a window of the last 6: ICL's regime, shrunk
    model = _dt(layout, C, mode)
    k, read = model.cfg.tokens_per_step, model.read_offset
    w = model.backbone.window
    assert w == k * C
    b = _history_batch(root, T)
    stepped = _step_logits(model, b)
    with torch.no_grad():
        tokens = model.embed(b)       # the whole stream's tokens, as the steps fed them
        full = model(b)
        assert torch.allclose(stepped[:, :C], full[:, :C], atol=1e-4, rtol=0)  # inside the window: the forward
        starts, a, keep = [], 0, (w // 2) // k * k
        for t in range(T):
            lo_t, hi = (k * (t - 1) + read + 1 if t else 0), k * t + read + 1  # the tokens step t feeds
            if mode == "exact":       # the latest step boundary leaving <= w tokens: the last C steps
                a = max(0, -(-(hi - w) // k) * k)
            elif hi - a > w:          # hop: when the window would overflow, keep >= `keep` tokens
                a = max(s for s in range(0, hi + 1, k) if hi - s >= max(keep, hi - lo_t))
            starts.append(a)
            ref = model.head(model.backbone(tokens[:, a:hi])[:, -1])
            assert torch.allclose(stepped[:, t], ref, atol=1e-4, rtol=0), (t, a, hi)
        if mode == "exact":
            assert all(s == k * max(0, t - C + 1) for t, s in enumerate(starts))  # = the training window
        else:
            assert len(set(starts)) >= 4   # it did hop, several times
    # and past the window the full forward is NOT what the DT computes (the window matters here)
    assert not torch.allclose(stepped[:, T - 1], full[:, T - 1], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- the preset
def test_tokens_preset_is_the_icl_cpu_recipe_over_three_layouts_with_a_matched_dt():
    pytest.importorskip("papermill")
    from lramlab import pipeline as P
    from lramlab.studies import DataPrepConfig

    repo = P.NOTEBOOK_DIR.parent
    params, base = (P.load_params(repo / "studies" / n) for n in ("icl-tokens-cpu.yaml", "icl-cpu.yaml"))
    assert set(params) == {"01_data_prep", "03_icl"} and params["01_data_prep"] == base["01_data_prep"]
    for nb in params:
        declared = P.notebook_parameters(P.NOTEBOOK_DIR / f"{nb}.ipynb")
        P.check_overrides(params, nb, declared)
        P.check_values(params, nb, declared)
    DataPrepConfig(**params["01_data_prep"])
    mine, recipe = dict(params["03_icl"]), dict(base["03_icl"])
    changed = {"backbones", "tokens", "seeds", "dt_match", "param_tolerance"}
    assert {k: v for k, v in mine.items() if k not in changed} == {k: v for k, v in recipe.items() if k not in changed}
    cfg = ICLStudyConfig(data_dir="d", **mine)
    assert cfg.backbones == ("xlstm:7:1", "dt") and cfg.layouts == LAYOUTS and cfg.seeds == (0, 1, 2)
    assert len(cfg.jobs()) == 18 and cfg.dt_match and cfg.param_tolerance == 0.10
    assert all(r["ratio"] <= 1.10 for r in cfg.param_match()["layouts"].values())
