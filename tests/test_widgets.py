"""Widgets driven without a browser: set a control's value, check the figure it drives changed.

Inputs are real: the tiny simulator dataset (conftest), a Dark-Room learning history and a rollout
recorded by `lramlab.rollout.run_task`, hidden states of real models, a real latency grid, and a
real training run's metrics.jsonl."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import TINY_SPECS

pytest.importorskip("anywidget")
pytest.importorskip("ipywidgets")

from lramlab import widgets as W  # noqa: E402


@pytest.fixture(scope="module")
def darkroom_root(tmp_path_factory):
    from lramlab.collect.generate import generate

    root = tmp_path_factory.mktemp("dark")
    generate("darkroom/goal-5-5", 3, out=root, progress=False)
    return root


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A rollout of a (tiny, untrained) model recorded with frames through rollout.run_task."""
    from lramlab.models import LRAMConfig, build_model
    from lramlab.rollout import run_task

    rec = tmp_path_factory.mktemp("rec")
    torch.manual_seed(0)
    model = build_model(LRAMConfig(backbone="xlstm", size="tiny"))
    run_task(model, "darkroom/goal-3-2", episodes=1, seed=0, record_dir=rec, frames=True, max_steps=30)
    return rec


def _title(fw) -> str:
    return fw.layout.title.text


def test_rollout_viewer_scrubs_a_darkroom_history(darkroom_root):
    v = W.RolloutViewer(darkroom_root)
    assert v.task.value == "darkroom/goal-5-5" and v.step.max == 99
    agent_before = (tuple(v.figure.data[-1].x), tuple(v.figure.data[-1].y))
    path_len = len(v.figure.data[1].x)
    v.step.value = 40  # what the slider does
    ep = v.ep
    assert "<b>darkroom/goal-5-5</b>: step 40<" in v.header.value  # the title, set with the step
    assert (v.figure.data[-1].x[0], v.figure.data[-1].y[0]) == tuple(ep["states"][40])
    assert len(v.figure.data[1].x) == 41 > path_len  # the path so far grew
    assert "40 / 99" in v.info.value and "return-to-go" in v.info.value
    assert f"{ep['returns_to_go'][40]:.3f}" in v.info.value
    assert v.timeline.layout.shapes[0].x0 == 40
    v.episode.value = 2  # a later episode of the learning history
    assert v.step.value == 0 and v.header.value.endswith("step 0</div>")
    assert not np.array_equal(v.ep["actions"], ep["actions"])
    assert agent_before[0] == (0.0,) or agent_before[0] == (0,)  # every episode starts at (0, 0)


def test_rollout_viewer_images_states_and_task_switch(tiny_root):
    v = W.RolloutViewer({"data": tiny_root}, task="atari/pong")
    assert v.figure.data[0].type == "heatmap"
    z0 = np.array(v.figure.data[0].z)
    v.step.value = 10
    z10 = np.array(v.figure.data[0].z)
    np.testing.assert_array_equal(z10, v.ep["states"][10, 0])
    assert not np.array_equal(z0, z10)
    v.task.value = "classic/cartpole"  # a state task: the state vector as bars
    assert v.figure.data[0].type == "bar" and v.step.value == 0
    y0 = tuple(v.figure.data[0].y)
    v.step.value = 3
    assert tuple(v.figure.data[0].y) != y0
    np.testing.assert_allclose(v.figure.data[0].y, v.ep["states"][3])
    with pytest.raises(ValueError, match="task 'atari/nope' not in"):
        W.RolloutViewer(tiny_root, task="atari/nope")


def test_rollout_viewer_reads_a_recorded_rollout_with_frames(recorded, darkroom_root):
    v = W.RolloutViewer({"model": recorded, "data": darkroom_root})
    assert v.task.value == "darkroom/goal-3-2"
    # rendered frames from the .extra.npz sidecar, shown as a PNG image (the figure hidden)
    assert v.scene.value[:4] == b"\x89PNG" and v.figure_box.layout.display == "none"
    assert "recorded" in v.scene_note.value
    assert "R̂ condition" in v.info.value  # the agent's return-to-go condition was recorded
    f0 = v.scene.value
    v.step.value = 5
    assert v.scene.value != f0 or v.ep["states"][5].tolist() == v.ep["states"][0].tolist()
    assert len(v.timeline.data) == 3  # reward, RTG, R̂ condition
    v.source.value = "data"
    assert v.task.value == "darkroom/goal-5-5"


