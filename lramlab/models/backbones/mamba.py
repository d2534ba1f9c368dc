"""Mamba-1 backbone: a pure-torch reference, a numba CPU fast path (training and step), and
mamba-ssm's CUDA kernels when they are importable.

Shape letters: B batch, L tokens, D model width (`d_model`), E inner width (`expand * D`),
N SSM state size (`d_state`), W conv width (`d_conv`), R rank of the step-size projection
(`dt_rank = ceil(D / 16)`), K scan chunk length.

`MambaMixer` has the parameter names, shapes and initialisation of
`mamba_ssm.modules.mamba_simple.Mamba` (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj), and
`MambaBackbone` the module names of mamba-ssm's `MixerModel` (`layers.{i}.norm`, `layers.{i}.mixer`,
`norm_f`; d_intermediate 0, RMSNorm), so a state dict moves between the two without renaming
(mamba-ssm's `embedding` is not part of the backbone: lramlab's encoders replace it).

Scans with the signature of mamba-ssm's `selective_scan_fn` (plus an initial state):
- `selective_scan_ref`: the recurrence, one token at a time (the reference).
- `selective_scan_parallel`: chunked scan. Inside chunks of K tokens a log-depth (Hillis-Steele)
  scan runs over all chunks at once on (log decay, state) pairs; decays are exp of short sums of
  delta*A <= 0 (in (0, 1]: no overflow, no cancellation of large cumulative sums); the chunk-end
  states are then carried across chunks sequentially. Memory O(B E L N log K), linear in L;
  O(log K + L / K) torch calls.
- `_mamba_cpu.selective_scan_numba`: numba kernels with a hand-written backward (CPU, fp32).

Which path runs (`MambaBackbone.scan_impl` names the last one, logged when it changes):
- CUDA, mamba-ssm importable, config `mamba_kernel` "auto"/"cuda": mamba-ssm's `selective_scan_fn`
  (and `causal_conv1d_fn` when installed) for the stateless forward.
- CPU, fp32, numba importable, config `mamba_scan` "auto" (default) or "numba": "numba" -- the
  mixer between in_proj and out_proj is one autograd Function (`_mamba_cpu.mamba_inner_numba`:
  numba conv + SiLU, MKL x_proj/dt_proj, numba scan with the gate; numba backward that
  recomputes states chunkwise) and the RMSNorms are fused; `step` with few rows (B*l <= 12,
  no autograd) is "numba-step", one fused numba call per block, updating the state in place.
- otherwise the pure-torch scans: "torch-chunked" on CUDA, "torch-sequential" on a CPU (faster
  there than the chunked one), or as `mamba_scan` says; "torch-step" for one-token steps.
"mamba_scan='sequential'" is the reference path everywhere (forward, backward, step).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "MambaBackbone",
    "MambaMixer",
    "MambaState",
    "selective_scan_parallel",
    "selective_scan_ref",
    "mamba_kernels",
    "mamba_ssm_param_shapes",
]

_KERNELS: dict[str, Any] | None = None


def mamba_kernels() -> dict[str, Any]:
    """mamba-ssm / causal-conv1d kernels if they import here, else {} (checked once, lazily).

    `import mamba_ssm` fails on machines without CUDA (it imports `selective_scan_cuda` unguarded),
    so any exception means "not available"; nothing is tried without a CUDA device.
    """
    global _KERNELS
    if _KERNELS is None:
        found: dict[str, Any] = {}
        if torch.cuda.is_available():
            try:
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

                found["selective_scan_fn"] = selective_scan_fn
            except Exception as err:  # noqa: BLE001 - any import failure means no kernel
                log.info("mamba_ssm kernels unavailable, using the pure-torch scan: %s", err)
            try:
                from causal_conv1d import causal_conv1d_fn

                found["causal_conv1d_fn"] = causal_conv1d_fn
            except Exception:  # noqa: BLE001
                pass
        _KERNELS = found
    return _KERNELS


def mamba_ssm_param_shapes(d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                           dt_rank: int | None = None) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of `mamba_ssm.modules.mamba_simple.Mamba` (conv_bias=True,
    bias=False), derived from its source; used to check weight compatibility without mamba-ssm."""
    e = expand * d_model
    r = math.ceil(d_model / 16) if dt_rank is None else dt_rank
    return {
        "in_proj.weight": (2 * e, d_model),
        "conv1d.weight": (e, 1, d_conv),
        "conv1d.bias": (e,),
        "x_proj.weight": (r + 2 * d_state, e),
        "dt_proj.weight": (e, r),
        "dt_proj.bias": (e,),
        "A_log": (e, d_state),
        "D": (e,),
        "out_proj.weight": (d_model, e),
    }


