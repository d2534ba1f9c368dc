"""Rollouts: an LRAM agent acting in real environments, many at once (paper §4.2, App. C.1).

`Agent` wraps a model for B environments of ONE task (the model's batch dimension): it keeps
the backbone's recurrent state (xLSTM, Mamba) or KV cache (DT) across steps, conditions on the
task's target return (R̂_1 = target / reward_scale, the target in the model's reward units; after
each env reward r, with m = manifests.model_rewards(rule, r) -- Atari: r clipped to [-1, 1], the
same function the sampler applies to stored rewards -- R̂ <- R̂ - m / reward_scale and the next
reward token is m / reward_scale), pads states to 204 dims, and decodes actions from the shared
head for the task's dims (greedy or sampled). Episode returns (and so scores) sum the RAW env
rewards.

`run_task(model, task, episodes, n_envs)` plays `episodes` episodes with `n_envs` environments
stepping together (rounds of at most n_envs episodes); `lramlab.evaluate` spreads tasks over
worker processes. `record_dir` writes every episode to the trajectory store
(`store.write_episode`: states, actions, rewards, returns_to_go, dones, success) plus a sidecar
`episode_XXXXXX.extra.npz` with the conditioning R̂ per step (unscaled, in the model's reward
units) and rendered frames (when asked). The stored `rewards` are the raw env rewards.

Shape letters: B environments (batch), O = 204 padded state dims, A = 8 continuous dims.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lramlab._dataclass_cli import check_interrupted
from lramlab.manifests import model_rewards, reward_rule
from lramlab.tokenizer import MAX_ACT_DIM, STATE_DIM, pad_state


def task_spec(task: Any):
    """TaskSpec from an id / bare name / TaskSpec."""
    if not isinstance(task, str):
        return task
    from lramlab.manifests import get_task

    return get_task(task)


def target_rtg(spec, target_return: float | None = None) -> float:
    """R̂_1 in reward-scale units: the manifest's target return (or an override) / reward_scale.

    Targets are in the model's reward units (Atari: a return of clipped rewards); `lramlab.evaluate`
    passes the one it resolved (by default the task data's best return)."""
    tr = spec.target_return if target_return is None else target_return
    if tr is None:
        raise ValueError(f"task {spec.id}: the manifest has no target_return; pass target_return=...")
    return float(tr) / float(spec.reward_scale)


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class Agent:
    """An LRAM model acting in B environments of one task at once.

        agent = Agent(model, "metaworld/reach-v2", batch_size=8)
        agent.reset()
        a = agent.act(obs)          # obs (B, obs_dim) / (B, 1, 64, 64) -> (B,) ints | (B, act_dim) floats
        agent.observe(rewards)      # (B,) raw env rewards r, m = model_rewards(rule, r):
                                    #   R̂ <- R̂ - m / scale, next prev_reward = m / scale
        agent.new_episode()         # keep state/context (ICL), reset R̂ to the target

    `greedy=False` samples actions with a torch.Generator seeded by `seed`.
    """

    def __init__(self, model: torch.nn.Module, task: Any, batch_size: int = 1, *, greedy: bool = True,
                 temperature: float = 1.0, target_return: float | None = None, seed: int = 0,
                 device: torch.device | str | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        self.model = model
        self.spec = task_spec(task)
        self.B = int(batch_size)
        self.greedy = greedy
        self.temperature = float(temperature)
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.rtg0 = target_rtg(self.spec, target_return)
        self.scale = float(self.spec.reward_scale)
        self.reward_rule = reward_rule(self.spec.domain)
        self.discrete = self.spec.action_kind == "discrete"
        self.n_actions = int(self.spec.action_dim) if self.discrete else 0
        self.act_dim = 0 if self.discrete else int(self.spec.action_dim)
        if not self.discrete and self.act_dim > MAX_ACT_DIM:
            raise ValueError(f"task {self.spec.id}: {self.act_dim} action dims > {MAX_ACT_DIM}")
        self.image = self.spec.obs_kind == "image"
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.state = None
        self.reset()

    # ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """New episodes with an empty context (fresh recurrent state / KV cache)."""
        self.state = self.model.init_state(batch_size=self.B, device=self.device)
        self.rtg = torch.full((self.B,), self.rtg0, dtype=torch.float32, device=self.device)
        self.prev_reward = None  # no reward token before the first step
        self.prev_action = None  # fed back to models that see actions (tokens "srra", "ad")
        self.t = 0

    def new_episode(self) -> None:
        """Next episode in the same context (ICL trials): the state is kept, R̂ restarts at the target."""
        self.rtg = torch.full((self.B,), self.rtg0, dtype=torch.float32, device=self.device)

    def _obs_tensor(self, obs) -> torch.Tensor:
        obs = np.asarray(obs)
        if obs.shape[0] != self.B:
            raise ValueError(f"Agent.act: expected observations for {self.B} envs, got shape {obs.shape}")
        if self.image:
            return torch.as_tensor(obs.astype(np.uint8, copy=False), device=self.device)
        return torch.as_tensor(pad_state(obs.reshape(self.B, -1), STATE_DIM), device=self.device)

    @torch.no_grad()
    def logits(self, obs) -> torch.Tensor:
        """Head logits (B, 2066) at the R̂ token of this step (advances the state)."""
        x = self._obs_tensor(obs)
        # prev_reward is ignored at a stream's first step and carried across episode boundaries
        logits, self.state = self.model.step(self.state, obs=x, rtg=self.rtg, prev_reward=self.prev_reward,
                                             prev_action=self.prev_action)
        self.t += 1
        return logits

    @torch.no_grad()
    def act(self, obs) -> np.ndarray:
        """Actions for this step: (B,) int64 (discrete) or (B, act_dim) float32 in [-1, 1]."""
        logits = self.logits(obs)
        a = self.model.decode(logits, n_actions=self.n_actions, act_dim=self.act_dim, greedy=self.greedy,
                              temperature=self.temperature, generator=self.generator)
        self.prev_action = a
        a = a.cpu().numpy()
        return a.astype(np.int64) if self.discrete else a[:, : self.act_dim].astype(np.float32)

    def observe(self, rewards) -> None:
        """Rewards of the step just taken (raw env units); the model sees them under the reward rule."""
        m = model_rewards(self.reward_rule, np.asarray(rewards, dtype=np.float64).reshape(self.B))
        r = torch.as_tensor(m.astype(np.float32), device=self.device) / self.scale
        self.rtg = self.rtg - r
        self.prev_reward = r


# ----------------------------------------------------------------------------------------
# episodes


@dataclass
class EpisodeResult:
    task: str
    seed: int
    ret: float                 # raw return (env units)
    length: int
    success: bool | None       # None: the env reports no success
    path: str | None = None    # recorded episode file


@dataclass
class TaskRollouts:
    task: str
    domain: str
    episodes: list[EpisodeResult] = field(default_factory=list)

    @property
    def returns(self) -> np.ndarray:
        return np.array([e.ret for e in self.episodes], dtype=np.float64)

    @property
    def success_rate(self) -> float | None:
        s = [e.success for e in self.episodes if e.success is not None]
        return float(np.mean(s)) if s else None


def _save_npz_atomic(path: Path, **arrays) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record_episode(record_dir: str | os.PathLike, spec, index: int, rec: dict, frames: list | None,
                   seeds: tuple[int, int] | None = None) -> Path:
    """One rollout into the trajectory store (+ sidecar npz with R̂, frames, and the (make_env,
    reset) seeds that replay it: `replay_frames`)."""
    from lramlab.data.store import write_episode

    task_dir = Path(record_dir) / spec.domain / spec.name
    ep = {"states": np.stack(rec["states"]), "actions": np.stack(rec["actions"]),
          "rewards": np.asarray(rec["rewards"], dtype=np.float32),
          "dones": np.asarray(rec["dones"], dtype=bool)}
    if rec["success"] and any(s is not None for s in rec["success"]):
        ep["success"] = np.asarray([bool(s) for s in rec["success"]], dtype=bool)
    if ep["states"].dtype != np.uint8:
        ep["states"] = ep["states"].astype(np.float32)
    path = write_episode(task_dir, index, ep, compress=spec.obs_kind == "image", task=spec.id)
    extra = {"rtg_condition": np.asarray(rec["rtg"], dtype=np.float32)}
    if frames:
        extra["frames"] = np.stack(frames).astype(np.uint8)
    if seeds is not None:
        extra["seeds"] = np.asarray(seeds, dtype=np.int64)
    _save_npz_atomic(task_dir / f"episode_{index:06d}.extra.npz", **extra)
    meta = task_dir / "meta.json"
    if not meta.exists():
        import json

        from lramlab.data.store import atomic_write_text

        atomic_write_text(meta, json.dumps({"task": spec.id, "policy": "lram-rollout", "domain": spec.domain}))
    return path


def run_task(model: torch.nn.Module, task: Any, episodes: int = 3, n_envs: int = 1, *, seed: int = 0,
             greedy: bool = True, temperature: float = 1.0, target_return: float | None = None,
             max_steps: int | None = None, record_dir: str | os.PathLike | None = None,
             frames: bool = False, progress: bool = False) -> TaskRollouts:
    """Play `episodes` episodes of `task`, `n_envs` environments at a time (one model batch).

    Episode i uses env seed `seed + i`. Envs that finish early sit out the rest of their round
    (their model rows keep stepping on zero observations and are ignored).
    """
    from lramlab.envs import make_env

    spec = task_spec(task)
    if episodes < 1:
        raise ValueError(f"episodes={episodes}: expected >= 1")
    n_envs = max(1, min(int(n_envs), int(episodes)))
    limit = int(max_steps or spec.episode_length or 10_000)
    envs = [make_env(spec, seed=seed + i, render=frames) for i in range(n_envs)]
    out = TaskRollouts(task=spec.id, domain=spec.domain)
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes, desc=f"rollout {spec.id}", unit="ep")
    try:
        done_eps = 0
        while done_eps < episodes:
            B = min(n_envs, episodes - done_eps)
            agent = Agent(model, spec, B, greedy=greedy, temperature=temperature, target_return=target_return,
                          seed=seed + done_eps)
            ep_seeds = [seed + done_eps + i for i in range(B)]
            obs = []
            for i in range(B):
                o, _ = envs[i].reset(seed=ep_seeds[i])
                obs.append(np.asarray(o))
            obs = np.stack(obs)
            alive = np.ones(B, dtype=bool)
            rets = np.zeros(B)
            lens = np.zeros(B, dtype=np.int64)
            succ: list[bool | None] = [None] * B
            recs = [{"states": [], "actions": [], "rewards": [], "dones": [], "success": [], "rtg": []}
                    for _ in range(B)] if record_dir is not None else None
            frs: list[list] = [[] for _ in range(B)]
            for _ in range(limit):
                check_interrupted()  # a Ctrl-C that a finaliser (numba's) swallowed still stops the rollout
                rtg_now = agent.rtg.cpu().numpy() * agent.scale
                actions = agent.act(obs)
                rewards = np.zeros(B, dtype=np.float32)
                for i in np.flatnonzero(alive):
                    if frames:
                        fr = envs[i].render()
                        if fr is not None:
                            frs[i].append(np.asarray(fr))
                    a = int(actions[i]) if agent.discrete else actions[i]
                    o, r, term, trunc, info = envs[i].step(a)
                    rewards[i] = float(r)
                    rets[i] += float(r)
                    lens[i] += 1
                    s = info.get("success") if isinstance(info, dict) else None
                    if s is not None:
                        succ[i] = bool(succ[i]) or bool(s)
                    if recs is not None:
                        rc = recs[i]
                        rc["states"].append(obs[i])
                        rc["actions"].append(actions[i])
                        rc["rewards"].append(float(r))
                        rc["dones"].append(bool(term))
                        rc["success"].append(None if s is None else bool(s))
                        rc["rtg"].append(float(rtg_now[i]))
                    if term or trunc:
                        alive[i] = False
                        obs[i] = 0
                    else:
                        obs[i] = np.asarray(o)
                agent.observe(rewards)
                if not alive.any():
                    break
            for i in range(B):
                path = None
                if recs is not None:
                    path = str(record_episode(record_dir, spec, done_eps + i, recs[i], frs[i] if frames else None,
                                              seeds=(seed + i, ep_seeds[i])))
                out.episodes.append(EpisodeResult(task=spec.id, seed=ep_seeds[i], ret=float(rets[i]),
                                                  length=int(lens[i]), success=succ[i], path=path))
            done_eps += B
            if bar is not None:
                bar.update(B)
    finally:
        for e in envs:
            try:
                e.close()
            except Exception:  # noqa: BLE001 - closing a broken env must not hide the real error
                pass
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    return out


# ----------------------------------------------------------------------------------------
# the scene of a stored episode


def episode_seed_of(path: str | os.PathLike) -> tuple[int, int] | None:
    """(make_env seed, reset seed) an episode file was played with: from its task directory's
    meta.json for data of `lramlab data generate` (env seed = the run's seed, reset seed derived
    from (seed, index)), from its `.extra.npz` for a rollout recorded by `run_task`. None when
    nothing says (imported data, a learning history)."""
    import json

    path = Path(path)
    extra = path.with_name(path.name.split(".")[0] + ".extra.npz")
    if extra.exists():
        with np.load(extra) as z:
            if "seeds" in z.files:
                return int(z["seeds"][0]), int(z["seeds"][1])
    try:
        meta = json.loads((path.parent / "meta.json").read_text())
        index = int(path.name.split(".")[0].split("_")[-1])
    except (OSError, ValueError):
        return None
    if str(meta.get("episode_seeds", "")).startswith("numpy SeedSequence") and "seed" in meta:
        from lramlab.collect.generate import episode_seed

        return int(meta["seed"]), episode_seed(int(meta["seed"]), index)
    return None


@dataclass
class Replay:
    """Frames of a stored episode re-rendered by replaying its actions from its seed."""
    frames: np.ndarray                 # (N, H, W, 3) uint8: the scene before the actions of steps 0, every, 2 every, ...
    seed: int                          # the reset seed
    every: int = 1                     # frames[i] shows step i * every
    diverged_at: int | None = None     # first step whose observation differs from the stored state
    max_error: float = 0.0             # largest |observation - stored state| up to there

    def frame_at(self, t: int) -> np.ndarray:
        """The frame shown at step t: the last rendered step <= t."""
        return self.frames[min(int(t) // self.every, len(self.frames) - 1)]

    @property
    def note(self) -> str:
        if self.diverged_at is None:
            return (f"re-rendered from seed {self.seed}" + (f", every {self.every} steps" if self.every > 1 else "")
                    + f": the replay matches the stored states (max error {self.max_error:.2g})")
        return (f"re-rendered from seed {self.seed}: the replay DIVERGES from the stored states at step "
                f"{self.diverged_at} (the frames after it show the replay, not the recorded episode)")


def replay_frames(task: Any, ep: dict, seeds: tuple[int, int], atol: float = 1e-3, every: int = 1,
                  max_steps: int | None = None) -> Replay:
    """Re-render a stored episode: make the task's env with seeds[0], reset it with seeds[1],
    take the stored actions one by one, rendering the scene before every `every`-th one (software
    rendering costs ~0.1-0.2 s a frame on a CPU), and compare each observation with the stored state
    (`atol`, relative to the state's scale). The stored states stay the truth; a divergence is
    reported (`Replay.diverged_at`), not hidden."""
    from lramlab.envs import make_env

    spec = task_spec(task)
    states, actions = np.asarray(ep["states"]), np.asarray(ep["actions"])
    T = len(actions) if max_steps is None else min(len(actions), int(max_steps))
    env_seed, seed = int(seeds[0]), int(seeds[1])
    every = max(1, int(every))
    env = make_env(spec, seed=env_seed, render=True)
    frames, diverged, max_err = [], None, 0.0
    try:
        obs, _ = env.reset(seed=seed)
        for t in range(T):
            if diverged is None:
                o = np.asarray(obs, dtype=np.float64).reshape(states[t].shape)
                err = float(np.max(np.abs(o - states[t]))) if o.size else 0.0
                scale = max(1.0, float(np.max(np.abs(states[t]))) if states[t].size else 1.0)
                if err > atol * scale:
                    diverged = t
                else:
                    max_err = max(max_err, err)
            if t % every == 0:
                fr = env.render()
                if fr is None:
                    raise ValueError(f"task {spec.id}: its env renders no frames")
                frames.append(np.asarray(fr, dtype=np.uint8))
            a = actions[t]
            obs, _, term, trunc, _ = env.step(int(a) if spec.action_kind == "discrete" else a)
            if (term or trunc) and t < T - 1:  # the replay ended before the stored episode did
                diverged = t + 1 if diverged is None else diverged
                frames.extend([frames[-1]] * (len(range(0, T, every)) - len(frames)))
                break
    finally:
        env.close()
    return Replay(np.stack(frames), seed, every, diverged, max_err)


def save_video(frames, path: str | os.PathLike, fps: int = 20, max_side: int = 320) -> Path:
    """Frames (T, H, W, 3) uint8 as a GIF (or MP4 / WebM by the suffix, via imageio-ffmpeg),
    downscaled so the longer side is at most `max_side` pixels; written atomically."""
    from lramlab._optional import require

    iio = require("imageio.v3", "saving rollout videos")
    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4) or len(frames) == 0:
        raise ValueError(f"save_video: expected frames (T, H, W, 3), got shape {frames.shape}")
    step = max(1, int(np.ceil(max(frames.shape[1:3]) / max_side)))
    frames = frames[:, ::step, ::step, :3]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    kw = {"duration": 1000 / fps, "loop": 0} if path.suffix.lower() == ".gif" else {"fps": fps}
    iio.imwrite(tmp, frames, **kw)
    os.replace(tmp, path)
    return path


def random_policy_returns(task: Any, episodes: int = 10, seed: int = 0) -> np.ndarray:
    """Returns of a uniform random policy (a baseline for tests and notebooks)."""
    from lramlab.envs import make_env

    spec = task_spec(task)
    env = make_env(spec, seed=seed)
    env.action_space.seed(seed)
    out = []
    for e in range(episodes):
        env.reset(seed=seed + e)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            total += float(r)
            done = term or trunc
        out.append(total)
    env.close()
    return np.asarray(out)


__all__ = ["Agent", "EpisodeResult", "TaskRollouts", "run_task", "record_episode", "target_rtg",
           "random_policy_returns", "episode_seed_of", "replay_frames", "Replay", "save_video"]
