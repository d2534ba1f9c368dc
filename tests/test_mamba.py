"""Mamba backbone: scan equivalence, step == forward, mamba-ssm weight layout, gradients.

Random tensors here are inputs to math (scans, layers), not stand-ins for data.
fp32 tolerances: the scans agree to ~2e-6 (different summation order); a 2-layer stack over 450
tokens to ~5e-7; the bounds below leave an order of magnitude of headroom.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lramlab.models.backbones.mamba import (
    MambaBackbone,
    MambaMixer,
    mamba_kernels,
    selective_scan_parallel,
    selective_scan_ref,
)


def _cfg(**kw):
    base = dict(d_model=32, n_layers=2, n_heads=4, context_steps=50, mamba_d_state=16,
                mamba_d_conv=4, mamba_expand=2, dropout=0.0)
    base.update(kw)
    return SimpleNamespace(**base)


def _scan_inputs(b=2, e=16, n=16, length=150, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u, delta, z = r(b, e, length), r(b, e, length), r(b, e, length)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(e, 1) * torch.rand(e, 1, generator=g) * 2
    B, C, D, bias, h0 = r(b, n, length), r(b, n, length), r(e), r(e), r(b, e, n)
    if grad:
        for t in (u, delta, B, C, h0):
            t.requires_grad_(True)
    return u, delta, A, B, C, D, z, bias, h0


@pytest.mark.parametrize("length,chunk", [(150, 32), (150, 64), (7, 4), (3, 32), (1, 32), (97, 1)])
def test_parallel_scan_equals_sequential_reference(length, chunk):
    u, delta, A, B, C, D, z, bias, h0 = _scan_inputs(length=length)
    for init in (None, h0):
        ref, last_ref = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, True, init)
        par, last_par = selective_scan_parallel(u, delta, A, B, C, D, z, bias, True, True, init,
                                                chunk_size=chunk)
        assert par.shape == ref.shape == (2, 16, length)
        torch.testing.assert_close(par, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(last_par, last_ref, atol=1e-5, rtol=1e-5)


def test_parallel_scan_gradients_equal_reference():
    grads = []
    for fn in (selective_scan_ref, lambda *a, **k: selective_scan_parallel(*a, chunk_size=16, **k)):
        u, delta, A, B, C, D, z, bias, h0 = _scan_inputs(length=40, grad=True)
        y, last = fn(u, delta, A, B, C, D, z, bias, True, True, h0)
        (y.square().mean() + last.sum()).backward()
        grads.append([t.grad for t in (u, delta, B, C, h0)])
    for g_ref, g_par in zip(*grads):
        torch.testing.assert_close(g_par, g_ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scan", ["sequential", "chunked"])
def test_forward_equals_token_and_timestep_steps(scan):
    torch.manual_seed(0)
    m = MambaBackbone(_cfg(mamba_scan=scan)).eval()
    x = torch.randn(2, 450, 32)
    with torch.no_grad():
        y = m(x)
        assert m.scan_impl == f"torch-{scan}"
        for l in (1, 3):
            state, outs = m.init_state(2), []
            for t in range(0, 450, l):
                o, state = m.step(x[:, t:t + l], state)
                outs.append(o)
            torch.testing.assert_close(torch.cat(outs, 1), y, atol=1e-4, rtol=0)
        # the state after the stream equals the state after one 450-token chunk
        _, chunk_state = m.step(x, m.init_state(2))
        torch.testing.assert_close(chunk_state.ssm, state.ssm, atol=1e-4, rtol=0)
        torch.testing.assert_close(chunk_state.conv, state.conv, atol=1e-5, rtol=0)


def test_long_sequence_runs_linear_memory():
    # 3000 tokens: neither scan materialises anything quadratic in L; both agree
    torch.manual_seed(1)
    x = torch.randn(1, 3000, 32)
    outs = []
    for scan in ("chunked", "sequential"):
        torch.manual_seed(2)
        m = MambaBackbone(_cfg(mamba_scan=scan)).eval()
        with torch.no_grad():
            outs.append(m(x))
    assert torch.isfinite(outs[0]).all()
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=0)


# Derived from mamba_ssm/modules/mamba_simple.py (Mamba: conv_bias=True, bias=False) and
# mamba_ssm/models/mixer_seq_simple.py (MixerModel: layers.{i}.mixer / layers.{i}.norm / norm_f).
def _mamba_ssm_mixer_shapes(d, n=16, w=4, expand=2):
    e, r = expand * d, math.ceil(d / 16)
    return {
        "in_proj.weight": (2 * e, d), "conv1d.weight": (e, 1, w), "conv1d.bias": (e,),
        "x_proj.weight": (r + 2 * n, e), "dt_proj.weight": (e, r), "dt_proj.bias": (e,),
        "A_log": (e, n), "D": (e,), "out_proj.weight": (d, e),
    }


@pytest.mark.parametrize("d_model", [32, 512])
def test_state_dict_matches_mamba_ssm(d_model):
    with torch.device("meta"):
        mixer = MambaMixer(d_model)
        bb = MambaBackbone(_cfg(d_model=d_model, n_layers=2))
    got = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    assert got == _mamba_ssm_mixer_shapes(d_model)
    mixer_shapes = _mamba_ssm_mixer_shapes(d_model)
    expect = {f"layers.{i}.mixer.{k}": s for i in range(2) for k, s in mixer_shapes.items()}
    expect.update({f"layers.{i}.norm.weight": (d_model,) for i in range(2)})
    expect["norm_f.weight"] = (d_model,)
    assert {k: tuple(v.shape) for k, v in bb.state_dict().items()} == expect


def test_init_follows_mamba_ssm():
    torch.manual_seed(0)
    mx = MambaMixer(64)
    torch.testing.assert_close(mx.A_log, torch.log(torch.arange(1, 17.0)).repeat(128, 1))
    assert torch.equal(mx.D, torch.ones(128))
    dt = F.softplus(mx.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    bound = math.ceil(64 / 16) ** -0.5
    assert mx.dt_proj.weight.abs().max() <= bound
    assert mx.in_proj.bias is None and mx.out_proj.bias is None


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for scan in ("sequential", "chunked"):
        m = MambaBackbone(_cfg(mamba_scan=scan))
        y, hidden = m(torch.randn(2, 30, 32), output_hidden_states=True)
        assert len(hidden) == 2
        torch.testing.assert_close(m.norm_f(hidden[-1]), y)
        y.square().mean().backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (scan, name)


def test_reset_rows_and_bad_input():
    torch.manual_seed(0)
    m = MambaBackbone(_cfg()).eval()
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        _, st = m.step(x[:, :6], m.init_state(2))
        st = st.reset(torch.tensor([False, True]))
        y, _ = m.step(x[:, 6:], st)
        torch.testing.assert_close(y[1:], m(x[1:, 6:]), atol=1e-5, rtol=0)
        assert not torch.allclose(y[:1], m(x[:1, 6:]), atol=1e-3)
    with pytest.raises(ValueError, match=r"expected \(B, l, 32\)"):
        m.step(torch.randn(2, 3, 16), m.init_state(2))
    with pytest.raises(ValueError, match="batch 3"):
        m.step(torch.randn(3, 1, 32), m.init_state(2))
    with pytest.raises(ValueError, match="mamba_scan='fast'"):
        MambaBackbone(_cfg(mamba_scan="fast"))


def test_builds_from_lramconfig():
    config = pytest.importorskip("lramlab.models.config")
    backbones = pytest.importorskip("lramlab.models.backbones")
    cfg = config.LRAMConfig(backbone="mamba", size="tiny", d_model=32, n_layers=2)
    m = backbones.make_backbone(cfg).eval()
    assert isinstance(m, MambaBackbone)
    x = torch.randn(1, 9, 32)
    with torch.no_grad():
        y = m(x)
        o, _ = m.step(x, m.init_state(1))
    torch.testing.assert_close(o, y, atol=1e-5, rtol=0)


def test_param_count_16M_preset():
    # 8 blocks at width 512 (paper: twice DT's 4 layers): per block the mixer's parameters
    # (in_proj 2ED, conv (W+1)E, x_proj (R+2N)E, dt_proj (R+1)E, A_log EN, D E, out_proj ED) + RMSNorm D
    d, e, n, w, r = 512, 1024, 16, 4, 32
    per_block = 2 * e * d + (w + 1) * e + (r + 2 * n) * e + (r + 1) * e + e * n + e + e * d + d
    with torch.device("meta"):
        m = MambaBackbone(_cfg(d_model=512, n_layers=8))
    assert sum(p.numel() for p in m.parameters()) == 8 * per_block + d == 13_562_368


@pytest.mark.gpu
def test_mamba_ssm_kernels_match_torch():
    if not torch.cuda.is_available() or "selective_scan_fn" not in mamba_kernels():
        pytest.skip("needs CUDA and an importable mamba_ssm")
    torch.manual_seed(0)
    m = MambaBackbone(_cfg(d_model=64)).cuda().eval()
    x = torch.randn(2, 150, 64, device="cuda")
    with torch.no_grad():
        y_kernel = m(x)
        assert m.scan_impl == "mamba_ssm"
        for layer in m.layers:
            layer.mixer.kernel = "torch"
        y_torch = m(x)
        assert m.scan_impl == "torch-chunked"
    torch.testing.assert_close(y_kernel, y_torch, atol=1e-4, rtol=1e-4)
