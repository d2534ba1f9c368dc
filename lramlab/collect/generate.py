"""`lramlab data generate`: real trajectories from running a policy in a real simulator.

    lramlab data generate --task darkroom/goal-2-0 --episodes 1000 --out data            # learning history
    lramlab data generate --task metaworld/reach-v2 --episodes 100 --policy expert:noise=0.3 --out data
    lramlab data generate --task 'darkroom/*' --episodes 1000 --out data                  # all 100 goals

Writes the store layout ``DIR/<domain>/<name>/episode_%06d.hdf5`` (numbered in generation order)
plus ``meta.json`` (task, policy spec and its resolved config, seed, how episode seeds derive) and
``stats.json`` (returns, lengths, success; via `lramlab.data.store.write_stats`).

Determinism and resume: episode i of a per-step policy uses the seed
``episode_seed(seed, i) = SeedSequence([seed, i]).generate_state(1)[0]`` for both ``env.reset`` and
the policy, so it depends on (seed, i) only. A learning history (Dark-Room ``history``) is one
sequential learner, replayed from its start on resume (it is fast) -- existing episodes are
checked against the replay. Re-running the same command resumes: complete episode files are kept
(the store writes atomically; a file exists only when whole), a partial one is redone. A re-run
with a different task/policy/seed in the same directory is refused (meta.json mismatch).
One generator per task directory at a time.

Durability: files are fsync'd in batches (`StoreWriter`, every `sync_every` episodes or 30 s, and
at the end), not one by one. A killed process loses nothing it finished; after a power loss the
episodes written since the last sync (`.unsynced.json` names them) are deleted on resume and redone.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lramlab._dataclass_cli import ArgumentParser, JsonOutput, add_json_option, command
from lramlab.collect import policies as P

META_VERSION = 1


def episode_seed(seed: int, index: int) -> int:
    """The seed of episode `index` of a run with `seed` (env reset and policy randomness)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _task_spec(task):
    from lramlab.manifests import get_task

    return task if hasattr(task, "domain") and hasattr(task, "action_kind") else get_task(task)


def _existing(task_dir: Path) -> dict[int, Path]:
    """Episode index -> file for complete episode files; incomplete/corrupt ones are removed."""
    from lramlab.data.store import is_complete, list_episode_files

    found: dict[int, Path] = {}
    for p in list_episode_files(task_dir):
        stem = p.stem
        if not stem.startswith("episode_") or not stem[8:].isdigit():
            continue
        if is_complete(p):  # opens as HDF5 (a truncated file does not) and has `complete`
            found[int(stem[8:])] = p
        else:  # only after a power loss (or damage): never keep a broken file
            p.unlink()
    # tmp files of writes that were killed (the store names them .episode_XXXXXX.hdf5.*.tmp)
    for tmp in task_dir.glob(".episode_*.tmp"):
        tmp.unlink(missing_ok=True)
    return found


def _write_meta(task_dir: Path, meta: dict) -> None:
    from lramlab.data.store import atomic_write_text

    atomic_write_text(task_dir / "meta.json", json.dumps(meta, indent=1, sort_keys=True))


def _check_meta(task_dir: Path, meta: dict, keys: tuple[str, ...]) -> None:
    path = task_dir / "meta.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); remove it or use another --out") from err
    for k in keys:
        if k in old and old[k] != meta.get(k):
            if k == "policy_config" and "episodes" in old and old["episodes"] != meta.get("episodes"):
                raise ValueError(
                    f"{path}: --episodes {meta.get('episodes')}: this directory holds a run of --episodes "
                    f"{old['episodes']}, and policy {meta.get('policy')!r} derives its settings from it "
                    f"(policy_config {old[k]!r} then, {meta.get(k)!r} now). Give --episodes {old['episodes']} to "
                    f"resume it, or another --out.")
            flag = {"episodes": " (--episodes)", "policy": " (--policy)", "seed": " (--seed)"}.get(k, "")
            raise ValueError(
                f"{path}: field {k!r}{flag} is {old[k]!r} but this run has {meta.get(k)!r}; the directory holds "
                f"data generated with other settings. Use the same settings to resume, or another --out.")


