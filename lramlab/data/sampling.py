"""Windows, validation split, domain-balanced batches and the rank split (paper §4.1, App. C).

Shape letters: B windows per batch, C context length in timesteps (default 50), O = STATE_DIM (204)
padded state dims, A = MAX_ACT_DIM (8) padded continuous action dims.

Rules (each is tested in tests/test_sampling.py):
- A window is C timesteps ending at any step `end` of an episode (the last step included), i.e.
  steps [max(0, end-C+1), end]. It is RIGHT-padded: its n <= C real steps sit at rows 0..n-1,
  zeros and `mask` False after them. Padding therefore only ever FOLLOWS real tokens, so a causal
  backbone (xLSTM, Mamba, the DT's causal attention) computes every real step from the real
  steps before it alone: a window that starts at an episode's first step is processed exactly as
  the agent processes that episode from `init_state`, and the DT gives token i of a window
  position i, as at inference (tests/test_padding.py). Left padding would run zero tokens through
  the recurrent state before the first real one.
- Validation windows (`validation_items`) tile each episode from its END backwards: windows of
  C steps ending at L-1, L-1-C, ..., the earliest one shorter and starting at step 0 -- each one
  a window training samples too (full C steps, or shorter only from the episode's first step),
  and every timestep a target exactly once.
- `rewards` are the stored rewards under the task's reward rule (`manifests.model_rewards`: Atari
  clipped to [-1, 1], others raw) and `rtg` their returns-to-go to the episode's end (for a rule
  other than "raw" the rest of the episode's rewards are read too); both are divided by the
  domain's reward scale (manifests, or an override). The agent applies the same rule in rollouts.
- Validation split: per task, k = max(1, round(0.025 * n)) of its n episodes, those with the
  smallest hash(task id, episode index) are held out when the task has >= 2 episodes; a task with
  a single episode keeps it for training (k = 0). Deterministic, independent of the seed and of
  the order files were listed, and exactly disjoint from the training episodes.
- Window end points are sampled uniformly over all training timesteps of a task, so episodes are
  weighted by their length. Within a task they are drawn WITHOUT replacement: an epoch is a
  pseudo-random permutation (keyed by seed, task and epoch) of the task's timesteps; the stream of
  epochs is dealt out round-robin to the ranks (position p goes to rank p % world_size), so ranks
  never share a draw and together cover every end point once per epoch.
- Tasks within a domain: `task_weighting="size"` (default) picks a task with probability
  proportional to its number of training timesteps -- together with the rule above, every
  timestep of the domain is equally likely, as in a buffer that concatenates the domain's tasks;
  `"uniform"` gives every task the same share.
- Domain balance: one update = one micro-batch of B windows per domain, in a fixed domain order
  (gradient accumulation over the domains, as the paper does).
- `state_dict()` / `load_state_dict()` hold the per-task draw counters and the RNG state, so a
  resumed run draws exactly the batches an uninterrupted one would have.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np

from lramlab.data.store import TaskData, find_tasks, returns_to_go
from lramlab.manifests import REWARD_RULES, model_rewards, reward_rule
from lramlab.tokenizer import IMAGE_SHAPE, MAX_ACT_DIM, STATE_DIM

DEFAULT_CONTEXT = 50
WINDOW_KEYS = ("states", "actions", "rewards", "returns_to_go")  # what a training window reads
VAL_FRACTION = 0.025  # paper: 2.5 % of the trajectories of each task (reference/domain_specs.yaml p_valid)
_MASK64 = (1 << 64) - 1


# ----------------------------------------------------------------------------- hashing
def _hash64(*parts) -> int:
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (a good avalanche for the Feistel round function)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def permute(idx: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """A keyed pseudo-random bijection of [0, n), evaluated at `idx` without storing a permutation.

    Balanced Feistel network on 2h bits (2^(2h) >= n) with cycle walking back into [0, n).
    """
    idx = np.asarray(idx, dtype=np.uint64)
    if n <= 1:
        return np.zeros(idx.shape, dtype=np.int64)
    half = max(1, ((int(n) - 1).bit_length() + 1) // 2)
    lo_mask = np.uint64((1 << half) - 1)
    keys = [np.uint64(_hash64(key, r)) for r in range(rounds)]

    def once(x):
        left, right = x >> np.uint64(half), x & lo_mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & lo_mask)
        return (left << np.uint64(half)) | right

    out = once(idx)
    bad = out >= np.uint64(n)
    while bad.any():  # cycle walking: ends because once() is a bijection of [0, 4^half)
        out[bad] = once(out[bad])
        bad = out >= np.uint64(n)
    return out.astype(np.int64)


# ----------------------------------------------------------------------------- split
def validation_episodes(task: str, n_episodes: int, fraction: float = VAL_FRACTION) -> np.ndarray:
    """Sorted episode indices held out for validation (see the module docstring for the rule)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), got {fraction}")
    if n_episodes < 2 or fraction == 0.0:
        return np.zeros(0, dtype=np.int64)
    k = max(1, int(fraction * n_episodes + 0.5))
    h = np.array([_hash64("val", task, i) for i in range(n_episodes)], dtype=np.uint64)
    return np.sort(np.argsort(h, kind="stable")[:k]).astype(np.int64)


