"""Input encoders shared across tasks (paper §3.2, App. C.3).

- `ImpalaCNN`: IMPALA-CNN (Espeholt et al. 2018), 3 stacks of 16/32/32 channels, for 1x64x64
  uint8 frames (scaled by 1/255); a linear layer maps the 32x8x8 features to the width D.
- `state_encoder` (in the agent): one Linear over states zero-padded to 204 dims.
- `ScalarEncoder`: a Linear(1, D) for returns-to-go or rewards.
- `ActionEncoder`: action tokens for the "srra" ablation (discrete embedding + continuous linear).

Shape letters: N flattened batch*time, D width, A = 8 continuous action dims.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..tokenizer import IMAGE_SHAPE, MAX_ACT_DIM, N_DISCRETE


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class _ConvSequence(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res0 = _ResidualBlock(out_channels)
        self.res1 = _ResidualBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res1(self.res0(self.pool(self.conv(x))))


class ImpalaCNN(nn.Module):
    """(N, 1, 64, 64) uint8 (or float in [0, 255]) -> (N, D)."""

    def __init__(self, d_model: int, channels: tuple[int, ...] = (16, 32, 32), in_shape=IMAGE_SHAPE):
        super().__init__()
        c, h, w = in_shape
        stacks = []
        for out in channels:
            stacks.append(_ConvSequence(c, out))
            c, h, w = out, (h + 1) // 2, (w + 1) // 2
        self.stacks = nn.Sequential(*stacks)
        self.in_shape = tuple(in_shape)
        self.proj = nn.Linear(c * h * w, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"ImpalaCNN: images must be (N, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        x = x.to(self.proj.weight.dtype) * (1.0 / 255.0)
        x = F.relu(self.stacks(x))
        return self.proj(x.flatten(1))


class ScalarEncoder(nn.Linear):
    """(...) scalar -> (..., D)."""

    def __init__(self, d_model: int):
        super().__init__(1, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.unsqueeze(-1).to(self.weight.dtype))


class ActionEncoder(nn.Module):
    """Action tokens for the "srra" ablation: discrete (...) int64 -> embedding, or continuous
    (..., A) in [-1, 1] zero-padded -> Linear(A, D)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.discrete = nn.Embedding(N_DISCRETE, d_model)
        self.continuous = nn.Linear(MAX_ACT_DIM, d_model)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            return self.discrete(a.long())
        return self.continuous(a.to(self.continuous.weight.dtype))
