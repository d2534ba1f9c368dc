"""`lramlab data import FORMAT SRC --task T --out DIR`: published datasets -> the lramlab store.

Formats (only ``minari`` needs its own package, ``pip install -e ".[data]"``):

- ``native`` -- LRAM's released layout: a directory of per-episode HDF5 files (any names, taken
  in natural order: ``0.hdf5 < 2.hdf5 < 10.hdf5``) with ``states``, ``actions``, ``rewards``
  (+ ``dones``, ``returns_to_go``, ``success`` when present; returns-to-go are recomputed and a
  present one must agree). Image states may be (T, 64, 64), (T, 1, 64, 64) or RGB (T, 3, 64, 64) /
  (T, 64, 64, 3) uint8 (converted to grayscale).
- ``robomimic`` -- one HDF5 file as released for robomimic / Mimicgen:
  ``data/demo_<i>/{obs/<key>, actions, rewards, dones}``. The chosen low-dim obs keys
  (``--obs-keys``; default all (T, d) keys, sorted) are concatenated into the states. Rewards are
  the sparse success signal, so ``success = rewards > 0``; a demo ends terminated.
- ``minari`` -- a Minari dataset, read through the ``minari`` package (no download): SRC is a
  dataset directory (``<root>/<namespace>/<name>-v<k>``, holding ``data/``; or that ``data/``
  directory, or its ``main_data.hdf5``) opened with ``minari.MinariDataset``, or a dataset id
  (``D4RL/door/human-v2``) that ``minari.load_dataset`` finds under ``MINARI_DATASETS_PATH``.
  Episodes come from ``iterate_episodes()`` (``EpisodeData``): observations (T + 1, ...) -- the
  final one is dropped -- Box states flattened, uint8 image Boxes to (1, 64, 64) grayscale, Dict
  observations concatenated by ``--obs-keys`` (default: all low-dim keys, sorted); Discrete actions
  shifted by the space's ``start``; Box actions with bounds other than [-1, 1] rescaled linearly
  to [-1, 1]; ``infos["success"]`` (or ``is_success``) becomes ``success``; ``terminations`` at the
  last step becomes ``dones``.
- ``dqn-replay`` -- DQN-Replay (Agarwal et al., 2020) as released for Atari: per checkpoint N,
  gzipped ``.npy`` arrays ``$store$_{observation,action,reward,terminal}_ckpt.N.gz`` (+ optional
  ``add_count_ckpt.N.gz``). Frames (84, 84) uint8 are resized to (1, 64, 64) (cv2 INTER_AREA).
  Episodes are split after each ``terminal``; when ``add_count`` exceeds the buffer size the
  circular buffer is unrolled oldest-first. The trailing segment without a terminal is dropped,
  and so is the leading one for checkpoints N > 0 or a wrapped buffer (it is the tail of an episode
  that began earlier). Actions: Dopamine plays each game's MINIMAL action set, so the stored actions
  index it; they are mapped to the full 18-action set of the envs and the shared head with the
  task's manifest entry ``extra.minimal_actions`` (ale-py's set, written by data_manifests/_build.py,
  so this importer needs no simulator; e.g. Breakout's minimal 2 = RIGHT is full 3, full 2 = UP).
  Rewards are stored as released: Dopamine clipped them to [-1, 1] (the model's Atari rule, which
  leaves them unchanged).

Episodes are written through `lramlab.data.store.write_episode` (validated, atomic) as
``OUT/<domain>/<name>/episode_%06d.hdf5`` in source order, then ``meta.json`` and ``stats.json``,
into a hidden directory that replaces the task directory only when all of it is valid
(`import_dataset`): a failed or killed import never touches data already there.
If the task is in the manifests, the observation shape and action space are checked against it.

Shape letters: T timesteps, H/W frame height/width, C channels.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np

from lramlab._dataclass_cli import ArgumentParser, JsonOutput, add_json_option, command, json_dumps

FORMATS = ("native", "robomimic", "minari", "dqn-replay")


class ImportFormatError(ValueError):
    """The source does not follow its format; the message names the file, field and expectation."""


# ----------------------------------------------------------------------------- helpers


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def to_gray64(frames: np.ndarray, where: str = "frames") -> np.ndarray:
    """uint8 frames (T, H, W), (T, 1, H, W), (T, 3, H, W) or (T, H, W, 3) -> (T, 1, 64, 64) uint8."""
    x = np.asarray(frames)
    if x.dtype != np.uint8:
        raise ImportFormatError(f"{where}: expected uint8 image frames, got {x.dtype}")
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 1, -1)  # channels last
    if x.ndim == 4 and x.shape[-1] == 3:
        # ITU-R 601 luma, as cv2.COLOR_RGB2GRAY
        x = np.rint(x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114).clip(0, 255).astype(np.uint8)
    elif x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise ImportFormatError(f"{where}: expected image frames (T, H, W[, C]), got shape {frames.shape}")
    if x.shape[1:] != (64, 64):
        from lramlab._optional import require

        cv2 = require("cv2", "resizing image frames to 64x64")
        x = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in x])
    return x[:, None]


def _task_spec(task: str, new_task: bool = False):
    """TaskSpec from the manifests, or a bare namespace for an id not in them (no shape checks).
    An id outside the manifests in a domain they know (darkroom/goal-42) is a probable typo: refused
    unless `new_task`."""
    try:
        from lramlab.manifests import UnknownTaskError, get_task, load_manifests
    except ImportError:  # pragma: no cover - manifests are part of lramlab
        get_task, UnknownTaskError = None, KeyError
    if get_task is not None:
        try:
            return get_task(task)
        except UnknownTaskError as err:
            if "/" not in task:
                raise
            domain = task.split("/", 1)[0]
            if not new_task and any(t.split("/", 1)[0] == domain for t in load_manifests()):
                raise UnknownTaskError(f"{err.args[0] if err.args else err}; domain {domain!r} is in the manifests "
                                       f"but this task is not (a typo?). Pass --new-task to import it under this "
                                       f"id anyway (then give 'reward_scale' in its meta.json to train on it)"
                                       ) from None
    if "/" not in task:
        raise ValueError(f"task {task!r}: expected '<domain>/<name>'")
    domain, name = task.split("/", 1)
    print(f"lramlab data import: note: {task!r} is not in the manifests; shapes are not checked",
          file=sys.stderr)
    return SimpleNamespace(domain=domain, name=name, id=task, obs_shape=None, action_kind=None,
                           action_dim=None, obs_kind=None)


def _check_against(spec, ep: dict, where: str) -> None:
    if getattr(spec, "obs_shape", None) is None:
        return
    shape = tuple(ep["states"].shape[1:])
    if shape != tuple(spec.obs_shape):
        raise ImportFormatError(f"{where}: states have shape {shape} per step, task {spec.id} expects "
                                f"obs_shape {tuple(spec.obs_shape)}")
    a = ep["actions"]
    if spec.action_kind == "discrete":
        if a.ndim != 1:
            raise ImportFormatError(f"{where}: actions have shape {a.shape}, task {spec.id} has discrete actions")
        if len(a) and int(a.max()) >= int(spec.action_dim):
            raise ImportFormatError(f"{where}: action {int(a.max())} out of range, task {spec.id} has "
                                    f"{spec.action_dim} actions")
    else:
        if a.ndim != 2 or a.shape[1] != int(spec.action_dim):
            raise ImportFormatError(f"{where}: actions have shape {a.shape}, task {spec.id} expects "
                                    f"(T, {spec.action_dim}) continuous actions")


def _h5py():
    import h5py

    return h5py


def _flatten_obs(group, keys: list[str] | None, where: str, drop_last: bool = False) -> np.ndarray:
    """Concatenate low-dim obs datasets (T, d...) of an HDF5 group into (T, sum d) float32."""
    h5py = _h5py()
    if isinstance(group, h5py.Dataset):
        x = group[()]
        return x[:-1] if drop_last else x
    if keys is None:
        keys = sorted(k for k in group if isinstance(group[k], h5py.Dataset) and group[k].ndim <= 2)
        if not keys:
            raise ImportFormatError(f"{where}: no low-dimensional observation keys (T, d) found; "
                                    f"has {sorted(group)}")
    parts = []
    for k in keys:
        if k not in group:
            raise ImportFormatError(f"{where}: observation key {k!r} missing; available: {sorted(group)}")
        x = np.asarray(group[k][()])
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ImportFormatError(f"{where}/{k}: expected a (T, d) low-dim observation, got shape {x.shape}")
        parts.append(x.astype(np.float32))
    lengths = {len(p) for p in parts}
    if len(lengths) != 1:
        raise ImportFormatError(f"{where}: observation keys {keys} have different lengths {sorted(lengths)}")
    out = np.concatenate(parts, axis=1)
    return out[:-1] if drop_last else out


def _require(group, key: str, where: str):
    if key not in group:
        raise ImportFormatError(f"{where}: dataset {key!r} missing (has {sorted(group)})")
    return group[key][()]


# ----------------------------------------------------------------------------- native


def iter_native(src: Path, **_: Any) -> Iterator[tuple[str, dict]]:
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"native import: {src} is not a directory")
    files = sorted([p for p in src.iterdir() if p.suffix in (".hdf5", ".h5") and not p.name.startswith(".")],
                   key=lambda p: _natural_key(p.name))
    if not files:
        raise ImportFormatError(f"{src}: no per-episode .hdf5/.h5 files found")
    h5py = _h5py()
    from lramlab.data.store import returns_to_go

    for p in files:
        try:
            f = h5py.File(p, "r")
        except OSError as err:
            raise ImportFormatError(f"{p}: cannot be opened as HDF5 ({err})") from err
        with f:
            states = _require(f, "states", str(p))
            ep = {"states": states, "actions": _require(f, "actions", str(p)),
                  "rewards": np.asarray(_require(f, "rewards", str(p)), dtype=np.float32)}
            T = len(ep["rewards"])
            for key in ("states", "actions"):
                if len(ep[key]) != T:  # before any reshape: a short dataset must be named, not reshaped
                    raise ImportFormatError(f"{p}: dataset {key!r} has {len(ep[key])} steps, 'rewards' has {T}; "
                                            f"expected equal lengths")
            if states.dtype == np.uint8 and states.ndim >= 3:
                ep["states"] = to_gray64(states, f"{p}: states")
            else:
                ep["states"] = np.asarray(states, dtype=np.float32).reshape(T, -1)
            a = np.asarray(ep["actions"])
            if np.issubdtype(a.dtype, np.integer):
                ep["actions"] = a.reshape(T).astype(np.int64)
            else:
                ep["actions"] = a.reshape(T, -1).astype(np.float32)
            d = np.asarray(f["dones"][()]).astype(bool).reshape(-1) if "dones" in f else None
            if d is not None:
                if len(d) != T:
                    raise ImportFormatError(f"{p}: dataset 'dones' has {len(d)} steps, 'rewards' has {T}")
                dones = np.zeros(T, dtype=bool)
                dones[-1] = bool(d[-1])  # the store marks only a terminal last step
                if d[:-1].any():
                    raise ImportFormatError(f"{p}: dataset 'dones' is True before the last step "
                                            f"(at {int(np.flatnonzero(d[:-1])[0])}): more than one episode in a file")
                ep["dones"] = dones
            if "returns_to_go" in f:
                g = np.asarray(f["returns_to_go"][()], dtype=np.float64).reshape(-1)
                ref = returns_to_go(ep["rewards"])
                if len(g) != T or not np.allclose(g, ref, rtol=1e-4, atol=1e-3):
                    raise ImportFormatError(f"{p}: dataset 'returns_to_go' is not sum(rewards[t:]) "
                                            "(undiscounted) -- refusing to guess its convention")
            if "success" in f:
                ep["success"] = np.asarray(f["success"][()]).astype(bool).reshape(T)
        yield str(p), ep


# ----------------------------------------------------------------------------- robomimic


def iter_robomimic(src: Path, obs_keys: list[str] | None = None, **_: Any) -> Iterator[tuple[str, dict]]:
    src = Path(src)
    h5py = _h5py()
    try:
        f = h5py.File(src, "r")
    except OSError as err:
        raise ImportFormatError(f"{src}: cannot be opened as HDF5 ({err})") from err
    with f:
        if "data" not in f:
            raise ImportFormatError(f"{src}: group 'data' missing (robomimic layout data/demo_<i>/...)")
        demos = sorted((k for k in f["data"] if k.startswith("demo")), key=_natural_key)
        if not demos:
            raise ImportFormatError(f"{src}: no data/demo_<i> groups")
        for name in demos:
            g = f["data"][name]
            where = f"{src}:data/{name}"
            if "obs" not in g:
                raise ImportFormatError(f"{where}: group 'obs' missing")
            states = _flatten_obs(g["obs"], obs_keys, f"{where}/obs")
            actions = np.asarray(_require(g, "actions", where), dtype=np.float32)
            rewards = np.asarray(_require(g, "rewards", where), dtype=np.float32).reshape(-1)
            T = len(rewards)
            if len(states) != T or len(actions) != T:
                raise ImportFormatError(f"{where}: obs has {len(states)} steps, actions {len(actions)}, "
                                        f"rewards {T}; expected equal lengths")
            actions = _clip_unit(actions.reshape(T, -1), f"{where}/actions")
            dones = np.zeros(T, dtype=bool)
            dones[-1] = True  # a demonstration ends when the task is done
            yield where, {"states": states, "actions": actions, "rewards": rewards, "dones": dones,
                          "success": rewards > 0}


def _clip_unit(a: np.ndarray, where: str, tol: float = 1e-4) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if lo < -1 - tol or hi > 1 + tol:
        raise ImportFormatError(f"{where}: continuous actions must lie in [-1, 1], got range [{lo:.4g}, {hi:.4g}]")
    return np.clip(a, -1.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- minari


def _minari():
    from lramlab._optional import require

    return require("minari", "importing Minari datasets")


def open_minari(src: str | Path):
    """A ``minari.MinariDataset`` from a dataset directory (or its ``data/`` or ``main_data.hdf5``),
    else from a dataset id under ``MINARI_DATASETS_PATH`` (``minari.load_dataset``, never downloading)."""
    minari = _minari()
    p = Path(src)
    cands = [p.parent] if p.is_file() else [p / "data", p]
    for cand in cands:
        if (cand / "metadata.json").is_file():
            try:
                return minari.MinariDataset(cand)
            except Exception as err:  # noqa: BLE001 - minari raises many kinds on a damaged dataset
                raise ImportFormatError(f"{cand}: not a readable Minari dataset ({type(err).__name__}: {err})") from err
    if p.exists():
        raise ImportFormatError(f"{p}: no Minari dataset here (expected <dataset>/data/metadata.json and its data file)")
    from minari.storage.datasets_root_dir import get_dataset_path

    try:
        return minari.load_dataset(str(src), download=False)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"minari import: {str(src)!r} is neither a dataset directory nor a dataset id "
                                f"found under MINARI_DATASETS_PATH ({get_dataset_path()}): {err}") from err
    except ValueError as err:  # a malformed id
        raise FileNotFoundError(f"minari import: {str(src)!r} is not a dataset directory, and not a dataset "
                                f"id ({err})") from err


def _minari_states(obs, space, keys: list[str] | None, T: int, where: str) -> np.ndarray:
    """Observations (T + 1, ...) of one episode -> states (T, ...) as the store keeps them."""
    from gymnasium import spaces  # minari's own dependency

    if isinstance(space, spaces.Dict):
        names = keys if keys is not None else sorted(
            k for k, s in space.spaces.items() if isinstance(s, spaces.Box) and len(s.shape) <= 1)
        if not names:
            raise ImportFormatError(f"{where}: observation_space is a Dict without low-dimensional Box keys "
                                    f"({sorted(space.spaces)}); name them with --obs-keys")
        parts = []
        for k in names:
            if k not in obs:
                raise ImportFormatError(f"{where}: observation key {k!r} missing; available: {sorted(obs)}")
            x = obs[k]
            if isinstance(x, dict):
                raise ImportFormatError(f"{where}: observation key {k!r} is a nested Dict; expected (T + 1, d) arrays")
            x = np.asarray(x)
            parts.append(x.reshape(len(x), -1).astype(np.float32))
        if len({len(x) for x in parts}) != 1:
            raise ImportFormatError(f"{where}: observation keys {names} have different lengths")
        x = np.concatenate(parts, axis=1)
    elif isinstance(space, (spaces.Box, spaces.Discrete)):
        x = np.asarray(obs)
    else:
        raise ImportFormatError(f"{where}: observation_space {space} is not supported (Box, Discrete or a Dict of Boxes)")
    if len(x) != T + 1:
        raise ImportFormatError(f"{where}: {len(x)} observations for {T} steps; Minari stores T + 1 observations "
                                "(the final one included)")
    if isinstance(space, spaces.Box) and x.dtype == np.uint8 and x.ndim >= 3:
        return to_gray64(x[:-1], f"{where}: observations")
    return x[:-1].reshape(T, -1).astype(np.float32)


def _minari_actions(a: np.ndarray, space, T: int, where: str) -> np.ndarray:
    from gymnasium import spaces

    if len(a) != T:
        raise ImportFormatError(f"{where}: {len(a)} actions for {T} rewards")
    if isinstance(space, spaces.Discrete):
        return a.reshape(T).astype(np.int64) - int(space.start)
    if not isinstance(space, spaces.Box):
        raise ImportFormatError(f"{where}: action_space {space} is not supported (Discrete or Box)")
    x = a.reshape(T, -1).astype(np.float64)
    lo = np.broadcast_to(np.asarray(space.low, np.float64).reshape(-1), x.shape[1:])
    hi = np.broadcast_to(np.asarray(space.high, np.float64).reshape(-1), x.shape[1:])
    if np.isfinite(lo).all() and np.isfinite(hi).all() and not (np.allclose(lo, -1) and np.allclose(hi, 1)):
        x = 2.0 * (x - lo) / (hi - lo) - 1.0  # linear map onto [-1, 1]
    return _clip_unit(x.astype(np.float32), f"{where}: actions")


def _minari_success(infos, T: int) -> np.ndarray | None:
    """``infos["success"]`` (or ``is_success``) for the T steps; DataCollector also records the reset's info."""
    for key in ("success", "is_success"):
        if isinstance(infos, dict) and key in infos and not isinstance(infos[key], dict):
            s = np.asarray(infos[key]).astype(bool).reshape(-1)
            return s[-T:] if len(s) >= T else None
    return None


