"""Mamba's numba CPU path (_mamba_kernels, _mamba_cpu) against the pure-torch reference.

- the selective scan: outputs and gradients of every input (u, delta, A, B, C, D, z, delta_bias,
  initial_state, and through the returned last state) vs `selective_scan_ref`;
- the fused mixer core (`mamba_inner_numba`: conv, x_proj, dt_proj, scan, gate) vs the same math
  in torch ops, including the conv history and the initial SSM state;
- the whole model: loss and every parameter's gradient vs `mamba_scan="sequential"`, on Dark-Room
  windows (real simulator) that cross episode boundaries and are left-padded;
- the fused step (token by token, timestep by timestep, B > 1, the row limit) == forward;
- path selection, `scan_impl`, config validation, fallback without numba.

Shapes cross the kernels' blocks: L not a multiple of the checkpoint chunk, E not a multiple of
the channel block (EB = 128). Random tensors are inputs to math, not stand-ins for data.
Tolerance: max |fast - reference| / max |reference| per tensor, <= 1e-5 (fp32; measured ~1e-6,
the two differ only in summation order and in exp/softplus to ~2 ulp).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lramlab.models import LRAMConfig, action_loss, build_model
from lramlab.models.backbones import _mamba_cpu, _mamba_kernels
from lramlab.models.backbones.mamba import MambaBackbone, MambaMixer, selective_scan_ref

if _mamba_kernels.kernels() is None:
    pytest.skip("numba is not installed: Mamba runs on the torch scan only", allow_module_level=True)

REL = 1e-5


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------ kernel math
def test_exp_and_softplus_match_float64():
    k = _mamba_kernels.kernels()
    x = np.concatenate([np.linspace(-87, 88, 400_001), [-1e-30, 0.0, 1e-30, -200.0, 25.0, -30.0]]).astype(np.float32)
    e, sp = np.empty_like(x), np.empty_like(x)
    k.exp(x, e)
    k.softplus(x, sp)
    e64 = np.exp(x.astype(np.float64))
    normal = x > -87.3                                     # e^x >= 1.2e-38; below, flushed to 0
    assert np.max(np.abs(e - e64)[normal] / e64[normal]) < 2.5e-7  # ~2 ulp
    assert np.all(e[~normal] == 0.0)
    sp64 = np.log1p(np.exp(x.astype(np.float64)))
    ok = sp64 > 1e-37
    assert np.max(np.abs(sp - sp64)[ok] / sp64[ok]) < 5e-7


# ------------------------------------------------------------------------------ selective scan
def scan_inputs(b, e, n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    A = -torch.exp(0.5 * r(e, n))
    return dict(u=r(b, e, length), delta=r(b, e, length) - 1.0, A=A, B=r(b, n, length), C=r(b, n, length),
                D=r(e), z=r(b, e, length), delta_bias=0.5 * r(e), initial_state=r(b, e, n))


@pytest.mark.parametrize("b,e,length,chunk,softplus,opts", [
    (2, 130, 45, 16, True, "all"),        # E crosses the 128-channel block, L three partial chunks
    (3, 20, 33, 8, False, "all"),         # no softplus
    (1, 257, 7, 32, True, "all"),         # one partial chunk, three channel blocks
    (2, 16, 40, 16, True, "bare"),        # no D, z, delta_bias, initial state, last state
])
def test_scan_output_and_every_gradient_equal_reference(b, e, length, chunk, softplus, opts):
    inp = scan_inputs(b, e, 16, length)
    if not softplus:  # delta is used as given: keep it positive (decays <= 1), as softplus would
        inp["delta"], inp["delta_bias"] = 0.3 * inp["delta"].abs(), 0.1 * inp["delta_bias"].abs()
    if opts == "bare":
        for key in ("D", "z", "delta_bias", "initial_state"):
            inp[key] = None
    names = [k for k, v in inp.items() if v is not None]
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(b, e, length, generator=g)
    dlast = torch.randn(b, e, 16, generator=g)
    results = []
    for fn in (selective_scan_ref, lambda *a, **kw: _mamba_cpu.selective_scan_numba(*a, chunk_size=chunk, **kw)):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items() if v is not None}
        args = {**inp, **leaves}
        y, last = fn(args["u"], args["delta"], args["A"], args["B"], args["C"], args["D"], args["z"],
                     args["delta_bias"], softplus, True, args["initial_state"])
        loss = (y * dy).sum() + ((last * dlast).sum() if opts == "all" else 0.0)
        loss.backward()
        results.append((y.detach(), last.detach(), {k: leaves[k].grad for k in names}))
    (y_ref, last_ref, g_ref), (y_got, last_got, g_got) = results
    assert rel(y_got, y_ref) <= REL and rel(last_got, last_ref) <= REL
    for k in names:
        assert g_got[k] is not None and g_got[k].shape == g_ref[k].shape, k
        assert rel(g_got[k], g_ref[k]) <= REL, (k, rel(g_got[k], g_ref[k]))


def test_scan_reads_token_major_views_without_copy_and_keeps_dtype():
    inp = scan_inputs(2, 24, 16, 20)
    u_tm = inp["u"].transpose(1, 2).contiguous()        # (B, L, E) memory, as the mixer holds it
    ref = selective_scan_ref(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"],
                             inp["delta_bias"], True)
    got = _mamba_cpu.selective_scan_numba(u_tm.transpose(1, 2), inp["delta"], inp["A"], inp["B"], inp["C"],
                                          inp["D"], inp["z"], inp["delta_bias"], True)
    assert got.shape == ref.shape and rel(got, ref) <= REL
    got16 = _mamba_cpu.selective_scan_numba(inp["u"].bfloat16(), inp["delta"], inp["A"], inp["B"], inp["C"])
    assert got16.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="chunk_size=0"):
        _mamba_cpu.selective_scan_numba(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], chunk_size=0)


# ------------------------------------------------------------------------------ fused mixer core
def inner_reference(xz, conv_w, conv_b, xp_w, dt_w, dt_b, A_log, D, conv_prev, ssm_state):
    """The mixer between in_proj and out_proj in torch ops (MambaMixer.forward's reference path)."""
    e = xz.shape[-1] // 2
    xi, z = xz[..., :e].transpose(1, 2), xz[..., e:].transpose(1, 2)          # (B, E, L)
    xc = F.silu(F.conv1d(torch.cat([conv_prev.transpose(1, 2), xi], -1), conv_w, conv_b, groups=e))
    x_dbl = xc.transpose(1, 2) @ xp_w.t()
    r, n = dt_w.shape[1], A_log.shape[1]
    delta = (x_dbl[..., :r] @ dt_w.t()).transpose(1, 2)
    bm, cm = x_dbl[..., r:r + n].transpose(1, 2), x_dbl[..., r + n:].transpose(1, 2)
    y, last = selective_scan_ref(xc, delta, -torch.exp(A_log), bm, cm, D, z, dt_b, True, True, ssm_state)
    return y.transpose(1, 2), last


def test_mamba_inner_equals_torch_ops_with_states():
    torch.manual_seed(0)
    mixer = MambaMixer(72)                                   # E = 144: crosses the channel block
    b, length, e = 2, 37, mixer.d_inner
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in mixer.parameters():                          # move off the init (D = 1, conv bias ~ 0)
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    xz = torch.randn(b, length, 2 * e, generator=g)
    prev = torch.randn(b, mixer.d_conv - 1, e, generator=g)
    h0 = torch.randn(b, e, mixer.d_state, generator=g)
    dy, dlast = torch.randn(b, length, e, generator=g), torch.randn(b, e, mixer.d_state, generator=g)
    params = [mixer.conv1d.weight, mixer.conv1d.bias, mixer.x_proj.weight, mixer.dt_proj.weight,
              mixer.dt_proj.bias, mixer.A_log, mixer.D]
    out = []
    for fn in (inner_reference, lambda *a: _mamba_cpu.mamba_inner_numba(*a, chunk_size=16)):
        leaves = [t.detach().clone().requires_grad_(True) for t in [xz, *params, prev, h0]]
        y, last = fn(*leaves)
        ((y * dy).sum() + (last * dlast).sum()).backward()
        out.append((y.detach(), last.detach(), [t.grad for t in leaves]))
    (y_ref, l_ref, g_ref), (y_got, l_got, g_got) = out
    assert rel(y_got, y_ref) <= REL and rel(l_got, l_ref) <= REL
    names = ["xz", "conv_w", "conv_b", "x_proj", "dt_proj_w", "dt_proj_b", "A_log", "D", "conv_prev", "ssm_state"]
    for name, a, r in zip(names, g_got, g_ref):
        assert rel(a, r) <= REL, (name, rel(a, r))


# ------------------------------------------------------------------------------ whole model
def darkroom_batch(B: int, T: int, seed: int = 0, episode_len: int = 15) -> dict:
    """Dark-Room windows (random actions) over concatenated 15-step episodes; row 0 and 2 left-padded."""
    from lramlab.envs.darkroom import TRAIN_GOALS, DarkRoomVec

    rng = np.random.default_rng(seed)
    env = DarkRoomVec(TRAIN_GOALS[:B], max_steps=episode_len)
    cols = {"obs": [], "act": [], "rew": [], "rtg": []}
    for _ in range(T // episode_len + 2):
        o, ep = env.reset(), {"obs": [], "act": [], "rew": []}
        for _ in range(episode_len):
            a = rng.integers(0, 5, size=B)
            ep["obs"].append(o)
            ep["act"].append(a)
            o, r, *_ = env.step(a)
            ep["rew"].append(r)
        r = np.stack(ep["rew"], 1)
        cols["obs"].append(np.stack(ep["obs"], 1))
        cols["act"].append(np.stack(ep["act"], 1))
        cols["rew"].append(r)
        cols["rtg"].append(np.cumsum(r[:, ::-1], 1)[:, ::-1])
    full = {k: np.concatenate(v, 1) for k, v in cols.items()}
    start = rng.integers(1, full["obs"].shape[1] - T, size=B)   # windows start mid-episode
    idx = start[:, None] + np.arange(T)
    rows = np.arange(B)[:, None]
    states = np.zeros((B, T, 204), np.float32)
    states[..., :2] = full["obs"][rows, idx]
    batch = {"states": states, "rtg": full["rtg"][rows, idx].astype(np.float32),
             "rewards": full["rew"][rows, idx].astype(np.float32), "actions": full["act"][rows, idx],
             "mask": np.ones((B, T), bool)}
    for i, k in ((0, 5), (2, T // 2)):                        # left padding: zeros, mask False
        for key in batch:
            batch[key][i, k:] = batch[key][i, :T - k].copy()
            batch[key][i, :k] = 0
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    out.update(n_actions=torch.full((B,), 5), act_dim=torch.zeros(B, dtype=torch.int64),
               task_index=torch.arange(B), domain="darkroom")
    return out


def test_model_gradients_equal_reference_on_padded_windows_across_episodes():
    batch = darkroom_batch(3, 40)                               # 120 tokens, episodes of 45 tokens
    assert not batch["mask"][0, :5].any() and batch["mask"][1].all()
    results = {}
    for scan in ("sequential", "numba"):
        torch.manual_seed(0)
        model = build_model(LRAMConfig(backbone="mamba", size="tiny", d_model=72, context_steps=40,
                                       mamba_scan=scan))
        with torch.no_grad():                                   # D = 1, zero biases: move off the init
            g = torch.Generator().manual_seed(5)
            for p in model.backbone.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        loss, _ = action_loss(model(batch), batch)
        loss.backward()
        assert model.backbone.scan_impl == ("numba" if scan == "numba" else "torch-sequential")
        results[scan] = (loss.detach(), {k: p.grad for k, p in model.named_parameters()})
    (l_ref, g_ref), (l_got, g_got) = results["sequential"], results["numba"]
    assert abs(l_got - l_ref) <= REL * abs(l_ref)
    n_checked = 0
    for name, ref in g_ref.items():
        if ref is None or not ref.abs().max() > 0:
            continue  # e.g. the image encoder on a state batch (an exact zero in both)
        assert rel(g_got[name], ref) <= REL, (name, rel(g_got[name], ref))
        n_checked += 1
    assert n_checked >= 2 * 9 + 1  # every mixer parameter of both layers, the norms, ...


def fast_backbone(B_layers=2, d_model=72, seed=0):
    torch.manual_seed(seed)
    cfg = LRAMConfig(backbone="mamba", size="tiny", d_model=d_model, n_layers=B_layers)
    bb = MambaBackbone(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return bb


@pytest.mark.parametrize("B,piece,impl", [(1, 1, "numba-step"), (1, 3, "numba-step"), (2, 3, "numba-step"),
                                          (4, 3, "numba-step"), (5, 3, "numba"), (1, 64, "numba")])
def test_fused_step_equals_forward(B, piece, impl):
    bb = fast_backbone()
    x = torch.randn(B, 150, 72, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = bb(x)
        assert bb.scan_impl == "numba"
        state, outs = bb.init_state(B), []
        for t in range(0, 150, piece):
            o, state = bb.step(x[:, t:t + piece], state)
            outs.append(o)
        assert bb.scan_impl == impl                              # B * l <= 12 rows: fused step
        assert (torch.cat(outs, 1) - y).abs().max().item() <= 1e-4
        _, chunk_state = bb.step(x, bb.init_state(B))           # one 150-token chunk: same state
        torch.testing.assert_close(chunk_state.ssm, state.ssm, atol=1e-4, rtol=0)
        torch.testing.assert_close(chunk_state.conv, state.conv, atol=1e-6, rtol=0)


def test_step_with_grad_uses_torch_and_state_is_updated_in_place():
    bb = fast_backbone()
    x = torch.randn(1, 3, 72)
    state = bb.init_state(1)
    y, new = bb.step(x, state)                  # autograd on: the differentiable chunk path, not in place
    assert bb.scan_impl == "numba" and y.requires_grad and state.ssm.abs().max() == 0
    y.sum().backward()
    assert bb.layers[0].mixer.in_proj.weight.grad.abs().max() > 0
    with torch.no_grad():
        bb.step(x, bb.init_state(1))
        assert bb.scan_impl == "numba-step"
        st = bb.init_state(1)
        out, st2 = bb.step(x, st)
        assert st2 is st and st.ssm.abs().max() > 0             # the fused step updates in place
    torch.testing.assert_close(out, y.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(st.ssm, new.ssm, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ selection, config
def test_config_validation_and_reference_path_selectable():
    for bad in ({"mamba_scan": "fast"}, {"mamba_kernel": "gpu"}, {"mamba_scan_chunk": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LRAMConfig(backbone="mamba", size="tiny", **bad)
    bb = MambaBackbone(LRAMConfig(backbone="mamba", size="tiny", mamba_scan="sequential")).eval()
    with torch.no_grad():
        bb(torch.randn(1, 6, 64))
        assert bb.scan_impl == "torch-sequential"
        bb.step(torch.randn(1, 1, 64), bb.init_state(1))
        assert bb.scan_impl == "torch-step"


def test_without_numba_auto_falls_back_and_numba_raises(monkeypatch):
    monkeypatch.setattr(_mamba_kernels, "kernels", lambda: None)
    x = torch.randn(1, 6, 64)
    bb = MambaBackbone(LRAMConfig(backbone="mamba", size="tiny")).eval()
    with torch.no_grad():
        bb(x)
        assert bb.scan_impl == "torch-sequential"
        bb.step(x[:, :1], bb.init_state(1))
        assert bb.scan_impl == "torch-step"
    forced = MambaBackbone(LRAMConfig(backbone="mamba", size="tiny", mamba_scan="numba"))
    with pytest.raises(RuntimeError, match="numba kernels are unavailable"):
        forced(x)
