"""Success rate of Meta-World's scripted experts (the `expert` policy of `lramlab data generate`).

    python benchmarks/metaworld_experts.py [--episodes 10] [--noise 0.0] [--tasks reach-v2,push-v2] [--json out.json]

Runs each of the 50 Meta-World tasks (45 train + 5 hold-out, manifest order) for N episodes of
200 steps through `lramlab.envs.make_env` with the same per-episode seeds as `data generate`,
and prints success rate (success at any step) and mean return per task.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def evaluate(task: str, episodes: int, noise: float, seed: int = 0) -> dict:
    from lramlab.collect.generate import episode_seed, rollout_episode
    from lramlab.collect.policies import ExpertConfig, MetaWorldExpert
    from lramlab.envs import make_env
    from lramlab.manifests import get_task

    spec = get_task(task)
    env = make_env(spec, seed=seed)
    pol = MetaWorldExpert(spec.name, ExpertConfig(noise=noise))
    succ, rets = [], []
    t0 = time.perf_counter()
    for i in range(episodes):
        ep = rollout_episode(env, pol, episode_seed(seed, i))
        succ.append(bool(ep["success"].any()))
        rets.append(float(ep["rewards"].sum()))
    env.close()
    return {"task": spec.id, "split": spec.split, "success_rate": float(np.mean(succ)),
            "mean_return": float(np.mean(rets)), "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default=None, help="comma-separated names (default: all 50)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    from lramlab.manifests import list_tasks

    tasks = args.tasks.split(",") if args.tasks else [t.id for t in list_tasks("metaworld")]
    rows = []
    for t in tasks:
        r = evaluate(t, args.episodes, args.noise, args.seed)
        rows.append(r)
        print(f"{r['task']:<42} {r['split']:<8} success {r['success_rate']:.2f}  return {r['mean_return']:8.1f}"
              f"  ({r['seconds']:.1f} s)", flush=True)
    sr = np.array([r["success_rate"] for r in rows])
    low = ", ".join(f"{r['task']} ({r['success_rate']:.1f})" for r in rows if r["success_rate"] < 0.9) or "none"
    print(f"\n{len(rows)} tasks, {args.episodes} episodes each, noise {args.noise}: mean success {sr.mean():.3f}, "
          f"tasks >= 0.9: {(sr >= 0.9).sum()}/{len(rows)}, below 0.9: {low}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
