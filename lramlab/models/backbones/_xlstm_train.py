"""CPU training path of the xLSTM backbone: fused C++ kernels with hand-written backward passes.

The package's CPU training path is slow for reasons unrelated to the maths: the sLSTM "vanilla"
backend is a Python loop over time with autograd (copies of the recurrent kernel per step), the
mLSTM's 4x4 head-wise q/k/v projections run as bmm over 256 tiny matrices, and the gate
projections' backward is a K=4 matmul. This module computes the same functions over the SAME
parameters (no layout of its own) with a few fused kernels (source in `_xlstm_cpu_src`):

  mLSTM block:  LayerNorm -> proj_up (torch) -> [conv + SiLU + q/k/v + gates -> cell -> head-wise
                norm + skip + SiLU(z) gate] -> proj_down (torch) + residual. One autograd.Function
                (`MLSTMCore`) from `up` to the gated output; the cell is block-causal parallel for
                L <= 4 DH and chunkwise (DH x DH states between chunks) beyond (`cell_plan`).
  sLSTM block:  LayerNorm -> [conv + SiLU, head-wise gate projections, recurrence and its BPTT,
                head-wise GroupNorm] (`SLSTMCore`) -> residual -> gated FFN (torch).
Matrix products inside the kernels call the BLAS torch links (MKL's sgemm_) with leading
dimensions; the loops around them are vectorised with ATen's Vectorized.

Each backward mirrors the reference's autograd rules (tie splitting of maximum/minimum, argmax
routing of max(dim)), so gradients equal the reference to fp32 rounding; tests prove it in fp64.
The kernels are compiled once per machine on first use (torch.utils.cpp_extension, gcc; ~1 min)
into ~/.cache/lramlab/kernels (or $LRAMLAB_KERNEL_CACHE) and loaded from there afterwards.
`choose_path` decides per forward whether they run (`LRAMConfig.xlstm_kernel`); `tune_malloc`
makes glibc reuse freed memory during training.

Shape letters: B batch, L tokens, D width, I mLSTM inner width, NH heads, DH head dim,
BH = B * NH, N = B * L.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_EXT = None
_ERR: Optional[str] = None
_CFLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno"]


def _cpu_id() -> str:
    """CPU model and flags: -march=native code must not be reused on another CPU type."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def cache_dir() -> Path:
    return Path(os.environ.get("LRAMLAB_KERNEL_CACHE", Path.home() / ".cache" / "lramlab" / "kernels"))


def _import_built(name: str, so: Path):
    """The module of an already built `so`, or None (absent, or unreadable: being linked by another
    process). The build's name hashes the source, flags, torch version and CPU, so a file with that
    name is this build: importing it directly skips torch's ninja step, which was seen to recompile
    (~1 min) in every new process on a machine where two environments' build commands alternate."""
    if not so.is_file():
        return None
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location(name, so)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except (ImportError, OSError):
        return None
    return mod


def load_kernels():
    """The compiled extension module; builds it on first use. Raises RuntimeError if it cannot."""
    global _EXT, _ERR
    if _EXT is not None:
        return _EXT
    if _ERR is not None:
        raise RuntimeError(_ERR)
    from ._xlstm_cpu_src import SOURCE

    key = hashlib.sha256("\0".join([SOURCE, torch.__version__, " ".join(_CFLAGS), _cpu_id()]).encode()).hexdigest()
    name = f"lramlab_xlstm_cpu_{key[:16]}"
    build = cache_dir() / name
    try:
        from torch.utils.cpp_extension import load

        build.mkdir(parents=True, exist_ok=True)
        if not (build / f"{name}.so").exists():
            log.warning("xLSTM: compiling the CPU training kernels into %s (first use on this machine, "
                        "about a minute)", build)
        src = build / "xlstm_cpu.cpp"
        if not src.exists() or src.read_text() != SOURCE:
            tmp = build / f"xlstm_cpu.cpp.{os.getpid()}.tmp"
            tmp.write_text(SOURCE)
            os.replace(tmp, src)
        _EXT = _import_built(name, build / f"{name}.so")
        if _EXT is None:
            _EXT = load(name, sources=[str(src)], extra_cflags=_CFLAGS, build_directory=str(build), verbose=False)
    except Exception as err:  # noqa: BLE001 - no compiler, no headers, a failed build: all mean "unavailable"
        _ERR = (f"the xLSTM CPU training kernels could not be built in {build} ({type(err).__name__}: "
                f"{str(err).strip()[-500:]})")
        raise RuntimeError(_ERR) from err
    return _EXT


