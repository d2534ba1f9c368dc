"""C++ source of the xLSTM CPU training kernels (built by `_xlstm_train.load_kernels`).

Kept as a Python string so the package needs no data files. Every kernel is a forward/backward
pair over contiguous tensors, templated on float/double (the double build lets the tests prove
the hand-written backward equal to autograd's to ~1e-12). Big matrix products go to ATen (MKL);
the loops here fuse everything in between, vectorised with ATen's `Vectorized` (the same Sleef
exp/log1p/tanh torch's own CPU ops use) and GCC vector shuffles for the 4x4 head-wise blocks.
Gradient rules follow the reference's autograd exactly where it matters: torch.maximum/minimum
send half the gradient to each side on a tie (this happens at every sLSTM step, where exp(0) == 1
meets its clamp at 1), max(dim) sends it to one index, abs' gradient at 0 is 0.

Shape letters: B batch, L tokens, I mLSTM inner width, NH heads, DH head dim, P qkv block size,
K conv kernel, G = 2*NH gate pre-activations (i then f), BH = B*NH, D sLSTM width.
"""

SOURCE = r"""
// ATen's Vectorized<T> picks its instruction set from these macros: match the compiler's target
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

using at::Tensor;

namespace {

template <typename T> using V = at::vec::Vectorized<T>;

// f(i, n): the lanes [i, i + n) of a vector step over [0, len)
template <typename T, typename F> inline void vfor(int64_t len, F&& f) {
  constexpr int64_t W = V<T>::size();
  int64_t i = 0;
  for (; i + W <= len; i += W) f(i, W);
  if (i < len) f(i, len - i);
}
template <typename T> inline T hsum(const V<T>& v) {
  T buf[V<T>::size()];
  v.store(buf);
  T s = 0;
  for (int64_t i = 0; i < V<T>::size(); ++i) s += buf[i];
  return s;
}
template <typename T> inline T hmax(const V<T>& v) {
  T buf[V<T>::size()];
  v.store(buf);
  T s = buf[0];
  for (int64_t i = 1; i < V<T>::size(); ++i) s = std::max(s, buf[i]);
  return s;
}
template <typename T> inline V<T> one() { return V<T>(T(1)); }
// torch's forms: sigmoid = 1 / (1 + exp(-x)), silu = x / (1 + exp(-x)),
// log_sigmoid = min(x, 0) - log1p(exp(-|x|)) with derivative sigmoid(-x)
template <typename T> inline V<T> vsig(const V<T>& x) { return one<T>() / (one<T>() + x.neg().exp()); }
template <typename T> inline V<T> vsilu(const V<T>& x) { return x / (one<T>() + x.neg().exp()); }
template <typename T> inline V<T> vdsilu(const V<T>& x) {
  V<T> s = vsig(x);
  return s * (one<T>() + x * (one<T>() - s));
}
template <typename T> inline V<T> vlogsig(const V<T>& x) {
  return at::vec::minimum(x, V<T>(T(0))) - x.abs().neg().exp().log1p();
}
template <typename T> inline V<T> vdlogsig(const V<T>& x) {
  V<T> z = x.abs().neg().exp();
  V<T> q = z / (one<T>() + z);
  return V<T>::blendv(q, one<T>() - q, x < V<T>(T(0)));
}
// share of the gradient torch.maximum(a, b) sends to a (torch.minimum(a, b) sends win(b, a) to a)
template <typename T> inline V<T> vwin(const V<T>& a, const V<T>& b) {
  return V<T>::blendv(V<T>::blendv(V<T>(T(0)), V<T>(T(0.5)), a == b), one<T>(), a > b);
}
template <typename T> inline T win(T a, T b) { return a > b ? T(1) : (a == b ? T(0.5) : T(0)); }
template <typename T> inline T sgn(T x) { return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0)); }
template <typename T> inline T logsigm(T x) { return std::min(x, T(0)) - std::log1p(std::exp(-std::abs(x))); }

// ---------------------------------------------------------------------------------------------
// head-wise blocks (the package's LinearHeadwiseExpand with P x P blocks), on one token row:
//   hw_apply: out[c] (+)= sum_d W4[d][c] * x[(c / P) * P + d]     W4 (P, I)
//   hw_grad:  dW4[d][c] += g[c] * x[(c / P) * P + d]
// Forward weights W[h, o, d] enter as W4[d][h*P + o]; the input gradient uses W4[o][h*P + d].
typedef float f16v __attribute__((vector_size(64)));
typedef int32_t i16v __attribute__((vector_size(64)));
static const i16v kBcast4[4] = {{0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12},
                                {1, 1, 1, 1, 5, 5, 5, 5, 9, 9, 9, 9, 13, 13, 13, 13},
                                {2, 2, 2, 2, 6, 6, 6, 6, 10, 10, 10, 10, 14, 14, 14, 14},
                                {3, 3, 3, 3, 7, 7, 7, 7, 11, 11, 11, 11, 15, 15, 15, 15}};
inline f16v ld16(const float* p) { f16v v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void st16(float* p, const f16v& v) { std::memcpy(p, &v, sizeof(v)); }

template <typename T>
inline void hw_apply(const T* W4, const T* x, T* out, int64_t I, int64_t P, bool acc) {
  if constexpr (std::is_same<T, float>::value) {
    if (P == 4 && I % 16 == 0) {
      for (int64_t c = 0; c < I; c += 16) {
        const f16v a = ld16(x + c);
        f16v s = ld16(W4 + c) * __builtin_shuffle(a, kBcast4[0]) + ld16(W4 + I + c) * __builtin_shuffle(a, kBcast4[1]) +
                 ld16(W4 + 2 * I + c) * __builtin_shuffle(a, kBcast4[2]) +
                 ld16(W4 + 3 * I + c) * __builtin_shuffle(a, kBcast4[3]);
        if (acc) s += ld16(out + c);
        st16(out + c, s);
      }
      return;
    }
  }
  for (int64_t c = 0; c < I; ++c) {
    const T* xb = x + (c / P) * P;
    T s = acc ? out[c] : T(0);
    for (int64_t d = 0; d < P; ++d) s += W4[d * I + c] * xb[d];
    out[c] = s;
  }
}

template <typename T>
inline void hw_grad(T* dW4, const T* g, const T* x, int64_t I, int64_t P) {
  if constexpr (std::is_same<T, float>::value) {
    if (P == 4 && I % 16 == 0) {
      for (int64_t c = 0; c < I; c += 16) {
        const f16v a = ld16(x + c), gv = ld16(g + c);
        for (int d = 0; d < 4; ++d) st16(dW4 + d * I + c, ld16(dW4 + d * I + c) + gv * __builtin_shuffle(a, kBcast4[d]));
      }
      return;
    }
  }
  for (int64_t c = 0; c < I; ++c) {
    const T* xb = x + (c / P) * P;
    for (int64_t d = 0; d < P; ++d) dW4[d * I + c] += g[c] * xb[d];
  }
}

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
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

// row-major C (m x n, ldc) = alpha * op(A) @ op(B) + beta * C, op(A) (m x k), op(B) (k x n)
template <typename T>
void gemm_rm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, const T* B,
             int64_t ldb, T beta, T* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  // column-major view: C^T = op(B)^T @ op(A)^T
  const char tA = ta ? 'T' : 'N', tB = tb ? 'T' : 'N';
  const int im = int(m), in = int(n), ik = int(k), ilda = int(lda), ildb = int(ldb), ildc = int(ldc);
  if constexpr (std::is_same<T, float>::value) {
    if (sgemm_) { sgemm_(&tB, &tA, &in, &im, &ik, &alpha, B, &ildb, A, &ilda, &beta, C, &ildc); return; }
  } else {
    if (dgemm_) { dgemm_(&tB, &tA, &in, &im, &ik, &alpha, B, &ildb, A, &ilda, &beta, C, &ildc); return; }
  }
  // no BLAS symbol in this torch build: ATen on views of the same memory
  auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor a = ta ? at::from_blob(const_cast<T*>(A), {k, m}, {lda, 1}, opt).t() : at::from_blob(const_cast<T*>(A), {m, k}, {lda, 1}, opt);
  Tensor bb = tb ? at::from_blob(const_cast<T*>(B), {n, k}, {ldb, 1}, opt).t() : at::from_blob(const_cast<T*>(B), {k, n}, {ldb, 1}, opt);
  Tensor c = at::from_blob(C, {m, n}, {ldc, 1}, opt);
  if (beta == T(0)) c.copy_(at::mm(a, bb).mul_(alpha));
  else c.mul_(beta).add_(at::mm(a, bb), alpha);
}

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

}  // namespace

// ------------------------------------------------------------------------------- bindings
#define DISPATCH(t, name, ...) AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), name, __VA_ARGS__)
#define PTR(x) x.data_ptr<scalar_t>()

// head-wise weights W (NPH, P, P) [h, o, d] -> W4 (P, I): [d][h*P + o] (forward), [o][h*P + d] (transposed)
static Tensor hw4(const Tensor& W) { return W.permute({2, 0, 1}).reshape({W.size(2), -1}).contiguous(); }
static Tensor hw4t(const Tensor& W) { return W.permute({1, 0, 2}).reshape({W.size(1), -1}).contiguous(); }

// up (B, L, 2I) -> xc (B, L, I), qkv (B, L, 3I), g (B, L, G)
std::vector<Tensor> mlstm_pre_fwd(Tensor up, Tensor cw, Tensor cb, Tensor wq, Tensor wk, Tensor wv, Tensor wg,
                                  Tensor bg) {
  const int64_t B = up.size(0), L = up.size(1), I = up.size(2) / 2, K = cw.size(1), P = wq.size(2), G = wg.size(0);
  Tensor cwT = cw.t().contiguous(), wq4 = hw4(wq), wk4 = hw4(wk), wv4 = hw4(wv);
  Tensor xc = at::empty({B, L, I}, up.options()), qkv = at::empty({B, L, 3 * I}, up.options());
  Tensor g = at::empty({B, L, G}, up.options());
  DISPATCH(up, "mlstm_pre_fwd", [&] {
    pre_fwd<scalar_t>(PTR(up), B, L, I, PTR(cwT), K, PTR(cb), PTR(wq4), PTR(wk4), PTR(wv4), P, PTR(wg), PTR(bg), G,
                      PTR(xc), PTR(qkv), PTR(g));
  });
  return {xc, qkv, g};
}

// h (B, L, I) -> hs, mean, rstd
std::vector<Tensor> mlstm_post_fwd(Tensor hc, Tensor up, Tensor xc, Tensor onw, Tensor skip, double eps, int64_t NH) {
  const int64_t B = up.size(0), L = up.size(1), I = up.size(2) / 2;
  Tensor hs = at::empty({B, L, I}, up.options());
  Tensor mean = at::empty({B, L, NH}, up.options()), rstd = at::empty_like(mean);
  DISPATCH(up, "mlstm_post_fwd", [&] {
    post_fwd<scalar_t>(PTR(hc), PTR(up), PTR(xc), PTR(onw), PTR(skip), scalar_t(eps), B * L, I, NH, PTR(hs),
                       PTR(mean), PTR(rstd));
  });
  return {hs, mean, rstd};
}

// -> dup (B, L, 2I) with its z half filled, dh, donw, dskip
std::vector<Tensor> mlstm_post_bwd(Tensor dhs, Tensor hc, Tensor up, Tensor xc, Tensor onw, Tensor skip, Tensor mean,
                                   Tensor rstd, int64_t NH) {
  const int64_t B = up.size(0), L = up.size(1), I = up.size(2) / 2;
  Tensor dup = at::empty_like(up), dhc = at::empty_like(hc), pw = at::empty({B, 2, I}, up.options());
  DISPATCH(up, "mlstm_post_bwd", [&] {
    post_bwd<scalar_t>(PTR(dhs), PTR(hc), PTR(up), PTR(xc), PTR(onw), PTR(skip), PTR(mean), PTR(rstd), B, L, I, NH,
                       PTR(dhc), PTR(dup), PTR(pw));
  });
  Tensor s = pw.sum(0);
  return {dup, dhc, s[0], s[1]};
}

// dqkv, dg from the cell; fills dup[..., :I]
// -> dcw (I, K), dcb, dwq, dwk, dwv, dwg, dbg
std::vector<Tensor> mlstm_pre_bwd(Tensor dup, Tensor dqkv, Tensor dg, Tensor dhs, Tensor up, Tensor xc, Tensor qkv,
                                  Tensor skip, Tensor cw, Tensor wq, Tensor wk, Tensor wv, Tensor wg) {
  const int64_t B = up.size(0), L = up.size(1), I = up.size(2) / 2, K = cw.size(1), P = wq.size(2), G = wg.size(0);
  const int64_t NPH = I / P;
  Tensor cwT = cw.t().contiguous(), wq4t = hw4t(wq), wk4t = hw4t(wk), wv4t = hw4t(wv);
  auto o = up.options();
  Tensor pcw = at::empty({B, K, I}, o), pcb = at::empty({B, I}, o);
  Tensor pwq = at::empty({B, P, I}, o), pwk = at::empty_like(pwq), pwv = at::empty_like(pwq);
  // the gates' weight gradient is one product over all tokens (MKL), before dqkv gets their part
  Tensor dg2 = dg.view({B * L, G}), dwg = at::mm(dg2.t(), qkv.view({B * L, 3 * I})), dbg = dg2.sum(0);
  DISPATCH(up, "mlstm_pre_bwd", [&] {
    pre_bwd<scalar_t>(PTR(dqkv), PTR(dg), PTR(dhs), PTR(up), PTR(xc), PTR(skip), PTR(cwT), K, PTR(wq4t), PTR(wk4t),
                      PTR(wv4t), P, PTR(wg), G, B, L, I, PTR(dup), PTR(pcw), PTR(pcb), PTR(pwq), PTR(pwk), PTR(pwv));
  });
  auto unhw = [&](const Tensor& p) { return p.sum(0).view({P, NPH, P}).permute({1, 2, 0}).contiguous(); };
  return {pcw.sum(0).t().contiguous(), pcb.sum(0), unhw(pwq), unhw(pwk), unhw(pwv), dwg, dbg};
}

// qkv (B, L, 3I), g (B, L, G) -> h (B, L, I) and what the backward needs: Cn, m, r, am, b (BH, L) and
// for the chunkwise form (chunkwise=true) H (BH, n, DH, DH), n (BH, n, DH), M (BH, n + 1); Cn is
// (BH, L, L) in the parallel form, (BH, L, c) (the diagonal blocks) in the chunkwise one
std::vector<Tensor> mlstm_cell_fwd(Tensor qkv, Tensor g, int64_t NH, double eps, int64_t c, bool chunkwise) {
  const int64_t B = qkv.size(0), L = qkv.size(1), I = qkv.size(2) / 3, BH = B * NH, DH = I / NH;
  const int64_t nch = (L + c - 1) / c;
  auto o = qkv.options();
  Tensor h = at::empty({B, L, I}, o), Cn = at::empty({BH, L, chunkwise ? c : L}, o);
  Tensor m = at::empty({BH, L}, o), r = at::empty_like(m), b = at::empty_like(m);
  Tensor am = at::empty({BH, L}, o.dtype(at::kLong));
  Tensor Hs = at::empty({chunkwise ? BH : 0, nch, DH, DH}, o), ns = at::empty({chunkwise ? BH : 0, nch, DH}, o);
  Tensor Ms = at::empty({chunkwise ? BH : 0, nch + 1}, o);
  DISPATCH(qkv, "mlstm_cell_fwd", [&] {
    if (chunkwise)
      cellc_fwd<scalar_t>(PTR(qkv), PTR(g), B, L, I, NH, c, scalar_t(eps), PTR(h), PTR(Cn), PTR(m), PTR(r),
                          am.data_ptr<int64_t>(), PTR(b), PTR(Hs), PTR(ns), PTR(Ms));
    else
      cell_fwd<scalar_t>(PTR(qkv), PTR(g), B, L, I, NH, c, scalar_t(eps), PTR(h), PTR(Cn), PTR(m), PTR(r),
                         am.data_ptr<int64_t>(), PTR(b));
  });
  return {h, Cn, m, r, am, b, Hs, ns, Ms};
}

// dh (B, L, I), h the forward's output -> dqkv (B, L, 3I), dg (B, L, G)
std::vector<Tensor> mlstm_cell_bwd(Tensor dh, Tensor h, Tensor qkv, Tensor g, Tensor Cn, Tensor m, Tensor r, Tensor am,
                                   Tensor b, Tensor Hs, Tensor ns, Tensor Ms, int64_t NH, double eps, int64_t c,
                                   bool chunkwise) {
  const int64_t B = qkv.size(0), L = qkv.size(1), I = qkv.size(2) / 3;
  Tensor dqkv = at::empty_like(qkv), dg = at::empty_like(g);
  DISPATCH(qkv, "mlstm_cell_bwd", [&] {
    if (chunkwise)
      cellc_bwd<scalar_t>(PTR(dh), PTR(h), PTR(qkv), PTR(g), PTR(Cn), PTR(m), PTR(r), am.data_ptr<int64_t>(), PTR(b),
                          PTR(Hs), PTR(ns), PTR(Ms), B, L, I, NH, c, scalar_t(eps), PTR(dqkv), PTR(dg));
    else
      cell_bwd<scalar_t>(PTR(dh), PTR(qkv), PTR(g), PTR(Cn), PTR(m), PTR(r), am.data_ptr<int64_t>(), PTR(b), B, L, I,
                         NH, c, scalar_t(eps), PTR(dqkv), PTR(dg));
  });
  return {dqkv, dg};
}

// x (B, L, D) (the block's normed input), conv weight (D, K) and bias, W4 (4, NH, DH, DH) the gates'
// head-wise weights (i, f, z, o), R (NH, 4DH, DH) and bias (4*NH*DH) in the vanilla backend's
// internal layout, gnw (D) -> out (B, L, D) and what the backward needs
std::vector<Tensor> slstm_fwd(Tensor x, Tensor cw, Tensor cb, Tensor W4, Tensor R, Tensor bias, Tensor gnw, double eps) {
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), K = cw.size(1), NH = R.size(0), DH = R.size(2);
  auto o = x.options();
  Tensor cwT = cw.t().contiguous(), RT = R.transpose(1, 2).contiguous();
  Tensor xc = at::empty({B, L, D}, o), xa = at::empty({B, L, D}, o), wx = at::empty({B, L, NH, 4 * DH}, o);
  Tensor st = at::empty({4, NH, B, L + 1, DH}, o), allz = at::empty({L}, o.dtype(at::kByte));
  Tensor out = at::empty({B, L, D}, o), gm = at::empty({B, L, NH}, o), gr = at::empty_like(gm);
  DISPATCH(x, "slstm_fwd", [&] {
    s_fwd<scalar_t>(PTR(x), PTR(cwT), PTR(cb), K, PTR(W4), PTR(RT), PTR(bias), PTR(gnw), scalar_t(eps), NH, B, L, DH,
                    PTR(xc), PTR(xa), PTR(wx), PTR(st), allz.data_ptr<uint8_t>(), PTR(out), PTR(gm), PTR(gr));
  });
  return {out, xc, wx, st, allz, gm, gr};
}

// -> dx, dcw (D, K), dcb, dW4 (4, NH, DH, DH), dR (NH, 4DH, DH), dbias (4*NH*DH), dgnw
std::vector<Tensor> slstm_bwd(Tensor dout, Tensor x, Tensor xc, Tensor cw, Tensor W4, Tensor R, Tensor gnw, Tensor wx,
                              Tensor st, Tensor allz, Tensor gm, Tensor gr) {
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), K = cw.size(1), NH = R.size(0), DH = R.size(2);
  auto o = x.options();
  Tensor cwT = cw.t().contiguous();
  Tensor dx = at::empty({B, L, D}, o), dwx = at::empty({B, L, NH, 4 * DH}, o);
  Tensor dcwT = at::empty({K, D}, o), dcb = at::empty({D}, o), dW4 = at::empty_like(W4), dR = at::empty_like(R);
  Tensor dgnw = at::empty({D}, o);
  DISPATCH(x, "slstm_bwd", [&] {
    s_bwd<scalar_t>(PTR(dout), PTR(x), PTR(xc), PTR(cwT), K, PTR(W4), PTR(R), PTR(gnw), PTR(wx), PTR(st),
                    allz.data_ptr<uint8_t>(), PTR(gm), PTR(gr), NH, B, L, DH, PTR(dx), PTR(dwx), PTR(dcwT), PTR(dcb),
                    PTR(dW4), PTR(dR), PTR(dgnw));
  });
  // bias gradient: column sums of the raw pre-activation gradients, (NH, 4, DH) -> internal (4, NH, DH)
  Tensor dbias = dwx.view({B * L, NH, 4, DH}).sum(0).permute({1, 0, 2}).reshape({-1});
  return {dx, dcwT.t().contiguous(), dcb, dW4, dR, dbias, dgnw};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("mlstm_pre_fwd", &mlstm_pre_fwd);
  mod.def("mlstm_post_fwd", &mlstm_post_fwd);
  mod.def("mlstm_post_bwd", &mlstm_post_bwd);
  mod.def("mlstm_pre_bwd", &mlstm_pre_bwd);
  mod.def("mlstm_cell_fwd", &mlstm_cell_fwd);
  mod.def("mlstm_cell_bwd", &mlstm_cell_bwd);
  mod.def("slstm_fwd", &slstm_fwd);
  mod.def("slstm_bwd", &slstm_bwd);
}
"""
