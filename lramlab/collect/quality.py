"""`lramlab data quality DIR`: is the data worth imitating? The data's return against a random
policy's, both scored the way the paper scores the domain.

    lramlab data quality data                    # a table, then one summary line per domain
    lramlab data quality data --json -           # {"root", "tasks": [...], "summary": [...]}
    lramlab data quality released/ --task dmcontrol/cheetah-run   # one directory of LRAM's files

Per task (any store: generated, imported, LRAM's released layout): episodes, transitions, the mean
return of the data, the mean return of a uniform random policy measured in the same simulator,
both as scores, and the policy that made the data (meta.json's ``policy``; "unknown" where the
data does not record it). Score kinds (`score_kind`): Atari ``human`` (human-normalised), Procgen
``minmax``, DMControl ``data`` (data-normalised, LRAM's constants), Meta-World / Composuite /
Mimicgen / robosuite ``success`` (the fraction of episodes with a success), Dark-Room
``return/best`` (mean return / the goal's best possible return), Atari games without constants
``raw`` (no score: the returns say it). A summary averages scores of one kind within one domain only.

The random baseline plays ``--random-episodes`` episodes with the episode seeds of
`lramlab data generate` (so generated data and baseline start from the same states) and the data's
``max_steps`` cap when meta.json has one. It is cached beside the data, in
``<task dir>/random_baseline.json``: ``{"<task>|seed=<s>|episodes=<n>|max_steps=<m>": {"return",
"success_rate", "episodes", "transitions"}}``, and reused. A domain that cannot run here gets no
random numbers and a note naming the reason.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lramlab._dataclass_cli import ArgumentParser, JsonOutput, add_json_option, command

RANDOM_CACHE = "random_baseline.json"


def score_kind(spec) -> str:
    """How the paper scores `spec`'s domain (module doc)."""
    if spec.score_kind == "success":
        return "success"
    if spec.domain == "darkroom":
        return "return/best"
    return spec.score_kind


def to_score(spec, mean_return: float | None, success_rate: float | None) -> float | None:
    """The score of a mean return / success rate under `score_kind(spec)` (None: not defined)."""
    from lramlab.manifests import normalize_score

    kind = score_kind(spec)
    if kind == "success":
        return None if success_rate is None else float(success_rate)
    if mean_return is None:
        return None
    if kind == "return/best":
        best = (spec.extra or {}).get("max_return")
        return float(mean_return) / float(best) if best else None
    if kind in ("human", "minmax", "data"):
        return float(normalize_score(spec, mean_return))
    return None


@dataclass
class QualityRow:
    task: str
    domain: str
    policy: str
    episodes: int
    transitions: int
    data_return: float | None
    random_return: float | None
    data_score: float | None
    random_score: float | None
    score_kind: str
    data_success: float | None = None
    random_success: float | None = None
    random_episodes: int = 0
    note: str = ""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


def _data_stats(task_dir: Path) -> dict:
    """stats.json when it lists exactly the episode files present, else computed from the files."""
    from lramlab.data.store import list_episode_files, task_stats

    stats = _read_json(task_dir / "stats.json")
    files = [p.name for p in list_episode_files(task_dir)]
    if (isinstance(stats, dict) and isinstance(stats.get("episodes"), list)
            and [e.get("file") for e in stats["episodes"] if isinstance(e, dict)] == files
            and all(k in stats for k in ("n_episodes", "n_transitions", "return_stats"))):
        return stats
    return task_stats(task_dir)


def random_baseline(spec, task_dir: Path, episodes: int = 10, seed: int = 0, max_steps: int | None = None,
                    progress: bool = False) -> dict:
    """Mean return (and success rate) of a uniform random policy on `spec`, cached in
    ``task_dir/random_baseline.json`` under its task / seed / episodes / max_steps key."""
    from lramlab._io import atomic_write_text
    from lramlab.collect.base import RandomPolicy
    from lramlab.collect.generate import episode_seed, rollout_episode
    from lramlab.envs import make_env

    key = f"{spec.id}|seed={int(seed)}|episodes={int(episodes)}|max_steps={max_steps}"
    path = Path(task_dir) / RANDOM_CACHE
    cache = _read_json(path)
    cache = cache if isinstance(cache, dict) else {}
    hit = cache.get(key)
    if isinstance(hit, dict) and isinstance(hit.get("return"), (int, float)):
        return hit
    env = make_env(spec, seed=seed)
    pol = RandomPolicy(spec.action_kind, spec.action_dim)
    rets, succ, steps = [], [], 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(episodes), desc=f"random {spec.id}", unit="ep", file=sys.stderr)
    try:
        for i in range(int(episodes)):
            ep = rollout_episode(env, pol, episode_seed(seed, i), spec.obs_kind, max_steps)
            rets.append(float(np.sum(ep["rewards"], dtype=np.float64)))
            steps += len(ep["rewards"])
            if "success" in ep:
                succ.append(bool(np.asarray(ep["success"]).any()))
            if bar is not None:
                bar.update(1)
    finally:
        env.close()
        if bar is not None:
            bar.close()
    entry = {"return": float(np.mean(rets)), "success_rate": float(np.mean(succ)) if succ else None,
             "episodes": int(episodes), "transitions": int(steps)}
    cache[key] = entry
    try:
        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True))
    except OSError as err:  # a read-only store still gets its numbers, only not cached
        print(f"lramlab data quality: note: cannot cache the random baseline in {path} ({err.strerror})",
              file=sys.stderr)
    return entry