def iter_minari(src: Path, obs_keys: list[str] | None = None, **_: Any) -> Iterator[tuple[str, dict]]:
    ds = open_minari(src)
    name = f"minari dataset {ds.id} ({ds.spec.data_path})"
    for ep in ds.iterate_episodes():
        where = f"{name}: episode {ep.id}"
        rewards = np.asarray(ep.rewards, dtype=np.float32).reshape(-1)
        T = len(rewards)
        if T == 0:
            raise ImportFormatError(f"{where}: no steps")
        term = np.asarray(ep.terminations).astype(bool).reshape(-1)
        trunc = np.asarray(ep.truncations).astype(bool).reshape(-1)
        if len(term) != T or len(trunc) != T:
            raise ImportFormatError(f"{where}: terminations/truncations have {len(term)}/{len(trunc)} steps, "
                                    f"rewards {T}")
        if term[:-1].any() or trunc[:-1].any():
            raise ImportFormatError(f"{where}: episode ends before its last step (terminations/truncations)")
        ep_out = {"states": _minari_states(ep.observations, ds.observation_space, obs_keys, T, where),
                  "actions": _minari_actions(np.asarray(ep.actions), ds.action_space, T, where),
                  "rewards": rewards, "dones": np.r_[np.zeros(T - 1, dtype=bool), term[-1:]]}
        succ = _minari_success(ep.infos, T)
        if succ is not None:
            ep_out["success"] = succ
        yield where, ep_out