def split_episodes(task: str, n_episodes: int, split: str, fraction: float = VAL_FRACTION) -> np.ndarray:
    val = validation_episodes(task, n_episodes, fraction)
    if split == "val":
        return val
    if split == "all":
        return np.arange(n_episodes, dtype=np.int64)
    if split == "train":
        return np.setdiff1d(np.arange(n_episodes, dtype=np.int64), val)
    raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")


# ----------------------------------------------------------------------------- task info
@dataclass(frozen=True)
class TaskInfo:
    """What the sampler needs to know about a task (from the manifest, or an override)."""

    task: str
    domain: str
    reward_scale: float
    action_kind: Literal["discrete", "continuous"]
    action_dim: int  # discrete: number of actions; continuous: number of dims
    obs_kind: Literal["state", "image"]
    reward_rule: str = "raw"  # how stored rewards become the model's (lramlab.manifests.REWARD_RULE)

    def __post_init__(self):
        if self.reward_rule not in REWARD_RULES:
            raise ValueError(f"{self.task}: reward_rule must be one of {list(REWARD_RULES)}, got {self.reward_rule!r}")
        if not (self.reward_scale > 0 and np.isfinite(self.reward_scale)):
            raise ValueError(f"{self.task}: reward_scale must be a positive number, got {self.reward_scale}")
        if self.action_kind not in ("discrete", "continuous"):
            raise ValueError(f"{self.task}: action_kind must be 'discrete' or 'continuous', got {self.action_kind!r}")
        limit = 18 if self.action_kind == "discrete" else MAX_ACT_DIM
        if not 1 <= int(self.action_dim) <= limit:
            raise ValueError(f"{self.task}: action_dim must be in 1..{limit} for {self.action_kind} actions, got {self.action_dim}")


def _get(spec, name, default=None):
    if spec is None:
        return default
    if isinstance(spec, Mapping):
        return spec.get(name, default)
    return getattr(spec, name, default)


def _manifest_spec(task: str):
    from lramlab.data.store.validate import manifest_spec

    return manifest_spec(task)  # a dict lookup: get_task's error path costs ~40 ms a task


