"""`lramlab bench data --episode-files N`: reading a dataset at the paper's scale (many files, many tasks)
with bounded open files and memory, while a tiny model trains on it.

The dataset is REAL Dark-Room learning histories (tabular Q-learning, `collect.qlearning`): the 100
goals of the 10x10 room, each learned from scratch by `n_seeds` independent learners, one task
directory per (goal, seed) -- `DIR/darkroom/goal-X-Y-sS/episode_%06d.hdf5`, 100 steps per episode.
`N` episode files are spread evenly over `tasks` directories (default 400: 100 goals x 4 seeds).
Each directory's meta.json names its task (`darkroom/goal-X-Y-sS`, not a manifest task) and the
facts a manifest would give (domain, obs_shape, action kind and dims, reward scale), which the
sampler and the data check read from there. Made once, cached under `--cache` and reused.

Then, for each layout (per-episode files; `packed.hdf5` per task), a fresh process with the
soft open-file limit set to `--nofile` (default 1024, a common default) checks the data, trains
a tiny model for `--updates` updates on it, and reports: peak open files (/proc/self/fd, sampled
every 5 ms), peak RSS (VmHWM), windows/s of the loader alone and windows/s consumed by training.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from lramlab._dataclass_cli import json_dumps

DARKROOM_EPISODE_STEPS = 100
SCALE_VERSION = 1  # bump when the recipe changes: a new cache sub-directory is used


def _goals() -> list[str]:
    from lramlab.manifests import list_tasks

    return sorted(t.id for t in list_tasks("darkroom"))


def scale_key(episode_files: int, tasks: int, seed: int) -> str:
    return f"v{SCALE_VERSION}-darkroom-{tasks}tasks-{episode_files}files-seed{seed}"


def _task_done(task_dir: Path, episodes: int) -> bool:
    try:
        stats = json.loads((task_dir / "stats.json").read_text())
    except (OSError, ValueError):
        return False
    return stats.get("n_episodes") == episodes


def build_scale_dataset(root, episode_files: int = 100_000, tasks: int = 400, seed: int = 0,
                        progress: bool = True) -> dict:
    """Write (or finish) the Dark-Room scale dataset under `root`; returns a summary.

    Tasks are (goal, learner seed) pairs, goals varying fastest: task k is goal k % 100 learned
    with seed `seed + k // 100`. Every task gets `episode_files // tasks` episodes. A task whose
    stats.json lists all its episodes is kept; an unfinished one is written again from scratch.
    """
    import numpy as np

    from lramlab._io import atomic_write_text
    from lramlab.collect.qlearning import QLearningConfig, iter_darkroom_histories
    from lramlab.data.store import StoreWriter, write_stats
    from lramlab.envs.darkroom import parse_goal

    if tasks < 1 or episode_files < tasks:
        raise ValueError(f"need tasks >= 1 and episode_files >= tasks, got {tasks} tasks, {episode_files} files")
    root = Path(root)
    goals = _goals()
    per_task = episode_files // tasks
    jobs: dict[int, list[tuple[str, Path]]] = {}  # learner seed -> [(goal task, dir)]
    for k in range(tasks):
        goal, s = goals[k % len(goals)], seed + k // len(goals)
        d = root / "darkroom" / f"{goal.split('/', 1)[1]}-s{s}"
        if not _task_done(d, per_task):
            jobs.setdefault(s, []).append((goal, d))
    t0 = time.perf_counter()
    todo = sum(len(v) for v in jobs.values()) * per_task
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=todo, desc="scale dataset", unit="ep")
    cfg = QLearningConfig()
    for s, group in sorted(jobs.items()):
        writers = []
        for goal, d in group:
            if d.exists():
                shutil.rmtree(d)  # unfinished: the learner is replayed from its first episode
            task = f"{goal}-s{s}"
            meta = {"task": task, "domain": "darkroom", "obs_kind": "state", "obs_shape": [2],
                    "action_kind": "discrete", "action_dim": 5, "reward_scale": 1.0,
                    "base_task": goal, "policy": "history", "seed": s, "episodes": per_task,
                    "generator": "lramlab.bench.data_scale", "policy_config": cfg.resolved(per_task).__dict__}
            d.mkdir(parents=True)
            atomic_write_text(d / "meta.json", json.dumps(meta, indent=1))
            writers.append(StoreWriter(d, task=task, sync_every=per_task))
        try:
            # one Q-learner per goal, all goals of this seed in lock-step (vectorised)
            hist = iter_darkroom_histories([parse_goal(g) for g, _ in group], per_task, s, cfg)
            for i, ep in enumerate(hist):
                for g, w in enumerate(writers):
                    w.write(i, {"states": ep["states"][g], "actions": ep["actions"][g],
                                "rewards": ep["rewards"][g], "success": ep["success"][g],
                                "dones": np.zeros(DARKROOM_EPISODE_STEPS, dtype=bool)})  # truncated
                if bar is not None:
                    bar.update(len(writers))
        finally:
            for w in writers:
                w.close()
        for w in writers:
            write_stats(w.task_dir, summaries=w.summaries)
    if bar is not None:
        bar.close()
    return {"root": str(root), "tasks": tasks, "episodes_per_task": per_task,
            "episode_files": per_task * tasks, "steps": per_task * tasks * DARKROOM_EPISODE_STEPS,
            "written": todo, "build_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- measurement
class _FdSampler:
    """Peak number of open descriptors of this process (/proc/self/fd, every `period` s, in a
    thread; its own listing adds one descriptor while it runs, included)."""

    def __init__(self, period: float = 0.005):
        import threading

        self.period, self.peak, self._stop = period, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, len(os.listdir("/proc/self/fd")))
            except OSError:  # EMFILE while listing is itself the answer: the limit was reached
                self.peak = max(self.peak, _soft_nofile() or 0)
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _soft_nofile() -> int | None:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _vm(field: str) -> int:
    """A /proc/self/status field in bytes (VmHWM: peak resident set; RssAnon: anonymous memory)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _child(args) -> dict:
    """One measurement in this process (run by `main` in a fresh process per layout)."""
    import numpy as np
    import torch

    from lramlab.data.sampling import DomainBalancedSampler, SamplerConfig
    from lramlab.data.store import check_dataset, max_open_files
    from lramlab.data.store.handles import POOL
    from lramlab.train import TrainConfig, run
    from lramlab.train.data import make_datasets

    torch.set_num_threads(1)
    out: dict = {"layout": args.layout[0], "nofile": _soft_nofile(), "budget": max_open_files(),
                 "baseline_open_files": len(os.listdir("/proc/self/fd")) - 1}  # after imports, before any data
    with _FdSampler() as fds:
        tasks = None
        if args.n_tasks:
            from lramlab.data.store import find_tasks, task_id_of

            tasks = sorted(task_id_of(d) for d in find_tasks(args.root))[: args.n_tasks]
        t0 = time.perf_counter()
        rep = check_dataset(args.root, tasks=tasks)
        out["check_s"], out["check_files_read"] = time.perf_counter() - t0, rep.to_dict()["files_read"]
        out["episode_files"], out["tasks"] = rep.episodes, len(rep.tasks)
        cfg = TrainConfig(data=(str(args.root),), tasks=tuple(tasks or ()), window=args.window, backbone="dt",
                          size="tiny", steps=args.updates, batch_size=args.batch_size, context=args.context,
                          warmup=10, amp=False, device="cpu", out=str(args.out), val_every=0, ckpt_every=0,
                          log_every=10, progress=False, num_threads=1, tensorboard=False, seed=0)
        # the loader alone: windows/s of domain micro-batches
        ds, _ = make_datasets(cfg)
        out["packed_tasks"] = sum(d.packed is not None for d in ds.data)
        sampler = DomainBalancedSampler(ds, SamplerConfig(batch_size=args.batch_size, seed=1), as_torch=False)
        sampler.next_update()
        n = max(1, args.loader_windows // args.batch_size)
        t0 = time.perf_counter()
        for _ in range(n):
            sampler.next_update()
        out["loader_windows_per_s"] = n * args.batch_size * len(sampler.domains) / (time.perf_counter() - t0)
        del ds, sampler
        # training: a tiny model for `updates` updates on the whole dataset
        t0 = time.perf_counter()
        res = run(cfg)
        out["train_s"] = time.perf_counter() - t0
        lines = [json.loads(x) for x in (Path(args.out) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        sps = [ln["train/steps_per_s"] for ln in lines if "train/steps_per_s" in ln][1:]  # the first includes start-up
        out["train_updates"] = res.step
        out["train_windows_per_s"] = float(np.mean(sps)) * args.batch_size if sps else None
        out["final_loss"] = res.metrics.get("train/loss")
    out["peak_open_files"] = fds.peak
    out["peak_rss_bytes"] = _vm("VmHWM")
    out["rss_anon_bytes"] = _vm("RssAnon")
    out["pool_opens"] = POOL.opens
    return out


def _run_child(root: Path, layout: str, args, n_tasks: int | None, out_dir: Path) -> dict:
    import subprocess
    import sys

    nofile = args.nofile

    def limit():
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))  # as `ulimit -n` would

    env = dict(os.environ)
    if layout == "episode":
        env["LRAMLAB_NO_PACKED"] = "1"
    else:
        env.pop("LRAMLAB_NO_PACKED", None)
    cmd = [sys.executable, "-m", "lramlab.bench.data_scale", "--child", "--root", str(root), "--layout", layout,
           "--out", str(out_dir), "--updates", str(args.updates), "--batch-size", str(args.batch_size),
           "--context", str(args.context), "--window", args.window, "--loader-windows", str(args.loader_windows),
           "--n-tasks", str(n_tasks or 0)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=limit)
    if p.returncode != 0:
        raise RuntimeError(f"{layout} measurement failed (rc {p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lramlab" / "bench-scale"


def _parser():
    import argparse

    ap = argparse.ArgumentParser(prog="lramlab bench data --episode-files N", description=__doc__.split("\n\n")[0])
    ap.add_argument("--episode-files", type=int, default=100_000, help="episode files in the dataset")
    ap.add_argument("--tasks", type=int, default=400, help="task directories ((goal, seed) pairs of Dark-Room)")
    ap.add_argument("--cache", type=Path, default=None, help=f"where the dataset is made and reused ({default_cache()})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", nargs="+", choices=("episode", "packed"), default=["episode", "packed"])
    ap.add_argument("--task-counts", type=int, nargs="*", default=[],
                    help="also measure on the first K tasks only (memory vs number of files)")
    ap.add_argument("--nofile", type=int, default=1024, help="soft open-file limit of the measured processes")
    ap.add_argument("--updates", type=int, default=300, help="training updates of the tiny model")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--context", type=int, default=50, help="timesteps per window (paper: 50)")
    ap.add_argument("--window", choices=("episode", "history"), default="history",
                    help="history: windows across consecutive episodes (Algorithm Distillation)")
    ap.add_argument("--loader-windows", type=int, default=4096, help="windows timed for the loader alone")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--save", type=Path, default=None, help="also write the results as JSON to this file")
    ap.add_argument("--no-progress", action="store_true")
    # internal: one measurement in a child process
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n-tasks", type=int, default=0, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    import sys
    import tempfile

    args = _parser().parse_args(argv)
    if args.child:
        print(json_dumps(_child(args)))
        return 0
    from lramlab.data.store import check_dataset, find_tasks, pack_task

    cache = (args.cache or default_cache()).expanduser()
    root = cache / scale_key(args.episode_files, args.tasks, args.seed)
    try:
        info = build_scale_dataset(root, args.episode_files, args.tasks, args.seed, progress=not args.no_progress)
    except ValueError as err:
        print(f"lramlab bench data: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    first = check_dataset(root, progress=not args.no_progress)
    info["check_first_s"], info["check_first_files_read"] = time.perf_counter() - t0, first.to_dict()["files_read"]
    t0 = time.perf_counter()
    again = check_dataset(root)
    info["check_again_s"], info["check_again_files_read"] = time.perf_counter() - t0, again.to_dict()["files_read"]
    if not again.ok and again.invalid:
        print(f"lramlab bench data: the dataset has {len(again.invalid)} bad files, e.g. {again.invalid[0]}",
              file=sys.stderr)
        return 1
    if "packed" in args.layout:
        t0 = time.perf_counter()
        info["packed_now"] = sum(pack_task(d)[1] for d in find_tasks(root))
        info["pack_s"] = time.perf_counter() - t0
    results = []
    with tempfile.TemporaryDirectory(prefix="lramlab-bench-scale-") as tmp:
        for n_tasks in [*args.task_counts, None]:
            for layout in args.layout:
                r = _run_child(root, layout, args, n_tasks, Path(tmp) / f"{layout}-{n_tasks or 'all'}")
                results.append(r)
    out = {"dataset": info, "nofile": args.nofile, "updates": args.updates, "batch_size": args.batch_size,
           "context": args.context, "window": args.window, "results": results}
    if args.save is not None:
        from lramlab._io import atomic_write_text

        atomic_write_text(args.save, json_dumps(out, indent=1))
    if args.json:
        print(json_dumps(out, indent=1))
        return 0
    print(f"lramlab bench data: {info['episode_files']} episode files of real Dark-Room learning histories in "
          f"{info['tasks']} task directories ({info['steps']} steps) in {root}")
    print(f"data check: {info['check_first_s']:.1f} s reading {info['check_first_files_read']} files, then "
          f"{info['check_again_s']:.2f} s again ({info['check_again_files_read']} files read: the cache)")
    print(f"each layout in a fresh process under ulimit -n {args.nofile} (open-file budget per process: "
          f"{results[0]['budget']}); {args.window} windows of {args.context} steps, batch {args.batch_size}, "
          f"tiny DT for {args.updates} updates")
    print(f"{'layout':<9}{'files':>8}{'tasks':>7}{'peak fds':>10}{'(at start)':>11}{'peak RSS':>11}"
          f"{'loader win/s':>14}{'train win/s':>13}{'check s':>9}")
    for r in results:
        tw = f"{r['train_windows_per_s']:.0f}" if r["train_windows_per_s"] else "-"
        print(f"{r['layout']:<9}{r['episode_files']:>8}{r['tasks']:>7}{r['peak_open_files']:>10}"
              f"{r['baseline_open_files']:>11}{r['peak_rss_bytes'] / 2**20:>9.0f}MB"
              f"{r['loader_windows_per_s']:>14.0f}{tw:>13}{r['check_s']:>9.2f}")
    print("peak fds: sampled every 5 ms over the check, the loader and training (includes the interpreter's and "
          "torch's own); peak RSS: VmHWM of that process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