def task_quality(task_dir: Path, random_episodes: int = 10, seed: int = 0, progress: bool = False,
                 task: str | None = None) -> QualityRow:
    """The quality row of one task directory (module doc); `task`: its task id when the directory
    does not say (LRAM's released files: no meta.json, directory names of their own)."""
    from lramlab.data.store import task_id_of
    from lramlab.envs import domain_available
    from lramlab.manifests import get_task

    task_dir = Path(task_dir)
    spec = get_task(task or task_id_of(task_dir))
    meta = _read_json(task_dir / "meta.json")
    meta = meta if isinstance(meta, dict) else {}
    policy = meta.get("policy") if isinstance(meta.get("policy"), str) and meta.get("policy") else "unknown"
    if policy.startswith("imported:"):  # the importers record the source format, not the policy
        policy = f"unknown ({policy})"
    stats = _data_stats(task_dir)
    eps = [e for e in stats.get("episodes", []) if isinstance(e, dict)]
    data_success = (float(np.mean([bool(e["success"]) for e in eps]))
                    if eps and all("success" in e for e in eps) else None)
    data_return = stats["return_stats"].get("mean")
    row = QualityRow(task=spec.id, domain=spec.domain, policy=policy, episodes=int(stats["n_episodes"]),
                     transitions=int(stats["n_transitions"]), data_return=data_return, random_return=None,
                     data_score=to_score(spec, data_return, data_success), random_score=None,
                     score_kind=score_kind(spec), data_success=data_success)
    if random_episodes > 0:
        ok, reason = domain_available(spec.domain)
        if not ok:
            row.note = f"no random baseline: {reason}"
        else:
            max_steps = meta.get("max_steps") if isinstance(meta.get("max_steps"), int) else None
            rb = random_baseline(spec, task_dir, random_episodes, seed, max_steps, progress)
            row.random_return, row.random_success = rb["return"], rb.get("success_rate")
            row.random_score = to_score(spec, row.random_return, row.random_success)
            row.random_episodes = int(rb["episodes"])
    return row


def data_quality(root, random_episodes: int = 10, seed: int = 0, progress: bool = False,
                 task: str | None = None) -> list[QualityRow]:
    """Quality rows of every task under dataset root `root` (sorted by task id). `task`: `root` is
    one task directory holding that task's episodes (for directories that do not name their task)."""
    from lramlab.data.store import find_task_dirs, list_episode_files

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory; expected a dataset root (DIR/<domain>/<name>/)")
    if task is not None:
        if not root.is_dir() or not list_episode_files(root):
            raise ValueError(f"--task {task}: {root} must be one task directory holding its episode files")
        return [task_quality(root, random_episodes, seed, progress, task)]
    dirs = find_task_dirs(root)  # FileNotFoundError naming root when it is missing
    if not dirs:
        raise ValueError(f"{root}: no task directories with episode files (expected DIR/<domain>/<name>/"
                         f"episode_*.hdf5, as `lramlab data generate` / `data import` write)")
    return [task_quality(dirs[t], random_episodes, seed, progress) for t in sorted(dirs)]


def summarize(rows: list[QualityRow]) -> list[dict]:
    """Mean scores per (domain, score kind): scores of different kinds are never averaged together."""
    groups: dict[tuple[str, str], list[QualityRow]] = {}
    for r in rows:
        groups.setdefault((r.domain, r.score_kind), []).append(r)
    out = []
    for (domain, kind), rs in sorted(groups.items()):
        def mean(key):
            vals = [getattr(r, key) for r in rs if getattr(r, key) is not None]
            return float(np.mean(vals)) if vals else None

        out.append({"domain": domain, "score_kind": kind, "tasks": len(rs), "data_score": mean("data_score"),
                    "random_score": mean("random_score")})
    return out


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


@command("lramlab data quality")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="lramlab data quality",
                        description="Per task: the data's mean return and a random policy's (measured in the "
                                    "same simulator, cached beside the data), scored as the paper scores the "
                                    "domain, and the policy that made the data.")
    ap.add_argument("dir", help="dataset root (DIR/<domain>/<name>/...) or one task directory")
    ap.add_argument("--random-episodes", type=int, default=10,
                    help="episodes of the random baseline per task (0: no baseline, no simulator)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random baseline's episodes")
    ap.add_argument("--task", default=None,
                    help="DIR is one task directory of this task (for files that do not name their task, "
                         "e.g. LRAM's released layout)")
    ap.add_argument("--progress", action="store_true", help="progress bars for the random baselines")
    add_json_option(ap, '{"root", "tasks": [rows], "summary": [per domain and score kind]}')
    args = ap.parse_args(argv)
    if args.random_episodes < 0:
        ap.error(f"--random-episodes must be >= 0, got {args.random_episodes}")
    if args.seed < 0:
        ap.error(f"--seed must be >= 0, got {args.seed}")
    with JsonOutput(args.json) as out:
        rows = data_quality(args.dir, args.random_episodes, args.seed, args.progress, args.task)
        summary = summarize(rows)
        out.write({"root": str(Path(args.dir).resolve()), "tasks": [asdict(r) for r in rows], "summary": summary})
    if not out.to_stdout:
        print(f"{'task':<30} {'policy':<36} {'eps':>5} {'steps':>8} {'data ret':>9} {'rand ret':>9} "
              f"{'data':>7} {'random':>7}  score")
        for r in rows:
            print(f"{r.task:<30} {r.policy[:36]:<36} {r.episodes:>5} {r.transitions:>8} {_fmt(r.data_return, '.2f'):>9} "
                  f"{_fmt(r.random_return, '.2f'):>9} {_fmt(r.data_score):>7} {_fmt(r.random_score):>7}  "
                  f"{r.score_kind}{'  ' + r.note if r.note else ''}")
        for s in summary:
            print(f"{s['domain']}: {s['tasks']} tasks, mean {s['score_kind']} score: data {_fmt(s['data_score'])}, "
                  f"random {_fmt(s['random_score'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