def _to_episode(states, actions, rewards, terminated: bool, success) -> dict[str, np.ndarray]:
    ep = {"states": np.stack(states), "actions": np.asarray(actions), "rewards": np.asarray(rewards, np.float32)}
    dones = np.zeros(len(rewards), dtype=bool)
    dones[-1] = bool(terminated)  # the store's convention: done only where the episode terminated
    ep["dones"] = dones
    if success is not None:
        ep["success"] = np.asarray(success, dtype=bool)
    return ep


def rollout_episode(env, policy: P.Policy, seed: int, obs_kind: str = "state",
                    max_steps: int | None = None) -> dict[str, np.ndarray]:
    """One episode: reset env and policy with `seed`, act until terminated/truncated (or max_steps)."""
    obs, info = env.reset(seed=int(seed))
    bind = getattr(policy, "bind_env", None)  # policies that read the emulator (Atari RAM / saved states)
    if bind is not None:
        bind(env)
    policy.reset(int(seed))
    S, A, R, succ = [], [], [], []
    has_success = False
    terminated = False
    t = 0
    while True:
        o = np.asarray(obs)
        if obs_kind == "image" and o.ndim == 2:
            o = o[None]
        a = policy.act(o)
        S.append(o)
        obs, r, terminated, truncated, info = env.step(a)
        policy.observe(float(r))
        A.append(a)
        R.append(float(r))
        if "success" in info:
            has_success = True
        succ.append(bool(info.get("success", False)))
        t += 1
        if terminated or truncated or (max_steps is not None and t >= max_steps):
            break
    actions = np.asarray(A)
    if actions.dtype.kind == "f":
        actions = np.clip(actions, -1.0, 1.0).astype(np.float32)
    else:
        actions = actions.astype(np.int64)
    ep = _to_episode(S, actions, R, terminated, succ if has_success else None)
    if ep["states"].dtype != np.uint8:
        ep["states"] = ep["states"].astype(np.float32)
    return ep


