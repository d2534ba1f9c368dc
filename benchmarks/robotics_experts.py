"""Success of the Composuite and Mimicgen scripted experts (`--policy expert`) next to a random policy.

    python benchmarks/robotics_experts.py --episodes 3 [--random-episodes 1] [--tasks 'composuite/Panda_*']
        [--json out.json] [--noise 0.0] [--seed 0]

Tasks: ids or globs (comma-separated); default all 64 Panda Composuite tasks plus Mimicgen Stack_D0,
Stack_D1, StackThree_D0, StackThree_D1, Square_D0, NutAssembly_D0. Every episode runs through
`lramlab.envs.make_env` with the per-episode seeds of `lramlab data generate` (episode_seed(seed, i)),
the expert bound to the env (it reads the simulator's state). Success = `info["success"]` at any
step of the episode (an expert episode stops at its first success; Mimicgen episodes end there
anyway); random episodes run to the horizon. For an expert episode that fails, the waypoint phase
it ended in is recorded as the reason. With --json the table is written after every task, and a
re-run with the same file skips the tasks already there (resume).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_MIMICGEN = ("mimicgen/Stack_D0", "mimicgen/Stack_D1", "mimicgen/StackThree_D0", "mimicgen/StackThree_D1",
                    "mimicgen/Square_D0", "mimicgen/NutAssembly_D0")


def default_tasks() -> list[str]:
    from lramlab.manifests import list_tasks

    panda = [t.id for t in list_tasks("composuite") if t.name.startswith("Panda_")]
    return panda + list(DEFAULT_MIMICGEN)


def expand(patterns: str) -> list[str]:
    from lramlab.manifests import list_tasks

    ids = [t.id for t in list_tasks() if t.domain in ("composuite", "mimicgen")]
    out: list[str] = []
    for pat in patterns.split(","):
        pat = pat.strip()
        hits = [i for i in ids if fnmatch.fnmatch(i, pat)]
        if not hits:
            raise SystemExit(f"--tasks: {pat!r} matches no composuite/ or mimicgen/ task")
        out.extend(hits)
    return list(dict.fromkeys(out))


def run_episode(env, policy, seed: int, stop_on_success: bool) -> tuple[bool, int, str]:
    """One episode; returns (success at any step, steps, the expert's phase at the end or '')."""
    from lramlab.collect.base import bind_policy

    bind_policy(policy, env)
    obs, _ = env.reset(seed=int(seed))
    policy.reset(int(seed))
    success, t = False, 0
    while True:
        obs, _r, terminated, truncated, info = env.step(policy.act(obs))
        t += 1
        success = success or bool(info.get("success", False))
        if terminated or truncated or (success and stop_on_success):
            break
    phase = ""
    if hasattr(policy, "phases") and getattr(policy, "phases", None):
        phase = policy.phases[min(policy.phase_i, len(policy.phases) - 1)].name
    return success, t, phase


def evaluate(task: str, episodes: int, random_episodes: int, noise: float, seed: int, bar=None) -> dict:
    from lramlab.collect.base import RandomPolicy
    from lramlab.collect.generate import episode_seed
    from lramlab.collect.robotics import RoboticsExpertConfig, robotics_expert
    from lramlab.envs import make_env
    from lramlab.manifests import get_task

    spec = get_task(task)
    t0 = time.perf_counter()
    env = make_env(spec, seed=seed)
    expert = robotics_expert(spec.id, RoboticsExpertConfig(noise=noise))
    exp_succ, steps, misses = [], [], []
    for i in range(episodes):
        s, n, phase = run_episode(env, expert, episode_seed(seed, i), stop_on_success=True)
        exp_succ.append(s)
        steps.append(n)
        if not s:
            misses.append({"episode": i, "seed": episode_seed(seed, i), "ended_in_phase": phase})
        if bar is not None:
            bar.update(1)
    t_exp = time.perf_counter() - t0
    rnd = RandomPolicy(spec.action_kind, spec.action_dim)
    rnd_succ = []
    for i in range(random_episodes):
        s, _, _ = run_episode(env, rnd, episode_seed(seed, i), stop_on_success=False)
        rnd_succ.append(s)
        if bar is not None:
            bar.update(1)
    env.close()
    return {"task": spec.id, "expert_success": float(np.mean(exp_succ)), "expert_episodes": episodes,
            "expert_steps_mean": float(np.mean(steps)),
            "random_success": float(np.mean(rnd_succ)) if rnd_succ else None, "random_episodes": random_episodes,
            "expert_misses": misses, "seconds": time.perf_counter() - t0, "expert_seconds": t_exp}


def summarize(rows: list[dict]) -> dict:
    out: dict = {}
    cs = [r for r in rows if r["task"].startswith("composuite/")]
    for key, getter in (("robot", lambda n: n.split("_")[0]), ("objective", lambda n: n.split("_")[3]),
                        ("object", lambda n: n.split("_")[1]), ("obstacle", lambda n: n.split("_")[2])):
        groups: dict[str, list[float]] = {}
        for r in cs:
            groups.setdefault(getter(r["task"].split("/")[1]), []).append(r["expert_success"])
        out[f"composuite_by_{key}"] = {k: float(np.mean(v)) for k, v in sorted(groups.items())}
    panda = [r["expert_success"] for r in cs if r["task"].startswith("composuite/Panda_")]
    if panda:
        out["composuite_panda_mean"] = float(np.mean(panda))
        out["composuite_panda_tasks"] = len(panda)
    out["composuite_below_0.5"] = [r["task"] for r in cs if r["expert_success"] < 0.5]
    mg = [r for r in rows if r["task"].startswith("mimicgen/")]
    out["mimicgen_tasks_at_0.7"] = [r["task"] for r in mg if r["expert_success"] >= 0.7]
    rnd = [r["random_success"] for r in rows if r["random_success"] is not None]
    out["random_mean"] = float(np.mean(rnd)) if rnd else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=3, help="expert episodes per task")
    ap.add_argument("--random-episodes", type=int, default=None, help="random-policy episodes (default: --episodes)")
    ap.add_argument("--noise", type=float, default=0.0, help="expert action noise std")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default=None, help="comma-separated ids or globs (default: 64 Panda Composuite "
                                                   "tasks + the Mimicgen tasks of DEFAULT_MIMICGEN)")
    ap.add_argument("--json", default=None, help="write the table here (after every task; resumes from it)")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        print(f"--episodes must be >= 1, got {args.episodes}", file=sys.stderr)
        return 2
    r_eps = args.episodes if args.random_episodes is None else args.random_episodes
    tasks = expand(args.tasks) if args.tasks else default_tasks()
    rows: list[dict] = []
    if args.json and Path(args.json).exists():
        old = json.loads(Path(args.json).read_text())
        same = old.get("settings", {}) == {"episodes": args.episodes, "random_episodes": r_eps,
                                           "noise": args.noise, "seed": args.seed}
        if same:
            rows = [r for r in old["tasks"] if r["task"] in tasks]
            print(f"resuming: {len(rows)} tasks already in {args.json}", flush=True)
    done = {r["task"] for r in rows}
    from tqdm import tqdm

    todo = [t for t in tasks if t not in done]
    wall0 = time.perf_counter()
    prev_wall = 0.0
    if args.json and Path(args.json).exists() and rows:
        prev_wall = float(json.loads(Path(args.json).read_text()).get("wall_seconds", 0.0))
    bar = tqdm(total=len(todo) * (args.episodes + r_eps), desc="robotics experts", unit="ep")
    for t in todo:
        try:
            r = evaluate(t, args.episodes, r_eps, args.noise, args.seed, bar)
        except Exception as err:  # a task that cannot run is reported by name, with the reason
            r = {"task": t, "expert_success": 0.0, "expert_episodes": 0, "random_success": None,
                 "random_episodes": 0, "error": f"{type(err).__name__}: {err}", "expert_misses": []}
        rows.append(r)
        rs = "-" if r["random_success"] is None else f"{r['random_success']:.2f}"
        bar.write(f"{r['task']:<46} expert {r['expert_success']:.2f}  random {rs}"
                  + (f"  ERROR {r['error']}" if "error" in r else "")
                  + (f"  misses: {', '.join(m['ended_in_phase'] for m in r['expert_misses'])}" if r["expert_misses"]
                     else ""))
        if args.json:
            _write(args.json, rows, args, r_eps, prev_wall + time.perf_counter() - wall0)
    bar.close()
    rows.sort(key=lambda r: tasks.index(r["task"]) if r["task"] in tasks else len(tasks))
    print(f"\n{'task':<46} {'expert':>7} {'random':>7}")
    for r in rows:
        rs = "-" if r["random_success"] is None else f"{r['random_success']:.2f}"
        print(f"{r['task']:<46} {r['expert_success']:7.2f} {rs:>7}")
    s = summarize(rows)
    print()
    for k, v in s.items():
        print(f"{k}: {v}")
    if args.json:
        _write(args.json, rows, args, r_eps, prev_wall + time.perf_counter() - wall0)
    return 0


def _write(path, rows, args, r_eps, wall):
    doc = {"command": "python benchmarks/robotics_experts.py " + " ".join(sys.argv[1:]),
           "settings": {"episodes": args.episodes, "random_episodes": r_eps, "noise": args.noise, "seed": args.seed},
           "success": "info['success'] at any step; expert episodes stop at their first success",
           "wall_seconds": round(wall, 1), "machine": f"{os.cpu_count()} CPUs, shared",
           "summary": summarize(rows), "tasks": rows}
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
