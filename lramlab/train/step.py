"""The training step (a function), validation, and the optimizer with its schedule (App. C.1).

One optimizer update = one micro-batch per domain (gradient accumulation over the domains, paper
App. C.1), the loss averaged over the domains. Under DDP each rank holds B / world_size windows
of each micro-batch; the per-rank loss is re-weighted by its share of the global number of
predicted targets so that the averaged gradient equals the gradient of ONE process on the union
of the ranks' windows (masked cross-entropy is a mean over valid targets, and ranks see different
numbers of them because windows are padded).

Shape letters: B windows, T timesteps (= context C), V = 2066 vocabulary.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, Sequence

import numpy as np
import torch

from lramlab.train.config import TrainConfig
from lramlab.train.distributed import DistInfo, all_reduce_sum, gather_objects

DOMAIN_KEY = "domain"


# ---------------------------------------------------------------------------------------
# optimizer and schedule


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up from 0 to `lr` over `warmup` steps, then cosine decay to `min_lr` at `steps`."""
    if cfg.warmup > 0 and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices/filters only (biases, norms and 1-d gains are not decayed)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters (everything is frozen: check freeze=...)")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """LambdaLR over `lr_at` (its factor is relative to cfg.lr)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.lr)


# ---------------------------------------------------------------------------------------
# batches


def batch_to(batch: dict, device: torch.device) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        out[k] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
    return out


def target_count(batch: dict) -> torch.Tensor:
    """Number of predicted targets: valid steps (discrete) or valid steps x real dims (continuous)."""
    mask = batch["mask"]
    act_dim = batch["act_dim"]
    per_row = torch.where(act_dim > 0, act_dim, torch.ones_like(act_dim)).to(torch.float64)
    return (mask.to(torch.float64).sum(1) * per_row).sum()


def autocast_ctx(device: torch.device, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _loss(model, batch, amp: bool, device: torch.device):
    from lramlab.models import action_loss

    with autocast_ctx(device, amp):
        logits = model(batch)
    # the loss in fp32: bf16 log-softmax over 2066 classes loses precision
    loss, metrics = action_loss(logits.float(), batch)
    return loss, metrics


def train_step(model: torch.nn.Module, batches: Sequence[dict], optimizer: torch.optim.Optimizer,
               scheduler=None, *, grad_clip: float = 0.25, amp: bool = True,
               device: torch.device | str = "cpu", dist_info: DistInfo | None = None) -> dict[str, float]:
    """One optimizer update on one micro-batch per domain (loss averaged over the domains).

    Returns `train/loss`, `train/<domain>/loss`, `train/grad_norm`, `train/lr` (the lr used).
    """
    device = torch.device(device)
    info = dist_info or DistInfo()
    model.train()
    optimizer.zero_grad(set_to_none=True)
    n = len(batches)
    if n == 0:
        raise ValueError("train_step got no batches")
    metrics: dict[str, float] = {}
    total = 0.0
    for i, batch in enumerate(batches):
        batch = batch_to(batch, device)
        dom = batch.get(DOMAIN_KEY, f"batch{i}")
        weight = 1.0 / n
        if info.distributed:
            # equal to one process on the union of the ranks' windows (see module docstring)
            local = target_count(batch)
            glob = all_reduce_sum(local, info)
            weight *= float(local * info.world_size / glob.clamp_min(1.0))
        sync = (i == n - 1) or not hasattr(model, "no_sync")
        ctx = contextlib.nullcontext() if sync else model.no_sync()
        with ctx:
            loss, _ = _loss(model, batch, amp, device)
            (loss * weight).backward()
        lv = float(loss.detach())
        metrics[f"train/{dom}/loss"] = lv
        total += lv / n
    params = [p for p in model.parameters() if p.requires_grad]
    if grad_clip and grad_clip > 0:
        gn = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        gn = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None]))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    metrics["train/loss"] = total
    metrics["train/grad_norm"] = float(gn)
    metrics["train/lr"] = float(lr)
    return metrics


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[dict], *, amp: bool = True,
             device: torch.device | str = "cpu", dist_info: DistInfo | None = None) -> dict[str, float]:
    """Validation loss and perplexity, per domain and averaged over domains (paper Fig. 2a).

    Perplexity = exp(mean cross-entropy per predicted target) of a domain; `val/perplexity` is the
    mean over domains of the per-domain perplexities, as the paper averages domain scores.
    """
    device = torch.device(device)
    info = dist_info or DistInfo()
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    for batch in batches:
        batch = batch_to(batch, device)
        dom = batch.get(DOMAIN_KEY, "all")
        loss, _ = _loss(model, batch, amp, device)
        cnt = float(target_count(batch))
        s = sums.setdefault(dom, [0.0, 0.0])
        s[0] += float(loss) * cnt
        s[1] += cnt
    if info.distributed:  # sum (loss * targets, targets) per domain over the ranks
        doms = sorted({d for ds in gather_objects(sorted(sums), info) for d in ds})
        vec = torch.tensor([sums.get(d, [0.0, 0.0]) for d in doms], dtype=torch.float64, device=device)
        vec = all_reduce_sum(vec, info).cpu()
        sums = {d: [float(vec[i, 0]), float(vec[i, 1])] for i, d in enumerate(doms)}
    out: dict[str, float] = {}
    ppl, losses = [], []
    for dom in sorted(sums):
        s, c = sums[dom]
        if c <= 0:
            continue
        mean = s / c
        out[f"val/{dom}/loss"] = mean
        out[f"val/{dom}/perplexity"] = math.exp(min(mean, 50.0))
        ppl.append(out[f"val/{dom}/perplexity"])
        losses.append(mean)
    if ppl:
        out["val/loss"] = float(np.mean(losses))
        out["val/perplexity"] = float(np.mean(ppl))
    if was_training:
        model.train()
    return out


