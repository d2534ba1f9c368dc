"""The inference-time study grid (paper §4.4, App. D.5) on top of `lramlab.bench.latency`.

Measurement primitives live in `lramlab.bench.latency` (`measure_latency_interleaved`: warm-up
excluded, CUDA synchronised, median, percentiles and process CPU time; `prefill_states`;
`PeakMemory`; `tensor_bytes`). This module runs the study's grid and collects the rows:

- latency vs context length C (paper: 50 ... 25600 timesteps) at each batch size B (paper 1, 16),
- throughput (agent steps per second = B / latency) vs batch size at a fixed C (paper: C = 1600,
  B = 1 ... 128), and where each recurrent backbone's throughput overtakes DT's (`crossover`,
  in `lramlab.analysis.crossover`),
- peak memory and the state's own size (DT's KV cache grows with C, recurrent states do not),

for each backbone at one or more size presets (the layer-matched "<size>-half" presets compare the
same number of layer blocks at matched parameters; DT's "-half" is the same model as its base, so
it is measured once), in two modes:

- "model": the agent step alone (obs -> logits), Atari-sized 64x64 image observations;
- "env": in the loop with real environments (default Atari Freeway, as the paper): agent step,
  action decoding and B real `env.step` calls per timed step (the simulator's time included).

Backbone labels: "xlstm", "mamba", "dt", and "xlstm-<N>h" (xLSTM with N heads at the same hidden
size, paper Fig. 7 / App. D.5.4: more heads = smaller head dimension).

How a grid point is measured (one point = one kind, mode, B and C, for every backbone):
- The context: a recurrent backbone's state is prefilled for real with one stream of C timesteps
  at B = 1 (`bench.prefill_states`, once per backbone for all contexts, observations through the
  state encoder: see `_Study.prefill`) and tiled to B rows (`tile_state`: every row holds that real
  context; a step costs the same whatever a row holds). Prefilling B streams would cost B times
  as much (hours at B = 128, C = 1600 on a CPU). DT's KV cache is sized to 3C tokens and marked
  full (`bench.latency`: attention cost does not depend on the cached values).
- The backbones of one point are timed round-robin in one loop (rep 1 of each, rep 2 of each, ...),
  so that load drifting on a shared machine hits them alike: ratios between backbones, and so the
  crossover, are steadier than the absolute times. In "env" mode they share one pool of envs (each
  backbone's step continues the episodes where the previous one left them: the env's cost per step
  does not depend on who chose the actions).
- A state that would not fit is recorded with `oom=True` without being allocated (the paper's
  missing bars): larger than `max_state_gb`, or than half the free memory; an allocation that fails
  anyway is caught and recorded the same way.

Shape letters: B batch (parallel environments), C context timesteps.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from lramlab._optional import require

from .crossover import crossover, crossover_summary

__all__ = ["LatencyRecord", "LatencyTable", "parse_backbone", "reference_size", "tile_state", "build_bench_model",
           "run_latency_study", "model_step_latency", "env_loop_latency", "grid_points", "table_from_rows",
           "crossover", "crossover_summary", "merge_repeats"]

_LABEL = re.compile(r"^(xlstm|mamba|dt)(?:-(\d+)h)?$")


def parse_backbone(label: str) -> tuple[str, int]:
    """"xlstm" -> ("xlstm", 0), "xlstm-16h" -> ("xlstm", 16), "mamba" -> ("mamba", 0); 0 heads = the
    preset's. ValueError for anything else (heads only for xLSTM)."""
    m = _LABEL.match(str(label))
    if m is None or (m.group(2) is not None and m.group(1) != "xlstm") or m.group(2) == "0":
        raise ValueError(f"backbone {label!r} is unknown; valid: xlstm, mamba, dt, or xlstm-<N>h "
                         f"(xLSTM with N >= 1 heads, e.g. xlstm-16h)")
    return m.group(1), int(m.group(2) or 0)


def reference_size(size: str) -> str:
    """The size DT is measured at for `size`: DT's "<size>-half" is the same model as "<size>"."""
    return size[: -len("-half")] if size.endswith("-half") else size


