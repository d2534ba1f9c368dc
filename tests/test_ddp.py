"""DDP: `torchrun --nproc_per_node=2 -m lramlab.train ...` (gloo, CPU) ends with the weights of ONE
process trained on the union of the two ranks' windows (same global batch), within 1e-5.

The ranks draw disjoint windows (the sampler's rank split); the reference replays exactly those
windows: per update it concatenates rank 0's and rank 1's micro-batch of each domain and takes
one `train_step`. Windows are padded, so the ranks hold different numbers of targets: the
equality also checks that train_step re-weights each rank's loss by its share of the targets.
The final validation (each rank a share of the windows) equals one process over all of them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lramlab.train import TrainConfig

TASKS = ("darkroom/goal-6-9", "darkroom/goal-5-7")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from lramlab.collect.generate import generate

    root = tmp_path_factory.mktemp("ddp_data")
    for t in TASKS:
        generate(t, 12, policy="history", out=root, progress=False)
    pytest.importorskip("metaworld")
    generate("metaworld/reach-v2", 2, policy="expert", out=root, progress=False)
    return root


def _merge(a: dict, b: dict) -> dict:
    assert a["domain"] == b["domain"]
    return {k: (torch.cat([a[k], b[k]]) if isinstance(a[k], torch.Tensor) else a[k]) for k in a}


def test_two_ranks_equal_one_process(data_root, tmp_path):
    from lramlab.train.distributed import DistInfo, free_port

    out = tmp_path / "ddp"
    args = ["--data", str(data_root), "--backbone", "dt", "--size", "tiny", "--steps", "4", "--batch-size", "8",
            "--context", "10", "--lr", "3e-3", "--warmup", "2", "--no-amp", "--device", "cpu", "--out", str(out),
            "--no-progress", "--num-threads", "1", "--val-every", "0", "--ckpt-every", "0", "--seed", "5",
            "--log-every", "1", "--no-tensorboard"]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "lramlab.train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfgjson = json.loads((out / "config.json").read_text())
    assert cfgjson["world_size"] == 2
    ddp = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert len(ddp["sampler"]) == 2 and ddp["sampler"][0]["counters"] != ddp["sampler"][1]["counters"]

    # reference: one process, the same windows, the same initial weights and optimizer
    from lramlab.models import build_model
    from lramlab.train.config import config_from_args, parser_for
    from lramlab.train.loop import (build_optimizer, build_scheduler, make_datasets, make_model_config,
                                    make_sampler, seed_everything, train_step)

    torch.set_num_threads(1)
    cfg = config_from_args(TrainConfig, parser_for(TrainConfig).parse_args(args))
    seed_everything(cfg.seed)  # as rank 0 does before it builds (and broadcasts) the model
    train_ds, _ = make_datasets(cfg)
    s0 = make_sampler(train_ds, cfg, DistInfo(rank=0, world_size=2))
    s1 = make_sampler(train_ds, cfg, DistInfo(rank=1, world_size=2))
    model = build_model(make_model_config(cfg))
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    uneven = False
    for _ in range(cfg.steps):
        b0, b1 = s0.next_update(), s1.next_update()
        uneven |= any(int(x["mask"].sum()) != int(y["mask"].sum()) for x, y in zip(b0, b1))
        train_step(model, [_merge(x, y) for x, y in zip(b0, b1)], opt, sched, grad_clip=cfg.grad_clip,
                   amp=False, device="cpu")
    assert uneven, "test data should give the ranks different numbers of targets"
    assert s0.state_dict()["counters"] == ddp["sampler"][0]["counters"]
    ref = model.state_dict()
    worst = max(float((ddp["model"][k] - ref[k]).abs().max()) for k in ref)
    assert worst <= 1e-5, worst
    # and the run really trained (weights moved from the initial ones)
    seed_everything(cfg.seed)
    make_datasets(cfg)
    init = build_model(make_model_config(cfg)).state_dict()
    assert max(float((init[k] - ref[k]).abs().max()) for k in ref) > 1e-3
    # validation: the ranks' per-domain (loss * targets, targets) sums equal one process's
    from lramlab.train.loop import validate, validation_batch_list

    _, val_ds = make_datasets(cfg)
    trained = build_model(make_model_config(cfg))
    trained.load_state_dict(ddp["model"])
    one = validate(trained, validation_batch_list(val_ds, cfg, DistInfo()), amp=False)
    final = json.loads((out / "metrics.json").read_text())
    assert {"val/loss", "val/darkroom/targets", "val/metaworld/targets"} <= set(one)
    for k, v in one.items():
        assert final[k] == pytest.approx(v, rel=1e-6), k
