"""The LRAM agent: shared encoders -> LayerNorm -> backbone -> shared action head (paper §3.2).

Sequence: each timestep t is the tokens (s_t, R̂_t, r_t) ("srr", the paper), (s_t) ("s",
behaviour cloning), (s_t, R̂_t, r_t, a_t) ("srra", action-token ablation) or (s_t, r_t) ("sr",
Algorithm Distillation's conditioning on observations and rewards only), or ONE token per step
("ad", Algorithm Distillation's own embedding): LN(E(s_t) + [t > 0] (E(a_{t-1}) + E(r_{t-1}))),
where t > 0 means the previous step is in the sequence (a window's first step and the step after
left padding have none). No timestep embeddings. The action a_t is read at R̂_t (at s_t for "s",
"sr" and "ad"), so it never sees r_t or a_t.

Inference (`step`) feeds the tokens that arrived since the last call, ending at the read token:
(r_{t-1}, [a_{t-1},] s_t, [R̂_t]); the first step of a stream has no r_{t-1}. The state carries
across episode boundaries (in-context learning), which makes stepping through concatenated
episodes equal to one parallel forward over them (tested).

Shape letters: B batch, T timesteps, k tokens per timestep, L = k*T tokens, D width, V = 2066.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_torch_save
from ..tokenizer import IMAGE_SHAPE, STATE_DIM
from .backbones import make_backbone
from .config import LRAMConfig
from .encoders import ActionEncoder, ImpalaCNN, ScalarEncoder
from .head import ActionHead, decode, head_loss


@dataclass
class AgentState:
    """Recurrent state of `batch_size` streams: the backbone's state and the steps taken so far."""

    backbone: Any
    batch_size: int
    steps: int = 0