@dataclass
class LatencyRecord:
    """One grid point of one backbone. Times are per agent step (all B streams), in milliseconds."""

    kind: str                      # "latency" (vs context) | "throughput" (vs batch size)
    backbone: str                  # label: xlstm | xlstm-<N>h | mamba | dt
    size: str
    mode: str                      # "model" | "env"
    batch_size: int
    context: int                   # C, timesteps of context before the timed steps
    latency_ms: float = math.nan   # median wall-clock time
    latency_p10_ms: float = math.nan
    latency_p90_ms: float = math.nan
    throughput: float = math.nan   # agent steps per second over all B streams: B / latency
    cpu_ms: float = math.nan       # median process CPU time per step (one thread: the cost with a core to itself)
    peak_memory_mb: float | None = None  # peak growth while building the state and taking the first step
    state_mb: float | None = None  # the recurrent state's / KV cache's tensors
    params: int | None = None
    device: str = "cpu"
    reps: int = 0
    warmup: int = 0
    oom: bool = False
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LatencyTable:
    """The grid's records; `rows()` for plots and JSON, `to_frame()` with pandas."""

    records: list[LatencyRecord] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [r.to_dict() for r in self.records]

    def extend(self, records: Iterable[LatencyRecord]) -> None:
        self.records.extend(records)

    def to_frame(self):
        pd = require("pandas", "LatencyTable.to_frame")
        return pd.DataFrame(self.rows())

    def select(self, **where) -> list[LatencyRecord]:
        return [r for r in self.records if all(getattr(r, k) == v for k, v in where.items())]

    def markdown(self) -> str:
        """A compact table (kind, backbone, size, mode, B, C, median/p10/p90 ms, CPU ms, steps/s, memory)."""
        head = ("| kind | backbone | size | mode | B | C | median ms | p10-p90 ms | cpu ms | steps/s | peak MiB "
                "| state MiB |")
        lines = [head, "|" + "---|" * 12]
        for r in self.records:
            lead = f"| {r.kind} | {r.backbone} | {r.size} | {r.mode} | {r.batch_size} | {r.context} | "
            if r.oom:
                lines.append(lead + "OOM | | | | | |")
                continue
            pk = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
            st = "-" if r.state_mb is None else f"{r.state_mb:.2f}"
            lines.append(lead + f"{r.latency_ms:.2f} | {r.latency_p10_ms:.2f}-{r.latency_p90_ms:.2f} | "
                                f"{r.cpu_ms:.2f} | {r.throughput:.1f} | {pk} | {st} |")
        return "\n".join(lines)

    def summary(self) -> dict:
        """JSON-ready numbers for metrics.json, with the crossovers (`crossover_summary`)."""
        ok = [r for r in self.records if not r.oom]
        return {"n_records": len(self.records), "n_oom": len(self.records) - len(ok),
                "all_latency_positive": bool(ok) and all(r.latency_ms > 0 for r in ok),
                "all_finite": bool(ok) and all(math.isfinite(v) for r in ok
                                               for v in (r.latency_ms, r.throughput, r.cpu_ms)),
                "min_latency_ms": min((r.latency_ms for r in ok), default=None),
                "max_latency_ms": max((r.latency_ms for r in ok), default=None),
                "crossover": crossover_summary(self), "rows": self.rows(), **self.info}


def merge_repeats(records: Iterable[LatencyRecord]) -> list[LatencyRecord]:
    """One record per grid point (kind, backbone, size, mode, B, C): a point measured again (the
    latency explorer's *measure*) is merged, not drawn twice: the reps-weighted mean of the medians
    (and of the CPU times), the widest p10-p90, the reps summed; OOM only if every measurement was."""
    groups: dict[tuple, list[LatencyRecord]] = {}
    for r in records:
        groups.setdefault((r.kind, r.backbone, r.size, r.mode, r.batch_size, r.context), []).append(r)
    out = []
    for grp in groups.values():
        ok = [r for r in grp if not r.oom and math.isfinite(r.latency_ms)]
        if len(grp) == 1 or not ok:
            out.append(grp[-1])
            continue
        w = np.asarray([max(1, r.reps) for r in ok], dtype=np.float64)
        lat = float(np.average([r.latency_ms for r in ok], weights=w))
        cpu = [r.cpu_ms for r in ok if math.isfinite(r.cpu_ms)]
        last = ok[-1]
        out.append(dataclasses.replace(last, latency_ms=lat, latency_p10_ms=min(r.latency_p10_ms for r in ok),
                                       latency_p90_ms=max(r.latency_p90_ms for r in ok),
                                       throughput=last.batch_size * 1000.0 / lat if lat > 0 else math.nan,
                                       cpu_ms=float(np.mean(cpu)) if cpu else math.nan, reps=int(w.sum()),
                                       note=f"merged {len(ok)} measurements"))
    return out


