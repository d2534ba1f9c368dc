"""Measure what the six-domain study costs on this machine, to size studies/six-domain-cpu.yaml.

    python benchmarks/six_domain_timing.py --data DATA_DIR --out OUT.json [--contexts 5 20] [--batch 32]

Times are CPU seconds of one thread (time.process_time), so a loaded shared machine still gives
the wall time of an unloaded core. 1. Training: for each variant of the preset (parameter-matched
as the study matches them), CPU seconds per update on the data under DATA_DIR (every domain found: one micro-batch per domain per update),
   at each context and per domain micro-batch, over `--updates` updates after `--skip` warm-up ones.
2. Rollouts: per domain found, CPU seconds per env step of a tiny model playing whole episodes (one
   episode per task of the first `--tasks-per-domain` tasks), and the steps of those episodes.

    python benchmarks/six_domain_timing.py --estimate studies/six-domain-cpu.yaml --timing OUT.json --data DATA_DIR

estimates the preset's wall time on the data under DATA_DIR (its train / hold-out tasks) from those
measurements (see `estimate`).

Writes OUT.json: {"train": {variant: {context: {domain: s per micro-batch}}}, "rollout": {domain: {"s_per_step", "steps"}},
"domains": [...], "params": {variant: n}}. The numbers feed the estimate in the preset's header.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def train_seconds(cfg, spec, data: str, context: int, batch: int, updates: int, skip: int) -> dict[str, float]:
    """CPU seconds of one update per domain micro-batch {domain: s} (forward + backward + optimizer step
    on that domain's micro-batch alone; one thread), the mean over `updates` after `skip` warm-up
    updates (numba / kernel compilation). An update of the study costs about their sum."""
    import torch

    from lramlab.models import build_model
    from lramlab.train.data import make_datasets, make_sampler
    from lramlab.train.distributed import DistInfo
    from lramlab.train.loop import make_model_config
    from lramlab.train.step import build_optimizer, build_scheduler, train_step

    tc = cfg.train_config(spec, (), Path("unused"))
    tc.data, tc.context, tc.batch_size, tc.steps, tc.val_fraction = (data,), context, batch, 1000, 0.0
    torch.manual_seed(0)
    train_ds, _ = make_datasets(tc)
    sampler = make_sampler(train_ds, tc, DistInfo())
    model = build_model(make_model_config(tc))
    opt = build_optimizer(model, tc)
    sched = build_scheduler(opt, tc)
    out = {}
    for i, dom in enumerate(sampler.domains):
        total = 0.0
        for k in range(skip + updates):
            mb = sampler.next_update()[i]
            t0 = time.process_time()
            train_step(model, [mb], opt, sched, grad_clip=tc.grad_clip, amp=False, device="cpu")
            if k >= skip:
                total += time.process_time() - t0
        out[dom] = total / updates
    return out


PIXEL = ("atari", "procgen")


def _per_domain(table: dict, dom: str) -> float:
    """A measured per-domain number, or for a domain not measured the mean over the measured domains
    of its kind (pixel: Atari / Procgen; state: the others)."""
    if dom in table:
        return float(table[dom])
    same = [float(v) for d, v in table.items() if (d in PIXEL) == (dom in PIXEL)]
    if not same:
        raise ValueError(f"no measured {'pixel' if dom in PIXEL else 'state'} domain to stand in for {dom}")
    return sum(same) / len(same)


def estimate(preset: str, timing: dict, data: str) -> dict:
    """Wall seconds of the preset's 06_multitask on `data` from `timing` (this script's OUT.json):
    training = agents x steps x (sum over the training domains of the variant's s per micro-batch at
    the preset's context, linearly interpolated in context); fine-tuning likewise on the hold-out
    domains; evaluation = agents x (train + 2 x hold-out tasks) x episodes x episode steps (the
    manifest's episode length, or the mean measured length) x s per env step, plus the random
    policy on the train tasks; all divided by `workers` (jobs in parallel, one thread each)."""
    import yaml

    from lramlab.manifests import get_task
    from lramlab.multitask import MultiTaskConfig, find_study_tasks

    p = yaml.safe_load(Path(preset).read_text())["06_multitask"]
    cfg = MultiTaskConfig(**{**p, "data_dir": data})
    train, hold = find_study_tasks(data, cfg.tasks, cfg.holdout_tasks)

    def per_update(variant: str, domains) -> float:
        tab = timing["train"][variant]
        cs = sorted(int(c) for c in tab)
        lo = max([c for c in cs if c <= cfg.context] or cs[:1])
        hi = min([c for c in cs if c >= cfg.context] or cs[-1:])
        f = 0.0 if hi == lo else (cfg.context - lo) / (hi - lo)
        return sum((1 - f) * _per_domain(tab[str(lo)], d) + f * _per_domain(tab[str(hi)], d) for d in domains)

    def rollout_s(tasks) -> float:
        total = 0.0
        for t in tasks:
            spec = get_task(t)
            r = timing["rollout"]
            sps = _per_domain({d: v["s_per_step"] for d, v in r.items()}, spec.domain)
            total += cfg.eval_episodes * (cfg.eval_max_steps or spec.episode_length or 1000) * sps
        return total

    tdom = sorted({t.split("/")[0] for t in train})
    hdom = sorted({t.split("/")[0] for t in hold})
    agents = cfg.agents()
    train_s = sum(cfg.steps * per_update(a["variant"], tdom) for a in agents)
    ft_s = sum(cfg.finetune_steps * per_update(a["variant"], hdom) for a in agents) if hold else 0.0
    eval_s = len(agents) * (rollout_s(train) + 2 * rollout_s(hold)) + rollout_s(train)
    total = train_s + ft_s + eval_s
    return {"train_tasks": len(train), "holdout_tasks": len(hold), "domains": tdom, "agents": len(agents),
            "train_s": train_s, "finetune_s": ft_s, "eval_s": eval_s, "cpu_s": total,
            "wall_s": total / cfg.workers, "wall_h": total / cfg.workers / 3600}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", help="write the measurements here")
    ap.add_argument("--estimate", help="a preset (studies/*.yaml): estimate its wall time from --timing")
    ap.add_argument("--timing", help="a measurements file this script wrote")
    ap.add_argument("--contexts", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--updates", type=int, default=6)
    ap.add_argument("--skip", type=int, default=2)
    ap.add_argument("--tasks-per-domain", type=int, default=2)
    ap.add_argument("--backbones", nargs="+",
                    default=["xlstm:7:1", "xlstm:1:0", "mamba", "dt", "xlstm:7:1@256", "dt@256"])
    a = ap.parse_args(argv)
    if a.estimate:
        if not a.timing:
            ap.error("--estimate needs --timing")
        print(json.dumps(estimate(a.estimate, json.loads(Path(a.timing).read_text()), a.data), indent=1))
        return 0
    if not a.out:
        ap.error("--out is required to measure")
    import torch

    torch.set_num_threads(1)
    from lramlab.data.store import find_task_dirs
    from lramlab.models import LRAMConfig, build_model
    from lramlab.multitask import MultiTaskConfig
    from lramlab.rollout import run_task

    tmp = Path(a.out).with_suffix(".runs")  # MultiTaskConfig.out_dir (nothing is written there)
    out: dict = {"train": {}, "rollout": {}, "batch": a.batch, "updates": a.updates}
    tasks = sorted(find_task_dirs([a.data]))
    out["domains"] = sorted({t.split("/")[0] for t in tasks})
    for ctx in a.contexts:
        cfg = MultiTaskConfig(data_dir=a.data, backbones=a.backbones, d_model=128, n_layers=3, context=ctx,
                              batch_size=a.batch, steps=a.skip + a.updates, out_dir=str(tmp))
        out["params"] = cfg.param_counts()
        for spec in cfg.specs():
            s = train_seconds(cfg, spec, a.data, ctx, a.batch, a.updates, a.skip)
            out["train"].setdefault(spec["name"], {})[str(ctx)] = s
            print(f"train {spec['name']} C={ctx}: " + ", ".join(f"{d} {v:.3f}" for d, v in s.items())
                  + " s per domain micro-batch", flush=True)
            Path(a.out).write_text(json.dumps(out, indent=1))
    model = build_model(LRAMConfig(backbone="xlstm", size="tiny", d_model=128, n_layers=6, context_steps=max(a.contexts)))
    for dom in out["domains"]:
        steps, secs = 0, 0.0
        for t in [t for t in tasks if t.startswith(dom + "/")][: a.tasks_per_domain]:
            t0 = time.process_time()
            r = run_task(model, t, episodes=1, seed=0)
            secs += time.process_time() - t0
            steps += sum(e.length for e in r.episodes)
        out["rollout"][dom] = {"s_per_step": secs / max(1, steps), "steps": steps}
        print(f"rollout {dom}: {secs / max(1, steps) * 1e3:.2f} ms/step over {steps} steps", flush=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
