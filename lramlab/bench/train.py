"""Training throughput per backbone, side by side: `lramlab bench train`.

One update = `build_model(cfg)` forward, `action_loss`, backward and an AdamW step on B windows of
C timesteps (3C tokens each), the SAME batch for every row of a (size, context) group. The batch is
real Dark-Room data: Q-learning histories (`lramlab.collect.qlearning.darkroom_histories`, the
in-context-learning data of paper §4.3), one goal per window, windows ending anywhere in a history,
so they cross episode boundaries and the ones that would start before the history are shorter and
right-padded with `mask` False, as the sampler makes them.

Rows per group: DT, Mamba, xLSTM [7:1] and [1:0] on their default training path (on a CPU the xLSTM
runs lramlab's fused C++ kernels, `LRAMConfig.xlstm_kernel="auto"`, and Mamba the numba scan,
`mamba_scan="auto"`), plus the reference paths (`--kernels auto,reference`: the xlstm package's
blocks with the sLSTM "vanilla" backend; Mamba's sequential torch scan) as rows of their own.
Rows are timed round-robin (rep 1 of every row, then rep 2, ...) so load drifting on a shared
machine hits them alike; each row reports median wall-clock and process-CPU time per update,
tokens/s and updates/s from both, and its ratio to DT's tokens/s in the same group. With one
torch thread on a busy machine the CPU-time figures are the ones to compare (wall time includes
waiting for a core). glibc's malloc is set to keep freed memory for reuse before anything is
timed (`_xlstm_train.tune_malloc`, process-wide, so every row runs under the same allocator).

Each (size, context) group runs in a worker process (`--worker`, JSON lines on stdout) whose
data segment is capped (`--max-memory-gb`, default 60 % of the memory available at the start):
the package's reference paths at 16M and C=200 want tens of GB of activations, and on a shared
machine the kernel's out-of-memory killer could pick someone else's process. A row that runs out
of memory (or kills its worker) costs that row, not the run: it is reported as skipped and the
group is timed again without it.

Shape letters: B windows, C timesteps per window, L = 3C tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Optional

import numpy as np
import torch

from lramlab._dataclass_cli import ArgumentParser, JsonOutput, add_json_option, command, json_dumps
from lramlab.bench.latency import _ints, _strs

ROW_KINDS = ("dt", "mamba", "xlstm[7:1]", "xlstm[1:0]")


# ------------------------------------------------------------------------------------ data
def darkroom_batch(batch_size: int, context_steps: int, seed: int = 0) -> dict:
    """B windows of C timesteps from real Dark-Room Q-learning histories (one goal per window).

    Each window ends at a uniformly drawn step of its history (never before step C/4), so most
    windows span several 100-step episodes and early ones are shorter (right-padded), like the sampler's.
    Returns the batch dict of docs/CONTRACTS.md (states (B, C, 2): the model pads to 204)."""
    from lramlab.collect.qlearning import darkroom_histories
    from lramlab.envs.darkroom import EPISODE_LENGTH, all_tasks, parse_goal
    from lramlab.manifests import REWARD_SCALE, get_task

    B, C = int(batch_size), int(context_steps)
    if B < 1 or C < 1:
        raise ValueError(f"darkroom_batch: batch_size={B} and context_steps={C} must be >= 1")
    rng = np.random.default_rng(seed)
    tasks = all_tasks("train")
    picked = [tasks[i] for i in rng.choice(len(tasks), size=B, replace=len(tasks) < B)]
    n_eps = C // EPISODE_LENGTH + 2
    hist = darkroom_histories([parse_goal(t) for t in picked], n_eps, seed=seed)
    G, N, T = hist["rewards"].shape
    rew = hist["rewards"]
    rtg = np.flip(np.cumsum(np.flip(rew, axis=2), axis=2), axis=2)  # returns-to-go within each episode
    flat = lambda a: a.reshape(G, N * T, *a.shape[3:])  # noqa: E731 - (G, N, T, ...) -> (G, N*T, ...)
    states, actions, rewards, rtgs = flat(hist["states"]), flat(hist["actions"]), flat(rew), flat(rtg)
    scale = REWARD_SCALE["darkroom"]
    out = {"states": np.zeros((B, C, states.shape[-1]), np.float32), "rtg": np.zeros((B, C), np.float32),
           "rewards": np.zeros((B, C), np.float32), "actions": np.zeros((B, C), np.int64),
           "mask": np.zeros((B, C), bool)}
    for b in range(B):
        end = int(rng.integers(max(1, C // 4), N * T))  # window [end - C + 1, end], shorter below 0
        lo = max(0, end - C + 1)
        n = end + 1 - lo
        out["states"][b, :n] = states[b, lo:end + 1]
        out["actions"][b, :n] = actions[b, lo:end + 1]
        out["rewards"][b, :n] = rewards[b, lo:end + 1] / scale
        out["rtg"][b, :n] = rtgs[b, lo:end + 1] / scale
        out["mask"][b, :n] = True
    batch = {k: torch.from_numpy(v) for k, v in out.items()}
    spec = get_task(picked[0])
    batch["n_actions"] = torch.full((B,), int(spec.action_dim), dtype=torch.long)
    batch["act_dim"] = torch.zeros(B, dtype=torch.long)
    batch["task_index"] = torch.zeros(B, dtype=torch.long)
    batch["domain"] = "darkroom"
    return batch


# ------------------------------------------------------------------------------------ rows
def row_config(kind: str, size: str, context_steps: int, xlstm_kernel: str = "auto"):
    """The LRAMConfig of a row kind ("dt", "mamba", "xlstm[7:1]", "xlstm[1:0]")."""
    from lramlab.models import LRAMConfig

    if kind not in ROW_KINDS:
        raise ValueError(f"row kind {kind!r}; valid: {', '.join(ROW_KINDS)}")
    if kind.startswith("xlstm"):
        return LRAMConfig(backbone="xlstm", size=size, context_steps=context_steps, slstm_at=kind[6:-1],
                          xlstm_kernel=xlstm_kernel)
    if kind == "mamba":  # the same three paths: auto (numba on a CPU), fast (numba), reference (sequential torch)
        scan = {"auto": "auto", "fast": "numba", "reference": "sequential"}[xlstm_kernel]
        return LRAMConfig(backbone="mamba", size=size, context_steps=context_steps, mamba_scan=scan)
    return LRAMConfig(backbone=kind, size=size, context_steps=context_steps)


def _path(model) -> Optional[str]:
    """Which training path the backbone ran, where it says (xLSTM: `forward_kernel`, Mamba: `scan_impl`)."""
    bb = model.backbone
    return getattr(bb, "forward_kernel", None) or getattr(bb, "scan_impl", None)


def _build_rows(size: str, context_steps: int, rows: list[tuple[str, str]], seed: int, lr: float) -> list:
    from lramlab.models import build_model

    built = []
    for kind, kernel in rows:
        torch.manual_seed(seed)  # same initial weights for a kind on either path
        model = build_model(row_config(kind, size, context_steps, kernel)).train()
        built.append((kind, kernel, model, torch.optim.AdamW(model.parameters(), lr=lr)))
    return built


def _timings(built, batch, reps: int, warmup: int, reference_reps: int):
    """Yield ("start", row, rep) before and ("time", row, wall_s, cpu_s) after each timed update,
    round-robin: every row's warm-up updates first, then rep 1 of every row, rep 2, ..."""
    from lramlab.models import action_loss

    def update(model, opt):
        opt.zero_grad(set_to_none=True)
        loss, _ = action_loss(model(batch), batch)
        loss.backward()
        opt.step()

    for i, (_, _, model, opt) in enumerate(built):
        for w in range(warmup):
            yield ("start", i, -1 - w)
            update(model, opt)
    for rep in range(max(reps, reference_reps)):
        for i, (_, kernel, model, opt) in enumerate(built):
            if rep >= (reference_reps if kernel == "reference" else reps):
                continue
            yield ("start", i, rep)
            c0, t0 = time.process_time(), time.perf_counter()
            update(model, opt)
            yield ("time", i, time.perf_counter() - t0, time.process_time() - c0)


