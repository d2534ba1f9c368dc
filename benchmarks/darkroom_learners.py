"""Dark-Room learning histories for Algorithm Distillation: tabular Q-learning vs SB3 DQN and PPO.

    python benchmarks/darkroom_learners.py [--episodes 1000] [--goals 2-0,5-5,9-9] [--learners qlearning,dqn,ppo]

Each learner starts from scratch on one goal of the 10x10 Dark-Room (obs (x, y), 100-step episodes)
and learns for `--episodes` episodes; its episodes, in the order they finished, are the learning
history AD would train on. Per learner and goal it prints the wall time, the mean return of the
first and last 10% of the history (and of every tenth), the best achievable return, and how
gradual the curve is: Spearman's rho between episode index and return, and the number of tenths
whose mean fell more than 5% of the best return below the previous tenth.

Learners (defaults, not tuned for this benchmark):
- ``qlearning``: lramlab.collect.qlearning (QLearningConfig defaults: epsilon 1 -> 0.05 over the
  first half of the history), one goal at a time (the scalar path).
- ``dqn``: SB3 DQN, lramlab's DQNConfig with exploration_fraction 0.5 (the same epsilon schedule as
  the Q-learner) on one env.
- ``ppo``: SB3 PPO, lramlab's PPOConfig defaults (4 envs x 512 steps, batch 64, 10 epochs,
  ent_coef 0.01); the 4 envs' episodes interleave in the history.
One torch thread; timings are wall seconds on a shared machine: compare within one run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _curve(returns: np.ndarray, best: float) -> dict:
    from scipy.stats import spearmanr

    tenths = np.array([c.mean() for c in np.array_split(returns, 10)])
    rho = spearmanr(np.arange(len(returns)), returns).statistic if returns.std() > 0 else 0.0
    return {"first10": float(tenths[0]), "last10": float(tenths[-1]), "tenths": [round(float(x), 1) for x in tenths],
            "rho": float(rho), "drops": int((np.diff(tenths) < -0.05 * best).sum()), "best": best}


def run_qlearning(goal, episodes: int, seed: int) -> np.ndarray:
    from lramlab.collect.qlearning import iter_darkroom_history

    return np.array([ep["rewards"].sum() for ep in iter_darkroom_history(goal, episodes, seed)])


def run_sb3(algo: str, goal, episodes: int, seed: int) -> np.ndarray:
    from lramlab.collect.specialists import DQNConfig, PPOConfig, learn
    from lramlab.envs.darkroom import task_name

    steps = episodes * 100
    cfg = DQNConfig(steps=steps, exploration_fraction=0.5, seed=seed) if algo == "dqn" else PPOConfig(steps=steps, seed=seed)
    _, log = learn(task_name(goal), cfg, progress=False)
    return np.asarray(log.returns[:episodes], dtype=np.float64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--goals", default="2-0,5-5,9-9", help="comma-separated x-y goals")
    ap.add_argument("--learners", default="qlearning,dqn,ppo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    from lramlab.envs import darkroom as dr

    torch.set_num_threads(1)
    goals = [tuple(int(v) for v in g.split("-")) for g in args.goals.split(",")]
    learners = [x.strip() for x in args.learners.split(",")]
    rows = []
    for goal in goals:
        for name in learners:
            t0 = time.perf_counter()
            R = run_qlearning(goal, args.episodes, args.seed) if name == "qlearning" else \
                run_sb3(name, goal, args.episodes, args.seed)
            secs = time.perf_counter() - t0
            row = {"goal": list(goal), "learner": name, "seconds": secs, "episodes": len(R),
                   **_curve(R, float(dr.max_return(goal)))}
            rows.append(row)
            print(f"goal {goal} {name:<9} {secs:7.2f} s  first10% {row['first10']:5.1f}  last10% {row['last10']:5.1f}"
                  f" (best {row['best']:.0f})  rho {row['rho']:.2f}  drops {row['drops']}  tenths {row['tenths']}",
                  flush=True)
    print("\nper learner, mean over goals:")
    base = {r["learner"]: r for r in rows}
    for name in learners:
        sel = [r for r in rows if r["learner"] == name]
        secs = np.mean([r["seconds"] for r in sel])
        ratio = ""
        if name != "qlearning" and "qlearning" in base:
            q = np.mean([r["seconds"] for r in rows if r["learner"] == "qlearning"])
            ratio = f"  ({secs / q:.0f}x the Q-learner's time)"
        print(f"{name:<9} {secs:7.2f} s/goal{ratio}; first10% {np.mean([r['first10'] for r in sel]):5.1f} -> "
              f"last10% {np.mean([r['last10'] for r in sel]):5.1f}; rho {np.mean([r['rho'] for r in sel]):.2f}; "
              f"drops {sum(r['drops'] for r in sel)}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
