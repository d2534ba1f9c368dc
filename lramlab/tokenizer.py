"""Shared observation padding and action vocabulary (paper App. C; reference/domain_specs.yaml).

Action vocabulary of 2066 = 18 discrete classes (the full Atari action set), then
8 continuous dimensions x 256 uniform bins over [-1, 1]. Continuous dim d, bin b has the
vocabulary id 18 + 256 * d + b. The action head predicts all dimensions jointly.

Shape letters: B batch, T timesteps, A = MAX_ACT_DIM continuous action dims.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STATE_DIM = 204          # continuous states are zero-padded to this (DMC union obs space)
IMAGE_SHAPE = (1, 64, 64)  # grayscale 64x64 uint8 frames, as in the paper
N_DISCRETE = 18          # full Atari action set
MAX_ACT_DIM = 8          # continuous actions are padded to this many dims
N_BINS = 256             # uniform bins per continuous dim
ACT_LOW, ACT_HIGH = -1.0, 1.0
VOCAB_SIZE = N_DISCRETE + MAX_ACT_DIM * N_BINS  # 2066
BIN_WIDTH = (ACT_HIGH - ACT_LOW) / N_BINS


def pad_state(x: np.ndarray, dim: int = STATE_DIM) -> np.ndarray:
    """Zero-pad the last axis of a continuous state to `dim` (float32)."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] > dim:
        raise ValueError(f"state has {x.shape[-1]} dims, more than the padded size {dim}")
    if x.shape[-1] == dim:
        return x
    pad = [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])]
    return np.pad(x, pad)


@dataclass
class ClipCounter:
    """Counts continuous action values that fell outside [-1, 1] and were clipped."""

    clipped: int = 0
    total: int = 0


def continuous_to_bins(x, counter: ClipCounter | None = None):
    """Map continuous actions in [-1, 1] to bin ids 0..255 (numpy or torch, any shape).

    Values outside the range are clipped (and counted in `counter`, if given).
    Round trip through `bins_to_continuous` is within half a bin.
    """
    is_torch = isinstance(x, torch.Tensor)
    xt = x if is_torch else torch.as_tensor(np.asarray(x, dtype=np.float32))
    if counter is not None:
        counter.clipped += int(((xt < ACT_LOW) | (xt > ACT_HIGH)).sum())
        counter.total += int(xt.numel())
    xt = xt.clamp(ACT_LOW, ACT_HIGH)
    bins = torch.floor((xt - ACT_LOW) / BIN_WIDTH).long().clamp_(0, N_BINS - 1)
    return bins if is_torch else bins.numpy()


def bins_to_continuous(bins):
    """Bin ids 0..255 -> bin centres in [-1, 1] (numpy or torch)."""
    is_torch = isinstance(bins, torch.Tensor)
    b = bins if is_torch else torch.as_tensor(np.asarray(bins))
    x = ACT_LOW + (b.float() + 0.5) * BIN_WIDTH
    return x if is_torch else x.numpy()


def continuous_token_ids(bins: torch.Tensor) -> torch.Tensor:
    """(..., A) bin ids -> (..., A) vocabulary ids (18 + 256*d + b)."""
    d = torch.arange(bins.shape[-1], device=bins.device)
    return N_DISCRETE + d * N_BINS + bins


def continuous_slice(d: int) -> slice:
    """The slice of the 2066 logits that belongs to continuous dim d."""
    return slice(N_DISCRETE + d * N_BINS, N_DISCRETE + (d + 1) * N_BINS)