def generate(task, episodes: int, policy: str | None = None, out: str | Path = "data", seed: int = 0,
             progress: bool = True, throttle: float = 0.0, max_steps: int | None = None,
             compress: bool | None = None, sync_every: int = 256) -> Path:
    """Generate (or resume) `episodes` episodes of `task` under `out`; returns the task directory.

    policy: a spec (see `lramlab.collect.policies`), default per domain (`default_policy`).
    throttle: seconds to sleep after each written episode (demos and resume tests only).
    compress: gzip the episode files (default: for image observations).
    sync_every: episodes per fsync batch (`lramlab.data.store.StoreWriter`): a power loss costs a
    redo of at most that many (or 30 s of) episodes; a process kill never leaves a damaged file.
    """
    from lramlab.data.store import StoreWriter, write_stats

    spec = _task_spec(task)
    episodes = int(episodes)
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if int(seed) < 0:
        raise ValueError(f"--seed must be >= 0 (episode seeds derive from it), got {seed}")
    if max_steps is not None and int(max_steps) < 1:
        raise ValueError(f"--max-steps must be >= 1 (or left out for the environment's own limit), got {max_steps}")
    policy = policy or P.default_policy(spec.domain, spec.name)
    kind, _ = P.parse_spec(policy)
    task_dir = Path(out) / spec.domain / spec.name
    task_dir.mkdir(parents=True, exist_ok=True)
    compress = spec.obs_kind == "image" if compress is None else bool(compress)
    meta: dict[str, Any] = {
        "task": spec.id, "policy": policy, "seed": int(seed), "generator": "lramlab.collect.generate",
        "meta_version": META_VERSION,
        "episode_seeds": "numpy SeedSequence([seed, index]).generate_state(1)[0]",
    }
    if kind in ("history", "mbq"):
        if spec.domain != "darkroom":
            raise ValueError(f"policy {policy!r}: learning histories are implemented for Dark-Room only, "
                             f"not {spec.id!r}")
        if max_steps is not None:
            raise ValueError(f"--max-steps {max_steps}: a learning history ({policy!r}) plays whole Dark-Room "
                             f"episodes; leave --max-steps out")
        if kind == "mbq":  # model-based Q-learning histories for AD (lramlab.collect.histories)
            from lramlab.collect.histories import history_source

            policy_config, extra, iter_history = history_source(policy, episodes)
        else:
            extra = {}
            cfg = P.history_config(policy).resolved(episodes)
            policy_config = {"algorithm": "tabular Q-learning, epsilon-greedy", **asdict(cfg)}

            def iter_history(goal, seed):
                return P.iter_darkroom_history(goal, episodes, seed, cfg)
        meta.update(policy_config=policy_config,
                    episodes=episodes,
                    episode_seeds="one learner per history: numpy default_rng([seed, goal_x, goal_y]); "
                                  "episode i uses the i-th block of its stream")
        meta.update(extra)
        _check_meta(task_dir, meta, ("task", "policy", "seed", "policy_config", "episodes"))
    else:
        meta["max_steps"] = max_steps
        _check_meta(task_dir, meta, ("task", "policy", "seed", "max_steps"))
    # Files are atomic; fsyncs are batched by the StoreWriter (see lramlab.data.store). Opening it
    # settles what an earlier run wrote but never made durable: kept after a kill, deleted after a
    # reboot, so a power loss's damaged tail is regenerated, never taken for whole episodes.
    writer = StoreWriter(task_dir, task=spec.id, compress=compress, sync_every=sync_every)
    existing = _existing(task_dir)
    meta["episodes"] = max(episodes, max(existing, default=-1) + 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, initial=sum(1 for i in existing if i < episodes),
                   desc=f"generate {spec.id}", unit="ep")
    try:
        if kind in ("history", "mbq"):
            _write_meta(task_dir, meta)
            from lramlab.envs.darkroom import parse_goal

            goal = parse_goal(spec)
            for i, ep in enumerate(iter_history(goal, seed)):
                if i in existing:
                    from lramlab.data.store import read_episode

                    old = read_episode(existing[i], keys=("actions",))["actions"]
                    if not np.array_equal(old, ep["actions"]):
                        raise ValueError(f"{existing[i]}: differs from the replayed learning history "
                                         f"(episode {i}); the directory holds other data. Use another --out.")
                    continue
                writer.write(i, ep)
                if bar is not None:
                    bar.update(1)
                if throttle:
                    time.sleep(throttle)
        else:
            todo = [i for i in range(episodes) if i not in existing]
            if todo:
                from lramlab.envs import make_env

                # a specialist (ppo/sac/dqn) trains once into task_dir, seeded by the run's seed
                pol = P.make_policy(policy, spec, work_dir=task_dir, progress=progress, seed=seed)
                meta["policy_config"] = pol.config()
                _write_meta(task_dir, meta)
                env = make_env(spec, seed=seed)
                P.bind_policy(pol, env)  # planners and robotics experts act on the simulator they step
                try:
                    with P.single_thread():
                        for i in todo:
                            ep = rollout_episode(env, pol, episode_seed(seed, i), spec.obs_kind, max_steps)
                            writer.write(i, ep)
                            if bar is not None:
                                bar.update(1)
                            if throttle:
                                time.sleep(throttle)
                finally:
                    env.close()
            elif not (task_dir / "meta.json").exists():
                _write_meta(task_dir, meta)
    finally:
        writer.close()  # the files written are whole: make them durable, also when leaving by an error
        if bar is not None:
            bar.close()
    if writer.summaries or not _stats_current(task_dir):
        # entries of the episodes written now come from the writer: only older files are read
        write_stats(task_dir, summaries=writer.summaries)
    return task_dir


