"""C++ of the mLSTM cell's chunkwise form (inter-chunk DH x DH states, intra-chunk blocks), forward
and backward, with the reference's exact stabiliser. Part of `_xlstm_cpu_src.SOURCE`.
"""

SOURCE = r"""
// ---------------------------------------------------------------------------------------------
// mLSTM cell, chunkwise form, for L long against DH (the parallel form's L^2 work dominates there).
// Same function and same stabiliser as the reference: with u_s = i_s - b_s, the row max is
// m_t = max(b_t + M_j, max over the chunk's s <= t of (b_t - b_s) + i_s) where M_j = max u over the
// earlier chunks, so the normaliser max(|r_t|, exp(-m_t)) and the routing of m_t's gradient to its
// argmax are the reference's. Earlier chunks enter through H_j = sum_s exp(u_s - M_j) k_s v_s^T and
// n_j = sum_s exp(u_s - M_j) k_s (M_j is a pure stabiliser here: the result does not depend on it,
// so no gradient flows through it); the chunk's own tokens through its c x c block, as in the
// parallel form. Saved per head: H_j, n_j for every chunk, M_j, the blocks' Cn, m, r, argmax, b.
// ---------------------------------------------------------------------------------------------
template <typename T>
void cellc_fwd(const T* qkv, const T* g, int64_t B, int64_t L, int64_t I, int64_t NH, int64_t c, T eps, T* h, T* Cb,
               T* m, T* r, int64_t* am, T* bcs, T* Hs, T* ns, T* Ms) {
  const int64_t DH = I / NH, G = 2 * NH, BH = B * NH, nch = (L + c - 1) / c;
  const T alpha = T(1) / T(std::sqrt(double(DH)));
  const T ninf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, BH, 1, [&](int64_t h0, int64_t h1) {
    std::vector<T> ip(L), fp(L), u(L), ld(c), S(c * c), Pm(c * DH), Kb(c * DH), pv(c), hsc(c), H(DH * DH), nv(DH);
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t b = bh / NH, hh = bh % NH;
      const T* qh = qkv + b * L * 3 * I + hh * DH;
      T *hout = h + b * L * I + hh * DH, *bb = bcs + bh * L, *Ms_h = Ms + bh * (nch + 1);
      for (int64_t t = 0; t < L; ++t) { ip[t] = g[(b * L + t) * G + hh]; fp[t] = g[(b * L + t) * G + NH + hh]; }
      cell_cumsum(fp.data(), L, bb, u.data());
      for (int64_t t = 0; t < L; ++t) u[t] = ip[t] - bb[t];
      std::fill(H.begin(), H.end(), T(0));
      std::fill(nv.begin(), nv.end(), T(0));
      T M = ninf;
      int64_t aM = 0;
      for (int64_t j = 0; j < nch; ++j) {
        const int64_t s0 = j * c, cj = std::min(c, L - s0);
        std::memcpy(Hs + (bh * nch + j) * DH * DH, H.data(), DH * DH * sizeof(T));
        std::memcpy(ns + (bh * nch + j) * DH, nv.data(), DH * sizeof(T));
        Ms_h[j] = M;
        const T* Q = qh + s0 * 3 * I;
        gemm_rm<T>(false, true, cj, cj, DH, alpha, Q, 3 * I, Q + I, 3 * I, T(0), S.data(), c);
        if (j > 0) {
          gemm_rm<T>(false, false, cj, DH, DH, T(1), Q, 3 * I, H.data(), DH, T(0), Pm.data(), DH);
          for (int64_t tl = 0; tl < cj; ++tl) {
            V<T> acc(T(0));
            vfor<T>(DH, [&](int64_t i, int64_t n) { acc = acc + V<T>::loadu(Q + tl * 3 * I + i, n) * V<T>::loadu(nv.data() + i, n); });
            pv[tl] = hsum(acc);
          }
        }
        for (int64_t tl = 0; tl < cj; ++tl) {
          const int64_t t = s0 + tl, w = tl + 1;
          T* row = S.data() + tl * c;
          const V<T> bt(bb[t]);
          V<T> mvv(ninf);
          vfor<T>(w, [&](int64_t i, int64_t n) {
            const V<T> x = (bt - V<T>::loadu(bb + s0 + i, n)) + V<T>::loadu(ip.data() + s0 + i, n);
            x.store(ld.data() + i, n);
            mvv = at::vec::maximum(mvv, V<T>::set(V<T>(ninf), x, n));
          });
          const T mi = hmax(mvv);
          const T xin = j > 0 ? bb[t] + M : ninf;  // the earlier chunks' best entry, b_t + u_aM
          const bool inter = j > 0 && xin >= mi;    // ties go to the earlier index, like torch.max
          const T mx = inter ? xin : mi;
          am[bh * L + t] = inter ? aM : s0 + first_equal(ld.data(), w, mi);
          V<T> sv(T(0));
          vfor<T>(w, [&](int64_t i, int64_t n) {
            const V<T> cc = V<T>::loadu(row + i, n) * (V<T>::loadu(ld.data() + i, n) - V<T>(mx)).exp();
            cc.store(row + i, n);
            sv = sv + V<T>::set(V<T>(T(0)), cc, n);
          });
          const T wt = j > 0 ? std::exp(xin - mx) : T(0);
          const T sum = alpha * wt * (j > 0 ? pv[tl] : T(0)) + hsum(sv);
          const T nrm = std::max(std::abs(sum), std::exp(-mx)) + eps;
          T* cb = Cb + (bh * L + t) * c;
          vfor<T>(w, [&](int64_t i, int64_t n) { (V<T>::loadu(row + i, n) / V<T>(nrm)).store(cb + i, n); });
          std::fill(cb + w, cb + c, T(0));
          hsc[tl] = alpha * wt / nrm;
          m[bh * L + t] = mx; r[bh * L + t] = sum;
        }
        gemm_rm<T>(false, false, cj, DH, cj, T(1), Cb + (bh * L + s0) * c, c, Q + 2 * I, 3 * I, T(0), hout + s0 * I, I);
        if (j > 0)
          for (int64_t tl = 0; tl < cj; ++tl) {
            T* o = hout + (s0 + tl) * I;
            const V<T> sc(hsc[tl]);
            vfor<T>(DH, [&](int64_t i, int64_t n) { (V<T>::loadu(o + i, n) + sc * V<T>::loadu(Pm.data() + tl * DH + i, n)).store(o + i, n); });
          }
        // state update with this chunk's tokens
        T Mn = M;
        int64_t aMn = aM;
        for (int64_t tl = 0; tl < cj; ++tl) if (u[s0 + tl] > Mn) { Mn = u[s0 + tl]; aMn = s0 + tl; }
        const T gam = j > 0 ? std::exp(M - Mn) : T(0);
        for (int64_t tl = 0; tl < cj; ++tl) {
          const V<T> be(std::exp(u[s0 + tl] - Mn));
          const T* kr = Q + tl * 3 * I + I;
          vfor<T>(DH, [&](int64_t i, int64_t n) { (be * V<T>::loadu(kr + i, n)).store(Kb.data() + tl * DH + i, n); });
        }
        gemm_rm<T>(true, false, DH, DH, cj, T(1), Kb.data(), DH, Q + 2 * I, 3 * I, gam, H.data(), DH);
        for (int64_t i = 0; i < DH; ++i) {
          T acc = gam * nv[i];
          for (int64_t tl = 0; tl < cj; ++tl) acc += Kb[tl * DH + i];
          nv[i] = acc;
        }
        M = Mn; aM = aMn;
      }
      Ms_h[nch] = M;
    }
  });
}

template <typename T>
void cellc_bwd(const T* dh, const T* hc, const T* qkv, const T* g, const T* Cb, const T* m, const T* r,
               const int64_t* am, const T* bcs, const T* Hs, const T* ns, const T* Ms, int64_t B, int64_t L, int64_t I,
               int64_t NH, int64_t c, T eps, T* dqkv, T* dg) {
  const int64_t DH = I / NH, G = 2 * NH, BH = B * NH, nch = (L + c - 1) / c;
  const T alpha = T(1) / T(std::sqrt(double(DH)));
  at::parallel_for(0, BH, 1, [&](int64_t h0, int64_t h1) {
    std::vector<T> ip(L), u(L), di(L), db(L), dl(L), Gm(c * c), Pm(c * DH), E(c * DH), Vt(c * DH), Kt(c * DH);
    std::vector<T> nrm(c), dr(c), dmn(c), wt(c), rows(c), beta(c), dH(DH * DH), dn(DH), dnd(DH);
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t b = bh / NH, hh = bh % NH;
      const T* qh = qkv + b * L * 3 * I + hh * DH;
      const T *dhh = dh + b * L * I + hh * DH, *hh_out = hc + b * L * I + hh * DH;
      T* dqh = dqkv + b * L * 3 * I + hh * DH;
      const T *bb = bcs + bh * L, *Ms_h = Ms + bh * (nch + 1);
      for (int64_t t = 0; t < L; ++t) { ip[t] = g[(b * L + t) * G + hh]; u[t] = ip[t] - bb[t]; }
      std::fill(di.begin(), di.end(), T(0));
      std::fill(db.begin(), db.end(), T(0));
      std::fill(dH.begin(), dH.end(), T(0));
      std::fill(dn.begin(), dn.end(), T(0));
      for (int64_t j = nch - 1; j >= 0; --j) {
        const int64_t s0 = j * c, cj = std::min(c, L - s0);
        const T* Q = qh + s0 * 3 * I;
        const T* Hj = Hs + (bh * nch + j) * DH * DH;
        const T* nj = ns + (bh * nch + j) * DH;
        const T Mj = Ms_h[j];
        // per row: normaliser gradient, inter weight
        for (int64_t tl = 0; tl < cj; ++tl) {
          const int64_t t = s0 + tl;
          const T mt = m[bh * L + t], rt = r[bh * L + t], ex = std::exp(-mt), a = std::abs(rt);
          nrm[tl] = std::max(a, ex) + eps;
          V<T> acc(T(0));
          const T *d = dhh + t * I, *y = hh_out + t * I;
          vfor<T>(DH, [&](int64_t i, int64_t n) { acc = acc + V<T>::loadu(d + i, n) * V<T>::loadu(y + i, n); });
          const T gn = -hsum(acc) / nrm[tl];  // d loss / d normaliser: -(dh . h) / nrm
          dr[tl] = gn * win(a, ex) * sgn(rt);
          dmn[tl] = gn * win(ex, a) * (-ex);
          wt[tl] = j > 0 ? std::exp((bb[t] + Mj) - mt) : T(0);
          rows[tl] = 0;
        }
        // intra block: G = dh @ v^T -> dS
        gemm_rm<T>(false, true, cj, cj, DH, T(1), dhh + s0 * I, I, Q + 2 * I, 3 * I, T(0), Gm.data(), c);
        for (int64_t tl = 0; tl < cj; ++tl) {
          const int64_t t = s0 + tl, w = tl + 1;
          T* gr = Gm.data() + tl * c;
          const T* cn = Cb + (bh * L + t) * c;
          const V<T> bt(bb[t]), mtv(m[bh * L + t]), nv(nrm[tl]), drv(dr[tl]);
          V<T> rs(T(0));
          vfor<T>(w, [&](int64_t i, int64_t n) {
            const V<T> D = (((bt - V<T>::loadu(bb + s0 + i, n)) + V<T>::loadu(ip.data() + s0 + i, n)) - mtv).exp();
            const V<T> dC = V<T>::loadu(gr + i, n) / nv + drv;
            const V<T> dlv = dC * (V<T>::loadu(cn + i, n) * nv);
            (dC * D).store(gr + i, n);
            (V<T>::loadu(di.data() + s0 + i, n) + dlv).store(di.data() + s0 + i, n);
            (V<T>::loadu(db.data() + s0 + i, n) - dlv).store(db.data() + s0 + i, n);
            rs = rs + V<T>::set(V<T>(T(0)), dlv, n);
          });
          std::fill(gr + w, gr + c, T(0));
          rows[tl] = hsum(rs);
        }
        // inter: num_t += alpha w_t q_t^T H_j, r_t += alpha w_t q_t . n_j
        if (j > 0) {
          gemm_rm<T>(false, false, cj, DH, DH, T(1), Q, 3 * I, Hj, DH, T(0), Pm.data(), DH);
          for (int64_t tl = 0; tl < cj; ++tl) {
            const int64_t t = s0 + tl;
            const T* qr = Q + tl * 3 * I;
            const T* d = dhh + t * I;
            V<T> a1(T(0)), a2(T(0));
            vfor<T>(DH, [&](int64_t i, int64_t n) {
              a1 = a1 + V<T>::loadu(d + i, n) * V<T>::loadu(Pm.data() + tl * DH + i, n);
              a2 = a2 + V<T>::loadu(qr + i, n) * V<T>::loadu(nj + i, n);
            });
            const T dw = alpha * (hsum(a1) / nrm[tl] + dr[tl] * hsum(a2));
            rows[tl] += dw * wt[tl];  // d / d log w_t: to b_t (+) and m_t (-)
            const V<T> sc(alpha * wt[tl] / nrm[tl]);
            vfor<T>(DH, [&](int64_t i, int64_t n) { (sc * V<T>::loadu(d + i, n)).store(E.data() + tl * DH + i, n); });
          }
        }
        // row max m_t: its gradient goes to the argmax entry (b_t - b_s*) + i_s*
        for (int64_t tl = 0; tl < cj; ++tl) {
          const int64_t t = s0 + tl;
          const T dm = dmn[tl] - rows[tl];
          const int64_t ai = am[bh * L + t];
          di[ai] += dm;
          db[ai] -= dm;
          db[t] += rows[tl] + dm;
        }
        // dq (intra + inter), dk, dv (intra)
        T *dQ = dqh + s0 * 3 * I, *dK = dQ + I, *dV = dQ + 2 * I;
        gemm_rm<T>(false, false, cj, DH, cj, alpha, Gm.data(), c, Q + I, 3 * I, T(0), dQ, 3 * I);
        if (j > 0) {
          gemm_rm<T>(false, true, cj, DH, DH, T(1), E.data(), DH, Hj, DH, T(1), dQ, 3 * I);
          for (int64_t tl = 0; tl < cj; ++tl) {
            const V<T> sc(alpha * wt[tl] * dr[tl]);
            T* o = dQ + tl * 3 * I;
            vfor<T>(DH, [&](int64_t i, int64_t n) { (V<T>::loadu(o + i, n) + sc * V<T>::loadu(nj + i, n)).store(o + i, n); });
          }
        }
        gemm_rm<T>(true, false, cj, DH, cj, alpha, Gm.data(), c, Q, 3 * I, T(0), dK, 3 * I);
        gemm_rm<T>(true, false, cj, DH, cj, T(1), Cb + (bh * L + s0) * c, c, dhh + s0 * I, I, T(0), dV, 3 * I);
        // this chunk's tokens in the later chunks' states (dH, dn: gradient of H_{j+1}, n_{j+1})
        if (j < nch - 1) {
          const T Mn = Ms_h[j + 1];
          gemm_rm<T>(false, true, cj, DH, DH, T(1), Q + 2 * I, 3 * I, dH.data(), DH, T(0), Vt.data(), DH);  // v_s dH^T
          gemm_rm<T>(false, false, cj, DH, DH, T(1), Q + I, 3 * I, dH.data(), DH, T(0), Kt.data(), DH);      // k_s dH
          for (int64_t tl = 0; tl < cj; ++tl) {
            const int64_t s = s0 + tl;
            const T be = std::exp(u[s] - Mn);
            const T* kr = Q + tl * 3 * I + I;
            V<T> a1(T(0));
            const V<T> bv(be);
            T *ok = dK + tl * 3 * I, *ov = dV + tl * 3 * I;
            vfor<T>(DH, [&](int64_t i, int64_t n) {
              const V<T> vt = V<T>::loadu(Vt.data() + tl * DH + i, n) + V<T>::loadu(dn.data() + i, n);
              a1 = a1 + V<T>::loadu(kr + i, n) * vt;
              (V<T>::loadu(ok + i, n) + bv * vt).store(ok + i, n);
              (V<T>::loadu(ov + i, n) + bv * V<T>::loadu(Kt.data() + tl * DH + i, n)).store(ov + i, n);
            });
            const T du = be * hsum(a1);  // d / d u_s, u_s = i_s - b_s
            di[s] += du;
            db[s] -= du;
          }
        }
        // dH_j = exp(M_j - M_{j+1}) dH_{j+1} + alpha sum_t w_t q_t (dh_t / nrm_t)^T; dn_j likewise
        if (j > 0) {
          const T gam = std::exp(Mj - Ms_h[j + 1]);
          gemm_rm<T>(true, false, DH, DH, cj, T(1), Q, 3 * I, E.data(), DH, gam, dH.data(), DH);
          for (int64_t i = 0; i < DH; ++i) {
            T acc = gam * dn[i];
            for (int64_t tl = 0; tl < cj; ++tl) acc += alpha * wt[tl] * dr[tl] * Q[tl * 3 * I + i];
            dnd[i] = acc;
          }
          std::swap(dn, dnd);
        }
      }
      T acc = 0;
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
