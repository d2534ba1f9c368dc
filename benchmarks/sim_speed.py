"""Simulator speed per domain: env steps per second with random actions, through make_env.

    python benchmarks/sim_speed.py                 # table, one task per available domain
    python benchmarks/sim_speed.py --steps 500 --json
    python benchmarks/sim_speed.py --tasks atari/pong metaworld/push-v2

For each task: build time, mean reset time, and step throughput over `--steps` steps after a
reset (episode ends reset the env; those resets are excluded from the step time). Both wall-clock
and process-CPU rates are shown: on a shared machine the CPU figure is the steadier one.
Unavailable domains are listed with their reason.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

DEFAULT_TASKS = {
    "atari": "atari/freeway",
    "procgen": "procgen/coinrun",
    "dmcontrol": "dmcontrol/cheetah-run",
    "metaworld": "metaworld/reach-v2",
    "robosuite": "robosuite/Lift",
    "composuite": "composuite/IIWA_Box_None_PickPlace",
    "mimicgen": "mimicgen/Coffee_D0",
    "darkroom": "darkroom/goal-2-0",
}


def measure(task: str, steps: int, seed: int = 0) -> dict:
    """Build, reset and step one task; timings in seconds and steps/s."""
    from lramlab.envs import make_env

    w0 = time.perf_counter()
    env = make_env(task, seed=seed)
    build_s = time.perf_counter() - w0
    resets_w, resets_c = [], []
    w, c = time.perf_counter(), time.process_time()
    env.reset()
    resets_w.append(time.perf_counter() - w)
    resets_c.append(time.process_time() - c)
    step_w = step_c = 0.0
    episodes_ended = 0
    for _ in range(steps):
        a = env.action_space.sample()
        w, c = time.perf_counter(), time.process_time()
        _, _, terminated, truncated, _ = env.step(a)
        step_w += time.perf_counter() - w
        step_c += time.process_time() - c
        if terminated or truncated:
            episodes_ended += 1
            w, c = time.perf_counter(), time.process_time()
            env.reset()
            resets_w.append(time.perf_counter() - w)
            resets_c.append(time.process_time() - c)
    env.close()
    return {
        "task": task,
        "steps": steps,
        "build_s": round(build_s, 3),
        "reset_ms": round(1000 * float(np.mean(resets_w)), 2),
        "reset_cpu_ms": round(1000 * float(np.mean(resets_c)), 2),
        "steps_per_s": round(steps / step_w, 1),
        "steps_per_cpu_s": round(steps / max(step_c, 1e-9), 1),
        "ms_per_step": round(1000 * step_w / steps, 3),
        "episodes_ended": episodes_ended,
    }


def main(argv: list[str] | None = None) -> int:
    from lramlab.envs import domain_available, list_domains

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="steps per task after the first reset")
    p.add_argument("--tasks", nargs="*", default=None, help="task ids (default: one per domain)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    args = p.parse_args(argv)
    if args.steps <= 0:
        p.error(f"--steps={args.steps}: expected > 0")
    tasks = args.tasks or [DEFAULT_TASKS[d] for d in list_domains()]
    rows = []
    for task in tasks:
        domain = task.split("/", 1)[0]
        ok, reason = domain_available(domain)
        if not ok:
            rows.append({"task": task, "unavailable": reason})
            continue
        rows.append(measure(task, args.steps, args.seed))
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    head = f"{'task':<36} {'build s':>8} {'reset ms':>9} {'ms/step':>8} {'steps/s':>9} {'steps/cpu-s':>12}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "unavailable" in r:
            print(f"{r['task']:<36} unavailable: {r['unavailable'][:90]}")
        else:
            print(f"{r['task']:<36} {r['build_s']:>8.2f} {r['reset_ms']:>9.1f} {r['ms_per_step']:>8.3f} "
                  f"{r['steps_per_s']:>9.0f} {r['steps_per_cpu_s']:>12.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
