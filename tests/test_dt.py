"""Decision Transformer backbone: KV-cache step == forward, sliding window (exact and hop modes),
resets, causality.

Random tensors are inputs to the layers (math), not stand-ins for data. fp32: the cached and the
full attention agree to ~5e-7; the bound 1e-4 leaves headroom for other BLAS orderings.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lramlab.models.backbones.dt import DTBackbone, DTState

TOL = dict(atol=1e-4, rtol=0)


def _model(context_steps=10, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = SimpleNamespace(d_model=32, n_layers=2, n_heads=4, context_steps=context_steps, dropout=0.0, **kw)
    return DTBackbone(cfg).eval()


def _stream(m, x, l, reset_at=None):
    """Step through x (B, L, D) l tokens at a time; row 1 is reset before token `reset_at`."""
    state, outs = m.init_state(x.shape[0]), []
    for t in range(0, x.shape[1], l):
        if t == reset_at:
            state.reset(torch.tensor([False, True]))
        o, state = m.step(x[:, t:t + l], state)
        outs.append(o)
    return torch.cat(outs, 1)


@pytest.mark.parametrize("l", [1, 3])
def test_step_equals_forward_while_the_stream_fits(l):
    m = _model()
    x = torch.randn(2, 30, 32)
    with torch.no_grad():
        torch.testing.assert_close(_stream(m, x, l), m(x), **TOL)


def _exact_start(hi, w, k=3):
    """Spec of "exact": past the window, the latest multiple of k leaving <= w tokens up to hi."""
    return max(0, -(-(hi - w) // k) * k)


@pytest.mark.parametrize("l", [1, 3])
@pytest.mark.parametrize("reset_at", [None, 15])
def test_past_the_window_step_equals_forward_over_the_last_window(l, reset_at):
    # window W = 30 tokens (C = 10 steps of 3); a step's outputs equal forward over the tokens
    # from the latest timestep boundary (multiple of 3) that leaves <= W tokens through that step
    # -- the training window of the last C steps (a reset row: only its tokens since the reset)
    m = _model()
    w = m.window
    assert w == 30
    x = torch.randn(2, 90, 32)
    with torch.no_grad():
        ys = _stream(m, x, l, reset_at)
        for t in range(0, 90, l):
            for row in range(2):
                lo = _exact_start(t + l, w)
                assert lo % 3 == 0 and t + l - w <= lo <= max(0, t + l - w + 2)
                if reset_at is not None and row == 1 and t >= reset_at:
                    lo = max(lo, reset_at)
                ref = m(x[row:row + 1, lo:t + l])[:, -l:]
                torch.testing.assert_close(ys[row:row + 1, t:t + l], ref, **TOL)
        # the cache never grows past the window
        state = m.init_state(2)
        for t in range(0, 90, l):
            _, state = m.step(x[:, t:t + l], state)
        assert state.k.shape[3] == w and state.length <= w


def test_smaller_window_for_evaluation():
    m = _model(dt_n_positions=60)
    assert m.n_positions == 60 and m.window == 30
    m.window = 12
    x = torch.randn(1, 40, 32)
    with torch.no_grad():
        ys = _stream(m, x, 3)
        for t in range(0, 40, 3):
            hi = min(t + 3, 40)
            ref = m(x[:, _exact_start(hi, 12):hi])[:, -(hi - t):]
            torch.testing.assert_close(ys[:, t:hi], ref, **TOL)
    with pytest.raises(ValueError, match="window=61"):
        m.window = 61
    with pytest.raises(ValueError, match="61 tokens but the DT has 60 positions"):
        m(torch.randn(1, 61, 32))


def test_causal():
    m = _model()
    x = torch.randn(2, 30, 32)
    x2 = x.clone()
    x2[:, 17] += torch.randn(32)  # not a constant shift: the LayerNorms would cancel that
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    torch.testing.assert_close(y2[:, :17], y[:, :17], atol=1e-6, rtol=0)
    assert (y2[:, 17:] - y[:, 17:]).abs().amax(dim=-1).min() > 1e-4


def test_gradients_reach_every_parameter():
    m = _model().train()
    y, hidden = m(torch.randn(2, 30, 32), output_hidden_states=True)
    assert len(hidden) == 2
    torch.testing.assert_close(m.ln_f(hidden[-1]), y)
    y.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_input():
    m = _model()
    with pytest.raises(ValueError, match=r"expected \(B, l, 32\)"):
        m.step(torch.randn(2, 3, 16), m.init_state(2))
    with pytest.raises(ValueError, match="batch 3"):
        m.step(torch.randn(3, 1, 32), m.init_state(2))
    with pytest.raises(ValueError, match="31 tokens at once"):
        m.step(torch.randn(1, 31, 32), m.init_state(1))
    with pytest.raises(ValueError, match="n_heads=5"):
        DTBackbone(SimpleNamespace(d_model=32, n_layers=2, n_heads=5, context_steps=10))
    with pytest.raises(ValueError, match="dt_n_positions=20"):
        _model(dt_n_positions=20)


def test_builds_from_lramconfig_and_16M_param_count():
    config = pytest.importorskip("lramlab.models.config")
    backbones = pytest.importorskip("lramlab.models.backbones")
    cfg = config.LRAMConfig(backbone="dt", size="tiny")
    m = backbones.make_backbone(cfg).eval()
    assert isinstance(m, DTBackbone)
    assert m.window == cfg.context_tokens == 150 and m.n_positions == cfg.dt_n_positions
    x = torch.randn(1, 12, cfg.d_model)
    with torch.no_grad():
        torch.testing.assert_close(_stream(m, x, 3), m(x), **TOL)
    # 16M preset: 4 GPT-2 blocks of width 512 (12 D^2 + 13 D each) + ln_f + wpe (1600 x 512)
    with torch.device("meta"):
        big = backbones.make_backbone(config.LRAMConfig(backbone="dt", size="16M"))
    d = 512
    n_params = sum(p.numel() for p in big.parameters())
    assert n_params == 4 * (12 * d * d + 13 * d) + 2 * d + 1600 * d == 13_429_760


# -- hop window mode --------------------------------------------------------------------------


def _chunks(pattern, n):
    """(lo, hi) token ranges of successive steps: l tokens each, or "agent": the LRAM agent's
    (s_0, R_0), then (r_{t-1}, s_t, R_t) per step, so s tokens sit at multiples of 3."""
    if pattern == "agent":
        return [(0, 2)] + [(t, t + 3) for t in range(2, n - 2, 3)]
    return [(t, t + pattern) for t in range(0, n, pattern)]


def _hop_window_starts(chunks, w, keep, k=3):
    """Spec of "hop": while the tokens since the window start fit w, the start stays; when a step
    would overflow, it moves to the latest multiple of k that leaves >= keep tokens through the end
    of that step. Yields each step's window start."""
    a = 0
    for lo, hi in chunks:
        if hi - a > w:
            a = max(m for m in range(0, hi + 1, k) if hi - m >= max(keep, hi - lo))
        yield a