def _as_tensor(x, device, dtype=None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    t = torch.as_tensor(x, device=device)
    return t if dtype is None else t.to(dtype)


def _require_finite(named: list[tuple[str, torch.Tensor]]) -> None:
    """ValueError naming the first non-finite input; one check (and one device sync) when all are
    finite: ~25 us a step on a shared CPU core, +0.5-3 % on a 16M step, +7 % on a tiny DT's
    (benchmarks/step_finite_check.py)."""
    if not named:
        return
    if bool(torch.isfinite(torch.cat([t.reshape(-1) for _, t in named])).all()):
        return
    for name, t in named:
        if not bool(torch.isfinite(t).all()):
            idx = tuple(int(i) for i in (~torch.isfinite(t)).nonzero()[0])
            raise ValueError(f"step: {name} is {t[idx].item()} at index {idx}: expected finite numbers (a NaN or "
                             f"inf would poison the recurrent state of every later step)")


class LRAM(nn.Module):
    """Encoders + backbone + shared action head. Build with `build_model(cfg)`."""

    def __init__(self, cfg: LRAMConfig):
        super().__init__()
        if not isinstance(cfg, LRAMConfig):
            raise TypeError(f"LRAM needs an LRAMConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        D = cfg.d_model
        self.state_encoder = nn.Linear(STATE_DIM, D)
        self.image_encoder = ImpalaCNN(D)
        if cfg.tokens in ("srr", "srra"):
            self.rtg_encoder = ScalarEncoder(D)
        if cfg.tokens in ("srr", "srra", "sr", "ad"):
            self.reward_encoder = ScalarEncoder(D)
        if cfg.tokens in ("srra", "ad"):
            self.action_encoder = ActionEncoder(D)
        self.embed_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.backbone = make_backbone(cfg)
        self.head = ActionHead(D)
        self.k = cfg.tokens_per_step
        self.read_offset = 0 if cfg.tokens in ("s", "sr", "ad") else 1  # index of R̂_t (or s_t) within a timestep
        # DDP (find_unused_parameters=False) needs every parameter in every backward; encoders a
        # batch does not use (the image CNN on a state batch, ...) get an exact-zero gradient.
        self.touch_unused_params = True
        self.to(cfg.torch_dtype)

    # ------------------------------------------------------------------ sizes
    def num_parameters(self, part: Optional[str] = None) -> int:
        """Parameter count of the whole model or of one part ("backbone", "image_encoder", ...)."""
        mod = self if part is None else getattr(self, part)
        return sum(p.numel() for p in mod.parameters())

    # ------------------------------------------------------------------ embeddings
    def _encode_obs(self, batch: dict) -> torch.Tensor:  # -> (B, T, D)
        if "images" in batch:
            img = batch["images"]
            B, T = img.shape[:2]
            return self.image_encoder(img.reshape(B * T, *img.shape[2:])).view(B, T, -1)
        if "states" in batch:
            s = batch["states"]
            if s.shape[-1] > STATE_DIM:
                raise ValueError(f"batch['states'] has {s.shape[-1]} dims, more than {STATE_DIM}")
            if s.shape[-1] < STATE_DIM:
                s = F.pad(s, (0, STATE_DIM - s.shape[-1]))
            return self.state_encoder(s.to(self.state_encoder.weight.dtype))
        raise ValueError("batch needs 'states' (B, T, 204) or 'images' (B, T, 1, 64, 64)")

    def _zero_touch(self, batch: dict) -> Optional[torch.Tensor]:
        if not (self.touch_unused_params and self.training and torch.is_grad_enabled()):
            return None
        unused = [self.state_encoder if "images" in batch else self.image_encoder]
        if self.cfg.tokens in ("srra", "ad"):
            disc = batch["actions"].dim() == 2
            unused.append(self.action_encoder.continuous if disc else self.action_encoder.discrete)
        return sum(p.sum() for m in unused for p in m.parameters()) * 0.0

    def embed(self, batch: dict) -> torch.Tensor:
        """Token embeddings after the shared LayerNorm: (B, k*T, D)."""
        obs = self._encode_obs(batch)
        B, T, D = obs.shape
        if self.cfg.tokens == "ad":  # (s_t, a_{t-1}, r_{t-1}) summed into one token
            prev = self.reward_encoder(batch["rewards"][:, :-1]) + self.action_encoder(batch["actions"][:, :-1])
            has_prev = batch["mask"][:, :-1] if "mask" in batch else torch.ones(B, T - 1, dtype=torch.bool)
            prev = prev * has_prev.to(prev.device, prev.dtype).unsqueeze(-1)
            x = self.embed_norm(torch.cat([obs[:, :1], obs[:, 1:] + prev], dim=1))
            touch = self._zero_touch(batch)
            return x if touch is None else x + touch
        parts = [obs]
        if self.cfg.tokens in ("srr", "srra"):
            parts += [self.rtg_encoder(batch["rtg"]), self.reward_encoder(batch["rewards"])]
        elif self.cfg.tokens == "sr":
            parts.append(self.reward_encoder(batch["rewards"]))
        if self.cfg.tokens == "srra":
            parts.append(self.action_encoder(batch["actions"]))
        x = self.embed_norm(torch.stack(parts, dim=2).reshape(B, T * self.k, D))
        touch = self._zero_touch(batch)
        return x if touch is None else x + touch

    # ------------------------------------------------------------------ parallel
    def forward(self, batch: dict, return_loss: bool = False):
        """Logits at every read token (R̂_t): (B, T, 2066).

        return_loss=True returns `(loss, metrics)` of `action_loss(self(batch), batch)` instead,
        computed by `head.head_loss` on the real timesteps and the task's valid head columns only
        (same loss and gradients, much cheaper for few actions; through `forward` so a DDP wrapper
        sees the call)."""
        y = self.backbone(self.embed(batch))[:, self.read_offset :: self.k]
        if return_loss:
            return head_loss(y, self.head, batch)
        return self.head(y)

    def hidden_states(self, batch: dict, layer: int = -1) -> torch.Tensor:
        """Hidden states at the read tokens, (B, T, D).

        `layer` indexes [h_0, ..., h_{N-1}, y]: block outputs, then the backbone's final (normed)
        output that the head reads; the default -1 is that final output, -2 the last block's output.
        """
        y, hs = self.backbone(self.embed(batch), output_hidden_states=True)
        seq = list(hs) + [y]
        if not -len(seq) <= layer < len(seq):
            raise ValueError(f"layer={layer} is out of range for {len(seq) - 1} blocks (valid {-len(seq)}..{len(seq) - 1})")
        return seq[layer][:, self.read_offset :: self.k]

    # ------------------------------------------------------------------ recurrent
    def init_state(self, batch_size: int = 1, device=None) -> AgentState:
        """A fresh state for `batch_size` streams (no tokens seen)."""
        p = self.head.weight
        return AgentState(self.backbone.init_state(batch_size, device=device or p.device, dtype=p.dtype), batch_size)

    def _step_obs(self, obs, B: int, device, checked: Optional[list] = None) -> torch.Tensor:  # -> (B, 1, D)
        o = _as_tensor(obs, device)
        if checked is not None and o.is_floating_point():
            checked.append(("obs", o))
        if o.dim() == 1 and B == 1:
            o = o.unsqueeze(0)
        if o.dim() == 3 and tuple(o.shape[1:]) == IMAGE_SHAPE[1:]:
            o = o.unsqueeze(1)
        if o.shape[0] != B:
            raise ValueError(f"obs has batch {o.shape[0]}, the state was made for {B}")
        if o.dim() == 4:
            return self._encode_obs({"images": o.unsqueeze(1)})
        if o.dim() == 2:
            return self._encode_obs({"states": o.unsqueeze(1).float()})
        raise ValueError(f"obs must be (B, obs_dim) states or (B, 1, 64, 64) images, got {tuple(o.shape)}")

    def _scalar(self, x, name: str, B: int, device) -> torch.Tensor:  # -> (B, 1)
        if x is None:
            raise ValueError(f"step: {name} is required for tokens={self.cfg.tokens!r}")
        t = _as_tensor(x, device, torch.float32).reshape(-1)
        if t.numel() == 1:
            t = t.expand(B)
        if t.numel() != B:
            raise ValueError(f"step: {name} has {t.numel()} values for a batch of {B}")
        return t.view(B, 1)

    @staticmethod
    def _step_action(prev_action, B: int, device) -> torch.Tensor:  # -> (B, 1) ids or (B, 1, 8)
        a = _as_tensor(prev_action, device)
        return a.view(B, 1) if a.dtype in (torch.int64, torch.int32) else F.pad(
            a.float().view(B, 1, -1), (0, 8 - a.view(B, -1).shape[-1]))

    def step_tokens(self, state: AgentState, obs, rtg=None, prev_reward=None, prev_action=None) -> torch.Tensor:
        """The normed token embeddings one `step` feeds: (B, l, D), ending with the read token."""
        B, device = state.batch_size, self.head.weight.device
        checked: list[tuple[str, torch.Tensor]] = []  # float inputs that must be finite
        if self.cfg.tokens == "ad":
            x = self._step_obs(obs, B, device, checked)
            if state.steps > 0:
                if prev_action is None:
                    raise ValueError("step: prev_action is required after the first step for tokens='ad'")
                r = self._scalar(prev_reward, "prev_reward", B, device)
                checked.append(("prev_reward", r))
                x = x + self.reward_encoder(r) + self.action_encoder(self._step_action(prev_action, B, device))
            _require_finite(checked)
            return self.embed_norm(x)
        parts = []
        if self.cfg.tokens != "s" and state.steps > 0:
            r = self._scalar(prev_reward, "prev_reward", B, device)
            checked.append(("prev_reward", r))
            parts.append(self.reward_encoder(r))
            if self.cfg.tokens == "srra":
                if prev_action is None:
                    raise ValueError("step: prev_action is required after the first step for tokens='srra'")
                parts.append(self.action_encoder(self._step_action(prev_action, B, device)))
        parts.append(self._step_obs(obs, B, device, checked))
        if self.cfg.tokens in ("srr", "srra"):
            g = self._scalar(rtg, "rtg", B, device)
            checked.append(("rtg", g))
            parts.append(self.rtg_encoder(g))
        _require_finite(checked)  # before the state moves: one NaN would poison it for good
        return self.embed_norm(torch.cat(parts, dim=1))

    def step(self, state: AgentState, obs, rtg=None, prev_reward=None, prev_action=None,
             chunkwise: bool = True, grad: bool = False) -> tuple[torch.Tensor, AgentState]:
        """One environment step for B streams: logits (B, 2066) at R̂_t (s_t for "s"/"sr"), and the advanced state.

        obs: (B, obs_dim) float states (zero-padded to 204 here) or (B, 1, 64, 64) uint8 images;
        rtg: (B,) return-to-go divided by the domain's reward scale (ignored for "s"/"sr"); prev_reward: (B,) scaled
        reward of the previous step (ignored at a stream's first step; required afterwards, also
        across episode boundaries); prev_action: previous action, only for tokens="srra" and "ad".
        chunkwise=True feeds the step's tokens in one backbone call, False one token at a time.
        The state is updated in place. grad=False (default) runs without autograd.
        """
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            x = self.step_tokens(state, obs, rtg, prev_reward, prev_action)
            if chunkwise:
                y, state.backbone = self.backbone.step(x, state.backbone)
            else:
                for i in range(x.shape[1]):
                    y, state.backbone = self.backbone.step(x[:, i : i + 1], state.backbone)
            state.steps += 1
            return self.head(y[:, -1]), state

    @staticmethod
    def decode(logits: torch.Tensor, n_actions: Union[int, torch.Tensor] = 0, act_dim: Union[int, torch.Tensor] = 0,
               greedy: bool = True, temperature: float = 1.0, generator: Optional[torch.Generator] = None):
        """Actions from step logits: discrete (B,) int64 or continuous (B, 8) (see head.decode)."""
        return decode(logits, n_actions, act_dim, greedy=greedy, temperature=temperature, generator=generator)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path, extra: Optional[dict] = None):
        """Atomic checkpoint carrying the LRAMConfig and the state_dict (`checkpoint.load_model` reads it);
        non-finite weights are refused (a diverged model is never written)."""
        payload = model_payload(self, extra)
        check_finite_weights(payload["state_dict"], f"model file {path} (not written)")
        return atomic_torch_save(payload, path)


def nonfinite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors in a state dict holding NaN or an infinity."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite_weights(state: dict, where: str) -> None:
    """ValueError naming `where` and the first tensors when weights hold NaN / inf (a run that
    diverged wrote them: scoring or fine-tuning such a model only hides the failure)."""
    bad = nonfinite_tensors(state)
    if bad:
        raise ValueError(f"{where}: the weights are not finite (NaN or inf in {len(bad)} tensors: "
                         f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the run that wrote it diverged. "
                         f"Use an earlier checkpoint, or retrain with a lower --lr")


FORMAT = "lramlab.model"  # a model file: format tag, version, config dict, state_dict, extra
VERSION = 1


def model_payload(model: LRAM, extra: Optional[dict] = None) -> dict:
    """What a model checkpoint holds: format tag, config dict, state_dict, optional extra."""
    return {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(),
            "state_dict": model.state_dict(), "extra": dict(extra or {})}


def build_model(cfg: Union[LRAMConfig, dict, None] = None, **overrides) -> LRAM:
    """Build an LRAM agent from an LRAMConfig (or a dict / keyword overrides of its fields)."""
    if cfg is None:
        cfg = LRAMConfig(**overrides)
    elif isinstance(cfg, dict):
        cfg = LRAMConfig.from_dict({**cfg, **overrides})
    elif overrides:
        cfg = LRAMConfig.from_dict({**cfg.to_dict(), **overrides})
    return LRAM(cfg)


def parameter_counts(backbones=("xlstm", "mamba", "dt"), sizes=None) -> list[dict]:
    """Parameter counts of the paper's presets, built on the meta device (no memory, no init).

    One row per (model, size); xLSTM appears as [7:1] and [1:0]. Keys: model, backbone, size,
    n_layers, d_model, n_heads, slstm_at, backbone_params, total.
    """
    from .config import SIZES

    rows = []
    for backbone in backbones:
        variants = [("7:1", "[7:1]"), ("1:0", "[1:0]")] if backbone == "xlstm" else [(None, "")]
        for size in sizes or [s for s in SIZES if s != "tiny"]:
            if backbone == "dt" and size.endswith("-half"):
                continue  # DT is the layer-matched reference itself
            for ratio, label in variants:
                cfg = LRAMConfig(backbone=backbone, size=size, slstm_at=ratio)
                with torch.device("meta"):
                    model = LRAM(cfg)
                rows.append({
                    "model": f"{backbone} {label}".strip(), "backbone": backbone, "size": size,
                    "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
                    "slstm_at": tuple(cfg.slstm_at), "backbone_params": model.num_parameters("backbone"),
                    "total": model.num_parameters(),
                })
    return rows


def parameter_table_markdown(rows: Optional[list] = None) -> str:
    """docs/models.md's table: one row per preset (regenerate after changing a model)."""
    rows = parameter_counts() if rows is None else rows
    lines = ["| model | size | layers | d_model | heads | sLSTM at | backbone params | total params |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        at = str(list(r["slstm_at"])) if r["backbone"] == "xlstm" else "-"
        heads = r["n_heads"] if r["backbone"] != "mamba" else "-"
        lines.append(f"| {r['model']} | {r['size']} | {r['n_layers']} | {r['d_model']} | {heads} | {at} | "
                     f"{r['backbone_params']:,} | {r['total']:,} |")
    return "\n".join(lines)
