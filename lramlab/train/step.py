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


#: why a parameter is not decayed, in the order the rules are tried (see `decay_rule`)
NO_DECAY_RULES = ("flag", "norm", "embedding", "bias", "vector")


def decay_rule(name: str, param: torch.nn.Parameter, owner: torch.nn.Module) -> str:
    """"decay", or the first rule in NO_DECAY_RULES that exempts `param` (named `name`, owned by
    module `owner`) from weight decay:

    flag       the parameter carries `_no_weight_decay = True` (mamba-ssm's convention: Mamba's
               A_log and D -- decaying A_log would pull every state's decay rate towards 1)
    norm       a parameter of a normalisation module (LayerNorm, RMSNorm, GroupNorm, the xlstm
               package's LayerNorm / MultiHeadLayerNorm: any module class named *Norm*)
    embedding  an nn.Embedding's table (the DT's positional table `wpe`, discrete action tokens)
    bias       a bias (`bias`, or the xlstm sLSTM cell's `_bias_`)
    vector     any other parameter with fewer than 2 dims (gains, mLSTM's learnable skip)

    Everything else -- weight matrices, conv filters, the sLSTM recurrent kernel, the scalar
    encoders' (D, 1) weights -- is decayed.
    """
    leaf = name.rsplit(".", 1)[-1]
    if getattr(param, "_no_weight_decay", False):
        return "flag"
    if "Norm" in type(owner).__name__ or isinstance(owner, (torch.nn.LayerNorm, torch.nn.GroupNorm,
                                                            torch.nn.modules.batchnorm._BatchNorm)):
        return "norm"
    if isinstance(owner, torch.nn.Embedding):
        return "embedding"
    if leaf.strip("_").endswith("bias"):
        return "bias"
    if param.ndim < 2:
        return "vector"
    return "decay"


