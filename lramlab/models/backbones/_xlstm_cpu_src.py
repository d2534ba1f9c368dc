"""C++ source of the xLSTM CPU training kernels (built by `_xlstm_train.load_kernels`).

Kept as Python strings (here and in `_mlstm_cpu_src`, `_mlstm_chunkwise_src`, `_slstm_cpu_src`) so
the package needs no data files. Every kernel is a forward/backward pair over contiguous tensors,
templated on float/double (the double build lets the tests prove the hand-written backward equal
to autograd's to ~1e-12). Big matrix products go to ATen (MKL);
the loops here fuse everything in between, vectorised with ATen's `Vectorized` (the same Sleef
exp/log1p/tanh torch's own CPU ops use) and GCC vector shuffles for the 4x4 head-wise blocks.
Gradient rules follow the reference's autograd exactly where it matters: torch.maximum/minimum
send half the gradient to each side on a tie (this happens at every sLSTM step, where exp(0) == 1
meets its clamp at 1), max(dim) sends it to one index, abs' gradient at 0 is 0.

Shape letters: B batch, L tokens, I mLSTM inner width, NH heads, DH head dim, P qkv block size,
K conv kernel, G = 2*NH gate pre-activations (i then f), BH = B*NH, D sLSTM width.
"""

from ._mlstm_chunkwise_src import SOURCE as _MLSTM_CHUNKWISE
from ._mlstm_cpu_src import SOURCE as _MLSTM
from ._slstm_cpu_src import SOURCE as _SLSTM

_HEAD = r"""
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

// ---------------------------------------------------------------------------------------------
// BLAS
// ---------------------------------------------------------------------------------------------
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
"""

_BINDINGS = r"""
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

# one translation unit: helpers, mLSTM layer and parallel cell, chunkwise cell, sLSTM, bindings
SOURCE = "\n".join([_HEAD, _MLSTM, _MLSTM_CHUNKWISE, _SLSTM, _BINDINGS])
