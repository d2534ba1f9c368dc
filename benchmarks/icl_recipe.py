"""Search for an Algorithm Distillation recipe on Dark-Room that learns in context on a CPU.

    python benchmarks/icl_recipe.py EXP [EXP ...] [--set key=value ...] [--root runs/recipe]
    python benchmarks/icl_recipe.py --list
    python benchmarks/icl_recipe.py --table                # every finished experiment, one line each

An experiment = learning histories (generated once per data spec, under data/recipe/<data name>,
packed) + an AD training run (`lramlab.icl.run_icl`) + in-context evaluation: `trials` trials on the
20 hold-out goals and on the 80 train goals, the context carried across trials. Each experiment
writes ROOT/<exp>/result.json (skipped when present: the script is resumable at experiment
granularity; a killed training run restarts). Printed per experiment: wall times and the mean
return over trials 1-5 and 31-40 on hold-out and train goals (the targets of issue #12: hold-out
31-40 >= 40 and >= 3x its 1-5; train >= 60).

Data specs: "mbq:<episodes>:<seed>:<key=value,...>" (lramlab.collect.histories.ModelBasedConfig
fields, plus histories=H learners per goal)
or "q:<episodes>:<seed>:<key=value,...>" (tabular Q-learning, lramlab.data.policies.QLearningConfig,
written by `lramlab data generate --policy history:...`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Experiments: data spec + ICLConfig overrides. Defaults below (BASE) apply to all.
BASE = dict(backbone="dt", size="tiny", tokens="sr", steps=1500, batch_size=16, lr=1e-3, warmup=100,
            context_episodes=2, trials=40, greedy=False, seed=0, data="mbq:60:0:")
EXPERIMENTS: dict[str, dict] = {
    # the setting: Q-learning histories (300 episodes), R̂ tokens
    "q300-srr": dict(data="q:300:0:", tokens="srr"),
    "q300-sr": dict(data="q:300:0:"),
    # model-based Q-learner, exploration decayed per success
    "mbq60-sr": dict(),
    "mbq60-srr": dict(tokens="srr"),
    # exploit as soon as the goal is known (epsilon 0.1 from the start, decaying per success)
    "mbq60e1-ad": dict(data="mbq:60:0:eps_start=0.1,eps_decay=0.9", tokens="ad"),
    "mbq60e1-sr": dict(data="mbq:60:0:eps_start=0.1,eps_decay=0.9", tokens="sr"),
    # 4 learners per goal x 20 episodes (more searches and first finds, same amount of data)
    "h4x20e1-ad": dict(data="mbq:20:0:eps_start=0.1,eps_decay=0.9,histories=4", tokens="ad"),
    "h4x20e1-sr": dict(data="mbq:20:0:eps_start=0.1,eps_decay=0.9,histories=4", tokens="sr"),
    "h4x20e1-srr": dict(data="mbq:20:0:eps_start=0.1,eps_decay=0.9,histories=4", tokens="srr"),
    "q300-ad": dict(data="q:300:0:", tokens="ad"),
}


def parse_data_spec(spec: str) -> tuple[str, int, int, dict]:
    kind, episodes, seed, rest = (spec.split(":", 3) + [""])[:4]
    if kind not in ("mbq", "q"):
        raise ValueError(f"data spec {spec!r}: expected mbq:<episodes>:<seed>:<k=v,...> or q:...")
    kw = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        kw[k] = v
    return kind, int(episodes), int(seed), kw


def data_dir(spec: str, data_root: Path) -> Path:
    name = spec.replace(":", "_").replace(",", "_").replace("=", "").rstrip("_")
    return data_root / name


def ensure_data(spec: str, data_root: Path) -> tuple[Path, float]:
    """Generate (once) the histories of all 100 goals for `spec`; returns (root, seconds)."""
    from lramlab.envs import darkroom as dr

    kind, episodes, seed, kw = parse_data_spec(spec)
    out = data_dir(spec, data_root)
    t0 = time.time()
    goals = list(dr.TRAIN_GOALS)  # AD trains on the 80 train goals only
    if kind == "mbq":
        from dataclasses import fields

        from lramlab.collect.histories import ModelBasedConfig, write_model_based_histories

        histories = int(kw.pop("histories", 1))
        types = {f.name: f.type for f in fields(ModelBasedConfig)}
        cfg = ModelBasedConfig(**{k: (v if types[k] in ("str", str) else
                                      int(v) if types[k] in ("int", int) else float(v)) for k, v in kw.items()})
        write_model_based_histories(out, goals, episodes, seed, cfg, pack=True, progress=True, histories=histories)
    else:
        done = out / "darkroom" / "goal-2-0" / "packed.hdf5"
        if not done.exists():
            pol = "history" + (":" + ",".join(f"{k}={v}" for k, v in kw.items()) if kw else "")
            for g in goals:
                subprocess.run([sys.executable, "-m", "lramlab.cli", "data", "generate", "--task", dr.task_name(g),
                                "--episodes", str(episodes), "--policy", pol, "--seed", str(seed), "--out", str(out),
                                "--no-progress"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run([sys.executable, "-m", "lramlab.cli", "data", "pack", str(out)], check=True,
                           stdout=subprocess.DEVNULL)
    return out, time.time() - t0


def summarize(returns: np.ndarray) -> dict:
    c = returns.mean(axis=0)
    n = len(c)
    out = {"t1_5": float(c[:5].mean()), "curve": [round(float(v), 2) for v in c]}
    if n >= 40:
        out["t31_40"] = float(c[30:40].mean())
        out["t31_40_std_over_goals"] = float(returns[:, 30:40].mean(axis=1).std())
    else:
        out[f"t{n - 4}_{n}"] = float(c[-5:].mean())
    return out


def run_experiment(name: str, spec: dict, root: Path, data_root: Path, threads: int) -> dict:
    import torch

    from lramlab.icl import ICLConfig, icl_rollouts, run_icl
    from lramlab.train.checkpoint import load_model_from_checkpoint

    res_path = root / name / "result.json"
    if res_path.exists():
        return json.loads(res_path.read_text())
    torch.set_num_threads(threads)
    spec = {**BASE, **spec}
    data, t_data = ensure_data(spec["data"], data_root)
    data_spec = spec["data"]
    cfg = ICLConfig(**{**spec, "data": str(data)}, out=str(root / name / "run"), num_threads=threads,
                    progress=True, amp=False)
    t0 = time.time()
    res = run_icl(cfg)
    t_total = time.time() - t0
    model = load_model_from_checkpoint(str(res.run_dir / "model.pt"))
    t1 = time.time()
    train_ret = icl_rollouts(model, "train", cfg.trials, greedy=cfg.greedy, seed=cfg.seed,
                             context_steps=cfg.context, dt_window_mode=cfg.dt_window_mode)
    t_eval_train = time.time() - t1
    metrics = json.loads((res.run_dir / "metrics.json").read_text())
    out = {"name": name, "config": {**spec, "data": data_spec}, "data_dir": str(data), "data_s": t_data,
           "train_s": metrics.get("wall_s"), "train_plus_holdout_eval_s": t_total, "train_eval_s": t_eval_train,
           "final_loss": metrics.get("train/loss"), "val_loss": metrics.get("val/loss"),
           "holdout": summarize(res.returns), "train": summarize(train_ret),
           "holdout_returns": res.returns.tolist(), "train_returns": train_ret.tolist()}
    res_path.parent.mkdir(parents=True, exist_ok=True)
    from lramlab.data.store import atomic_write_text

    atomic_write_text(res_path, json.dumps(out, indent=1))
    return out


def line(r: dict) -> str:
    h, t = r["holdout"], r["train"]
    ratio = h.get("t31_40", float("nan")) / max(h["t1_5"], 1e-9)
    return (f"{r['name']:<28} holdout 1-5 {h['t1_5']:5.1f} 31-40 {h.get('t31_40', float('nan')):5.1f} "
            f"(x{ratio:4.1f}) | train 1-5 {t['t1_5']:5.1f} 31-40 {t.get('t31_40', float('nan')):5.1f} | "
            f"loss {r.get('final_loss') or float('nan'):.3f} val {r.get('val_loss') or float('nan'):.3f} | "
            f"train {r['train_s'] or 0:.0f}s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exps", nargs="*")
    ap.add_argument("--set", action="append", default=[], help="override key=value for these experiments")
    ap.add_argument("--as", dest="alias", default=None, help="name of the result (with --set)")
    ap.add_argument("--root", default="runs/recipe")
    ap.add_argument("--data-root", default="data/recipe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args(argv)
    root, data_root = Path(args.root), Path(args.data_root)
    if args.list:
        for k, v in EXPERIMENTS.items():
            print(k, {**BASE, **v})
        return 0
    if args.table:
        for p in sorted(root.glob("*/result.json"), key=os.path.getmtime):
            print(line(json.loads(p.read_text())))
        return 0
    for exp in args.exps:
        spec = dict(EXPERIMENTS.get(exp, {}))
        if exp not in EXPERIMENTS and not args.set:
            raise SystemExit(f"unknown experiment {exp!r}; --list shows them")
        for kv in args.set:
            k, _, v = kv.partition("=")
            typ = type(BASE.get(k, ""))
            spec[k] = (v.lower() in ("1", "true", "yes")) if typ is bool else typ(v) if k in BASE else v
        name = args.alias or exp
        r = run_experiment(name, spec, root, data_root, args.threads)
        print(line(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
