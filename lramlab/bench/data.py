"""`lramlab bench data`: data-loading throughput (windows of C steps per second) vs what training needs.

`lramlab bench data --episode-files N` measures instead a dataset at the paper's scale (N files in
400 task directories) under `ulimit -n 1024`: peak open files, peak RSS, windows/s while a tiny
model trains, per layout (`lramlab.bench.data_scale`).

The default dataset is REAL rollouts made by `lramlab.collect.generate.generate` in real simulators:
a state domain from Meta-World's scripted experts (4 tasks x 10 episodes x 200 steps; 39-d states,
4-d continuous actions) and an image domain from Atari under a uniform random policy (2 games x 4
episodes, at most 500 steps each; (1, 64, 64) uint8 frames, gzip, 18 actions). It takes well
under a minute to make and is cached under `--cache DIR` (default ~/.cache/lramlab/bench-data,
one sub-directory per dataset configuration), so later runs reuse it. `--data DIR` measures a
user's dataset instead (tasks must be in the manifests, or give `--reward-scale`).

Training consumes `batch_size` windows per domain micro-batch, one micro-batch per domain per
update; the report gives the loader's windows/s beside `batch_size x updates/s` as a ratio
(>= 1: the loader keeps up on its own).

Layouts, side by side in one run: `episode` reads the per-episode files; `packed` reads each
task's packed.hdf5 (`lramlab data pack`, raw arrays read with pread). The bench dataset is packed in
its cache; a `--data` dataset is measured packed only where it already holds current packs.
"""
from __future__ import annotations

import argparse
import sys
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lramlab._dataclass_cli import ArgumentParser, JsonOutput, add_json_option, command

BENCH_DATA_VERSION = 1  # bump when the recipe below changes: a new cache sub-directory is used
STATE_TASKS = ("metaworld/reach-v2", "metaworld/push-v2", "metaworld/door-open-v2", "metaworld/drawer-close-v2")
IMAGE_TASKS = ("atari/pong", "atari/space-invaders")


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lramlab" / "bench-data"


@dataclass(frozen=True)
class BenchDataConfig:
    """What the default bench dataset holds. State tasks run the scripted expert, image tasks a
    uniform random policy; `*_steps` caps episode length (the generator's max_steps)."""

    state_tasks: tuple[str, ...] = STATE_TASKS
    state_episodes: int = 10
    state_steps: int = 200
    image_tasks: tuple[str, ...] = IMAGE_TASKS
    image_episodes: int = 4
    image_steps: int = 500
    seed: int = 0

    def __post_init__(self):
        for name in ("state_episodes", "state_steps", "image_episodes", "image_steps"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"BenchDataConfig.{name} must be an int >= 1, got {v!r}")
        if not self.state_tasks and not self.image_tasks:
            raise ValueError("BenchDataConfig: state_tasks and image_tasks are both empty")
        object.__setattr__(self, "state_tasks", tuple(self.state_tasks))
        object.__setattr__(self, "image_tasks", tuple(self.image_tasks))

    def jobs(self) -> list[tuple[str, str, int, int]]:
        """(task, policy, episodes, max_steps) for every task of the dataset."""
        return ([(t, "expert", self.state_episodes, self.state_steps) for t in self.state_tasks]
                + [(t, "random", self.image_episodes, self.image_steps) for t in self.image_tasks])

    def key(self) -> str:
        """Cache sub-directory name: readable sizes + a hash of the full recipe."""
        h = hashlib.sha1(json.dumps([BENCH_DATA_VERSION, asdict(self)], sort_keys=True).encode()).hexdigest()[:10]
        return (f"v{BENCH_DATA_VERSION}-state{len(self.state_tasks)}x{self.state_episodes}x{self.state_steps}"
                f"-image{len(self.image_tasks)}x{self.image_episodes}x{self.image_steps}-seed{self.seed}-{h}")

    def describe(self) -> str:
        parts = []
        if self.state_tasks:
            parts.append(f"{len(self.state_tasks)} Meta-World tasks x {self.state_episodes} episodes x "
                         f"{self.state_steps} steps, scripted experts")
        if self.image_tasks:
            parts.append(f"{len(self.image_tasks)} Atari games x {self.image_episodes} episodes "
                         f"(<= {self.image_steps} steps), random policy")
        return "; ".join(parts)


TINY = BenchDataConfig(state_tasks=STATE_TASKS[:2], state_episodes=2, state_steps=60,
                       image_tasks=IMAGE_TASKS[:1], image_episodes=2, image_steps=60)


def _complete_count(task_dir: Path, episodes: int) -> int:
    from lramlab.data.store import is_complete

    return sum(1 for i in range(episodes) if is_complete(task_dir / f"episode_{i:06d}.hdf5"))


