"""The inference-time study grid (paper §4.4, App. D.5) on top of `lramlab.bench.latency`.

Measurement itself lives in `lramlab.bench.latency` (`measure_latency`: warm-up excluded, CUDA
synchronised, median and percentiles; `agent_step_latency`: one agent step after a context of C
timesteps; `PeakMemory`). This module runs the study's grid and collects the rows:

- latency vs context length C (paper: 50 ... 25600 timesteps) at each batch size B (paper 1, 16),
- throughput (steps per second = B / latency) vs batch size at a fixed C (paper: C = 1600,
  B = 1 ... 128),
- peak memory and the state's own size (DT's KV cache grows with C, recurrent states do not),

for each backbone at one size preset (the layer-matched "<size>-half" presets compare the same
number of layer blocks at matched parameters), in two modes:

- "model": the agent step alone (obs -> logits), Atari-sized 64x64 image observations;
- "env": in the loop with a real environment (default Atari Freeway, as the paper): agent step,
  action decoding and B real `env.step` calls per timed step (the simulator's time included).

A configuration that runs out of memory (or whose state would clearly not fit) is recorded with
`oom=True`, as the paper's missing bars.

Shape letters: B batch (parallel environments), C context timesteps.
"""
from __future__ import annotations

import gc
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from lramlab._optional import require


@dataclass
class LatencyRecord:
    """One grid point. Times are per agent step (all B streams), in milliseconds."""

    kind: str                      # "latency" (vs context) | "throughput" (vs batch size)
    backbone: str
    size: str
    mode: str                      # "model" | "env"
    batch_size: int
    context: int                   # C, timesteps of context before the timed steps
    latency_ms: float = math.nan   # median
    latency_p10_ms: float = math.nan
    latency_p90_ms: float = math.nan
    throughput: float = math.nan   # agent steps per second over all B streams: B / latency
    peak_memory_mb: float | None = None  # peak growth while measuring (CUDA allocator or CPU RSS)
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
        """A compact table (kind, backbone, size, mode, B, C, median/p10/p90 ms, steps/s, memory)."""
        head = "| kind | backbone | size | mode | B | C | median ms | p10-p90 ms | steps/s | peak MiB | state MiB |"
        lines = [head, "|" + "---|" * 11]
        for r in self.records:
            if r.oom:
                lines.append(f"| {r.kind} | {r.backbone} | {r.size} | {r.mode} | {r.batch_size} | {r.context} | "
                             f"OOM | | | | |")
                continue
            pk = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
            st = "-" if r.state_mb is None else f"{r.state_mb:.2f}"
            lines.append(f"| {r.kind} | {r.backbone} | {r.size} | {r.mode} | {r.batch_size} | {r.context} | "
                         f"{r.latency_ms:.2f} | {r.latency_p10_ms:.2f}-{r.latency_p90_ms:.2f} | "
                         f"{r.throughput:.1f} | {pk} | {st} |")
        return "\n".join(lines)

    def summary(self) -> dict:
        """JSON-ready numbers for metrics.json."""
        ok = [r for r in self.records if not r.oom]
        return {"n_records": len(self.records), "n_oom": len(self.records) - len(ok),
                "all_latency_positive": bool(ok) and all(r.latency_ms > 0 for r in ok),
                "min_latency_ms": min((r.latency_ms for r in ok), default=None),
                "max_latency_ms": max((r.latency_ms for r in ok), default=None),
                "rows": self.rows(), **self.info}


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
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    name = type(err).__name__
    return "OutOfMemory" in name or "out of memory" in str(err).lower()


def build_bench_model(backbone: str, size: str, context: int, device: str, xlstm_heads: int = 0, seed: int = 0):
    """The model `bench.latency` times (DT's cache window fitted to C), optionally with more xLSTM heads."""
    import torch

    from lramlab.bench import latency as bench

    torch.manual_seed(seed)
    if backbone == "xlstm" and xlstm_heads:
        from lramlab.models import LRAMConfig, build_model

        return build_model(LRAMConfig(backbone="xlstm", size=size, n_heads=xlstm_heads)).to(device).eval()
    return bench.build_model_for_context(backbone, size, context, torch.device(device))


def _record(kind, backbone, size, mode, B, C, res, device, **extra) -> LatencyRecord:
    med = float(res.median_ms)
    return LatencyRecord(kind=kind, backbone=backbone, size=size, mode=mode, batch_size=int(B), context=int(C),
                         latency_ms=med, latency_p10_ms=float(res.p10_ms), latency_p90_ms=float(res.p90_ms),
                         throughput=float(B) * 1000.0 / med if med > 0 else math.nan, device=device,
                         reps=int(res.reps), warmup=int(res.warmup), **extra)


# ----------------------------------------------------------------------------- measurements
def model_step_latency(backbone: str, size: str, context: int, batch_size: int, *, device: str = "cpu",
                       warmup: int = 2, reps: int = 10, model=None, kind: str = "latency") -> LatencyRecord:
    """One agent step (64x64 image observation -> logits) after C timesteps of context: bench's
    `agent_step_latency`, as a record."""
    from lramlab.bench import latency as bench

    row = bench.agent_step_latency(backbone, size, context, batch_size, device=device, obs="image", warmup=warmup,
                                   reps=reps, model=model)
    res = bench.LatencyResult(median_ms=row["median_ms"], p10_ms=row["p10_ms"], p90_ms=row["p90_ms"],
                              mean_ms=row["mean_ms"], min_ms=row["min_ms"], reps=row["reps"], warmup=row["warmup"])
    return _record(kind, backbone, size, "model", batch_size, context, res, device,
                   peak_memory_mb=row.get("peak_mem_mb"), state_mb=row.get("state_mb"), params=row.get("params"),
                   note=f"prefill: {row.get('prefill')}")


