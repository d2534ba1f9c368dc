"""Inference latency of the whole agent step (encoders + backbone + head) vs context length.

`lramlab bench latency` (paper §4.4, App. D.5): for each backbone, size, batch size B and
context C (timesteps), the agent's state is brought to C timesteps of context and then one
environment step -- tokens (r_{t-1}, s_t, R̂_t) in, logits at R̂_t out -- is timed.

- Recurrent backbones (xLSTM, Mamba) are prefilled for real: the 3C-token stream is run
  through `backbone.step` in pieces (xLSTM's step is chunkwise, so this is fast). Their state has
  a fixed size, so the latency should not depend on C.
- DT keeps a KV cache of 3C tokens (window 3C + 3, so the timed step appends without sliding);
  filling a 76,800-token cache by attention is quadratic, so the cache is sized and marked as
  holding 3C tokens directly (attention cost does not depend on the cached values).
- References in the same run: the xlstm package's own step loop (`xlstm_step_kernel=
  "reference"`: three token steps per timestep) for the xLSTM rows, and, when `transformers` is
  installed, Hugging Face GPT-2 with a KV cache of 3C tokens at DT's size.
- The weight-streaming floor (CLI; `floor=True`): one fp32 matrix-vector product over as many
  weights as a step reads (backbone, head, the observation and scalar encoders in use), timed
  round-robin with the steps. A batch-1 step cannot beat it on a CPU (every weight comes from
  memory once), so rows report `x_floor` / `x_floor_cpu`: their latency as a multiple of it.
Memory: the state's exact tensor bytes, plus peak RSS growth (CPU, /proc VmHWM) or
torch.cuda.max_memory_allocated (GPU).

Shape letters: B batch, C context timesteps, D width.
"""
from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from lramlab._dataclass_cli import ArgumentParser, JsonOutput, add_json_option, command


# ------------------------------------------------------------------------------------ timing
@dataclass
class LatencyResult:
    """Latency of one call in milliseconds over `reps` timed calls (warm-up excluded).

    Wall-clock median / p10 / p90 / mean / min, plus `cpu_median_ms`: the median process CPU time
    per call. On a shared, oversubscribed CPU the wall clock includes waiting for a core; with one
    torch thread the CPU time is what the call costs when it has a core to itself."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    reps: int
    warmup: int
    cpu_median_ms: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _cuda_sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure_latency(fn: Callable[[], object], warmup: int = 10, reps: int = 50,
                    sync: Optional[Callable[[], None]] = None) -> LatencyResult:
    """Time `fn()` `reps` times after `warmup` untimed calls; synchronises CUDA around each call."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"measure_latency: reps={reps} must be >= 1 and warmup={warmup} >= 0")
    return measure_latency_interleaved({0: fn}, warmup=warmup, reps=reps, sync=sync)[0]


# ------------------------------------------------------------------------------------ memory
def _rss_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory growth inside a `with` block in MB: CUDA max_memory_allocated on a GPU, else the
    growth of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs where allowed)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.mb: Optional[float] = None

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current RSS
            except OSError:
                pass
            self.base = _rss_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            peak = _rss_kb("VmHWM")
            self.mb = None if peak is None or self.base is None else max(0, peak - self.base) / 1024
        return False


def tensor_bytes(obj) -> int:
    """Bytes of all tensors reachable in a (nested) state object."""
    seen: set[int] = set()

    def walk(o) -> int:
        if isinstance(o, torch.Tensor):
            key = o.untyped_storage().data_ptr()
            if key in seen:
                return 0
            seen.add(key)
            return o.untyped_storage().nbytes()
        if isinstance(o, dict):
            return sum(walk(v) for v in o.values())
        if isinstance(o, (list, tuple)):
            return sum(walk(v) for v in o)
        if hasattr(o, "__dict__"):
            return sum(walk(v) for v in vars(o).values())
        return 0

    return walk(obj)


