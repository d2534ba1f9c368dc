"""Numba CPU kernels for the xLSTM fast step at small batch (B * l rows, e.g. 3 at B=1).

At B=1 a timestep's 3 tokens make every projection a (3, K) x (K, O) product: a matrix-vector
product in disguise, limited by streaming the weight from memory. MKL's sgemm reaches only about
a third of the memory bandwidth at M=3 (its blocking is made for big M); `linear_rows` streams each
weight row once, keeps it in L1 and dots it with all M inputs (4 at a time), reaching ~80-90% of
the bandwidth of a plain `sum` over the weight. `mlstm_core` does everything of an mLSTM layer
between its up- and down-projection in one call (about 60 small torch ops otherwise), reading and
updating the (DH x DH+1) state in one pass, row by row.

All exact fp32 (fp32 accumulation; only the summation order differs from MKL, ~1e-6 relative).
Numba is optional (it comes with umap-learn, the "analysis" extra): `kernels()` returns None when it
is missing, and the caller falls back to torch ops.

Shape letters: M rows (B * l), K input width, O output width, BH batch x heads, l tokens,
DH head dim, R = DH + 1 (the state's value columns plus the normaliser column).
"""
from __future__ import annotations

import logging
from typing import Optional

log = logging.getLogger(__name__)

_KERNELS: Optional[object] = None
_TRIED = False


def kernels():
    """The compiled kernels (a namespace with `linear_rows`, `mlstm_core`), or None without numba."""
    global _KERNELS, _TRIED
    if _TRIED:
        return _KERNELS
    _TRIED = True
    try:
        _KERNELS = _build()
    except Exception as err:  # noqa: BLE001 - no numba, or it cannot compile here: use torch ops
        log.info("xLSTM step: numba kernels unavailable (%s: %s); using torch ops", type(err).__name__, err)
        _KERNELS = None
    return _KERNELS