# --------------------------------------------------------------------------------------------
# Selective scans. Arguments as mamba-ssm's selective_scan_fn:
#   u (B, E, L), delta (B, E, L), A (E, N), B (B, N, L), C (B, N, L), D (E,), z (B, E, L),
#   delta_bias (E,); plus initial_state (B, E, N). Computed in fp32, returned in u's dtype.
# --------------------------------------------------------------------------------------------
def _prepare(u, delta, A, delta_bias, delta_softplus):
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u.float(), delta, A.float()


def _finish(y, u, D, z, dtype_in):
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype_in)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None):
    """Sequential reference: h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = C_t h_t + D u_t."""
    dtype_in = u.dtype
    u, delta, A = _prepare(u, delta, A, delta_bias, delta_softplus)
    Bf, Cf = B.float(), C.float()
    b, e, length = u.shape
    h = (torch.zeros(b, e, A.shape[1], device=u.device) if initial_state is None
         else initial_state.float())
    ys = []
    for t in range(length):
        d_t = delta[:, :, t, None]                                       # (B, E, 1)
        h = torch.exp(d_t * A) * h + (d_t * u[:, :, t, None]) * Bf[:, None, :, t]
        ys.append(torch.einsum("ben,bn->be", h, Cf[:, :, t]))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(b, e, 0)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h) if return_last_state else out