_MALLOC_TUNED: Optional[bool] = None


def tune_malloc() -> bool:
    """Make glibc keep freed memory for reuse (process-wide; True if it took effect).

    A training step allocates and frees the same large buffers every update. By default glibc
    serves blocks above its mmap threshold with fresh mmaps and trims freed heap tops, so each step
    page-faults its memory back in (measured on the 2-core dev VM: ~2 us per 4 KiB page, ~10 % of a
    16M xLSTM update, ~1 % of DT's). Setting M_MMAP_THRESHOLD to its 32 MiB maximum and
    M_TRIM_THRESHOLD to 1 GiB keeps that memory in the heap; the process's resident size stays at
    its peak. Called once by the first fused-kernel training forward and by `lramlab bench train`;
    LRAMLAB_NO_MALLOC_TUNING=1 turns it off. No-op off glibc."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED is not None:
        return _MALLOC_TUNED
    _MALLOC_TUNED = False
    if os.environ.get("LRAMLAB_NO_MALLOC_TUNING") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):
        ok = False
    _MALLOC_TUNED = bool(ok)
    if ok:
        log.info("xLSTM: glibc malloc keeps freed memory for reuse (M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB)")
    return _MALLOC_TUNED


def kernels_available() -> tuple[bool, str]:
    """(True, "") when the kernels load (building them if needed), else (False, why)."""
    try:
        load_kernels()
        return True, ""
    except RuntimeError as err:
        return False, str(err)


# --------------------------------------------------------------------------------------------
# autograd Functions
# --------------------------------------------------------------------------------------------
class MLSTMCore(torch.autograd.Function):
    """mLSTM layer from its up-projection to the input of its down-projection.

    up (B, L, 2I) = [x_mlstm | z]; conv_w (I, K), conv_b (I); wq, wk, wv (I/P, P, P) head-wise
    blocks; wi, wf (NH, 3I), bi, bf (NH) gate projections over cat(q, k, v); onw (I) the
    MultiHeadLayerNorm weight (scale 1 + onw); skip (I). Returns (B, L, I)."""

    @staticmethod
    def forward(ctx, up, conv_w, conv_b, wq, wk, wv, wi, bi, wf, bf, onw, skip, nh: int, on_eps: float,
                cell_eps: float):
        ext = load_kernels()
        chunk, chunkwise = cell_plan(up.shape[1], up.shape[2] // 2 // nh)
        up, conv_w, conv_b = up.contiguous(), conv_w.contiguous(), conv_b.contiguous()
        wq, wk, wv, onw, skip = (t.contiguous() for t in (wq, wk, wv, onw, skip))
        wg, bg = torch.cat([wi, wf]).contiguous(), torch.cat([bi, bf]).contiguous()
        xc, qkv, g = ext.mlstm_pre_fwd(up, conv_w, conv_b, wq, wk, wv, wg, bg)
        h, *cell = ext.mlstm_cell_fwd(qkv, g, nh, cell_eps, chunk, chunkwise)
        hs, mean, rstd = ext.mlstm_post_fwd(h, up, xc, onw, skip, on_eps, nh)
        ctx.save_for_backward(up, conv_w, wq, wk, wv, wg, onw, skip, xc, qkv, g, h, mean, rstd, *cell)
        ctx.nh, ctx.cell_eps, ctx.chunk, ctx.chunkwise = nh, cell_eps, chunk, chunkwise
        return hs

    @staticmethod
    def backward(ctx, dhs):
        ext = load_kernels()
        up, conv_w, wq, wk, wv, wg, onw, skip, xc, qkv, g, h, mean, rstd, *cell = ctx.saved_tensors
        nh = ctx.nh
        dhs = dhs.contiguous()
        dup, dh, donw, dskip = ext.mlstm_post_bwd(dhs, h, up, xc, onw, skip, mean, rstd, nh)
        dqkv, dg = ext.mlstm_cell_bwd(dh, h, qkv, g, *cell, nh, ctx.cell_eps, ctx.chunk, ctx.chunkwise)
        dcw, dcb, dwq, dwk, dwv, dwg, dbg = ext.mlstm_pre_bwd(dup, dqkv, dg, dhs, up, xc, qkv, skip, conv_w, wq, wk,
                                                              wv, wg)
        return (dup, dcw, dcb, dwq, dwk, dwv, dwg[:nh], dbg[:nh], dwg[nh:], dbg[nh:], donw, dskip, None, None,
                None)


# mLSTM cell plan: the parallel form (block-causal, CELL_CHUNK rows per block) while the sequence is
# short against the head dim, the chunkwise form (CHUNKWISE_CHUNK tokens per chunk) beyond; tests
# shrink the chunks to cross their boundaries. None in CELL_FORM = choose by shape.
CELL_CHUNK = 48
CHUNKWISE_CHUNK: Optional[int] = None  # None: the head dim, within [32, 64]
CELL_FORM: Optional[str] = None  # "parallel" | "chunkwise" | None


def cell_plan(L: int, DH: int) -> tuple[int, bool]:
    """(chunk size, chunkwise?) for a sequence of L tokens and head dim DH. The parallel form costs
    ~L^2/2 * DH per head, the chunkwise one ~L * (c/2 + 2 DH) * DH: chunkwise pays off once L
    exceeds a few head dims."""
    chunkwise = (L > 4 * DH) if CELL_FORM is None else CELL_FORM == "chunkwise"
    if not chunkwise:
        return CELL_CHUNK, False
    return (CHUNKWISE_CHUNK or min(64, max(32, DH))), True


class SLSTMCore(torch.autograd.Function):
    """sLSTM layer (vanilla backend semantics, no dropout) from its normed input to the output of its
    head-wise GroupNorm: causal conv + SiLU, head-wise gate projections, recurrence, GroupNorm.

    x (B, L, D); conv_w (D, K), conv_b (D); wi, wf, wz, wo (NH, DH, DH) the gates' head-wise weights
    (the package's `fgate` computes gate i, `igate` gate f); R (NH, 4DH, DH) and bias (4 NH DH) in the
    vanilla backend's internal layout; gnw (D) the GroupNorm weight (scale 1 + gnw). Returns (B, L, D)."""

    @staticmethod
    def forward(ctx, x, conv_w, conv_b, wi, wf, wz, wo, R, bias, gnw, eps: float):
        ext = load_kernels()
        x, conv_w, conv_b, R, bias, gnw = (t.contiguous() for t in (x, conv_w, conv_b, R, bias, gnw))
        W4 = torch.stack([wi, wf, wz, wo]).contiguous()
        out, xc, wx, st, allz, gm, gr = ext.slstm_fwd(x, conv_w, conv_b, W4, R, bias, gnw, eps)
        ctx.save_for_backward(x, xc, conv_w, W4, R, gnw, wx, st, allz, gm, gr)
        return out

    @staticmethod
    def backward(ctx, dout):
        ext = load_kernels()
        x, xc, conv_w, W4, R, gnw, wx, st, allz, gm, gr = ctx.saved_tensors
        dx, dcw, dcb, dW4, dR, dbias, dgnw = ext.slstm_bwd(dout.contiguous(), x, xc, conv_w, W4, R, gnw, wx, st, allz,
                                                          gm, gr)
        return dx, dcw, dcb, dW4[0], dW4[1], dW4[2], dW4[3], dR, dbias, dgnw, None


# --------------------------------------------------------------------------------------------
# blocks over the package's modules (xLSTMBlock with an mLSTMLayer or an sLSTMLayer)
# --------------------------------------------------------------------------------------------
def _norm(x: torch.Tensor, ln) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), ln.weight_proxy, ln.bias, ln.eps)