# ----------------------------------------------------------------------------- DQN-Replay

_DQN_KEYS = ("observation", "action", "reward", "terminal")


def _load_gz(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            return np.load(fh, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ImportFormatError(f"{path}: not a gzipped .npy array ({err})") from err


def dqn_checkpoints(src: Path) -> list[int]:
    src = Path(src)
    ids = sorted({int(m.group(1)) for p in src.glob("$store$_observation_ckpt.*.gz")
                  if (m := re.search(r"_ckpt\.(\d+)\.gz$", p.name))})
    return ids


def iter_dqn_replay(src: Path, checkpoints: list[int] | None = None, minimal_actions: list[int] | None = None,
                    **_: Any) -> Iterator[tuple[str, dict]]:
    """Episodes of a DQN-Replay run directory; `minimal_actions` (full-set index of each minimal-set
    action, the manifest's `extra.minimal_actions`) maps the stored actions to the full set."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"dqn-replay import: {src} is not a directory")
    if minimal_actions is None:
        raise ImportFormatError(f"{src}: DQN-Replay actions index the game's minimal action set; the task "
                                "needs extra.minimal_actions in the manifests to map them to the full set")
    to_full = np.asarray(minimal_actions, dtype=np.int64)
    if to_full.ndim != 1 or not len(to_full) or to_full.min() < 0 or to_full.max() >= 18 \
            or len(set(to_full.tolist())) != len(to_full):
        raise ImportFormatError(f"minimal_actions={list(minimal_actions)!r}: expected distinct full-set "
                                "indices in [0, 18)")
    ids = checkpoints if checkpoints else dqn_checkpoints(src)
    if not ids:
        raise ImportFormatError(f"{src}: no $store$_observation_ckpt.<N>.gz files")
    for n in ids:
        arrays = {}
        for key in _DQN_KEYS:
            p = src / f"$store$_{key}_ckpt.{n}.gz"
            if not p.is_file():
                raise ImportFormatError(f"{src}: {p.name} missing (checkpoint {n} needs "
                                        f"{', '.join(f'$store$_{k}_ckpt.{n}.gz' for k in _DQN_KEYS)})")
            arrays[key] = _load_gz(p)
        obs, act, rew, term = (arrays[k] for k in _DQN_KEYS)
        size = len(obs)
        for key in _DQN_KEYS[1:]:
            if len(arrays[key]) != size:
                raise ImportFormatError(f"{src}: $store$_{key}_ckpt.{n}.gz has {len(arrays[key])} entries, "
                                        f"observations have {size}")
        if obs.ndim != 3 or obs.dtype != np.uint8:
            raise ImportFormatError(f"{src}: $store$_observation_ckpt.{n}.gz: expected (N, 84, 84) uint8 frames, "
                                    f"got {obs.shape} {obs.dtype}")
        count_path = src / f"add_count_ckpt.{n}.gz"
        valid = size
        drop_first = n > 0  # checkpoint N > 0 starts inside the previous checkpoint's last episode
        if count_path.is_file():
            add_count = int(_load_gz(count_path))
            if add_count < size:  # buffer not yet full: only the first add_count entries are data
                valid = add_count
            else:  # circular buffer: the oldest entry sits at the cursor
                cursor = add_count % size
                drop_first = drop_first or add_count > size  # the oldest entry is mid-episode
                obs, act, rew, term = (np.roll(x, -cursor, axis=0) for x in (obs, act, rew, term))
        obs, act, rew, term = obs[:valid], act[:valid], rew[:valid], term[:valid].astype(bool)
        act = act.astype(np.int64)
        if len(act) and (act.min() < 0 or act.max() >= len(to_full)):
            bad = int(act.max() if act.max() >= len(to_full) else act.min())
            raise ImportFormatError(f"{src}: $store$_action_ckpt.{n}.gz holds action {bad}, outside the "
                                    f"game's minimal action set of {len(to_full)} actions {to_full.tolist()}")
        act = to_full[act]  # minimal-set index -> full 18-action index
        ends = np.flatnonzero(term)
        start = 0
        for k, end in enumerate(ends):
            if k == 0 and drop_first:
                start = end + 1
                continue
            sl = slice(start, end + 1)
            T = end + 1 - start
            dones = np.zeros(T, dtype=bool)
            dones[-1] = True
            yield f"{src}:ckpt {n}:steps {start}-{end}", {
                "states": to_gray64(obs[sl], f"{src}: $store$_observation_ckpt.{n}.gz"),
                "actions": act[sl], "rewards": rew[sl].astype(np.float32), "dones": dones}
            start = end + 1


# ----------------------------------------------------------------------------- driver

ITERATORS: dict[str, Callable[..., Iterator[tuple[str, dict]]]] = {
    "native": iter_native, "robomimic": iter_robomimic, "minari": iter_minari, "dqn-replay": iter_dqn_replay,
}


STAGE_TAG = ".import-"  # OUT/<domain>/.<name>.import-<pid>-<token>: an import being built (hidden)


def _clear_stale_stages(task_dir: Path) -> None:
    """Remove what killed imports of this task left: staging dirs of dead processes; and put back a
    task directory a crash inside a two-rename swap left aside."""
    import shutil

    from lramlab._io import pid_alive, restore_replaced

    for d in task_dir.parent.glob(f".{task_dir.name}{STAGE_TAG}*"):
        pid = d.name[len(f".{task_dir.name}{STAGE_TAG}"):].split("-", 1)[0]
        if d.is_dir() and not pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
    restore_replaced(task_dir)


def import_dataset(fmt: str, src: str | Path, task: str, out: str | Path, overwrite: bool = False,
                   max_episodes: int | None = None, progress: bool = True, new_task: bool = False,
                   **options: Any) -> Path:
    """Import `src` (in format `fmt`) as task `task` under `out`; returns the task directory.

    options: ``obs_keys`` (robomimic, minari), ``checkpoints`` (dqn-replay; its action mapping comes
    from the task's manifest entry ``extra.minimal_actions``).
    A task directory that already holds episodes is refused unless ``overwrite``. Nothing is
    written into the task directory itself: the import is built in a hidden sibling directory
    (``.<name>.import-<pid>-<token>``, which `find_tasks` and `data check` skip), every episode is
    validated (when written, and read back for stats.json), and only then is the whole directory
    swapped in (`lramlab._io.swap_in_dir`). A failed or killed import leaves the old task
    directory untouched; the next import removes a killed one's staging directory.
    """
    import shutil
    import tempfile

    from lramlab._io import fsync_dir, fsync_file, swap_in_dir
    from lramlab.data.store import (TrajectoryFileError, atomic_write_text, list_episode_files, write_episode,
                                    write_stats)

    if fmt not in ITERATORS:
        raise ValueError(f"unknown import format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if max_episodes is not None and int(max_episodes) < 1:
        raise ValueError(f"--max-episodes must be >= 1 (or left out for all), got {max_episodes}")
    spec = _task_spec(task, new_task)
    task_dir = Path(out) / spec.domain / spec.name
    if task_dir.exists() and not task_dir.is_dir():
        raise NotADirectoryError(20, "task path exists and is not a directory", str(task_dir))
    task_dir.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_stages(task_dir)
    old = list_episode_files(task_dir) if task_dir.exists() else []
    if old and not overwrite:
        raise ValueError(f"{task_dir} already holds {len(old)} episode files; pass --overwrite to replace them")
    if task_dir.exists() and not old:
        extra = sorted(p.name for p in task_dir.iterdir()
                       if not p.name.startswith(".") and p.name not in ("meta.json", "stats.json", "packed.hdf5"))
        if extra and not overwrite:
            raise ValueError(f"{task_dir} holds files that are not episodes ({', '.join(extra[:5])}); move them "
                             f"away or pass --overwrite to replace the directory")
    if fmt == "dqn-replay" and "minimal_actions" not in options:
        options = {**options, "minimal_actions": (getattr(spec, "extra", None) or {}).get("minimal_actions")}
    it = ITERATORS[fmt](Path(src), **options)
    stage = Path(tempfile.mkdtemp(prefix=f".{spec.name}{STAGE_TAG}{os.getpid()}-", dir=task_dir.parent))
    umask = os.umask(0o22)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0700 would become the task directory's mode
    bar = None
    n = 0
    try:
        for where, ep in it:
            if max_episodes is not None and n >= max_episodes:
                break
            if bar is None and progress:  # from the first episode on: a bad source fails without one
                from tqdm import tqdm

                bar = tqdm(desc=f"import {fmt} -> {spec.id}", unit="ep")
            _check_against(spec, ep, where)
            image = ep["states"].dtype == np.uint8
            # durability comes once, for the whole directory, before the swap
            try:
                write_episode(stage, n, ep, compress=image, task=spec.id, fsync=False)
            except TrajectoryFileError as err:  # name the source episode, not the staging copy
                raise ImportFormatError(f"{where}: [{err.dataset}] {err.problem}" if err.dataset
                                        else f"{where}: {err.problem}") from None
            n += 1
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
            bar = None
        if n == 0:
            raise ImportFormatError(f"{src}: no complete episodes found")
        meta = {"task": spec.id, "policy": f"imported:{fmt}", "source_format": fmt,
                "source": str(Path(src).resolve()) if Path(src).exists() else str(src), "seed": None,
                "episodes": n,
                "generator": "lramlab.data.importers",
                "options": {k: v for k, v in options.items() if v is not None}}
        if fmt == "dqn-replay":
            meta["actions"] = "minimal action set mapped to the full 18-action set (options.minimal_actions)"
            meta["rewards"] = "as released: clipped to [-1, 1] by Dopamine"
        atomic_write_text(stage / "meta.json", json_dumps(meta, indent=1, sort_keys=True))
        write_stats(stage)  # reads every episode back, validated
        for p in stage.iterdir():
            fsync_file(p)
        fsync_dir(stage)
        previous = swap_in_dir(stage, task_dir)
    except BaseException:
        if bar is not None:
            bar.close()
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    return task_dir


@command("lramlab data import")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="lramlab data import",
                        description="Import a published dataset format into the lramlab store.")
    ap.add_argument("format", choices=FORMATS)
    ap.add_argument("src", help="source: directory (native, minari, dqn-replay), HDF5 file (robomimic), or a Minari "
                         "dataset id found under MINARI_DATASETS_PATH")
    ap.add_argument("--task", required=True, help="task id <domain>/<name> to store the data under")
    ap.add_argument("--out", required=True, help="dataset root")
    ap.add_argument("--obs-keys", default=None, help="comma-separated observation keys (robomimic, minari)")
    ap.add_argument("--ckpt", type=int, action="append", default=None, help="DQN-Replay checkpoint(s) to import")
    ap.add_argument("--max-episodes", type=int, default=None)
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the task's episodes (the new ones are built aside and swapped in when all are valid)")
    ap.add_argument("--new-task", action="store_true",
                    help="import under a task id the manifests lack, in a domain they know (default: refused as a "
                         "probable typo)")
    ap.add_argument("--no-progress", action="store_true")
    add_json_option(ap, "the task's stats.json summary")
    args = ap.parse_args(argv)
    opts: dict[str, Any] = {}
    if args.obs_keys:
        opts["obs_keys"] = [k.strip() for k in args.obs_keys.split(",") if k.strip()]
    if args.ckpt:
        opts["checkpoints"] = args.ckpt
    with JsonOutput(args.json) as out:
        d = import_dataset(args.format, args.src, args.task, args.out, overwrite=args.overwrite,
                           max_episodes=args.max_episodes, progress=not args.no_progress, new_task=args.new_task,
                           **opts)
        stats = json.loads((d / "stats.json").read_text())
        print(f"{stats['task']}: imported {stats['n_episodes']} episodes, {stats['n_transitions']} steps -> {d}")
        out.write({"dir": str(d), **{k: v for k, v in stats.items() if k != "episodes"}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