# ------------------------------------------------------------------------------------ agent
def measure_latency_interleaved(fns: dict, warmup: int = 10, reps: int = 50,
                                sync: Optional[Callable[[], None]] = None) -> dict:
    """`measure_latency` for several functions, timed round-robin (rep 1 of each, rep 2 of each, ...),
    so that load drifting on a shared machine affects all of them alike. -> {key: LatencyResult}."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"measure_latency_interleaved: reps={reps} must be >= 1 and warmup={warmup} >= 0")
    sync = _cuda_sync if sync is None else sync
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict = {k: [] for k in fns}
    cpu: dict = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync()
            times[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.process_time() - c0) * 1e3)
    return {k: LatencyResult(median_ms=statistics.median(t), p10_ms=_percentile(t, 0.1), p90_ms=_percentile(t, 0.9),
                             mean_ms=statistics.fmean(t), min_ms=min(t), reps=reps, warmup=warmup,
                             cpu_median_ms=statistics.median(cpu[k]))
            for k, t in times.items()}


# ------------------------------------------------------------------------------------ agent
def _bench_inputs(B: int, device, obs: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if obs == "image":
        o = torch.randint(0, 256, (B, 1, 64, 64), generator=g, dtype=torch.uint8)
    else:
        o = torch.randn(B, 204, generator=g)
    return o.to(device), torch.full((B,), 1.0, device=device), torch.full((B,), 0.01, device=device)


def _stream_tokens(model, B: int, T: int, obs: str, g: torch.Generator) -> torch.Tensor:
    """Normed tokens of T timesteps of a synthetic stream (benchmark inputs): (B, k*T, D)."""
    device = model.head.weight.device
    if obs == "image":
        o = {"images": torch.randint(0, 256, (B, T, 1, 64, 64), generator=g, dtype=torch.uint8).to(device)}
    else:
        o = {"states": torch.randn(B, T, 204, generator=g).to(device)}
    batch = {**o, "rtg": torch.ones(B, T, device=device), "rewards": torch.full((B, T), 0.01, device=device),
             "actions": torch.zeros(B, T, dtype=torch.long, device=device)}
    return model.embed(batch)


def prefill_states(model, batch_size: int, contexts: list[int], obs: str = "state", piece_steps: int = 256,
                   seed: int = 0) -> dict:
    """Agent states at each context C (timesteps), from one stream run once through the backbone.

    states[C] is the state right after `step` at timestep C: it has seen C - 1 whole timesteps and
    the tokens of timestep C up to its read token (R̂_C), so the next `step` feeds (r_C, s, R̂)."""
    from lramlab.models.agent import AgentState

    g = torch.Generator().manual_seed(seed)
    full = model.init_state(batch_size=batch_size)  # has seen `done` whole timesteps
    done, states = 0, {}
    for C in sorted(set(contexts)):
        while done < C - 1:
            T = min(piece_steps, C - 1 - done)
            _, full.backbone = model.backbone.step(_stream_tokens(model, batch_size, T, obs, g), full.backbone)
            done += T
        st = AgentState(copy.deepcopy(full.backbone), batch_size)
        last = _stream_tokens(model, batch_size, 1, obs, g)[:, : model.read_offset + 1]  # s_C, R̂_C
        _, st.backbone = model.backbone.step(last, st.backbone)
        st.steps = C
        states[C] = st
    return states


def prefill(model, state, context_steps: int, obs: str = "state", piece_steps: int = 256, seed: int = 0):
    """Bring a fresh agent `state` to a context of `context_steps` timesteps (see prefill_states)."""
    st = prefill_states(model, state.batch_size, [context_steps], obs, piece_steps, seed)[context_steps]
    state.backbone, state.steps = st.backbone, st.steps
    return state


def build_model_for_context(backbone: str, size: str, context_steps: int, device, kernel: str = "fast", dtype: str = "float32",
           step_weights: str = "float32"):
    """A model whose step can be timed at `context_steps` (DT: positions and KV window sized to it)."""
    from lramlab.models import LRAMConfig, build_model

    kw = {}
    if backbone == "dt":
        # KV caches of up to 3C tokens plus the timed step's 3: positions for 3C + 3
        kw = {"context_steps": context_steps + 1, "dt_n_positions": max(1600, 3 * (context_steps + 1))}
    if backbone == "xlstm":
        kw["xlstm_step_kernel"] = kernel
        kw["xlstm_step_weights"] = step_weights
    cfg = LRAMConfig(backbone=backbone, size=size, dtype=dtype, **kw)
    return build_model(cfg).to(device).eval()


def estimate_state_bytes(backbone: str, size: str, B: int, C: int) -> int:
    """Rough state size: DT's KV cache grows with C, recurrent states do not."""
    from lramlab.models import LRAMConfig

    cfg = LRAMConfig(backbone=backbone, size=size)
    if backbone == "dt":
        return 4 * (2 * cfg.n_layers + 1) * B * 3 * (C + 1) * cfg.d_model
    if backbone == "xlstm":
        dh = cfg.mlstm_inner_dim // cfg.n_heads
        return 4 * cfg.n_layers * B * cfg.n_heads * dh * (dh + 1)
    return 4 * cfg.n_layers * B * 2 * cfg.d_model * (cfg.mamba_d_state + cfg.mamba_d_conv)