def weight_decay_groups(model: torch.nn.Module) -> dict[str, list[str]]:
    """Trainable parameter names by rule: {"decay": [...], "flag": [...], "norm": [...], ...}
    (every key of ("decay",) + NO_DECAY_RULES present, in named_parameters order)."""
    modules = dict(model.named_modules())
    out: dict[str, list[str]] = {k: [] for k in ("decay",) + NO_DECAY_RULES}
    for name, p in model.named_parameters():
        if p.requires_grad:
            owner = modules[name.rsplit(".", 1)[0]] if "." in name else model
            out[decay_rule(name, p, owner)].append(name)
    return out


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with two groups: weight decay `cfg.weight_decay` on the "decay" parameters of
    `weight_decay_groups`, none on the rest (flagged, norms, embeddings, biases, vectors)."""
    params = dict(model.named_parameters())
    rules = weight_decay_groups(model)
    no_decay = [n for n in params if n in set().union(*(rules[r] for r in NO_DECAY_RULES))]
    groups = [{"params": [params[n] for n in rules["decay"]], "weight_decay": cfg.weight_decay},
              {"params": [params[n] for n in no_decay], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters (everything is frozen: check freeze=...)")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def optimizer_param_names(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[list[str]]:
    """The parameter names of each optimizer group, in group order (saved with a checkpoint, so a
    later change of the grouping can still resume it: `load_optimizer_state`)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def legacy_param_names(model: torch.nn.Module) -> list[list[str]]:
    """Groups as `build_optimizer` made them before the named rules (checkpoints without
    names): parameters with >= 2 dims decayed, the others not, empty groups dropped."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [[n for n, p in named if p.ndim >= 2], [n for n, p in named if p.ndim < 2]]
    return [g for g in groups if g]


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, model: torch.nn.Module,
                         saved_names: list[list[str]] | None = None) -> None:
    """Load an optimizer state_dict saved with groups `saved_names` (None: `legacy_param_names`)
    into `optimizer`, whose groups may hold the same parameters split differently: each
    parameter's moments follow it by name; group settings (lr, betas, ...) come from the saved
    group that held the group's first parameter, weight decay from this optimizer's groups."""
    now = optimizer_param_names(optimizer, model)
    saved_names = legacy_param_names(model) if saved_names is None else [list(g) for g in saved_names]
    if saved_names == now:
        optimizer.load_state_dict(state)
        return
    groups = state["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g) for g in saved_names]:
        raise ValueError(f"optimizer state has groups of {[len(g['params']) for g in groups]} parameters, "
                         f"its parameter names list groups of {[len(g) for g in saved_names]}")
    where = {n: (gi, idx) for gi, (g, names) in enumerate(zip(groups, saved_names))
             for idx, n in zip(g["params"], names)}
    missing = sorted(set(n for g in now for n in g) ^ set(where))
    if missing:
        raise ValueError(f"optimizer state and model differ in trainable parameters: {missing[:8]}")
    fresh = optimizer.state_dict()
    new_state = {}
    for g, names in zip(fresh["param_groups"], now):
        src = groups[where[names[0]][0]]
        g.update({k: v for k, v in src.items() if k not in ("params", "weight_decay")})
        for idx, n in zip(g["params"], names):
            old = where[n][1]
            if old in state["state"]:
                new_state[idx] = state["state"][old]
    fresh["state"] = new_state
    optimizer.load_state_dict(fresh)


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
    """(loss, metrics) of `action_loss(model(batch), batch)`, through the model's fused
    `forward(batch, return_loss=True)`: the head on the real timesteps and the task's valid columns
    only, the log-softmax in fp32 (bf16 over 2066 classes loses precision)."""
    with autocast_ctx(device, amp):
        return model(batch, return_loss=True)


class TrainingDiverged(ValueError):
    """An update met a non-finite loss or gradient norm (the weights were left as they were)."""

    def __init__(self, loss: float, grad_norm: float, lr: float, step: int | None = None, note: str = ""):
        self.loss, self.grad_norm, self.lr, self.step = loss, grad_norm, lr, step
        at = f" at step {step}" if step is not None else ""
        super().__init__(f"training diverged{at}: train/loss={loss:.4g}, train/grad_norm={grad_norm:.4g} "
                         f"(lr={lr:.4g}); {note or 'the update was not applied'}. Lower --lr, lengthen --warmup, "
                         f"or check the data (`lramlab data check`)")


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
    if not (math.isfinite(total) and math.isfinite(float(gn))):
        # before the update: the weights stay those of the last finite step
        raise TrainingDiverged(total, float(gn), float(lr))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    metrics["train/loss"] = total
    metrics["train/grad_norm"] = float(gn)
    metrics["train/lr"] = float(lr)
    return metrics


def action_kind(batch: dict) -> str:
    """"continuous" when the batch's targets are continuous action dims, else "discrete"."""
    return "continuous" if bool((batch["act_dim"] > 0).any()) else "discrete"


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[dict], *, amp: bool = True,
             device: torch.device | str = "cpu", dist_info: DistInfo | None = None) -> dict[str, float]:
    """Validation cross-entropy and perplexity per domain, per action kind, and over domains.

    A target is one discrete action (a choice among the task's n_actions classes) or one
    continuous action dimension (one of 256 bins), so perplexities of the two kinds measure
    different things. Metrics (losses in nats per target):
      val/<domain>/loss, val/<domain>/perplexity   mean CE over the domain's targets, exp of it
      val/<domain>/targets                          how many targets that is
      val/<kind>/loss, val/<kind>/perplexity        kind = discrete | continuous: mean of its
                                                    domains' losses, exp of it
      val/loss                                      THE headline: mean over domains of the domain
                                                    losses (each domain weighs the same, as in
                                                    training's domain-balanced updates)
      val/perplexity_domain_mean                    the paper's Fig. 2a number: arithmetic mean of
                                                    the domains' perplexities, which mixes
                                                    n_actions-way and 256-way perplexities
    """
    device = torch.device(device)
    info = dist_info or DistInfo()
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    kinds: dict[str, str] = {}
    for batch in batches:
        batch = batch_to(batch, device)
        dom = batch.get(DOMAIN_KEY, "all")
        loss, _ = _loss(model, batch, amp, device)
        cnt = float(target_count(batch))
        s = sums.setdefault(dom, [0.0, 0.0])
        s[0] += float(loss) * cnt
        s[1] += cnt
        kinds[dom] = action_kind(batch)
    if info.distributed:  # sum (loss * targets, targets) per domain over the ranks
        for part in gather_objects(kinds, info):
            kinds.update(part)
        doms = sorted(kinds)
        vec = torch.tensor([sums.get(d, [0.0, 0.0]) for d in doms], dtype=torch.float64, device=device)
        vec = all_reduce_sum(vec, info).cpu()
        sums = {d: [float(vec[i, 0]), float(vec[i, 1])] for i, d in enumerate(doms)}
    out: dict[str, float] = {}
    losses: dict[str, float] = {}
    for dom in sorted(sums):
        s, c = sums[dom]
        if c <= 0:
            continue
        losses[dom] = s / c
        out[f"val/{dom}/loss"] = losses[dom]
        out[f"val/{dom}/perplexity"] = _exp(losses[dom])
        out[f"val/{dom}/targets"] = c
    for kind in ("discrete", "continuous"):
        ks = [losses[d] for d in losses if kinds[d] == kind]
        if ks:
            out[f"val/{kind}/loss"] = float(np.mean(ks))
            out[f"val/{kind}/perplexity"] = _exp(out[f"val/{kind}/loss"])
    if losses:
        out["val/loss"] = float(np.mean(list(losses.values())))
        out["val/perplexity_domain_mean"] = float(np.mean([_exp(v) for v in losses.values()]))
    if was_training:
        model.train()
    return out


def _exp(x: float) -> float:
    return math.exp(min(x, 50.0))  # a diverged model: a huge finite number, not an overflow
