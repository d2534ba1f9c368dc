"""Names of the ICL study's agents (`lramlab.icl.study`): backbone variants ("dt", "mamba",
"xlstm:a:b"), their labels, token layouts and run directory names."""
from __future__ import annotations

#: rough relative CPU cost of an agent per token of a timestep: the slowest runs start first, so the
#: last worker is not left alone with a long run. xLSTM / DT: benchmarks/icl_tokens_cost.py (tiny, 1500
#: updates + 40 trials: xLSTM [7:1] 120 / 243 / ~400 CPU s with ad / sr / srr, the matched DT 141 / 292 /
#: 525); Mamba: not re-measured, as the DT (notes/icl-research.md had them equal)
_COST = {"xlstm": 1.0, "mamba": 1.2, "dt": 1.2}
#: tokens per timestep of each layout (LRAMConfig.tokens_per_step): the cost of an update scales with it
_TOKENS_PER_STEP = {"srr": 3, "s": 1, "srra": 4, "sr": 2, "ad": 1}
_LAYOUT_HELP = ("srr: the paper's (s, R̂, r); sr: (s, r) without R̂; ad: AD's (s, a_prev, r_prev); s: states only; "
                "srra: (s, R̂, r, a)")
_LABELS = {"dt": "DT", "mamba": "Mamba", "xlstm": "xLSTM"}


def parse_variant(spec: str) -> tuple[str, str | None]:
    """'dt' | 'mamba' | 'xlstm' | 'xlstm:a:b' -> (backbone, sLSTM ratio); "xlstm" is "xlstm:7:1"."""
    from lramlab.models.config import BACKBONES, slstm_positions_for_ratio

    if not isinstance(spec, str):
        raise ValueError(f"backbone variant {spec!r}: expected a string such as 'dt' or 'xlstm:7:1'")
    backbone, _, ratio = spec.strip().partition(":")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone variant {spec!r}: unknown backbone {backbone!r}; expected one of "
                         f"{', '.join(BACKBONES)}, xLSTM with a ratio as 'xlstm:7:1' or 'xlstm:1:0'")
    if backbone != "xlstm":
        if ratio:
            raise ValueError(f"backbone variant {spec!r}: only xlstm takes an mLSTM:sLSTM ratio")
        return backbone, None
    ratio = ratio or "7:1"
    slstm_positions_for_ratio(ratio, 2, "tiny")  # the ratio's syntax (its ValueError names it)
    a, b = (int(x) for x in ratio.split(":"))
    return backbone, f"{a}:{b}"


def variant_name(spec: str) -> str:
    """The canonical name of a variant: 'xlstm' -> 'xlstm:7:1', ' dt' -> 'dt'."""
    backbone, ratio = parse_variant(spec)
    return backbone if ratio is None else f"{backbone}:{ratio}"


def variant_label(spec: str) -> str:
    """'xlstm:7:1' -> 'xLSTM [7:1]', 'dt' -> 'DT' (figure legends and tables)."""
    backbone, ratio = parse_variant(spec)
    return _LABELS[backbone] + (f" [{ratio}]" if ratio else "")


def run_dir_name(variant: str, seed: int, layout: str | None = None) -> str:
    """'xlstm:7:1', 0 -> 'xlstm-7-1-s0'; with a token layout: 'xlstm:7:1', 0, 'srr' -> 'xlstm-7-1-srr-s0'."""
    name = variant_name(variant).replace(":", "-")
    return f"{name}-{layout}-s{int(seed)}" if layout else f"{name}-s{int(seed)}"


def check_layouts(tokens) -> str | tuple[str, ...]:
    """A token layout (a string, kept) or a list of distinct layouts (a tuple); a ValueError naming
    the bad value and the layouts there are."""
    from lramlab.models.config import TOKEN_MODES

    if isinstance(tokens, str):
        if tokens not in TOKEN_MODES:
            raise ValueError(f"ICLStudyConfig: tokens={tokens!r}: expected one of {', '.join(TOKEN_MODES)} "
                             f"({_LAYOUT_HELP}), or a list of them")
        return tokens
    if not isinstance(tokens, (list, tuple)) or not tokens:
        raise ValueError(f"ICLStudyConfig.tokens={tokens!r}: expected a token layout ({', '.join(TOKEN_MODES)}) "
                         f"or a non-empty list of them")
    for t in tokens:
        if t not in TOKEN_MODES:
            raise ValueError(f"ICLStudyConfig.tokens={list(tokens)}: layout {t!r} is not one of "
                             f"{', '.join(TOKEN_MODES)} ({_LAYOUT_HELP})")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"ICLStudyConfig.tokens={list(tokens)}: a layout is given twice")
    return tuple(tokens)



def job_cost(variant: str, layout: str) -> float:
    """Relative CPU cost of training an agent (the study starts the costliest first)."""
    return _COST[parse_variant(variant)[0]] * _TOKENS_PER_STEP[layout]
