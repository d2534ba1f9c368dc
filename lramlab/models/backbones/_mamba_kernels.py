"""Numba CPU kernels for the Mamba backbone: selective scan and causal conv (forward + backward),
and the fused one-token step.

Layout: everything is token-major, (B, L, E) as `in_proj` produces it, so no transposes are
needed; the inner loops run over a block of EB channels (contiguous, vectorised by LLVM) and the
SSM state of a block is kept as (N, EB) in L1/L2 while the loop walks over time.

- `scan_fwd`: h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t, y_t = C_t . h_t + D u_t, times
  silu(z_t); delta = softplus(delta_raw + bias) computed inside. Saves the state every K tokens
  (`ckpt`) for the backward.
- `scan_bwd`: per block and chunk of K tokens (last chunk first), recomputes the chunk's states
  from its checkpoint (kept with their decays in a (K, N, EB) buffer), then runs the adjoint
  recurrence g_{t-1} = exp(delta_t A) (g_t + C_t dy_t) backwards through it, accumulating the
  gradients of every input (as mamba-ssm's CUDA backward does chunkwise).
- `conv_fwd` / `conv_bwd`: depthwise causal conv over [history | x] and SiLU.
- `step`: one token of one layer for B rows, from in_proj's output to out_proj's input (conv,
  x_proj, dt_proj, scan update, gate), updating the conv/ssm states in place.

numba ships no vectorised `exp` without Intel SVML, and a scalar libm call per state element
would dominate; `_exp` is Cephes' expf (range reduction to [-ln2/2, ln2/2], degree-7 polynomial,
2^k built from the exponent bits), which LLVM vectorises; max error ~2 ulp. All fp32; results
equal the torch reference up to summation order (~1e-6 relative).

Shape letters: B batch, L tokens, E inner width, N state size, W conv width, K checkpoint
spacing (chunk), EB channel block, S row width of a tensor holding the channels at a column
offset (in_proj's (B, L, 2E) output holds x at 0 and z at E), R dt rank.
"""
from __future__ import annotations

import logging
from typing import Optional

log = logging.getLogger(__name__)

_KERNELS: Optional[object] = None
_TRIED = False
EB = 128  # channel block: the (N, EB) state and a chunk's (K, N, EB) states/decays stay in L2


def kernels():
    """The compiled kernels (a namespace), or None when numba is missing or cannot compile here."""
    global _KERNELS, _TRIED
    if _TRIED:
        return _KERNELS
    _TRIED = True
    try:
        _KERNELS = _build()
    except Exception as err:  # noqa: BLE001 - no numba, or it cannot compile here: torch scan
        log.info("Mamba: numba kernels unavailable (%s: %s); using the torch scan", type(err).__name__, err)
        _KERNELS = None
    return _KERNELS


