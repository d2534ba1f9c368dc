"""Configs and entry points of the study notebooks that have no other owner.

Each notebook's `parameters` cell mirrors one dataclass here, field for field (a test checks it):

- `notebooks/01_data_prep.ipynb`       -> `DataPrepConfig`     -> `run_data_prep(cfg)`
- `notebooks/02_training.ipynb`        -> `lramlab.train.TrainConfig` (+ `out_dir`, `save_png`)
- `notebooks/03_icl.ipynb`             -> `lramlab.icl.study.ICLStudyConfig` -> `run_icl_study(cfg)`
- `notebooks/04_embeddings_umap.ipynb` -> `EmbeddingConfig`    -> `analysis.embeddings.run_embeddings(cfg)`
- `notebooks/05_latency.ipynb`         -> `LatencyStudyConfig` -> `analysis.latency.run_latency_study(cfg)`

Defaults are small enough for a laptop CPU (minutes); each field's comment gives the paper's
value, and the same notebooks at those values are the full study. Every notebook ends with
`write_metrics(out_dir, {...})`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, get_args

from lramlab._proc import die_with_parent

BACKBONE_NAMES = ("xlstm", "mamba", "dt")
LatencyMode = Literal["model", "env"]


def _tuple(v, cast=str) -> tuple:
    if v is None:
        return ()
    if isinstance(v, (str, int, float)):
        v = (v,)
    return tuple(cast(x) for x in v)


def _check_positive(obj, names: Sequence[str]) -> None:
    for n in names:
        v = getattr(obj, n)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{type(obj).__name__}.{n}={v!r}: expected an integer >= 1")


def _check_backbones(obj, backbones: Sequence[str]) -> None:
    for b in backbones:
        if b not in BACKBONE_NAMES:
            raise ValueError(f"{type(obj).__name__}: backbone {b!r} is unknown; valid: {', '.join(BACKBONE_NAMES)}")


class _Config:
    """from_dict / to_dict shared by the study configs."""

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid: {sorted(names)}")
        return cls(**d)


# ============================================================================ 01 data prep
#: words a task list of DataPrepConfig may hold instead of task ids: the manifests' split of that domain
SPLIT_WORDS = ("train", "holdout", "all")


def _expand_split_words(obj, name: str, domain: str) -> tuple[str, ...]:
    """`cfg.<name>` with "train" / "holdout" / "all" replaced by the manifests' task ids of `domain`
    (in manifest order); ids must belong to `domain`; duplicates dropped, order kept."""
    from lramlab.manifests import list_tasks

    out: list[str] = []
    for t in getattr(obj, name):
        if t in SPLIT_WORDS:
            out += [s.id for s in list_tasks(domain, None if t == "all" else t)]
        elif not t.startswith(domain + "/"):
            raise ValueError(f"{type(obj).__name__}.{name}: {t!r} is not a {domain} task id ('{domain}/<name>') "
                             f"nor one of {SPLIT_WORDS}")
        else:
            out.append(t)
    return tuple(dict.fromkeys(out))


#: DataPrepConfig's task-list fields and their domains
_TASK_GROUPS = (("metaworld_tasks", "metaworld"), ("dmcontrol_tasks", "dmcontrol"), ("atari_tasks", "atari"),
                ("procgen_tasks", "procgen"), ("composuite_tasks", "composuite"), ("mimicgen_tasks", "mimicgen"))


@dataclass
class DataPrepConfig(_Config):
    """Generate a real dataset: Dark-Room learning histories, Meta-World scripted experts, DMControl
    SAC specialists, Atari with a random policy (paper §4.1 / App. B: the public datasets hold 432
    tasks; these generators run the same simulators here). Task lists take task ids or a split
    word: "train", "holdout" (the manifests' hold-out tasks, App. D.3 fine-tuning data) or "all"."""

    data_dir: str = "data/demo"                         # dataset root (DIR/<domain>/<name>/episode_*.hdf5)
    darkroom_goals: int = 3                             # Dark-Room train goals with a learning history (paper: 80)
    darkroom_episodes: int = 40                         # episodes per history (paper: 1000, i.e. 100K transitions)
    darkroom_holdout_goals: int = 0                     # Dark-Room hold-out goals with a learning history (of 20)
    darkroom_policy: str = "history"                    # "history[:k=v,...]": tabular Q-learning; "recipe": the ICL
                                                        # recipe's model-based learners (lramlab.icl.RECIPE_POLICY);
                                                        # "mbq:k=v,...": others (lramlab.collect.histories)
    metaworld_tasks: tuple[str, ...] = ("metaworld/reach-v2",)  # scripted-expert tasks (paper: 45 ML45 tasks)
    metaworld_episodes: int = 4                         # episodes per Meta-World task (paper: 2M transitions)
    metaworld_policy: str = "expert"                    # policy spec, e.g. "expert:noise=0.1" (lramlab data generate --policy)
    dmcontrol_tasks: tuple[str, ...] = ()               # DMControl tasks (paper: 11 train, 5 hold-out; SAC data)
    dmcontrol_episodes: int = 10                        # episodes per DMControl task (1000 steps each)
    dmcontrol_policy: str = "default"                   # "default": each task's SAC specialist (trained once); or a spec
    atari_tasks: tuple[str, ...] = ("atari/freeway",)   # Atari tasks played by a random policy (paper: 41 games, DQN replay)
    atari_episodes: int = 2                             # episodes per Atari task
    atari_max_steps: int = 200                          # cap on agent steps per Atari episode (0: the full episode)
    atari_policy: str = "random"                        # policy spec; "default": each game's default policy
    procgen_tasks: tuple[str, ...] = ()                 # Procgen games (paper: 12 train, 4 hold-out; PPO data)
    procgen_episodes: int = 10                          # episodes per Procgen game
    procgen_max_steps: int = 0                          # cap on steps per Procgen episode (0: the game's own end)
    procgen_policy: str = "default"                     # "default": the planner where it plays well, else random
    composuite_tasks: tuple[str, ...] = ()              # Composuite tasks (robosuite; paper: 240 train tasks)
    composuite_episodes: int = 10                       # episodes per Composuite task
    composuite_policy: str = "expert"                   # policy spec (the robotics experts)
    mimicgen_tasks: tuple[str, ...] = ()                # Mimicgen tasks (robosuite; paper: 83 tasks)
    mimicgen_episodes: int = 10                         # episodes per Mimicgen task
    mimicgen_policy: str = "expert"                     # policy spec (the robotics experts)
    quality_episodes: int = 0                           # random-policy episodes per task for the quality table
                                                        # (lramlab data quality; 0: no table)
    workers: int = 1                                    # tasks generated at once, one process each (specialists train in them)
    seed: int = 0                                       # generation seed
    out_dir: str = "runs/notebooks/01_data_prep"        # metrics.json and figures go here
    save_png: bool = True                               # also write PNG figures (needs kaleido + Chromium)

    def __post_init__(self):
        for name, dom in _TASK_GROUPS:
            setattr(self, name, _tuple(getattr(self, name)))
            setattr(self, name, _expand_split_words(self, name, dom))
        for n in ("darkroom_goals", "darkroom_holdout_goals", "metaworld_episodes", "dmcontrol_episodes",
                  "atari_episodes", "atari_max_steps", "procgen_episodes", "procgen_max_steps", "composuite_episodes",
                  "mimicgen_episodes", "quality_episodes"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"DataPrepConfig.{n}={v!r}: expected an integer >= 0")
        _check_positive(self, ("darkroom_episodes", "workers"))
        if self.darkroom_goals > 80:
            raise ValueError(f"DataPrepConfig.darkroom_goals={self.darkroom_goals}: Dark-Room has 80 train goals")
        if self.darkroom_holdout_goals > 20:
            raise ValueError(f"DataPrepConfig.darkroom_holdout_goals={self.darkroom_holdout_goals}: Dark-Room has "
                             f"20 hold-out goals")
        from lramlab.collect.base import parse_spec

        for n in ("metaworld_policy", "dmcontrol_policy", "atari_policy", "procgen_policy", "composuite_policy",
                  "mimicgen_policy"):
            spec = getattr(self, n)
            if spec == "default":  # each task's default (lramlab.collect.policies.default_policy)
                continue
            try:
                kind, _ = parse_spec(spec)
            except ValueError as err:
                raise ValueError(f"DataPrepConfig.{n}={spec!r}: {err}") from None
            if kind == "history":
                raise ValueError(f"DataPrepConfig.{n}={spec!r}: learning histories are for Dark-Room only")
        if self.darkroom_policy == "recipe":  # a name without '=': papermill's parameters cell cannot hold one
            from lramlab.icl import RECIPE_POLICY

            self.darkroom_policy = RECIPE_POLICY
        _check_darkroom_policy(self.darkroom_policy, self.darkroom_episodes)
        for name, dom in _TASK_GROUPS:
            for t in getattr(self, name):
                if not t.startswith(dom + "/"):
                    raise ValueError(f"DataPrepConfig: {t!r} is not a {dom} task id ('{dom}/<name>')")
        if not self.data_dir:
            raise ValueError("DataPrepConfig.data_dir='': expected a directory")

    def plan(self) -> list[tuple[str, int, str | None, int | None]]:
        """(task, episodes, policy, max_steps) for every task to generate."""
        from lramlab.envs.darkroom import HOLDOUT_GOALS, TRAIN_GOALS, task_name

        out: list[tuple[str, int, str | None, int | None]] = []
        goals = TRAIN_GOALS[: self.darkroom_goals] + HOLDOUT_GOALS[: self.darkroom_holdout_goals]
        out += [(task_name(g), self.darkroom_episodes, self.darkroom_policy, None) for g in goals]
        out += [(t, self.metaworld_episodes, self.metaworld_policy, None) for t in self.metaworld_tasks
                if self.metaworld_episodes]
        out += [(t, self.dmcontrol_episodes, self.dmcontrol_policy, None) for t in self.dmcontrol_tasks
                if self.dmcontrol_episodes]
        out += [(t, self.atari_episodes, self.atari_policy, self.atari_max_steps or None) for t in self.atari_tasks
                if self.atari_episodes]
        out += [(t, self.procgen_episodes, self.procgen_policy, self.procgen_max_steps or None)
                for t in self.procgen_tasks if self.procgen_episodes]
        out += [(t, self.composuite_episodes, self.composuite_policy, None) for t in self.composuite_tasks
                if self.composuite_episodes]
        out += [(t, self.mimicgen_episodes, self.mimicgen_policy, None) for t in self.mimicgen_tasks
                if self.mimicgen_episodes]
        return [(t, n, None if pol == "default" else pol, cap) for t, n, pol, cap in out]


def _check_darkroom_policy(spec: str, episodes: int) -> None:
    """A Dark-Room learning-history spec `lramlab data generate` accepts for `episodes` episodes."""
    kind = spec.partition(":")[0] if isinstance(spec, str) else None
    try:
        if kind == "history":
            from lramlab.collect.policies import history_config

            history_config(spec)
        elif kind == "mbq":
            from lramlab.collect.histories import history_source

            try:
                history_source(spec, episodes)  # also: histories=H divides the episodes
            except ValueError as err:
                raise ValueError(f"{err} (darkroom_episodes={episodes})") from None
        else:
            raise ValueError("expected 'history[:key=value,...]' (tabular Q-learning), 'recipe' (the ICL recipe) or "
                             "'mbq[:key=value,...]' (model-based learners, e.g. 'mbq:eps_start=0.1,histories=4')")
    except ValueError as err:
        raise ValueError(f"DataPrepConfig.darkroom_policy={spec!r}: {err}") from None


@dataclass
class DataSummary:
    """What a dataset root holds: one row per task (from each task's stats.json)."""

    data_dir: str
    tasks: list[dict] = field(default_factory=list)  # task, domain, episodes, transitions, return_mean, ...
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it was not generated
    seconds: float = 0.0
    quality: list[dict] = field(default_factory=list)  # lramlab data quality rows (cfg.quality_episodes > 0)

    def metrics(self) -> dict:
        by_dom: dict[str, dict[str, int]] = {}
        for r in self.tasks:
            d = by_dom.setdefault(r["domain"], {"tasks": 0, "episodes": 0, "transitions": 0})
            d["tasks"] += 1
            d["episodes"] += r["episodes"]
            d["transitions"] += r["transitions"]
        return {"data_dir": self.data_dir, "n_tasks": len(self.tasks),
                "n_episodes": sum(r["episodes"] for r in self.tasks),
                "n_transitions": sum(r["transitions"] for r in self.tasks), "domains": by_dom,
                "skipped": self.skipped, "seconds": round(self.seconds, 2), "quality": self.quality}


def summarize_data(data_dir: str | Path) -> DataSummary:
    """Per-task rows (episodes, transitions, returns, success) of a dataset root; stats.json is
    (re)written from the files when missing."""
    from lramlab.data.store import find_tasks, write_stats

    rows = []
    for d in find_tasks(data_dir):
        p = d / "stats.json"
        st = json.loads(p.read_text()) if p.exists() else write_stats(d)
        rs = st.get("return_stats", {})
        rows.append({"task": st["task"], "domain": st["task"].split("/")[0], "episodes": st["n_episodes"],
                     "transitions": st["n_transitions"], "return_mean": rs.get("mean"), "return_min": rs.get("min"),
                     "return_max": rs.get("max"), "success_rate": st.get("success_rate"),
                     "returns": st.get("returns", [])})
    return DataSummary(str(Path(data_dir).resolve()), rows)


def _generate_task(job: tuple) -> str:
    """One task of `run_data_prep` (a worker process: one torch thread, no progress bars)."""
    import torch

    from lramlab.collect.generate import generate
    from lramlab.data.store import pack_task

    torch.set_num_threads(1)
    task, n, policy, max_steps, out, seed, progress = job
    task_dir = generate(task, n, policy=policy, out=out, seed=seed, progress=progress, max_steps=max_steps)
    if task.startswith("darkroom/"):  # AD reads thousands of short windows: 10-20x faster packed
        pack_task(task_dir)
    return task


def run_data_prep(cfg: DataPrepConfig, progress: bool = True) -> DataSummary:
    """Generate (or resume: complete episode files are kept) every task of `cfg.plan()`, up to
    `cfg.workers` tasks at once (spawned processes, specialists first: they take longest).
    Dark-Room histories are packed (`packed.hdf5`): AD training reads thousands of short windows,
    10-20x faster from the packed layout (notes/icl-research.md).

    A domain whose simulator is missing here is skipped and named in `summary.skipped`. A task that
    fails does not stop the others; then a RuntimeError names every failed task (a re-run resumes)."""
    import time

    from lramlab.collect.base import parse_spec
    from lramlab.collect.specialists import ALGORITHMS
    from lramlab.envs import domain_available

    t0 = time.perf_counter()
    skipped, jobs = {}, []
    for task, n, policy, max_steps in cfg.plan():
        ok, why = domain_available(task.split("/")[0])
        if not ok:
            skipped[task] = why
            continue
        jobs.append((task, n, policy, max_steps, cfg.data_dir, cfg.seed, progress and cfg.workers == 1))
    if cfg.workers == 1 or len(jobs) < 2:
        if len(jobs) < 2:
            for job in jobs:
                _generate_task(job)
        else:  # one bar for the whole job (80 goals would be 80 bars), the task being generated beside it
            from tqdm.auto import tqdm

            jobs = [j[:6] + (False,) for j in jobs]
            with tqdm(jobs, desc="data prep", unit="task", disable=not progress) as bar:
                for job in bar:
                    bar.set_postfix_str(job[0], refresh=False)
                    _generate_task(job)
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        from tqdm.auto import tqdm

        from lramlab.collect.policies import default_policy

        slow = {"specialist", "planner", *ALGORITHMS}
        jobs.sort(key=lambda j: parse_spec(j[2] or default_policy(*j[0].split("/", 1)))[0] not in slow)  # stable
        failed: dict[str, str] = {}
        with cf.ProcessPoolExecutor(min(cfg.workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                    initializer=die_with_parent) as pool:
            futures = {pool.submit(_generate_task, j): j[0] for j in jobs}
            for fut in tqdm(cf.as_completed(futures), total=len(futures), desc="generate", unit="task",
                            disable=not progress):
                try:
                    fut.result()
                except Exception as err:  # noqa: BLE001 - named below, after the other tasks finished
                    failed[futures[fut]] = f"{type(err).__name__}: {err}"
        if failed:
            raise RuntimeError(f"data prep: {len(failed)} task(s) failed (re-running resumes): "
                               + "; ".join(f"{t}: {e}" for t, e in failed.items()))
    summary = summarize_data(cfg.data_dir)
    if cfg.quality_episodes:
        summary.quality = data_quality_rows(cfg, [j[0] for j in jobs], progress)
    summary.skipped, summary.seconds = skipped, time.perf_counter() - t0
    return summary


def _quality_task(job: tuple) -> dict:
    """One task's `lramlab data quality` row (a worker process; the random baseline is cached)."""
    from dataclasses import asdict

    import torch

    from lramlab.collect.quality import task_quality

    torch.set_num_threads(1)
    task_dir, episodes, seed = job
    return asdict(task_quality(task_dir, episodes, seed))


def data_quality_rows(cfg: DataPrepConfig, tasks: list[str], progress: bool = True) -> list[dict]:
    """`lramlab data quality` rows of `tasks` in cfg.data_dir, `cfg.workers` at a time (the random
    baselines run in the simulators, cached beside the data)."""
    from lramlab.manifests import get_task

    jobs = [(str(Path(cfg.data_dir) / get_task(t).domain / get_task(t).name), cfg.quality_episodes, cfg.seed)
            for t in tasks]
    if cfg.workers == 1 or len(jobs) < 2:
        return [_quality_task(j) for j in jobs]
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(min(cfg.workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                initializer=die_with_parent) as pool:
        return list(pool.map(_quality_task, jobs))


# ============================================================================ 02 training
#: notebook parameters of 02_training / 03_icl that are not fields of their config dataclass
NOTEBOOK_EXTRAS = ("out_dir", "save_png", "data_dir", "backbones", "video_task", "video_steps")


def training_summary(result) -> dict:
    """metrics.json numbers of a training run (`lramlab.train.RunResult`): first/last loss, validation."""
    from lramlab.analysis.plots import metric_series, read_metrics

    rows = read_metrics(Path(result.run_dir) / "metrics.jsonl")
    _, loss = metric_series(rows, "train/loss")
    out = {"run_dir": str(Path(result.run_dir).resolve()), "step": int(result.step),
           "checkpoint": str(Path(result.model_path or result.checkpoint).resolve()),
           "wall_s": round(float(result.wall_s), 2), "tasks": list(result.tasks), "domains": list(result.domains)}
    if len(loss):
        k = max(1, len(loss) // 5)  # compare the mean of the first and last fifth: single steps are noisy
        out.update(loss_first=float(loss[:k].mean()), loss_last=float(loss[-k:].mean()),
                   loss_decreased=bool(loss[-k:].mean() < loss[:k].mean()))
    for key, v in result.metrics.items():
        if key.startswith("val/") and isinstance(v, (int, float)) and math.isfinite(v):
            out[key] = float(v)
    return out


#: domains whose scene is worth a video, in the order `agent_video` picks a task by default
VIDEO_DOMAINS = ("metaworld", "robosuite", "composuite", "mimicgen", "dmcontrol", "atari", "procgen", "darkroom")


def agent_video(checkpoint: str | Path, data_dir: str | Path, out: str | Path, task: str = "",
                max_steps: int = 100, seed: int = 0, fps: int = 20) -> dict:
    """One episode of a trained agent in the simulator, rendered and saved as a GIF (`out`).

    `task`: a task of `data_dir` ("": the first of a robot domain, as in `VIDEO_DOMAINS`). The agent
    is conditioned on the best return in that task's data (docs/protocol.md). Returns {task, return,
    steps, success, video} and the HTML that shows it (`html`, the GIF inline)."""
    import base64
    import tempfile

    import numpy as np

    from lramlab.data.store import TaskData, data_target_return, find_tasks
    from lramlab.rollout import run_task, save_video
    from lramlab.train.checkpoint import load_model_from_checkpoint

    dirs = {TaskData(d, require_complete=False).task: d for d in find_tasks(data_dir)}
    if task and task not in dirs:
        raise ValueError(f"agent_video: task {task!r} is not under {data_dir}; found {sorted(dirs)}")
    if not task:
        task = min(dirs, key=lambda t: ((VIDEO_DOMAINS + (t.split("/")[0],)).index(t.split("/")[0]), t))
    model = load_model_from_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory(prefix="lram_video_") as tmp:
        res = run_task(model, task, episodes=1, seed=seed, max_steps=max_steps, record_dir=tmp, frames=True,
                       target_return=data_target_return(dirs[task], require_complete=False))
        ep = res.episodes[0]
        with np.load(Path(ep.path).with_name(Path(ep.path).name.split(".")[0] + ".extra.npz")) as z:
            frames = z["frames"]
    path = save_video(frames, out, fps=fps)
    gif = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = (f"{task}: {ep.length} steps, return {ep.ret:.1f}" + ("" if ep.success is None else f", success {ep.success}")
               + f" ({checkpoint if isinstance(checkpoint, str) else Path(checkpoint).name})")
    return {"task": task, "return": ep.ret, "steps": ep.length, "success": ep.success, "video": str(path),
            "html": f"<figure><img src='data:image/gif;base64,{gif}'/><figcaption>{caption}</figcaption></figure>"}


# ============================================================================ 03 ICL
# The ICL study's config and runner live with the rest of AD: `lramlab.icl.study` (ICLStudyConfig,
# run_icl_study -> ICLStudy: summary, claim, table, metrics); its figures: `analysis.plots.icl_study_figures`.


# ============================================================================ 04 embeddings
@dataclass
class EmbeddingConfig(_Config):
    """Embedding-space analysis (paper §4.3, App. F): windows per task -> hidden states -> UMAP."""

    checkpoint: str = ""                  # run dir / checkpoint file ("" : an untrained model of backbone/size)
    backbone: str = "xlstm"               # only without a checkpoint: xlstm | mamba | dt
    size: str = "tiny"                    # only without a checkpoint (paper: 16M)
    data_dir: str = "data/demo"           # dataset root(s) holding the tasks
    tasks: tuple[str, ...] = ()           # task ids (empty: every task under data_dir)
    n_per_task: int = 32                  # sub-trajectories per task (paper: 32)
    context: int = 50                     # timesteps per sub-trajectory (paper: 50 = 150 tokens)
    layer: int = -1                       # hidden layer, as model.hidden_states indexes them (-1: last, paper)
    batch_size: int = 32                  # windows per forward pass
    seed: int = 0                         # window sampling and UMAP seed
    device: str = "cpu"                   # cpu | cuda
    out_dir: str = "runs/notebooks/04_embeddings_umap"  # metrics.json and figures go here
    save_png: bool = True                 # also write PNG figures (needs kaleido + Chromium)

    def __post_init__(self):
        self.tasks = _tuple(self.tasks)
        _check_positive(self, ("n_per_task", "context", "batch_size"))
        if not self.checkpoint:
            _check_backbones(self, (self.backbone,))
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise ValueError(f"EmbeddingConfig.layer={self.layer!r}: expected an integer")
        if not self.data_dir:
            raise ValueError("EmbeddingConfig.data_dir='': expected a dataset directory")


# ============================================================================ 05 latency
@dataclass
class LatencyStudyConfig(_Config):
    """Inference latency / throughput / memory (paper §4.4, App. D.5): recurrent vs Transformer with
    the same number of layer blocks and matched parameters ("<size>-half" presets), pure model steps
    and in the loop with a real environment (Atari Freeway), and the batch size / context at which
    each recurrent backbone overtakes DT (`analysis.crossover`). Defaults: a tiny grid for a CPU.
    Presets: `studies/throughput-cpu.yaml` (16M on a CPU), `studies/throughput-gpu.yaml` (the paper's)."""

    backbones: tuple[str, ...] = ("xlstm", "mamba", "dt")   # xlstm | mamba | dt | xlstm-<N>h (N heads)
    size: str = "tiny"                    # model preset, or several comma-separated (paper: "206M-half")
    contexts: tuple[int, ...] = (50, 200)  # context lengths C in timesteps (paper: 50 ... 25600)
    batch_sizes: tuple[int, ...] = (1,)   # batch sizes for latency vs context (paper: 1 and 16)
    throughput_batches: tuple[int, ...] = (1, 4)  # batch sizes for throughput (paper: 1 ... 128)
    throughput_context: int = 50          # fixed context for throughput (paper: 1600)
    modes: tuple[str, ...] = ("model", "env")  # "model": model steps only; "env": in the loop with the env
    env_task: str = "atari/freeway"       # environment of the in-the-loop measurement (paper: Freeway)
    xlstm_heads: int = 0                  # heads of a plain "xlstm" (0: the preset's 4; App. D.5.4 uses 16 too)
    max_state_gb: float = 0.0             # a state (DT's KV cache) above this many GiB is recorded as OOM, unrun (0: half the free memory)
    warmup: int = 1                       # untimed steps first (compilation, caches)
    reps: int = 5                         # timed steps per grid point (median and p10-p90 reported)
    device: str = "auto"                  # auto | cpu | cuda (CUDA timings are synchronised)
    threads: int = 1                      # torch CPU threads while measuring (0: torch default; 1 is steadier on a shared CPU)
    seed: int = 0                         # weights and env seed
    out_dir: str = "runs/notebooks/05_latency"  # metrics.json and figures go here
    save_png: bool = True                 # also write PNG figures (needs kaleido + Chromium)

    @property
    def sizes(self) -> tuple[str, ...]:
        """The presets of `size` ("16M-half,16M" -> ("16M-half", "16M"))."""
        return tuple(s.strip() for s in str(self.size).split(",") if s.strip())

    def __post_init__(self):
        from lramlab.analysis.latency import parse_backbone
        from lramlab.models.config import SIZES

        self.backbones = _tuple(self.backbones)
        self.contexts = _tuple(self.contexts, int)
        self.batch_sizes = _tuple(self.batch_sizes, int)
        self.throughput_batches = _tuple(self.throughput_batches, int)
        self.modes = _tuple(self.modes)
        if not self.backbones:
            raise ValueError("LatencyStudyConfig.backbones is empty: expected at least one of xlstm, mamba, dt")
        for b in self.backbones:
            try:
                parse_backbone(b)
            except ValueError as err:
                raise ValueError(f"LatencyStudyConfig: {err}") from None
        if len(set(self.backbones)) != len(self.backbones):
            raise ValueError(f"LatencyStudyConfig.backbones={list(self.backbones)}: a backbone is listed twice")
        if not self.sizes:
            raise ValueError(f"LatencyStudyConfig.size={self.size!r}: expected a preset ({', '.join(SIZES)})")
        for s in self.sizes:
            if s not in SIZES:
                raise ValueError(f"LatencyStudyConfig.size: {s!r} is unknown; valid: {', '.join(SIZES)} "
                                 f"(several: comma-separated)")
        for m in self.modes:
            if m not in get_args(LatencyMode):
                raise ValueError(f"LatencyStudyConfig.modes: {m!r} is unknown; valid: {get_args(LatencyMode)}")
        for name in ("contexts", "batch_sizes", "throughput_batches"):
            for v in getattr(self, name):
                if v < 1:
                    raise ValueError(f"LatencyStudyConfig.{name}: {v} is not a positive integer")
        if not self.contexts and not self.throughput_batches:
            raise ValueError("LatencyStudyConfig: contexts and throughput_batches are both empty; nothing to measure")
        _check_positive(self, ("throughput_context", "reps"))
        if self.warmup < 0 or self.xlstm_heads < 0 or self.threads < 0:
            raise ValueError(f"LatencyStudyConfig: warmup={self.warmup}, xlstm_heads={self.xlstm_heads}, "
                             f"threads={self.threads}: expected >= 0")
        if isinstance(self.max_state_gb, bool) or not isinstance(self.max_state_gb, (int, float)) \
                or not 0 <= self.max_state_gb < math.inf:
            raise ValueError(f"LatencyStudyConfig.max_state_gb={self.max_state_gb!r}: expected a finite number "
                             f">= 0 (0: half the free memory)")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"LatencyStudyConfig.device={self.device!r}: expected auto | cpu | cuda | cuda:N")


# ============================================================================ outputs
def _jsonable(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN/inf
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_metrics(out_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write `out_dir/metrics.json` atomically (the last cell of every notebook); NaN -> null."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    tmp = path.with_name(f".metrics.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(dict(metrics)), indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path