@pytest.fixture(scope="module")
def metaworld_root(tmp_path_factory):
    """Two short Meta-World episodes of the scripted expert, generated in the simulator."""
    pytest.importorskip("metaworld")
    from lramlab.collect.generate import generate

    root = tmp_path_factory.mktemp("mw")
    generate("metaworld/reach-v2", 2, out=root, progress=False, max_steps=12)
    return root


def test_rollout_viewer_rerenders_a_state_task_from_its_seed(metaworld_root, tmp_path, monkeypatch):
    """A Meta-World episode (states only) is shown as the arm: frames re-rendered by replaying the
    stored actions from the episode's seeds, checked against the stored states; a tampered episode
    is said to diverge. The scene plays as a GIF too."""
    from lramlab.rollout import episode_seed_of, replay_frames, save_video

    v = W.RolloutViewer({"data": metaworld_root}, task="metaworld/reach-v2", max_frames=6)
    assert v.replay is not None and "matches the stored states" in v.scene_note.value
    assert v.replay.every == 2 and len(v.replay.frames) == 6 and v.replay.frames.shape[-1] == 3
    assert v.scene.value[:4] == b"\x89PNG" and v.figure_box.layout.display == "none"
    first = v.scene.value
    v.step.value = 11  # the arm moved: another frame
    assert v.scene.value != first and "step 11<" in v.header.value
    frame = v.replay.frame_at(11)
    assert frame.std() > 10  # a rendered scene, not a blank image
    # executed headless, the snapshot the notebook keeps: the frame as an embedded PNG, the live view beside it
    assert "text/html" not in v._repr_mimebundle_()  # live: the widget alone
    monkeypatch.setenv("LRAMLAB_HEADLESS", "1")
    bundle = v._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/html"].count("data:image/png;base64,") >= 2  # the frame + the timeline figure
    # a replay that does not reproduce the stored states says where it diverges
    path = sorted((metaworld_root / "metaworld" / "reach-v2").glob("episode_*.hdf5"))[0]
    ep = W.load_episode(path)
    bad = dict(ep, actions=np.clip(ep["actions"] + 0.5, -1, 1))
    rep = replay_frames("metaworld/reach-v2", bad, episode_seed_of(path), every=4)
    assert rep.diverged_at is not None and 0 < rep.diverged_at <= 2 and "DIVERGES" in rep.note
    gif = save_video(v.replay.frames, tmp_path / "reach.gif", fps=5)
    import imageio.v3 as iio

    assert iio.imread(gif, index=None).shape[0] == len(v.replay.frames)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    from lramlab.models import LRAMConfig, build_model

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    dt = build_model(LRAMConfig(backbone="dt", size="tiny"))
    path = dt.save(d / "dt.pt")
    torch.manual_seed(1)
    return {"dt": str(path), "xlstm": build_model(LRAMConfig(backbone="xlstm", size="tiny"))}


def test_embedding_explorer_layer_backbone_and_tasks(two_models, tiny_root):
    ex = W.EmbeddingExplorer(two_models, tiny_root, n_per_task=4, context=10, task_specs=TINY_SPECS)
    n_tasks = len(TINY_SPECS)
    assert ex.layer.value == ex.layer.max == ex.n_layers("dt") - 1
    pts = sum(len(t.x) for t in ex.figure.data)
    assert pts == 4 * n_tasks
    x_before = np.concatenate([np.asarray(t.x) for t in ex.figure.data])
    ex.layer.value = 0  # the first block's output
    x_after = np.concatenate([np.asarray(t.x) for t in ex.figure.data])
    assert _title(ex.figure) == "dt, layer 0" and not np.allclose(x_before, x_after)
    assert ("dt", 0) in ex._hidden
    ex.backbone.value = "xlstm"
    assert _title(ex.figure) == f"xlstm, layer {ex.n_layers('xlstm') - 1}"
    ex.domains.value = ("classic", "control")  # the task picker by domain
    assert set(ex.tasks.value) == {"classic/cartpole", "classic/acrobot", "control/pendulum", "control/mountaincar"}
    assert {t.name for t in ex.figure.data} == {"classic", "control"} and sum(len(t.x) for t in ex.figure.data) == 16
    ex.tasks.value = ("classic/cartpole", "atari/pong")
    assert sum(len(t.x) for t in ex.figure.data) == 8
    assert {t.name for t in ex.figure.data} == {"classic", "atari"}
    assert "silhouette" in ex.status.value
    ex.tasks.value = ("classic/cartpole",)  # too few points for UMAP: a message, no crash
    assert "at least 3" in ex.status.value or sum(len(t.x) for t in ex.figure.data) == 4


