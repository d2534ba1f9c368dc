"""Mamba's CPU fast path: autograd Functions over the numba kernels of `_mamba_kernels`.

- `selective_scan_numba(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
  initial_state, chunk_size)`: mamba-ssm's `selective_scan_fn` signature and semantics (plus an
  initial state), differentiable in every tensor input. Its (B, E, L) inputs are read token-major:
  a (B, E, L) view of (B, L, E) memory (what the mixer passes) costs no copy.
- `mamba_inner_numba(xz, conv weight/bias, x_proj, dt_proj weight/bias, A_log, D, conv_prev,
  ssm_state, chunk_size)`: the mixer between in_proj and out_proj in one Function, as mamba-ssm's
  `mamba_inner_fn` does on a GPU: causal conv + SiLU (numba), x_proj and dt_proj (torch matmuls,
  MKL), selective scan with the SiLU(z) gate (numba); the backward runs the same pieces in reverse
  and writes the conv and z gradients straight into one (B, L, 2E) gradient of xz.
- `MambaStepper`: the one-token step of a whole stack (numba `step` kernel per layer, the
  projections through `_xlstm_step.kernels().linear_rows`/torch), without per-step allocation.

Both Functions compute in fp32 (inputs are cast, autocast is off inside). The backward keeps the
scan state only every `chunk_size` tokens and recomputes it chunkwise (see _mamba_kernels).
Shape letters as in mamba.py: B batch, L tokens, D width, E inner width, N state, W conv width,
R dt rank, P = R + 2N.
"""
from __future__ import annotations

import math

import torch

from . import _mamba_kernels

__all__ = ["available", "selective_scan_numba", "mamba_inner_numba"]


def available() -> bool:
    """True when numba compiled the kernels here."""
    return _mamba_kernels.kernels() is not None


def _k():
    k = _mamba_kernels.kernels()
    if k is None:
        raise RuntimeError("lramlab: the numba Mamba kernels are unavailable (is numba installed? "
                           'pip install -e ".[models]"); use mamba_scan="sequential"')
    return k


def _np(t: torch.Tensor):
    return t.detach().numpy()


def _token_major(x: torch.Tensor) -> torch.Tensor:
    """(B, X, L) -> contiguous fp32 (B, L, X); free when x is a transposed view of (B, L, X) memory."""
    return x.transpose(1, 2).float().contiguous()


_EMPTY3 = torch.zeros(1, 1, 1)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk):
        ctx.set_materialize_grads(False)
        k = _k()
        ut, dt = _token_major(u), _token_major(delta)
        b, length, e = ut.shape
        n = A.shape[1]
        At = A.float().t().contiguous()
        Bt, Ct = _token_major(B), _token_major(C)
        Dv = torch.zeros(e) if D is None else D.float().contiguous()
        bias = torch.zeros(e) if delta_bias is None else delta_bias.float().contiguous()
        zt = _EMPTY3 if z is None else _token_major(z)
        h0 = _EMPTY3 if initial_state is None else initial_state.float().transpose(1, 2).contiguous()
        y = torch.empty(b, length, e)
        hlast = torch.empty(b, n, e)
        need_grad = any(ctx.needs_input_grad)
        ckpt = torch.empty(b, math.ceil(length / chunk), n, e) if need_grad else _EMPTY3.view(1, 1, 1, 1)
        k.scan_fwd(_np(ut), _np(dt), _np(At), _np(Bt), _np(Ct), _np(Dv), _np(bias), bool(delta_softplus),
                   _np(zt), 0, z is not None, _np(h0), initial_state is not None, int(chunk),
                   _np(y), _np(hlast), _np(ckpt), need_grad)
        if need_grad:
            ctx.save_for_backward(ut, dt, At, Bt, Ct, Dv, bias, zt, ckpt)
            ctx.flags = (bool(delta_softplus), z is not None, int(chunk), D is not None,
                         delta_bias is not None, initial_state is not None)
        return y.transpose(1, 2), hlast.transpose(1, 2)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dy, dlast):
        k = _k()
        ut, dt, At, Bt, Ct, Dv, bias, zt, ckpt = ctx.saved_tensors
        softplus, has_z, chunk, has_D, has_bias, has_h0 = ctx.flags
        b, length, e = ut.shape
        n = At.shape[0]
        dyt = torch.zeros(b, length, e) if dy is None else _token_major(dy)
        dl = _EMPTY3 if dlast is None else dlast.float().transpose(1, 2).contiguous()
        du, ddt, dz = torch.empty(b, length, e), torch.empty(b, length, e), torch.empty(b, length, e)
        dAt, dh0 = torch.empty(b, n, e), torch.empty(b, n, e)
        dB, dC = torch.zeros(b, length, n), torch.zeros(b, length, n)
        dD, dbias = torch.empty(b, e), torch.empty(b, e)
        k.scan_bwd(_np(ut), _np(dt), _np(At), _np(Bt), _np(Ct), _np(Dv), _np(bias), softplus, _np(zt), 0,
                   has_z, _np(ckpt), chunk, _np(dyt), _np(dl), dlast is not None, _np(du), _np(ddt),
                   _np(dAt), _np(dB), _np(dC), _np(dD), _np(dbias), _np(dz), 0, _np(dh0))
        t = lambda x: x.transpose(1, 2)  # noqa: E731
        return (t(du), t(ddt), dAt.sum(0).t(), t(dB), t(dC), dD.sum(0) if has_D else None,
                t(dz) if has_z else None, dbias.sum(0) if has_bias else None,
                t(dh0) if has_h0 else None, None, None)


