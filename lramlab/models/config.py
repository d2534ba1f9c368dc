"""`LRAMConfig`: one validated dataclass describing an LRAM agent (paper §3.2, App. C.3).

Size presets come from `reference/model_presets.yaml` (ml-jku/LRAM configs): DT has
4/6/8/10 layers at width 512/768/1024/1280 for 16M/48M/110M/206M; the recurrent backbones
(xLSTM, Mamba) have twice DT's layers at the same width. The layer-matched `"<size>-half"`
variants (App. E.5, used for the latency study) give the recurrent backbones DT's layer count
and a wider hidden size to match parameters (xlstm_*_half.yaml). `"tiny"` is for tests.

Fields left as None (`d_model`, `n_layers`, `n_heads`, `slstm_at`) are resolved from the preset
in `__post_init__`, so a saved config is complete and rebuilds the same model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from lramlab._dataclass_cli import check_fields

BACKBONES = ("xlstm", "mamba", "dt")
BASE_SIZES = ("tiny", "16M", "48M", "110M", "206M")
SIZES = BASE_SIZES + tuple(f"{s}-half" for s in BASE_SIZES[1:])
TOKEN_MODES = ("srr", "s", "srra", "sr", "ad")
IMAGE_ENCODERS = ("impala",)
DTYPES = ("float32", "bfloat16", "float16")

# DT presets (layers, width, heads); head_dim 64 (dt_*_64.yaml). tiny: 2 layers, width 64, 4 heads.
_DT_PRESETS = {
    "tiny": (2, 64, 4),
    "16M": (4, 512, 8),
    "48M": (6, 768, 12),
    "110M": (8, 1024, 16),
    "206M": (10, 1280, 20),
}
# Layer-matched recurrent widths (xlstm_{medium,mediumplus,large,huge}_half.yaml; mamba_huge_half.yaml
# uses the same 1792 as xlstm_huge_half, so the xLSTM widths are used for Mamba too).
_HALF_WIDTH = {"16M": 704, "48M": 1064, "110M": 1432, "206M": 1792}
# sLSTM positions of xLSTM [7:1] per size (paper App. C.3).
_SLSTM_AT_7_1 = {"tiny": (1,), "16M": (1,), "48M": (1, 3), "110M": (1, 3), "206M": (1, 3, 5)}
# xLSTM / Mamba tiny: 2 blocks of width 64 (xLSTM [7:1] tiny = mLSTM + sLSTM at 1).
_TINY_RECURRENT = (2, 64, 4)
_XLSTM_HEADS = 4  # paper default (App. D.5.4 discusses more heads)


def _base_size(size: str) -> str:
    return size[: -len("-half")] if size.endswith("-half") else size


def preset(backbone: str, size: str) -> dict[str, Any]:
    """The paper's preset {n_layers, d_model, n_heads, slstm_at} for a backbone and size."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone={backbone!r} is unknown; valid backbones: {', '.join(BACKBONES)}")
    if size not in SIZES:
        raise ValueError(f"size={size!r} is unknown; valid sizes: {', '.join(SIZES)}")
    base = _base_size(size)
    half = size.endswith("-half")
    dt_layers, dt_width, dt_heads = _DT_PRESETS[base]
    if backbone == "dt":
        # DT is already the layer-matched reference: "-half" is the same model.
        return {"n_layers": dt_layers, "d_model": dt_width, "n_heads": dt_heads, "slstm_at": ()}
    if base == "tiny":
        n_layers, width, heads = _TINY_RECURRENT
    elif half:
        n_layers, width, heads = dt_layers, _HALF_WIDTH[base], _XLSTM_HEADS
    else:
        n_layers, width, heads = 2 * dt_layers, dt_width, _XLSTM_HEADS
    slstm = tuple(p for p in _SLSTM_AT_7_1[base] if p < n_layers) if backbone == "xlstm" else ()
    return {"n_layers": n_layers, "d_model": width, "n_heads": heads, "slstm_at": slstm}