def _sig(x: float, digits: int = 5) -> float:
    """x rounded to `digits` significant digits (a slow row's 0.93 tokens/s keeps its precision)."""
    return float(f"{x:.{digits}g}")


def _row(kind: str, kernel: str, size: str, context_steps: int, batch_size: int, params: int, path, wall: list,
         cpu: list) -> dict:
    tokens = batch_size * 3 * context_steps
    w, c = statistics.median(wall), statistics.median(cpu)
    return {"backbone": kind + ("-reference" if kernel == "reference" else ""), "size": size,
            "context_steps": context_steps, "batch_size": batch_size, "tokens_per_update": tokens, "params": params,
            "path": path, "reps": len(wall), "wall_ms": _sig(w * 1e3), "cpu_ms": _sig(c * 1e3),
            "tokens_per_s": _sig(tokens / w), "tokens_per_s_cpu": _sig(tokens / c),
            "updates_per_s": _sig(1.0 / w), "updates_per_s_cpu": _sig(1.0 / c),
            "threads": torch.get_num_threads()}


def _add_ratios(out: list[dict]) -> list[dict]:
    dt = next((r for r in out if r["backbone"] == "dt" and "skipped" not in r), None)
    for r in out:
        if "skipped" in r:
            continue
        r["vs_dt"] = None if dt is None else round(r["tokens_per_s"] / dt["tokens_per_s"], 3)
        r["vs_dt_cpu"] = None if dt is None else round(r["tokens_per_s_cpu"] / dt["tokens_per_s_cpu"], 3)
    return out


