"""Shared action head, its masked cross-entropy and decoding (paper §3.2, App. C.3).

One Linear(D, 2066) predicts all action dimensions jointly: 18 discrete classes, then
8 continuous dims x 256 uniform bins (`lramlab.tokenizer`). A task uses only its valid part:
discrete tasks the first `n_actions` classes, continuous tasks the bins of their `act_dim` dims.

Shape letters: B batch, T timesteps, V = 2066 vocabulary, A = 8 continuous dims, K = 256 bins.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..tokenizer import MAX_ACT_DIM, N_BINS, N_DISCRETE, VOCAB_SIZE, bins_to_continuous, continuous_to_bins


class ActionHead(nn.Linear):
    """(..., D) -> (..., 2066) logits."""

    def __init__(self, d_model: int):
        super().__init__(d_model, VOCAB_SIZE)


def _per_row(value, B: int, device, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, device=device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(B)
    if t.numel() != B:
        raise ValueError(f"{name} has {t.numel()} entries for a batch of {B}")
    return t


def discrete_logits(logits: torch.Tensor, n_actions) -> torch.Tensor:
    """The 18 discrete logits with classes >= n_actions set to -inf. logits (B, ..., V), n_actions int|(B,)."""
    B = logits.shape[0]
    n = _per_row(n_actions, B, logits.device, "n_actions")
    if bool(((n < 1) | (n > N_DISCRETE)).any()):
        raise ValueError(f"n_actions={n.tolist()} must be in 1..{N_DISCRETE} for a discrete task")
    d = logits[..., :N_DISCRETE]
    invalid = torch.arange(N_DISCRETE, device=logits.device) >= n.view((B,) + (1,) * (d.dim() - 1))
    return d.masked_fill(invalid, float("-inf"))


def continuous_logits(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) -> (..., A, K) per-dimension bin logits."""
    return logits[..., N_DISCRETE:].unflatten(-1, (MAX_ACT_DIM, N_BINS))