def test_embedding_explorer_from_a_study_result(tiny_root, monkeypatch):
    from lramlab.analysis import embeddings as E
    from lramlab.studies import EmbeddingConfig

    real = E.make_dataset
    monkeypatch.setattr(E, "make_dataset", lambda d, c=50, t=(), s=None: real(d, c, t, TINY_SPECS))
    cfg = EmbeddingConfig(backbone="mamba", size="tiny", data_dir=str(tiny_root), n_per_task=3, context=10)
    res = E.run_embeddings(cfg)
    ex = W.EmbeddingExplorer.from_result(res, cfg)
    np.testing.assert_allclose(ex.result.coords, res.coords, rtol=1e-5, atol=1e-5)  # same model, windows, seed
    assert list(ex.checkpoints) == ["mamba (untrained)"]


@pytest.fixture(scope="module")
def lat_table():
    from lramlab.analysis.latency import run_latency_study
    from lramlab.studies import LatencyStudyConfig

    cfg = LatencyStudyConfig(backbones=("xlstm", "dt"), contexts=(5, 20), batch_sizes=(1, 2), throughput_batches=(1, 2),
                             throughput_context=5, modes=("model",), warmup=0, reps=2, device="cpu")
    return run_latency_study(cfg, progress=False), cfg


def test_latency_explorer_filters_and_measures(lat_table):
    table, cfg = lat_table
    ex = W.LatencyExplorer(table, cfg)
    assert {t.meta["backbone"] for t in ex.latency.data} == {"xlstm", "dt"}
    assert all(t.meta["batch_size"] == 1 for t in ex.latency.data)
    ex.backbones.value = ("dt",)
    assert [t.meta["backbone"] for t in ex.latency.data] == ["dt"]
    assert [t.meta["backbone"] for t in ex.throughput.data] == ["dt"]
    y1 = tuple(ex.latency.data[0].y)
    ex.batch.value = 2
    assert ex.latency.data[0].meta["batch_size"] == 2 and tuple(ex.latency.data[0].y) != y1
    n = len(ex.table.records)
    ex.measure_batch.value, ex.measure_contexts.value = 3, "7, 5"  # any B and C, not only the grid's
    ex.measure.click()
    assert len(ex.table.records) == n + 2 and ex.batch.value == 3 and 3 in ex.batch.options
    assert [t.meta["backbone"] for t in ex.latency.data] == ["dt"] and sorted(ex.latency.data[0].x) == [5, 7]
    points = len(ex.selected().records)
    ex.measure_contexts.value = "5"
    ex.measure.click()  # the same point again: merged into one, not drawn twice
    assert len(ex.table.records) == n + 3 and len(ex.selected().records) == points
    merged = [r for r in ex.selected().records if r.batch_size == 3 and r.context == 5]
    assert len(merged) == 1 and merged[0].note == "merged 2 measurements" and merged[0].reps == 2 * cfg.reps
    assert "measured more than once, merged" in ex.status.value
    ex.measure_contexts.value = "5, x"
    ex.measure.click()
    assert "context &#x27;x&#x27; is not a positive integer" in ex.status.value and len(ex.table.records) == n + 3


def test_training_monitor_refreshes_from_metrics_jsonl(tmp_path, tiny_root):
    from lramlab.train import TrainConfig, run

    res = run(TrainConfig(data=(str(tiny_root),), tasks=("classic/cartpole", "classic/acrobot"), backbone="dt",
                          size="tiny", steps=6, batch_size=2, context=5, warmup=1, log_every=1, val_every=3,
                          val_batches=1, amp=False, tensorboard=False, progress=False, out=str(tmp_path / "full")),
              task_specs=TINY_SPECS)
    lines = (res.run_dir / "metrics.jsonl").read_text().splitlines()
    live = tmp_path / "live"
    live.mkdir()
    mon = W.TrainingMonitor(live)
    assert "waiting for" in mon.status.value and len(mon.loss.data) == 0
    (live / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")  # a run in progress
    mon.button.click()
    n0 = len([t for t in mon.loss.data if t.meta["key"] == "train/loss"][0].x)
    assert n0 == sum("train/loss" in json.loads(ln) for ln in lines[:3])
    shutil.copy(res.run_dir / "metrics.jsonl", live / "metrics.jsonl")  # it wrote more
    mon.auto.value = mon.auto.value + 1  # a timer tick
    tr = [t for t in mon.loss.data if t.meta["key"] == "train/loss"][0]
    assert len(tr.x) == sum("train/loss" in json.loads(ln) for ln in lines) > n0
    assert any(t.meta["key"] == "val/perplexity_domain_mean" for t in mon.perplexity.data)
    assert mon.n_rows == len(lines)
