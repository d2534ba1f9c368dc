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