def resolve_task_info(data: TaskData, task_specs: Mapping[str, Any] | None = None,
                      reward_scale: float | Mapping[str, float] | None = None) -> TaskInfo:
    """Combine the data's own shapes with the task's spec.

    Precedence: `task_specs[task]` (a TaskSpec, TaskInfo or dict) > `lramlab.manifests.get_task`
    > meta.json (`domain`, `action_dim`/`n_actions`, `reward_scale`). `reward_scale` overrides the
    spec's scale: a float for every task, or a dict by task id or domain. The reward rule is the
    spec's `reward_rule` when it has one, else the domain's (`manifests.reward_rule`).
    """
    task = data.task
    spec = (task_specs or {}).get(task) if task_specs else None
    if spec is None:
        spec = _manifest_spec(task)
    meta = data.meta
    domain = _get(spec, "domain") or meta.get("domain") or task.split("/")[0]
    scale = None
    if isinstance(reward_scale, Mapping):
        scale = reward_scale.get(task, reward_scale.get(domain))
    elif reward_scale is not None:
        scale = reward_scale
    if scale is None:
        scale = _get(spec, "reward_scale", meta.get("reward_scale"))
    if scale is None:
        meta_file = Path(data.task_dir) / "meta.json"
        raise ValueError(f"{task} (in {data.task_dir}): no reward scale: the task is not in lramlab.manifests "
                         f"(`lramlab tasks` lists them; a typo in the task name?) and "
                         f"{meta_file if meta_file.exists() else 'its meta.json (missing)'} gives no 'reward_scale'; "
                         f"add one there (Python: run(cfg, reward_scale=...))")
    spec_kind = _get(spec, "action_kind")
    if spec_kind is not None and spec_kind != data.action_kind:
        raise ValueError(f"{task}: manifest says {spec_kind} actions, the files in {data.task_dir} hold {data.action_kind}")
    if data.action_kind == "continuous":
        dim = int(data.act_dim)
        spec_dim = _get(spec, "action_dim")
        if spec_dim is not None and int(spec_dim) != dim:
            raise ValueError(f"{task}: manifest says action_dim {spec_dim}, the files hold {dim}")
    else:
        dim = _get(spec, "action_dim", meta.get("action_dim", meta.get("n_actions")))
        if dim is None:
            raise ValueError(f"{task}: number of discrete actions unknown (not in manifests, task_specs or meta.json)")
    rule = _get(spec, "reward_rule") or reward_rule(str(domain))
    return TaskInfo(task=task, domain=str(domain), reward_scale=float(scale), action_kind=data.action_kind,
                    action_dim=int(dim), obs_kind=data.obs_kind, reward_rule=str(rule))


