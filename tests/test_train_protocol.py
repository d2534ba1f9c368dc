"""Training details that change results (docs/protocol-training.md).

- Weight decay: the groups on every backbone are what the rules say (Mamba's flagged A_log / D,
  norms, biases, embeddings and the DT's positional table are not decayed), an AdamW step with
  zero gradients moves exactly the decayed parameters, and an optimizer state saved under the old
  grouping (by ndim) resumes with every parameter's moments.
- Fine-tuning (App. D.3): `top_fraction` keeps each task's best episodes by return (checked
  against returns summed from the files), and `lramlab train --split holdout --top-fraction 0.05
  --finetune-from RUN` trains a pretrained model on them.

Data: real Dark-Room Q-learning histories (`lramlab.collect.generate`), two train goals and one
hold-out goal.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from lramlab.models import LRAMConfig, build_model
from lramlab.models.backbones import available_backbones
from lramlab.train import TrainConfig
from lramlab.train.step import (NO_DECAY_RULES, build_optimizer, legacy_param_names, load_optimizer_state,
                                optimizer_param_names, weight_decay_groups)

_AVAILABLE = available_backbones()
VARIANTS = [("xlstm", "7:1", "srr"), ("xlstm", "1:0", "srr"), ("mamba", None, "srr"), ("dt", None, "srr"),
            ("dt", None, "srra")]
VARIANT_IDS = ["xlstm7_1", "xlstm1_0", "mamba", "dt", "dt_srra"]
TRAIN_GOALS = ("darkroom/goal-6-9", "darkroom/goal-5-7")
HOLDOUT_GOAL = "darkroom/goal-9-0"


def _model(backbone, slstm_at=None, tokens="srr"):
    if _AVAILABLE.get(backbone):
        pytest.skip(f"backbone {backbone} does not import here: {_AVAILABLE[backbone]}")
    torch.manual_seed(0)
    model = build_model(LRAMConfig(backbone=backbone, size="tiny", slstm_at=slstm_at, tokens=tokens, context_steps=8))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised gates would not show decay
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


_NORMS = r"(embed_norm|xlstm_norm|ffn_norm|post_blocks_norm|outnorm|group_norm|norm|norm_f|ln_1|ln_2|ln_f)"


def _expected_rule(name: str) -> str:
    """The rule each parameter should get, spelled out from the module names of the backbones."""
    if re.search(rf"(^|\.){_NORMS}\.(weight|bias)$", name):
        return "norm"
    if name.endswith((".A_log", ".D")):  # mamba-ssm's _no_weight_decay
        return "flag"
    if name in ("backbone.wpe.weight", "action_encoder.discrete.weight"):
        return "embedding"
    if name.endswith((".bias", "._bias_")):
        return "bias"
    if name.endswith(".learnable_skip"):
        return "vector"
    return "decay"


@pytest.mark.parametrize("backbone, slstm_at, tokens", VARIANTS, ids=VARIANT_IDS)
def test_weight_decay_groups_on_every_backbone(backbone, slstm_at, tokens):
    model = _model(backbone, slstm_at, tokens)
    groups = weight_decay_groups(model)
    assert set(groups) == {"decay", *NO_DECAY_RULES}
    got = {n: rule for rule, names in groups.items() for n in names}
    names = [n for n, _ in model.named_parameters()]
    assert sorted(got) == sorted(names) and sum(map(len, groups.values())) == len(names)  # each once
    assert {n: _expected_rule(n) for n in names} == got
    params = dict(model.named_parameters())
    # the cases the old rule (decay every parameter with >= 2 dims) got wrong, and one it got right
    if backbone == "mamba":
        a_log = [n for n in groups["flag"] if n.endswith("A_log")]
        assert a_log and all(params[n].ndim == 2 for n in a_log)
    if backbone == "dt":
        assert params["backbone.wpe.weight"].ndim == 2 and "backbone.wpe.weight" in groups["embedding"]
    if tokens == "srra":
        assert "action_encoder.discrete.weight" in groups["embedding"]
    if slstm_at == "7:1":
        assert any(n.endswith("_recurrent_kernel_") for n in groups["decay"])
    assert any(n.startswith("image_encoder.") for n in groups["decay"])
    # the optimizer applies it: an AdamW step with zero gradients moves exactly the decayed params
    opt = build_optimizer(model, TrainConfig(data=("x",), lr=0.5, weight_decay=0.1))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert optimizer_param_names(opt, model)[0] == groups["decay"]
    before = {n: p.detach().clone() for n, p in params.items()}
    for p in params.values():
        p.grad = torch.zeros_like(p)
    opt.step()
    moved = {n for n, p in params.items() if not torch.equal(p, before[n])}
    assert moved == set(groups["decay"])


def test_frozen_parameters_are_in_no_group():
    from lramlab.train.freeze import apply_freeze

    model = _model("mamba")
    frozen = set(apply_freeze(model, ["backbone"]))
    groups = weight_decay_groups(model)
    assert frozen and not frozen & {n for g in groups.values() for n in g}


@pytest.mark.parametrize("backbone", ["mamba", "dt"])
def test_optimizer_state_of_the_old_grouping_resumes_by_name(backbone):
    # a checkpoint written before the named rules: AdamW groups by ndim, no names saved
    model = _model(backbone)
    cfg = TrainConfig(data=("x",), lr=1e-3, weight_decay=0.01)
    params = dict(model.named_parameters())
    old_names = legacy_param_names(model)
    old = torch.optim.AdamW([{"params": [params[n] for n in old_names[0]], "weight_decay": 0.01},
                             {"params": [params[n] for n in old_names[1]], "weight_decay": 0.0}], lr=1e-3)
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=g)
        old.step()
    saved = old.state_dict()
    moments = {n: old.state[params[n]]["exp_avg"].clone() for n in params}
    new = build_optimizer(model, cfg)
    assert optimizer_param_names(new, model) != old_names  # the grouping did change
    with pytest.raises(ValueError):  # a plain load_state_dict cannot map it
        new.load_state_dict(saved)
    load_optimizer_state(new, saved, model)
    for n, p in params.items():
        assert torch.equal(new.state[p]["exp_avg"], moments[n]), n
        assert int(new.state[p]["step"]) == 2
    assert [grp["weight_decay"] for grp in new.param_groups] == [0.01, 0.0]
    # with names saved (what checkpoints hold now) it round-trips too, and a mismatch is an error
    names = optimizer_param_names(new, model)
    again = build_optimizer(model, cfg)
    load_optimizer_state(again, new.state_dict(), model, names)
    assert all(torch.equal(again.state[p]["exp_avg_sq"], new.state[p]["exp_avg_sq"]) for p in params.values())
    with pytest.raises(ValueError, match="groups of"):
        load_optimizer_state(again, new.state_dict(), model, [names[0][:-1], names[1]])


# ------------------------------------------------------------------------------- fine-tuning
@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    from lramlab.collect.generate import generate

    pre = tmp_path_factory.mktemp("pretrain")
    for t in TRAIN_GOALS:
        generate(t, 20, policy="history", out=pre, progress=False)
    hold = tmp_path_factory.mktemp("holdout")
    generate(HOLDOUT_GOAL, 60, policy="history", out=hold, progress=False)
    return pre, hold


def _returns_from_files(task_dir):
    from lramlab.data.store import read_episode

    files = sorted(task_dir.glob("episode_*.hdf5"))
    return np.array([float(read_episode(f)["rewards"].sum()) for f in files])


def test_top_fraction_keeps_each_splits_best_episodes(roots):
    from lramlab.train.data import make_datasets

    _, hold = roots
    returns = _returns_from_files(hold / HOLDOUT_GOAL)
    assert len(set(returns.tolist())) > 3  # a learning history: returns vary (the selection matters)
    full_tr, _ = make_datasets(TrainConfig(data=(str(hold),), context=10))
    tr, va = make_datasets(TrainConfig(data=(str(hold),), context=10, top_fraction=0.05))
    for full, top in ((full_tr.episodes[0], tr.episodes[0]), (None, va.episodes[0] if va else None)):
        if full is None:
            continue
        k = math.ceil(0.05 * len(full))
        assert len(top) == k and set(top) <= set(full)
        rest = np.setdiff1d(full, top)
        assert returns[top].min() >= returns[rest].max()  # nothing left out beats what was kept
    # stats.json (when present and current) gives the same returns as the files
    from lramlab.data.sampling import episode_returns
    from lramlab.data.store import TaskData, write_stats

    write_stats(hold / HOLDOUT_GOAL)
    np.testing.assert_allclose(episode_returns(TaskData(hold / HOLDOUT_GOAL)), returns, rtol=1e-6)
    with pytest.raises(ValueError, match="top_fraction"):
        TrainConfig(data=("x",), window="history", top_fraction=0.05)


def test_finetune_protocol_on_holdout_top_trajectories(roots, tmp_path):
    from lramlab.cli import main
    from lramlab.models import load_model

    pre, hold = roots
    common = ["--backbone", "dt", "--size", "tiny", "--batch-size", "4", "--context", "10", "--no-amp",
              "--device", "cpu", "--no-progress", "--num-threads", "1", "--warmup", "1", "--val-every", "0"]
    base = tmp_path / "pretrain"
    assert main(["train", "--data", str(pre), "--split", "train", "--steps", "3", "--out", str(base), *common]) == 0
    ft = tmp_path / "finetune"
    assert main(["train", "--data", str(pre), str(hold), "--split", "holdout", "--top-fraction", "0.05",
                 "--finetune-from", str(base), "--freeze", "backbone", "--steps", "3", "--out", str(ft),
                 *common]) == 0
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["tasks"] == [HOLDOUT_GOAL] and cfg["train"]["top_fraction"] == 0.05
    a, b = load_model(base / "model.pt").state_dict(), load_model(ft / "model.pt").state_dict()
    # it started from the pretrained weights (frozen backbone unchanged) and trained the rest
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("backbone."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("head."))
    metrics = json.loads((ft / "metrics.json").read_text())
    assert math.isfinite(metrics["val/loss"]) and "val/darkroom/perplexity" in metrics