class _Lock:
    """An exclusive lock file, so two benches sharing a cache never generate into one directory."""

    def __init__(self, path: Path):
        self.path, self.fh = path, None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a")
        try:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock, one bench at a time is the user's job
            pass
        return self

    def __exit__(self, *exc):
        self.fh.close()  # closing releases the lock


def build_bench_dataset(cache: str | Path | None = None, config: BenchDataConfig | None = None,
                        progress: bool = True, rebuild: bool = False) -> tuple[Path, dict]:
    """Make (or reuse) the bench dataset under `cache/<config.key()>`; returns (root, info).

    Every task goes through `lramlab.collect.generate.generate`, which resumes: a complete cached
    task is kept as is, a partial one is finished. info: root, reused (nothing had to be
    generated), build_s, tasks, episodes.
    """
    from lramlab.collect.generate import generate
    from lramlab.data.store import UNSYNCED_NAME
    from lramlab.envs import domain_available
    from lramlab.manifests import get_task

    config = config or BenchDataConfig()
    cache = Path(cache) if cache is not None else default_cache()
    root = cache.expanduser() / config.key()
    for task, _, _, _ in config.jobs():
        spec = get_task(task)
        want = "state" if task in config.state_tasks else "image"
        if spec.obs_kind != want:
            raise ValueError(f"bench dataset: {task} has {spec.obs_kind} observations, listed as a {want} task")
    t0 = time.perf_counter()
    with _Lock(cache.expanduser() / f".{config.key()}.lock"):
        if rebuild and root.exists():
            shutil.rmtree(root)
        # a task is done when all its episodes are whole, stats.json is written and no writer left
        # unsynced episodes (after a crash those are settled by generate's resume)
        todo = [(t, pol, n, cap) for t, pol, n, cap in config.jobs()
                if _complete_count(root / t, n) < n or not (root / t / "stats.json").exists()
                or (root / t / UNSYNCED_NAME).exists()]
        for domain in sorted({t.split("/")[0] for t, *_ in todo}):
            ok, why = domain_available(domain)
            if not ok:
                raise RuntimeError(f"bench dataset needs the {domain} simulator, which is unavailable here "
                                   f"({why}); measure your own data with --data DIR")
        for task, policy, n, cap in todo:
            generate(task, n, policy, root, seed=config.seed, progress=progress, max_steps=cap)
    info = {"root": str(root), "reused": not todo, "build_s": time.perf_counter() - t0,
            "tasks": [t for t, *_ in config.jobs()], "recipe": config.describe(), "config": asdict(config)}
    return root, info


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


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {s}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not 0 < v < float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {s}")
    return v


def _packed_tasks(ds) -> int:
    return sum(d.packed is not None for d in ds.data)


