"""Task manifests: which tasks exist, their spaces, scales, targets, score normalisation, data source.

One YAML file per domain in `data_manifests/` (built from `../shared/reference/` by
`data_manifests/_build.py`). A file holds `domain`, optional `defaults` merged under every task,
and `tasks` (a list of mappings). Loading validates every entry; any problem is a `ManifestError`
naming the file, the task, the field, the value and what was expected.

Task ids are `"<domain>/<name>"` (`atari/freeway`, `metaworld/reach-v2`, `darkroom/goal-2-0`);
functions that take a task accept a `TaskSpec`, an id, or a bare name when it is unique.

No tensors here (no shape letters needed); `obs_shape` is the env's own observation shape:
image tasks (1, 64, 64), state tasks (obs_dim,).

The `lramlab tasks` command (tasks and whether each domain runs here) is `lramlab.envs.tasks_cli`.
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

#: The paper's six domains (docs/CONTRACTS.md order), Dark-Room (ICL), standard robosuite tasks.
DOMAINS: tuple[str, ...] = ("atari", "procgen", "dmcontrol", "metaworld", "composuite", "mimicgen",
                            "darkroom", "robosuite")
#: Returns-to-go and rewards are divided by these (paper App. C: Meta-World 200, DMControl 100, Atari 20).
REWARD_SCALE: dict[str, float] = {"metaworld": 200.0, "dmcontrol": 100.0, "procgen": 1.0, "atari": 20.0,
                                  "composuite": 1.0, "mimicgen": 1.0, "darkroom": 1.0, "robosuite": 1.0}
#: How a domain's env rewards become the rewards the MODEL sees (its reward tokens and R̂), the same
#: in training windows (`data.sampling`) and in rollouts (`rollout.Agent`), applied before the reward
#: scale: "clip" = clip to [-1, 1] (paper App. B.2, Atari; equal to sign(r) on Atari's integer game
#: points, and idempotent, so already-clipped DQN-Replay data passes unchanged); "raw" = as the env
#: gives them. The store and every score keep raw env rewards (`model_rewards` is the one place).
REWARD_RULES: tuple[str, ...] = ("raw", "clip")
REWARD_RULE: dict[str, str] = {"atari": "clip"}  # every other domain: "raw"
#: Domains whose evaluation target must not depend on the task: a Dark-Room task's goal is hidden,
#: and a per-goal target (its best return, 101 - distance) would tell the model how far it is.
FLAT_TARGET_DOMAINS: tuple[str, ...] = ("darkroom",)
SPLITS = ("train", "holdout")
OBS_KINDS = ("state", "image")
ACTION_KINDS = ("discrete", "continuous")
SCORE_KINDS = ("human", "minmax", "data", "success", "raw")
SOURCE_KINDS = ("public", "generated")
#: the shared action head's limits (lramlab.tokenizer: N_DISCRETE=18, MAX_ACT_DIM=8)
MAX_DISCRETE, MAX_CONTINUOUS = 18, 8
ENV_VAR = "LRAMLAB_MANIFESTS"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster on the 7k-line files


class ManifestError(ValueError):
    """A manifest file or entry is malformed."""


class UnknownTaskError(KeyError):
    """No task by that name; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AmbiguousTaskError(KeyError):
    """A bare task name matches tasks in several domains; use the full id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class TaskSpec:
    """One task. See docs/CONTRACTS.md; `extra` holds per-domain facts (goal cell, suite keys, ...)."""

    domain: str
    name: str
    id: str
    split: str                      # "train" | "holdout"
    env_id: str
    obs_kind: str                   # "state" | "image"
    obs_shape: tuple[int, ...]
    action_kind: str                # "discrete" | "continuous"
    action_dim: int                 # number of discrete actions, or continuous dims
    reward_scale: float
    target_return: float | None
    score_kind: str                 # "human" | "minmax" | "data" | "success" | "raw"
    score_low: float | None
    score_high: float | None
    episode_length: int
    source: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    # dict fields make the generated hash fail; the id is unique anyway
    def __hash__(self) -> int:
        return hash(self.id)


# ---------------------------------------------------------------------------------------------
# loading and validation

_REQUIRED = ("name", "split", "env_id", "obs_kind", "obs_shape", "action_kind", "action_dim",
             "reward_scale", "target_return", "score_kind", "score_low", "score_high",
             "episode_length", "source")
_OPTIONAL = ("id", "extra")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _validate(path: Path, domain: str, raw: dict, index: int) -> TaskSpec:
    name = raw.get("name")
    label = f"task {name!r}" if isinstance(name, str) else f"task #{index}"

    def fail(fieldname: str, value: Any, expected: str) -> ManifestError:
        return ManifestError(f"{path}: {label}: field {fieldname!r} = {value!r}; expected {expected}")

    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise fail(unknown[0], raw[unknown[0]], f"one of the known fields {list(_REQUIRED + _OPTIONAL)}")
    for f in _REQUIRED:
        if f not in raw:
            raise ManifestError(f"{path}: {label}: missing field {f!r} (not in the task nor in 'defaults')")

    def text(f: str, choices: tuple[str, ...] | None = None) -> str:
        v = raw[f]
        if not isinstance(v, str) or not v:
            raise fail(f, v, "a non-empty string")
        if choices is not None and v not in choices:
            raise fail(f, v, f"one of {list(choices)}")
        return v

    def pos_int(f: str, hi: int | None = None) -> int:
        v = raw[f]
        if not _is_int(v) or v < 1 or (hi is not None and v > hi):
            raise fail(f, v, "a positive integer" + (f" <= {hi}" if hi else ""))
        return v

    def num_or_none(f: str) -> float | None:
        v = raw[f]
        if v is None:
            return None
        if not _is_num(v):
            raise fail(f, v, "a finite number or null")
        return float(v)

    name = text("name")
    if "/" in name:
        raise fail("name", name, "a name without '/' (the id is '<domain>/<name>')")
    task_id = f"{domain}/{name}"
    if "id" in raw and raw["id"] != task_id:
        raise fail("id", raw["id"], f"{task_id!r} (domain/name)")
    split = text("split", SPLITS)
    env_id = text("env_id")
    obs_kind = text("obs_kind", OBS_KINDS)
    shape = raw["obs_shape"]
    if not isinstance(shape, (list, tuple)) or not shape or not all(_is_int(s) and s > 0 for s in shape):
        raise fail("obs_shape", shape, "a non-empty list of positive integers")
    if obs_kind == "image" and len(shape) != 3:
        raise fail("obs_shape", shape, "(channels, height, width) for an image task")
    if obs_kind == "state" and len(shape) != 1:
        raise fail("obs_shape", shape, "(obs_dim,) for a state task")
    action_kind = text("action_kind", ACTION_KINDS)
    action_dim = pos_int("action_dim", MAX_DISCRETE if action_kind == "discrete" else MAX_CONTINUOUS)
    reward_scale = raw["reward_scale"]
    if not _is_num(reward_scale) or reward_scale <= 0:
        raise fail("reward_scale", reward_scale, "a positive number")
    if float(reward_scale) != REWARD_SCALE[domain]:
        raise fail("reward_scale", reward_scale, f"{REWARD_SCALE[domain]} (REWARD_SCALE[{domain!r}])")
    target = num_or_none("target_return")
    score_kind = text("score_kind", SCORE_KINDS)
    low, high = num_or_none("score_low"), num_or_none("score_high")
    if score_kind in ("human", "minmax", "data"):
        if low is None or high is None:
            raise fail("score_low" if low is None else "score_high", None,
                       f"a number (score_kind {score_kind!r} needs score_low and score_high)")
        if high == low:
            raise fail("score_high", high, f"a value different from score_low={low}")
    episode_length = pos_int("episode_length")
    source = raw["source"]
    if not isinstance(source, dict):
        raise fail("source", source, "a mapping with 'kind' and 'policy'")
    if source.get("kind") not in SOURCE_KINDS:
        raise fail("source.kind", source.get("kind"), f"one of {list(SOURCE_KINDS)}")
    if not isinstance(source.get("policy"), str):
        raise fail("source.policy", source.get("policy"), "the default generating policy (a string)")
    if source["kind"] == "public":
        for f in ("release", "url"):
            if not isinstance(source.get(f), str) or not source[f]:
                raise fail(f"source.{f}", source.get(f), "a non-empty string for a public source")
    extra = raw.get("extra", {})
    if not isinstance(extra, dict):
        raise fail("extra", extra, "a mapping")
    return TaskSpec(domain=domain, name=name, id=task_id, split=split, env_id=env_id, obs_kind=obs_kind,
                    obs_shape=tuple(shape), action_kind=action_kind, action_dim=action_dim,
                    reward_scale=float(reward_scale), target_return=target, score_kind=score_kind,
                    score_low=low, score_high=high, episode_length=episode_length,
                    source=dict(source), extra=dict(extra))


def load_manifest_file(path: str | Path) -> list[TaskSpec]:
    """Parse and validate one domain file; returns its tasks in file order."""
    path = Path(path)
    try:
        doc = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: expected a mapping with 'domain' and 'tasks', got {type(doc).__name__}")
    unknown = sorted(set(doc) - {"domain", "reference", "notes", "defaults", "tasks"})
    if unknown:
        raise ManifestError(f"{path}: unknown top-level field {unknown[0]!r}; expected "
                            f"domain, reference, notes, defaults, tasks")
    domain = doc.get("domain")
    if domain not in DOMAINS:
        raise ManifestError(f"{path}: field 'domain' = {domain!r}; expected one of {list(DOMAINS)}")
    defaults = doc.get("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise ManifestError(f"{path}: field 'defaults' = {defaults!r}; expected a mapping")
    tasks = doc.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ManifestError(f"{path}: field 'tasks' = {tasks!r}; expected a non-empty list of mappings")
    out, seen = [], set()
    for i, entry in enumerate(tasks):
        if not isinstance(entry, dict):
            raise ManifestError(f"{path}: task #{i}: expected a mapping, got {entry!r}")
        merged = {**defaults, **entry}
        if isinstance(defaults.get("extra"), dict) and isinstance(entry.get("extra"), dict):
            merged["extra"] = {**defaults["extra"], **entry["extra"]}
        spec = _validate(path, domain, merged, i)
        if spec.id in seen:
            raise ManifestError(f"{path}: task {spec.name!r}: field 'name' duplicates {spec.id!r}; "
                                f"expected unique task names")
        seen.add(spec.id)
        out.append(spec)
    return out


def _resolve(directory: str | Path | None) -> Path:
    if directory is None:
        directory = os.environ.get(ENV_VAR)
    if directory is None:
        import lramlab

        directory = lramlab.REPO_ROOT / "data_manifests"
    return Path(directory).expanduser().resolve()


@lru_cache(maxsize=8)
def _load_dir(directory: Path) -> dict[str, TaskSpec]:
    if not directory.is_dir():
        raise ManifestError(f"{directory}: manifest directory not found (set {ENV_VAR} or pass directory=)")
    files = sorted(p for p in directory.glob("*.yaml") if not p.name.startswith(("_", ".")))
    if not files:
        raise ManifestError(f"{directory}: no *.yaml manifests found")
    specs: dict[str, TaskSpec] = {}
    where: dict[str, Path] = {}
    for path in files:
        for spec in load_manifest_file(path):
            if spec.id in specs:
                raise ManifestError(f"{path}: task {spec.name!r}: field 'name' duplicates {spec.id!r} "
                                    f"already defined in {where[spec.id]}; expected unique task ids")
            specs[spec.id] = spec
            where[spec.id] = path
    return specs


def load_manifests(directory: str | Path | None = None) -> dict[str, TaskSpec]:
    """All tasks by id. Default directory: $LRAMLAB_MANIFESTS, else `REPO_ROOT/data_manifests`.

    Parsed once per directory (cached); call `load_manifests.cache_clear()` after editing files.
    """
    return dict(_load_dir(_resolve(directory)))


load_manifests.cache_clear = _load_dir.cache_clear  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# lookup

def get_task(task: str | TaskSpec, directory: str | Path | None = None) -> TaskSpec:
    """A task by id (`domain/name`), or by bare name / env id when that is unique."""
    if isinstance(task, TaskSpec):
        return task
    if not isinstance(task, str):
        raise TypeError(f"task must be a task id string or TaskSpec, got {type(task).__name__}")
    specs = _load_dir(_resolve(directory))
    if task in specs:
        return specs[task]
    if "/" not in task:
        for key in ("name", "env_id"):
            hits = [s for s in specs.values() if getattr(s, key) == task]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise AmbiguousTaskError(f"task name {task!r} is ambiguous: it matches "
                                         f"{sorted(s.id for s in hits)}; use the full '<domain>/<name>' id")
    folded = [s for s in specs.values() if task.lower() in (s.id.lower(), s.name.lower())]
    if len(folded) == 1:
        return folded[0]
    candidates = list(specs) + sorted({s.name for s in specs.values()})
    close = difflib.get_close_matches(task, candidates, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
        f"; task ids look like 'atari/freeway' (domains: {', '.join(DOMAINS)})"
    raise UnknownTaskError(f"unknown task {task!r}{hint}")


def list_tasks(domain: str | None = None, split: str | None = None,
               directory: str | Path | None = None) -> list[TaskSpec]:
    """Tasks in manifest order (domains in DOMAINS order), optionally filtered."""
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"domain={domain!r}; expected one of {list(DOMAINS)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {list(SPLITS)}")
    specs = _load_dir(_resolve(directory)).values()
    order = {d: i for i, d in enumerate(DOMAINS)}
    out = [s for s in specs if (domain is None or s.domain == domain) and (split is None or s.split == split)]
    return sorted(out, key=lambda s: order[s.domain])  # stable: file order within a domain


def domain_of(task: str | TaskSpec) -> str:
    return get_task(task).domain


def normalize_score(task: str | TaskSpec, raw: float) -> float:
    """Normalised score of a raw episode return (or success rate, for success-scored tasks).

    human:  (raw - random) / (human - random), score_low = random, score_high = human
    minmax: (raw - low) / (high - low)            (Procgen's per-game constants)
    data:   (raw - random) / (data - random)      (LRAM dn_scores: low = random, high = dataset score)
    success: the success rate itself, in [0, 1];  raw: unchanged.
    """
    spec = get_task(task)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"raw score for {spec.id} must be a number, got {raw!r}") from None
    if spec.score_kind in ("human", "minmax", "data"):
        return (value - spec.score_low) / (spec.score_high - spec.score_low)
    if spec.score_kind == "success":
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{spec.id} is scored by success rate; expected a value in [0, 1], got {value} "
                             f"(a return? Meta-World/Composuite/Mimicgen report info['success'])")
        return value
    return value


# ---------------------------------------------------------------------------------------------
# the model's reward rule and the per-domain score kinds

def reward_rule(task_or_domain: str | TaskSpec) -> str:
    """The reward rule ("raw" | "clip", see REWARD_RULE) of a domain, a task id or a TaskSpec.

    Decided by the domain alone (the part of a task id before '/'), so it needs no manifest file."""
    domain = getattr(task_or_domain, "domain", None) or str(task_or_domain).split("/", 1)[0]
    return REWARD_RULE.get(domain, "raw")


def model_rewards(rule: str, rewards):
    """Rewards as the model sees them under `rule` (before the reward scale), float64 numpy array.

    The one function that turns env rewards into model rewards: the sampler applies it to stored
    rewards (and derives R̂ from the result), the agent to each step's env reward."""
    import numpy as np

    r = np.asarray(rewards, dtype=np.float64)
    if rule == "raw":
        return r
    if rule == "clip":
        return np.clip(r, -1.0, 1.0)
    raise ValueError(f"reward rule {rule!r}; expected one of {list(REWARD_RULES)}")


def domain_score_kind(domain: str, directory: str | Path | None = None) -> str:
    """The score kind a domain's mean and IQM average: the kind most of its manifest tasks have
    (Atari "human": Carnival and Pooyan, "raw", are reported beside it, never averaged in)."""
    kinds = [s.score_kind for s in list_tasks(domain, directory=directory)]
    if not kinds:
        raise ValueError(f"domain {domain!r} has no tasks in the manifests")
    return max(SCORE_KINDS, key=kinds.count)


def data_normalize(task: str | TaskSpec, raw: float) -> float | None:
    """The paper's data-normalised score (Fig. 3; LRAM dn_scores): (raw - low) / (high - low) with the
    task's `extra.data_score` constants (low = random, high = dataset score; Atari: the human-
    normalisation constants, as LRAM's dn_scores reuse them). None when the task has no constants."""
    spec = get_task(task)
    ds = (spec.extra or {}).get("data_score")
    if not isinstance(ds, dict) or ds.get("low") is None or ds.get("high") is None:
        return None
    lo, hi = float(ds["low"]), float(ds["high"])
    if hi == lo:
        raise ValueError(f"{spec.id}: extra.data_score has high == low == {lo}")
    return (float(raw) - lo) / (hi - lo)