def table_from_rows(rows: Sequence[dict]) -> LatencyTable:
    """A LatencyTable back from `rows()` / metrics.json."""
    names = set(LatencyRecord.__dataclass_fields__)
    return LatencyTable([LatencyRecord(**{k: v for k, v in r.items() if k in names}) for r in rows])


# ----------------------------------------------------------------------------- helpers
def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _available_bytes(device: str) -> int | None:
    import torch

    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    from lramlab.bench.train import available_memory_bytes

    return available_memory_bytes()


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    name = type(err).__name__
    return "OutOfMemory" in name or "out of memory" in str(err).lower() or "not enough memory" in str(err).lower()


def build_bench_model(backbone: str, size: str, context: int, device: str, xlstm_heads: int = 0, seed: int = 0):
    """The model the study times: `backbone` is a label (xlstm-16h: 16 heads; `xlstm_heads` applies
    to a plain "xlstm"); DT's positions and cache window fit a context of C timesteps."""
    import torch

    from lramlab.bench import latency as bench

    name, heads = parse_backbone(backbone)
    heads = heads or (xlstm_heads if name == "xlstm" else 0)
    torch.manual_seed(seed)
    if name == "xlstm" and heads:
        from lramlab.models import LRAMConfig, build_model

        return build_model(LRAMConfig(backbone="xlstm", size=size, n_heads=heads)).to(device).eval()
    return bench.build_model_for_context(name, size, context, torch.device(device))


def tile_state(model, state, batch_size: int):
    """An AgentState of `batch_size` rows, each a copy of the one row of `state` (B = 1).

    The batch dimension of each tensor is found by comparing the model's fresh states for 1 and 2
    rows (it differs between backbones: xLSTM's sLSTM and Mamba's states put it second), so no
    backbone's layout is written down here."""
    import torch

    from lramlab.models.agent import AgentState

    if state.batch_size != 1:
        raise ValueError(f"tile_state: the state has {state.batch_size} rows, expected 1")
    one, two = model.init_state(batch_size=1).backbone, model.init_state(batch_size=2).backbone

    def walk(s, a, b, path):
        if isinstance(s, torch.Tensor):
            dims = [d for d in range(a.dim()) if a.shape[d] != b.shape[d]]
            if a.dim() != s.dim() or len(dims) != 1 or s.shape[dims[0]] != 1:
                raise ValueError(f"tile_state: state tensor {path} has shape {tuple(s.shape)}; fresh states have "
                                 f"{tuple(a.shape)} (B=1) and {tuple(b.shape)} (B=2): no single batch dimension")
            reps = [1] * s.dim()
            reps[dims[0]] = batch_size
            return s.repeat(*reps)
        if isinstance(s, dict):
            if set(s) != set(a):
                raise ValueError(f"tile_state: state {path} has keys {sorted(s)}, a fresh one {sorted(a)}")
            return {k: walk(s[k], a[k], b[k], f"{path}[{k!r}]") for k in s}
        if isinstance(s, (list, tuple)):
            if len(s) != len(a):
                raise ValueError(f"tile_state: state {path} has {len(s)} entries, a fresh one {len(a)}")
            return type(s)(walk(x, y, z, f"{path}[{i}]") for i, (x, y, z) in enumerate(zip(s, a, b)))
        if hasattr(s, "__dict__") and not isinstance(s, type):
            out = copy.copy(s)
            for k, v in vars(s).items():
                setattr(out, k, walk(v, getattr(a, k), getattr(b, k), f"{path}.{k}"))
            return out
        return s

    return AgentState(walk(state.backbone, one, two, "state"), batch_size, steps=state.steps)


def _record(kind, backbone, size, mode, B, C, res, device, **extra) -> LatencyRecord:
    med = float(res.median_ms)
    return LatencyRecord(kind=kind, backbone=backbone, size=size, mode=mode, batch_size=int(B), context=int(C),
                         latency_ms=med, latency_p10_ms=float(res.p10_ms), latency_p90_ms=float(res.p90_ms),
                         throughput=float(B) * 1000.0 / med if med > 0 else math.nan,
                         cpu_ms=float(getattr(res, "cpu_median_ms", math.nan)), device=device,
                         reps=int(res.reps), warmup=int(res.warmup), **extra)


# ----------------------------------------------------------------------------- the grid
def study_members(cfg) -> list[tuple[str, str]]:
    """(backbone label, size) measured at every grid point: each backbone at each size, DT once per
    distinct model (its "-half" is its base size's model), in the config's order."""
    out: list[tuple[str, str]] = []
    for backbone in cfg.backbones:
        seen: set[str] = set()
        for size in cfg.sizes:
            if parse_backbone(backbone)[0] == "dt":
                if reference_size(size) in seen:
                    continue
                seen.add(reference_size(size))
            out.append((backbone, size))
    return out


