"""Exact resume: a run killed with SIGKILL after a checkpoint and resumed with `resume=True` ends
with the same weights (bit-exact here) as an uninterrupted run of the same length.

The killed run is a real subprocess; it SIGKILLs itself inside the 11th update (after the step-8
checkpoint, between checkpoints), so nothing gets a chance to clean up. Tiny DT, fp32, CPU, 1 thread.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from lramlab.train import TrainConfig, run

TASKS = ("darkroom/goal-6-9", "darkroom/goal-9-0")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from lramlab.collect.generate import generate

    root = tmp_path_factory.mktemp("resume_data")
    for t in TASKS:
        generate(t, 20, policy="history", out=root, progress=False)
    return root


def _cfg(root, out, **kw) -> dict:
    d = dict(data=[str(root)], backbone="dt", size="tiny", steps=16, batch_size=6, context=12, lr=2e-3,
             warmup=3, amp=False, device="cpu", out=str(out), val_every=5, ckpt_every=4, log_every=1,
             progress=False, num_threads=1, seed=3, tensorboard=False)
    d.update(kw)
    return d


CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import lramlab.train.loop as L
    from lramlab.train import TrainConfig, run

    cfg = TrainConfig(**json.loads(sys.argv[1]))
    kill_at = int(sys.argv[2])
    orig, calls = L.train_step, [0]

    def train_step(*a, **k):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally blocks
        return orig(*a, **k)

    L.train_step = train_step
    run(cfg)
""")


def test_sigkill_then_resume_is_exact(data_root, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(_cfg(data_root, killed)), "11"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    from lramlab.train.checkpoint import load_checkpoint

    assert load_checkpoint(killed / "checkpoints" / "last.pt")["step"] == 8
    assert not (killed / "model.pt").exists()
    logged = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == 10  # steps 9, 10 were logged after the checkpoint and will be redone

    resumed = run(TrainConfig(**{**_cfg(data_root, killed), "resume": True}))
    straight = run(TrainConfig(**_cfg(data_root, tmp_path / "straight")))
    assert resumed.step == straight.step == 16
    a = torch.load(resumed.checkpoint, weights_only=False)
    b = torch.load(straight.checkpoint, weights_only=False)
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # optimizer moments too, and the sampler continued where it stopped
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["sampler"] == b["sampler"]
    # the metric log has each step once, identical values to the straight run's
    la = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    key = lambda ln: (ln["step"], "val/loss" in ln)  # noqa: E731
    assert sorted(map(key, la)) == sorted(map(key, lb))
    tr_a = {ln["step"]: ln["train/loss"] for ln in la if "train/loss" in ln}
    tr_b = {ln["step"]: ln["train/loss"] for ln in lb if "train/loss" in ln}
    assert tr_a == tr_b
    assert resumed.metrics["val/loss"] == straight.metrics["val/loss"]


def test_resume_refuses_a_changed_config(data_root, tmp_path):
    out = tmp_path / "r"
    run(TrainConfig(**_cfg(data_root, out, steps=2, val_every=0)))
    with pytest.raises(ValueError, match="batch_size"):
        run(TrainConfig(**_cfg(data_root, out, steps=4, batch_size=4, resume=True)))
    # a longer run of the same config continues from step 2
    res = run(TrainConfig(**_cfg(data_root, out, steps=4, val_every=0, resume=True)))
    assert res.step == 4
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines if "train/loss" in ln] == [1, 2, 3, 4]
    assert [ln["step"] for ln in lines if "val/loss" in ln] == [2, 4]  # the end of each run


def test_atomic_checkpoint_leaves_no_tmp(tmp_path):
    from lramlab.train.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint

    p = atomic_torch_save({"format": "x"}, tmp_path / "a.pt")
    assert p.exists() and [q.name for q in tmp_path.iterdir()] == ["a.pt"]
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(p)
    (tmp_path / "b.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="b.pt"):
        load_checkpoint(tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "c.pt")