def selective_scan_numba(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, initial_state=None, chunk_size: int = 16):
    """`selective_scan_ref`'s result and gradients from the numba kernels (CPU, fp32 compute).

    u, delta, z (B, E, L); A (E, N); B, C (B, N, L); D, delta_bias (E,); initial_state (B, E, N).
    Returns out (B, E, L) in u's dtype, and the last state (B, E, N) fp32 when return_last_state.
    `chunk_size` is the state-checkpoint spacing of the backward (memory B E N L / chunk_size)."""
    if u.device.type != "cpu":
        raise RuntimeError(f"selective_scan_numba runs on a CPU; u is on {u.device}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: expected a positive int")
    y, last = _SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                   bool(delta_softplus), int(chunk_size))
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


class _MambaInner(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, xz, conv_w, conv_b, xp_w, dt_w, dt_b, A_log, D, conv_prev, ssm_state, chunk):
        ctx.set_materialize_grads(False)
        k = _k()
        xz = xz.contiguous()
        b, length, s = xz.shape
        e = s // 2
        w = conv_w.shape[-1]
        n = A_log.shape[1]
        r = dt_w.shape[1]
        wT = conv_w.reshape(e, w).t().contiguous()
        cb = torch.zeros(e) if conv_b is None else conv_b.contiguous()
        prev = torch.zeros(b, w - 1, e) if conv_prev is None else conv_prev.contiguous()
        xc = torch.empty(b, length, e)
        k.conv_fwd(_np(xz), 0, _np(prev), _np(wT), _np(cb), _np(xc))
        x_dbl = xc.view(-1, e) @ xp_w.t()                                  # (B*L, P)
        dlt = (x_dbl[:, :r] @ dt_w.t()).view(b, length, e)                 # bias added in the scan
        Bm = x_dbl[:, r:r + n].contiguous().view(b, length, n)
        Cm = x_dbl[:, r + n:].contiguous().view(b, length, n)
        A = -torch.exp(A_log)
        At = A.t().contiguous()
        y = torch.empty(b, length, e)
        hlast = torch.empty(b, n, e)
        need_grad = any(ctx.needs_input_grad)
        ckpt = torch.empty(b, math.ceil(length / chunk), n, e) if need_grad else _EMPTY3.view(1, 1, 1, 1)
        h0 = _EMPTY3 if ssm_state is None else ssm_state.transpose(1, 2).contiguous()
        k.scan_fwd(_np(xc), _np(dlt), _np(At), _np(Bm), _np(Cm), _np(D.contiguous()), _np(dt_b.contiguous()),
                   True, _np(xz), e, True, _np(h0), ssm_state is not None, int(chunk),
                   _np(y), _np(hlast), _np(ckpt), need_grad)
        if need_grad:
            ctx.save_for_backward(xz, wT, cb, prev, xc, x_dbl, dlt, Bm, Cm, A, At, ckpt, xp_w, dt_w, D, dt_b)
            ctx.flags = (int(chunk), conv_b is not None, conv_prev is not None, ssm_state is not None)
        return y, hlast.transpose(1, 2)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dy, dlast):
        k = _k()
        xz, wT, cb, prev, xc, x_dbl, dlt, Bm, Cm, A, At, ckpt, xp_w, dt_w, D, dt_b = ctx.saved_tensors
        chunk, has_cb, has_prev, has_h0 = ctx.flags
        b, length, s = xz.shape
        e, n, r, w = s // 2, At.shape[0], dt_w.shape[1], wT.shape[0]
        dy = torch.zeros(b, length, e) if dy is None else dy.float().contiguous()
        dl = _EMPTY3 if dlast is None else dlast.float().transpose(1, 2).contiguous()
        dxz = torch.empty(b, length, s)
        du, ddlt = torch.empty(b, length, e), torch.empty(b, length, e)
        dAt, dh0 = torch.empty(b, n, e), torch.empty(b, n, e)
        dB, dC = torch.zeros(b, length, n), torch.zeros(b, length, n)
        dD, dbias = torch.empty(b, e), torch.empty(b, e)
        k.scan_bwd(_np(xc), _np(dlt), _np(At), _np(Bm), _np(Cm), _np(D), _np(dt_b), True, _np(xz), e, True,
                   _np(ckpt), chunk, _np(dy), _np(dl), dlast is not None, _np(du), _np(ddlt), _np(dAt),
                   _np(dB), _np(dC), _np(dD), _np(dbias), _np(dxz), e, _np(dh0))
        ddlt2 = ddlt.view(-1, e)
        d_dt_w = ddlt2.t() @ x_dbl[:, :r]                                  # (E, R)
        dx_dbl = torch.cat([ddlt2 @ dt_w, dB.view(-1, n), dC.view(-1, n)], dim=1)  # (B*L, P)
        d_xp_w = dx_dbl.t() @ xc.view(-1, e)                               # (P, E)
        dxc = torch.addmm(du.view(-1, e), dx_dbl, xp_w).view(b, length, e)
        dprev, dwT, dcb = torch.empty(b, w - 1, e), torch.empty(b, w, e), torch.empty(b, e)
        k.conv_bwd(_np(xz), 0, _np(prev), _np(wT), _np(cb), _np(dxc), _np(dxz), 0, _np(dprev), _np(dwT), _np(dcb))
        d_conv_w = dwT.sum(0).t().reshape(e, 1, w)
        d_A_log = dAt.sum(0).t() * A                                       # A = -exp(A_log)
        return (dxz, d_conv_w, dcb.sum(0) if has_cb else None, d_xp_w, d_dt_w, dbias.sum(0), d_A_log,
                dD.sum(0), dprev if has_prev else None, dh0.transpose(1, 2) if has_h0 else None, None)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, weight, eps):
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        y = torch.empty_like(x2)
        rstd = torch.empty(x2.shape[0])
        w = weight.contiguous()
        _k().rmsnorm_rows(_np(x2), _np(w), float(eps), _np(y), _np(rstd))
        ctx.save_for_backward(x2, w, rstd)
        return y.view(x.shape)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dy):
        x2, w, rstd = ctx.saved_tensors
        dy2 = dy.reshape(x2.shape).float().contiguous()
        dx, dw = torch.empty_like(x2), torch.empty_like(w)
        _k().rmsnorm_bwd(_np(x2), _np(w), _np(rstd), _np(dy2), _np(dx), _np(dw))
        return dx.view(dy.shape), dw, None


