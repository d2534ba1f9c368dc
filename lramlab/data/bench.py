"""`lramlab bench data`: data-loading throughput (windows of C steps per second) vs what training needs.

By default it writes its own temporary dataset through `write_episode`, with real shapes and
dtypes (a state domain like Meta-World: 39-d states, 4-d actions, 200-step episodes; an image
domain like Atari: (1, 64, 64) uint8 frames, gzip, 18 actions). The CONTENTS of that dataset are
SYNTHETIC (smooth random walks, moving blobs) -- this measures the loader, not the data; the
output says so. `--data DIR` measures a real dataset instead (tasks must be in the manifests, or
give `--reward-scale`).

Training consumes `batch_size` windows per domain micro-batch, one micro-batch per domain per
update; the report gives the loader's windows/s beside `batch_size x updates/s` as a ratio
(>= 1: the loader keeps up on its own).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

SYNTH_SPECS = {
    "bench-state/task-{i}": {"domain": "bench-state", "reward_scale": 200.0, "action_kind": "continuous", "action_dim": 4},
    "bench-image/task-{i}": {"domain": "bench-image", "reward_scale": 20.0, "action_kind": "discrete", "action_dim": 18},
}


def _synthetic_episode(kind: str, T: int, rng: np.random.Generator) -> dict:
    """SYNTHETIC contents with real shapes, for the loader benchmark only."""
    if kind == "state":
        states = np.cumsum(rng.normal(0, 0.05, (T, 39)), axis=0).astype(np.float32)
        actions = np.clip(rng.normal(0, 0.5, (T, 4)), -1, 1).astype(np.float32)
        rewards = rng.uniform(0, 10, T).astype(np.float32)
    else:
        yy, xx = np.mgrid[0:64, 0:64]
        cy, cx = np.cumsum(rng.normal(0, 1.5, (2, T)), axis=1) % 64
        blob = (((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) < 30)
        states = (40 + 160 * blob).astype(np.uint8)[:, None]  # (T, 1, 64, 64), compressible like game frames
        actions = rng.integers(0, 18, T)
        rewards = (rng.random(T) < 0.02).astype(np.float32)
    dones = np.zeros(T, bool)
    dones[-1] = True
    return {"states": states, "actions": actions, "rewards": rewards, "dones": dones}


def write_synthetic_dataset(root: Path, state_tasks: int = 8, state_episodes: int = 20, state_len: int = 200,
                            image_tasks: int = 4, image_episodes: int = 8, image_len: int = 500, seed: int = 0) -> dict:
    """Write the bench dataset; returns the task specs to pass to the sampler."""
    rng = np.random.default_rng(seed)
    specs = {}
    for kind, n_tasks, n_eps, T in (("state", state_tasks, state_episodes, state_len),
                                    ("image", image_tasks, image_episodes, image_len)):
        template = SYNTH_SPECS[f"bench-{kind}/task-{{i}}"]
        for i in range(n_tasks):
            task = f"bench-{kind}/task-{i}"
            specs[task] = template
            for e in range(n_eps):
                from lramlab.data.store import write_episode

                write_episode(root / task, e, _synthetic_episode(kind, T, rng), compress=(kind == "image"))
    return specs


def measure(dataset, domain: str, batch_size: int, windows: int, seed: int = 0, num_workers: int = 0) -> dict:
    """Windows/s of domain micro-batches (file handles warmed by one batch first)."""
    from lramlab.data.sampling import DomainBalancedSampler, SamplerConfig

    sampler = DomainBalancedSampler(dataset, SamplerConfig(batch_size=batch_size, seed=seed))
    sampler.domains = [domain]  # this domain only
    n_batches = max(1, -(-windows // batch_size))
    if num_workers == 0:
        dataset.make_batch(domain, sampler.sample_items(domain))
        t0 = time.perf_counter()
        for _ in range(n_batches):
            dataset.make_batch(domain, sampler.sample_items(domain))
        dt = time.perf_counter() - t0
    else:
        from lramlab.data.sampling import DomainBalancedLoader

        it = iter(DomainBalancedLoader(sampler, num_workers=num_workers, prefetch_factor=4))
        for _ in range(num_workers):
            next(it)  # worker start-up and file opening are not throughput
        t0 = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        dt = time.perf_counter() - t0
        del it
    return {"domain": domain, "windows": n_batches * batch_size, "seconds": dt,
            "windows_per_s": n_batches * batch_size / dt, "workers": num_workers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lramlab bench data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="a real dataset root (default: write a synthetic one)")
    ap.add_argument("--context", type=int, default=50, help="window length C in timesteps (paper: 50)")
    ap.add_argument("--batch-size", type=int, default=128, help="windows per domain micro-batch (paper: 128)")
    ap.add_argument("--windows", type=int, default=2048, help="windows to time per domain")
    ap.add_argument("--workers", type=int, nargs="*", default=[0], help="DataLoader worker counts to time")
    ap.add_argument("--updates-per-s", type=float, default=1.0,
                    help="optimizer updates per second the trainer runs (each needs batch-size windows per domain)")
    ap.add_argument("--reward-scale", type=float, default=None, help="reward scale override for --data")
    ap.add_argument("--tiny", action="store_true", help="a tiny synthetic dataset (for tests / smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)

    from lramlab.data.sampling import TrajectoryDataset

    tmp = None
    try:
        if args.data is None:
            tmp = Path(tempfile.mkdtemp(prefix="lramlab-bench-data-"))
            t0 = time.perf_counter()
            size = (dict(state_tasks=2, state_episodes=3, image_tasks=1, image_episodes=2, image_len=200)
                    if args.tiny else {})
            specs = write_synthetic_dataset(tmp, seed=args.seed, **size)
            write_s = time.perf_counter() - t0
            ds = TrajectoryDataset(tmp, split="train", context_len=args.context, task_specs=specs)
            content = "synthetic (loader benchmark only; real shapes/dtypes, written through write_episode)"
        else:
            write_s = None
            ds = TrajectoryDataset(args.data, split="train", context_len=args.context, reward_scale=args.reward_scale)
            content = f"real dataset {args.data}"
        results = []
        for workers in args.workers:
            for dom in ds.domains:
                r = measure(ds, dom, args.batch_size, args.windows, args.seed, workers)
                r["obs"] = ds.obs_kind(dom)
                r["needed_windows_per_s"] = args.batch_size * args.updates_per_s
                r["ratio"] = r["windows_per_s"] / r["needed_windows_per_s"]
                results.append(r)
        summary = []
        for workers in args.workers:
            rs = [r for r in results if r["workers"] == workers]
            sec_per_update = sum(args.batch_size / r["windows_per_s"] for r in rs)  # domains load one after another
            summary.append({"workers": workers, "loader_updates_per_s": 1.0 / sec_per_update,
                            "ratio": 1.0 / sec_per_update / args.updates_per_s, "domains": len(rs)})
        out = {"content": content, "context": args.context, "batch_size": args.batch_size,
               "updates_per_s_assumed": args.updates_per_s, "dataset_write_s": write_s,
               "steps": int(ds.n_steps.sum()), "results": results, "per_update": summary}
        if args.json:
            print(json.dumps(out, indent=1))
        else:
            print(f"lramlab bench data: C={args.context}, batch {args.batch_size} per domain micro-batch; data: {content}")
            print(f"{'domain':<14}{'obs':<7}{'workers':>8}{'windows/s':>12}{'needed':>10}{'ratio':>8}")
            for r in results:
                print(f"{r['domain']:<14}{r['obs']:<7}{r['workers']:>8}{r['windows_per_s']:>12.0f}"
                      f"{r['needed_windows_per_s']:>10.0f}{r['ratio']:>8.2f}")
            for s in summary:
                print(f"workers={s['workers']}: loader supplies {s['loader_updates_per_s']:.2f} updates/s "
                      f"({s['domains']} domains) vs {args.updates_per_s:g} assumed -> ratio {s['ratio']:.2f}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0