def _groups(cfg) -> list[tuple[str, str, int, int]]:
    """(kind, mode, B, C) of every grid point, in run order."""
    out = []
    for mode in cfg.modes:
        out += [("latency", mode, B, C) for C in cfg.contexts for B in cfg.batch_sizes]
        out += [("throughput", mode, B, cfg.throughput_context) for B in cfg.throughput_batches]
    return out


def grid_points(cfg) -> list[tuple[str, str, str, str, int, int]]:
    """(kind, backbone, size, mode, B, C) of every record of a LatencyStudyConfig, in run order."""
    members = study_members(cfg)
    return [(kind, b, s, mode, B, C) for kind, mode, B, C in _groups(cfg) for b, s in members]


class _EnvPool:
    """Real environments of one task, made on demand and shared by the points of a study."""

    def __init__(self, task: str, seed: int):
        self.task, self.seed, self.envs, self.obs = task, seed, [], []

    def take(self, B: int):
        from lramlab.envs import make_env

        while len(self.envs) < B:
            i = len(self.envs)
            env = make_env(self.task, seed=self.seed + i)
            self.envs.append(env)
            self.obs.append(np.asarray(env.reset(seed=self.seed + i)[0]))
        return self.envs[:B]

    def close(self):
        for e in self.envs:
            e.close()
        self.envs, self.obs = [], []


class _Study:
    """Models, prefilled B = 1 states and the env pool of one `run_latency_study` call."""

    def __init__(self, cfg, device: str):
        self.cfg, self.device = cfg, device
        self.models: dict[tuple, Any] = {}
        self.prefilled: dict[tuple, dict] = {}
        self.pool = None
        if "env" in cfg.modes:
            from lramlab.manifests import get_task

            get_task(cfg.env_task)  # an unknown task fails here, before any measurement
            self.pool = _EnvPool(cfg.env_task, cfg.seed)
        self.contexts = sorted(set(cfg.contexts) | ({cfg.throughput_context} if cfg.throughput_batches else set()))

    def model(self, label: str, size: str, C: int):
        name = parse_backbone(label)[0]
        key = (label, size, C if name == "dt" else 0)  # recurrent models do not depend on C
        if key not in self.models:
            if name == "dt":  # one DT cache window at a time: drop the other contexts' models
                for k in [k for k in self.models if k[:2] == (label, size)]:
                    del self.models[k]
                gc.collect()
            self.models[key] = build_bench_model(label, size, C, self.device, self.cfg.xlstm_heads, self.cfg.seed)
        return self.models[key]

    def state_bytes(self, label: str, size: str, B: int, C: int) -> int:
        from lramlab.bench import latency as bench

        if parse_backbone(label)[0] == "dt":
            return bench.estimate_state_bytes("dt", size, B, C)
        return B * bench.tensor_bytes(self.prefill(label, size)[C].backbone)

    def prefill(self, label: str, size: str) -> dict:
        """{C: AgentState at B = 1 after C real timesteps} for every context of the study (one stream).

        The context's observations go through the state encoder: the past tokens' encoder does not
        change the state's size or what a step costs, and the image encoder would make a prefill
        of 25600 timesteps ~9x dearer on a CPU (a 16M xLSTM: ~7 min instead of ~50 s)."""
        import torch

        from lramlab.bench import latency as bench

        key = (label, size)
        if key not in self.prefilled:
            with torch.inference_mode():
                self.prefilled[key] = bench.prefill_states(self.model(label, size, 0), 1, self.contexts, obs="state",
                                                           seed=self.cfg.seed)
        return self.prefilled[key]

    def state(self, label: str, size: str, B: int, C: int):
        """A state of B rows at a context of C timesteps (see the module docstring)."""
        from lramlab.models.agent import AgentState

        if parse_backbone(label)[0] == "dt":
            model = self.model(label, size, C)
            bstate = model.backbone.init_state(B, window=3 * C + 3)
            bstate.length = 3 * C
            return AgentState(bstate, B, steps=C)
        return tile_state(self.model(label, size, 0), self.prefill(label, size)[C], B)