def episode_returns(data: TaskData) -> np.ndarray:
    """Undiscounted return of every episode of a task, (n_episodes,) float64: from `stats.json`
    when it lists exactly the episode files present (`write_stats`), else summed from `rewards`."""
    import json

    try:
        stats = json.loads((data.task_dir / "stats.json").read_text())
        eps = stats["episodes"]
        if [e["file"] for e in eps] == [p.name for p in data.episode_paths]:
            return np.asarray([float(e["return"]) for e in eps], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no usable stats.json: read the rewards
    return np.asarray([float(np.sum(data.read(i, keys=("rewards",))["rewards"], dtype=np.float64))
                       for i in range(len(data))], dtype=np.float64)


# ----------------------------------------------------------------------------- dataset
class TrajectoryDataset:
    """All tasks under one or more roots, one split of their episodes, cut into windows of C steps.

    `files` ({task dir: (episode file names, lengths)}, e.g. `check_dataset(...).valid_files()`)
    restricts every task to those files (a task with none is left out); by default every episode
    file is used and read unchecked until sampled (`lramlab.train` checks first).

    `tasks` (sorted ids) is the task list `task_index` refers to; it is the same for every split,
    so train and validation batches share task indices. A task whose split is empty (e.g. "val" of
    a one-episode task) stays in the list and is never sampled.
    """

    def __init__(self, roots: str | Path | Sequence[str | Path], split: str = "train",
                 context_len: int = DEFAULT_CONTEXT, val_fraction: float = VAL_FRACTION,
                 tasks: Iterable[str] | None = None, task_specs: Mapping[str, Any] | None = None,
                 reward_scale: float | Mapping[str, float] | None = None, require_complete: bool = True,
                 files: Mapping[str, tuple[Sequence[str], Sequence[int]]] | None = None):
        if context_len < 1:
            raise ValueError(f"context_len must be >= 1, got {context_len}")
        roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
        dirs = [d for r in roots for d in find_tasks(r)]
        if files is not None:  # only the files a data check passed (`check_dataset(...).valid_files()`)
            dirs = [d for d in dirs if files.get(str(d), ((), ()))[0]]
        datas = [TaskData(d, require_complete=require_complete,
                          **({} if files is None else dict(zip(("files", "lengths"), files[str(d)]))))
                 for d in dirs]
        if tasks is not None:
            want = set(tasks)
            datas = [d for d in datas if d.task in want]
            missing = want - {d.task for d in datas}
            if missing:
                raise KeyError(f"tasks not found under {roots}: {sorted(missing)}")
        seen: dict[str, Path] = {}
        for d in datas:
            if d.task in seen:
                raise ValueError(f"task {d.task} found twice: {seen[d.task]} and {d.task_dir}")
            seen[d.task] = d.task_dir
        if not datas:
            raise FileNotFoundError(f"no task directories with episode files under {roots}")
        datas.sort(key=lambda d: d.task)
        self.split, self.context_len, self.val_fraction = split, int(context_len), val_fraction
        self.data = datas
        self.tasks = [d.task for d in datas]
        self.infos = [resolve_task_info(d, task_specs, reward_scale) for d in datas]
        self.set_episodes([split_episodes(d.task, len(d), split, val_fraction) for d in datas])
        self.domains = sorted({i.domain for i in self.infos})
        self.domain_tasks = {dom: [t for t, i in enumerate(self.infos) if i.domain == dom] for dom in self.domains}
        for dom, ts in self.domain_tasks.items():
            kinds = {self.infos[t].obs_kind for t in ts}
            if len(kinds) > 1:
                raise ValueError(f"domain {dom} mixes state and image tasks: "
                                 f"{[(self.tasks[t], self.infos[t].obs_kind) for t in ts]}")

    def set_episodes(self, episodes: Sequence[np.ndarray]) -> None:
        """Use these file episode indices per task (sorted int arrays) as the split's episodes."""
        self.episodes = [np.asarray(e, dtype=np.int64) for e in episodes]
        self.lengths = [d.lengths[e] for d, e in zip(self.data, self.episodes)]
        self.starts = [np.concatenate([[0], np.cumsum(ln)]).astype(np.int64) for ln in self.lengths]
        self.n_steps = np.array([int(s[-1]) for s in self.starts], dtype=np.int64)

    def keep_from(self, frac: float) -> None:
        """Keep, per task, only episodes with file index >= frac * n_episodes (the later part of a
        learning history, or of data generated in improving order)."""
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"keep_from({frac!r}): expected 0 <= frac < 1")
        self.set_episodes([e[e >= int(frac * len(d))] for d, e in zip(self.data, self.episodes)])

    def keep_top(self, fraction: float) -> None:
        """Keep, per task, the ceil(fraction * n) of the split's n episodes with the highest return
        (ties: lower file index first), e.g. 0.05 for fine-tuning on the top 5 % of a hold-out
        task's trajectories (paper App. D.3). Returns come from `episode_returns`."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"keep_top({fraction!r}): expected 0 < fraction <= 1")
        kept = []
        for d, e in zip(self.data, self.episodes):
            if len(e) == 0 or fraction == 1.0:
                kept.append(e)
                continue
            k = max(1, int(np.ceil(fraction * len(e) - 1e-9)))
            ret = episode_returns(d)[e]
            order = np.lexsort((e, -ret))  # highest return first, then lower file index
            kept.append(np.sort(e[order[:k]]))
        self.set_episodes(kept)

    def __repr__(self) -> str:
        return (f"TrajectoryDataset(split={self.split!r}, tasks={len(self.tasks)}, domains={self.domains}, "
                f"steps={int(self.n_steps.sum())}, C={self.context_len})")

    def locate(self, ti: int, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Task-wide step indices -> (file episode index, timestep within the episode)."""
        s = self.starts[ti]
        pos = np.searchsorted(s, step, side="right") - 1
        return self.episodes[ti][pos], np.asarray(step) - s[pos]

    def obs_kind(self, domain: str) -> str:
        return self.infos[self.domain_tasks[domain][0]].obs_kind

    def empty_batch(self, domain: str, B: int) -> dict[str, np.ndarray]:
        C = self.context_len
        cont = any(self.infos[t].action_kind == "continuous" for t in self.domain_tasks[domain])
        out = {"rtg": np.zeros((B, C), np.float32), "rewards": np.zeros((B, C), np.float32),
               "mask": np.zeros((B, C), bool), "n_actions": np.zeros(B, np.int64),
               "act_dim": np.zeros(B, np.int64), "task_index": np.zeros(B, np.int64)}
        if self.obs_kind(domain) == "image":
            out["images"] = np.zeros((B, C) + IMAGE_SHAPE, np.uint8)
        else:
            out["states"] = np.zeros((B, C, STATE_DIM), np.float32)
        out["actions"] = np.zeros((B, C, MAX_ACT_DIM), np.float32) if cont else np.zeros((B, C), np.int64)
        return out

    def fill_window(self, out: dict, b: int, ti: int, episode: int, end: int, start: int | None = None) -> None:
        """Write the window of task ti, file episode `episode`, ending at `end` into row b of `out`.

        It starts at max(0, end - C + 1), or at `start` when given (a shorter, right-padded window).
        """
        C = self.context_len
        first = max(0, int(end) - C + 1)
        start = first if start is None else int(start)
        if not first <= start <= int(end):
            raise ValueError(f"window start {start} outside [{first}, {end}]")
        w = self.read_window(ti, int(episode), start, int(end) + 1)
        self.write_row(out, b, ti, w, where=self.data[ti].episode_paths[episode])

    def read_window(self, ti: int, episode: int, start: int, stop: int) -> dict[str, np.ndarray]:
        """Steps [start, stop) of file episode `episode` of task ti (WINDOW_KEYS), with `rewards` and
        `returns_to_go` under the task's reward rule (unscaled): for a rule other than "raw" the
        rewards after `stop` are read too, since R̂ sums the rule's rewards to the episode's end."""
        data = self.data[ti]
        w = data.read(episode, start, stop, keys=WINDOW_KEYS)
        rule = self.infos[ti].reward_rule
        if rule == "raw":
            return w
        T = int(data.lengths[episode])
        later = data.read(episode, stop, T, keys=("rewards",))["rewards"] if stop < T else np.zeros(0, np.float32)
        r = model_rewards(rule, np.concatenate([w["rewards"], later]))
        w = dict(w)
        w["rewards"] = r[: stop - start].astype(np.float32)
        w["returns_to_go"] = returns_to_go(r)[: stop - start]
        return w

    def write_row(self, out: dict, b: int, ti: int, w: Mapping[str, np.ndarray], where: Any = None) -> None:
        """Row b of a batch := the n <= C timesteps `w` (store arrays) of task ti at rows 0..n-1,
        right-padded (the rows after n keep the zeros of `empty_batch`, `mask` False)."""
        C, info = self.context_len, self.infos[ti]
        n = len(w["rewards"])
        if not 1 <= n <= C:
            raise ValueError(f"{where or self.tasks[ti]}: a window holds 1..{C} timesteps, got {n}")
        if "images" in out:
            out["images"][b, :n] = w["states"]
        else:
            d = w["states"].shape[1]
            if d > STATE_DIM:
                raise ValueError(f"{self.tasks[ti]}: states have {d} dims, more than {STATE_DIM}")
            out["states"][b, :n, :d] = w["states"]
        a = w["actions"]
        if a.ndim == 2:
            out["actions"][b, :n, : a.shape[1]] = a
            out["act_dim"][b] = a.shape[1]
        else:
            if out["actions"].ndim == 3:
                raise ValueError(f"domain {info.domain} mixes discrete and continuous actions ({self.tasks[ti]})")
            if len(a) and a.max() >= info.action_dim:
                raise ValueError(f"{where or self.tasks[ti]}: dataset 'actions': expected ids "
                                 f"< {info.action_dim} (the task's n_actions), got {int(a.max())}")
            out["actions"][b, :n] = a
            out["n_actions"][b] = info.action_dim
        out["rtg"][b, :n] = w["returns_to_go"] / info.reward_scale
        out["rewards"][b, :n] = w["rewards"] / info.reward_scale
        out["mask"][b, :n] = True
        out["task_index"][b] = ti

    def make_batch(self, domain: str, items: Sequence[tuple[int, ...]], as_torch: bool = True) -> dict:
        """Collate windows [(task index, file episode index, end step[, start step]), ...] of one domain."""
        out = self.empty_batch(domain, len(items))
        for b, (ti, ep, end, *start) in enumerate(items):
            if self.infos[ti].domain != domain:
                raise ValueError(f"task {self.tasks[ti]} is not in domain {domain}: one domain per batch")
            self.fill_window(out, b, ti, ep, end, *start)
        if as_torch:
            import torch

            out = {k: torch.from_numpy(v) for k, v in out.items()}
        out["domain"] = domain
        return out


