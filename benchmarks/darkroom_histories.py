"""Dark-Room learning histories (`--policy history`): does every goal's learner improve?

    python benchmarks/darkroom_histories.py [--episodes 1000] [--seed 0] [--json out.json]

Trains the tabular Q-learner (lramlab.collect.policies.QLearningConfig defaults) from scratch on all
100 goals (80 train + 20 hold-out) at once, and prints per goal the mean return of the first and
last 10% of the history, the best achievable return, and the throughput of the vectorised learner.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from lramlab.collect.policies import darkroom_histories
    from lramlab.envs import darkroom as dr

    goals = list(dr.TRAIN_GOALS) + list(dr.HOLDOUT_GOALS)
    t0 = time.perf_counter()
    R = darkroom_histories(goals, args.episodes, seed=args.seed, progress=True)["returns"]  # (G, N)
    secs = time.perf_counter() - t0
    k = max(1, args.episodes // 10)
    rows = []
    for g, goal in enumerate(goals):
        first, last = float(R[g, :k].mean()), float(R[g, -k:].mean())
        rows.append({"task": dr.task_name(goal), "split": dr.goal_split(goal), "first10": first, "last10": last,
                     "max_return": dr.max_return(goal)})
        print(f"{rows[-1]['task']:<20} {rows[-1]['split']:<8} first10% {first:6.1f}  last10% {last:6.1f}  "
              f"(best {dr.max_return(goal)})")
    for split in ("train", "holdout"):
        sel = [r for r in rows if r["split"] == split]
        f = np.array([r["first10"] for r in sel])
        la = np.array([r["last10"] for r in sel])
        frac = np.array([r["last10"] / r["max_return"] for r in sel])
        print(f"{split:<8} {len(sel)} goals: mean first10% {f.mean():.1f}, last10% {la.mean():.1f}; improved "
              f"{int((la > f).sum())}/{len(sel)}; min last10%/best {frac.min():.2f}; min gain {np.min(la - f):.1f}")
    print(f"{len(goals)} histories x {args.episodes} episodes in {secs:.1f} s "
          f"({len(goals) * args.episodes / secs:.0f} episodes/s, vectorised)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
