"""The thin training loop, `run(cfg)`: the only way to train (CLI, notebooks and ICL call it).

It builds the data (`train.data`), the model, the optimizer (`train.step`), resumes from
`checkpoints/last.pt` when asked, and then calls `train_step` once per update, validating,
evaluating (through the caller's `evaluate` callback: training knows no simulator) and
checkpointing on schedule. The run directory records itself (`train.runlog`).
"""
from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lramlab.train import checkpoint as ckpt_mod
from lramlab.train.config import TrainConfig
from lramlab.train.data import (found_tasks, make_datasets, make_sampler, next_batches, select_tasks,
                                validation_batch_list)
from lramlab.train.distributed import (DistInfo, barrier, cleanup, env_world, gather_objects, init_distributed,
                                       pick_device)
from lramlab.train.freeze import apply_freeze
from lramlab.train.rundir import (check_finetune, check_fits_in_memory, check_resume_data, claim_run_dir,
                                  clear_earlier_run, resume_changes, warn_long_warmup)
from lramlab.train.runlog import MetricLogger, versions, write_json
from lramlab.train.step import (DOMAIN_KEY, TrainingDiverged, batch_to, build_optimizer, build_scheduler,
                                load_optimizer_state, lr_at, optimizer_param_names, target_count, train_step, validate,
                                weight_decay_groups)

#: evaluate(model, tasks, step) -> metrics such as {"eval/<domain>/normalized_score": ...}; rank 0 calls it
EvalCallback = Callable[[torch.nn.Module, list, int], dict]

__all__ = ["RunResult", "run", "train_step", "validate", "lr_at", "build_optimizer", "build_scheduler",
           "batch_to", "target_count", "make_datasets", "make_sampler", "next_batches", "select_tasks",
           "found_tasks", "validation_batch_list", "apply_freeze", "make_model_config", "versions",
           "MetricLogger", "seed_everything", "DOMAIN_KEY", "EvalCallback", "weight_decay_groups",
           "load_optimizer_state", "optimizer_param_names"]


# ---------------------------------------------------------------------------------------
# results


@dataclass
class RunResult:
    """What `run` returns: where the run lives and its final numbers."""

    run_dir: Path
    step: int
    metrics: dict = field(default_factory=dict)   # final metrics (also RUN_DIR/metrics.json)
    checkpoint: Path | None = None                 # RUN_DIR/checkpoints/last.pt
    model_path: Path | None = None                 # RUN_DIR/model.pt (model.save format)
    wall_s: float = 0.0
    tasks: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "step": self.step, "metrics": self.metrics,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "model_path": str(self.model_path) if self.model_path else None,
                "wall_s": self.wall_s, "tasks": self.tasks, "domains": self.domains}


# ---------------------------------------------------------------------------------------
# model


def make_model_config(cfg: TrainConfig):
    from lramlab.models import LRAMConfig

    kw: dict[str, Any] = dict(backbone=cfg.backbone, size=cfg.size, context_steps=cfg.context,
                              tokens=cfg.tokens)
    if cfg.slstm_at is not None:
        kw["slstm_at"] = cfg.model_slstm_at()
    for name in ("n_heads", "d_model", "n_layers"):
        if getattr(cfg, name) is not None:
            kw[name] = getattr(cfg, name)
    return LRAMConfig(**kw)


# ---------------------------------------------------------------------------------------
# the loop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)



def _kept(last: Path) -> str:
    """What a diverged run leaves: its last good checkpoint, by name and step."""
    if last.is_file():
        try:
            step = int(ckpt_mod.load_checkpoint(last)["step"])
            return f"stopped; the last good checkpoint is {last} (step {step}), kept as it was"
        except ValueError:
            pass
    return f"stopped; no checkpoint had been written yet ({last} comes every --ckpt-every steps)"


def _save(path: Path, step: int, model, optimizer, scheduler, sampler, cfg: TrainConfig,
          info: DistInfo, metrics: dict, fingerprint: dict | None = None) -> None:
    from lramlab.models.checkpoint import nonfinite_tensors

    bad = nonfinite_tensors(ckpt_mod.unwrap(model).state_dict())
    if bad:  # finite loss, but the last update overflowed some weights: keep the previous checkpoint
        raise TrainingDiverged(float(metrics.get("train/loss", float("nan"))),
                               float(metrics.get("train/grad_norm", float("nan"))),
                               float(metrics.get("train/lr", float("nan"))), step,
                               f"weights became non-finite ({', '.join(bad[:3])}); {path} was not written; "
                               + _kept(path.parent / "last.pt"))
    # every rank's RNG and sampler state, so a resumed DDP run continues each rank exactly
    rngs = gather_objects(ckpt_mod.rng_state(), info)
    samplers = gather_objects(sampler.state_dict(), info)
    if info.is_main:
        ckpt_mod.save_checkpoint(path, step=step, model=model, optimizer=optimizer, scheduler=scheduler,
                                 rng=rngs, sampler=samplers, metrics=metrics,
                                 train_config={**cfg.to_dict(), "data_fingerprint": fingerprint},
                                 optimizer_param_names=optimizer_param_names(optimizer, model))
    barrier(info)


