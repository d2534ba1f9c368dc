"""How far a padded training window's logits are from the agent stepping the same episode start.

For every backbone (tiny preset, seeded init plus a small perturbation so zero-initialised gates
count), on real Meta-World reach-v2 expert episodes (generated here with the suite's scripted
policy), windows of C steps ending at steps 0..C-1 of an episode (so they start at its first step)
are run through `model(batch)`:
  right  -- the sampler's layout (real steps first, padding after)
  left   -- the layout before it (padding first: zero tokens through the embedding LayerNorm
            into the state, DT positions shifted)
and compared with `model.step` from `init_state` over the same steps. Prints the max |logit
difference| over the real steps of all windows, per backbone and layout.

    python benchmarks/padding_gap.py [--context 50] [--episodes 2] [--threads 1]
"""
from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--context", type=int, default=50)
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lramlab.collect.generate import generate
    from lramlab.data.sampling import TrajectoryDataset
    from lramlab.models import LRAMConfig, build_model

    C = args.context
    with tempfile.TemporaryDirectory() as root:
        generate("metaworld/reach-v2", args.episodes, policy="expert", out=root, progress=False)
        ds = TrajectoryDataset(root, split="all", context_len=C)
        print(f"{'backbone':<12} {'right-padded (now)':>20} {'left-padded (before)':>22}")
        for backbone, ratio in (("xlstm", "7:1"), ("xlstm", "1:0"), ("mamba", None), ("dt", None)):
            torch.manual_seed(0)
            model = build_model(LRAMConfig(backbone=backbone, size="tiny", slstm_at=ratio, context_steps=C))
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
            model.eval()
            worst = {"right": 0.0, "left": 0.0}
            for ep in ds.episodes[0]:
                e = ds.data[0].read(int(ep))
                scale = ds.infos[0].reward_scale
                n = min(C, len(e["rewards"]))
                state, ref = model.init_state(1), []
                with torch.no_grad():
                    for t in range(n):
                        lg, state = model.step(state, obs=e["states"][t][None], rtg=e["returns_to_go"][t] / scale,
                                               prev_reward=e["rewards"][t - 1] / scale if t else None)
                        ref.append(lg[0])
                ref = torch.stack(ref)
                batch = ds.make_batch("metaworld", [(0, int(ep), end) for end in range(n)])
                left = dict(batch)
                for k in ("states", "rtg", "rewards", "actions", "mask"):
                    left[k] = torch.stack([torch.roll(batch[k][b], C - (b + 1), dims=0) for b in range(n)])
                with torch.no_grad():
                    right_logits, left_logits = model(batch), model(left)
                for b in range(n):
                    k = b + 1
                    worst["right"] = max(worst["right"], float((right_logits[b, :k] - ref[:k]).abs().max()))
                    worst["left"] = max(worst["left"], float((left_logits[b, C - k:] - ref[:k]).abs().max()))
            name = backbone + (f" [{ratio}]" if ratio else "")
            print(f"{name:<12} {worst['right']:>20.2e} {worst['left']:>22.2e}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