def rms_norm_numba(x: torch.Tensor, norm) -> torch.Tensor:
    """`norm(x)` for an nn.RMSNorm over the last dim, fused in numba (torch's CPU RMSNorm is ~6
    separate ops forward and more backward; this is one pass each). x (..., D) -> fp32 (..., D)."""
    eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps
    return _RMSNorm.apply(x.float(), norm.weight.float(), eps)


def mamba_inner_numba(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                      conv_prev=None, ssm_state=None, chunk_size: int = 16):
    """The Mamba mixer from in_proj's output to out_proj's input (conv + SiLU, x_proj, dt_proj,
    selective scan with softplus(delta + dt_proj.bias), D skip and SiLU(z) gate).

    xz (B, L, 2E) = [x | z]; conv_weight (E, 1, W), conv_bias (E,) or None; x_proj_weight (R+2N, E);
    dt_proj_weight (E, R), dt_proj_bias (E,); A_log (E, N); D (E,); conv_prev (B, W-1, E) the conv
    inputs before token 0 (zeros when None); ssm_state (B, E, N) initial state (zeros when None).
    Returns y (B, L, E) fp32 and the last state (B, E, N) fp32; differentiable in all tensors."""
    if xz.device.type != "cpu":
        raise RuntimeError(f"mamba_inner_numba runs on a CPU; xz is on {xz.device}")
    f = lambda t: None if t is None else t.float()  # noqa: E731 - fp32 compute (no-op for fp32)
    return _MambaInner.apply(f(xz), f(conv_weight), f(conv_bias), f(x_proj_weight), f(dt_proj_weight),
                             f(dt_proj_bias), f(A_log), f(D), f(conv_prev), f(ssm_state), int(chunk_size))