def bench_group(size: str, context_steps: int, batch_size: int, rows: list[tuple[str, str]], *, reps: int = 3,
                warmup: int = 1, reference_reps: int = 1, seed: int = 0, lr: float = 1e-4,
                progress=None) -> list[dict]:
    """Time one update per row on one shared batch, in this process; rows = [(kind, xlstm_kernel),
    ...]. Rows whose kernel is "reference" run `reference_reps` timed updates (they are slow)."""
    if reps < 1 or warmup < 0 or reference_reps < 1:
        raise ValueError(f"reps={reps} and reference_reps={reference_reps} must be >= 1, warmup={warmup} >= 0")
    batch = darkroom_batch(batch_size, context_steps, seed=seed)
    built = _build_rows(size, context_steps, rows, seed, lr)
    wall: dict[int, list[float]] = {i: [] for i in range(len(built))}
    cpu: dict[int, list[float]] = {i: [] for i in range(len(built))}
    for ev in _timings(built, batch, reps, warmup, reference_reps):
        if ev[0] == "time":
            wall[ev[1]].append(ev[2])
            cpu[ev[1]].append(ev[3])
            if progress is not None:
                progress.update(1)
    return _add_ratios([_row(kind, kernel, size, context_steps, batch_size, model.num_parameters(), _path(model),
                             wall[i], cpu[i]) for i, (kind, kernel, model, _) in enumerate(built)])


def available_memory_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _worker(spec: dict) -> int:
    """`--worker SPEC`: one group, events as JSON lines on stdout (see `bench_group_isolated`)."""
    from lramlab.models.backbones import _xlstm_train

    if spec.get("max_memory_bytes"):
        import resource

        cap = int(spec["max_memory_bytes"])
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))  # allocations past it fail, no OOM killer
    torch.set_num_threads(spec["threads"])
    if spec["malloc_tuning"]:
        _xlstm_train.tune_malloc()
    emit = lambda obj: print(json_dumps(obj), flush=True)  # noqa: E731
    rows = [tuple(r) for r in spec["rows"]]
    try:
        batch = darkroom_batch(spec["batch_size"], spec["context_steps"], seed=spec["seed"])
        built = _build_rows(spec["size"], spec["context_steps"], rows, spec["seed"], spec.get("lr", 1e-4))
    except (MemoryError, RuntimeError) as err:
        emit({"error": f"building the models: {type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"})
        return 3
    # fault injection for the tests: this row's first update dies as an out-of-memory kill would
    kill = os.environ.get("LRAMLAB_BENCH_TRAIN_KILL_ROW")
    names = [kind + ("-reference" if kernel == "reference" else "") for kind, kernel in rows]
    events = _timings(built, batch, spec["reps"], spec["warmup"], spec["reference_reps"])
    while True:
        try:
            ev = next(events)
        except StopIteration:
            break
        except (MemoryError, RuntimeError) as err:  # an allocation past the cap
            emit({"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"})
            return 3
        emit({"start": ev[1], "rep": ev[2]} if ev[0] == "start" else {"time": ev[1], "wall": ev[2], "cpu": ev[3]})
        if ev[0] == "start" and kill == names[ev[1]]:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
    emit({"rows": [{"params": m.num_parameters(), "path": _path(m)} for _, _, m, _ in built]})
    return 0


