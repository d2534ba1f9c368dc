"""Analysis functions and figures on real inputs: a real training run's metrics.jsonl, hidden states
of real trajectories (tiny simulators through the store), real ICL rollouts on Dark-Room and a real
latency grid (Atari Freeway in the loop)."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import TINY_SPECS
from lramlab.analysis import embeddings as E
from lramlab.analysis import latency as L
from lramlab.analysis import plots
from lramlab.studies import DataPrepConfig, EmbeddingConfig, LatencyStudyConfig, write_metrics

pytest.importorskip("plotly")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained_run(tiny_root, tmp_path_factory):
    """A real (tiny DT) training run on the tiny dataset: metrics.jsonl, checkpoints, model.pt."""
    from lramlab.train import TrainConfig, run

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=(str(tiny_root),), backbone="dt", size="tiny", steps=8, batch_size=2, context=10,
                      lr=3e-3, warmup=2, log_every=2, val_every=4, val_batches=1, amp=False, tensorboard=False,
                      progress=False, out=str(out / "run"), seed=0)
    return run(cfg, task_specs=TINY_SPECS)


@pytest.fixture(scope="module")
def tiny_model(trained_run):
    from lramlab.train.checkpoint import load_model_from_checkpoint

    return load_model_from_checkpoint(trained_run.model_path)


@pytest.fixture(scope="module")
def dataset(tiny_root):
    return E.make_dataset(tiny_root, context=10, task_specs=TINY_SPECS)


@pytest.fixture(scope="module")
def emb(tiny_model, dataset):
    return E.embed_tasks(tiny_model, dataset, n_per_task=6, seed=0)


LAT_CFG = dict(backbones=("xlstm", "dt"), contexts=(5, 40), batch_sizes=(1,), throughput_batches=(1, 2),
               throughput_context=5, modes=("model",), warmup=1, reps=3, device="cpu")


@pytest.fixture(scope="module")
def latency_table():
    return L.run_latency_study(LatencyStudyConfig(**LAT_CFG), progress=False)


# ----------------------------------------------------------------------------- metrics logs
def test_learning_and_perplexity_curves_show_the_logged_values(trained_run):
    lines = [json.loads(ln) for ln in (trained_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    fig = plots.learning_curves(trained_run.run_dir)
    by_name = {t.meta["key"]: t for t in fig.data}
    assert "train/loss" in by_name and "val/loss" in by_name
    logged = [(r["step"], r["train/loss"]) for r in lines if "train/loss" in r]
    assert list(by_name["train/loss"].x) == [s for s, _ in logged]
    np.testing.assert_allclose(by_name["train/loss"].y, [v for _, v in logged])
    ppl = plots.perplexity_curves(trained_run.run_dir)
    keys = {t.meta["key"] for t in ppl.data}
    assert "val/perplexity_domain_mean" in keys
    val = [r["val/perplexity_domain_mean"] for r in lines if "val/perplexity_domain_mean" in r]
    assert len(val) == 2 and all(v > 1 for v in val)  # at step 4 and at the end
    figs = plots.training_figures(trained_run.run_dir, label="dt")
    assert set(figs) == {"loss", "perplexity"}


def test_read_metrics_names_a_bad_line_and_tolerates_a_partial_last_line(trained_run, tmp_path):
    text = (trained_run.run_dir / "metrics.jsonl").read_text()
    good = tmp_path / "good" / "metrics.jsonl"
    good.parent.mkdir()
    good.write_text(text + '{"step": 99, "train/lo')  # a run still writing its last line
    assert len(plots.read_metrics(good.parent)) == len(text.splitlines())
    bad = tmp_path / "metrics.jsonl"
    lines = text.splitlines()
    bad.write_text("\n".join(lines[:1] + ["{not json"] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        plots.read_metrics(bad)
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        plots.read_metrics(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no metric containing 'loss'"):
        plots.learning_curves([{"step": 1, "val/perplexity": 3.0}])


# ----------------------------------------------------------------------------- scores, ICL
def test_domain_scores_from_an_eval_result(tiny_model):
    from lramlab.evaluate import EvalResult, aggregate, score_task
    from lramlab.manifests import get_task
    from lramlab.rollout import run_task

    spec = get_task("darkroom/goal-1-1")
    ro = run_task(tiny_model, spec, episodes=2, n_envs=2, seed=0)
    ts = score_task(spec, ro.returns, ro.success_rate)
    res = EvalResult(tasks=[ts], domains=aggregate([ts]))
    fig = plots.domain_scores({"dt": res})
    assert [t.name for t in fig.data] == ["dt"]
    assert list(fig.data[0].x) == ["darkroom"]
    frac = np.mean(ro.returns) / spec.extra["max_return"]  # Dark-Room on the normalised axis: return / best
    assert fig.data[0].y[0] == pytest.approx(frac) and res.domains["darkroom"]["mean"] == pytest.approx(np.mean(ro.returns))
    rows = plots.domain_scores([{"backbone": "a", "domain": "atari", "score": 0.5},
                                {"backbone": "b", "domain": "atari", "score": 0.7}])
    assert [t.y[0] for t in rows.data] == [0.5, 0.7]
    assert plots.scores_from_metrics(res.metrics()) == {"darkroom": pytest.approx(frac)}
    with pytest.raises(ValueError, match="lacks"):
        plots.domain_scores([{"backbone": "a", "score": 1.0}])


def test_icl_curves_plot_the_mean_return_per_trial():
    from lramlab.icl import icl_rollouts
    from lramlab.models import LRAMConfig, build_model

    torch.manual_seed(0)
    model = build_model(LRAMConfig(backbone="xlstm", size="tiny"))  # recurrent: cheap steps across trials
    rets = icl_rollouts(model, [(9, 0), (3, 4)], trials=2, seed=0)
    assert rets.shape == (2, 2)
    fig = plots.icl_curves({"dt": rets})
    line = [t for t in fig.data if t.name == "dt"][0]
    assert list(line.x) == [1, 2]
    np.testing.assert_allclose(line.y, rets.mean(0))
    assert any(t.fill == "toself" for t in fig.data)  # the ±1 std band over goals
    with pytest.raises(ValueError, match=r"shape \(trials,\) or \(tasks, trials\)"):
        plots.icl_curves({"x": np.zeros((2, 2, 2))})


# ----------------------------------------------------------------------------- embeddings
def test_sample_windows_full_seeded_and_balanced(dataset):
    items = E.sample_windows(dataset, n_per_task=6, seed=0)
    assert len(items) == 6 * len(dataset.tasks)
    per_task = {t: 0 for t in range(len(dataset.tasks))}
    for ti, ep, end in items:
        per_task[ti] += 1
        L_ep = int(dataset.data[ti].lengths[ep])
        assert 0 <= end < L_ep
        if dataset.data[ti].lengths.max() >= dataset.context_len:
            assert end >= dataset.context_len - 1  # a whole sub-trajectory of C steps
    assert set(per_task.values()) == {6}
    assert items == E.sample_windows(dataset, 6, seed=0)
    assert items != E.sample_windows(dataset, 6, seed=1)
    with pytest.raises(ValueError, match="n_per_task"):
        E.sample_windows(dataset, 0)


def test_pooled_hidden_states_equal_the_masked_mean_of_model_hidden_states(tiny_model, dataset):
    items = E.sample_windows(dataset, 3, seed=2)
    pooled = E.pooled_hidden_states(tiny_model, dataset, items, layer=-2, batch_size=2)
    i = 4
    ti = items[i][0]
    batch = dataset.make_batch(dataset.infos[ti].domain, [items[i]])
    with torch.no_grad():
        h = tiny_model.hidden_states(batch, layer=-2)[0]  # (T, D)
    m = batch["mask"][0]
    np.testing.assert_allclose(pooled[i], h[m].mean(0).numpy(), rtol=1e-5, atol=1e-6)
    assert pooled.shape == (len(items), tiny_model.cfg.d_model)
    last = E.pooled_hidden_states(tiny_model, dataset, items, layer=-1)
    assert not np.allclose(last, pooled)  # a different layer gives different vectors


def test_embed_tasks_umap_and_silhouette(emb, dataset):
    n = 6 * len(dataset.tasks)
    assert emb.coords.shape == (n, 2) and np.isfinite(emb.coords).all()
    assert sorted(set(emb.task.tolist())) == sorted(dataset.tasks)
    assert set(emb.domain.tolist()) == {"classic", "control", "atari"}
    for s in (emb.silhouette, emb.silhouette_2d):
        assert -1.0 <= s <= 1.0
    # silhouette by domain is sklearn's on the same vectors
    from sklearn.metrics import silhouette_score

    assert emb.silhouette == pytest.approx(silhouette_score(emb.hidden, emb.domain))
    assert emb.summary()["coords_finite"] is True
    assert len(emb.rows()) == n


def test_embed_tasks_is_seeded(tiny_model, dataset, emb):
    again = E.embed_tasks(tiny_model, dataset, n_per_task=6, seed=0)
    np.testing.assert_allclose(again.coords, emb.coords, rtol=1e-5, atol=1e-5)


def test_silhouette_edge_cases():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    assert E.silhouette(x, ["a", "a", "b", "b"]) > 0.9
    assert math.isnan(E.silhouette(x, ["a"] * 4))  # one domain: undefined


def test_umap_scatter_one_trace_per_domain_with_tasks_on_hover(emb):
    fig = plots.umap_scatter(emb)
    assert sorted(t.name for t in fig.data) == sorted(set(emb.domain.tolist()))
    for t in fig.data:
        sel = emb.domain == t.name
        np.testing.assert_allclose(t.x, emb.coords[sel, 0])
        assert set(t.text) == set(emb.task[sel].tolist())
    assert "silhouette" in fig.layout.title.text


def test_run_embeddings_from_a_checkpoint(trained_run, tiny_root):
    cfg = EmbeddingConfig(checkpoint=str(trained_run.run_dir), data_dir=str(tiny_root), n_per_task=3, context=10,
                          tasks=("classic/cartpole", "atari/pong"))
    res = E.run_embeddings(cfg, task_specs=TINY_SPECS)
    assert res.info["backbone"] == "dt" and res.info["checkpoint"] == str(trained_run.run_dir)
    assert len(res) == 6 and set(res.task.tolist()) == {"classic/cartpole", "atari/pong"}


# ----------------------------------------------------------------------------- latency
def test_latency_grid_records(latency_table):
    cfg = LatencyStudyConfig(**LAT_CFG)
    recs = latency_table.records
    assert [(r.kind, r.backbone, r.size, r.mode, r.batch_size, r.context) for r in recs] == L.grid_points(cfg)
    for r in recs:
        assert not r.oom and r.latency_ms > 0 and r.latency_p10_ms <= r.latency_ms <= r.latency_p90_ms
        assert r.throughput == pytest.approx(r.batch_size * 1000.0 / r.latency_ms)
    state = {(r.backbone, r.mode, r.context): r.state_mb for r in recs if r.kind == "latency"}
    # DT's KV cache grows with the context; the recurrent state has a fixed size
    assert state[("dt", "model", 40)] > state[("dt", "model", 5)]
    assert state[("xlstm", "model", 40)] == state[("xlstm", "model", 5)]
    s = latency_table.summary()
    assert s["all_latency_positive"] and s["n_oom"] == 0 and len(s["rows"]) == len(recs)
    back = L.table_from_rows(json.loads(json.dumps(latency_table.rows())))
    assert back.rows() == latency_table.rows()


def test_env_loop_latency_with_atari_freeway():
    """In the loop with B real Freeway environments: agent step + decode + env.step per timed step."""
    rec = L.env_loop_latency("dt", "tiny", 5, 2, task="atari/freeway", warmup=1, reps=3)
    assert rec.mode == "env" and rec.batch_size == 2 and rec.note == "env atari/freeway"
    assert rec.latency_ms > 0 and rec.throughput == pytest.approx(2000.0 / rec.latency_ms)
    assert rec.state_mb > 0


def test_latency_figures(latency_table):
    figs = plots.latency_figures(latency_table)
    assert set(figs) == {"latency_B1", "throughput", "crossover", "crossover_cpu", "memory"}
    lat = figs["latency_B1"]
    assert len(lat.data) == 2  # one trace per backbone
    for t in lat.data:
        recs = latency_table.select(kind="latency", backbone=t.meta["backbone"], mode=t.meta["mode"])
        assert list(t.x) == [5, 40]
        np.testing.assert_allclose(t.y, [r.latency_ms for r in recs])
    thr = figs["throughput"]
    assert {tuple(t.x) for t in thr.data} == {(1, 2)}
    assert "|" in latency_table.markdown()


def test_latency_oom_is_recorded_and_not_plotted(monkeypatch):
    monkeypatch.setattr(L, "_available_bytes", lambda device: 10_000)  # nothing fits
    cfg = LatencyStudyConfig(backbones=("dt",), contexts=(5,), throughput_batches=(), modes=("model",), reps=1,
                             warmup=0, device="cpu")
    tab = L.run_latency_study(cfg, progress=False)
    assert len(tab.records) == 1 and tab.records[0].oom and "skipped" in tab.records[0].note
    assert len(plots.latency_curves(tab).data) == 0
    assert tab.summary()["n_oom"] == 1


def test_study_configs_reject_bad_values():
    with pytest.raises(ValueError, match="backbone 'lstm' is unknown"):
        LatencyStudyConfig(backbones=("lstm",))
    with pytest.raises(ValueError, match="modes: 'gpu' is unknown"):
        LatencyStudyConfig(modes=("gpu",))
    with pytest.raises(ValueError, match="contexts: 0 is not a positive integer"):
        LatencyStudyConfig(contexts=(0,))
    with pytest.raises(ValueError, match="n_per_task=0"):
        EmbeddingConfig(n_per_task=0)
    with pytest.raises(ValueError, match="'atari/pong' is not a metaworld task"):
        DataPrepConfig(metaworld_tasks=("atari/pong",))
    with pytest.raises(ValueError, match="darkroom_goals=81"):
        DataPrepConfig(darkroom_goals=81)
    assert LatencyStudyConfig(contexts=[50, 100]).contexts == (50, 100)  # papermill gives lists
    with pytest.raises(ValueError, match="unknown LatencyStudyConfig field"):
        LatencyStudyConfig.from_dict({"context": 5})


# ----------------------------------------------------------------------------- outputs
def test_save_figures_html_and_png_or_reason(emb, tmp_path):
    saved = plots.save_figures({"umap": plots.umap_scatter(emb)}, tmp_path)
    html = tmp_path / "umap.html"
    assert saved["umap"]["html"] == str(html) and "plotly" in html.read_text()[:5000].lower()
    ok, why = plots.png_export_available()
    if ok:
        assert saved["_png_error"] is None
        assert (tmp_path / "umap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert saved["umap"]["png"] is None and saved["_png_error"] == why and "hromium" in why or "kaleido" in why
    off = plots.save_figures({"umap": plots.umap_scatter(emb)}, tmp_path / "off", png=False)
    assert off["_png_error"] == "PNG export turned off"


def test_episode_returns_one_panel_per_domain(tiny_root):
    """Each domain on its own axes (their returns differ by orders of magnitude), a bold mean where a
    domain has several tasks, one legend entry per mean instead of one per task."""
    from lramlab.studies import summarize_data

    summary = summarize_data(tiny_root)
    fig = plots.episode_returns(summary)
    by_dom: dict = {}
    for t in fig.data:
        by_dom.setdefault(t.meta["domain"], set()).add(t.yaxis or "y")
    assert set(by_dom) == {"classic", "control", "atari"}
    assert all(len(v) == 1 for v in by_dom.values()) and len(set.union(*by_dom.values())) == 3  # own y axis each
    means = [t for t in fig.data if t.meta["task"] == "mean"]
    assert {t.meta["domain"] for t in means} == {"classic", "control"}  # atari has one task: no mean line
    rows = {r["task"]: r for r in summary.tasks}
    cart = [t for t in fig.data if t.meta["task"] == "classic/cartpole"][0]
    assert list(cart.y) == pytest.approx(rows["classic/cartpole"]["returns"]) and not cart.showlegend
    n = min(len(rows["classic/cartpole"]["returns"]), len(rows["classic/acrobot"]["returns"]))
    mean = [t for t in means if t.meta["domain"] == "classic"][0]
    assert mean.y[0] == pytest.approx((rows["classic/cartpole"]["returns"][0] + rows["classic/acrobot"]["returns"][0]) / 2)
    assert n >= 1 and [a.text for a in fig.layout.annotations] == ["atari (1 task)", "classic (2 tasks)",
                                                                    "control (2 tasks)"]


def test_show_figures_displays_a_png_beside_the_plotly_json_and_saves_it(emb, tmp_path, monkeypatch):
    """What an executed notebook keeps of a figure: one output with the plotly JSON and a PNG of it
    (the size of the figure, not kaleido's 700 x 500); the saved files are the same PNG and an HTML
    page that carries plotly.js itself (opens offline)."""
    import IPython.display

    from lramlab.analysis import display as D

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda data, raw=False, metadata=None: shown.append((data, metadata)))
    fig = plots.umap_scatter(emb)
    saved = D.show_figures({"umap": fig}, tmp_path)
    (data, md), = shown
    assert data[D.PLOTLY_MIME]["data"][0]["type"] == "scatter" and data["text/plain"].startswith("<figure: ")
    ok, why = plots.png_export_available()
    if not ok:
        assert "image/png" not in data and why in data["text/plain"]
        return
    import base64

    import imageio.v3 as iio

    png = base64.b64decode(data["image/png"])
    assert iio.imread(png).shape[:2] == (plots.png_size(fig)[1], plots.png_size(fig)[0]) == (560, 1000)
    assert md == {"image/png": {"width": 1000}}
    assert (tmp_path / "umap.png").read_bytes() == png  # rendered once, written as shown
    page = (tmp_path / "umap.html").read_text()
    assert "plotly.js v" in page and not re.search(r"<script[^>]+src=[\"']?https?://", page)


def test_show_table_rounds_and_renders_html_and_markdown():
    from lramlab.analysis.display import show_table

    t = show_table({"dt": {"last": 63.040000000000006, "tasks": ["a"] * 82, "holds": True},
                    "xlstm": {"last": 68.3, "tasks": ["a"], "holds": None}}, index="variant", title="claim")
    md = t.markdown()
    assert "| variant | last | tasks | holds |" in md and "| dt | 63.04 | 82 values | True |" in md
    assert "| xlstm | 68.3 | a |  |" in md and "63.040000000000006" not in md
    assert "<caption>claim</caption>" in t._repr_html_() and "<td>63.04</td>" in t._repr_html_()
    kv = show_table({"loss_first": 3.3512345, "params": {"a": 1}}, index="metric").markdown()
    assert "| loss_first | 3.351 |" in kv and "| params | a: 1 |" in kv


def test_write_metrics_is_json_without_nan(tmp_path):
    p = write_metrics(tmp_path / "o", {"a": float("nan"), "b": np.float32(1.5), "c": np.arange(2), "d": tmp_path})
    assert json.loads(p.read_text()) == {"a": None, "b": 1.5, "c": [0, 1], "d": str(tmp_path)}
