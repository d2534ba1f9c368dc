"""Tokenizer: action bins round trip, clipping, vocabulary layout, state padding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import rollout
from lramlab.tokenizer import (
    BIN_WIDTH,
    MAX_ACT_DIM,
    N_BINS,
    N_DISCRETE,
    STATE_DIM,
    VOCAB_SIZE,
    ClipCounter,
    bins_to_continuous,
    continuous_slice,
    continuous_to_bins,
    continuous_token_ids,
    pad_state,
)


def test_round_trip_within_half_a_bin():
    x = np.concatenate([np.linspace(-1, 1, 10001, dtype=np.float32), [-1.0, 1.0, 0.0, -BIN_WIDTH / 2]]).astype(np.float32)
    b = continuous_to_bins(x)
    assert b.dtype == np.int64 and b.min() == 0 and b.max() == N_BINS - 1
    err = np.abs(bins_to_continuous(b) - x)
    assert err.max() <= BIN_WIDTH / 2 + 1e-6
    bt = continuous_to_bins(torch.from_numpy(x))
    assert isinstance(bt, torch.Tensor) and torch.equal(bt, torch.from_numpy(b))
    assert torch.allclose(bins_to_continuous(bt), torch.from_numpy(bins_to_continuous(b)))


def test_round_trip_on_real_pendulum_actions():
    eps = rollout("Pendulum-v1", 2, 30, seed=4)
    a = np.concatenate([e["actions"] for e in eps])  # torques scaled to [-1, 1]
    c = ClipCounter()
    back = bins_to_continuous(continuous_to_bins(a, c))
    assert np.abs(back - a).max() <= BIN_WIDTH / 2 + 1e-6
    assert c.clipped == 0 and c.total == a.size


def test_out_of_range_is_clipped_and_counted():
    c = ClipCounter()
    b = continuous_to_bins(np.array([-3.0, -1.0, 0.2, 1.0, 2.5, 1.0001], np.float32), c)
    assert c.clipped == 3 and c.total == 6
    assert b.tolist()[0] == 0 and b.tolist()[4] == N_BINS - 1 and b.tolist()[5] == N_BINS - 1
    continuous_to_bins(torch.tensor([[5.0, 0.0]]), c)
    assert c.clipped == 4 and c.total == 8


def test_vocabulary_layout():
    assert VOCAB_SIZE == 2066 == N_DISCRETE + MAX_ACT_DIM * N_BINS
    slices = [continuous_slice(d) for d in range(MAX_ACT_DIM)]
    assert slices[0] == slice(18, 274) and slices[-1].stop == VOCAB_SIZE
    covered = np.concatenate([np.arange(VOCAB_SIZE)[s] for s in slices])
    assert covered.tolist() == list(range(N_DISCRETE, VOCAB_SIZE))  # disjoint, in order, no gaps
    bins = torch.tensor([[0, 255, 7, 0, 0, 0, 0, 128]])
    ids = continuous_token_ids(bins)
    for d in range(MAX_ACT_DIM):
        s = continuous_slice(d)
        assert s.start <= int(ids[0, d]) < s.stop and int(ids[0, d]) - s.start == int(bins[0, d])


def test_pad_state():
    x = np.arange(39, dtype=np.float64).reshape(1, 39)
    p = pad_state(x)
    assert p.shape == (1, STATE_DIM) and p.dtype == np.float32
    np.testing.assert_array_equal(p[0, :39], x[0])
    assert not p[0, 39:].any()
    assert pad_state(np.zeros((2, 3, STATE_DIM))).shape == (2, 3, STATE_DIM)
    with pytest.raises(ValueError, match="205 dims"):
        pad_state(np.zeros(205))
