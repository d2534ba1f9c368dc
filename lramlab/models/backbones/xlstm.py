"""xLSTM backbone: the `xlstm` package's `xLSTMBlockStack` plus lean CPU paths for training and stepping.

Training (the parallel `forward`) has two paths over the same parameters (`LRAMConfig.xlstm_kernel`
chooses per call, `self.forward_kernel` says which ran): "fast", lramlab's fused CPU kernels with
hand-written backward passes (`_xlstm_train`, C++ in `_xlstm_cpu_src`, built on first use), the
default ("auto") on a CPU in fp32/fp64; and "reference", the package's blocks (mLSTM parallel form
in torch, sLSTM on the "vanilla" backend on a CPU or its CUDA kernel on a GPU), the default on a GPU,
under autocast, or where the kernels cannot be built. Both are tested equal, gradients included.
Inference has two paths over the SAME
parameters (STYLE.md §6; `LRAMConfig.xlstm_step_kernel` chooses, `self.step_kernel` says which ran):
  - "fast": lramlab's own step (`_mlstm_chunk_` / `_mlstm_chunk`, `_slstm_steps`). It takes l >= 1
    tokens per call: the mLSTM cell runs in its chunkwise form (carried state + intra-chunk
    attention-like matrix, the same stabiliser as the recurrent form), so a whole timestep of 3
    tokens is one call and every weight matrix is read once per timestep, not once per token; the
    (DH x DH) states are updated in place. sLSTM is recurrent by nature: its projections are batched
    over the l tokens, only the cell loops. On a CPU with numba (`self.step_impl = "numba"`, the
    default; "torch" = torch ops only) small steps (B*l <= 12 rows, l <= 16) run on the kernels of
    `_xlstm_step`: bandwidth-bound small-M projections and one fused call per mLSTM/sLSTM layer
    core; same fp32 arithmetic up to summation order. Optionally (`xlstm_step_weights="float16"`,
    CPU) the big projections use fbgemm fp16-packed weights. Long inputs (a prefill) go in pieces.
  - "reference": the package's own `xLSTMBlockStack.step`, one token at a time.
Both are tested equal to the parallel forward.

sLSTM parameters live in a backend-specific internal layout (vanilla and CUDA differ, and the
bias has the same shape in both). State dicts therefore store them in the package's *external*
layout and convert on load, so a checkpoint moves between a GPU and a CPU.

Shape letters: B batch, L tokens in a sequence, l tokens in one step call, D width (embedding),
I mLSTM inner width, NH heads, DH head dim, K conv kernel size, P feed-forward width.
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..._optional import require

log = logging.getLogger(__name__)

# Longest token piece one fast `step` call processes at once (longer inputs, e.g. a prefill of a
# long context, are cut into pieces so activations stay small); a multiple of 3 (one timestep).
STEP_PIECE_TOKENS = 192
_EPS = 1e-6  # the package's mLSTM normaliser epsilon
_MAX_NUMBA_ROWS = 12  # B * l up to which the numba small-M projection kernel beats MKL
_MAX_CORE_TOKENS = 16  # longest l the fused numba mLSTM core takes (prefill pieces use torch ops)


def _xlstm_step_kernels():
    from . import _xlstm_step

    return _xlstm_step.kernels()


def _resolve_slstm_backend(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "vanilla"
    return requested


def build_block_stack(cfg):
    """The package's `xLSTMBlockStack` for a resolved LRAMConfig (backbone "xlstm").

    slstm_backend "auto" picks the CUDA kernel on a GPU machine and falls back to "vanilla"
    (logged) if the kernel cannot be built there; an explicit "cuda" fails loudly instead."""
    backend = _resolve_slstm_backend(cfg.slstm_backend) if cfg.slstm_at else "vanilla"
    try:
        return _build_block_stack(cfg, backend)
    except Exception as err:  # noqa: BLE001 - the CUDA kernel build can fail in many ways
        if backend != "cuda":
            raise
        if cfg.slstm_backend == "cuda":
            raise RuntimeError(f"LRAMConfig.slstm_backend='cuda': the xlstm sLSTM CUDA kernel could not be built "
                               f"({type(err).__name__}: {err}); use 'auto' or 'vanilla'") from err
        log.warning("xLSTM: sLSTM CUDA kernel unavailable (%s: %s); using the vanilla backend",
                    type(err).__name__, err)
        return _build_block_stack(cfg, "vanilla")


def _build_block_stack(cfg, backend: str):
    xl = require("xlstm", "the xLSTM backbone")
    mlstm = xl.mLSTMBlockConfig(
        mlstm=xl.mLSTMLayerConfig(
            conv1d_kernel_size=cfg.conv1d_kernel_size,
            qkv_proj_blocksize=cfg.qkv_proj_blocksize,
            num_heads=cfg.n_heads,
            proj_factor=cfg.mlstm_proj_factor,
        )
    )
    slstm = None
    if cfg.slstm_at:
        slstm = xl.sLSTMBlockConfig(
            slstm=xl.sLSTMLayerConfig(
                backend=backend,
                num_heads=cfg.n_heads,
                conv1d_kernel_size=cfg.conv1d_kernel_size,
                bias_init="powerlaw_blockdependent",
                # the CUDA kernel computes in this dtype; the vanilla backend follows the inputs
                dtype=cfg.dtype,
            ),
            feedforward=xl.FeedForwardConfig(proj_factor=cfg.slstm_ff_proj_factor, act_fn="gelu"),
        )
    stack_cfg = xl.xLSTMBlockStackConfig(
        mlstm_block=mlstm,
        slstm_block=slstm,
        context_length=cfg.context_tokens,
        num_blocks=cfg.n_layers,
        embedding_dim=cfg.d_model,
        slstm_at=list(cfg.slstm_at),
        add_post_blocks_norm=True,
        bias=False,
        dropout=0.0,
    )
    return xl.xLSTMBlockStack(stack_cfg)


# --------------------------------------------------------------------------------------------
# Pure functions of the fast step path
# --------------------------------------------------------------------------------------------
def _layer_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, None, eps)


def _conv_step(x: torch.Tensor, hist: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]):
    """Causal depthwise conv over l new tokens given the last K-1 inputs.

    x (B, l, C), hist (B, K-1, C), w (C, K) -> y (B, l, C), new hist (B, K-1, C).
    Same as the package's zero-left-padded nn.Conv1d when the history starts at zeros.
    """
    K = w.shape[1]
    xc = torch.cat([hist, x], dim=1)  # (B, K-1+l, C)
    l = x.shape[1]
    if l == 1:
        y = torch.einsum("bkc,ck->bc", xc, w).unsqueeze(1)
    else:
        y = (xc.unfold(1, K, 1) * w).sum(-1)  # (B, l, C, K) -> (B, l, C)
    if b is not None:
        y = y + b
    return y, xc[:, l:].clone()  # a compact copy: a view would keep the whole (K-1+l) piece alive


def _mlstm_chunk(q, k, v, ipre, fpre, C0, n0, m0, eps: float = _EPS):
    """mLSTM cell over l tokens from state (C0, n0, m0), in chunkwise form.

    q, k, v (B, NH, l, DH) with k already scaled by 1/sqrt(DH); ipre, fpre (B, NH, l);
    C0 (B, NH, DH, DH), n0 (B, NH, DH), m0 (B, NH).
    Returns h (B, NH, l, DH) and the state after the last token. With b_t = sum_{r<=t} log f_r the
    stabiliser m_t = max(b_t + m0, max_{s<=t} b_t - b_s + i_s) equals the recurrent form's m_t, so
    l=1 is exactly the package's `recurrent_step_stabilized_simple` and any l gives the same h.
    """
    logf = F.logsigmoid(fpre)
    if q.shape[2] == 1:
        logf, ipre = logf[..., 0], ipre[..., 0]  # (B, NH)
        m_new = torch.maximum(logf + m0, ipre)
        fa = torch.exp(logf + m0 - m_new)
        ia = torch.exp(ipre - m_new)
        k1, q1 = k[:, :, 0], q[:, :, 0]  # (B, NH, DH)
        C = fa[..., None, None] * C0 + (ia[..., None] * k1).unsqueeze(-1) * v[:, :, 0].unsqueeze(-2)
        n = fa[..., None] * n0 + ia[..., None] * k1
        num = (q1.unsqueeze(-2) @ C).squeeze(-2)  # (B, NH, DH)
        qn = (q1 * n).sum(-1)
        h = num / (torch.maximum(qn.abs(), torch.exp(-m_new)) + eps)[..., None]
        return h.unsqueeze(2), (C, n, m_new)
    l = q.shape[2]
    b = torch.cumsum(logf, dim=-1)  # (B, NH, l)
    log_inter = b + m0[..., None]  # weight of the carried state at token t
    log_D = b[..., :, None] - b[..., None, :] + ipre[..., None, :]  # (B, NH, l, l)
    causal = torch.ones(l, l, dtype=torch.bool, device=q.device).tril_()
    log_D = log_D.masked_fill(~causal, float("-inf"))
    m = torch.maximum(log_inter, log_D.amax(-1))  # (B, NH, l)
    D = torch.exp(log_D - m[..., None])
    w_inter = torch.exp(log_inter - m)
    S = (q @ k.transpose(-1, -2)) * D  # (B, NH, l, l)
    num = w_inter[..., None] * (q @ C0) + S @ v
    qn = w_inter * (q @ n0.unsqueeze(-1)).squeeze(-1) + S.sum(-1)
    h = num / (torch.maximum(qn.abs(), torch.exp(-m)) + eps)[..., None]
    d_last = D[..., -1, :]  # (B, NH, l): weights of the chunk's tokens in the new state
    w_last = w_inter[..., -1]
    C = w_last[..., None, None] * C0 + (k * d_last[..., None]).transpose(-1, -2) @ v
    n = w_last[..., None] * n0 + (k * d_last[..., None]).sum(-2)
    return h, (C, n, m[..., -1])


_CAUSAL: dict = {}


def _anticausal(l: int, device) -> torch.Tensor:
    """Cached (l, l) bool mask, True above the diagonal (future tokens)."""
    key = (l, str(device))
    mask = _CAUSAL.get(key)
    if mask is None:
        mask = _CAUSAL[key] = torch.ones(l, l, dtype=torch.bool, device=device).triu_(1)
    return mask


_LAZY_LIMIT = 30.0  # fold the lazy state scale back in before exp(-a) could leave fp32's range


_L2_BYTES = 256 * 1024  # state slice that stays in a core's L2 cache between its read and its update


def _mlstm_chunk_(q, k, v, ipre, fpre, Cx, m, a, eps: float = _EPS, lazy: bool = True):
    """In-place inference variant of `_mlstm_chunk` on flattened heads (BH = B * NH).

    q, k, v (BH, l, DH) with k scaled; ipre, fpre (BH, l). State, updated where it lies:
    Cx (BH, DH, DH+1) = [C | n] (n rides along as an extra value column, so one bmm reads both
    and one baddbmm updates both), m (BH,) the stabiliser, a (BH,) a lazy log-scale: the
    package's (C, n) equal exp(a) * Cx. The forget-gate decay is applied to `a` instead of
    rescaling the (DH x DH) state every step (on a CPU; `lazy=False` rescales every step), and
    folded back into Cx when a < -30. The state is read (q @ Cx) and updated (baddbmm_) slice by
    slice, each slice small enough to stay in L2 between the two, so a step streams the big
    state from memory about once. Returns h (BH, l, DH); same arithmetic as `_mlstm_chunk` up to
    rounding.
    """
    BH, l, DH = q.shape
    logf = F.logsigmoid(fpre)
    b = torch.cumsum(logf, dim=-1) if l > 1 else logf  # (BH, l)
    log_inter = b + m.unsqueeze(-1)
    log_D = (b.unsqueeze(-1) - b.unsqueeze(-2)).add_(ipre.unsqueeze(-2))
    if l > 1:
        log_D.masked_fill_(_anticausal(l, q.device), float("-inf"))  # (BH, l, l)
    m_t = torch.maximum(log_inter, log_D.amax(-1))  # (BH, l)
    D = log_D.sub_(m_t.unsqueeze(-1)).exp_()
    log_w = log_inter.sub_(m_t)  # log of the carried state's weight at token t: b_t + m0 - m_t
    a_new = a + log_w[:, -1]
    fold = not lazy or float(a_new.min()) < -_LAZY_LIMIT
    if fold:
        w_fold = torch.exp(a_new).view(BH, 1, 1)
        a_new.zero_()
    # state: [C | n] <- w_last * [C | n] + sum_s d_s k_s [v_s | 1]
    kdT = (k * (D[:, -1, :] * torch.exp(-a_new).unsqueeze(-1)).unsqueeze(-1)).transpose(1, 2).contiguous()
    v1 = torch.cat([v, v.new_ones(BH, l, 1)], dim=-1)  # (BH, l, DH+1): the ones column carries n
    step = max(1, _L2_BYTES // (Cx.shape[1] * Cx.shape[2] * Cx.element_size()))
    if step >= BH:
        out = torch.bmm(q, Cx)  # carried state's part, read before the update
        if fold:
            Cx.mul_(w_fold)
        Cx.baddbmm_(kdT, v1)
    else:
        out = q.new_empty(BH, l, DH + 1)
        for i in range(0, BH, step):
            sl = slice(i, i + step)
            torch.bmm(q[sl], Cx[sl], out=out[sl])
            if fold:
                Cx[sl].mul_(w_fold[sl])
            Cx[sl].baddbmm_(kdT[sl], v1[sl])
    S = torch.bmm(q, k.transpose(1, 2)).mul_(D)  # (BH, l, l)
    out.mul_(torch.exp(log_w.add_(a.unsqueeze(-1))).unsqueeze(-1)).baddbmm_(S, v1)  # [num | qn]
    a.copy_(a_new)
    m.copy_(m_t[:, -1])
    den = torch.maximum(out[..., DH].abs(), torch.exp(-m_t)).add_(eps)
    return out[..., :DH] / den.unsqueeze(-1)


def _slstm_steps(wx, y, c, n, m, R, bias):
    """sLSTM cell over l tokens (recurrent; only this loop is sequential).

    wx (NH, B, l, 4, DH) input pre-activations (gates i, f, z, o), state y, c, n, m (NH, B, DH),
    R (NH, DH, 4*DH) recurrent kernel (external layout), bias (NH, 1, 4, DH).
    Returns ys (NH, B, l, DH) and the new state. Mirrors the package's vanilla
    `slstm_forward_pointwise`, including m = i at a fresh state (n == 0).
    """
    NH, B, l, _, DH = wx.shape
    ys = []
    for t in range(l):
        raw = wx[:, :, t] + torch.bmm(y, R).view(NH, B, 4, DH) + bias
        iraw, fraw, zraw, oraw = raw.unbind(2)
        logfplusm = m + F.logsigmoid(fraw)
        m_new = torch.where(n == 0.0, iraw, torch.maximum(iraw, logfplusm))
        igate = torch.exp(iraw - m_new).clamp(max=1.0)
        fgate = torch.exp(logfplusm - m_new).clamp(max=1.0)
        c = fgate * c + igate * torch.tanh(zraw)
        n = fgate * n + igate
        y = torch.sigmoid(oraw) * c / n
        m = m_new
        ys.append(y)
    return torch.stack(ys, dim=2), (y, c, n, m)


def _headwise_small(x: torch.Tensor, wd: list) -> torch.Tensor:
    """Block-diagonal projection for tiny blocks (the mLSTM's 4x4 q/k/v blocks, package's
    LinearHeadwiseExpand): x (N, H, d_in), wd[d] (H, d_out) -> (N, H, d_out).

    d_in multiply-adds over (N, H, d_out) beat a bmm over H batches of 4x4 matrices."""
    out = x[..., 0:1] * wd[0]
    for d in range(1, len(wd)):
        out = out.addcmul_(x[..., d : d + 1], wd[d]) if not out.requires_grad else out + x[..., d : d + 1] * wd[d]
    return out


def _fp16_packed_linear_available() -> bool:
    try:
        w = torch.ops.quantized.linear_prepack_fp16(torch.zeros(2, 2), None)
        torch.ops.quantized.linear_dynamic_fp16(torch.zeros(1, 2), w)
        return True
    except Exception:  # noqa: BLE001 - any failure means: not available in this build
        return False


class XLSTMBackbone(nn.Module):
    """xLSTM [a:b] backbone: mLSTM blocks, sLSTM blocks at `cfg.slstm_at`, final LayerNorm."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.stack = build_block_stack(cfg)
        self.kinds = ["s" if i in cfg.slstm_at else "m" for i in range(cfg.n_layers)]
        self.slstm_backend = (self.stack.blocks[cfg.slstm_at[0]].xlstm.slstm_cell.config.backend
                              if cfg.slstm_at else None)  # what was built (auto may fall back)
        self.step_kernel = cfg.xlstm_step_kernel
        self.n_heads = cfg.n_heads
        self.step_weights = cfg.xlstm_step_weights
        # fast-path implementation on a CPU: "numba" (small-M kernels from _xlstm_step, when numba is
        # installed) or "torch" (torch ops only). Same arithmetic up to summation order.
        self.step_impl = "numba"
        if self.step_weights == "float16" and not _fp16_packed_linear_available():
            raise ValueError("LRAMConfig.xlstm_step_weights='float16' needs torch's fbgemm fp16 linear ops, "
                             "which this torch build lacks; use 'float32'")
        # parallel (training) forward: "fast" | "reference" chosen per call by `forward_path`;
        # `forward_kernel` says which ran last (None before the first forward)
        self.forward_kernel: Optional[str] = None
        self._fast_unsupported: Optional[str] = None  # "" once the fused kernels are known to fit
        self._fast_warned: set = set()
        self._fast_cache: dict = {}  # step_impl -> (parameter versions, weights)
        self._params: Optional[list] = None
        self.register_state_dict_post_hook(_slstm_to_external)
        self.register_load_state_dict_pre_hook(_slstm_from_external)

    # ---------------------------------------------------------------- parallel (training)
    def _ensure_causal_mask(self, L: int, device) -> None:
        # The package's mLSTM cell keeps a (context, context) causal mask buffer and fails on a
        # longer sequence; grow it (it is not saved in state dicts).
        for block, kind in zip(self.stack.blocks, self.kinds):
            if kind == "m":
                cell = block.xlstm.mlstm_cell
                if cell.causal_mask.shape[-1] < L:
                    cell.causal_mask = torch.ones(L, L, dtype=torch.bool, device=device).tril_()

    def forward_path(self, x: torch.Tensor) -> str:
        """Which parallel forward runs for input `x`: "fast" or "reference" (see `_xlstm_train.choose_path`)."""
        from ._xlstm_train import choose_path

        return choose_path(self, x)

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False):  # x (B, L, D)
        path = self.forward_path(x)
        self.forward_kernel = path
        if path == "fast":
            from ._xlstm_train import mlstm_block, slstm_block, tune_malloc

            if torch.is_grad_enabled():
                tune_malloc()  # training: reuse freed memory instead of page-faulting it back each step
            blocks = [(mlstm_block if kind == "m" else slstm_block, block)
                      for kind, block in zip(self.kinds, self.stack.blocks)]
        else:
            self._ensure_causal_mask(x.shape[1], x.device)
            blocks = [(lambda blk, y: blk(y), block) for block in self.stack.blocks]
        hidden = []
        for fn, block in blocks:
            x = fn(block, x)
            if output_hidden_states:
                hidden.append(x)
        y = self.stack.post_blocks_norm(x)
        return (y, hidden) if output_hidden_states else y

    # ---------------------------------------------------------------- recurrent (inference)
    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """A fresh (zero) recurrent state for `batch_size` streams."""
        p = next(self.parameters())
        device = p.device if device is None else device
        dtype = p.dtype if dtype is None else dtype
        if self.step_kernel == "reference":
            return {"kernel": "reference", "stack": {}}
        B, K = batch_size, self.cfg.conv1d_kernel_size
        blocks = []
        for block, kind in zip(self.stack.blocks, self.kinds):
            layer = block.xlstm
            if kind == "m":
                I = layer.config._inner_embedding_dim
                DH = I // self.n_heads
                blocks.append({  # C holds [C | n]; the package's (C, n) = exp(a) * C (see _mlstm_chunk_)
                    "conv": torch.zeros(B, K - 1, I, device=device, dtype=dtype),
                    "C": torch.zeros(B, self.n_heads, DH, DH + 1, device=device, dtype=dtype),
                    "m": torch.zeros(B, self.n_heads, device=device, dtype=dtype),
                    "a": torch.zeros(B, self.n_heads, device=device, dtype=dtype),
                })
            else:
                D = self.cfg.d_model
                z = lambda: torch.zeros(self.n_heads, B, D // self.n_heads, device=device, dtype=dtype)  # noqa: E731
                blocks.append({"conv": torch.zeros(B, K - 1, D, device=device, dtype=dtype),
                               "y": z(), "c": z(), "n": z(), "m": z()})
        return {"kernel": "fast", "blocks": blocks}

    def step(self, x: torch.Tensor, state: dict):  # x (B, l, D) -> (B, l, D)
        """Advance the state by l >= 1 tokens; returns their outputs and the state (updated in place)."""
        if state.get("kernel") == "reference":
            ys = []
            for t in range(x.shape[1]):
                y, state["stack"] = self.stack.step(x[:, t : t + 1], state["stack"])
                ys.append(y)
            return torch.cat(ys, dim=1), state
        if x.shape[1] > STEP_PIECE_TOKENS:
            ys = [self.step(piece, state)[0] for piece in x.split(STEP_PIECE_TOKENS, dim=1)]
            return torch.cat(ys, dim=1), state
        weights = self._fast_weights()
        for i, (kind, w) in enumerate(zip(self.kinds, weights)):
            st = state["blocks"][i]
            x = self._mlstm_block_step(x, st, w) if kind == "m" else self._slstm_block_step(x, st, w)
        post = self.stack.post_blocks_norm
        return _layer_norm(x, post.weight_proxy, post.eps), state

    # fast path internals --------------------------------------------------------------------
    def _fast_weights(self) -> list:
        """Fused/re-laid-out views of the package's weights, cached (per `step_impl`) until a
        parameter changes (an optimizer step or load_state_dict bumps its `_version`)."""
        if self._params is None:
            self._params = list(self.parameters())
        key = tuple((p.data_ptr(), p._version) for p in self._params)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self._params)
        cached = self._fast_cache.get(self.step_impl)
        if not grad and cached is not None and cached[0] == key:
            return cached[1]
        with torch.set_grad_enabled(grad):
            weights = [self._block_weights(block, kind, packed=not grad)
                       for block, kind in zip(self.stack.blocks, self.kinds)]
        if not grad:
            fresh = {impl: kw for impl, kw in self._fast_cache.items() if kw[0] == key}  # drop stale ones
            self._fast_cache = {**fresh, self.step_impl: (key, weights)}
        return weights

    def effective_step_impl(self, device=None) -> str:
        """What the fast step runs on `device` (default: the parameters'): "numba" or "torch"."""
        p = next(self.parameters())
        device = torch.device(device) if device is not None else p.device
        if self.step_impl == "numba" and device.type == "cpu" and p.dtype == torch.float32 \
                and _xlstm_step_kernels() is not None:
            return "numba"
        return "torch"

    def _numba(self, weight: torch.Tensor):
        """The numba kernels when this step may use them for `weight`'s device/dtype, else None."""
        if self.step_impl != "numba" or weight.device.type != "cpu" or weight.dtype != torch.float32:
            return None
        from . import _xlstm_step

        return _xlstm_step.kernels()

    def _linear_weights(self, w: dict, name: str, weight, bias, packed: bool) -> None:
        w[name] = (weight, bias, None)
        if not packed or weight.device.type != "cpu" or weight.dtype != torch.float32:
            return
        if self.step_weights == "float16":
            # fbgemm: weights packed once in fp16, fp32 activations and accumulation
            w[name] = (weight, bias, torch.ops.quantized.linear_prepack_fp16(weight.detach(), None if bias is None else bias.detach()))
        elif self._numba(weight) is not None:
            # numpy views sharing the parameters' memory, for the small-M kernel (see _xlstm_step)
            wn = weight.detach().contiguous().numpy()
            bn = (bias.detach().contiguous().numpy() if bias is not None else wn[0])
            w[name] = (weight, bias, ("numba", wn, bn, bias is not None))

    @staticmethod
    def _lin(x: torch.Tensor, wb) -> torch.Tensor:
        weight, bias, packed = wb
        if packed is None:
            return F.linear(x, weight, bias)
        if isinstance(packed, tuple):
            _, wn, bn, has_bias = packed
            K, O = wn.shape[1], wn.shape[0]
            x2 = x.reshape(-1, K)
            if x2.shape[0] > _MAX_NUMBA_ROWS:
                return F.linear(x, weight, bias)
            x2 = x2.contiguous()
            out = x2.new_empty(x2.shape[0], O)
            _xlstm_step_kernels().linear_rows(x2.numpy(), wn, bn, has_bias, out.numpy())
            return out.view(*x.shape[:-1], O)
        return torch.ops.quantized.linear_dynamic_fp16(x, packed)

    def _block_weights(self, block, kind: str, packed: bool) -> dict:
        layer = block.xlstm
        w = {"norm": block.xlstm_norm.weight_proxy, "eps": block.xlstm_norm.eps}
        conv = layer.conv1d.conv
        w["conv_w"], w["conv_b"] = conv.weight[:, 0, :], conv.bias
        if kind == "m":
            cell = layer.mlstm_cell
            self._linear_weights(w, "up", layer.proj_up.weight, layer.proj_up.bias, packed)
            self._linear_weights(w, "down", layer.proj_down.weight, layer.proj_down.bias, packed)
            w["I"] = layer.config._inner_embedding_dim
            # q and k read the same input: one headwise projection for both, (NPH, 8) per input dim
            qk = torch.cat([layer.q_proj.weight, layer.k_proj.weight], dim=1)  # (NPH, 8, 4) (h, o, d)
            w["qk"] = [qk[:, :, d] for d in range(qk.shape[2])]
            w["v"] = [layer.v_proj.weight[:, :, d] for d in range(layer.v_proj.weight.shape[2])]
            w["qk_b"] = None if layer.q_proj.bias is None else (layer.q_proj.bias, layer.k_proj.bias)
            w["v_b"] = layer.v_proj.bias
            w["if"] = torch.cat([cell.igate.weight, cell.fgate.weight], dim=0)  # (2NH, 3I)
            w["if_b"] = torch.cat([cell.igate.bias, cell.fgate.bias], dim=0)
            w["outnorm"] = cell.outnorm.weight_proxy.view(self.n_heads, 1, -1)  # (NH, 1, DH)
            w["outnorm_eps"] = cell.outnorm.eps
            w["skip"] = layer.learnable_skip
            kern = self._numba(layer.proj_up.weight) if packed else None
            if kern is not None:  # numpy views/copies for the fused mLSTM core (see _xlstm_step.mlstm_core)
                npy = lambda t: t.detach().contiguous().numpy()  # noqa: E731
                I = w["I"]
                has_b = layer.q_proj.bias is not None
                qkv_b = torch.stack([layer.q_proj.bias, layer.k_proj.bias, layer.v_proj.bias]).reshape(3, I) \
                    if has_b else torch.zeros(3, I)
                w["core"] = (npy(w["conv_w"]), npy(w["conv_b"]), npy(layer.q_proj.weight), npy(layer.k_proj.weight),
                             npy(layer.v_proj.weight), npy(qkv_b), has_b, npy(w["if"]), npy(w["if_b"]),
                             npy(w["outnorm"].reshape(self.n_heads, -1)), float(w["outnorm_eps"]), npy(w["skip"]))
        else:
            cell = layer.slstm_cell
            NH, DH = cell.config.num_heads, cell.config.head_dim
            # package quirk kept on purpose: gate "i" is computed by `fgate`, gate "f" by `igate`
            w["if"] = torch.cat([layer.fgate.weight, layer.igate.weight], dim=1).transpose(1, 2).contiguous()
            w["zo"] = torch.cat([layer.zgate.weight, layer.ogate.weight], dim=1).transpose(1, 2).contiguous()
            w["R"] = cell._recurrent_kernel_int2ext(cell._recurrent_kernel).reshape(NH, DH, 4 * DH).contiguous()
            w["bias"] = cell._bias_int2ext(cell._bias).reshape(NH, 1, 4, DH)
            w["gn"] = layer.group_norm.weight_proxy
            w["gn_eps"] = layer.group_norm.eps
            w["ffn_norm"], w["ffn_eps"] = block.ffn_norm.weight_proxy, block.ffn_norm.eps
            self._linear_weights(w, "ffn_up", block.ffn.proj_up.weight, block.ffn.proj_up.bias, packed)
            self._linear_weights(w, "ffn_down", block.ffn.proj_down.weight, block.ffn.proj_down.bias, packed)
            w["ffn_act"] = block.ffn.act_fn
            w["NH"], w["DH"] = NH, DH
            if packed and self._numba(layer.fgate.weight) is not None:  # for _xlstm_step.slstm_core
                npy = lambda t: t.detach().contiguous().numpy()  # noqa: E731
                w["core"] = (npy(w["conv_w"]), npy(w["conv_b"]), npy(w["if"]), npy(w["zo"]), npy(w["R"]),
                             npy(w["bias"].reshape(NH, 4, DH)), npy(w["gn"]), float(w["gn_eps"]))
        return w

    def _mlstm_block_step(self, x: torch.Tensor, st: dict, w: dict) -> torch.Tensor:
        B, l, D = x.shape
        I, NH = w["I"], self.n_heads
        DH, BH, N = I // NH, B * NH, B * l
        up = self._lin(F.layer_norm(x, (D,), w["norm"], None, w["eps"]), w["up"])  # (B, l, 2I)
        if "core" in w and l <= _MAX_CORE_TOKENS and not torch.is_grad_enabled():
            # one numba call from the up- to the down-projection (conv, q/k/v, gates, cell, norms)
            up = up.contiguous()
            h = up.new_empty(B, l, I)
            (cw, cb, qw, kw, vw, qkv_b, has_b, gw, gb, onw, on_eps, skip) = w["core"]
            _xlstm_step_kernels().mlstm_core(
                up.numpy(), st["conv"].numpy(), cw, cb, qw, kw, vw, qkv_b, has_b, gw, gb, st["C"].numpy(),
                st["m"].numpy(), st["a"].numpy(), onw, on_eps, skip, _EPS, _LAZY_LIMIT, h.numpy())
            return x + self._lin(h, w["down"])
        xm, z = up[..., :I], up[..., I:]
        xc, st["conv"] = _conv_step(xm, st["conv"], w["conv_w"], w["conv_b"])
        xc = F.silu(xc)
        qk = _headwise_small(xc.reshape(N, -1, 4), w["qk"])  # (N, NPH, 8)
        q, k = qk[..., :4].reshape(B, l, I), qk[..., 4:].reshape(B, l, I)
        v = _headwise_small(xm.reshape(N, -1, 4), w["v"]).view(B, l, I)
        if w["qk_b"] is not None:
            q, k = q + w["qk_b"][0], k + w["qk_b"][1]
        if w["v_b"] is not None:
            v = v + w["v_b"]
        gates = F.linear(torch.cat([q, k, v], dim=-1), w["if"], w["if_b"])  # (B, l, 2NH)

        def heads(t):  # (B, l, NH*DH) -> (B*NH, l, DH)
            return t.view(B, l, NH, DH).transpose(1, 2).reshape(BH, l, DH)

        qh, kh, vh = heads(q), heads(k) * (1.0 / math.sqrt(DH)), heads(v)
        ipre = gates[..., :NH].transpose(1, 2).reshape(BH, l)
        fpre = gates[..., NH:].transpose(1, 2).reshape(BH, l)
        if torch.is_grad_enabled():  # functional form: autograd through the step
            scale = torch.exp(st["a"])[..., None, None]
            h, (C, n, st["m"]) = _mlstm_chunk(
                qh.view(B, NH, l, DH), kh.view(B, NH, l, DH), vh.view(B, NH, l, DH),
                ipre.view(B, NH, l), fpre.view(B, NH, l), st["C"][..., :DH] * scale, st["C"][..., DH] * scale[..., 0],
                st["m"])
            st["C"], st["a"] = torch.cat([C, n.unsqueeze(-1)], dim=-1), torch.zeros_like(st["a"])
            h = h.reshape(BH, l, DH)
        else:
            h = _mlstm_chunk_(qh, kh, vh, ipre, fpre, st["C"].view(BH, DH, DH + 1), st["m"].view(BH),
                              st["a"].view(BH), lazy=x.device.type == "cpu")
        # MultiHeadLayerNorm: a LayerNorm per head, then the (1 + w) scale
        h = F.layer_norm(h, (DH,), None, None, w["outnorm_eps"]).view(B, NH, l, DH) * w["outnorm"]
        h = torch.addcmul(h.transpose(1, 2).reshape(B, l, I), w["skip"], xc) * F.silu(z)
        return x + self._lin(h, w["down"])

    def _slstm_block_step(self, x: torch.Tensor, st: dict, w: dict) -> torch.Tensor:
        B, l, D = x.shape
        NH, DH = w["NH"], w["DH"]
        xn = F.layer_norm(x, (D,), w["norm"], None, w["eps"])
        if "core" in w and l <= _MAX_CORE_TOKENS and not torch.is_grad_enabled():
            # one numba call from the normed input to the group-normed output (conv, gates, cell)
            _compact_slstm_state(st)
            out = x.new_empty(B, l, D)
            (cw, cb, wif, wzo, R, bias, gn, gn_eps) = w["core"]
            _xlstm_step_kernels().slstm_core(xn.contiguous().numpy(), st["conv"].numpy(), cw, cb, wif, wzo, R, bias,
                                             st["y"].numpy(), st["c"].numpy(), st["n"].numpy(), st["m"].numpy(),
                                             gn, gn_eps, out.numpy())
            return self._ffn(x + out, w)
        xc, st["conv"] = _conv_step(xn, st["conv"], w["conv_w"], w["conv_b"])
        xc = F.silu(xc)
        # (NH, B*l, DH) @ (NH, DH, 2DH) -> gates i, f from the conv branch; z, o from the normed input
        wif = torch.bmm(xc.reshape(B * l, NH, DH).transpose(0, 1), w["if"]).view(NH, B, l, 2, DH)
        wzo = torch.bmm(xn.reshape(B * l, NH, DH).transpose(0, 1), w["zo"]).view(NH, B, l, 2, DH)
        wx = torch.cat([wif, wzo], dim=3)  # (NH, B, l, 4, DH)
        ys, (st["y"], st["c"], st["n"], st["m"]) = _slstm_steps(
            wx, st["y"], st["c"], st["n"], st["m"], w["R"], w["bias"])
        out = F.layer_norm(ys, (DH,), None, None, w["gn_eps"])  # (NH, B, l, DH)
        out = out.permute(1, 2, 0, 3).reshape(B, l, D) * w["gn"]
        return self._ffn(x + out, w)

    def _ffn(self, x: torch.Tensor, w: dict) -> torch.Tensor:
        D = x.shape[-1]
        gate, upv = self._lin(F.layer_norm(x, (D,), w["ffn_norm"], None, w["ffn_eps"]), w["ffn_up"]).chunk(2, dim=-1)
        return x + self._lin(w["ffn_act"](gate) * upv, w["ffn_down"])