# ----------------------------------------------------------------------------- sampler
@dataclass
class SamplerConfig:
    """Domain-balanced sampling. Defaults are the paper's (batch 128 per domain micro-batch)."""

    batch_size: int = 128  # windows per domain micro-batch on this rank
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    task_weighting: Literal["size", "uniform"] = "size"

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        if self.task_weighting not in ("size", "uniform"):
            raise ValueError(f"task_weighting must be 'size' or 'uniform', got {self.task_weighting!r}")


class DomainBalancedSampler:
    """Yields, per optimizer update, a list with one micro-batch per domain (`dataset.domains` order)."""

    def __init__(self, dataset: TrajectoryDataset, config: SamplerConfig | None = None, as_torch: bool = True):
        self.ds, self.cfg, self.as_torch = dataset, config or SamplerConfig(), as_torch
        self.domains = [d for d in dataset.domains
                        if any(dataset.n_steps[t] > 0 for t in dataset.domain_tasks[d])]
        if not self.domains:
            raise ValueError(f"{dataset}: no timesteps to sample in split {dataset.split!r}")
        self.weights = {}
        for dom in self.domains:
            ts = [t for t in dataset.domain_tasks[dom] if dataset.n_steps[t] > 0]
            w = dataset.n_steps[ts].astype(np.float64) if self.cfg.task_weighting == "size" else np.ones(len(ts))
            self.weights[dom] = (np.asarray(ts), w / w.sum())
        self.counters = np.zeros(len(dataset.tasks), dtype=np.int64)
        self.updates = 0
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.cfg.seed, self.cfg.rank, 7])))

    # -- end points
    def draw_endpoints(self, ti: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The next k (file episode, end step) draws of task ti for this rank."""
        n = int(self.ds.n_steps[ti])
        W, r = self.cfg.world_size, self.cfg.rank
        pos = r + W * (self.counters[ti] + np.arange(k, dtype=np.int64))
        self.counters[ti] += k
        epoch, off = pos // n, pos % n
        steps = np.empty(k, dtype=np.int64)
        for e in np.unique(epoch):
            sel = epoch == e
            steps[sel] = permute(off[sel], n, _hash64(self.cfg.seed, self.ds.tasks[ti], int(e)))
        return self.ds.locate(ti, steps)

    def sample_items(self, domain: str, B: int | None = None) -> list[tuple[int, int, int]]:
        B = self.cfg.batch_size if B is None else B
        ts, p = self.weights[domain]
        chosen = ts[self.rng.choice(len(ts), size=B, p=p)]
        items: list = [None] * B
        for ti in np.unique(chosen):
            rows = np.flatnonzero(chosen == ti)
            eps, ends = self.draw_endpoints(int(ti), len(rows))
            for row, ep, end in zip(rows, eps, ends):
                items[row] = (int(ti), int(ep), int(end))
        return items

    def next_update(self) -> list[dict]:
        """One micro-batch per domain, for one optimizer update."""
        out = [self.ds.make_batch(dom, self.sample_items(dom), self.as_torch) for dom in self.domains]
        self.updates += 1
        return out

    def __iter__(self) -> Iterator[list[dict]]:
        return self

    def __next__(self) -> list[dict]:
        return self.next_update()

    # -- resume
    def state_dict(self) -> dict:
        return {"updates": self.updates, "counters": self.counters.tolist(), "rng": self.rng.bit_generator.state,
                "config": asdict(self.cfg), "tasks": list(self.ds.tasks), "split": self.ds.split}

    def load_state_dict(self, state: Mapping) -> None:
        if list(state["tasks"]) != list(self.ds.tasks):
            raise ValueError("sampler state was saved for a different task list: "
                             f"{len(state['tasks'])} tasks vs {len(self.ds.tasks)} here")
        if dict(state["config"]) != asdict(self.cfg):
            raise ValueError(f"sampler state was saved with config {state['config']}, this sampler has {asdict(self.cfg)}")
        if state.get("split", self.ds.split) != self.ds.split:
            raise ValueError(f"sampler state is for split {state['split']!r}, this dataset is {self.ds.split!r}")
        self.counters = np.asarray(state["counters"], dtype=np.int64).copy()
        self.rng.bit_generator.state = state["rng"]
        self.updates = int(state["updates"])


# ----------------------------------------------------------------------------- validation
def validation_items(dataset: TrajectoryDataset, domain: str, rank: int = 0,
                     world_size: int = 1) -> list[tuple[int, int, int]]:
    """Deterministic windows tiling every episode of the split: each timestep is a target once.

    Each episode is tiled from its END backwards: windows ending at L-1, L-1-C, L-1-2C, ...,
    each the C steps training would read for that end point (the earliest one shorter because it
    starts at step 0, as training's windows near an episode's start). So every validation window
    is one training samples too, never a short window starting mid-episode. Items are
    (task, episode, end); window j goes to rank j % world_size.
    """
    C = dataset.context_len
    items = []
    for ti in dataset.domain_tasks[domain]:
        for ep, L in zip(dataset.episodes[ti], dataset.lengths[ti]):
            items.extend((ti, int(ep), int(end)) for end in range(int(L) - 1, -1, -C)[::-1])
    return items[rank::world_size]


def validation_batches(dataset: TrajectoryDataset, batch_size: int = 128, rank: int = 0, world_size: int = 1,
                       as_torch: bool = True) -> Iterator[dict]:
    """All validation windows, batched per domain (use a dataset with split="val")."""
    for dom in dataset.domains:
        items = validation_items(dataset, dom, rank, world_size)
        for i in range(0, len(items), batch_size):
            yield dataset.make_batch(dom, items[i:i + batch_size], as_torch)


# ----------------------------------------------------------------------------- parallel loading
class _WindowReader:
    """Map-style dataset for torch's DataLoader: `__getitems__` turns one micro-batch of items
    (chosen in the main process) into a batch, so file reads run in the worker processes."""

    def __init__(self, dataset: TrajectoryDataset):
        self.ds = dataset

    def __len__(self) -> int:  # unused with a batch_sampler; DataLoader wants it defined
        return 1 << 62

    def __getitems__(self, request):
        domain, items = request[0]
        return self.ds.make_batch(domain, items, as_torch=True)


class _ItemStream:
    """Batch sampler: yields [(domain, items)] per micro-batch and snapshots the sampler state
    before each update, so the loader can report the state as of the last *consumed* update."""

    def __init__(self, sampler: DomainBalancedSampler, snapshots: dict):
        self.sampler, self.snapshots = sampler, snapshots

    def __iter__(self):
        s = self.sampler
        while True:
            self.snapshots[s.updates] = s.state_dict()
            micro = [(dom, s.sample_items(dom)) for dom in s.domains]
            s.updates += 1
            for m in micro:
                yield [m]


def _first(x):
    return x


class DomainBalancedLoader:
    """`DomainBalancedSampler` with window reads in `num_workers` DataLoader processes.

    Iterating yields, per update, the list of micro-batches (one per domain), the same batches
    the sampler alone would give. `state_dict()` is the sampler state after the last update this
    loader handed out (prefetched updates are not counted), so a resumed run continues exactly.
    """

    def __init__(self, sampler: DomainBalancedSampler, num_workers: int = 0, prefetch_factor: int = 2):
        self.sampler, self.num_workers, self.prefetch_factor = sampler, num_workers, prefetch_factor
        self._state = sampler.state_dict()

    def __iter__(self) -> Iterator[list[dict]]:
        s = self.sampler
        s.load_state_dict(self._state)
        if self.num_workers == 0:
            while True:
                update = s.next_update()
                self._state = s.state_dict()
                yield update
        from torch.utils.data import DataLoader

        snapshots: dict[int, dict] = {}
        loader = DataLoader(_WindowReader(s.ds), batch_sampler=_ItemStream(s, snapshots), collate_fn=_first,
                            num_workers=self.num_workers, prefetch_factor=self.prefetch_factor)
        n_dom, consumed, update = len(s.domains), s.updates, []
        for batch in loader:
            update.append(batch)
            if len(update) == n_dom:
                consumed += 1
                # state after `consumed` updates = the snapshot taken before generating update
                # `consumed`; if the stream has not got there yet, the live state is that state
                self._state = snapshots.pop(consumed) if consumed in snapshots else s.state_dict()
                for k in [k for k in snapshots if k < consumed]:
                    del snapshots[k]
                yield update
                update = []

    def state_dict(self) -> dict:
        return self._state

    def load_state_dict(self, state: Mapping) -> None:
        self.sampler.load_state_dict(state)
        self._state = self.sampler.state_dict()
