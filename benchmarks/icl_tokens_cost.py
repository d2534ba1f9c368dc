"""Measure what an ICL preset's agents cost on this machine, to size studies/icl-tokens-cpu.yaml.

    python benchmarks/icl_tokens_cost.py --preset studies/icl-tokens-cpu.yaml --data DATA_DIR \
        --out OUT.json [--steps 40 120] [--trials 4] [--work DIR]

For each (backbone variant, token layout) of the preset's 03_icl section (one seed; DT matched as
the study matches it), trains one agent at two update counts on the Dark-Room histories under
DATA_DIR (the preset's 01_data_prep data) and plays `--trials` ICL trials on all 20 hold-out and
all trained goals (after one untimed warm-up trial). With `--steps 4 8` it checks itself in ~2 min;
the preset's header figures come from `--steps 40 120 --trials 4`. Times are CPU seconds of this process with one thread (time.process_time), so a
loaded shared machine still gives the wall time of an unloaded core. Per agent: seconds per update
(the difference of the two runs), the fixed start-up (data index, model), seconds per ICL trial per
goal set; the estimate for the preset scales them to its `steps` and `trials`, adds them over its
seeds and divides by its `workers` (agents at once).

Writes OUT.json: {"agents": {"<variant> <layout>": {"s_per_update", "startup_s", "s_per_trial":
{goal set: s}, "estimate_s"}}, "preset": path, "total_cpu_s", "estimate_wall_s"}.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="studies/icl-tokens-cpu.yaml")
    ap.add_argument("--data", required=True, help="the preset's Dark-Room data (01_data_prep's data_dir)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, nargs=2, default=(40, 120))
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--work", default=None, help="run directories (default: OUT's folder/icl_tokens_cost)")
    args = ap.parse_args(argv)

    import torch
    import yaml

    torch.set_num_threads(1)
    from lramlab.icl import icl_rollouts, train_config_for
    from lramlab.icl.study import ICLStudyConfig, eval_goal_set
    from lramlab.train import run
    from lramlab.train.checkpoint import load_model_from_checkpoint

    p = yaml.safe_load(Path(args.preset).read_text())["03_icl"]
    work = Path(args.work or Path(args.out).resolve().parent / "icl_tokens_cost")
    cfg = ICLStudyConfig(data_dir=args.data, **{**p, "out_dir": str(work)})
    lo, hi = args.steps
    agents = {}
    for lay in cfg.layouts:
        for v in cfg.backbones:
            cpu = {}
            for steps in (lo, hi):
                ac = replace(cfg.agent_config(v, cfg.seeds[0], lay), steps=steps,
                             out=str(work / f"{v.replace(':', '-')}-{lay}-{steps}"))
                c0 = time.process_time()
                run(replace(train_config_for(ac), progress=False, tensorboard=False, resume=False, overwrite=True))
                cpu[steps] = time.process_time() - c0
            per = (cpu[hi] - cpu[lo]) / (hi - lo)
            model = load_model_from_checkpoint(str(Path(ac.out) / "model.pt"), map_location="cpu")
            trial = {}
            # one untimed trial first: the first rollout of a process pays a one-time warm-up (~8 s for the
            # xLSTM here) that the study's worker processes pay once, not per agent
            icl_rollouts(model, eval_goal_set(cfg.eval_goals[0], Path(ac.out), 1), 1, seed=0, context_steps=ac.context,
                         dt_window_mode=ac.dt_window_mode)
            for g in cfg.eval_goals:
                goals = eval_goal_set(g, Path(ac.out), cfg.eval_max_goals)
                c0 = time.process_time()
                icl_rollouts(model, goals, args.trials, target_return=cfg.target_return, greedy=cfg.greedy, seed=0,
                             context_steps=ac.context, dt_window_mode=ac.dt_window_mode)
                trial[g] = (time.process_time() - c0) / args.trials
            startup = max(0.0, cpu[lo] - lo * per)
            est = startup + cfg.steps * per + cfg.trials * sum(trial.values())
            agents[f"{v} {lay}"] = {"s_per_update": per, "startup_s": startup, "s_per_trial": trial, "estimate_s": est,
                                    "train_cpu_s": {str(k): c for k, c in cpu.items()}}
            print(f"{v} {lay}: {per:.3f} s/update, start-up {startup:.1f} s, "
                  + ", ".join(f"{g} {t:.2f} s/trial" for g, t in trial.items()) + f" -> {est:.0f} s per agent",
                  flush=True)
    total = len(cfg.seeds) * sum(a["estimate_s"] for a in agents.values())
    out = {"preset": args.preset, "data": args.data, "steps_measured": [lo, hi], "trials_measured": args.trials,
           "agents": agents, "total_cpu_s": total, "estimate_wall_s": total / min(cfg.workers, len(cfg.jobs()))}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{len(cfg.jobs())} agents: {total / 60:.0f} CPU min, ~{out['estimate_wall_s'] / 60:.0f} min wall on "
          f"{cfg.workers} workers (03_icl alone; 01_data_prep adds its own)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