def _build():
    import math

    import numba
    import numpy as np
    from types import SimpleNamespace

    # reassociation lets LLVM vectorise the dot products; no finite-math assumptions
    fm = {"reassoc", "contract"}
    jit = numba.njit(fastmath=fm, cache=True, boundscheck=False, nogil=True, error_model="numpy")

    @jit
    def linear_rows(x, W, bias, has_bias, out):  # x (M, K), W (O, K), bias (O,), out (M, O)
        M, K = x.shape
        O = W.shape[0]
        for o in range(O):
            w = W[o]
            b = bias[o] if has_bias else np.float32(0.0)
            m = 0
            while m + 4 <= M:
                x0, x1, x2, x3 = x[m], x[m + 1], x[m + 2], x[m + 3]
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                for k in range(K):
                    wk = w[k]
                    a0 += wk * x0[k]
                    a1 += wk * x1[k]
                    a2 += wk * x2[k]
                    a3 += wk * x3[k]
                out[m, o] = a0 + b
                out[m + 1, o] = a1 + b
                out[m + 2, o] = a2 + b
                out[m + 3, o] = a3 + b
                m += 4
            rem = M - m
            if rem == 3:
                x0, x1, x2 = x[m], x[m + 1], x[m + 2]
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                for k in range(K):
                    wk = w[k]
                    a0 += wk * x0[k]
                    a1 += wk * x1[k]
                    a2 += wk * x2[k]
                out[m, o] = a0 + b
                out[m + 1, o] = a1 + b
                out[m + 2, o] = a2 + b
            elif rem == 2:
                x0, x1 = x[m], x[m + 1]
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                for k in range(K):
                    wk = w[k]
                    a0 += wk * x0[k]
                    a1 += wk * x1[k]
                out[m, o] = a0 + b
                out[m + 1, o] = a1 + b
            elif rem == 1:
                x0 = x[m]
                a0 = np.float32(0.0)
                for k in range(K):
                    a0 += w[k] * x0[k]
                out[m, o] = a0 + b

    @jit
    def _logsigmoid(x):
        return min(x, 0.0) - math.log1p(math.exp(-abs(x)))

    @jit
    def mlstm_core(up, hist, conv_w, conv_b, qw, kw, vw, qkv_b, has_qkv_b, gw, gb, Cx, m, a, onw, on_eps,
                   skip, eps, lazy_limit, out):
        """Everything of an mLSTM layer between its up- and down-projection, for l tokens.

        up (B, l, 2I) = [x_mlstm | z]; hist (B, K-1, I) conv history (updated); conv_w (I, K), conv_b (I,);
        qw, kw, vw (NPH, 4, 4) headwise blocks (h, out, in); qkv_b (3, I); gw (2NH, 3I), gb (2NH,) the
        i and f gate rows over [q | k | v]; Cx (B, NH, DH, DH+1), m, a (B, NH) the state (see
        `_mlstm_chunk_`; updated); onw (NH, DH) outnorm scale; skip (I,). out (B, l, I) receives
        (outnorm(h) + skip * xc) * silu(z), the down-projection's input."""
        B, l, I2 = up.shape
        I = I2 // 2
        Km1 = hist.shape[1]
        K = Km1 + 1
        NPH, BS = qw.shape[0], qw.shape[2]
        NH, DH, R = Cx.shape[1], Cx.shape[2], Cx.shape[3]
        kscale = np.float32(1.0 / math.sqrt(DH))
        xc = np.empty((l, I), np.float32)
        q = np.empty((l, I), np.float32)
        k = np.empty((l, I), np.float32)
        v = np.empty((l, I), np.float32)
        cat = np.empty((l + Km1, I), np.float32)
        acc = np.empty((l, R), np.float32)
        g = np.empty((l, 2 * NH), np.float64)
        for b in range(B):
            # causal depthwise conv over [history | new] and SiLU
            for t in range(Km1):
                cat[t] = hist[b, t]
            for t in range(l):
                cat[Km1 + t] = up[b, t, :I]
            for t in range(l):
                for c in range(I):
                    s = conv_b[c]
                    for j in range(K):
                        s += cat[t + j, c] * conv_w[c, j]
                    xc[t, c] = s / (np.float32(1.0) + math.exp(-s))
            for t in range(Km1):
                hist[b, t] = cat[l + t]
            # headwise q, k (from xc) and v (from x_mlstm)
            for t in range(l):
                for hb in range(NPH):
                    base = hb * BS
                    for o in range(BS):
                        sq = np.float32(0.0)
                        sk = np.float32(0.0)
                        sv = np.float32(0.0)
                        for d in range(BS):
                            xcd = xc[t, base + d]
                            sq += xcd * qw[hb, o, d]
                            sk += xcd * kw[hb, o, d]
                            sv += up[b, t, base + d] * vw[hb, o, d]
                        if has_qkv_b:
                            sq += qkv_b[0, base + o]
                            sk += qkv_b[1, base + o]
                            sv += qkv_b[2, base + o]
                        q[t, base + o] = sq
                        k[t, base + o] = sk
                        v[t, base + o] = sv
                # input and forget gate pre-activations over [q | k | v]
                for gi in range(2 * NH):
                    s = np.float32(0.0)
                    wrow = gw[gi]
                    for c in range(I):
                        s += q[t, c] * wrow[c] + k[t, c] * wrow[I + c] + v[t, c] * wrow[2 * I + c]
                    g[t, gi] = s + gb[gi]
            for h in range(NH):
                o0 = h * DH
                # stabilised chunkwise weights (as _mlstm_chunk_)
                m0 = np.float64(m[b, h])
                a0 = np.float64(a[b, h])
                bcum = np.empty(l, np.float64)
                run = 0.0
                for t in range(l):
                    run += _logsigmoid(g[t, NH + h])
                    bcum[t] = run
                logD = np.empty((l, l), np.float64)
                mt = np.empty(l, np.float64)
                logw = np.empty(l, np.float64)
                for t in range(l):
                    mx = bcum[t] + m0
                    for s_ in range(t + 1):
                        val = bcum[t] - bcum[s_] + g[s_, h]
                        logD[t, s_] = val
                        if val > mx:
                            mx = val
                    mt[t] = mx
                    logw[t] = bcum[t] + m0 - mx
                a_new = a0 + logw[l - 1]
                fold = np.float32(1.0)
                if a_new < -lazy_limit:
                    fold = np.float32(math.exp(a_new))
                    a_new = 0.0
                inv = math.exp(-a_new)
                kd = np.empty((l, DH), np.float32)
                for s_ in range(l):
                    dl = np.float32(math.exp(logD[l - 1, s_] - mt[l - 1]) * inv)
                    for r in range(DH):
                        kd[s_, r] = k[s_, o0 + r] * kscale * dl
                # one pass over the state: acc = q @ [C | n] (old), then [C | n] = fold * [C | n] + kd^T [v | 1]
                C = Cx[b, h]
                for t in range(l):
                    for j in range(R):
                        acc[t, j] = np.float32(0.0)
                for r in range(DH):
                    c = C[r]
                    for t in range(l):
                        qt = q[t, o0 + r]
                        for j in range(R):
                            acc[t, j] += qt * c[j]
                    if fold != np.float32(1.0):
                        for j in range(R):
                            c[j] *= fold
                    for t in range(l):
                        kt = kd[t, r]
                        for j in range(DH):
                            c[j] += kt * v[t, o0 + j]
                        c[DH] += kt
                # intra-chunk part, normaliser, per-head LayerNorm, skip and output gate
                for t in range(l):
                    wi = np.float32(math.exp(logw[t] + a0))
                    for j in range(R):
                        acc[t, j] *= wi
                    for s_ in range(t + 1):
                        qk = np.float32(0.0)
                        for r in range(DH):
                            qk += q[t, o0 + r] * k[s_, o0 + r]
                        sts = qk * kscale * np.float32(math.exp(logD[t, s_] - mt[t]))
                        for j in range(DH):
                            acc[t, j] += sts * v[s_, o0 + j]
                        acc[t, DH] += sts
                    den = np.float32(max(abs(acc[t, DH]), math.exp(-mt[t])) + eps)
                    mean = np.float32(0.0)
                    for j in range(DH):
                        acc[t, j] = acc[t, j] / den
                        mean += acc[t, j]
                    mean /= DH
                    var = np.float32(0.0)
                    for j in range(DH):
                        dv = acc[t, j] - mean
                        var += dv * dv
                    var /= DH
                    rstd = np.float32(1.0 / math.sqrt(var + on_eps))
                    for j in range(DH):
                        c_ = o0 + j
                        zz = up[b, t, I + c_]
                        hn = (acc[t, j] - mean) * rstd * onw[h, j] + skip[c_] * xc[t, c_]
                        out[b, t, c_] = hn * (zz / (np.float32(1.0) + math.exp(-zz)))
                m[b, h] = mt[l - 1]
                a[b, h] = a_new

    @jit
    def slstm_core(xn, hist, conv_w, conv_b, wif, wzo, R, bias, y, c, n, m, gn, gn_eps, out):
        """An sLSTM layer for l tokens, from its normed input to its group-normed output.

        xn (B, l, D) normed input; hist (B, K-1, D) conv history (updated); conv_w (D, K), conv_b (D,);
        wif, wzo (NH, DH, 2DH) headwise gate weights (i, f from the conv branch; z, o from xn);
        R (NH, DH, 4DH) recurrent kernel, bias (NH, 4, DH) (gate order i, f, z, o); state y, c, n, m
        (NH, B, DH) (updated); gn (D,) group-norm scale. out (B, l, D) receives the layer's output.
        Mirrors `_slstm_steps` (the package's vanilla pointwise update)."""
        B, l, D = xn.shape
        Km1 = hist.shape[1]
        K = Km1 + 1
        NH, DH = R.shape[0], R.shape[1]
        cat = np.empty((l + Km1, D), np.float32)
        xc = np.empty((l, D), np.float32)
        wx = np.empty((l, 4 * DH), np.float32)
        raw = np.empty(4 * DH, np.float32)
        ys = np.empty((l, DH), np.float32)
        for b in range(B):
            for t in range(Km1):
                cat[t] = hist[b, t]
            for t in range(l):
                cat[Km1 + t] = xn[b, t]
            for t in range(l):
                for ch in range(D):
                    s = conv_b[ch]
                    for j in range(K):
                        s += cat[t + j, ch] * conv_w[ch, j]
                    xc[t, ch] = s / (np.float32(1.0) + math.exp(-s))
            for t in range(Km1):
                hist[b, t] = cat[l + t]
            for h in range(NH):
                o0 = h * DH
                for t in range(l):
                    for j in range(4 * DH):
                        wx[t, j] = np.float32(0.0)
                for d in range(DH):  # each weight row read once for all l tokens
                    wr = wif[h, d]
                    zr = wzo[h, d]
                    for t in range(l):
                        a_ = xc[t, o0 + d]
                        e_ = xn[b, t, o0 + d]
                        for j in range(2 * DH):
                            wx[t, j] += a_ * wr[j]
                            wx[t, 2 * DH + j] += e_ * zr[j]
                for t in range(l):
                    for j in range(4 * DH):
                        raw[j] = wx[t, j]
                    for d in range(DH):
                        yd = y[h, b, d]
                        rr = R[h, d]
                        for j in range(4 * DH):
                            raw[j] += yd * rr[j]
                    for d in range(DH):
                        ir = raw[d] + bias[h, 0, d]
                        fr = raw[DH + d] + bias[h, 1, d]
                        zr_ = raw[2 * DH + d] + bias[h, 2, d]
                        orr = raw[3 * DH + d] + bias[h, 3, d]
                        lfm = m[h, b, d] + np.float32(_logsigmoid(fr))
                        nd = n[h, b, d]
                        mn = ir if nd == 0.0 else max(ir, lfm)
                        ig = min(np.float32(math.exp(ir - mn)), np.float32(1.0))
                        fg = min(np.float32(math.exp(lfm - mn)), np.float32(1.0))
                        cd = fg * c[h, b, d] + ig * np.float32(math.tanh(zr_))
                        nd = fg * nd + ig
                        yv = np.float32(1.0 / (1.0 + math.exp(-orr))) * cd / nd
                        c[h, b, d] = cd
                        n[h, b, d] = nd
                        m[h, b, d] = mn
                        ys[t, d] = yv
                    # y of all heads must be the previous token's in the next token's recurrence:
                    # heads are independent (R is block-diagonal), so updating head h in place is fine
                    for d in range(DH):
                        y[h, b, d] = ys[t, d]
                    mean = np.float32(0.0)
                    for d in range(DH):
                        mean += ys[t, d]
                    mean /= DH
                    var = np.float32(0.0)
                    for d in range(DH):
                        dv = ys[t, d] - mean
                        var += dv * dv
                    var /= DH
                    rstd = np.float32(1.0 / math.sqrt(var + gn_eps))
                    for d in range(DH):
                        out[b, t, o0 + d] = (ys[t, d] - mean) * rstd * gn[o0 + d]

    return SimpleNamespace(linear_rows=linear_rows, mlstm_core=mlstm_core, slstm_core=slstm_core, np=np)
