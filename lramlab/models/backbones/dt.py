"""Decision Transformer backbone: a GPT-2 style pre-LayerNorm Transformer with a KV cache.

Shape letters: B batch, L tokens, l tokens in one step, D width, H heads, Dh = D / H head width,
P = `n_positions` (learned positional embeddings), W = `window` (attention window of `step` in
tokens, <= P; default tokens_per_step * context_steps, the training context).

Module names follow Hugging Face's GPT2Model (`wpe`, `h.{i}.ln_1`, `h.{i}.attn.c_attn`,
`h.{i}.attn.c_proj`, `h.{i}.ln_2`, `h.{i}.mlp.c_fc`, `h.{i}.mlp.c_proj`, `ln_f`); HF stores its
Conv1D weights transposed (in, out) where these nn.Linear weights are (out, in). No `wte`: the
agent's encoders make the token embeddings (already LayerNorm'ed), the backbone adds `wpe`.
Dropout defaults to 0 (paper App. E.4); GELU is the exact one (LRAM's `activation_function: gelu`).

Positions and the sliding window (the paper's DT conditions on the last C timesteps only):
- `forward(x)` attends causally over its L <= P tokens, positions 0..L-1 (as in training, where
  L is the context of C steps, so positions beyond it are never trained: keep W <= that context
  unless the model was trained on longer windows). Training windows are right-padded
  (`lramlab.data.sampling`): padding only follows real tokens, so causal attention never lets a
  real token see it, and a window's token i has position i -- for a window from an episode's
  first step exactly the position `step` gives that token from `init_state`.
- `step` keeps a KV cache of at most W tokens in preallocated buffers (no per-step copies of the
  cache: new keys/values are written in place at the next slot). While the stream since the start
  (or a row's reset) fits W tokens, step == forward over the whole stream.
- When a step would overflow W, the window mode (`window_mode`, default LRAMConfig.dt_window_mode,
  "exact") decides what stays:
  "exact": the window restarts at the LATEST timestep boundary (a multiple of k = tokens_per_step
    in the stream since `init_state`: an s_t token of the agent's stream) that leaves at most W
    tokens through the end of the step; those cached tokens are re-encoded with positions 0..
    together with the step's l tokens. For the agent (W = k*C, steps (r_{t-1}, s_t, R̂_t)) that
    is s_{t-C+1} .. R̂_t: exactly the training window of the last C timesteps, same tokens, same
    positions. So past the window, step == forward over the training window ending at that
    step, at the cost of one ~W-token prefill per step (what DT inference without a cache costs
    every step). Only when one step's l tokens leave no boundary inside the window (l > W - k + 1)
    does it keep the last W tokens unaligned.
  "hop": only the last ~K = `window_keep` tokens (default W/2 rounded down to a multiple of
    k = tokens_per_step) are re-encoded from position 0 with the step's tokens, then later steps
    append through the cache until W overflows again: one ~K-token prefill per ~W - K tokens. The
    re-encoded part starts at a timestep boundary of the stream since `init_state` (a global token
    index that is a multiple of k, i.e. an s_t token of the agent's (s, R̂, r) stream, whose first
    step has no r), so positions keep training's phase (s at multiples of k); it then holds between
    K and K + k - 1 tokens. Each step == forward over the tokens since the last re-encode (K..W of
    them). The default stays "exact" (model.step == forward over the last W tokens); ICL
    evaluation uses "hop" (ICLConfig.dt_window_mode) with W = 2 episodes, K = 1 episode.
  `window` can be lowered (never above P), e.g. ICL evaluation keeping the last two episodes.
  Both modes keep training's phase (s at positions that are multiples of k).
- Rows can be reset on their own (`DTState.reset(done)`): a reset row's tokens before the reset are
  masked out and its positions restart at 0, so each row equals forward over its own stream.
  Window boundaries are counted in the stream since `init_state`, so a row reset at a token that
  is not a multiple of k keeps windows off its own phase; `rollout.Agent` starts every batch of
  episodes from `init_state` instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DTBackbone", "DTState", "WINDOW_MODES"]

WINDOW_MODES = ("exact", "hop")


@dataclass
class DTState:
    """KV cache of a DTBackbone (updated in place by `step`, which also returns it).

    k, v: (n_layers, B, H, W, Dh) keys/values at slots 0..length-1; x: (B, W, D) the input tokens of
    those slots (re-encoded when the window overflows); start: (B,) long, first valid slot per row.
    mode: "exact" | "hop" (see the module docstring); keep: K, the tokens a hop keeps;
    tokens_per_step: k (hops start at a multiple of k); seen: tokens fed since init_state.
    """

    k: torch.Tensor
    v: torch.Tensor
    x: torch.Tensor
    start: torch.Tensor
    length: int = 0
    mode: str = "exact"
    keep: int = 0
    tokens_per_step: int = 1
    seen: int = 0

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def reset(self, done: torch.Tensor) -> "DTState":
        """Rows where done (B,) bool is True forget their past (a new episode starts there)."""
        done = done.to(device=self.start.device, dtype=torch.bool)
        self.start = torch.where(done, torch.full_like(self.start, self.length), self.start)
        return self


class _Attention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d // n_heads
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def qkv(self, x: torch.Tensor):
        """x (B, L, D) -> q, k, v each (B, H, L, Dh)."""
        b, length, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=-1)
        return [t.view(b, length, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v)]

    def out(self, a: torch.Tensor) -> torch.Tensor:
        b, _, length, _ = a.shape
        return self.resid_drop(self.c_proj(a.transpose(1, 2).reshape(b, length, -1)))


class _MLP(nn.Module):
    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(F.gelu(self.c_fc(x))))


class _Block(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.attn = _Attention(d, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(d, eps=eps)
        self.mlp = _MLP(d, dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None, kv=None):
        """h (B, l, D). mask: bool (B, 1, l, S) allowed keys, or None for plain causal over h.
        kv: (k_buf, v_buf, lo, hi): write this chunk's keys/values at slots lo..hi-1 of the
        (B, H, W, Dh) buffers and attend over slots 0..hi-1."""
        q, k, v = self.attn.qkv(self.ln_1(h))
        if kv is not None:
            k_buf, v_buf, lo, hi = kv
            k_buf[:, :, lo:hi] = k.to(k_buf.dtype)
            v_buf[:, :, lo:hi] = v.to(v_buf.dtype)
            k, v = k_buf[:, :, :hi].to(q.dtype), v_buf[:, :, :hi].to(q.dtype)
        p = self.attn.dropout if self.training else 0.0
        if mask is None:
            a = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        h = h + self.attn.out(a)
        return h + self.mlp(self.ln_2(h))


class DTBackbone(nn.Module):
    """GPT-2 style Transformer over the token stream (see module docstring).

    forward(x (B, L, D), output_hidden_states=False) -> y (B, L, D), or (y, hidden) where hidden[i]
    is the residual stream after block i (before ln_f), as the registry specifies.
    init_state(batch_size) -> DTState; step(x (B, l, D), state) -> (y (B, l, D), state).
    Config fields read: d_model, n_layers, n_heads, context_steps, and optionally dt_dropout (or
    dropout; 0), tokens_per_step (3), dt_n_positions (positional table; default the context
    tokens, LRAMConfig's is 1600 as LRAM's n_positions), norm_eps (1e-5), dt_window_mode ("exact").
    """

    def __init__(self, cfg: Any):
        super().__init__()
        d, n_layers, n_heads = int(cfg.d_model), int(cfg.n_layers), int(cfg.n_heads)
        if d < 1 or n_layers < 1 or n_heads < 1 or d % n_heads:
            raise ValueError(f"d_model={d}, n_layers={n_layers}, n_heads={n_heads}: need positive "
                             "values and d_model divisible by n_heads")
        dropout = float(getattr(cfg, "dt_dropout", getattr(cfg, "dropout", 0.0)))
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}: expected 0 <= dropout < 1")
        context_tokens = int(getattr(cfg, "tokens_per_step", 3)) * int(cfg.context_steps)
        n_pos = int(getattr(cfg, "dt_n_positions", None) or context_tokens)
        if context_tokens < 1 or n_pos < context_tokens:
            raise ValueError(f"dt_n_positions={n_pos}: expected >= the context of {context_tokens} "
                             "tokens (tokens_per_step * context_steps) >= 1")
        self.d_model, self.n_layers, self.n_heads = d, n_layers, n_heads
        self.head_dim = d // n_heads
        self.n_positions = n_pos
        self.context_tokens = context_tokens
        self._window = context_tokens
        self.tokens_per_step = int(getattr(cfg, "tokens_per_step", 3))
        self._window_mode = "exact"
        self.window_mode = getattr(cfg, "dt_window_mode", "exact")
        self._window_keep: int | None = None
        eps = float(getattr(cfg, "norm_eps", 1e-5))
        self.wpe = nn.Embedding(self.n_positions, d)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(_Block(d, n_heads, dropout, eps) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d, eps=eps)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2 n_layers)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.n_layers))

    # -- window ----------------------------------------------------------------------------
    @property
    def window(self) -> int:
        """Attention window of `step` in tokens (default: the training context,
        tokens_per_step * context_steps); takes effect for states made after it is set."""
        return self._window

    @window.setter
    def window(self, tokens: int) -> None:
        tokens = int(tokens)
        if not 1 <= tokens <= self.n_positions:
            raise ValueError(f"window={tokens} tokens: expected 1..{self.n_positions} (n_positions, "
                             "the learned positional embeddings)")
        self._window = tokens

    @property
    def window_mode(self) -> str:
        """"exact" | "hop": what `step` re-encodes past the window (module docstring); takes
        effect for states made after it is set."""
        return self._window_mode

    @window_mode.setter
    def window_mode(self, mode: str) -> None:
        if mode not in WINDOW_MODES:
            raise ValueError(f"window_mode={mode!r}: expected one of {', '.join(WINDOW_MODES)}")
        self._window_mode = mode

    @property
    def window_keep(self) -> int | None:
        """Tokens a "hop" keeps (None: window // 2 rounded down to a multiple of tokens_per_step);
        checked against the window in `init_state`."""
        return self._window_keep

    @window_keep.setter
    def window_keep(self, tokens: int | None) -> None:
        self._window_keep = None if tokens is None else int(tokens)

    def _resolve_keep(self, w: int, keep: int | None) -> int:
        k = self.tokens_per_step
        if keep is None:
            keep = (w // 2) // k * k
            if keep < k or keep > w - k:
                raise ValueError(f"window={w} tokens is too small for window_mode='hop' with "
                                 f"tokens_per_step={k}: need >= {2 * k}")
            return keep
        keep = int(keep)
        if keep % k or not k <= keep <= w - k:
            raise ValueError(f"window_keep={keep} tokens: expected a multiple of tokens_per_step={k} "
                             f"in {k}..{w - k} (window={w} minus one step)")
        return keep

    # -- parallel path ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor, output_hidden_states: bool = False):
        b, length, d = x.shape
        if length > self.n_positions:
            raise ValueError(f"forward: {length} tokens but the DT has {self.n_positions} positions "
                             "(tokens_per_step * context_steps); use step for longer streams")
        h = self.drop(x + self.wpe(torch.arange(length, device=x.device)))
        hidden = []
        for block in self.h:
            h = block(h)
            hidden.append(h)
        y = self.ln_f(h)
        if output_hidden_states:
            return y, hidden
        return y

    # -- recurrent path --------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None, window: int | None = None,
                   mode: str | None = None, keep: int | None = None) -> DTState:
        """Empty KV cache for `window` tokens (default: `self.window`), window mode `mode`
        (default: `self.window_mode`) and, for "hop", `keep` tokens (default: `self.window_keep`)."""
        device = self.wpe.weight.device if device is None else device
        dtype = self.wpe.weight.dtype if dtype is None else dtype
        if window is not None and not 1 <= int(window) <= self.n_positions:
            raise ValueError(f"window={window} tokens: expected 1..{self.n_positions} (n_positions)")
        w = self._window if window is None else int(window)
        mode = self._window_mode if mode is None else mode
        if mode not in WINDOW_MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(WINDOW_MODES)}")
        keep = self._resolve_keep(w, self._window_keep if keep is None else keep) if mode == "hop" else 0
        kv = (self.n_layers, batch_size, self.n_heads, w, self.head_dim)
        return DTState(k=torch.zeros(kv, device=device, dtype=dtype),
                       v=torch.zeros(kv, device=device, dtype=dtype),
                       x=torch.zeros(batch_size, w, self.d_model, device=device, dtype=dtype),
                       start=torch.zeros(batch_size, dtype=torch.long, device=device), length=0,
                       mode=mode, keep=keep, tokens_per_step=self.tokens_per_step)

    def _run(self, x: torch.Tensor, state: DTState, lo: int) -> torch.Tensor:
        """Encode x (B, l, D) at slots lo..lo+l-1, writing the cache; returns ln_f output."""
        l = x.shape[1]
        hi = lo + l
        slots = torch.arange(lo, hi, device=x.device)
        pos = (slots[None, :] - state.start[:, None]).clamp(min=0)          # (B, l)
        keys = torch.arange(hi, device=x.device)
        # key j visible to query i if the row's stream contains j (j >= start) and j <= i; a query
        # always sees itself so that no row is fully masked (stale slots give finite garbage that
        # later queries never see).
        k_, q_ = keys[None, None, :], slots[None, :, None]
        mask = ((k_ >= state.start[:, None, None]) & (k_ <= q_)) | (k_ == q_)          # (B, l, S)
        h = self.drop(x + self.wpe(pos))
        for i, block in enumerate(self.h):
            h = block(h, mask=mask[:, None], kv=(state.k[i], state.v[i], lo, hi))
        state.x[:, lo:hi] = x.to(state.x.dtype)
        state.length = hi
        return self.ln_f(h)

    def step(self, x: torch.Tensor, state: DTState):
        """x (B, l, D) -> (y (B, l, D), state). For inference: the cache is written in place, so
        run it under torch.no_grad() (autograd through successive steps is not supported)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"step: x has shape {tuple(x.shape)}, expected (B, l, {self.d_model})")
        if x.shape[0] != state.batch_size:
            raise ValueError(f"step: x has batch {x.shape[0]} but the state was made for "
                             f"{state.batch_size}")
        w = state.x.shape[1]
        l = x.shape[1]
        if l > w:
            raise ValueError(f"step: {l} tokens at once but the window holds {w}")
        if state.length + l <= w:
            y = self._run(x, state, state.length)
        else:
            if state.mode == "hop":
                # stream index of slot 0, and where the kept part starts: the latest timestep
                # boundary (multiple of k) that keeps >= K tokens with this step
                k, base, end = state.tokens_per_step, state.seen - state.length, state.seen + l
                first = (end - max(state.keep, l)) // k * k
                if end - first > w:  # one chunk of almost W tokens: no aligned start fits
                    first = end - w
                a = first - base
            else:  # exact: the latest timestep boundary that leaves <= w tokens (module docstring)
                k, base, end = state.tokens_per_step, state.seen - state.length, state.seen + l
                first = -(-(end - w) // k) * k
                if first > state.seen:  # no boundary before this step's first token fits
                    first = end - w
                a = first - base
            # re-encode slots a..length-1 with this step's tokens from slot 0 (positions restart)
            xs = torch.cat([state.x[:, a:state.length].to(x.dtype), x], dim=1)
            state.start = (state.start - a).clamp(min=0)
            state.length = 0
            y = self._run(xs, state, 0)[:, -l:]
        state.seen += l
        return y, state
