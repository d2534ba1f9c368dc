"""Training: loss falls on real generated data, run directory contents, config/CLI, fine-tuning.

Data: Dark-Room Q-learning histories (discrete) and Meta-World reach expert episodes
(continuous), generated into a temporary store by `lramlab.collect.generate`, so one update is a
real domain-balanced accumulation over a discrete and a continuous domain.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lramlab.train import RunResult, TrainConfig, run
from lramlab.train.loop import lr_at

DR_TASKS = ("darkroom/goal-6-9", "darkroom/goal-5-7")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from lramlab.collect.generate import generate

    root = tmp_path_factory.mktemp("train_data")
    for t in DR_TASKS:
        generate(t, 40, policy="history", out=root, progress=False)
    pytest.importorskip("metaworld")
    generate("metaworld/reach-v2", 2, policy="expert", out=root, progress=False)
    return root


def _cfg(root, out, **kw) -> TrainConfig:
    base = dict(data=(str(root),), backbone="dt", size="tiny", steps=40, batch_size=8, context=10, lr=3e-3,
                warmup=4, amp=False, device="cpu", out=str(out), val_every=20, ckpt_every=20, log_every=1,
                progress=False, num_threads=1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_loss_falls_and_run_dir(data_root, tmp_path):
    res = run(_cfg(data_root, tmp_path / "run", steps=60))
    assert isinstance(res, RunResult) and res.step == 60
    assert res.domains == ["darkroom", "metaworld"]
    lines = _lines(res.run_dir)
    train = [ln for ln in lines if "train/loss" in ln]
    assert [ln["step"] for ln in train] == list(range(1, 61))
    first = np.mean([ln["train/loss"] for ln in train[:5]])
    last = np.mean([ln["train/loss"] for ln in train[-5:]])
    assert last < 0.7 * first, (first, last)
    # both domains contribute to every update, namespaced
    assert all("train/darkroom/loss" in ln and "train/metaworld/loss" in ln for ln in train)
    val = [ln for ln in lines if "val/loss" in ln]
    assert [ln["step"] for ln in val] == [20, 40, 60]
    assert math.isfinite(val[-1]["val/loss"]) and val[-1]["val/loss"] < val[0]["val/loss"]
    assert {"val/darkroom/perplexity", "val/metaworld/perplexity"} <= set(val[-1])
    # the headline is the mean per-domain loss; perplexities are per domain and per action kind
    # (darkroom: 5-way discrete actions, metaworld: 256-way bins per continuous dim)
    v = val[-1]
    assert "val/perplexity" not in v
    assert v["val/loss"] == pytest.approx((v["val/darkroom/loss"] + v["val/metaworld/loss"]) / 2)
    assert v["val/discrete/perplexity"] == pytest.approx(v["val/darkroom/perplexity"])
    assert v["val/continuous/perplexity"] == pytest.approx(math.exp(v["val/metaworld/loss"]))
    assert v["val/perplexity_domain_mean"] == pytest.approx(
        (v["val/darkroom/perplexity"] + v["val/metaworld/perplexity"]) / 2)
    # the run describes itself
    rd = res.run_dir
    cfg = json.loads((rd / "config.json").read_text())
    assert cfg["train"]["steps"] == 60 and cfg["model"]["backbone"] == "dt" and len(cfg["tasks"]) == 3
    vers = json.loads((rd / "versions.json").read_text())
    assert {"python", "torch", "numpy", "lramlab", "xlstm", "git_commit"} <= set(vers)
    final = json.loads((rd / "metrics.json").read_text())
    assert final["step"] == 60 and final["val/loss"] == pytest.approx(val[-1]["val/loss"])
    # lr: warm-up then cosine to min_lr at the last step
    lrs = [ln["train/lr"] for ln in train]
    assert lrs[0] == pytest.approx(3e-3 / 4) and lrs[3] == pytest.approx(3e-3) and lrs[-1] < 1e-4
    # checkpoints: the training checkpoint and the model file both rebuild the model
    from lramlab.models import load_model
    from lramlab.train.checkpoint import load_checkpoint, load_model_from_checkpoint

    ck = load_checkpoint(rd / "checkpoints" / "last.pt")
    assert ck["step"] == 60 and ck["model_config"]["backbone"] == "dt" and len(ck["sampler"]) == 1
    m1, m2 = load_model(rd / "model.pt"), load_model_from_checkpoint(rd)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    if pytest.importorskip("tensorboard"):
        assert any((rd / "tb").iterdir())


def test_lr_schedule_is_the_papers():
    cfg = TrainConfig(data=("x",), steps=200_000)
    assert cfg.lr == 1e-4 and cfg.warmup == 4000 and cfg.min_lr == 1e-6 and cfg.weight_decay == 0.01
    assert cfg.grad_clip == 0.25 and cfg.batch_size == 128 and cfg.context == 50 and cfg.amp
    assert lr_at(0, cfg) == pytest.approx(1e-4 / 4000)
    assert lr_at(3999, cfg) == pytest.approx(1e-4)
    assert lr_at(4000, cfg) == pytest.approx(1e-4)
    assert lr_at(102_000, cfg) == pytest.approx((1e-4 + 1e-6) / 2)
    assert lr_at(200_000, cfg) == pytest.approx(1e-6)


@pytest.mark.parametrize("field,value", [("steps", 0), ("lr", -1.0), ("grad_clip", -0.1), ("window", "trajectory"),
                                         ("val_fraction", 1.0), ("freeze", ("backbone:x",)), ("device", "tpu"),
                                         ("top_fraction", 0.0), ("top_fraction", 1.5)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field if field != "freeze" else "backbone:x"):
        TrainConfig(data=("x",), **{field: value})


def test_bad_data_and_filters(data_root, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        run(_cfg(tmp_path / "nope", tmp_path / "r"))
    with pytest.raises(ValueError, match="goal-0-0.*not in the data"):
        run(_cfg(data_root, tmp_path / "r", tasks=("goal-0-0",)))
    with pytest.raises(ValueError, match="atari"):
        run(_cfg(data_root, tmp_path / "r", domains=("atari",)))


def test_cli_one_domain_bare_task_name(data_root, tmp_path, capsys):
    from lramlab.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--data", str(data_root), "--tasks", "goal-6-9", "--backbone", "dt", "--size", "tiny",
               "--steps", "3", "--batch-size", "4", "--context", "8", "--out", str(out), "--no-amp",
               "--device", "cpu", "--no-progress", "--num-threads", "1", "--warmup", "1", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["step"] == 3 and res["tasks"] == ["darkroom/goal-6-9"] and res["domains"] == ["darkroom"]
    assert json.loads((out / "config.json").read_text())["train"]["tasks"] == ["goal-6-9"]


@pytest.mark.parametrize("backbone", ["xlstm", "mamba"])
def test_recurrent_backbones_train(data_root, tmp_path, backbone):
    res = run(_cfg(data_root, tmp_path / backbone, backbone=backbone, steps=2, val_every=0, ckpt_every=0,
                   context=6, batch_size=4))
    assert res.step == 2 and math.isfinite(res.metrics["train/loss"])
    assert math.isfinite(res.metrics["val/loss"])


def test_finetune_from_with_frozen_backbone(data_root, tmp_path):
    from lramlab.models import load_model

    base = run(_cfg(data_root, tmp_path / "base", steps=3, val_every=0, tasks=DR_TASKS))
    ft = run(_cfg(data_root, tmp_path / "ft", steps=3, val_every=0, tasks=("metaworld/reach-v2",),
                  finetune_from=str(base.run_dir), freeze=("backbone:1", "encoders")))
    a, b = load_model(base.model_path).state_dict(), load_model(ft.model_path).state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    frozen_block = [k for k in a if k.startswith("backbone.h.0.")]  # DT's first block
    assert frozen_block and not (changed & set(frozen_block))
    assert not any(k.startswith(("state_encoder", "rtg_encoder", "embed_norm")) for k in changed)
    assert any(k.startswith("head") for k in changed)
    assert any(k.startswith("backbone.") and k not in frozen_block for k in changed)
    cfg = json.loads((ft.run_dir / "config.json").read_text())
    assert cfg["frozen"] and all(not k.startswith("head") for k in cfg["frozen"])
    with pytest.raises(ValueError, match="backbone:9"):
        run(_cfg(data_root, tmp_path / "ft2", steps=1, finetune_from=str(base.run_dir), freeze=("backbone:9",)))


def test_loader_workers_give_the_same_run(data_root, tmp_path):
    a = run(_cfg(data_root, tmp_path / "w0", steps=3, val_every=0, num_workers=0))
    b = run(_cfg(data_root, tmp_path / "w2", steps=3, val_every=0, num_workers=2))
    sa = torch.load(a.checkpoint, weights_only=False)
    sb = torch.load(b.checkpoint, weights_only=False)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    assert sa["sampler"] == sb["sampler"]  # the state of the updates consumed, not of prefetched ones


def test_bf16_autocast_on_cpu(data_root, tmp_path):
    res = run(_cfg(data_root, tmp_path / "amp", steps=2, val_every=0, amp=True))
    assert math.isfinite(res.metrics["train/loss"]) and math.isfinite(res.metrics["val/loss"])


def test_periodic_rollout_evaluation(data_root, tmp_path):
    from lramlab.evaluate import eval_callback

    cfg = _cfg(data_root, tmp_path / "ev", steps=2, val_every=0, tasks=("goal-6-9",), eval_every=1,
               eval_episodes=1)
    with pytest.raises(ValueError, match="eval_every=1 needs an evaluation callback"):
        run(cfg)
    res = run(cfg, evaluate=eval_callback(cfg))
    lines = [ln for ln in _lines(res.run_dir) if "eval/darkroom/normalized_score" in ln]
    assert [ln["step"] for ln in lines] == [1, 2]
    assert "eval/darkroom/iqm" in res.metrics and "eval/darkroom/goal-6-9/return" in res.metrics
    # the log's domain score and headline are normalised (Dark-Room: return / best), never the raw return
    from lramlab.manifests import get_task

    frac = res.metrics["eval/darkroom/goal-6-9/return"] / get_task("darkroom/goal-6-9").extra["max_return"]
    assert res.metrics["eval/darkroom/normalized_score"] == pytest.approx(frac)
    assert res.metrics["eval/normalized_score"] == pytest.approx(frac)
