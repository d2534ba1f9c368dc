"""C++ of the fused mLSTM layer (outside the cell) and of the cell's block-causal parallel form.

Part of the xLSTM CPU training kernels: `_xlstm_cpu_src.SOURCE` assembles the translation unit
(helpers such as `V<T>`, `vfor`, `hw_apply`, `gemm_rm` are defined there). Row layout: token
n = b*L + t is a row. Shape letters as in `_xlstm_cpu_src`.
"""

SOURCE = r"""
// =============================================================================================
// mLSTM layer between up- and down-projection, outside the cell. Row layout: token n = b*L + t
// is a row; up (N, 2I) = [x_mlstm | z], qkv (N, 3I) = [q | k | v], h (N, I) the cell output,
// g (N, G) the gate pre-activations [i_0..i_NH-1 | f_0..f_NH-1].
// =============================================================================================
// pre: up -> xc (N, I) conv output before SiLU, qkv, g
template <typename T>
void pre_fwd(const T* up, int64_t B, int64_t L, int64_t I, const T* cwT, int64_t K, const T* cb, const T* wq4,
             const T* wk4, const T* wv4, int64_t P, const T* wg, const T* bg, int64_t G, T* xc, T* qkv, T* g) {
  at::parallel_for(0, B * L, 8, [&](int64_t r0, int64_t r1) {
    std::vector<T> xa(I);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / L, t = r % L;
      T* x = xc + r * I;
      std::memcpy(x, cb, I * sizeof(T));
      for (int64_t kk = 0; kk < K; ++kk) {
        const int64_t tt = t - (K - 1) + kk;
        if (tt < 0) continue;
        const T* xs = up + (b * L + tt) * 2 * I;
        const T* w = cwT + kk * I;
        vfor<T>(I, [&](int64_t i, int64_t n) {
          (V<T>::loadu(x + i, n) + V<T>::loadu(w + i, n) * V<T>::loadu(xs + i, n)).store(x + i, n);
        });
      }
      vfor<T>(I, [&](int64_t i, int64_t n) { vsilu(V<T>::loadu(x + i, n)).store(xa.data() + i, n); });
      T* row = qkv + r * 3 * I;
      hw_apply(wq4, xa.data(), row, I, P, false);
      hw_apply(wk4, xa.data(), row + I, I, P, false);
      hw_apply(wv4, up + r * 2 * I, row + 2 * I, I, P, false);
      for (int64_t j = 0; j < G; ++j) {
        const T* w = wg + j * 3 * I;
        V<T> s(T(0));
        vfor<T>(3 * I, [&](int64_t i, int64_t n) { s = s + V<T>::loadu(w + i, n) * V<T>::loadu(row + i, n); });
        g[r * G + j] = hsum(s) + bg[j];
      }
    }
  });
}

// post: h (N, I) -> hs (N, I) = (GroupNorm_head(h) * (1 + onw) + skip * silu(xc)) * silu(z)
template <typename T>
void post_fwd(const T* hc, const T* up, const T* xc, const T* onw, const T* skip, T eps, int64_t N, int64_t I,
              int64_t NH, T* hs, T* mean, T* rstd) {
  const int64_t DH = I / NH;
  at::parallel_for(0, N, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t h = 0; h < NH; ++h) {
        const int64_t c0 = h * DH;
        const T* y = hc + r * I + c0;
        V<T> s(T(0));
        vfor<T>(DH, [&](int64_t i, int64_t n) { s = s + V<T>::loadu(y + i, n); });
        const T mu = hsum(s) / T(DH);
        V<T> sv(T(0));
        vfor<T>(DH, [&](int64_t i, int64_t n) {
          V<T> d = V<T>::set(V<T>(T(0)), V<T>::loadu(y + i, n) - V<T>(mu), n);
          sv = sv + d * d;
        });
        const T rs = T(1) / std::sqrt(hsum(sv) / T(DH) + eps);
        mean[r * NH + h] = mu;
        rstd[r * NH + h] = rs;
        const T *z = up + r * 2 * I + I + c0, *x = xc + r * I + c0, *w = onw + c0, *sk = skip + c0;
        T* out = hs + r * I + c0;
        vfor<T>(DH, [&](int64_t i, int64_t n) {
          V<T> hn = (V<T>::loadu(y + i, n) - V<T>(mu)) * V<T>(rs) * (one<T>() + V<T>::loadu(w + i, n));
          ((hn + V<T>::loadu(sk + i, n) * vsilu(V<T>::loadu(x + i, n))) * vsilu(V<T>::loadu(z + i, n))).store(out + i, n);
        });
      }
    }
  });
}

// post backward: dhs (N, I) -> dh (N, I), dup[..., I:] (dz); per-stream partial sums of donw,
// dskip in pw (B, 2, I)
template <typename T>
void post_bwd(const T* dhs, const T* hc, const T* up, const T* xc, const T* onw, const T* skip, const T* mean,
              const T* rstd, int64_t B, int64_t L, int64_t I, int64_t NH, T* dhc, T* dup, T* pw) {
  const int64_t DH = I / NH;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> gbuf(DH);
    for (int64_t b = b0; b < b1; ++b) {
      T* donw = pw + b * 2 * I;
      T* dskip = donw + I;
      std::fill(donw, donw + 2 * I, T(0));
      for (int64_t r = b * L; r < (b + 1) * L; ++r) {
        for (int64_t h = 0; h < NH; ++h) {
          const int64_t c0 = h * DH;
          const T* y = hc + r * I + c0;
          T* dy = dhc + r * I + c0;
          const T mu = mean[r * NH + h], rs = rstd[r * NH + h];
          const T *z = up + r * 2 * I + I + c0, *x = xc + r * I + c0, *d = dhs + r * I + c0;
          const T *w = onw + c0, *sk = skip + c0;
          T *dz = dup + r * 2 * I + I + c0, *dw = donw + c0, *dsk = dskip + c0;
          V<T> s1(T(0)), s2(T(0));
          vfor<T>(DH, [&](int64_t i, int64_t n) {
            const V<T> zv = V<T>::loadu(z + i, n), dv = V<T>::loadu(d + i, n);
            const V<T> wv = one<T>() + V<T>::loadu(w + i, n), skv = V<T>::loadu(sk + i, n);
            const V<T> xh = (V<T>::loadu(y + i, n) - V<T>(mu)) * V<T>(rs);
            const V<T> sg = vsig(zv), sz = zv * sg, xa = vsilu(V<T>::loadu(x + i, n));
            const V<T> dpre = dv * sz;
            (dv * (xh * wv + skv * xa) * (sg * (one<T>() + zv * (one<T>() - sg)))).store(dz + i, n);
            (V<T>::loadu(dsk + i, n) + dpre * xa).store(dsk + i, n);
            (V<T>::loadu(dw + i, n) + dpre * xh).store(dw + i, n);
            const V<T> gg = V<T>::set(V<T>(T(0)), dpre * wv, n);
            gg.store(gbuf.data() + i, n);
            s1 = s1 + gg;
            s2 = s2 + gg * xh;
          });
          const T m1 = hsum(s1) / T(DH), m2 = hsum(s2) / T(DH);
          vfor<T>(DH, [&](int64_t i, int64_t n) {
            const V<T> xh = (V<T>::loadu(y + i, n) - V<T>(mu)) * V<T>(rs);
            (V<T>(rs) * (V<T>::loadu(gbuf.data() + i, n) - V<T>(m1) - xh * V<T>(m2))).store(dy + i, n);
          });
        }
      }
    }
  });
}

// pre backward, one stream b per task, tokens in reverse (the conv's input gradient gathers the
// next K-1 tokens' gradients). dqkv (N, 3I) from the cell plus the gates' part (added per row);
// writes dup[..., :I]; per-stream partial parameter gradients in pcw (B, K, I), pcb (B, I),
// pwq/pwk/pwv (B, P, I) (W4 layout).
template <typename T>
void pre_bwd(const T* dqkv, const T* dg, const T* dhs, const T* up, const T* xc, const T* skip, const T* cwT, int64_t K,
             const T* wq4t, const T* wk4t, const T* wv4t, int64_t P, const T* wg, int64_t G, int64_t B, int64_t L,
             int64_t I, T* dup, T* pcw, T* pcb, T* pwq, T* pwk, T* pwv) {
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> xa(I), dsx(I), dxa(I), dxm(I), dd(3 * I), ring(K * I);
    for (int64_t b = b0; b < b1; ++b) {
      T *dcw = pcw + b * K * I, *dcb = pcb + b * I;
      T *dwq = pwq + b * P * I, *dwk = pwk + b * P * I, *dwv = pwv + b * P * I;
      std::fill(dcw, dcw + K * I, T(0));
      std::fill(dcb, dcb + I, T(0));
      std::fill(dwq, dwq + P * I, T(0));
      std::fill(dwk, dwk + P * I, T(0));
      std::fill(dwv, dwv + P * I, T(0));
      std::fill(ring.begin(), ring.end(), T(0));
      for (int64_t t = L - 1; t >= 0; --t) {
        const int64_t r = b * L + t;
        const T* dr = dqkv + r * 3 * I;
        const T* gr = dg + r * G;
        if (t > 0) {  // rows go backwards in memory: fetch the next token's rows early
          const int64_t line = 64 / sizeof(T);
          for (int64_t i = 0; i < 3 * I; i += line) __builtin_prefetch(dr - 3 * I + i);
          for (int64_t i = 0; i < 2 * I; i += line) __builtin_prefetch(up + (r - 1) * 2 * I + i);
          for (int64_t i = 0; i < I; i += line) {
            __builtin_prefetch(xc + (r - 1) * I + i);
            __builtin_prefetch(dhs + (r - 1) * I + i);
          }
        }
        // the gates read cat(q, k, v): d cat += dg @ wg
        vfor<T>(3 * I, [&](int64_t i, int64_t n) {
          V<T> acc = V<T>::loadu(dr + i, n);
          for (int64_t j = 0; j < G; ++j) acc = acc + V<T>(gr[j]) * V<T>::loadu(wg + j * 3 * I + i, n);
          acc.store(dd.data() + i, n);
        });
        const T* xcr = xc + r * I;
        const T* xm = up + r * 2 * I;
        const T *z = xm + I, *d = dhs + r * I;
        vfor<T>(I, [&](int64_t i, int64_t n) {
          const V<T> x = V<T>::loadu(xcr + i, n), sg = vsig(x);
          (x * sg).store(xa.data() + i, n);
          (sg * (one<T>() + x * (one<T>() - sg))).store(dsx.data() + i, n);
          // the skip branch: hs = (... + skip * silu(xc)) * silu(z)
          (V<T>::loadu(d + i, n) * vsilu(V<T>::loadu(z + i, n)) * V<T>::loadu(skip + i, n)).store(dxa.data() + i, n);
        });
        hw_apply(wq4t, dd.data(), dxa.data(), I, P, true);
        hw_apply(wk4t, dd.data() + I, dxa.data(), I, P, true);
        hw_apply(wv4t, dd.data() + 2 * I, dxm.data(), I, P, false);
        hw_grad(dwq, dd.data(), xa.data(), I, P);
        hw_grad(dwk, dd.data() + I, xa.data(), I, P);
        hw_grad(dwv, dd.data() + 2 * I, xm, I, P);
        // dxc of token t goes to ring slot t % K; input token t feeds output tokens t .. t+K-1
        T* dxc = ring.data() + (t % K) * I;
        vfor<T>(I, [&](int64_t i, int64_t n) {
          const V<T> gv = V<T>::loadu(dxa.data() + i, n) * V<T>::loadu(dsx.data() + i, n);
          gv.store(dxc + i, n);
          (V<T>::loadu(dcb + i, n) + gv).store(dcb + i, n);
        });
        for (int64_t kk = 0; kk < K; ++kk) {
          const int64_t to = t + (K - 1) - kk;  // output token that read input t with tap kk
          if (to >= L) continue;
          const T* grr = ring.data() + (to % K) * I;
          const T* w = cwT + kk * I;
          T* dw = dcw + kk * I;
          vfor<T>(I, [&](int64_t i, int64_t n) {
            const V<T> gv = V<T>::loadu(grr + i, n);
            (V<T>::loadu(dxm.data() + i, n) + V<T>::loadu(w + i, n) * gv).store(dxm.data() + i, n);
            (V<T>::loadu(dw + i, n) + gv * V<T>::loadu(xm + i, n)).store(dw + i, n);
          });
        }
        std::memcpy(dup + r * 2 * I, dxm.data(), I * sizeof(T));
      }
    }
  });
}

// =============================================================================================
// mLSTM cell, parallel form (the package's parallel_stabilized_simple), one head at a time.
// Block-causal: rows go in chunks of c tokens and a chunk's rows only meet the columns up to its
// last token, so the products skip the blocks above the diagonal (the reference computes them
// and masks them to 0). Within the computed blocks the arithmetic is the reference's. The
// products call the BLAS torch links (MKL's sgemm_/dgemm_) with leading dimensions, so blocks
// are read and written where they lie; a head's L x L matrix stays in cache between the product
// that makes it and the row pass that uses it.
// =============================================================================================
struct Chunk { int64_t r0, ri, e; };  // rows [r0, r0 + ri), columns [0, e = r0 + ri)
static std::vector<Chunk> chunks(int64_t L, int64_t c) {
  std::vector<Chunk> out;
  for (int64_t r0 = 0; r0 < L; r0 += c) out.push_back({r0, std::min(c, L - r0), std::min(L, r0 + c)});
  return out;
}

// b = cumsum(log sigmoid(fpre)) of one head, in double like torch.cumsum on a CPU
template <typename T>
void cell_cumsum(const T* fpre, int64_t L, T* b, T* tmp) {
  vfor<T>(L, [&](int64_t i, int64_t n) { vlogsig(V<T>::loadu(fpre + i, n)).store(tmp + i, n); });
  double acc = 0;
  for (int64_t t = 0; t < L; ++t) { acc += double(tmp[t]); b[t] = T(acc); }
}

// index of the first x[i] == v in x[0..n) (v is known to occur): torch.max(dim)'s argmax
template <typename T>
inline int64_t first_equal(const T* x, int64_t n, T v) {
  constexpr int64_t W = V<T>::size();
  const V<T> vv(v);
  for (int64_t i = 0; i < n; i += W) {
    const int64_t k = std::min(W, n - i);
    const int64_t neq = (V<T>::loadu(x + i, k) == vv).zero_mask();  // bit j set: lane j not equal
    const int64_t eq = ~neq & ((int64_t(1) << k) - 1);
    if (eq) return i + __builtin_ctzll(uint64_t(eq));
  }
  return 0;
}

// row t of one head: S[0..t] -> Cn[0..t] (normalised combination weights), zeros to column e
template <typename T>
inline void cell_row_fwd(T* row, int64_t t, int64_t e, const T* b, const T* ip, T eps, T* ld, T& m_out, T& r_out,
                         int64_t& am_out) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const V<T> bt(b[t]);
  V<T> mv(ninf);
  vfor<T>(t + 1, [&](int64_t i, int64_t n) {
    const V<T> x = (bt - V<T>::loadu(b + i, n)) + V<T>::loadu(ip + i, n);  // log D = (b_t - b_s) + i_s
    x.store(ld + i, n);
    mv = at::vec::maximum(mv, V<T>::set(V<T>(ninf), x, n));
  });
  const T mx = hmax(mv);
  const int64_t ai = first_equal(ld, t + 1, mx);
  V<T> sv(T(0));
  vfor<T>(t + 1, [&](int64_t i, int64_t n) {
    const V<T> c = V<T>::loadu(row + i, n) * (V<T>::loadu(ld + i, n) - V<T>(mx)).exp();
    c.store(row + i, n);
    sv = sv + V<T>::set(V<T>(T(0)), c, n);
  });
  const T sum = hsum(sv);
  const T nrm = std::max(std::abs(sum), std::exp(-mx)) + eps;
  vfor<T>(t + 1, [&](int64_t i, int64_t n) { (V<T>::loadu(row + i, n) / V<T>(nrm)).store(row + i, n); });
  std::fill(row + t + 1, row + e, T(0));
  m_out = mx; r_out = sum; am_out = ai;
}

// row t: G = dh @ v^T -> dS (gradient of q @ ks^T); accumulates d ipre into di and d b into db
template <typename T>
inline void cell_row_bwd(T* g, const T* cn, int64_t t, int64_t e, const T* b, const T* ip, T mt, T rt, int64_t ai,
                         T eps, T* di, T* db) {
  const T ex = std::exp(-mt), a = std::abs(rt);
  const T nrm = std::max(a, ex) + eps;
  V<T> gs(T(0));
  vfor<T>(t + 1, [&](int64_t i, int64_t n) { gs = gs + V<T>::loadu(g + i, n) * V<T>::loadu(cn + i, n); });
  const T gn = -hsum(gs) / nrm;  // d loss / d normaliser (C / nrm^2 = Cn / nrm)
  const T dr = gn * win(a, ex) * sgn(rt);
  const T dmn = gn * win(ex, a) * (-ex);
  const V<T> bt(b[t]), mtv(mt), nv(nrm), drv(dr);
  V<T> rows(T(0));
  vfor<T>(t + 1, [&](int64_t i, int64_t n) {
    const V<T> D = (((bt - V<T>::loadu(b + i, n)) + V<T>::loadu(ip + i, n)) - mtv).exp();
    const V<T> dC = V<T>::loadu(g + i, n) / nv + drv;
    const V<T> dlv = dC * (V<T>::loadu(cn + i, n) * nv);  // d / d log D = dC * C
    (dC * D).store(g + i, n);
    (V<T>::loadu(di + i, n) + dlv).store(di + i, n);
    (V<T>::loadu(db + i, n) - dlv).store(db + i, n);
    rows = rows + V<T>::set(V<T>(T(0)), dlv, n);
  });
  std::fill(g + t + 1, g + e, T(0));
  const T rs = hsum(rows);
  const T dm = dmn - rs;  // d loss / d m_t (the row max), routed to its argmax
  di[ai] += dm;
  db[ai] -= dm;
  db[t] += rs + dm;
}

// One head (b, hh) of the row-layout tensors: q, k, v rows at qkv + (b*L + t)*3I + {0, I, 2I} + hh*DH
// (leading dimension 3I), h rows at h + (b*L + t)*I + hh*DH (leading dimension I), gates at
// g + (b*L + t)*G + {hh, NH + hh}. S = q @ k^T / sqrt(DH) is the reference's q @ (k / sqrt(DH))^T.
template <typename T>
void cell_fwd(const T* qkv, const T* g, int64_t B, int64_t L, int64_t I, int64_t NH, int64_t c, T eps, T* h, T* Cn,
              T* m, T* r, int64_t* am, T* bcs) {
  const int64_t DH = I / NH, G = 2 * NH, BH = B * NH;
  const T alpha = T(1) / T(std::sqrt(double(DH)));
  const auto ch = chunks(L, c);
  at::parallel_for(0, BH, 1, [&](int64_t h0, int64_t h1) {
    std::vector<T> ld(L), ip(L), fp(L);
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t b = bh / NH, hh = bh % NH;
      const T* qh = qkv + b * L * 3 * I + hh * DH;
      T *C = Cn + bh * L * L, *bb = bcs + bh * L, *hout = h + b * L * I + hh * DH;
      for (int64_t t = 0; t < L; ++t) { ip[t] = g[(b * L + t) * G + hh]; fp[t] = g[(b * L + t) * G + NH + hh]; }
      cell_cumsum(fp.data(), L, bb, ld.data());
      for (const auto& k : ch) {
        gemm_rm<T>(false, true, k.ri, k.e, DH, alpha, qh + k.r0 * 3 * I, 3 * I, qh + I, 3 * I, T(0), C + k.r0 * L, L);
        for (int64_t t = k.r0; t < k.r0 + k.ri; ++t)
          cell_row_fwd(C + t * L, t, k.e, bb, ip.data(), eps, ld.data(), m[bh * L + t], r[bh * L + t], am[bh * L + t]);
        gemm_rm<T>(false, false, k.ri, DH, k.e, T(1), C + k.r0 * L, L, qh + 2 * I, 3 * I, T(0), hout + k.r0 * I, I);
      }
    }
  });
}

// dh (N, I) -> dqkv (N, 3I), dg (N, G)
template <typename T>
void cell_bwd(const T* dh, const T* qkv, const T* g, const T* Cn, const T* m, const T* r, const int64_t* am,
              const T* bcs, int64_t B, int64_t L, int64_t I, int64_t NH, int64_t c, T eps, T* dqkv, T* dg) {
  const int64_t DH = I / NH, G = 2 * NH, BH = B * NH;
  const T alpha = T(1) / T(std::sqrt(double(DH)));
  const auto ch = chunks(L, c);
  at::parallel_for(0, BH, 1, [&](int64_t h0, int64_t h1) {
    std::vector<T> Gm(L * L), db(L), dl(L), ip(L), di(L);
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t b = bh / NH, hh = bh % NH;
      const T* qh = qkv + b * L * 3 * I + hh * DH;
      const T* dhh = dh + b * L * I + hh * DH;
      T* dqh = dqkv + b * L * 3 * I + hh * DH;
      const T *C = Cn + bh * L * L, *bb = bcs + bh * L;
      for (int64_t t = 0; t < L; ++t) ip[t] = g[(b * L + t) * G + hh];
      std::fill(di.begin(), di.end(), T(0));
      std::fill(db.begin(), db.end(), T(0));
      for (const auto& k : ch) {
        T* Gk = Gm.data() + k.r0 * L;
        gemm_rm<T>(false, true, k.ri, k.e, DH, T(1), dhh + k.r0 * I, I, qh + 2 * I, 3 * I, T(0), Gk, L);
        for (int64_t t = k.r0; t < k.r0 + k.ri; ++t)
          cell_row_bwd(Gm.data() + t * L, C + t * L, t, k.e, bb, ip.data(), m[bh * L + t], r[bh * L + t],
                       am[bh * L + t], eps, di.data(), db.data());
        gemm_rm<T>(false, false, k.ri, DH, k.e, alpha, Gk, L, qh + I, 3 * I, T(0), dqh + k.r0 * 3 * I, 3 * I);
      }
      // dv = Cn^T @ dh, dk = dS^T @ q / sqrt(DH) over the computed blocks; the last chunk spans all columns
      for (int64_t i = int64_t(ch.size()) - 1; i >= 0; --i) {
        const auto& k = ch[i];
        const T beta = i == int64_t(ch.size()) - 1 ? T(0) : T(1);
        gemm_rm<T>(true, false, k.e, DH, k.ri, T(1), C + k.r0 * L, L, dhh + k.r0 * I, I, beta, dqh + 2 * I, 3 * I);
        gemm_rm<T>(true, false, k.e, DH, k.ri, alpha, Gm.data() + k.r0 * L, L, qh + k.r0 * 3 * I, 3 * I, beta, dqh + I,
                   3 * I);
      }
      T acc = 0;  // b = cumsum(log f): d log f_r = sum_{t >= r} db_t
      for (int64_t t = L - 1; t >= 0; --t) {
        acc += db[t];
        dl[t] = acc;
        ip[t] = g[(b * L + t) * G + NH + hh];  // reuse: fpre
      }
      vfor<T>(L, [&](int64_t i, int64_t n) {
        (V<T>::loadu(dl.data() + i, n) * vdlogsig(V<T>::loadu(ip.data() + i, n))).store(db.data() + i, n);
      });
      for (int64_t t = 0; t < L; ++t) { dg[(b * L + t) * G + hh] = di[t]; dg[(b * L + t) * G + NH + hh] = db[t]; }
    }
  });
}
"""