def _stepper(study: _Study, label: str, size: str, mode: str, B: int, C: int, box: dict):
    """(one_step, state, peak MB): a closure taking one agent step (+ B env steps in "env" mode), the
    state it advances, and the peak memory growth while making that state and taking a first step."""
    import torch

    from lramlab.bench import latency as bench

    name = parse_backbone(label)[0]
    model = study.model(label, size, C)
    dev = torch.device(study.device)
    if mode == "model":
        g = torch.Generator().manual_seed(study.cfg.seed)
        obs = torch.randint(0, 256, (B, 1, 64, 64), generator=g, dtype=torch.uint8).to(dev)
        rtg, prev_r = torch.ones(B, device=dev), torch.full((B,), 0.01, device=dev)
        with bench.PeakMemory(dev) as mem:
            st = study.state(label, size, B, C)

            def one_step():
                if name == "dt":
                    st.backbone.length = 3 * C  # keep the context at C timesteps
                model.step(st, obs=obs, rtg=rtg, prev_reward=prev_r)
            one_step()  # the first step (untimed) allocates what the step needs
        return one_step, st, mem.mb

    from lramlab.rollout import Agent

    envs = study.pool.take(B)
    if "obs" not in box:
        box["obs"] = np.stack(study.pool.obs[:B])
    box_agent: dict = {}

    def one_step():
        agent = box_agent["agent"]
        if name == "dt":
            agent.state.backbone.length = 3 * C  # keep the context at C timesteps
        actions = agent.act(box["obs"])
        rewards = np.zeros(B, dtype=np.float32)
        nxt = box["obs"].copy()
        for i, env in enumerate(envs):
            o, r, term, trunc, _ = env.step(int(actions[i]) if agent.discrete else actions[i])
            rewards[i] = float(r)
            if term or trunc:
                o, _ = env.reset()
            nxt[i] = np.asarray(o)
        agent.observe(rewards)
        box["obs"] = nxt

    def make_agent():
        return Agent(model, study.cfg.env_task, B, greedy=False, seed=study.cfg.seed, device=dev)

    if name == "dt":
        with bench.PeakMemory(dev) as mem:
            agent = box_agent["agent"] = make_agent()  # its fresh state is the cache: window 3C + 3
            if agent.state.backbone.x.shape[1] != 3 * C + 3:
                raise RuntimeError(f"DT cache window {agent.state.backbone.x.shape[1]} tokens, expected {3 * C + 3}")
            agent.state.backbone.length, agent.state.steps = 3 * C, C
            agent.prev_reward = torch.zeros(B, device=dev)  # the context ended with a reward token to feed
            one_step()
    else:
        agent = box_agent["agent"] = make_agent()
        agent.state = None  # drop its fresh zero state before measuring: the prefilled context replaces it
        with bench.PeakMemory(dev) as mem:
            agent.state = study.state(label, size, B, C)
            agent.prev_reward = torch.zeros(B, device=dev)
            one_step()
    return one_step, agent.state, mem.mb


def _measure_point(study: _Study, kind: str, mode: str, B: int, C: int, members) -> list[LatencyRecord]:
    """Every member at one grid point, timed round-robin; OOM records for states that do not fit."""
    import torch

    from lramlab.bench import latency as bench

    cfg, device = study.cfg, study.device
    out: dict[int, LatencyRecord] = {}
    fns, info = {}, {}
    box: dict = {}  # "env" mode: the pool's current observations, passed from step to step
    cap = cfg.max_state_gb * 2**30 if cfg.max_state_gb else None

    def oom(i, label, size, note):
        out[i] = LatencyRecord(kind, label, size, mode, B, C, oom=True, device=device, note=note)

    for label, size in members:  # built outside inference mode: their weights must stay normal tensors
        study.model(label, size, C)
    with torch.inference_mode():
        for i, (label, size) in enumerate(members):
            need = study.state_bytes(label, size, B, C)
            avail = _available_bytes(device)
            if cap is not None and need > cap:
                oom(i, label, size, f"skipped: state ~{need / 2**30:.2f} GiB > max_state_gb {cfg.max_state_gb}")
                continue
            if avail is not None and need > 0.5 * avail:
                oom(i, label, size, f"skipped: state ~{need / 2**30:.2f} GiB, {avail / 2**30:.1f} GiB free")
                continue
            try:
                fn, st, mb = _stepper(study, label, size, mode, B, C, box)
                fns[i] = fn
                info[i] = (mb, bench.tensor_bytes(st.backbone) / 2**20)
            except (RuntimeError, MemoryError) as err:
                if not _is_oom(err):
                    raise
                oom(i, label, size, f"{type(err).__name__}: {str(err)[:160]}")
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
        if fns:
            warm = max(0, cfg.warmup - 1)
            try:
                res = bench.measure_latency_interleaved(fns, warmup=warm, reps=cfg.reps)
            except (RuntimeError, MemoryError) as err:  # rare: fall back to one at a time to find the culprit
                if not _is_oom(err):
                    raise
                res = {}
                for i, fn in fns.items():
                    try:
                        res[i] = bench.measure_latency(fn, warmup=warm, reps=cfg.reps)
                    except (RuntimeError, MemoryError) as e:
                        if not _is_oom(e):
                            raise
                        oom(i, *members[i], f"{type(e).__name__}: {str(e)[:160]}")
            for i, r in res.items():
                label, size = members[i]
                mb, state_mb = info[i]
                note = "interleaved with " + ", ".join(f"{b} {s}" for j, (b, s) in enumerate(members)
                                                       if j in res and j != i) if len(res) > 1 else ""
                if mode == "env":
                    note = f"env {cfg.env_task}" + (f"; {note}" if note else "")
                r.warmup = warm + 1
                out[i] = _record(kind, label, size, mode, B, C, r, device, peak_memory_mb=mb,
                                 state_mb=round(state_mb, 3), params=study.model(label, size, C).num_parameters(),
                                 note=note)
    fns.clear()
    gc.collect()
    return [out[i] for i in sorted(out)]


