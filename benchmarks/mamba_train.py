"""Mamba vs DT training throughput on a CPU, side by side in one run (project issue 11).

    python benchmarks/mamba_train.py                        # 16M B=16 C=50 and tiny B=16 C=200
    python benchmarks/mamba_train.py --reference            # + Mamba's pure-torch reference scan
    python benchmarks/mamba_train.py --configs 16M:16:50 --reps 7 --json

One training step = `build_model(cfg)` forward, `action_loss`, backward, AdamW step; fp32, one
torch thread (`--threads`). Inputs are Dark-Room windows (real simulator, uniform random actions,
30-step episodes, so every window crosses episode boundaries; a quarter of the rows left-padded),
3 tokens per timestep (s, R̂, r). After `--warmup` untimed steps each, the models take turns step
by step for `--reps` rounds, so load on a shared machine hits them alike; tokens/s = B * 3C / the
median step time, wall clock and process CPU time (the steadier one on a shared machine).
Ratios are Mamba / DT from the same run. `mamba_scan` "auto" is the numba path on a CPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def darkroom_batch(B: int, T: int, seed: int = 0, episode_len: int = 30, pad_rows: int | None = None) -> dict:
    """B windows of T timesteps from Dark-Room streams of concatenated `episode_len`-step episodes
    (random actions); rows 0 .. pad_rows-1 are left-padded with 1 .. T/2 zero timesteps."""
    from lramlab.envs.darkroom import TRAIN_GOALS, DarkRoomVec

    rng = np.random.default_rng(seed)
    env = DarkRoomVec([TRAIN_GOALS[i % len(TRAIN_GOALS)] for i in range(B)], max_steps=episode_len)
    obs, acts, rews, rtgs = [], [], [], []
    for _ in range(T // episode_len + 2):
        o = env.reset()
        ep_o, ep_a, ep_r = [], [], []
        for _ in range(episode_len):
            a = rng.integers(0, 5, size=B)
            ep_o.append(o)
            ep_a.append(a)
            o, r, _, _, _ = env.step(a)
            ep_r.append(r)
        r = np.stack(ep_r, 1)                                            # (B, episode_len)
        obs.append(np.stack(ep_o, 1))
        acts.append(np.stack(ep_a, 1))
        rews.append(r)
        rtgs.append(np.cumsum(r[:, ::-1], 1)[:, ::-1])
    obs, acts, rews, rtgs = (np.concatenate(x, 1) for x in (obs, acts, rews, rtgs))
    start = rng.integers(0, obs.shape[1] - T + 1, size=B)
    rows = np.arange(B)[:, None]
    cols = start[:, None] + np.arange(T)[None]
    states = np.zeros((B, T, 204), np.float32)
    states[..., :2] = obs[rows, cols]
    batch = {"states": states, "rtg": rtgs[rows, cols].astype(np.float32),
             "rewards": rews[rows, cols].astype(np.float32), "actions": acts[rows, cols].astype(np.int64),
             "mask": np.ones((B, T), bool)}
    for i in range(B // 4 if pad_rows is None else pad_rows):  # left padding: zeros, mask False
        k = 1 + int(rng.integers(0, max(1, T // 2)))
        for key in ("states", "rtg", "rewards", "actions", "mask"):
            batch[key][i, k:] = batch[key][i, :T - k].copy()
            batch[key][i, :k] = 0
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    out["n_actions"] = torch.full((B,), 5, dtype=torch.int64)
    out["act_dim"] = torch.zeros(B, dtype=torch.int64)
    out["task_index"] = torch.arange(B, dtype=torch.int64) % len(TRAIN_GOALS)
    out["domain"] = "darkroom"
    return out


def run(configs: list[tuple[str, int, int]], reps: int, warmup: int, reference: bool, seed: int = 0) -> list[dict]:
    from lramlab.models import LRAMConfig, action_loss, build_model

    rows = []
    for size, B, C in configs:
        variants = [("dt", {}), ("mamba", {"mamba_scan": "auto"})]
        if reference:
            variants.append(("mamba", {"mamba_scan": "sequential"}))
        batch = darkroom_batch(B, C, seed=seed)
        runs = []
        for backbone, kw in variants:
            torch.manual_seed(seed)
            model = build_model(LRAMConfig(backbone=backbone, size=size, context_steps=C, **kw)).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(model=model, opt=opt, batch=batch):
                loss, _ = action_loss(model(batch), batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for _ in range(warmup):
                step()
            impl = getattr(model.backbone, "scan_impl", "")
            runs.append({"backbone": backbone, "impl": impl, "step": step, "wall": [], "cpu": [],
                         "params": model.num_parameters()})
        for _ in range(reps):
            for r in runs:
                w0, c0 = time.perf_counter(), time.process_time()
                r["step"]()
                r["wall"].append(time.perf_counter() - w0)
                r["cpu"].append(time.process_time() - c0)
        tokens = B * 3 * C
        base = runs[0]
        for r in runs:
            row = {"size": size, "B": B, "C": C, "tokens": tokens, "backbone": r["backbone"], "impl": r["impl"],
                   "params": r["params"], "reps": reps,
                   "wall_ms": 1e3 * statistics.median(r["wall"]), "cpu_ms": 1e3 * statistics.median(r["cpu"])}
            row["tok_s_wall"] = tokens / statistics.median(r["wall"])
            row["tok_s_cpu"] = tokens / statistics.median(r["cpu"])
            row["ratio_wall"] = statistics.median(base["wall"]) / statistics.median(r["wall"])
            row["ratio_cpu"] = statistics.median(base["cpu"]) / statistics.median(r["cpu"])
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [("| size | B | C | model | params | ms/step (wall) | tokens/s (wall) | ratio (wall) | "
              "ms/step (CPU) | tokens/s (CPU) | ratio (CPU) |"),
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        name = r["backbone"] + (f" ({r['impl']})" if r["impl"] else "")
        lines.append(f"| {r['size']} | {r['B']} | {r['C']} | {name} | {r['params']:,} | {r['wall_ms']:.0f} | "
                     f"{r['tok_s_wall']:.0f} | {r['ratio_wall']:.2f} | {r['cpu_ms']:.0f} | {r['tok_s_cpu']:.0f} | "
                     f"{r['ratio_cpu']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="16M:16:50,tiny:16:200", help="size:B:C,... (C timesteps)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reference", action="store_true", help="also time Mamba's pure-torch sequential scan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    a = p.parse_args(argv)
    configs = []
    for item in a.configs.split(","):
        try:
            size, B, C = item.split(":")
            configs.append((size, int(B), int(C)))
        except ValueError:
            p.error(f"--configs item {item!r}: expected size:B:C, e.g. 16M:16:50")
    torch.set_num_threads(a.threads)
    rows = run(configs, a.reps, a.warmup, a.reference, a.seed)
    print(json.dumps(rows, indent=1) if a.json else table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