def _ffn(block, x: torch.Tensor) -> torch.Tensor:
    """The block's gated feed-forward (the package's GatedFeedForward without its p=0 dropout)."""
    if block.ffn is None:
        return x
    ffn = block.ffn
    gate, up = F.linear(_norm(x, block.ffn_norm), ffn.proj_up.weight, ffn.proj_up.bias).chunk(2, dim=-1)
    return x + F.linear(ffn.act_fn(gate) * up, ffn.proj_down.weight, ffn.proj_down.bias)


def mlstm_block(block, x: torch.Tensor) -> torch.Tensor:  # x (B, L, D) -> (B, L, D)
    layer = block.xlstm
    cell = layer.mlstm_cell
    up = layer.proj_up(_norm(x, block.xlstm_norm))
    hs = MLSTMCore.apply(up, layer.conv1d.conv.weight[:, 0, :], layer.conv1d.conv.bias, layer.q_proj.weight,
                         layer.k_proj.weight, layer.v_proj.weight, cell.igate.weight, cell.igate.bias,
                         cell.fgate.weight, cell.fgate.bias, cell.outnorm.weight, layer.learnable_skip,
                         cell.config.num_heads, cell.outnorm.eps, 1e-6)
    return _ffn(block, x + layer.proj_down(hs))