@pytest.mark.parametrize("pattern", [1, 3, "agent"])
@pytest.mark.parametrize("keep", [None, 12])
@pytest.mark.parametrize("reset_at", [None, 17])
def test_hop_step_equals_forward_since_the_last_reencode(pattern, keep, reset_at):
    m = _model()
    m.window_mode = "hop"
    m.window_keep = keep
    w, kk = 30, 15 if keep is None else keep
    x = torch.randn(2, 90, 32)
    chunks = _chunks(pattern, 90)
    if reset_at is not None:  # reset row 1 at the step boundary at or after token reset_at
        reset_at = next(lo for lo, _ in chunks if lo >= reset_at)
    starts = list(_hop_window_starts(chunks, w, kk))
    assert len(set(starts)) >= 4  # several hops happened
    state = m.init_state(2)
    assert state.mode == "hop" and state.keep == kk
    with torch.no_grad():
        for (lo, hi), a in zip(chunks, starts):
            assert a % 3 == 0 and (hi <= w or kk <= hi - a <= w)
            if lo == reset_at:
                state.reset(torch.tensor([False, True]))
            y, state = m.step(x[:, lo:hi], state)
            assert state.length == hi - a <= w  # the cache holds exactly the window, never > W
            for row in range(2):
                a_row = max(a, reset_at) if (reset_at is not None and row == 1 and lo >= reset_at) else a
                ref = m(x[row:row + 1, a_row:hi])[:, -(hi - lo):]
                torch.testing.assert_close(y[row:row + 1], ref, **TOL)
    assert state.k.shape[3] == w and state.seen == chunks[-1][1]


@pytest.mark.parametrize("mode, hops", [("exact", 20), ("hop", 4)])
def test_hop_reencodes_once_per_window_minus_keep(mode, hops):
    # W = 30, K = 15, 3 tokens a step over 90 tokens: exact re-encodes at every step past the
    # window (from token 33 on: 20 steps, W tokens each); hop at tokens 33, 51, 69, 87 (every
    # W - K + 3 = 18 tokens), re-encoding K = 15 tokens (the step's 3 included)
    m = _model()
    state = m.init_state(1, mode=mode)
    x = torch.randn(1, 90, 32)
    n, calls = 0, []
    orig = m._run
    m._run = lambda xs, st, lo: (calls.append(xs.shape[1]), orig(xs, st, lo))[1]
    with torch.no_grad():
        for t in range(0, 90, 3):
            before = state.length
            _, state = m.step(x[:, t:t + 3], state)
            n += state.length < before + 3
    assert n == hops and len(calls) == 30
    assert max(calls) == (30 if mode == "exact" else 15)


def test_window_mode_config_and_bad_values():
    config = pytest.importorskip("lramlab.models.config")
    backbones = pytest.importorskip("lramlab.models.backbones")
    assert config.LRAMConfig(backbone="dt", size="tiny").dt_window_mode == "exact"
    cfg = config.LRAMConfig(backbone="dt", size="tiny", dt_window_mode="hop")
    m = backbones.make_backbone(cfg)
    assert m.window_mode == "hop" and m.init_state(1).keep == 75  # 150 // 2 = 25 steps of 3
    assert config.LRAMConfig.from_dict(cfg.to_dict()).dt_window_mode == "hop"
    with pytest.raises(ValueError, match="dt_window_mode='fast'"):
        config.LRAMConfig(backbone="dt", dt_window_mode="fast")
    m = _model()
    with pytest.raises(ValueError, match="window_mode='fast'"):
        m.window_mode = "fast"
    with pytest.raises(ValueError, match="mode='fast'"):
        m.init_state(1, mode="fast")
    with pytest.raises(ValueError, match="window_keep=14 tokens: expected a multiple of tokens_per_step=3"):
        m.init_state(1, mode="hop", keep=14)
    with pytest.raises(ValueError, match="window_keep=30 tokens"):
        m.init_state(1, mode="hop", keep=30)  # keeps no room for a step
    m.window = 5
    with pytest.raises(ValueError, match="window=5 tokens is too small for window_mode='hop'"):
        m.init_state(1, mode="hop")
    assert isinstance(m.init_state(1), DTState)  # exact still works with any window