def _stats_current(task_dir: Path) -> bool:
    """stats.json lists exactly the episode files present and the task's reward rule (then a run
    that wrote nothing keeps it)."""
    from lramlab.data.store import list_episode_files

    from lramlab.manifests import reward_rule

    try:
        stats = json.loads((task_dir / "stats.json").read_text())
        return ([e["file"] for e in stats["episodes"]] == [p.name for p in list_episode_files(task_dir)]
                and stats.get("reward_rule") == reward_rule(stats["task"]))  # older stats lack the model's returns
    except (OSError, ValueError, KeyError, TypeError):
        return False


def expand_tasks(patterns: list[str]) -> list[str]:
    """Task ids for names or glob patterns (``darkroom/*``, ``metaworld/*-v2``)."""
    from lramlab.manifests import get_task, list_tasks

    out: list[str] = []
    for pat in patterns:
        if any(ch in pat for ch in "*?["):
            hits = [t.id for t in list_tasks() if fnmatch.fnmatch(t.id, pat)]
            if not hits:
                raise ValueError(f"--task {pat!r} matches no task")
            out.extend(hits)
        else:
            out.append(get_task(pat).id)
    return list(dict.fromkeys(out))


@command("lramlab data generate")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(
        prog="lramlab data generate",
        description="Generate trajectories by running a policy in a real simulator (resumable).",
        epilog="Policies: random | noisy:<eps>[:<inner>] | expert[:noise=<std>] (Meta-World, Composuite, Mimicgen Stack*, Square*, NutAssembly*) | "
               "checkpoint:<path> | ppo|sac|dqn|specialist[:steps=<n>,...] (stable-baselines3) | history[:explore_episodes=<n>,...] | mbq[:eps_start=<e>,histories=<h>,...] (Dark-Room). "
                "atari[:kind=<k>,...] (Atari RAM-scripted / look-ahead). "
                "Defaults: darkroom -> history, metaworld -> expert, dmcontrol -> its SAC specialist, "
                "procgen bigfish/starpilot/fruitbot -> planner, the Atari games of "
                "lramlab.collect.atari_policies.GAME_POLICIES -> atari, others -> random.")
    ap.add_argument("--task", action="append", required=True,
                    help="task id or glob (repeatable), e.g. darkroom/goal-2-0 or 'darkroom/*'")
    ap.add_argument("--episodes", type=int, required=True, help="episodes per task")
    ap.add_argument("--policy", default=None, help="policy spec (default depends on the domain)")
    ap.add_argument("--out", required=True, help="dataset root; data goes to OUT/<domain>/<name>/")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=None, help="cap on steps per episode")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--throttle", type=float, default=0.0, help=argparse.SUPPRESS)  # for resume tests
    add_json_option(ap, "each task's stats.json summary as a JSON list")
    args = ap.parse_args(argv)
    rows = []
    with JsonOutput(args.json) as out:
        tasks = expand_tasks(args.task)
        for t in tasks:
            d = generate(t, args.episodes, args.policy, args.out, args.seed, progress=not args.no_progress,
                         throttle=args.throttle, max_steps=args.max_steps)
            stats = json.loads((d / "stats.json").read_text())
            rs = stats["return_stats"]
            extra = f", success {stats['success_rate']:.2f}" if "success_rate" in stats else ""
            print(f"{stats['task']}: {stats['n_episodes']} episodes, {stats['n_transitions']} steps, "
                  f"return mean {rs['mean']:.3f} [{rs['min']:.3f}, {rs['max']:.3f}]{extra} -> {d}")
            rows.append({"dir": str(d), **{k: v for k, v in stats.items() if k != "episodes"}})
        out.write(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