def slstm_positions_for_ratio(ratio: str, n_layers: int, size: str) -> tuple[int, ...]:
    """Resolve an xLSTM ratio string "a:b" (mLSTM:sLSTM) to sLSTM block positions.

    "7:1" is the paper's per-size placement ([1], [1,3], [1,3], [1,3,5]); "1:0" is mLSTM only.
    Any other "a:b" places round(n_layers * b / (a + b)) sLSTM blocks (at least one when b > 0)
    at the odd positions 1, 3, 5, ... first, then the even ones (alternating, as in the xLSTM paper).
    """
    try:
        a_str, b_str = ratio.split(":")
        a, b = int(a_str), int(b_str)
        if a < 0 or b < 0 or a + b == 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"slstm_at={ratio!r} is not a ratio 'a:b' of non-negative integers (e.g. '7:1', '1:0')"
        ) from None
    if b == 0:
        return ()
    if (a, b) == (7, 1):
        return tuple(p for p in _SLSTM_AT_7_1[_base_size(size)] if p < n_layers)
    n_s = max(1, round(n_layers * b / (a + b)))
    order = list(range(1, n_layers, 2)) + list(range(0, n_layers, 2))
    return tuple(sorted(order[:n_s]))


@dataclass
class LRAMConfig:
    """An LRAM agent: encoders + backbone + shared action head (paper §3.2, App. C).

    Defaults are the paper's values. Fields:
      backbone: "xlstm" | "mamba" | "dt".
      size: "tiny" | "16M" | "48M" | "110M" | "206M" | "<size>-half" (layer-matched, App. E.5).
      d_model, n_layers, n_heads: None -> from the size preset (reference/model_presets.yaml).
      slstm_at: xLSTM sLSTM block positions; None -> [7:1] default for the size
        ((1,) for 16M, (1,3) for 48M/110M, (1,3,5) for 206M); () -> [1:0] (mLSTM only);
        a ratio string "7:1" / "1:0" / "a:b" is resolved to positions.
      context_steps: C timesteps of context in training (50); tokens = tokens_per_step * C.
      tokens: "srr" = (s, R̂, r) per step (paper); "s" = behaviour cloning without RTG/reward
        tokens (App. E.2); "srra" = (s, R̂, r, a), the action-token ablation (App. E.1); "sr" = (s, r),
        Algorithm Distillation's conditioning without a return-to-go (ICL, App. E.2), action read at s;
        "ad" = ONE token per step, the sum of the embeddings of (s_t, a_{t-1}, r_{t-1}) as in Algorithm
        Distillation (Laskin et al., 2022): half of "sr"'s sequence, and the actions are seen.
      image_encoder: "impala" (IMPALA-CNN, 3 stacks of 16/32/32 channels).
      mlstm_proj_factor, slstm_ff_proj_factor, conv1d_kernel_size, qkv_proj_blocksize: xLSTM
        block settings (xlstm library / LRAM xlstm_*.yaml values).
      slstm_backend: "auto" (CUDA kernel when a GPU is present, else "vanilla") | "vanilla" | "cuda".
      xlstm_kernel: parallel (training) forward of the xLSTM: "auto" (lramlab's fused CPU kernels
        with hand-written backward on a CPU in fp32/fp64, the package's own path elsewhere, e.g. its
        CUDA kernels on a GPU) | "fast" (the fused CPU kernels; an error where they cannot run) |
        "reference" (the package's blocks: sLSTM "vanilla"/CUDA backend, mLSTM parallel form).
        Same parameters and checkpoints either way; the backbone's `forward_kernel` says which ran.
      xlstm_step_kernel: "fast" (lramlab's own recurrent/chunkwise step over the package's weights)
        | "reference" (the xlstm package's own token step; token-by-token only).
      xlstm_step_weights: "float32" (exact) | "float16": on a CPU, the fast step's big projections
        use fbgemm's fp16-packed weights (fp32 activations, states and accumulation; ~2e-4 relative
        error per projection, so step no longer equals forward to 1e-4). Inference only.
      mamba_d_state, mamba_d_conv, mamba_expand: Mamba block (16, 4, 2).
      mamba_kernel: "auto" (mamba-ssm's CUDA kernels on a GPU when they import) | "torch" (never)
        | "cuda" (required: error without them).
      mamba_scan: the scan when mamba-ssm's kernels do not run: "auto" (= "numba" on a CPU in fp32
        when numba imports, else "sequential" on a CPU and "chunked" on a GPU) | "numba" (the CPU
        fast path of backbones/_mamba_cpu.py: fused numba scan/conv forward and backward for
        training, fused one-token step) | "sequential" (the pure-torch reference recurrence)
        | "chunked" (pure-torch log-depth scan within chunks). Weights are the same in all.
      mamba_scan_chunk: chunk length of the "chunked" scan, and the state-checkpoint spacing of the
        "numba" backward (memory B*E*N*L/chunk per layer) (32).
      dt_dropout: DT dropout (0, App. E.4); dt_n_positions: DT learned positional table (1600).
      dt_window_mode: DT `step` past its window: "exact" (re-encode the training window of the
        last C steps every step) | "hop" (re-encode the last W/2 once per W/2 tokens); see
        backbones/dt.py. Inference only.
      norm_eps: LayerNorm epsilon.
      dtype: parameter dtype ("float32"; bf16 training uses autocast over fp32 weights).
    """

    backbone: Literal["xlstm", "mamba", "dt"] = "xlstm"
    size: str = "16M"
    d_model: Optional[int] = None
    n_layers: Optional[int] = None
    n_heads: Optional[int] = None
    slstm_at: Union[tuple[int, ...], str, None] = None
    context_steps: int = 50
    tokens: Literal["srr", "s", "srra", "sr", "ad"] = "srr"
    image_encoder: Literal["impala"] = "impala"
    # xLSTM
    mlstm_proj_factor: float = 2.0
    slstm_ff_proj_factor: float = 1.3
    conv1d_kernel_size: int = 4
    qkv_proj_blocksize: int = 4
    slstm_backend: Literal["auto", "vanilla", "cuda"] = "auto"
    xlstm_kernel: Literal["auto", "fast", "reference"] = "auto"
    xlstm_step_kernel: Literal["fast", "reference"] = "fast"
    xlstm_step_weights: Literal["float32", "float16"] = "float32"
    # Mamba
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_kernel: Literal["auto", "torch", "cuda"] = "auto"
    mamba_scan: Literal["auto", "numba", "sequential", "chunked"] = "auto"
    mamba_scan_chunk: int = 32
    # DT
    dt_dropout: float = 0.0
    dt_n_positions: int = 1600
    dt_window_mode: Literal["exact", "hop"] = "exact"
    norm_eps: float = 1e-5
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    extra: dict = field(default_factory=dict)  # free-form notes carried into checkpoints

    def __post_init__(self) -> None:
        check_fields(self)  # types; float fields finite (an inf proj factor would fail deep in a layer)
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"LRAMConfig.backbone={self.backbone!r} is unknown; valid backbones: {', '.join(BACKBONES)}"
            )
        if self.size not in SIZES:
            raise ValueError(f"LRAMConfig.size={self.size!r} is unknown; valid sizes: {', '.join(SIZES)}")
        p = preset(self.backbone, self.size)
        for name in ("d_model", "n_layers", "n_heads"):
            if getattr(self, name) is None:
                setattr(self, name, p[name])
        for name in ("d_model", "n_layers", "n_heads", "context_steps", "conv1d_kernel_size",
                     "qkv_proj_blocksize", "mamba_d_state", "mamba_d_conv", "mamba_expand", "mamba_scan_chunk",
                     "dt_n_positions"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LRAMConfig.{name}={v!r} must be a positive integer")
        if self.tokens not in TOKEN_MODES:
            raise ValueError(f"LRAMConfig.tokens={self.tokens!r}; valid: {', '.join(TOKEN_MODES)}")
        if self.image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"LRAMConfig.image_encoder={self.image_encoder!r}; valid: {', '.join(IMAGE_ENCODERS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"LRAMConfig.dtype={self.dtype!r}; valid: {', '.join(DTYPES)}")
        if self.slstm_backend not in ("auto", "vanilla", "cuda"):
            raise ValueError(f"LRAMConfig.slstm_backend={self.slstm_backend!r}; valid: auto, vanilla, cuda")
        if self.xlstm_kernel not in ("auto", "fast", "reference"):
            raise ValueError(f"LRAMConfig.xlstm_kernel={self.xlstm_kernel!r}; valid: auto, fast, reference")
        if self.xlstm_step_kernel not in ("fast", "reference"):
            raise ValueError(f"LRAMConfig.xlstm_step_kernel={self.xlstm_step_kernel!r}; valid: fast, reference")
        if self.xlstm_step_weights not in ("float32", "float16"):
            raise ValueError(f"LRAMConfig.xlstm_step_weights={self.xlstm_step_weights!r}; valid: float32, float16")
        if self.mamba_kernel not in ("auto", "torch", "cuda"):
            raise ValueError(f"LRAMConfig.mamba_kernel={self.mamba_kernel!r}; valid: auto, torch, cuda")
        if self.mamba_scan not in ("auto", "numba", "sequential", "chunked"):
            raise ValueError(f"LRAMConfig.mamba_scan={self.mamba_scan!r}; valid: auto, numba, sequential, chunked")
        if self.dt_window_mode not in ("exact", "hop"):
            raise ValueError(f"LRAMConfig.dt_window_mode={self.dt_window_mode!r}; valid: exact, hop")
        if not (0.0 <= float(self.dt_dropout) < 1.0):
            raise ValueError(f"LRAMConfig.dt_dropout={self.dt_dropout!r} must be in [0, 1)")
        for name in ("mlstm_proj_factor", "slstm_ff_proj_factor", "norm_eps"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"LRAMConfig.{name}={getattr(self, name)!r} must be > 0")
        # sLSTM positions
        if self.slstm_at is None:  # the paper's [7:1] placement for the size (within n_layers)
            self.slstm_at = slstm_positions_for_ratio("7:1", self.n_layers, self.size) if self.backbone == "xlstm" else ()
        elif isinstance(self.slstm_at, str):
            self.slstm_at = slstm_positions_for_ratio(self.slstm_at, self.n_layers, self.size)
        else:
            try:
                at = tuple(int(x) for x in self.slstm_at)
            except (TypeError, ValueError):
                raise ValueError(f"LRAMConfig.slstm_at={self.slstm_at!r} must be positions, a ratio 'a:b', or None") from None
            if any(x < 0 or x >= self.n_layers for x in at) or len(set(at)) != len(at):
                raise ValueError(
                    f"LRAMConfig.slstm_at={self.slstm_at!r}: positions must be distinct and in 0..{self.n_layers - 1}"
                )
            self.slstm_at = tuple(sorted(at))
        if self.backbone != "xlstm" and self.slstm_at:
            raise ValueError(f"LRAMConfig.slstm_at={self.slstm_at!r} only applies to backbone='xlstm'")
        # head divisibility
        if self.backbone == "dt" and self.d_model % self.n_heads:
            raise ValueError(f"LRAMConfig.n_heads={self.n_heads} must divide d_model={self.d_model} for DT")
        if self.backbone == "xlstm":
            if self.slstm_at and self.d_model % self.n_heads:
                raise ValueError(f"LRAMConfig.n_heads={self.n_heads} must divide d_model={self.d_model} (sLSTM heads)")
            if self.mlstm_inner_dim % self.n_heads or self.mlstm_inner_dim % self.qkv_proj_blocksize:
                raise ValueError(
                    f"LRAMConfig.n_heads={self.n_heads} / qkv_proj_blocksize={self.qkv_proj_blocksize} must divide "
                    f"the mLSTM inner dim {self.mlstm_inner_dim}"
                )

    # ----- derived values -----
    @property
    def tokens_per_step(self) -> int:
        return 1 if self.tokens == "ad" else len(self.tokens)

    @property
    def context_tokens(self) -> int:
        return self.tokens_per_step * self.context_steps

    @property
    def mlstm_inner_dim(self) -> int:
        # xlstm's UpProjConfigMixin: proj_factor * D rounded up to a multiple of 64
        import math

        return int(math.ceil(self.mlstm_proj_factor * self.d_model / 64) * 64)

    @property
    def xlstm_ratio(self) -> str:
        """Bracket notation of the xLSTM variant, e.g. "[7:1]" or "[1:0]" (paper's naming)."""
        if self.backbone != "xlstm":
            return ""
        if not self.slstm_at:
            return "[1:0]"
        return "[7:1]" if self.slstm_at == slstm_positions_for_ratio("7:1", self.n_layers, self.size) else f"@{list(self.slstm_at)}"

    @property
    def torch_dtype(self):
        import torch

        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["slstm_at"] = list(self.slstm_at)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LRAMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"LRAMConfig: unknown fields {unknown}; known: {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("slstm_at"), list):
            d["slstm_at"] = tuple(d["slstm_at"])
        return cls(**d)