def env_loop_latency(backbone: str, size: str, context: int, batch_size: int, *, task: str = "atari/freeway",
                     device: str = "cpu", warmup: int = 2, reps: int = 10, seed: int = 0, model=None,
                     kind: str = "latency") -> LatencyRecord:
    """One step of the agent in the loop with B real environments of `task`, after C timesteps
    of context: agent step + action decoding + B `env.step` calls (+ resets at episode ends).

    The context is built as in `bench.latency`: recurrent states are prefilled with C real
    timesteps' worth of tokens, DT's KV cache is held at 3C tokens (its attention cost does not
    depend on the cached values), so every timed step sees a context of C timesteps.
    """
    import torch

    from lramlab.bench import latency as bench
    from lramlab.envs import make_env
    from lramlab.rollout import Agent

    dev = torch.device(device)
    if model is None:
        model = build_bench_model(backbone, size, context, device, seed=seed)
    B, C = int(batch_size), int(context)
    envs = [make_env(task, seed=seed + i) for i in range(B)]
    try:
        obs = np.stack([np.asarray(e.reset(seed=seed + i)[0]) for i, e in enumerate(envs)])
        agent = Agent(model, task, B, greedy=False, seed=seed, device=dev)
        obs_kind = "image" if obs.ndim == 4 else "state"
        with torch.inference_mode(), bench.PeakMemory(dev) as mem:
            if backbone == "dt":
                agent.state.backbone.length = 3 * C
                agent.state.steps = C
            else:
                bench.prefill(model, agent.state, C, obs=obs_kind)
            agent.prev_reward = torch.zeros(B, device=dev)  # the context ended with a reward token to feed
            box = {"obs": obs}

            def one_step():
                if backbone == "dt":
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

            res = bench.measure_latency(one_step, warmup=warmup, reps=reps)
            state_mb = bench.tensor_bytes(agent.state.backbone) / 2**20
    finally:
        for e in envs:
            e.close()
    return _record(kind, backbone, size, "env", B, C, res, device, peak_memory_mb=mem.mb, state_mb=round(state_mb, 3),
                   params=model.num_parameters(), note=f"env {task}")


def _measure(mode, backbone, size, C, B, cfg, device, model, kind) -> LatencyRecord:
    if mode == "model":
        return model_step_latency(backbone, size, C, B, device=device, warmup=cfg.warmup, reps=cfg.reps, model=model,
                                  kind=kind)
    return env_loop_latency(backbone, size, C, B, task=cfg.env_task, device=device, warmup=cfg.warmup, reps=cfg.reps,
                            seed=cfg.seed, model=model, kind=kind)


def grid_points(cfg) -> list[tuple[str, str, str, int, int]]:
    """(kind, backbone, mode, B, C) of every measurement of a LatencyStudyConfig, in run order."""
    pts = []
    for backbone in cfg.backbones:
        for mode in cfg.modes:
            for B in cfg.batch_sizes:
                for C in cfg.contexts:
                    pts.append(("latency", backbone, mode, B, C))
            for B in cfg.throughput_batches:
                pts.append(("throughput", backbone, mode, B, cfg.throughput_context))
    return pts


def run_latency_study(cfg, progress: bool = True) -> LatencyTable:
    """Measure every grid point of an `lramlab.studies.LatencyStudyConfig` (see the module docstring)."""
    import torch

    from lramlab.bench import latency as bench

    device = resolve_device(cfg.device)
    pts = grid_points(cfg)
    threads_before = torch.get_num_threads()
    if getattr(cfg, "threads", 0):
        torch.set_num_threads(cfg.threads)
    table = LatencyTable(info={"device": device, "size": cfg.size, "env_task": cfg.env_task,
                               "torch_threads": torch.get_num_threads(),
                               "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None})
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pts), desc="latency grid", unit="point")
    models: dict[tuple[str, int], Any] = {}
    avail = _available_bytes(device)
    try:
        for kind, backbone, mode, B, C in pts:
            if bar is not None:
                bar.set_postfix_str(f"{backbone} {mode} B={B} C={C}")
            need = bench.estimate_state_bytes(backbone, cfg.size, B, C)
            if avail is not None and need > 0.5 * avail:
                table.records.append(LatencyRecord(kind, backbone, cfg.size, mode, B, C, oom=True, device=device,
                                                   note=f"skipped: state ~{need / 2**30:.1f} GiB, "
                                                        f"{avail / 2**30:.1f} GiB free"))
            else:
                # recurrent models do not depend on C: one model per backbone; DT's cache window fits C
                key = (backbone, C if backbone == "dt" else 0)
                try:
                    if key not in models:
                        if backbone == "dt":
                            for k in [k for k in models if k[0] == "dt"]:
                                del models[k]
                            gc.collect()
                        models[key] = build_bench_model(backbone, cfg.size, C, device,
                                                        cfg.xlstm_heads if backbone == "xlstm" else 0, cfg.seed)
                    table.records.append(_measure(mode, backbone, cfg.size, C, B, cfg, device, models[key], kind))
                except (RuntimeError, MemoryError) as err:
                    if not _is_oom(err):
                        raise
                    table.records.append(LatencyRecord(kind, backbone, cfg.size, mode, B, C, oom=True, device=device,
                                                       note=f"{type(err).__name__}: {str(err)[:160]}"))
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        models.clear()
        gc.collect()
        torch.set_num_threads(threads_before)
    return table


def table_from_rows(rows: Sequence[dict]) -> LatencyTable:
    """A LatencyTable back from `rows()` / metrics.json."""
    names = set(LatencyRecord.__dataclass_fields__)
    return LatencyTable([LatencyRecord(**{k: v for k, v in r.items() if k in names}) for r in rows])