# Rows (B * l) up to which the fused step beats the chunk path (whose projections are MKL GEMMs).
MAX_STEP_ROWS = 12


class MambaStepper:
    """The fused recurrent step of a MambaBackbone on a CPU: one numba call per block
    (`_mamba_kernels.layer_step`: RMSNorm, in_proj, conv, x_proj, dt_proj, scan update, gate,
    out_proj, residual), then the final RMSNorm. Weights are numpy views of the parameters (no
    copy); A = -exp(A_log) is cached until a parameter changes (its `_version` or storage), and
    scratch buffers are kept per row count, so a step allocates only its output. The state
    tensors are updated in place."""

    def __init__(self, backbone):
        self.backbone = backbone
        self._params = list(backbone.parameters())  # the same Parameter objects for the module's life
        self._key = None
        self._layers = None
        self._scratch: dict[int, tuple] = {}

    def _weights(self):
        key = tuple((p.data_ptr(), p._version) for p in self._params)
        if key != self._key:
            layers = []
            for layer in self.backbone.layers:
                mx = layer.mixer
                e, w = mx.d_inner, mx.d_conv
                cb = mx.conv1d.bias if mx.conv1d.bias is not None else torch.zeros(e)
                A = (-torch.exp(mx.A_log.detach().float())).contiguous()
                arrays = [layer.norm.weight, mx.in_proj.weight, mx.conv1d.weight.reshape(e, w), cb,
                          mx.x_proj.weight, mx.dt_proj.weight, mx.dt_proj.bias, A, mx.D, mx.out_proj.weight]
                arrays = [_np(a.detach().contiguous()) for a in arrays]
                eps = layer.norm.eps if layer.norm.eps is not None else torch.finfo(torch.float32).eps
                layers.append((arrays, float(eps)))
            self._layers, self._key = layers, key
        return self._layers

    def _buffers(self, rows: int):
        if rows not in self._scratch:
            mx = self.backbone.layers[0].mixer
            d, e, p = mx.d_model, mx.d_inner, mx.dt_rank + 2 * mx.d_state
            shapes = [(rows, d), (rows, 2 * e), (rows, e), (rows, p), (rows, e), (rows, e), (rows, d), (rows,),
                      (rows, d)]
            self._scratch[rows] = tuple(torch.empty(s) for s in shapes)
        return self._scratch[rows]

    def step(self, x: torch.Tensor, conv: torch.Tensor, ssm: torch.Tensor) -> torch.Tensor:
        """x (B, l, D) fp32 -> y (B, l, D) (after norm_f); conv (n_layers, B, E, W) and
        ssm (n_layers, B, E, N) fp32 are updated in place."""
        k = _k()
        b, length, d = x.shape
        xn, xz, xc, xdbl, dl, y, o, rs, h = self._buffers(b * length)
        h.copy_(x.reshape(b * length, d))
        hv = _np(h).reshape(b, length, d)
        bufs = [_np(t) for t in (xn, xz, xc, xdbl, dl, y, o, rs)]
        conv_np, ssm_np = _np(conv), _np(ssm)
        for i, (arrays, eps) in enumerate(self._weights()):
            nw, inw, cw, cb, xpw, dtw, dtb, A, Dv, outw = arrays
            k.layer_step(hv, nw, eps, inw, conv_np[i], cw, cb, xpw, dtw, dtb, A, Dv, ssm_np[i], outw, *bufs)
        norm_f = self.backbone.norm_f
        out = torch.empty(b * length, d)
        eps = norm_f.eps if norm_f.eps is not None else torch.finfo(torch.float32).eps
        k.rmsnorm_rows(_np(h), _np(norm_f.weight.detach()), float(eps), _np(out), _np(rs))
        return out.view(b, length, d)