def slstm_block(block, x: torch.Tensor) -> torch.Tensor:  # x (B, L, D) -> (B, L, D)
    layer = block.xlstm
    cell = layer.slstm_cell
    # package quirk kept: gate i is computed by `fgate`, gate f by `igate`
    out = SLSTMCore.apply(_norm(x, block.xlstm_norm), layer.conv1d.conv.weight[:, 0, :], layer.conv1d.conv.bias,
                          layer.fgate.weight, layer.igate.weight, layer.zgate.weight, layer.ogate.weight,
                          cell._recurrent_kernel_, cell._bias_, layer.group_norm.weight, layer.group_norm.eps)
    return _ffn(block, x + out)


def choose_path(backbone, x: torch.Tensor) -> str:
    """The training path of an `XLSTMBackbone` for input `x`: "fast" (these kernels) or "reference".

    `LRAMConfig.xlstm_kernel` "auto" takes "fast" on a CPU in fp32/fp64 without autocast when the
    kernels build and fit the blocks, else "reference" (logged once per reason); "fast" raises
    where it cannot run; "reference" is always the package's path."""
    want = backbone.cfg.xlstm_kernel
    if want == "reference":
        return "reference"
    why = None
    if x.device.type != "cpu":
        why = f"input on {x.device.type} (the fused kernels are CPU kernels; a GPU uses the package's)"
    elif x.dtype not in (torch.float32, torch.float64):
        why = f"dtype {x.dtype} (the fused kernels take float32/float64)"
    elif torch.is_autocast_enabled("cpu"):
        why = "CPU autocast is on"
    else:
        if backbone._fast_unsupported is None:  # "" once the kernels are known to build and fit
            ok, err = kernels_available()
            backbone._fast_unsupported = (check_supported(backbone.stack) or "") if ok else err
        why = backbone._fast_unsupported or None
    if why is None:
        return "fast"
    if want == "fast":
        raise RuntimeError(f"LRAMConfig.xlstm_kernel='fast' cannot run here: {why}; use 'auto' or 'reference'")
    if why not in backbone._fast_warned:
        backbone._fast_warned.add(why)
        log.warning("xLSTM: using the reference training path: %s", why)
    return "reference"


def check_supported(stack) -> Optional[str]:
    """None if every block of `stack` fits the fused kernels, else why not (they assume the
    configuration lramlab builds: no head-wise/gate biases beyond the package defaults, no dropout)."""
    for i, block in enumerate(stack.blocks):
        layer = block.xlstm
        if hasattr(layer, "mlstm_cell"):
            if any(p.bias is not None for p in (layer.q_proj, layer.k_proj, layer.v_proj)):
                return f"block {i}: q/k/v projections with bias"
            if layer.conv1d.conv is None or layer.conv1d.conv.bias is None:
                return f"block {i}: mLSTM without a biased causal conv"
            if layer.config.dropout:
                return f"block {i}: dropout"
        else:
            cfg = layer.config
            if cfg.conv1d_kernel_size == 0 or cfg.dropout or cfg.function != "slstm" or layer.conv1d.conv.bias is None:
                return f"block {i}: sLSTM with kernel_size={cfg.conv1d_kernel_size}, dropout={cfg.dropout}"
        if block.ffn is not None and (block.ffn.config.dropout or block.ffn.config.ff_type != "ffn_gated"):
            return f"block {i}: feed-forward with dropout or of type {block.ffn.config.ff_type!r}"
            if cfg.backend != "vanilla":
                return f"block {i}: sLSTM backend {cfg.backend!r} (the fused kernel uses the vanilla layout)"
    return None