def run(cfg: TrainConfig, *, evaluate: EvalCallback | None = None, task_specs=None,
        reward_scale=None) -> RunResult:
    """Train an LRAM agent as `cfg` says; the only way to train (CLI and notebooks call it).

    `evaluate(model, tasks, step) -> metrics` is called on rank 0 every `cfg.eval_every` updates
    and at the end (rollouts in simulators live above training: `lramlab.evaluate.eval_callback`).
    `task_specs` / `reward_scale` override the manifests for tasks outside them (tests, new data).
    Under torchrun each process calls this; rank 0 writes the run directory.
    """
    if not cfg.data:
        raise ValueError("TrainConfig.data is empty: give at least one dataset directory")
    for d in cfg.data:
        if not Path(d).is_dir():
            raise ValueError(f"data directory {d} does not exist")
    if cfg.eval_every and evaluate is None:
        raise ValueError(f"TrainConfig.eval_every={cfg.eval_every} needs an evaluation callback: "
                         f"run(cfg, evaluate=lramlab.evaluate.eval_callback(cfg)) (the `lramlab train` "
                         f"command passes it)")
    t0 = time.time()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    # a bad model setting or a batch that cannot fit fails before anything is written
    check_fits_in_memory(cfg, make_model_config(cfg).d_model)
    rank, _, local_rank = env_world()
    note = warn_long_warmup(cfg)
    if note and rank == 0:
        print(f"lramlab train: warning: {note}", file=sys.stderr)
    device = pick_device(cfg.device, local_rank)
    info = init_distributed(device)
    lock = None
    try:
        lock = claim_run_dir(cfg, info)  # refuses a run already there unless resume / overwrite
        return _run(cfg, device, info, t0, evaluate, task_specs, reward_scale)
    finally:
        if lock is not None:
            lock.release()
        cleanup(info)


