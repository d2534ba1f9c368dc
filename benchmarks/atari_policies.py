"""Returns of the Atari behaviour policies (``lramlab data generate``'s default for these games) vs random.

    python benchmarks/atari_policies.py [--episodes 3] [--games freeway,breakout] [--seed 0] [--json out.json]
    python benchmarks/atari_policies.py --episodes 0 --data /work/runs/data6     # the generated data's scores

For each game of `lramlab.collect.atari_policies.GAME_POLICIES` (or --games), plays N episodes with
the game's default policy and N with the random policy, through `lramlab.envs.make_env` and
`lramlab.collect.generate.rollout_episode` with the per-episode seeds of `data generate` (so the
policy's episodes are the first N of its generated data). Protocol = the evaluator's and the data's:
a whole game (life loss does not end it), capped at 6750 agent steps (27000 frames), raw game points
summed per episode, human-normalised with the manifest's constants (random, human).
Prints per game the mean returns, their human-normalised scores, the target
(random + 0.2 x (human - random), i.e. score 0.2), steps and wall time; then the mean score.
``--data DIR`` adds the generated data's episodes, transitions and mean return (DIR/atari/<game>/
stats.json, from `lramlab data generate --out DIR`) and its score; ``--episodes 0`` plays no policy
episode (the data's return then stands for the policy's). ``--timing-steps K`` times the policy over
K steps (steps/s; with --data also the implied seconds for the data's transitions).
Wall times are the machine's at the time: on a shared, loaded machine they are upper bounds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from pathlib import Path


def _data_stats(root: Path, spec) -> dict | None:
    path = root / spec.domain / spec.name / "stats.json"
    if not path.exists():
        return None
    st = json.loads(path.read_text())
    meta_path = path.with_name("meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return {"data_episodes": st["n_episodes"], "data_transitions": st["n_transitions"],
            "data_return": st["return_stats"]["mean"], "data_policy": meta.get("policy"),
            "data_policy_config": meta.get("policy_config")}


def play(task: str, spec_text: str, episodes: int, seed: int, max_steps: int | None = None) -> dict:
    from lramlab.collect.generate import episode_seed, rollout_episode
    from lramlab.collect.policies import make_policy
    from lramlab.envs import make_env
    from lramlab.manifests import get_task

    spec = get_task(task)
    env = make_env(spec, seed=seed)
    pol = make_policy(spec_text, spec, progress=False, seed=seed)
    rets, lens = [], []
    t0 = time.perf_counter()
    for i in range(episodes):
        ep = rollout_episode(env, pol, episode_seed(seed, i), spec.obs_kind, max_steps=max_steps)
        rets.append(float(ep["rewards"].sum()))
        lens.append(int(len(ep["rewards"])))
    env.close()
    sec = time.perf_counter() - t0
    return {"returns": rets, "lengths": lens, "mean_return": float(np.mean(rets)), "seconds": sec,
            "steps_per_second": float(sum(lens) / sec), "config": pol.config()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--random-episodes", type=int, default=None, help="episodes of the random policy (default: --episodes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--games", default=None, help="comma-separated Atari task names (default: all with a policy)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--data", default=None, help="a dataset root written by lramlab data generate: report its scores")
    ap.add_argument("--reuse", action="append", default=[],
                    help="(repeatable) a JSON this script wrote earlier: take its random returns and timings for the games it has "
                         "(same seeds: the same episodes), so only the data's stats are read again")
    ap.add_argument("--timing-steps", type=int, default=0,
                    help="also time the policy over the first K agent steps of episode 0 (steps/s)")
    args = ap.parse_args(argv)
    if args.episodes < 0 or (args.episodes == 0 and not args.data):
        ap.error(f"--episodes {args.episodes}: expected >= 1, or 0 together with --data")
    from lramlab.collect.atari_policies import GAME_POLICIES
    from lramlab.manifests import get_task, normalize_score

    games = args.games.split(",") if args.games else list(GAME_POLICIES)
    old, origin = {}, {}
    for path in args.reuse:
        for r in json.loads(Path(path).read_text())["games"]:
            old[r["task"]], origin[r["task"]] = r, path
    rows = []
    for g in games:
        spec = get_task(f"atari/{g}")
        if spec.id in old:
            row = {k: v for k, v in old[spec.id].items() if k.startswith(("random", "timing", "task", "human_const"))
                   or k == "policy_config"}
            row["reused_from"] = origin[spec.id]
        else:
            rand = play(spec.id, "random", args.random_episodes or args.episodes or 3, args.seed)
            row = {"task": spec.id, "random_returns": rand["returns"], "random_return": rand["mean_return"],
                   "random_score": normalize_score(spec, rand["mean_return"]), "random_seconds": rand["seconds"],
                   "random_const": spec.score_low, "human_const": spec.score_high}
        text = f"{spec.id:<22} random {row['random_return']:9.1f} (hns {row['random_score']:5.2f})"
        if args.episodes:
            good = play(spec.id, "atari", args.episodes, args.seed)
            row.update({"policy": "atari", "policy_config": good["config"], "episodes": args.episodes,
                        "policy_returns": good["returns"], "policy_lengths": good["lengths"],
                        "policy_return": good["mean_return"], "policy_score": normalize_score(spec, good["mean_return"]),
                        "policy_seconds": good["seconds"], "policy_steps_per_second": good["steps_per_second"]})
            text += (f"  policy {row['policy_return']:9.1f} (hns {row['policy_score']:6.2f})  steps/ep "
                     f"{np.mean(good['lengths']):6.0f}  {good['seconds']:6.0f} s ({good['steps_per_second']:.1f} steps/s)")
        if args.data:
            st = _data_stats(Path(args.data), spec)
            if st is not None:
                row.update(st, data_score=normalize_score(spec, st["data_return"]))
                text += (f"  data {st['data_episodes']} ep {st['data_transitions']} steps return "
                         f"{st['data_return']:9.1f} (hns {row['data_score']:6.2f}) policy {st['data_policy']}")
            else:
                text += "  data: none"
        if "timing_steps_per_second" in row and "data_episodes" in row:
            row["data_seconds_estimate"] = row["data_transitions"] / row["timing_steps_per_second"]
        elif args.timing_steps > 0:
            tm = play(spec.id, "atari", 1, args.seed, max_steps=args.timing_steps)
            row.update(timing_steps=sum(tm["lengths"]), timing_steps_per_second=tm["steps_per_second"],
                       policy_config=tm["config"])
            if "data_episodes" in row:
                row["data_seconds_estimate"] = row["data_transitions"] / tm["steps_per_second"]
            text += f"  timing {tm['steps_per_second']:.1f} steps/s"
        key = "policy_score" if "policy_score" in row else "data_score"
        if key in row:
            row["meets_0.2"] = row[key] >= 0.2
            text += "" if row["meets_0.2"] else "  BELOW 0.2"
        rows.append(row)
        print(text, flush=True)
    key = "policy_score" if args.episodes else "data_score"
    scores = np.array([r[key] for r in rows if key in r])
    if not len(scores):
        print(f"no {key} (no data found)")
    else:
        print(f"\n{len(scores)} games, {key}: mean human-normalised {scores.mean():.3f}, "
              f"median {np.median(scores):.3f}, min {scores.min():.3f}; games >= 0.2: {(scores >= 0.2).sum()}/{len(scores)}")
    if args.json:
        out = {"command": "python benchmarks/atari_policies.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "protocol": "whole game (life loss does not end it), <= 6750 agent steps = 27000 frames, frame skip 4, "
                           "<= 30 no-ops, full action set, raw game points; episode seeds as lramlab data generate",
               "score": key, "mean_score": float(scores.mean()) if len(scores) else None,
               "median_score": float(np.median(scores)) if len(scores) else None,
               "games": rows}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
