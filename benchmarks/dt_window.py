"""DT step latency past its window: "exact" vs "hop" window mode, side by side.

    python benchmarks/dt_window.py                          # tiny and 16M, B=20, W=600 tokens
    python benchmarks/dt_window.py --sizes tiny --json
    python benchmarks/dt_window.py --batch 20 --window 600 --keep 300 --exact-steps 10

Full LRAM agent steps (encoders, DT backbone, head; `model.step` as the ICL rollout calls it) on
Dark-Room-shaped inputs ((x, y) cells, R̂, previous reward), one torch thread. For each size and
mode the KV cache is first filled to the window (W / 3 steps, untimed), then steps past the window
are timed: "exact" re-encodes the last W tokens at every step (constant cost, `--exact-steps`
steps are enough); "hop" is timed over one whole hop period ((W - K) / 3 + 1 steps, one re-encode
of K tokens in it), so its mean is the amortised cost. Wall and process-CPU milliseconds per step
are shown; on a shared machine the CPU figure is the steadier one.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def bench(size: str, mode: str, batch: int, window: int, keep: int | None, exact_steps: int,
          seed: int = 0) -> dict:
    from lramlab.models import LRAMConfig, build_model

    torch.manual_seed(seed)
    k = 3
    model = build_model(LRAMConfig(backbone="dt", size=size, context_steps=window // k)).eval()
    bb = model.backbone
    bb.window, bb.window_mode, bb.window_keep = window, mode, keep
    state = model.init_state(batch)
    rng = np.random.default_rng(seed)

    def one_step():
        obs = torch.as_tensor(rng.integers(0, 9, size=(batch, 2)).astype(np.float32))
        rtg = torch.as_tensor(rng.uniform(0, 80, size=batch).astype(np.float32))
        rew = torch.as_tensor(rng.integers(0, 2, size=batch).astype(np.float32))
        model.step(state, obs=obs, rtg=rtg, prev_reward=rew)

    with torch.no_grad():
        while state.backbone.length + k <= window:  # fill the cache (cheap appends in both modes)
            one_step()
        n = exact_steps if mode == "exact" else (window - state.backbone.keep) // k + 1
        wall, cpu = [], []
        for _ in range(n):
            w0, c0 = time.perf_counter(), time.process_time()
            one_step()
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    return {"size": size, "mode": mode, "batch": batch, "window": window,
            "keep": state.backbone.keep if mode == "hop" else None, "steps_timed": n,
            "wall_ms_mean": 1e3 * float(np.mean(wall)), "cpu_ms_mean": 1e3 * float(np.mean(cpu)),
            "wall_ms_median": 1e3 * float(np.median(wall)), "wall_ms_max": 1e3 * float(np.max(wall))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "16M"])
    p.add_argument("--batch", type=int, default=20, help="streams (ICL: 20 hold-out goals)")
    p.add_argument("--window", type=int, default=600, help="W tokens (ICL: 2 episodes of 100 steps x 3)")
    p.add_argument("--keep", type=int, default=None, help="K tokens a hop keeps (default W/2)")
    p.add_argument("--exact-steps", type=int, default=10, help="steps timed in exact mode")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [bench(s, m, args.batch, args.window, args.keep, args.exact_steps)
            for s in args.sizes for m in ("exact", "hop")]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    head = (f"{'size':<6} {'mode':<6} {'B':>3} {'W':>4} {'K':>4} {'steps':>5} {'wall ms':>9} {'cpu ms':>9} "
            f"{'median':>8} {'max':>8}")
    print(f"DT step past the window, {args.threads} thread(s); ms per step (hop: mean over one hop period)")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['size']:<6} {r['mode']:<6} {r['batch']:>3} {r['window']:>4} {str(r['keep'] or '-'):>4} "
              f"{r['steps_timed']:>5} {r['wall_ms_mean']:>9.1f} {r['cpu_ms_mean']:>9.1f} "
              f"{r['wall_ms_median']:>8.1f} {r['wall_ms_max']:>8.1f}")
    for s in args.sizes:
        e, h = [r for r in rows if r["size"] == s]
        print(f"{s}: hop is {e['cpu_ms_mean'] / h['cpu_ms_mean']:.1f}x faster per step (CPU time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