def _run(cfg, device, info, t0, evaluate, task_specs, reward_scale) -> RunResult:
    from lramlab.models import build_model

    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(exist_ok=True)
    barrier(info)
    resume_ckpt, resumed = None, None
    if cfg.resume:
        if last.is_file():
            resume_ckpt = ckpt_mod.load_checkpoint(last)
            changed = resume_changes(resume_ckpt.get("train_config") or {}, cfg, last, int(resume_ckpt["step"]))
            resumed = {"step": int(resume_ckpt["step"]), "changed": changed}
        elif info.is_main:
            print(f"lramlab train: --resume but {last} does not exist; starting from step 0", file=sys.stderr)

    seed_everything(cfg.seed + info.rank)
    train_ds, val_ds = make_datasets(cfg, task_specs, reward_scale)
    fingerprint = train_ds.data_fingerprint
    if resume_ckpt is not None:
        resumed["changed"].update(check_resume_data(resume_ckpt.get("train_config") or {}, cfg, fingerprint, last))
    sampler = make_sampler(train_ds, cfg, info)
    val_batches = validation_batch_list(val_ds, cfg, info) if val_ds is not None else []

    if resume_ckpt is not None:
        model = ckpt_mod.build_from_config_dict(resume_ckpt["model_config"])
        model.load_state_dict(resume_ckpt["model"])
    elif cfg.finetune_from:
        model = ckpt_mod.load_model_from_checkpoint(cfg.finetune_from)
        check_finetune(model.cfg, make_model_config(cfg), cfg.finetune_from)
    else:
        model = build_model(make_model_config(cfg))
    frozen = apply_freeze(model, cfg.freeze) if cfg.freeze else []
    if cfg.overwrite and info.is_main:
        clear_earlier_run(run_dir)  # only now: the data, the tasks and the model have passed their checks
    barrier(info)
    model.to(device)
    model.train()
    # every rank must start from rank 0's weights (model init draws from per-rank seeds)
    if info.distributed:
        import torch.distributed as dist

        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    step = 0
    if resume_ckpt is not None:
        # by parameter name: a checkpoint made under another grouping (e.g. before the
        # weight-decay rules of train.step.decay_rule) still resumes
        load_optimizer_state(optimizer, resume_ckpt["optimizer"], model, resume_ckpt.get("optimizer_param_names"))
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        step = int(resume_ckpt["step"])
        rngs, samplers = resume_ckpt["rng"], resume_ckpt["sampler"]
        if len(samplers) != info.world_size:
            raise ValueError(f"--resume: {last} was written by {len(samplers)} ranks, this run has "
                             f"{info.world_size}")
        sampler.load_state_dict(samplers[info.rank])
        ckpt_mod.set_rng_state(rngs[info.rank])

    # domain-balanced updates come through the loader (window reads in worker processes when
    # num_workers > 0; its state is the sampler's after the last update handed out)
    loader = stream = None
    if cfg.domain_balanced or len(sampler.domains) == 1:
        from lramlab.data.sampling import DomainBalancedLoader

        loader = DomainBalancedLoader(sampler, num_workers=cfg.num_workers)
        stream = iter(loader)
    source = loader if loader is not None else sampler

    train_model = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                          find_unused_parameters=False)  # LRAM touches unused encoders with zero grads

    logger = MetricLogger(run_dir, info.is_main, cfg.tensorboard, resume_step=step)
    if info.is_main:
        write_json(run_dir / "config.json", {"train": cfg.to_dict(), "data_resolved": fingerprint["resolved"],
                                              "data_fingerprint": fingerprint,
                                              "model": ckpt_mod.config_to_dict(model.cfg),
                                              "tasks": train_ds.tasks, "domains": sampler.domains,
                                              "world_size": info.world_size, "device": str(device),
                                              "frozen": frozen, "resumes": _resumes(run_dir, resumed),
                                              "n_params": sum(p.numel() for p in model.parameters())})
        write_json(run_dir / "versions.json", versions())
        if logger.note:
            print(f"lramlab train: {logger.note}", file=sys.stderr)

    bar = None
    if info.is_main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.backbone}/{cfg.size}", unit="step",
                   dynamic_ncols=True)
    last_metrics: dict[str, float] = {}
    val_metrics: dict[str, float] = {}
    t_log = time.time()
    steps_since = 0
    try:
        while step < cfg.steps:
            batches = next(stream) if stream is not None else next_batches(sampler, cfg)
            try:
                m = train_step(train_model, batches, optimizer, scheduler, grad_clip=cfg.grad_clip,
                               amp=cfg.amp, device=device, dist_info=info)
            except TrainingDiverged as err:
                raise TrainingDiverged(err.loss, err.grad_norm, err.lr, step + 1, _kept(last)) from None
            step += 1
            steps_since += 1
            last_metrics.update(m)
            if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.time()
                m = dict(m)
                m["train/steps_per_s"] = steps_since / max(1e-9, now - t_log)
                t_log, steps_since = now, 0
                logger.log(step, m)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{m['train/loss']:.3f}", lr=f"{m['train/lr']:.2e}", refresh=False)
            if val_batches and cfg.val_every and step % cfg.val_every == 0 and step != cfg.steps:
                val_metrics = validate(model, val_batches, amp=cfg.amp, device=device, dist_info=info)
                logger.log(step, val_metrics)
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                logger.log(step, _periodic_eval(model, train_ds, evaluate, step, info))
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step != cfg.steps:
                _save(last, step, model, optimizer, scheduler, source, cfg, info, last_metrics, fingerprint)
            if cfg.keep_every and step % cfg.keep_every == 0:
                _save(ckpt_dir / f"step_{step:07d}.pt", step, model, optimizer, scheduler, source, cfg, info,
                      last_metrics, fingerprint)
        # the end: validation, checkpoint, model file, final metrics
        final: dict[str, float] = {k: v for k, v in last_metrics.items()}
        if val_batches:
            val_metrics = validate(model, val_batches, amp=cfg.amp, device=device, dist_info=info)
            logger.log(step, val_metrics)
        final.update(val_metrics)
        if cfg.eval_every:
            ev = _periodic_eval(model, train_ds, evaluate, step, info)
            logger.log(step, ev)
            final.update(ev)
        _save(last, step, model, optimizer, scheduler, source, cfg, info, final, fingerprint)
        model_path = run_dir / "model.pt"
        if info.is_main:
            _save_model_file(model, model_path)
            wall = time.time() - t0
            write_json(run_dir / "metrics.json", {"step": step, "wall_s": wall, **final})
        barrier(info)
    finally:
        if stream is not None:
            stream.close()  # shuts the DataLoader workers down
        if bar is not None:
            bar.close()
        logger.close()
    return RunResult(run_dir=run_dir, step=step, metrics=final, checkpoint=last, model_path=model_path,
                     wall_s=time.time() - t0, tasks=list(train_ds.tasks), domains=list(sampler.domains))


def _resumes(run_dir: Path, resumed: dict | None) -> list[dict]:
    """config.json's record of resumes: each one's step and the fields it changed ({field: [old, new]})."""
    if resumed is None:
        return []
    try:
        earlier = json.loads((run_dir / "config.json").read_text()).get("resumes", [])
    except (OSError, ValueError, AttributeError):
        earlier = []
    return [r for r in earlier if isinstance(r, dict) and r.get("step", 0) < resumed["step"]] + [resumed]


def _save_model_file(model, path: Path) -> None:
    """model.save: the models' own format (config + weights), written atomically by models."""
    model.save(path)




def _periodic_eval(model, train_ds, evaluate: EvalCallback | None, step: int, info: DistInfo) -> dict[str, float]:
    """The caller's evaluation on rank 0 (others wait)."""
    out: dict[str, float] = {}
    if info.is_main and evaluate is not None:
        out = dict(evaluate(model, list(train_ds.tasks), step))
    barrier(info)
    return out