def bench_group_isolated(size: str, context_steps: int, batch_size: int, rows: list[tuple[str, str]], *,
                         reps: int = 3, warmup: int = 1, reference_reps: int = 1, seed: int = 0, threads: int = 1,
                         malloc_tuning: bool = True, max_memory_bytes: Optional[int] = None,
                         progress=None) -> list[dict]:
    """`bench_group` in a worker process whose data segment is capped at `max_memory_bytes`. A row
    that runs out of memory or during which the worker dies is reported as skipped and the group
    is timed again without it."""
    import subprocess

    rows = list(rows)
    skipped: dict[tuple[str, str], str] = {}
    out: list[dict] = []
    while rows:
        spec = {"size": size, "context_steps": context_steps, "batch_size": batch_size, "rows": rows, "reps": reps,
                "warmup": warmup, "reference_reps": reference_reps, "seed": seed, "threads": threads,
                "malloc_tuning": malloc_tuning, "max_memory_bytes": max_memory_bytes}
        proc = subprocess.Popen([sys.executable, "-m", "lramlab.bench.train", "--worker", json.dumps(spec)],
                                stdout=subprocess.PIPE, text=True)
        wall: dict[int, list[float]] = {i: [] for i in range(len(rows))}
        cpu: dict[int, list[float]] = {i: [] for i in range(len(rows))}
        current, meta, done, error = None, None, 0, None
        for line in proc.stdout:
            ev = json.loads(line)
            if "error" in ev:
                error = ev["error"]
            elif "start" in ev:
                current = ev["start"]
            elif "time" in ev:
                wall[ev["time"]].append(ev["wall"])
                cpu[ev["time"]].append(ev["cpu"])
                done += 1
                if progress is not None:
                    progress.update(1)
            else:
                meta = ev["rows"]
        rc = proc.wait()
        if rc == 0 and meta is not None:
            out = [_row(kind, kernel, size, context_steps, batch_size, meta[i]["params"], meta[i]["path"], wall[i],
                        cpu[i]) for i, (kind, kernel) in enumerate(rows)]
            break
        if current is None:  # nothing ran: every row goes
            why = error or f"worker exited with {rc} before timing (its stderr says why)"
            skipped.update({tuple(r): why for r in rows})
            rows = []
            break
        if error is not None:
            cap = f" (cap {max_memory_bytes / 2**30:.1f} GB)" if max_memory_bytes else ""
            why = f"out of memory{cap}: {error}"
        else:
            why = ("killed (out of memory?)" if rc in (-9, 137) else f"worker exited with {rc}") + " during an update"
        skipped[tuple(rows[current])] = why
        if progress is not None:
            progress.update(-done)
        rows = [r for i, r in enumerate(rows) if i != current]
    for (kind, kernel), why in skipped.items():
        out.append({"backbone": kind + ("-reference" if kernel == "reference" else ""), "size": size,
                    "context_steps": context_steps, "batch_size": batch_size, "skipped": why})
    return _add_ratios(out)


# ------------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="lramlab bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_strs, default=["tiny", "16M"], help="comma list of presets")
    p.add_argument("--contexts", type=_ints, default=[50, 200], help="context lengths C in timesteps")
    p.add_argument("--batch-size", type=int, default=16, help="windows per update (B)")
    p.add_argument("--rows", type=_strs, default=list(ROW_KINDS),
                   help=f"comma list of row kinds: {', '.join(ROW_KINDS)}")
    p.add_argument("--kernels", "--xlstm-kernels", dest="xlstm_kernels", type=_strs, default=["auto", "reference"],
                   help="training paths of the recurrent backbones timed as rows: auto (the default path), fast "
                        "(lramlab's CPU kernels), reference (xLSTM: the package's blocks; Mamba: the sequential "
                        "torch scan)")
    p.add_argument("--reps", type=int, default=3, help="timed updates per row (median reported)")
    p.add_argument("--reference-reps", type=int, default=1, help="timed updates per xLSTM reference row")
    p.add_argument("--warmup", type=int, default=1, help="untimed updates per row first")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="leave glibc's malloc as is (default: keep freed memory for reuse, see module doc)")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="cap on a group worker's data segment (default: 60%% of the memory available at the "
                        "start; 0 = no cap)")
    p.add_argument("--in-process", action="store_true",
                   help="time the groups in this process (default: one worker process per group)")
    add_json_option(p, "the rows as JSON")
    a = p.parse_args(argv)
    from lramlab.models.config import SIZES

    for s in a.sizes:
        if s not in SIZES:
            p.error(f"--sizes: unknown size {s!r}; valid: {', '.join(SIZES)}")
    for r in a.rows:
        if r not in ROW_KINDS:
            p.error(f"--rows: unknown row kind {r!r}; valid: {', '.join(ROW_KINDS)}")
    for k in a.xlstm_kernels:
        if k not in ("auto", "fast", "reference"):
            p.error(f"--xlstm-kernels: unknown path {k!r}; valid: auto, fast, reference")
    for name in ("batch_size", "reps", "reference_reps", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(a, name)} must be >= 1")
    if a.warmup < 0:
        p.error(f"--warmup={a.warmup} must be >= 0")
    return a