def _masked_mean_loss(nll: torch.Tensor, hit: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean of `nll` over the `valid` targets, and its metrics (loss, accuracy of `hit`, count, perplexity)."""
    count = valid.sum()
    loss = torch.where(valid, nll, 0.0).sum() / count.clamp(min=1)
    with torch.no_grad():
        n_t = int(count)
        acc = float((hit & valid).sum()) / max(n_t, 1)
        lv = float(loss)
    metrics = {"loss": lv, "acc": acc, "n_targets": n_t, "ppl": float(torch.exp(torch.tensor(lv)))}
    return loss, metrics


def action_loss(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
    """Masked cross-entropy over the valid part of the vocabulary.

    logits (B, T, V); batch as in docs/CONTRACTS.md: "actions" (B, T) int64 (discrete) or
    (B, T, 8) float32 in [-1, 1] (continuous), "mask" (B, T) bool, "n_actions" (B,), "act_dim" (B,).
    Discrete: CE over the first n_actions classes. Continuous: one 256-way CE per real dim
    (d < act_dim), averaged over all (timestep, dim) targets. Padded timesteps and padded dims
    are ignored (their logits do not change the loss or its gradient).
    Returns (loss, metrics) with metrics "loss", "acc" (argmax hits / targets), "n_targets", "ppl".
    """
    actions, mask = batch["actions"], batch["mask"].to(torch.bool)
    B, T = mask.shape
    if logits.shape[:2] != (B, T) or logits.shape[-1] != VOCAB_SIZE:
        raise ValueError(f"logits {tuple(logits.shape)} do not match mask {(B, T)} x {VOCAB_SIZE}")
    logits = logits.float()
    if actions.dim() == 2:  # discrete
        if actions.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"discrete actions must be integers, got {actions.dtype}")
        n = _per_row(batch["n_actions"], B, logits.device, "n_actions")
        bad = mask & ((actions < 0) | (actions >= n[:, None]))
        if bool(bad.any()):
            raise ValueError(f"actions {actions[bad][:5].tolist()} are outside 0..n_actions-1 at real timesteps")
        logp = F.log_softmax(discrete_logits(logits, n), dim=-1)  # (B, T, 18)
        target = torch.where(mask, actions.long(), 0)
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T)
        hit = logp.argmax(-1) == target
        valid = mask
    elif actions.dim() == 3 and actions.shape[-1] == MAX_ACT_DIM:  # continuous
        ad = _per_row(batch["act_dim"], B, logits.device, "act_dim")
        if bool(((ad < 1) | (ad > MAX_ACT_DIM)).any()):
            raise ValueError(f"act_dim={ad.tolist()} must be in 1..{MAX_ACT_DIM} for a continuous task")
        target = continuous_to_bins(actions.float())  # (B, T, A)
        logp = F.log_softmax(continuous_logits(logits), dim=-1)  # (B, T, A, K)
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, T, A)
        hit = logp.argmax(-1) == target
        valid = mask[..., None] & (torch.arange(MAX_ACT_DIM, device=logits.device) < ad[:, None, None])
    else:
        raise ValueError(f"actions must be (B, T) int or (B, T, {MAX_ACT_DIM}) float, got {tuple(actions.shape)}")
    return _masked_mean_loss(nll, hit, valid)


def head_loss(hidden: torch.Tensor, head: nn.Linear, batch: dict) -> tuple[torch.Tensor, dict]:
    """`action_loss(head(hidden), batch)` computed on the real timesteps and valid columns only.

    hidden (B, T, D) at the read tokens. The masked cross-entropy never looks at a padded timestep
    or at a column outside the task's valid part (discrete: classes >= n_actions; continuous: the
    bins of dims >= act_dim), so the head is applied to the N real timesteps only, over the first
    max(n_actions) classes or the bins of the first max(act_dim) dims: the same loss and the same
    gradients (the unused head rows get zero, as with the full logits), at a fraction of the cost
    for a 5-action or 4-dim task (the head has 2066 outputs). Returns (loss, metrics) as
    `action_loss` (tested equal).
    """
    actions, mask = batch["actions"], batch["mask"].to(torch.bool)
    B, T = mask.shape
    if hidden.shape[:2] != (B, T):
        raise ValueError(f"hidden {tuple(hidden.shape)} does not match mask {(B, T)}")
    rows = mask.reshape(-1).nonzero().squeeze(-1)  # the N real (b, t), row-major
    h = hidden.reshape(B * T, -1).index_select(0, rows)  # (N, D)
    b_of = rows // T  # batch row of each real timestep
    if actions.dim() == 2:  # discrete
        if actions.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"discrete actions must be integers, got {actions.dtype}")
        n = _per_row(batch["n_actions"], B, hidden.device, "n_actions")
        if bool(((n < 1) | (n > N_DISCRETE)).any()):
            raise ValueError(f"n_actions={n.tolist()} must be in 1..{N_DISCRETE} for a discrete task")
        target = actions.reshape(-1).index_select(0, rows).long()  # (N,)
        n_row = n.index_select(0, b_of)
        bad = (target < 0) | (target >= n_row)
        if bool(bad.any()):
            raise ValueError(f"actions {target[bad][:5].tolist()} are outside 0..n_actions-1 at real timesteps")
        cols = int(n.max())
        logits = F.linear(h, head.weight[:cols], head.bias[:cols]).float()  # (N, cols)
        invalid = torch.arange(cols, device=h.device) >= n_row[:, None]
        logp = F.log_softmax(logits.masked_fill(invalid, float("-inf")), dim=-1)
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (N,)
        hit = logp.argmax(-1) == target
        valid = torch.ones_like(target, dtype=torch.bool)
    elif actions.dim() == 3 and actions.shape[-1] == MAX_ACT_DIM:  # continuous
        ad = _per_row(batch["act_dim"], B, hidden.device, "act_dim")
        if bool(((ad < 1) | (ad > MAX_ACT_DIM)).any()):
            raise ValueError(f"act_dim={ad.tolist()} must be in 1..{MAX_ACT_DIM} for a continuous task")
        A = int(ad.max())
        sl = slice(N_DISCRETE, N_DISCRETE + A * N_BINS)
        target = continuous_to_bins(actions.reshape(B * T, MAX_ACT_DIM).index_select(0, rows)[:, :A].float())
        logits = F.linear(h, head.weight[sl], head.bias[sl]).float().unflatten(-1, (A, N_BINS))  # (N, A, K)
        logp = F.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (N, A)
        hit = logp.argmax(-1) == target
        valid = torch.arange(A, device=h.device) < ad.index_select(0, b_of)[:, None]
    else:
        raise ValueError(f"actions must be (B, T) int or (B, T, {MAX_ACT_DIM}) float, got {tuple(actions.shape)}")
    return _masked_mean_loss(nll, hit, valid)


def decode(logits: torch.Tensor, n_actions: Union[int, torch.Tensor] = 0, act_dim: Union[int, torch.Tensor] = 0,
           greedy: bool = True, temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick actions from head logits using the task's dims only.

    logits (B, V). Discrete tasks (n_actions > 0): (B,) int64 in 0..n_actions-1.
    Continuous tasks (act_dim > 0): (B, 8) float32 bin centres in [-1, 1], dims >= act_dim are 0.
    greedy=False samples from softmax(logits / temperature) with `generator`.
    """
    if logits.dim() != 2 or logits.shape[-1] != VOCAB_SIZE:
        raise ValueError(f"decode expects logits (B, {VOCAB_SIZE}), got {tuple(logits.shape)}")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 for sampling")
    B = logits.shape[0]
    n = _per_row(n_actions, B, logits.device, "n_actions")
    ad = _per_row(act_dim, B, logits.device, "act_dim")
    is_disc = n > 0
    if bool((is_disc == (ad > 0)).any()):
        raise ValueError(f"each row needs exactly one of n_actions>0 (discrete) or act_dim>0 (continuous); "
                         f"got n_actions={n.tolist()}, act_dim={ad.tolist()}")
    logits = logits.float()

    def pick(lg: torch.Tensor) -> torch.Tensor:  # (..., K) -> (...)
        if greedy:
            return lg.argmax(-1)
        p = torch.softmax(lg / temperature, dim=-1)
        flat = p.reshape(-1, p.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).view(p.shape[:-1])

    if bool(is_disc.all()):
        return pick(discrete_logits(logits, n))
    if bool(is_disc.any()):
        raise ValueError("decode: a batch mixes discrete and continuous rows; decode them separately")
    if bool((ad > MAX_ACT_DIM).any()):
        raise ValueError(f"act_dim={ad.tolist()} must be <= {MAX_ACT_DIM}")
    bins = pick(continuous_logits(logits))  # (B, A)
    a = bins_to_continuous(bins)
    return torch.where(torch.arange(MAX_ACT_DIM, device=logits.device) < ad[:, None], a, 0.0)
