"""What `model.step`'s finite-input check costs: steps with and without it, side by side.

    python benchmarks/step_finite_check.py                       # dt/tiny, xlstm/16M, dt/16M, B=1
    python benchmarks/step_finite_check.py --models dt/tiny --batch 16 --steps 500

`LRAM.step` refuses NaN / inf in obs, rtg and prev_reward (`lramlab.models.agent._require_finite`)
before the recurrent state moves. Both variants step their own state round-robin in one process
(one torch thread; the check is swapped for a no-op in the other), so machine noise hits both
alike; the DT's state is reset before its KV cache leaves the window. Prints median ms per step
and the ratio with / without.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["dt/tiny", "xlstm/16M", "dt/16M"], help="backbone/size")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=240, help="timed steps per variant (after 20 untimed)")
    args = ap.parse_args(argv)
    import lramlab.models.agent as A
    from lramlab.models import LRAMConfig, build_model

    torch.set_num_threads(1)
    check = A._require_finite
    try:
        for spec in args.models:
            backbone, size = spec.split("/")
            torch.manual_seed(0)
            model = build_model(LRAMConfig(backbone=backbone, size=size, context_steps=50)).eval()
            B = args.batch
            obs, rtg, rew = torch.randn(B, 39), torch.ones(B), torch.full((B,), 0.1)
            states = {True: model.init_state(B), False: model.init_state(B)}
            times: dict[bool, list[float]] = {True: [], False: []}
            for i in range(args.steps + 20):
                for on in (True, False):
                    A._require_finite = check if on else (lambda named: None)
                    t = time.perf_counter()
                    model.step(states[on], obs=obs, rtg=rtg, prev_reward=rew)
                    if i >= 20:
                        times[on].append(time.perf_counter() - t)
                    if states[on].steps >= 45:  # the DT's KV cache stays inside its 50-step window
                        states[on] = model.init_state(B)
            a, b = statistics.median(times[True]), statistics.median(times[False])
            print(f"{spec} B={B}: with the check {a * 1e3:.3f} ms/step, without {b * 1e3:.3f} ms/step, "
                  f"ratio {a / b:.3f}")
    finally:
        A._require_finite = check
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