def plan_rows(kinds: list[str], xlstm_kernels: list[str]) -> list[tuple[str, str]]:
    rows = []
    for kind in kinds:
        if kind.startswith("xlstm") or kind == "mamba":  # the recurrent backbones: each path a row
            rows += [(kind, k) for k in xlstm_kernels]
        else:
            rows.append((kind, "auto"))
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'size':<6} {'C':>4} {'backbone':<22} {'path':<10} {'params':>7} {'cpu ms/upd':>11} "
            f"{'wall ms/upd':>12} {'tok/s(cpu)':>11} {'upd/s(cpu)':>11} {'vs DT(cpu)':>11} {'vs DT(wall)':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['size']:<6} {r['context_steps']:>4} {r['backbone']:<22} skipped: {r['skipped']}")
            continue
        ratio = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
        lines.append(f"{r['size']:<6} {r['context_steps']:>4} {r['backbone']:<22} {str(r['path'] or '-'):<10} "
                     f"{r['params'] / 1e6:>6.1f}M {r['cpu_ms']:>11.1f} {r['wall_ms']:>12.1f} "
                     f"{r['tokens_per_s_cpu']:>11.0f} {r['updates_per_s_cpu']:>11.3f} {ratio(r['vs_dt_cpu']):>11} "
                     f"{ratio(r['vs_dt']):>12}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from lramlab.models.backbones import _xlstm_train

    torch.set_num_threads(args.threads)
    tuned = False if args.no_malloc_tuning else _xlstm_train.tune_malloc()
    rows_plan = plan_rows(args.rows, args.xlstm_kernels)
    groups = [(s, c) for s in args.sizes for c in args.contexts]
    n_ref = sum(1 for _, k in rows_plan if k == "reference")
    total = len(groups) * ((len(rows_plan) - n_ref) * args.reps + n_ref * args.reference_reps)
    cap = None
    if args.max_memory_gb is None:
        avail = available_memory_bytes()
        cap = None if avail is None else int(0.6 * avail)
    elif args.max_memory_gb > 0:
        cap = int(args.max_memory_gb * 2**30)
    rows: list[dict] = []
    with tqdm(total=total, desc="bench train", unit="update", file=sys.stderr) as bar:
        for size, C in groups:
            bar.set_postfix_str(f"{size} C={C}")
            kw = dict(reps=args.reps, warmup=args.warmup, reference_reps=args.reference_reps, seed=args.seed,
                      progress=bar)
            if args.in_process:
                rows += bench_group(size, C, args.batch_size, rows_plan, **kw)
            else:
                rows += bench_group_isolated(size, C, args.batch_size, rows_plan, threads=args.threads,
                                             malloc_tuning=not args.no_malloc_tuning, max_memory_bytes=cap, **kw)
    return {"rows": rows, "malloc_tuned": tuned, "threads": args.threads, "torch": torch.__version__,
            "worker_memory_cap_gb": None if cap is None or args.in_process else round(cap / 2**30, 2),
            "cpu_count": os.cpu_count(), "batch": "Dark-Room Q-learning histories (darkroom_batch)"}


@command("lramlab bench train")
def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(json.loads(argv[1]))
    args = parse_args(argv)
    with JsonOutput(args.json) as out:  # --json -: the table goes to stderr, stdout holds only the JSON
        result = run(args)
        result["argv"] = argv
        print(format_table(result["rows"]), flush=True)
        out.write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