def _build():
    from types import SimpleNamespace

    import numba
    import numpy as np
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    f32 = np.float32
    fm = {"reassoc", "contract", "arcp"}  # vectorise reductions; no finite-math assumptions
    jit = numba.njit(fastmath=fm, cache=True, boundscheck=False, nogil=True, error_model="numpy")

    @intrinsic
    def _as_float(typingctx, bits):  # int32 bits -> float32 (a bitcast, vectorisable)
        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], ir.FloatType())
        return types.float32(types.int32), codegen

    @jit
    def _exp(x):
        # Cephes expf: x = k ln2 + r, |r| <= ln2/2; e^r by a degree-7 polynomial; 2^k by bits.
        # Clamped to [-87.3, 88.3] (2^k stays a normal float); below, e^x < 1.2e-38 is flushed to 0.
        xc = min(max(x, f32(-87.3)), f32(88.3))
        kf = np.floor(xc * f32(1.44269504088896341) + f32(0.5))
        r = xc - kf * f32(0.693359375) + kf * f32(2.12194440e-4)
        p = f32(1.9875691500e-4)
        p = p * r + f32(1.3981999507e-3)
        p = p * r + f32(8.3334519073e-3)
        p = p * r + f32(4.1665795894e-2)
        p = p * r + f32(1.6666665459e-1)
        p = p * r + f32(5.0000001201e-1)
        p = p * r * r + r + f32(1.0)
        scale = _as_float((np.int32(kf) + np.int32(127)) << np.int32(23))
        return p * scale if x > f32(-87.3) else f32(0.0)

    @jit
    def _sigmoid(x):
        return f32(1.0) / (f32(1.0) + _exp(-x))

    @jit
    def _softplus(x):
        # max(x, 0) + log1p(e^-|x|); log1p(w) = 2 atanh(s), s = w / (2 + w) in (0, 1/3]: the odd
        # series to s^17 is accurate to < 1 ulp with no cancellation (torch: log1p(exp(x)), x <= 20).
        w = _exp(-abs(x))
        s = w / (f32(2.0) + w)
        s2 = s * s
        p = f32(1.0 / 17.0)
        p = p * s2 + f32(1.0 / 15.0)
        p = p * s2 + f32(1.0 / 13.0)
        p = p * s2 + f32(1.0 / 11.0)
        p = p * s2 + f32(1.0 / 9.0)
        p = p * s2 + f32(1.0 / 7.0)
        p = p * s2 + f32(1.0 / 5.0)
        p = p * s2 + f32(1.0 / 3.0)
        p = p * s2 + f32(1.0)
        return max(x, f32(0.0)) + f32(2.0) * s * p

    # ------------------------------------------------------------------------ selective scan
    # Inner loops index only by their own counter into 1-D C-contiguous views (`a[i, k, e0:e1]`):
    # numba's negative-index wraparound on a computed index (e0 + j) would turn loads into gathers.
    @jit
    def scan_fwd(u, dlt, At, Bm, Cm, Dv, bias, softplus, z, zoff, has_z, h0, has_h0, K,
                 y, hlast, ckpt, save_ckpt):
        """u, dlt (B, L, E); At (N, E) = A^T; Bm, Cm (B, L, N); Dv, bias (E,); z (B, L, S) read at
        columns zoff..zoff+E; h0 (B, N, E). Writes y (B, L, E), hlast (B, N, E) and, when
        save_ckpt, ckpt (B, ceil(L/K), N, E): the state entering tokens 0, K, 2K, ..."""
        nb, L, E = u.shape
        N = At.shape[0]
        h = np.empty((N, EB), f32)
        d = np.empty(EB, f32)
        du = np.empty(EB, f32)
        acc = np.empty(EB, f32)
        for b in range(nb):
            for e0 in range(0, E, EB):
                e1 = min(E, e0 + EB)
                eb = e1 - e0
                Db, bb = Dv[e0:e1], bias[e0:e1]
                for n in range(N):
                    hn, src = h[n], h0[b, n, e0:e1]
                    for j in range(eb):
                        hn[j] = src[j] if has_h0 else f32(0.0)
                for t in range(L):
                    if save_ckpt and t % K == 0:
                        for n in range(N):
                            hn, dst = h[n], ckpt[b, t // K, n, e0:e1]
                            for j in range(eb):
                                dst[j] = hn[j]
                    ub, db = u[b, t, e0:e1], dlt[b, t, e0:e1]
                    if softplus:
                        for j in range(eb):
                            d[j] = _softplus(db[j] + bb[j])
                    else:
                        for j in range(eb):
                            d[j] = db[j] + bb[j]
                    for j in range(eb):
                        du[j] = d[j] * ub[j]
                        acc[j] = Db[j] * ub[j]
                    for n in range(N):
                        bn = Bm[b, t, n]
                        cn = Cm[b, t, n]
                        an = At[n, e0:e1]
                        hn = h[n]
                        for j in range(eb):
                            hv = _exp(d[j] * an[j]) * hn[j] + du[j] * bn
                            hn[j] = hv
                            acc[j] += cn * hv
                    yb = y[b, t, e0:e1]
                    if has_z:
                        zb = z[b, t, zoff + e0:zoff + e1]
                        for j in range(eb):
                            yb[j] = acc[j] * zb[j] * _sigmoid(zb[j])
                    else:
                        for j in range(eb):
                            yb[j] = acc[j]
                for n in range(N):
                    hn, dst = h[n], hlast[b, n, e0:e1]
                    for j in range(eb):
                        dst[j] = hn[j]

    @jit
    def scan_bwd(u, dlt, At, Bm, Cm, Dv, bias, softplus, z, zoff, has_z, ckpt, K, dy_in,
                 dhlast, has_dhlast, du_out, ddlt, dAt, dB, dC, dD, dbias, dz, dzoff, dh0):
        """Gradients of `scan_fwd` given dy_in (B, L, E) and dhlast (B, N, E). Writes du_out, ddlt
        (B, L, E) (ddlt: w.r.t. the raw delta, before bias and softplus), dz (B, L, S) at columns
        dzoff..dzoff+E, dh0 (B, N, E), per-row partial sums dAt (B, N, E), dD, dbias (B, E), and
        dB, dC (B, L, N), which must be zero on entry (they are summed over channel blocks)."""
        nb, L, E = u.shape
        N = At.shape[0]
        hs = np.empty((K + 1, N, EB), f32)   # hs[k]: state before token t0 + k
        da = np.empty((K, N, EB), f32)       # decays exp(delta A)
        dd = np.empty((K, EB), f32)          # delta
        sg = np.empty((K, EB), f32)          # d delta / d raw delta
        dyk = np.empty((K, EB), f32)         # dL/dy before the gate
        ddu = np.empty((K, EB), f32)         # delta * u
        g = np.empty((N, EB), f32)
        gA = np.empty((N, EB), f32)
        yacc = np.empty(EB, f32)
        s1 = np.empty(EB, f32)
        s2 = np.empty(EB, f32)
        dDa = np.empty(EB, f32)
        dba = np.empty(EB, f32)
        n_chunks = (L + K - 1) // K
        for b in range(nb):
            for e0 in range(0, E, EB):
                e1 = min(E, e0 + EB)
                eb = e1 - e0
                Db, bb = Dv[e0:e1], bias[e0:e1]
                for n in range(N):
                    gn, gan, src = g[n], gA[n], dhlast[b, n, e0:e1]
                    for j in range(eb):
                        gn[j] = src[j] if has_dhlast else f32(0.0)
                        gan[j] = f32(0.0)
                for j in range(eb):
                    dDa[j] = f32(0.0)
                    dba[j] = f32(0.0)
                for c in range(n_chunks - 1, -1, -1):
                    t0 = c * K
                    kl = min(K, L - t0)
                    # recompute the chunk's states and decays from its checkpoint; the output-side
                    # gradients (dC, dz, dD) only need h_t, so they are taken here too
                    for n in range(N):
                        hn, src = hs[0, n], ckpt[b, c, n, e0:e1]
                        for j in range(eb):
                            hn[j] = src[j]
                    for k in range(kl):
                        t = t0 + k
                        db, ub, gb = dlt[b, t, e0:e1], u[b, t, e0:e1], dy_in[b, t, e0:e1]
                        ddk, sgk, dyv, duk = dd[k], sg[k], dyk[k], ddu[k]
                        for j in range(eb):
                            x = db[j] + bb[j]
                            if softplus:
                                ddk[j] = _softplus(x)
                                sgk[j] = _sigmoid(x)
                            else:
                                ddk[j] = x
                                sgk[j] = f32(1.0)
                            duk[j] = ddk[j] * ub[j]
                            yacc[j] = Db[j] * ub[j]
                        if has_z:
                            zb = z[b, t, zoff + e0:zoff + e1]
                            for j in range(eb):
                                dyv[j] = gb[j] * zb[j] * _sigmoid(zb[j])
                        else:
                            for j in range(eb):
                                dyv[j] = gb[j]
                        for n in range(N):
                            bn = Bm[b, t, n]
                            cn = Cm[b, t, n]
                            an, dan, hp, hn = At[n, e0:e1], da[k, n], hs[k, n], hs[k + 1, n]
                            dcs = f32(0.0)
                            for j in range(eb):
                                a = _exp(ddk[j] * an[j])
                                dan[j] = a
                                hv = a * hp[j] + duk[j] * bn
                                hn[j] = hv
                                yacc[j] += cn * hv
                                dcs += dyv[j] * hv
                            dC[b, t, n] += dcs
                        if has_z:
                            dzb = dz[b, t, dzoff + e0:dzoff + e1]
                            for j in range(eb):
                                zz = zb[j]
                                sz = _sigmoid(zz)
                                dzb[j] = gb[j] * yacc[j] * sz * (f32(1.0) + zz * (f32(1.0) - sz))
                        for j in range(eb):
                            dDa[j] += dyv[j] * ub[j]
                    # adjoint recurrence, last token of the chunk first:
                    # G_t = g + C_t dy_t (dL/dh_t); g <- G_t exp(delta_t A) (dL/dh_{t-1} through h_t)
                    for k in range(kl - 1, -1, -1):
                        t = t0 + k
                        ddk, sgk, dyv, duk = dd[k], sg[k], dyk[k], ddu[k]
                        for j in range(eb):
                            s1[j] = f32(0.0)
                            s2[j] = f32(0.0)
                        for n in range(N):
                            bn = Bm[b, t, n]
                            cn = Cm[b, t, n]
                            an, dan, hp = At[n, e0:e1], da[k, n], hs[k, n]
                            gn, gan = g[n], gA[n]
                            dbs = f32(0.0)
                            for j in range(eb):
                                gv = gn[j] + cn * dyv[j]
                                dbs += gv * duk[j]
                                s1[j] += gv * bn
                                ga = gv * dan[j]
                                tmp = ga * hp[j]                    # dL/d(delta_t A_n)
                                s2[j] += tmp * an[j]
                                gan[j] += tmp * ddk[j]
                                gn[j] = ga
                            dB[b, t, n] += dbs
                        ub = u[b, t, e0:e1]
                        dub, ddb = du_out[b, t, e0:e1], ddlt[b, t, e0:e1]
                        for j in range(eb):
                            dub[j] = dyv[j] * Db[j] + s1[j] * ddk[j]
                            dx = (s1[j] * ub[j] + s2[j]) * sgk[j]
                            ddb[j] = dx
                            dba[j] += dx
                for n in range(N):
                    gn, gan, d0, d1 = g[n], gA[n], dh0[b, n, e0:e1], dAt[b, n, e0:e1]
                    for j in range(eb):
                        d0[j] = gn[j]
                        d1[j] = gan[j]
                dDb, dbb = dD[b, e0:e1], dbias[b, e0:e1]
                for j in range(eb):
                    dDb[j] = dDa[j]
                    dbb[j] = dba[j]

    # ------------------------------------------------------------------------ causal conv + SiLU
    @jit
    def conv_fwd(x, xoff, prev, wT, cb, out):
        """x (B, L, S) read at columns xoff..xoff+E; prev (B, W-1, E) inputs before token 0;
        wT (W, E) = conv weight transposed; cb (E,). out (B, L, E) = silu(causal conv)."""
        nb, L, E = out.shape
        W = wT.shape[0]
        for b in range(nb):
            for t in range(L):
                ob = out[b, t]
                for e in range(E):
                    ob[e] = cb[e]
                for k in range(W):
                    src = t - (W - 1) + k
                    wk = wT[k]
                    xr = x[b, src, xoff:xoff + E] if src >= 0 else prev[b, src + W - 1]
                    for e in range(E):
                        ob[e] += wk[e] * xr[e]
                for e in range(E):
                    s = ob[e]
                    ob[e] = s * _sigmoid(s)

    @jit
    def conv_bwd(x, xoff, prev, wT, cb, dout, dx, dxoff, dprev, dwT, dcb):
        """Gradients of `conv_fwd`: dx (B, L, S) at columns dxoff..dxoff+E, dprev (B, W-1, E),
        per-row partial sums dwT (B, W, E) and dcb (B, E). One pass over time: token t's
        pre-activation is recomputed and its gradient scattered to inputs t-W+1 .. t."""
        nb, L, E = dout.shape
        W = wT.shape[0]
        ds = np.empty(E, f32)
        for b in range(nb):
            dcbb = dcb[b]
            for e in range(E):
                dcbb[e] = f32(0.0)
            for k in range(W):
                dwk = dwT[b, k]
                for e in range(E):
                    dwk[e] = f32(0.0)
            for p in range(W - 1):
                dr = dprev[b, p]
                for e in range(E):
                    dr[e] = f32(0.0)
            for t in range(L):
                dr = dx[b, t, dxoff:dxoff + E]
                for e in range(E):
                    dr[e] = f32(0.0)
            for t in range(L):
                for e in range(E):
                    ds[e] = cb[e]
                for k in range(W):
                    src = t - (W - 1) + k
                    wk = wT[k]
                    xr = x[b, src, xoff:xoff + E] if src >= 0 else prev[b, src + W - 1]
                    for e in range(E):
                        ds[e] += wk[e] * xr[e]
                gr = dout[b, t]
                for e in range(E):
                    s = ds[e]
                    sg = _sigmoid(s)
                    dv = gr[e] * sg * (f32(1.0) + s * (f32(1.0) - sg))
                    ds[e] = dv
                    dcbb[e] += dv
                for k in range(W):
                    src = t - (W - 1) + k
                    wk, dwk = wT[k], dwT[b, k]
                    if src >= 0:
                        xr, dr = x[b, src, xoff:xoff + E], dx[b, src, dxoff:dxoff + E]
                    else:
                        xr, dr = prev[b, src + W - 1], dprev[b, src + W - 1]
                    for e in range(E):
                        dr[e] += wk[e] * ds[e]
                        dwk[e] += ds[e] * xr[e]

    # ------------------------------------------------------------------------ recurrent step
    @jit
    def rmsnorm_rows(x, w, eps, out, rstd):
        """out[m] = x[m] * rstd[m] * w with rstd[m] = 1 / sqrt(mean(x[m]^2) + eps); x, out (M, D)."""
        M, D = x.shape
        for m in range(M):
            xr, orow = x[m], out[m]
            ss = f32(0.0)
            for d in range(D):
                ss += xr[d] * xr[d]
            r = f32(1.0) / np.sqrt(ss / f32(D) + eps)
            rstd[m] = r
            for d in range(D):
                orow[d] = xr[d] * r * w[d]

    @jit
    def rmsnorm_bwd(x, w, rstd, dy, dx, dw):
        """Gradients of `rmsnorm_rows`: dx (M, D), dw (D,) (overwritten)."""
        M, D = x.shape
        for d in range(D):
            dw[d] = f32(0.0)
        for m in range(M):
            xr, gr, dr = x[m], dy[m], dx[m]
            r = rstd[m]
            s = f32(0.0)
            for d in range(D):
                s += gr[d] * w[d] * xr[d]
                dw[d] += gr[d] * xr[d] * r
            c = r * r * r * s / f32(D)
            for d in range(D):
                dr[d] = r * gr[d] * w[d] - c * xr[d]

    @jit
    def linear_rows(x, W, out):
        """out = x @ W^T for few rows x (M, K), W (O, K). Each weight row is read from memory once
        and dotted with up to 4 rows at a time in one pass over it: at small M this is bound by
        streaming W, which a blocked GEMM (made for large M) does at a fraction of the bandwidth
        (the scheme of _xlstm_step.linear_rows)."""
        M, K = x.shape
        O = W.shape[0]
        for o in range(O):
            w = W[o]
            m = 0
            while m + 4 <= M:
                x0, x1, x2, x3 = x[m], x[m + 1], x[m + 2], x[m + 3]
                a0 = f32(0.0)
                a1 = f32(0.0)
                a2 = f32(0.0)
                a3 = f32(0.0)
                for k in range(K):
                    wk = w[k]
                    a0 += wk * x0[k]
                    a1 += wk * x1[k]
                    a2 += wk * x2[k]
                    a3 += wk * x3[k]
                out[m, o] = a0
                out[m + 1, o] = a1
                out[m + 2, o] = a2
                out[m + 3, o] = a3
                m += 4
            rem = M - m
            if rem == 3:
                x0, x1, x2 = x[m], x[m + 1], x[m + 2]
                a0 = f32(0.0)
                a1 = f32(0.0)
                a2 = f32(0.0)
                for k in range(K):
                    wk = w[k]
                    a0 += wk * x0[k]
                    a1 += wk * x1[k]
                    a2 += wk * x2[k]
                out[m, o] = a0
                out[m + 1, o] = a1
                out[m + 2, o] = a2
            elif rem == 2:
                x0, x1 = x[m], x[m + 1]
                a0 = f32(0.0)
                a1 = f32(0.0)
                for k in range(K):
                    wk = w[k]
                    a0 += wk * x0[k]
                    a1 += wk * x1[k]
                out[m, o] = a0
                out[m + 1, o] = a1
            elif rem == 1:
                x0 = x[m]
                a0 = f32(0.0)
                for k in range(K):
                    a0 += w[k] * x0[k]
                out[m, o] = a0

    @jit
    def layer_step(h, nw, eps, inw, cs, cw, cb, xpw, dtw, dtb, A, Dv, ssm, outw,
                   xn, xz, xc, xdbl, dl, y, o, rs):
        """One Mamba block for l tokens of B rows, in place: h += mixer(rmsnorm(h)).

        h (B, l, D) residual stream; nw (D,) norm weight; inw (2E, D) in_proj; cs (B, E, W) conv
        state (the last W conv inputs, updated); cw (E, W), cb (E,) conv; xpw (R+2N, E) x_proj;
        dtw (E, R), dtb (E,) dt_proj; A (E, N) = -exp(A_log); Dv (E,); ssm (B, E, N) state (updated);
        outw (D, E) out_proj. Scratch: xn (M, D), xz (M, 2E), xc (M, E), xdbl (M, R+2N),
        dl (M, E), y (M, E), o (M, D), rs (M,) with M = B*l, rows b-major."""
        nb, l, D = h.shape
        E = Dv.shape[0]
        W = cw.shape[1]
        N = A.shape[1]
        R = dtw.shape[1]
        h2 = h.reshape(nb * l, D)
        rmsnorm_rows(h2, nw, eps, xn, rs)
        linear_rows(xn, inw, xz)
        for b in range(nb):  # causal conv over [state | new inputs], state shifted token by token
            cb_ = cs[b]
            for t in range(l):
                m = b * l + t
                xzr, xcr = xz[m], xc[m]
                for e in range(E):
                    row, wr = cb_[e], cw[e]
                    s = cb[e]
                    for k in range(W - 1):
                        row[k] = row[k + 1]
                        s += wr[k] * row[k]
                    row[W - 1] = xzr[e]
                    xcr[e] = s + wr[W - 1] * xzr[e]
        M = nb * l
        for m in range(M):  # SiLU, a separate loop over e so that it vectorises
            xcr = xc[m]
            for e in range(E):
                xcr[e] = xcr[e] * _sigmoid(xcr[e])
        linear_rows(xc, xpw, xdbl)
        for m in range(M):  # delta = softplus(dt_proj(xdbl[:R]) + bias)
            xr, dr = xdbl[m], dl[m]
            for e in range(E):
                wr = dtw[e]
                a = dtb[e]
                for r in range(R):
                    a += wr[r] * xr[r]
                dr[e] = a
            for e in range(E):
                dr[e] = _softplus(dr[e])
        for b in range(nb):  # state update, vectorised over the N states of a channel
            st = ssm[b]
            for t in range(l):
                m = b * l + t
                Bv, Cv = xdbl[m, R:R + N], xdbl[m, R + N:R + 2 * N]
                xcr, dr, yr = xc[m], dl[m], y[m]
                for e in range(E):
                    dv = dr[e]
                    du = dv * xcr[e]
                    hr, ar = st[e], A[e]
                    acc = f32(0.0)
                    for n in range(N):
                        hv = _exp(dv * ar[n]) * hr[n] + du * Bv[n]
                        hr[n] = hv
                        acc += hv * Cv[n]
                    yr[e] = acc + Dv[e] * xcr[e]
        for m in range(M):  # gate: y * silu(z)
            zr, yr = xz[m, E:2 * E], y[m]
            for e in range(E):
                yr[e] = yr[e] * zr[e] * _sigmoid(zr[e])
        linear_rows(y, outw, o)
        for m in range(M):
            hr, orow = h2[m], o[m]
            for d in range(D):
                hr[d] += orow[d]

    @jit
    def exp_(x, out):  # for tests: the kernels' exp over an array
        for i in range(x.shape[0]):
            out[i] = _exp(x[i])

    @jit
    def softplus_(x, out):  # for tests
        for i in range(x.shape[0]):
            out[i] = _softplus(x[i])

    return SimpleNamespace(scan_fwd=scan_fwd, scan_bwd=scan_bwd, conv_fwd=conv_fwd, conv_bwd=conv_bwd,
                           rmsnorm_rows=rmsnorm_rows, rmsnorm_bwd=rmsnorm_bwd, linear_rows=linear_rows, layer_step=layer_step,
                           exp=exp_, softplus=softplus_, EB=EB)