@command("lramlab bench data")
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--episode-files" or a.startswith("--episode-files=") for a in argv):
        from lramlab.bench.data_scale import main as scale_main  # the dataset at the paper's scale

        return scale_main(argv)
    ap = ArgumentParser(prog="lramlab bench data", description=__doc__.split("\n\n")[0],
                        epilog="With --episode-files N: reading N files (Dark-Room histories, 400 "
                               "tasks) with bounded open files and memory while a tiny model trains, "
                               "per layout; see `lramlab bench data --episode-files N --help`.")
    ap.add_argument("--data", type=Path, default=None,
                    help="a dataset root to measure (default: the cached bench dataset of real rollouts)")
    ap.add_argument("--cache", type=Path, default=None,
                    help=f"where the bench dataset is made and reused (default {default_cache()})")
    ap.add_argument("--rebuild", action="store_true", help="delete and regenerate the cached bench dataset")
    ap.add_argument("--tiny", action="store_true",
                    help="a tiny bench dataset (2 Meta-World x 2 eps x 60 steps, 1 Atari x 2 eps x 60 steps)")
    ap.add_argument("--state-episodes", type=_positive_int, default=None, help="episodes per Meta-World task")
    ap.add_argument("--image-episodes", type=_positive_int, default=None, help="episodes per Atari game")
    ap.add_argument("--image-steps", type=_positive_int, default=None, help="cap on Atari episode length")
    ap.add_argument("--context", type=_positive_int, default=50, help="window length C in timesteps (paper: 50)")
    ap.add_argument("--batch-size", type=_positive_int, default=128, help="windows per domain micro-batch (paper: 128)")
    ap.add_argument("--windows", type=_positive_int, default=2048, help="windows to time per domain")
    ap.add_argument("--workers", type=int, nargs="*", default=[0], help="DataLoader worker counts to time")
    ap.add_argument("--layout", nargs="+", choices=("episode", "packed"), default=["episode", "packed"],
                    help="storage layouts to time (default both, side by side)")
    ap.add_argument("--updates-per-s", type=_positive_float, default=1.0,
                    help="optimizer updates per second the trainer runs (each needs batch-size windows per domain)")
    ap.add_argument("--reward-scale", type=_positive_float, default=None, help="reward scale override for --data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true", help="no progress bars while making the dataset")
    add_json_option(ap, "the results as JSON")
    args = ap.parse_args(argv)
    json_out = JsonOutput(args.json).__enter__()  # with --json -: stdout holds only the JSON

    from lramlab.data.sampling import TrajectoryDataset
    from lramlab.data.store import find_tasks, pack_task, use_packed

    notes = []
    try:
        if args.data is None:
            cfg = TINY if args.tiny else BenchDataConfig()
            over = {k: v for k, v in (("state_episodes", args.state_episodes), ("image_episodes", args.image_episodes),
                                      ("image_steps", args.image_steps)) if v is not None}
            cfg = BenchDataConfig(**{**asdict(cfg), **over, "seed": args.seed})
            root, info = build_bench_dataset(args.cache, cfg, progress=not args.no_progress, rebuild=args.rebuild)
            content = f"real rollouts ({info['recipe']}) in {root}" + (" [cached]" if info["reused"] else "")
            if "packed" in args.layout:
                t0 = time.perf_counter()
                info["packed_now"] = sum(pack_task(d)[1] for d in find_tasks(root))  # current packs are kept
                info["pack_s"] = time.perf_counter() - t0
        else:
            root, info = args.data, None
            content = f"dataset {args.data}"
        layouts = {}
        for layout in args.layout:
            with use_packed(layout == "packed"):
                ds = TrajectoryDataset(root, split="train", context_len=args.context, reward_scale=args.reward_scale)
            if layout == "packed" and _packed_tasks(ds) < len(ds.data):
                notes.append(f"packed: {_packed_tasks(ds)} of {len(ds.data)} tasks have a current packed.hdf5 "
                             f"(the others read episode files; run `lramlab data pack {root}`)")
                if not _packed_tasks(ds):
                    continue
            layouts[layout] = ds
        if not layouts:
            raise FileNotFoundError(f"no task under {root} has a current packed.hdf5: run `lramlab data pack "
                                    f"{root}` first, or measure --layout episode")
        results = []
        for workers in args.workers:
            for dom in ds.domains:
                for layout, lds in layouts.items():
                    r = measure(lds, dom, args.batch_size, args.windows, args.seed, workers)
                    r["layout"] = layout
                    r["obs"] = lds.obs_kind(dom)
                    r["needed_windows_per_s"] = args.batch_size * args.updates_per_s
                    r["ratio"] = r["windows_per_s"] / r["needed_windows_per_s"]
                    results.append(r)
    except BaseException as err:  # the command boundary reports it (lramlab._dataclass_cli.command)
        json_out.__exit__(type(err), err, None)
        raise
    summary = []
    for workers in args.workers:
        for layout in layouts:
            rs = [r for r in results if r["workers"] == workers and r["layout"] == layout]
            sec_per_update = sum(args.batch_size / r["windows_per_s"] for r in rs)  # domains load one after another
            summary.append({"workers": workers, "layout": layout, "loader_updates_per_s": 1.0 / sec_per_update,
                            "ratio": 1.0 / sec_per_update / args.updates_per_s, "domains": len(rs)})
    out = {"content": content, "dataset": info, "notes": notes, "context": args.context, "batch_size": args.batch_size,
           "updates_per_s_assumed": args.updates_per_s,
           "dataset_write_s": None if info is None or info["reused"] else info["build_s"],
           "steps": int(ds.n_steps.sum()), "results": results, "per_update": summary}
    json_out.write(out)
    json_out.__exit__(None, None, None)
    if not json_out.to_stdout:
        print(f"lramlab bench data: C={args.context}, batch {args.batch_size} per domain micro-batch; data: {content}")
        if info is not None and not info["reused"]:
            print(f"(dataset made in {info['build_s']:.1f} s; later runs reuse it)")
        for note in notes:
            print(note)
        print(f"{'domain':<14}{'obs':<7}{'workers':>8}  {'layout':<9}{'windows/s':>10}{'needed':>9}{'ratio':>8}")
        for r in results:
            print(f"{r['domain']:<14}{r['obs']:<7}{r['workers']:>8}  {r['layout']:<9}{r['windows_per_s']:>10.0f}"
                  f"{r['needed_windows_per_s']:>9.0f}{r['ratio']:>8.2f}")
        if len(layouts) == 2:
            for workers in args.workers:
                for dom in ds.domains:
                    ws = {r["layout"]: r["windows_per_s"] for r in results
                          if r["workers"] == workers and r["domain"] == dom}
                    if len(ws) == 2:
                        print(f"{dom} workers={workers}: packed / episode = {ws['packed'] / ws['episode']:.2f}x")
        for s in summary:
            print(f"workers={s['workers']} {s['layout']}: loader supplies {s['loader_updates_per_s']:.2f} updates/s "
                  f"({s['domains']} domains) vs {args.updates_per_s:g} assumed -> ratio {s['ratio']:.2f}")
    return 0
