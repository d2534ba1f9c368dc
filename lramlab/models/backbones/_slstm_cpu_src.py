"""C++ of the fused sLSTM layer core (conv + SiLU, head-wise gates, the recurrence with its BPTT,
GroupNorm), vanilla-backend semantics. Part of `_xlstm_cpu_src.SOURCE`.
"""

SOURCE = r"""
// =============================================================================================
// sLSTM layer core (the package's sLSTMLayer on the vanilla backend, without dropout): causal conv
// + SiLU, head-wise gate projections (i, f from the conv branch; z, o from the input), the
// recurrence, head-wise GroupNorm. Layouts: x rows (N, D), N = b*L + t; gate pre-activations
// wx (N, NH, 4, DH) (gates i, f, z, o), overwritten by the raw pre-activations wx + R y + bias;
// states st (4, NH, B, L+1, DH) [y, c, n, m], step 0 the zero state.
// =============================================================================================
template <typename T>
void s_conv_fwd(const T* x, const T* cwT, const T* cb, int64_t B, int64_t L, int64_t D, int64_t K, T* xc, T* xa) {
  at::parallel_for(0, B * L, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / L, t = r % L;
      T* o = xc + r * D;
      std::memcpy(o, cb, D * sizeof(T));
      for (int64_t kk = 0; kk < K; ++kk) {
        const int64_t tt = t - (K - 1) + kk;
        if (tt < 0) continue;
        const T *xs = x + (b * L + tt) * D, *w = cwT + kk * D;
        vfor<T>(D, [&](int64_t i, int64_t n) { (V<T>::loadu(o + i, n) + V<T>::loadu(w + i, n) * V<T>::loadu(xs + i, n)).store(o + i, n); });
      }
      vfor<T>(D, [&](int64_t i, int64_t n) { vsilu(V<T>::loadu(o + i, n)).store(xa + r * D + i, n); });
    }
  });
}

template <typename T>
void s_fwd(const T* x, const T* cwT, const T* cb, int64_t K, const T* W4, const T* RT, const T* bias, const T* gnw,
           T eps, int64_t NH, int64_t B, int64_t L, int64_t DH, T* xc, T* xa, T* wx, T* st, uint8_t* allz, T* out,
           T* gmean, T* grstd) {
  const int64_t D = NH * DH, D4 = 4 * DH, N = B * L, S1 = NH * B * (L + 1) * DH;
  s_conv_fwd(x, cwT, cb, B, L, D, K, xc, xa);
  // gate pre-activations: wx[:, h, g] = src_g[:, h] @ W_g[h]^T (src: conv branch for i, f; input for z, o)
  for (int64_t h = 0; h < NH; ++h)
    for (int64_t gi = 0; gi < 4; ++gi)
      gemm_rm<T>(false, true, N, DH, DH, T(1), (gi < 2 ? xa : x) + h * DH, D, W4 + (gi * NH + h) * DH * DH, DH, T(0),
                 wx + h * D4 + gi * DH, NH * D4);
  T *Y = st, *Cs = st + S1, *Ns = st + 2 * S1, *Ms = st + 3 * S1;
  auto at_ = [&](T* base, int64_t h, int64_t b, int64_t t) { return base + ((h * B + b) * (L + 1) + t) * DH; };
  for (int64_t h = 0; h < NH; ++h)
    for (int64_t b = 0; b < B; ++b)
      for (T* base : {Y, Cs, Ns, Ms}) std::fill(at_(base, h, b, 0), at_(base, h, b, 0) + DH, T(0));
  std::vector<T> ry(NH * B * D4);
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t h = 0; h < NH; ++h)  // R y per head: y_t[h] rows b at stride (L+1)*DH
      gemm_rm<T>(false, false, B, D4, DH, T(1), at_(Y, h, 0, t), (L + 1) * DH, RT + h * DH * D4, D4, T(0),
                 ry.data() + h * B * D4, D4);
    bool az = true;  // the package switches m = i for all cells when every n is 0 (a fresh state)
    for (int64_t h = 0; h < NH && az; ++h)
      for (int64_t b = 0; b < B && az; ++b) {
        const T* n0 = at_(Ns, h, b, t);
        for (int64_t j = 0; j < DH; ++j) az = az && (n0[j] == T(0));
      }
    allz[t] = az;
    at::parallel_for(0, NH * B, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t hb = i0; hb < i1; ++hb) {
        const int64_t h = hb / B, b = hb % B;
        T* rr = wx + (b * L + t) * NH * D4 + h * D4;
        const T* ryr = ry.data() + hb * D4;
        const T *c0 = at_(Cs, h, b, t), *n0 = at_(Ns, h, b, t), *m0 = at_(Ms, h, b, t);
        T *y1 = at_(Y, h, b, t + 1), *c1 = at_(Cs, h, b, t + 1), *n1 = at_(Ns, h, b, t + 1), *m1 = at_(Ms, h, b, t + 1);
        vfor<T>(DH, [&](int64_t j, int64_t k) {
          auto ld = [&](const T* p) { return V<T>::loadu(p + j, k); };
          const V<T> ir = (ld(rr) + ld(ryr)) + ld(bias + (0 * NH + h) * DH);
          const V<T> fr = (ld(rr + DH) + ld(ryr + DH)) + ld(bias + (1 * NH + h) * DH);
          const V<T> zr = (ld(rr + 2 * DH) + ld(ryr + 2 * DH)) + ld(bias + (2 * NH + h) * DH);
          const V<T> orr = (ld(rr + 3 * DH) + ld(ryr + 3 * DH)) + ld(bias + (3 * NH + h) * DH);
          ir.store(rr + j, k); fr.store(rr + DH + j, k); zr.store(rr + 2 * DH + j, k); orr.store(rr + 3 * DH + j, k);
          const V<T> lfm = ld(m0) + vlogsig(fr);
          const V<T> mn = az ? ir : at::vec::maximum(ir, lfm);
          const V<T> ig = at::vec::minimum((ir - mn).exp(), one<T>());
          const V<T> fg = at::vec::minimum((lfm - mn).exp(), one<T>());
          const V<T> cn = fg * ld(c0) + ig * zr.tanh();
          const V<T> nn = fg * ld(n0) + ig;
          ((vsig(orr) * cn) / nn).store(y1 + j, k);
          cn.store(c1 + j, k); nn.store(n1 + j, k); mn.store(m1 + j, k);
        });
      }
    });
  }
  at::parallel_for(0, N, 8, [&](int64_t r0, int64_t r1) {  // head-wise GroupNorm of y
    for (int64_t rr = r0; rr < r1; ++rr) {
      const int64_t b = rr / L, t = rr % L;
      for (int64_t h = 0; h < NH; ++h) {
        const T* y = at_(Y, h, b, t + 1);
        V<T> s1(T(0)), sv(T(0));
        vfor<T>(DH, [&](int64_t i, int64_t n) { s1 = s1 + V<T>::loadu(y + i, n); });
        const T mu = hsum(s1) / T(DH);
        vfor<T>(DH, [&](int64_t i, int64_t n) {
          V<T> d = V<T>::set(V<T>(T(0)), V<T>::loadu(y + i, n) - V<T>(mu), n);
          sv = sv + d * d;
        });
        const T rs = T(1) / std::sqrt(hsum(sv) / T(DH) + eps);
        gmean[rr * NH + h] = mu;
        grstd[rr * NH + h] = rs;
        T* o = out + rr * D + h * DH;
        vfor<T>(DH, [&](int64_t i, int64_t n) {
          ((V<T>::loadu(y + i, n) - V<T>(mu)) * V<T>(rs) * (one<T>() + V<T>::loadu(gnw + h * DH + i, n))).store(o + i, n);
        });
      }
    }
  });
}

// dout (N, D) -> dx (N, D) (input), dwx (N, NH, 4DH) (raw pre-activation gradients), parameter
// gradients: dcw (K, D) (transposed), dcb, dW4 (4, NH, DH, DH), dR (NH, 4DH, DH), dgnw
template <typename T>
void s_bwd(const T* dout, const T* x, const T* xc, const T* cwT, int64_t K, const T* W4, const T* R, const T* gnw,
           const T* wx, const T* st, const uint8_t* allz, const T* gmean, const T* grstd, int64_t NH, int64_t B,
           int64_t L, int64_t DH, T* dx, T* dwx, T* dcw, T* dcb, T* dW4, T* dR, T* dgnw) {
  const int64_t D = NH * DH, D4 = 4 * DH, N = B * L, S1 = NH * B * (L + 1) * DH;
  const T *Y = st, *Cs = st + S1, *Ns = st + 2 * S1, *Ms = st + 3 * S1;
  auto at_ = [&](const T* base, int64_t h, int64_t b, int64_t t) { return base + ((h * B + b) * (L + 1) + t) * DH; };
  std::vector<T> dyo(NH * B * L * DH);  // GroupNorm backward: d y, layout (NH, B, L, DH)
  std::vector<T> pgn(B * D, T(0));
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> gb(DH);
    for (int64_t b = b0; b < b1; ++b) {
      T* dw = pgn.data() + b * D;
      for (int64_t t = 0; t < L; ++t) {
        const int64_t rr = b * L + t;
        for (int64_t h = 0; h < NH; ++h) {
          const T* y = at_(Y, h, b, t + 1);
          const T* d = dout + rr * D + h * DH;
          const T mu = gmean[rr * NH + h], rs = grstd[rr * NH + h];
          V<T> s1(T(0)), s2(T(0));
          vfor<T>(DH, [&](int64_t i, int64_t n) {
            const V<T> xh = (V<T>::loadu(y + i, n) - V<T>(mu)) * V<T>(rs), dv = V<T>::loadu(d + i, n);
            (V<T>::loadu(dw + h * DH + i, n) + dv * xh).store(dw + h * DH + i, n);
            const V<T> gg = V<T>::set(V<T>(T(0)), dv * (one<T>() + V<T>::loadu(gnw + h * DH + i, n)), n);
            gg.store(gb.data() + i, n);
            s1 = s1 + gg;
            s2 = s2 + gg * xh;
          });
          const T m1 = hsum(s1) / T(DH), m2 = hsum(s2) / T(DH);
          T* dy = dyo.data() + ((h * B + b) * L + t) * DH;
          vfor<T>(DH, [&](int64_t i, int64_t n) {
            const V<T> xh = (V<T>::loadu(y + i, n) - V<T>(mu)) * V<T>(rs);
            (V<T>(rs) * (V<T>::loadu(gb.data() + i, n) - V<T>(m1) - xh * V<T>(m2))).store(dy + i, n);
          });
        }
      }
    }
  });
  for (int64_t c = 0; c < D; ++c) {
    T acc = 0;
    for (int64_t b = 0; b < B; ++b) acc += pgn[b * D + c];
    dgnw[c] = acc;
  }
  std::vector<T> dc(NH * B * DH, T(0)), dn(NH * B * DH, T(0)), dm(NH * B * DH, T(0)), dyr(NH * B * DH, T(0));
  for (int64_t t = L - 1; t >= 0; --t) {
    const bool az = allz[t];
    at::parallel_for(0, NH * B, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t hb = i0; hb < i1; ++hb) {
        const int64_t h = hb / B, b = hb % B, s0 = hb * DH;
        const T* rr = wx + (b * L + t) * NH * D4 + h * D4;
        T* drr = dwx + (b * L + t) * NH * D4 + h * D4;
        const T *c0 = at_(Cs, h, b, t), *n0 = at_(Ns, h, b, t), *m0 = at_(Ms, h, b, t);
        const T *c1 = at_(Cs, h, b, t + 1), *n1 = at_(Ns, h, b, t + 1);
        const T* dyo_r = dyo.data() + ((h * B + b) * L + t) * DH;
        vfor<T>(DH, [&](int64_t j, int64_t k) {
          auto ld = [&](const T* p) { return V<T>::loadu(p + j, k); };
          const V<T> ir = ld(rr), fr = ld(rr + DH), zr = ld(rr + 2 * DH), orr = ld(rr + 3 * DH);
          const V<T> lfm = ld(m0) + vlogsig(fr);
          const V<T> mn = az ? ir : at::vec::maximum(ir, lfm);
          const V<T> ei = (ir - mn).exp(), ef = (lfm - mn).exp();
          const V<T> ig = at::vec::minimum(ei, one<T>()), fg = at::vec::minimum(ef, one<T>());
          const V<T> og = vsig(orr), tz = zr.tanh();
          const V<T> cn = ld(c1), nn = ld(n1);
          const V<T> dy = ld(dyo_r) + ld(dyr.data() + s0);  // y = (og * c) / n
          const V<T> doc = dy / nn;
          const V<T> dnn = ld(dn.data() + s0) - dy * (og * cn) / (nn * nn);
          const V<T> dcn = ld(dc.data() + s0) + doc * og;
          const V<T> dog = doc * cn;
          const V<T> dfg = dcn * ld(c0) + dnn * ld(n0);
          const V<T> dig = dcn * tz + dnn;
          (dcn * fg).store(dc.data() + s0 + j, k);
          (dnn * fg).store(dn.data() + s0 + j, k);
          const V<T> dzr = dcn * ig * (one<T>() - tz * tz);
          const V<T> dor = dog * og * (one<T>() - og);
          const V<T> dxi = dig * vwin(one<T>(), ei) * ei;  // d/d(ir - mn); minimum(e, 1) splits ties
          const V<T> dxf = dfg * vwin(one<T>(), ef) * ef;  // d/d(lfm - mn)
          const V<T> dmn = ld(dm.data() + s0) - dxi - dxf;
          V<T> dir = dxi, dlfm = dxf;
          if (az) {
            dir = dir + dmn;
          } else {
            dir = dir + dmn * vwin(ir, lfm);
            dlfm = dlfm + dmn * vwin(lfm, ir);
          }
          dlfm.store(dm.data() + s0 + j, k);
          dir.store(drr + j, k);
          (dlfm * vdlogsig(fr)).store(drr + DH + j, k);
          dzr.store(drr + 2 * DH + j, k);
          dor.store(drr + 3 * DH + j, k);
        });
      }
    });
    for (int64_t h = 0; h < NH; ++h)  // d y_{t-1} = draw_t @ R per head (rows b at stride L*NH*4DH)
      gemm_rm<T>(false, false, B, DH, D4, T(1), dwx + t * NH * D4 + h * D4, L * NH * D4, R + h * D4 * DH, DH, T(0),
                 dyr.data() + h * B * DH, DH);
  }
  // dR[h] = sum_{b,t} draw^T y_{t-1}; y_{t-1} for t = 0..L-1 are states 0..L-1
  for (int64_t h = 0; h < NH; ++h)
    for (int64_t b = 0; b < B; ++b)
      gemm_rm<T>(true, false, D4, DH, L, T(1), dwx + b * L * NH * D4 + h * D4, NH * D4, at_(Y, h, b, 0), DH,
                 b == 0 ? T(0) : T(1), dR + h * D4 * DH, DH);
  // gate projections: dW_g[h] = dwx_g[h]^T @ src_g[h], d src_g[h] += dwx_g[h] @ W_g[h]
  std::vector<T> xa(N * D), dxa(N * D);
  at::parallel_for(0, N * D, 4096, [&](int64_t i0, int64_t i1) {
    vfor<T>(i1 - i0, [&](int64_t i, int64_t n) { vsilu(V<T>::loadu(xc + i0 + i, n)).store(xa.data() + i0 + i, n); });
  });
  for (int64_t h = 0; h < NH; ++h)
    for (int64_t gi = 0; gi < 4; ++gi) {
      const T* src = gi < 2 ? xa.data() : x;
      T* dsrc = gi < 2 ? dxa.data() : dx;
      gemm_rm<T>(true, false, DH, DH, N, T(1), dwx + h * D4 + gi * DH, NH * D4, src + h * DH, D, T(0),
                 dW4 + (gi * NH + h) * DH * DH, DH);
      gemm_rm<T>(false, false, N, DH, DH, T(1), dwx + h * D4 + gi * DH, NH * D4, W4 + (gi * NH + h) * DH * DH, DH,
                 gi % 2 ? T(1) : T(0), dsrc + h * DH, D);
    }
  // SiLU and causal conv backward into dx, one stream per task, tokens in reverse
  std::vector<T> pcw(B * K * D, T(0)), pcb(B * D, T(0));
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> ring(K * D, T(0));
    for (int64_t b = b0; b < b1; ++b) {
      T *dw = pcw.data() + b * K * D, *dbb = pcb.data() + b * D;
      for (int64_t t = L - 1; t >= 0; --t) {
        const int64_t r = b * L + t;
        T* g = ring.data() + (t % K) * D;
        vfor<T>(D, [&](int64_t i, int64_t n) {
          const V<T> xv = V<T>::loadu(xc + r * D + i, n), sg = vsig(xv);
          const V<T> gv = V<T>::loadu(dxa.data() + r * D + i, n) * (sg * (one<T>() + xv * (one<T>() - sg)));
          gv.store(g + i, n);
          (V<T>::loadu(dbb + i, n) + gv).store(dbb + i, n);
        });
        const T* xr = x + r * D;
        T* dxr = dx + r * D;
        for (int64_t kk = 0; kk < K; ++kk) {
          const int64_t to = t + (K - 1) - kk;
          if (to >= L) continue;
          const T *gr = ring.data() + (to % K) * D, *w = cwT + kk * D;
          T* dwk = dw + kk * D;
          vfor<T>(D, [&](int64_t i, int64_t n) {
            const V<T> gv = V<T>::loadu(gr + i, n);
            (V<T>::loadu(dxr + i, n) + V<T>::loadu(w + i, n) * gv).store(dxr + i, n);
            (V<T>::loadu(dwk + i, n) + gv * V<T>::loadu(xr + i, n)).store(dwk + i, n);
          });
        }
      }
    }
  });
  for (int64_t i = 0; i < K * D; ++i) {
    T acc = 0;
    for (int64_t b = 0; b < B; ++b) acc += pcw[b * K * D + i];
    dcw[i] = acc;
  }
  for (int64_t i = 0; i < D; ++i) {
    T acc = 0;
    for (int64_t b = 0; b < B; ++b) acc += pcb[b * D + i];
    dcb[i] = acc;
  }
}
"""