def weights_read_per_step(model, obs: str = "state") -> int:
    """Parameters one agent step reads: backbone, head, the encoder of `obs`, scalar/action encoders."""
    mods = [model.backbone, model.head, model.image_encoder if obs == "image" else model.state_encoder]
    mods += [getattr(model, n) for n in ("rtg_encoder", "reward_encoder", "action_encoder") if hasattr(model, n)]
    return sum(p.numel() for m in mods for p in m.parameters())


def floor_fn(n_weights: int, width: int, device) -> Callable[[], object]:
    """One fp32 matrix-vector product over `n_weights` weights (rows of `width`): streaming the
    weights from memory once, the floor of a batch-1 step."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(max(1, n_weights // width), width, generator=g).to(device)
    x = torch.randn(width, generator=g).to(device)
    out = torch.empty(W.shape[0], device=device)
    return lambda: torch.mv(W, x, out=out)


XLSTM_STEP_KERNELS = ("fast", "fast-torch", "reference")
_XLSTM_ROW_NAME = {"fast": "xlstm", "fast-torch": "xlstm-torchstep", "reference": "xlstm-pkgstep"}


def agent_latency_over_contexts(backbone: str, size: str, contexts: list[int], batch_size: int, *, device="cpu",
                                obs: str = "state", warmup: int = 5, reps: int = 30, chunkwise: bool = True,
                                kernel: str = "fast", step_weights: str = "float32", prefill_mode: str = "compute",
                                model=None, xlstm_kernels: Optional[list[str]] = None, floor: bool = False) -> list[dict]:
    """Per-timestep latency of the agent step at each context C, one row per C, timed round-robin.

    Recurrent backbones: one stream is prefilled once and its state copied at each C
    (prefill_mode "skip" only counts the steps: a recurrent state has the same size and cost
    whatever it holds). DT: a KV cache of 3C tokens per C (window 3C + 3, see module docstring).
    xlstm_kernels (xLSTM only; replaces `kernel`): step implementations timed side by side, round-robin
    in the same loop over the same weights: "fast" (lramlab's step with its numba CPU kernels when
    numba is installed), "fast-torch" (the same step on torch ops only, the previous fast path),
    "reference" (the package's own token step loop, chunkwise=False). Rows are named
    xlstm / xlstm-torchstep / xlstm-pkgstep. floor=True also times the weight-streaming floor
    (`floor_fn` over `weights_read_per_step` weights) in the same round-robin and adds floor_ms,
    floor_cpu_ms and x_floor / x_floor_cpu (the row's median as a multiple of it) to every row."""
    from lramlab.models.agent import AgentState

    device = torch.device(device)
    B, Cs = batch_size, sorted(set(contexts))
    variants = list(xlstm_kernels) if (backbone == "xlstm" and xlstm_kernels) else [kernel]
    for v in variants:
        if v not in XLSTM_STEP_KERNELS and backbone == "xlstm":
            raise ValueError(f"xlstm step kernel {v!r}; valid: {', '.join(XLSTM_STEP_KERNELS)}")
    first_fast = next((v for v in variants if v != "reference"), None)
    if model is None:
        model = build_model_for_context(backbone, size, max(Cs), device, "fast" if first_fast else "reference", step_weights=step_weights)
    models = {}
    for v in variants:
        if backbone == "xlstm" and v == "reference" and model.backbone.step_kernel != "reference":
            ref = build_model_for_context(backbone, size, max(Cs), device, "reference", step_weights=step_weights)
            ref.load_state_dict(model.state_dict())
            models[v] = ref
        else:
            models[v] = model
    o, rtg, prev_r = _bench_inputs(B, device, obs)

    def row_name(v):
        name = backbone
        if backbone == "xlstm":
            name = _XLSTM_ROW_NAME.get(v, backbone) if xlstm_kernels else (
                backbone + ("-pkgstep" if v == "reference" else ""))
            if step_weights != "float32" and v != "reference":
                name += f"-{step_weights}w"
        return name

    with torch.inference_mode(), PeakMemory(device) as mem:
        t0 = time.perf_counter()
        if backbone == "dt":
            states = {}
            for C in Cs:
                bstate = model.backbone.init_state(B, window=3 * C + 3)
                bstate.length = 3 * C  # a full cache of 3C tokens (see module docstring)
                states[C] = AgentState(bstate, B, steps=C)
            how = "cache sized, not computed"
        elif prefill_mode == "skip":
            states = {C: AgentState(models[variants[0]].init_state(batch_size=B).backbone, B, steps=C) for C in Cs}
            how = "skipped (fixed-size state)"
        else:
            states = prefill_states(model, B, Cs, obs=obs)
            how = "computed"
        prefill_s = time.perf_counter() - t0
        all_states = {}
        for v in variants:
            for C in Cs:
                if v == "reference" and backbone == "xlstm" and first_fast:
                    # the package's state format differs; its state has a fixed size (cost independent of C)
                    all_states[v, C] = AgentState(models[v].init_state(batch_size=B).backbone, B, steps=C)
                else:
                    all_states[v, C] = states[C] if len(variants) == 1 else copy.deepcopy(states[C])

        def stepper(v, C):
            st, mdl = all_states[v, C], models[v]
            impl = {"fast": "numba", "fast-torch": "torch"}.get(v)
            chunk = chunkwise and v != "reference" if xlstm_kernels else chunkwise

            def one_step():
                if backbone == "dt":
                    st.backbone.length = 3 * C
                if impl is not None and backbone == "xlstm":
                    mdl.backbone.step_impl = impl
                mdl.step(st, obs=o, rtg=rtg, prev_reward=prev_r, chunkwise=chunk)
            return one_step

        fns = {(v, C): stepper(v, C) for v in variants for C in Cs}
        n_floor = weights_read_per_step(model, obs) if floor else 0
        if floor:
            fns["floor", 0] = floor_fn(n_floor, model.cfg.d_model, device)
        res = measure_latency_interleaved(fns, warmup=warmup, reps=reps)
        state_mb = {(v, C): tensor_bytes(all_states[v, C].backbone) / 2**20 for v in variants for C in Cs}
    rows = []
    for v in variants:
        for C in Cs:
            chunk = chunkwise and v != "reference" if xlstm_kernels else chunkwise
            row = {"backbone": row_name(v), "size": size, "params": model.num_parameters(), "batch_size": B,
                   "context_steps": C, "device": str(device), "threads": torch.get_num_threads(), "obs": obs,
                   "mode": "chunkwise" if chunk else "token",
                   "prefill": "skipped (fixed-size state)" if (v == "reference" and xlstm_kernels) else how,
                   "prefill_s": round(prefill_s, 3), "state_mb": round(state_mb[v, C], 3)}
            if backbone == "xlstm" and v != "reference":
                models[v].backbone.step_impl = "numba" if v == "fast" else "torch"
                row["step_impl"] = models[v].backbone.effective_step_impl(device)
            row.update({k: round(x, 3) if isinstance(x, float) else x for k, x in res[v, C].to_dict().items()})
            if floor:
                fl = res["floor", 0]
                row.update(floor_weights=n_floor, floor_ms=round(fl.median_ms, 4), floor_cpu_ms=round(fl.cpu_median_ms, 4),
                           x_floor=round(res[v, C].median_ms / fl.median_ms, 2),
                           x_floor_cpu=round(res[v, C].cpu_median_ms / fl.cpu_median_ms, 2))
            row["peak_mem_mb"] = None if mem.mb is None else round(mem.mb, 1)  # of the whole group
            rows.append(row)
    return rows


def agent_step_latency(backbone: str, size: str, context_steps: int, batch_size: int, **kw) -> dict:
    """Latency of one agent step at a context of `context_steps` timesteps (one result row)."""
    return agent_latency_over_contexts(backbone, size, [context_steps], batch_size, **kw)[0]


def gpt2_reference_latency(size: str, context_steps: int, batch_size: int, *, device="cpu", warmup=5,
                           reps=30) -> Optional[dict]:
    """HF GPT-2 at DT's size with a KV cache of 3C tokens: one timestep = 3 cached token steps."""
    try:
        import transformers
    except ImportError:
        return None
    from lramlab.models import LRAMConfig

    cfg = LRAMConfig(backbone="dt", size=size)
    C, B = context_steps, batch_size
    n_pos = 3 * C + 8
    device = torch.device(device)
    gcfg = transformers.GPT2Config(n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_positions=n_pos,
                                   vocab_size=1, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0)
    model = transformers.GPT2Model(gcfg).to(device).eval()
    row = {"backbone": "hf-gpt2", "size": size, "params": sum(p.numel() for p in model.parameters()),
           "batch_size": B, "context_steps": C, "device": str(device), "threads": torch.get_num_threads(),
           "obs": "-", "mode": "token", "prefill": "cache sized, not computed"}
    with torch.inference_mode(), PeakMemory(device) as mem:
        H, Dh = cfg.n_heads, cfg.d_model // cfg.n_heads
        cache = transformers.DynamicCache()
        for layer in range(cfg.n_layers):
            kv = torch.zeros(B, H, 3 * C, Dh, device=device)
            cache.update(kv, kv.clone(), layer)
        x = torch.randn(B, 1, cfg.d_model, device=device)
        import inspect

        # newer transformers name the argument `cache`, older ones `past_key_values`
        kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

        def one_step():
            for _ in range(3):
                model(inputs_embeds=x, use_cache=True, **{kw: cache})
            cache.crop(-3)  # drop the 3 new tokens: the cache stays at 3C

        res = measure_latency(one_step, warmup=warmup, reps=reps)
        row["state_mb"] = round(2 * cfg.n_layers * B * 3 * C * cfg.d_model * 4 / 2**20, 3)
    row.update({k: round(v, 3) if isinstance(v, float) else v for k, v in res.to_dict().items()})
    row["peak_mem_mb"] = None if mem.mb is None else round(mem.mb, 1)
    return row


# ------------------------------------------------------------------------------------ CLI
def _ints(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers") from None
    if not out or any(x < 1 for x in out):
        raise argparse.ArgumentTypeError(f"{s!r}: need positive integers")
    return out


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not 0 < v < math.inf:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{s!r}: need a finite number > 0")
    return v


def _strs(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="lramlab bench latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", type=_strs, default=["xlstm", "mamba", "dt"], help="comma list (xlstm,mamba,dt)")
    p.add_argument("--sizes", type=_strs, default=["16M"], help="comma list of presets, e.g. 16M,16M-half,206M")
    p.add_argument("--contexts", type=_ints, default=[50, 400, 1600, 6400, 25600], help="context lengths C in timesteps")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 16], help="comma list of batch sizes")
    p.add_argument("--obs", choices=["state", "image"], default="state", help="observation kind fed each step")
    p.add_argument("--mode", choices=["chunkwise", "token"], default="chunkwise",
                   help="feed a timestep's tokens in one backbone call, or one at a time")
    p.add_argument("--prefill", choices=["compute", "skip"], default="compute",
                   help="recurrent backbones: run the C-step context through the model first, or only count it")
    p.add_argument("--xlstm-step-weights", choices=["float32", "float16"], default="float32",
                   help="xLSTM fast step: exact fp32 weights, or fbgemm fp16-packed projection weights (CPU)")
    p.add_argument("--xlstm-step-kernel", type=_strs, default=["fast"],
                   help="xLSTM step implementations timed side by side (round-robin, same weights): comma list of "
                        "fast (lramlab's step with numba CPU kernels when numba is installed), fast-torch (the same "
                        "step on torch ops only: the previous fast path), reference (the xlstm package's token step)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-state-gb", type=_positive_float, default=4.0,
                   help="skip a configuration whose state (e.g. DT's KV cache) would exceed this")
    p.add_argument("--references", type=_strs, default=["xlstm-pkgstep", "hf-gpt2"],
                   help="reference rows: xlstm-pkgstep (the xlstm package's own step loop, xLSTM rows), "
                        "hf-gpt2 (HF GPT-2 with a KV cache, DT rows); 'none' for neither")
    p.add_argument("--no-reference", action="store_true", help="same as --references none")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the weight-streaming floor (one fp32 mat-vec over the weights a step reads)")
    add_json_option(p, "the rows as JSON")
    a = p.parse_args(argv)
    from lramlab.models.config import BACKBONES, SIZES

    for b in a.backbones:
        if b not in BACKBONES:
            p.error(f"--backbones: unknown backbone {b!r}; valid: {', '.join(BACKBONES)}")
    for s in a.sizes:
        if s not in SIZES:
            p.error(f"--sizes: unknown size {s!r}; valid: {', '.join(SIZES)}")
    if a.no_reference or a.references == ["none"]:
        a.references = []
    for r in a.references:
        if r not in ("xlstm-pkgstep", "hf-gpt2"):
            p.error(f"--references: unknown reference {r!r}; valid: xlstm-pkgstep, hf-gpt2, none")
    for k in a.xlstm_step_kernel:
        if k not in XLSTM_STEP_KERNELS:
            p.error(f"--xlstm-step-kernel: unknown kernel {k!r}; valid: {', '.join(XLSTM_STEP_KERNELS)}")
    if a.reps < 1 or a.warmup < 0:
        p.error(f"--reps={a.reps} must be >= 1 and --warmup={a.warmup} >= 0")
    return a


def _fmt(row: dict) -> str:
    if "skipped" in row:
        return f"{row['backbone']:<16} {row['size']:<9} B={row['batch_size']:<3} C={row['context_steps']:<6} skipped: {row['skipped']}"
    mem = "-" if row.get("peak_mem_mb") is None else f"{row['peak_mem_mb']:.0f}"
    return (f"{row['backbone']:<16} {row['size']:<9} B={row['batch_size']:<3} C={row['context_steps']:<6} "
            f"median {row['median_ms']:8.2f} ms  p10 {row['p10_ms']:8.2f}  p90 {row['p90_ms']:8.2f}  "
            f"cpu {row.get('cpu_median_ms', float('nan')):8.2f}  "
            f"state {row['state_mb']:9.2f} MB  peak {mem:>6} MB"
            + (f"  floor {row['floor_cpu_ms']:.2f} ms cpu: x{row['x_floor_cpu']:.2f} (wall x{row['x_floor']:.2f})"
               if "x_floor" in row else ""))


def run(args: argparse.Namespace) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict] = []

    def emit(row):
        rows.append(row)
        print(_fmt(row), flush=True)

    chunkwise = args.mode == "chunkwise"
    cap = args.max_state_gb * 2**30
    for size in args.sizes:
        for backbone in args.backbones:
            for B in args.batch_sizes:
                Cs = []
                for C in args.contexts:
                    need = estimate_state_bytes(backbone, size, B, C)
                    if need > cap:
                        emit({"backbone": backbone, "size": size, "batch_size": B, "context_steps": C,
                              "skipped": f"state ~{need / 2**30:.1f} GB > --max-state-gb {args.max_state_gb}"})
                    else:
                        Cs.append(C)
                if not Cs:
                    continue
                try:
                    for r in agent_latency_over_contexts(
                            backbone, size, Cs, B, device=args.device, obs=args.obs, warmup=args.warmup,
                            reps=args.reps, chunkwise=chunkwise, prefill_mode=args.prefill,
                            step_weights=args.xlstm_step_weights if backbone == "xlstm" else "float32",
                            xlstm_kernels=args.xlstm_step_kernel if args.xlstm_step_kernel != ["fast"] else None,
                            floor=not args.no_floor):
                        emit(r)
                except (MemoryError, RuntimeError) as err:
                    emit({"backbone": backbone, "size": size, "batch_size": B, "context_steps": max(Cs),
                          "skipped": f"{type(err).__name__}: {err}"[:200]})
                if backbone == "xlstm" and "xlstm-pkgstep" in args.references \
                        and "reference" not in args.xlstm_step_kernel:
                    # the package's own step loop (3 token steps per timestep); fixed-size state, so one context
                    emit(agent_step_latency("xlstm", size, min(Cs), B, device=args.device, obs=args.obs, warmup=2,
                                            reps=max(5, args.reps // 3), kernel="reference", chunkwise=False))
                if backbone == "dt" and "hf-gpt2" in args.references:
                    for C in Cs:
                        r = gpt2_reference_latency(size, C, B, device=args.device, warmup=args.warmup, reps=args.reps)
                        if r is None:
                            emit({"backbone": "hf-gpt2", "size": size, "batch_size": B, "context_steps": C,
                                  "skipped": "transformers is not installed (pip install -e '.[dev]')"})
                            break
                        emit(r)
    return rows


@command("lramlab bench latency")
def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with JsonOutput(args.json) as out:  # --json -: the table rows go to stderr, stdout gets only the JSON
        rows = run(args)
        out.write({"rows": rows, "argv": argv, "torch": torch.__version__, "cpu_count": os.cpu_count()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