def run_latency_study(cfg, progress: bool = True) -> LatencyTable:
    """Measure every grid point of an `lramlab.studies.LatencyStudyConfig` (see the module docstring)."""
    import torch

    device = resolve_device(cfg.device)
    members = study_members(cfg)
    groups = _groups(cfg)
    threads_before = torch.get_num_threads()
    if getattr(cfg, "threads", 0):
        torch.set_num_threads(cfg.threads)
    table = LatencyTable(info={"device": device, "size": cfg.size, "sizes": list(cfg.sizes),
                               "env_task": cfg.env_task, "torch_threads": torch.get_num_threads(),
                               "max_state_gb": cfg.max_state_gb,
                               "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None})
    study = _Study(cfg, device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(groups), desc="latency grid", unit="point")
    try:
        for kind, mode, B, C in groups:
            if bar is not None:
                bar.set_postfix_str(f"{kind} {mode} B={B} C={C}")
            table.extend(_measure_point(study, kind, mode, B, C, members))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if study.pool is not None:
            study.pool.close()
        study.models.clear()
        study.prefilled.clear()
        gc.collect()
        torch.set_num_threads(threads_before)
    return table


def _single_point(backbone, size, context, batch_size, mode, *, task="atari/freeway", device="cpu", warmup=2,
                  reps=10, seed=0, model=None, kind="latency", xlstm_heads=0) -> LatencyRecord:
    from types import SimpleNamespace

    cfg = SimpleNamespace(contexts=(int(context),), throughput_batches=(), throughput_context=int(context),
                          modes=(mode,), env_task=task, seed=seed, xlstm_heads=xlstm_heads, warmup=warmup,
                          reps=reps, max_state_gb=0.0)
    study = _Study(cfg, resolve_device(device))
    if model is not None:
        study.models[(backbone, size, int(context) if parse_backbone(backbone)[0] == "dt" else 0)] = model
    try:
        return _measure_point(study, kind, mode, int(batch_size), int(context), [(backbone, size)])[0]
    finally:
        if study.pool is not None:
            study.pool.close()


def model_step_latency(backbone: str, size: str, context: int, batch_size: int, *, device: str = "cpu",
                       warmup: int = 2, reps: int = 10, model=None, kind: str = "latency") -> LatencyRecord:
    """One agent step (64x64 image observation -> logits) after C timesteps of context, as a record."""
    return _single_point(backbone, size, context, batch_size, "model", device=device, warmup=warmup, reps=reps,
                         model=model, kind=kind)


def env_loop_latency(backbone: str, size: str, context: int, batch_size: int, *, task: str = "atari/freeway",
                     device: str = "cpu", warmup: int = 2, reps: int = 10, seed: int = 0, model=None,
                     kind: str = "latency") -> LatencyRecord:
    """One step of the agent in the loop with B real environments of `task`, after C timesteps
    of context: agent step + action decoding + B `env.step` calls (+ resets at episode ends)."""
    return _single_point(backbone, size, context, batch_size, "env", task=task, device=device, warmup=warmup,
                         reps=reps, seed=seed, model=model, kind=kind)