def _compact_slstm_state(st: dict) -> None:
    """The fused sLSTM kernel updates y, c, n, m in place. After the torch path they can be strided
    results of ops on gate slices or views into bigger tensors: give the kernel compact copies."""
    for k in ("y", "c", "n", "m"):
        t = st[k]
        if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            st[k] = t.clone(memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------------------------
# sLSTM state-dict layout: external (backend independent) on disk, internal in memory
# --------------------------------------------------------------------------------------------
def _slstm_cells(module: XLSTMBackbone, prefix: str):
    for i, (block, kind) in enumerate(zip(module.stack.blocks, module.kinds)):
        if kind == "s":
            yield f"{prefix}stack.blocks.{i}.xlstm.slstm_cell.", block.xlstm.slstm_cell


def _slstm_to_external(module, state_dict, prefix, local_metadata):
    for p, cell in _slstm_cells(module, prefix):
        for name, conv in (("_recurrent_kernel_", cell._recurrent_kernel_int2ext), ("_bias_", cell._bias_int2ext)):
            key = p + name
            if key in state_dict:
                state_dict[key] = conv(state_dict[key]).contiguous()


def _slstm_from_external(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                         error_msgs):
    for p, cell in _slstm_cells(module, prefix):
        # external layouts: recurrent (NH, DH, 4, DH), bias (NH, 4, DH); internal ones have fewer dims
        for name, conv, ext_ndim in (("_recurrent_kernel_", cell._recurrent_kernel_ext2int, 4),
                                     ("_bias_", cell._bias_ext2int, 3)):
            key = p + name
            if key in state_dict and state_dict[key].ndim == ext_ndim:
                state_dict[key] = conv(state_dict[key]).contiguous()