def _shift(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """x shifted by k along `dim` (towards later positions), zero-filled at the front."""
    pad = [0, 0] * (x.dim() - 1 - dim) + [k, 0]
    return F.pad(x.narrow(dim, 0, x.shape[dim] - k), pad)


def selective_scan_parallel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                            return_last_state=False, initial_state=None, chunk_size: int = 32):
    """Same result as `selective_scan_ref`, computed chunkwise (see module docstring)."""
    dtype_in = u.dtype
    u, delta, A = _prepare(u, delta, A, delta_bias, delta_softplus)
    b, e, length = u.shape
    n = A.shape[1]
    if length == 0:
        return selective_scan_ref(u.to(dtype_in), delta, A, B, C, D, z, None, False,
                                  return_last_state, initial_state)
    # chunk length: a power of two no longer than needed (a 3-token step uses K=4)
    k = 1 << max(0, math.ceil(math.log2(min(chunk_size, length))))
    n_chunks = math.ceil(length / k)
    pad = n_chunks * k - length
    # (B, E, L, N) log decays (<= 0) and inputs; padding at the end (decay 1, input 0) leaves
    # earlier outputs unchanged and the last real state is read at position length-1.
    log_a = delta[..., None] * A[:, None, :]
    bu = (delta * u)[..., None] * B.float().transpose(1, 2)[:, None]
    if pad:
        log_a = F.pad(log_a, (0, 0, 0, pad))
        bu = F.pad(bu, (0, 0, 0, pad))
    log_a = log_a.view(b, e, n_chunks, k, n)
    h = bu.view(b, e, n_chunks, k, n)
    # Hillis-Steele within each chunk, on (log decay, state) pairs: before the level with offset o,
    # h[t] holds the inputs of the last o tokens decayed to t and log_a[t] the log decay over those
    # o tokens (a short sum, <= 0: no overflow, no cancellation); each level doubles both windows.
    # At the end log_a[t] is the log decay from the chunk start through t.
    o = 1
    while o < k:
        h = h + torch.exp(log_a) * _shift(h, o, 3)
        log_a = log_a + _shift(log_a, o, 3)
        o *= 2
    s = log_a                                                            # (B, E, nC, K, N)
    # carry states across chunks: state entering chunk c, then add its decayed contribution
    h_in = (torch.zeros(b, e, n, device=u.device) if initial_state is None
            else initial_state.float())
    decay_end = torch.exp(s[:, :, :, -1])                               # (B, E, nC, N)
    carries = []
    for c in range(n_chunks):
        carries.append(h_in)
        h_in = decay_end[:, :, c] * h_in + h[:, :, c, -1]
    carry = torch.stack(carries, dim=2)                                  # (B, E, nC, N)
    h = h + torch.exp(s) * carry[:, :, :, None]
    h = h.reshape(b, e, n_chunks * k, n)[:, :, :length]
    y = torch.einsum("beln,bnl->bel", h, C.float())
    out = _finish(y, u, D, z, dtype_in)
    if return_last_state:
        return out, h[:, :, -1]
    return out


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------
class MambaMixer(nn.Module):
    """The Mamba block's mixer, with mamba-ssm `Mamba`'s parameters and initialisation.

    `forward(x, conv_state=None, ssm_state=None)` runs a chunk of L tokens in parallel, seeded with
    the states when given; it returns y (B, L, D), or (y, conv_state, ssm_state) when states are
    given (conv_state (B, E, W): the last W conv inputs; ssm_state (B, E, N), fp32).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, conv_bias: bool = True,
                 bias: bool = False, kernel: str = "auto", scan: str = "auto",
                 scan_chunk: int = 32):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.kernel = kernel
        self.scan = scan
        self.scan_chunk = scan_chunk
        self.last_impl = "torch-sequential"
        e = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * e, bias=bias)
        self.conv1d = nn.Conv1d(e, e, kernel_size=d_conv, groups=e, padding=d_conv - 1,
                                bias=conv_bias)
        self.x_proj = nn.Linear(e, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, e, bias=True)
        # mamba-ssm's init: dt_proj weight uniform(+-rank^-0.5 * scale); bias = softplus^-1 of a
        # step size log-uniform in [dt_min, dt_max]; S4D-real A = -(1..N); D = 1.
        std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(e) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(e, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D = nn.Parameter(torch.ones(e))
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_proj = nn.Linear(e, d_model, bias=bias)

    # -- helpers ---------------------------------------------------------------------------
    def _use_kernels(self, x: torch.Tensor) -> bool:
        if self.kernel == "torch" or not x.is_cuda:
            if self.kernel == "cuda" and not x.is_cuda:
                raise RuntimeError("mamba_kernel='cuda' needs a CUDA tensor; use 'auto' or 'torch'")
            return False
        has = "selective_scan_fn" in mamba_kernels()
        if self.kernel == "cuda" and not has:
            raise RuntimeError("mamba_kernel='cuda' but mamba_ssm's selective_scan_fn does not import "
                               "here; install the 'gpu' extra or use mamba_kernel='auto'")
        return has

    def _ssm_inputs(self, xc: torch.Tensor):
        """xc (B, E, L) conv output -> delta (B, E, L) without bias, B (B, N, L), C (B, N, L)."""
        x_dbl = self.x_proj(xc.transpose(1, 2))                            # (B, L, R + 2N)
        dt, bm, cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2)            # bias added in the scan
        return delta, bm.transpose(1, 2).contiguous(), cm.transpose(1, 2).contiguous()

    def _use_numba(self, x: torch.Tensor) -> bool:
        """The numba CPU path runs for scan "numba", and for "auto" on a CPU in fp32 when numba is
        importable (mamba-ssm's kernels, when they apply, come first)."""
        if self.scan not in ("auto", "numba"):
            return False
        if self.scan == "auto" and (x.is_cuda or x.dtype != torch.float32
                                    or self.in_proj.weight.dtype != torch.float32):
            return False
        from . import _mamba_cpu

        if self.scan == "numba":
            if x.device.type != "cpu":
                raise RuntimeError(f"mamba_scan='numba' runs on a CPU; the input is on {x.device}")
            if not _mamba_cpu.available():
                raise RuntimeError("mamba_scan='numba' but the numba kernels are unavailable here (is "
                                   'numba installed? pip install -e ".[models]"); use mamba_scan="auto"')
            return True
        return _mamba_cpu.available()

    def _forward_numba(self, x, conv_state, ssm_state):
        from . import _mamba_cpu

        xz = self.in_proj(x)                                               # (B, L, 2E)
        prev = None if conv_state is None else conv_state[..., 1:].transpose(1, 2)   # (B, W-1, E)
        y, new_ssm = _mamba_cpu.mamba_inner_numba(
            xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
            self.dt_proj.bias, self.A_log, self.D, prev, ssm_state, self.scan_chunk)
        self.last_impl = "numba"
        out = self.out_proj(y.to(x.dtype))
        if conv_state is None:
            return out
        xcat = torch.cat([conv_state, xz[..., :self.d_inner].transpose(1, 2).to(conv_state.dtype)], -1)
        return out, xcat[..., -self.d_conv:].contiguous(), new_ssm

    # -- parallel (chunk) path ---------------------------------------------------------------
    def forward(self, x: torch.Tensor, conv_state: torch.Tensor | None = None,
                ssm_state: torch.Tensor | None = None):
        b, length, _ = x.shape
        stateful = conv_state is not None
        cuda_kernels = not stateful and self._use_kernels(x)   # raises for mamba_kernel="cuda" on a CPU
        if not cuda_kernels and self._use_numba(x):
            return self._forward_numba(x, conv_state, ssm_state)
        xz = self.in_proj(x).transpose(1, 2)                               # (B, 2E, L)
        xi, z = xz.chunk(2, dim=1)                                         # (B, E, L) each
        a = -torch.exp(self.A_log.float())                                 # (E, N)
        w = self.conv1d.weight                                             # (E, 1, W)
        if cuda_kernels:
            kern = mamba_kernels()
            if "causal_conv1d_fn" in kern:
                xc = kern["causal_conv1d_fn"](xi.contiguous(), w.squeeze(1), self.conv1d.bias,
                                              activation="silu")
            else:
                xc = F.silu(self.conv1d(xi)[..., :length])
            delta, bm, cm = self._ssm_inputs(xc)
            y = kern["selective_scan_fn"](xc.contiguous(), delta.contiguous(), a, bm, cm,
                                          self.D.float(), z=z.contiguous(),
                                          delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
            self.last_impl = "mamba_ssm"
            return self.out_proj(y.transpose(1, 2))
        # causal depthwise conv over [previous W-1 inputs | chunk]; zeros when there is no state
        if stateful:
            prev = conv_state[..., 1:].to(xi.dtype)
        else:
            prev = xi.new_zeros(b, self.d_inner, self.d_conv - 1)
        xcat = torch.cat([prev, xi], dim=-1)                               # (B, E, W-1+L)
        xc = F.silu(F.conv1d(xcat, w.to(xi.dtype), None if self.conv1d.bias is None
                             else self.conv1d.bias.to(xi.dtype), groups=self.d_inner))
        delta, bm, cm = self._ssm_inputs(xc)
        # CPU: the sequential scan keeps its (B, E, N) working set in cache and beats the chunked
        # scan, which streams several (B, E, L, N) tensors through memory (measured ~4x on 2 cores
        # at B=16, E=256, L=150); on a GPU the chunked scan avoids L sequential kernel launches.
        chunked = self.scan == "chunked" or (self.scan == "auto" and x.is_cuda)
        kw = dict(z=z, delta_bias=self.dt_proj.bias, delta_softplus=True,
                  return_last_state=stateful, initial_state=ssm_state)
        if chunked:
            res = selective_scan_parallel(xc, delta, a, bm, cm, self.D, chunk_size=self.scan_chunk, **kw)
        else:
            res = selective_scan_ref(xc, delta, a, bm, cm, self.D, **kw)
        self.last_impl = "torch-chunked" if chunked else "torch-sequential"
        if not stateful:
            return self.out_proj(res.transpose(1, 2))
        y, new_ssm = res
        new_conv = xcat[..., -self.d_conv:] if xcat.shape[-1] >= self.d_conv else F.pad(
            xcat, (self.d_conv - xcat.shape[-1], 0))
        return self.out_proj(y.transpose(1, 2)), new_conv.to(conv_state.dtype), new_ssm

    # -- recurrent path ----------------------------------------------------------------------
    def allocate_inference_cache(self, batch_size: int, device=None, dtype=None):
        """(conv_state (B, E, W), ssm_state (B, E, N) fp32), zeros."""
        device = self.out_proj.weight.device if device is None else device
        dtype = self.conv1d.weight.dtype if dtype is None else dtype
        return (torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
                torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                            dtype=torch.float32))

    def step(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        """x (B, l, D) -> (y (B, l, D), conv_state, ssm_state); l == 1 uses the one-token update,
        l > 1 the parallel scan seeded with the states. States are returned, not updated in place."""
        if x.shape[1] != 1:
            return self.forward(x, conv_state, ssm_state)
        dtype = x.dtype
        xi, z = self.in_proj(x[:, 0]).chunk(2, dim=-1)                     # (B, E) each
        conv_state = torch.cat([conv_state[..., 1:], xi[..., None].to(conv_state.dtype)], dim=-1)
        xc = (conv_state * self.conv1d.weight[:, 0].to(conv_state.dtype)).sum(-1)
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias
        xc = F.silu(xc).to(dtype)                                          # (B, E)
        dt, bm, cm = torch.split(self.x_proj(xc), [self.dt_rank, self.d_state, self.d_state], -1)
        delta = F.softplus((dt @ self.dt_proj.weight.t()).float() + self.dt_proj.bias.float())
        a = -torch.exp(self.A_log.float())
        ssm_state = (torch.exp(delta[..., None] * a) * ssm_state
                     + (delta * xc.float())[..., None] * bm.float()[:, None, :])
        y = torch.einsum("ben,bn->be", ssm_state, cm.float()) + self.D.float() * xc.float()
        y = (y * F.silu(z.float())).to(dtype)
        return self.out_proj(y)[:, None], conv_state, ssm_state


def _norm(norm: nn.Module, h: torch.Tensor, fast: bool) -> torch.Tensor:
    """norm(h); on the numba path an RMSNorm runs as one fused kernel (forward and backward)."""
    if fast and isinstance(norm, nn.RMSNorm):
        from ._mamba_cpu import rms_norm_numba

        return rms_norm_numba(h, norm).to(norm.weight.dtype)
    return norm(h.to(norm.weight.dtype))


class MambaBlock(nn.Module):
    """Pre-norm residual block, as mamba-ssm's Block in MixerModel with d_intermediate 0:
    h <- h + mixer(norm(h)). The residual stream stays in fp32 (residual_in_fp32)."""

    def __init__(self, d_model: int, mixer: MambaMixer, eps: float = 1e-5, rms_norm: bool = True):
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=eps) if rms_norm else nn.LayerNorm(d_model, eps=eps)
        self.mixer = mixer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mixer(_norm(self.norm, h, self.mixer._use_numba(h)))


@dataclass
class MambaState:
    """Recurrent state of a MambaBackbone: conv (n_layers, B, E, W), ssm (n_layers, B, E, N) fp32."""

    conv: torch.Tensor
    ssm: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.conv.shape[1]

    def reset(self, done: torch.Tensor) -> "MambaState":
        """A new state with the rows where done (B,) bool is True zeroed (a new episode starts)."""
        keep = (~done.to(torch.bool)).to(self.conv.device)
        return MambaState(self.conv * keep[None, :, None, None].to(self.conv.dtype),
                          self.ssm * keep[None, :, None, None].to(self.ssm.dtype))


class MambaBackbone(nn.Module):
    """Stack of Mamba blocks + final RMSNorm (mamba-ssm MixerModel without the embedding).

    forward(x (B, L, D), output_hidden_states=False) -> y (B, L, D), or (y, hidden) where hidden[i]
    is the residual stream after block i (before the final norm), as the registry specifies.
    init_state(batch_size) -> MambaState; step(x (B, l, D), state) -> (y (B, l, D), state).
    Config fields read: d_model, n_layers, mamba_d_state, mamba_d_conv, mamba_expand, and optionally
    mamba_kernel ("auto" | "torch" | "cuda": mamba-ssm kernels on CUDA when importable / never /
    required), mamba_scan ("auto" | "numba" | "chunked" | "sequential"; auto = numba on a CPU in
    fp32 when numba imports, else chunked on CUDA and sequential on a CPU; see the module
    docstring), mamba_scan_chunk (int, 32: chunk of the chunked scan, checkpoint spacing of the
    numba backward), norm_eps (1e-5).
    """

    def __init__(self, cfg: Any):
        super().__init__()
        d, n_layers = int(cfg.d_model), int(cfg.n_layers)
        kernel = getattr(cfg, "mamba_kernel", "auto")
        if kernel not in ("auto", "torch", "cuda"):
            raise ValueError(f"mamba_kernel={kernel!r}: expected 'auto', 'torch' or 'cuda'")
        scan = getattr(cfg, "mamba_scan", "auto")
        if scan not in ("auto", "numba", "chunked", "sequential"):
            raise ValueError(f"mamba_scan={scan!r}: expected 'auto', 'numba', 'chunked' or 'sequential'")
        chunk = int(getattr(cfg, "mamba_scan_chunk", 32))
        if chunk < 1:
            raise ValueError(f"mamba_scan_chunk={chunk}: expected a positive int")
        if d < 1 or n_layers < 1:
            raise ValueError(f"d_model={d}, n_layers={n_layers}: both must be positive")
        eps = float(getattr(cfg, "norm_eps", 1e-5))
        self.d_model, self.n_layers = d, n_layers
        self.layers = nn.ModuleList(
            MambaBlock(d, MambaMixer(d, d_state=int(getattr(cfg, "mamba_d_state", 16)),
                                     d_conv=int(getattr(cfg, "mamba_d_conv", 4)),
                                     expand=int(getattr(cfg, "mamba_expand", 2)),
                                     kernel=kernel, scan=scan, scan_chunk=chunk), eps=eps)
            for _ in range(n_layers))
        self.norm_f = nn.RMSNorm(d, eps=eps)
        self._init_weights()
        self._logged_impl: str | None = None
        self._stepper = None  # _mamba_cpu.MambaStepper, made on the first fused step

    def _init_weights(self) -> None:
        # mamba-ssm MixerModel._init_weights: Linear biases zero (except dt_proj's), and out_proj
        # rescaled by 1/sqrt(n_layers) (one residual per layer, GPT-2 scheme).
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
        for layer in self.layers:
            p = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            with torch.no_grad():
                p /= math.sqrt(self.n_layers)

    @property
    def scan_impl(self) -> str:
        """Which path ran last: "mamba_ssm" (CUDA kernels), "numba" (CPU numba scan/conv with its
        backward), "numba-step" (fused numba recurrent step), "torch-chunked", "torch-sequential"
        (pure-torch scans) or "torch-step" (one-token torch recurrent update)."""
        return self.layers[0].mixer.last_impl

    def _note_impl(self) -> None:
        if self.scan_impl != self._logged_impl:
            self._logged_impl = self.scan_impl
            log.info("MambaBackbone: selective scan path = %s", self.scan_impl)

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False):
        h = x
        hidden = []
        for layer in self.layers:
            h = layer(h)
            hidden.append(h)
        y = _norm(self.norm_f, h, self.layers[0].mixer._use_numba(h))
        self._note_impl()
        if output_hidden_states:
            return y, hidden
        return y

    def init_state(self, batch_size: int, device=None, dtype=None) -> MambaState:
        caches = [layer.mixer.allocate_inference_cache(batch_size, device, dtype)
                  for layer in self.layers]
        return MambaState(torch.stack([c for c, _ in caches]), torch.stack([s for _, s in caches]))

    def _numba_step_applies(self, x: torch.Tensor, state: MambaState) -> bool:
        """The fused numba step runs for few rows (B * l <= MAX_STEP_ROWS) on a CPU in fp32
        without autograd, when mamba_scan is "auto" or "numba" and the kernels compiled here."""
        mixer = self.layers[0].mixer
        if mixer.scan not in ("auto", "numba") or x.device.type != "cpu":
            return False
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return False
        if x.dtype != torch.float32 or state.conv.dtype != torch.float32 or state.ssm.dtype != torch.float32 \
                or mixer.in_proj.weight.dtype != torch.float32:
            return False
        if not isinstance(self.norm_f, nn.RMSNorm) or not all(isinstance(blk.norm, nn.RMSNorm) for blk in self.layers):
            return False
        from . import _mamba_cpu

        return x.shape[0] * x.shape[1] <= _mamba_cpu.MAX_STEP_ROWS and _mamba_cpu.available()

    def step(self, x: torch.Tensor, state: MambaState):
        """Advance by l >= 1 tokens: x (B, l, D) -> (y (B, l, D), state). Use the returned state:
        the fused numba step ("numba-step") updates the given state's tensors in place and returns
        it, the other paths return new tensors."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"step: x has shape {tuple(x.shape)}, expected (B, l, {self.d_model})")
        if x.shape[0] != state.batch_size:
            raise ValueError(f"step: x has batch {x.shape[0]} but the state was made for "
                             f"{state.batch_size}")
        if self._numba_step_applies(x, state):
            if not (state.conv.is_contiguous() and state.ssm.is_contiguous()):
                state = MambaState(state.conv.contiguous(), state.ssm.contiguous())
            if self._stepper is None:
                from ._mamba_cpu import MambaStepper

                self._stepper = MambaStepper(self)
            y = self._stepper.step(x, state.conv, state.ssm)
            self.layers[0].mixer.last_impl = "numba-step"
            return y, state
        h = x
        convs, ssms = [], []
        for i, layer in enumerate(self.layers):
            out, c, s = layer.mixer.step(layer.norm(h.to(layer.norm.weight.dtype)),
                                         state.conv[i], state.ssm[i])
            h = h + out
            convs.append(c)
            ssms.append(s)
        self.layers[0].mixer.last_impl = "torch-step" if x.shape[1] == 1 else self.scan_impl
        return self.norm_f(h.to(self.norm_f.weight.dtype)), MambaState(torch.stack(convs),
                                                                      torch.stack(ssms))
