"""Embedding-space analysis (paper §4.3, App. F): hidden states per task, UMAP to 2-D, silhouette.

For every task: sample N sub-trajectories (default 32) of C timesteps (default 50) from the
store through the sampler's window reading, run the model, take the hidden states of one layer
at the R̂ tokens (default the last), mean-pool them over the valid (unpadded) timesteps, project
all vectors to 2-D with UMAP (umap-learn's default parameters, seeded), and measure how well the
domains separate with the silhouette score (sklearn, Euclidean), in the hidden space and in 2-D.

Shape letters: N points (tasks x windows), B windows per forward, T = C timesteps, D width.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lramlab._optional import require


@dataclass
class EmbeddingResult:
    """One point per window: `task[i]`, `domain[i]`, pooled hidden state `hidden[i]` (D,), `coords[i]` (2,)."""

    task: np.ndarray            # (N,) str
    domain: np.ndarray          # (N,) str
    hidden: np.ndarray          # (N, D) float32, mean-pooled hidden states
    coords: np.ndarray          # (N, 2) float32, UMAP
    silhouette: float           # by domain, in the hidden space (nan with < 2 domains)
    silhouette_2d: float        # by domain, in the UMAP plane
    layer: int
    info: dict = field(default_factory=dict)  # backbone, size, checkpoint, timings, ...

    def __len__(self) -> int:
        return len(self.task)

    def rows(self) -> list[dict]:
        """One dict per point (task, domain, x, y): a table without pandas."""
        return [{"task": str(t), "domain": str(d), "x": float(c[0]), "y": float(c[1])}
                for t, d, c in zip(self.task, self.domain, self.coords)]

    def to_frame(self):
        """The points as a pandas DataFrame (needs pandas)."""
        pd = require("pandas", "EmbeddingResult.to_frame")
        return pd.DataFrame(self.rows())

    def summary(self) -> dict:
        """JSON-ready numbers for metrics.json."""
        return {"n_points": len(self), "n_tasks": int(len(set(self.task.tolist()))),
                "domains": sorted(set(self.domain.tolist())), "layer": self.layer,
                "silhouette": _json_float(self.silhouette), "silhouette_2d": _json_float(self.silhouette_2d),
                "coords_finite": bool(np.isfinite(self.coords).all()), **self.info}


def _json_float(x: float):
    return float(x) if math.isfinite(x) else None


# ----------------------------------------------------------------------------- windows
def sample_windows(dataset, n_per_task: int = 32, seed: int = 0) -> list[tuple[int, int, int]]:
    """`n_per_task` windows (task index, file episode, end step) per task of a TrajectoryDataset.

    End points are drawn uniformly, without replacement where possible, from the steps at which a
    whole window of C steps fits in the episode (so a window is a full sub-trajectory); a task
    whose episodes are all shorter than C uses any step (right-padded windows; pooling counts real steps only). Seeded.
    """
    if n_per_task < 1:
        raise ValueError(f"n_per_task must be >= 1, got {n_per_task}")
    C = dataset.context_len
    items = []
    for ti, task in enumerate(dataset.tasks):
        n = int(dataset.n_steps[ti])
        if n == 0:
            continue
        steps = np.arange(n)
        ep_of = np.searchsorted(dataset.starts[ti], steps, side="right") - 1
        within = steps - dataset.starts[ti][ep_of]
        full = steps[within >= C - 1]
        pool = full if len(full) else steps
        rng = np.random.default_rng([seed, ti, n])
        pick = rng.choice(pool, size=n_per_task, replace=len(pool) < n_per_task)
        eps, ends = dataset.locate(ti, np.sort(pick))
        items.extend((ti, int(e), int(t)) for e, t in zip(eps, ends))
    return items


def pooled_hidden_states(model, dataset, items: Sequence[tuple[int, int, int]], layer: int = -1,
                         batch_size: int = 32, device: str | None = None, progress: bool = False) -> np.ndarray:
    """Mean over valid timesteps of `model.hidden_states(batch, layer)` for each window: (N, D).

    Windows are batched per domain (a batch holds one domain); the output keeps the input order.
    """
    import torch

    dev = torch.device(device) if device else next(model.parameters()).device
    by_domain: dict[str, list[int]] = {}
    for i, (ti, _, _) in enumerate(items):
        by_domain.setdefault(dataset.infos[ti].domain, []).append(i)
    out: np.ndarray | None = None
    chunks = [(dom, idx[s:s + batch_size]) for dom, idx in by_domain.items() for s in range(0, len(idx), batch_size)]
    it = chunks
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(chunks, desc="hidden states", unit="batch")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for dom, idx in it:
                batch = dataset.make_batch(dom, [items[i] for i in idx], as_torch=True)
                batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in batch.items()}
                h = model.hidden_states(batch, layer=layer).float()  # (B, T, D)
                m = batch["mask"].to(h.dtype).unsqueeze(-1)  # (B, T, 1)
                pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)  # padded steps do not count
                if out is None:
                    out = np.zeros((len(items), h.shape[-1]), np.float32)
                out[idx] = pooled.cpu().numpy()
    finally:
        model.train(was_training)
    if out is None:
        raise ValueError("pooled_hidden_states: no windows given")
    return out


# ----------------------------------------------------------------------------- scores
def silhouette(x: np.ndarray, labels: Sequence[str]) -> float:
    """sklearn's silhouette score of `labels` in `x` (nan when it is undefined: < 2 or = N labels)."""
    labels = np.asarray(labels)
    k = len(set(labels.tolist()))
    if k < 2 or k >= len(labels):
        return float("nan")
    metrics = require("sklearn.metrics", "silhouette scores")
    return float(metrics.silhouette_score(np.asarray(x, dtype=np.float64), labels, metric="euclidean"))


def umap_2d(x: np.ndarray, seed: int = 0, **umap_kwargs) -> np.ndarray:
    """UMAP to 2-D with umap-learn's default parameters (n_neighbors 15, min_dist 0.1), seeded.

    With fewer points than n_neighbors + 1 UMAP's graph is degenerate, so n_neighbors shrinks
    to N - 1 (and at N <= 2 the points are returned as a trivial layout)."""
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n <= 2:
        return np.array([[0.0, 0.0], [1.0, 0.0]][:n], dtype=np.float32)
    umap = require("umap", "UMAP projections")
    kw = dict(umap_kwargs)
    kw.setdefault("n_neighbors", 15)
    kw["n_neighbors"] = min(kw["n_neighbors"], n - 1)
    reducer = umap.UMAP(n_components=2, random_state=seed, **kw)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # seeded UMAP runs single-threaded
        warnings.filterwarnings("ignore", message=".*k >= N.*")
        return reducer.fit_transform(x).astype(np.float32)


# ----------------------------------------------------------------------------- study
def load_for_embeddings(checkpoint: str | Path, device: str = "cpu"):
    """A model from a run directory, training checkpoint or `model.save` file, in eval mode."""
    try:
        from lramlab.train.checkpoint import load_model_from_checkpoint
    except ImportError:  # training not installed: plain model files still load
        from lramlab.models import load_model

        return load_model(checkpoint).to(device).eval()
    return load_model_from_checkpoint(checkpoint, map_location=device)


def make_dataset(data_dir: str | Path | Sequence[str | Path], context: int = 50, tasks: Sequence[str] = (),
                 task_specs: Any = None):
    """All episodes of the tasks under `data_dir` (split "all"), cut into windows of `context` steps."""
    from lramlab.data.sampling import TrajectoryDataset

    return TrajectoryDataset(data_dir, split="all", context_len=context, tasks=list(tasks) or None,
                             task_specs=task_specs)


def embed_tasks(model, dataset, n_per_task: int = 32, layer: int = -1, seed: int = 0, batch_size: int = 32,
                device: str | None = None, progress: bool = False, hidden: np.ndarray | None = None,
                items: Sequence[tuple[int, int, int]] | None = None) -> EmbeddingResult:
    """The full analysis for one model: windows -> pooled hidden states -> UMAP + silhouettes.

    `hidden`/`items` let a caller (the embedding explorer) reuse hidden states it already has.
    """
    t0 = time.perf_counter()
    items = list(items) if items is not None else sample_windows(dataset, n_per_task, seed)
    if hidden is None:
        hidden = pooled_hidden_states(model, dataset, items, layer, batch_size, device, progress)
    t1 = time.perf_counter()
    task = np.array([dataset.tasks[ti] for ti, _, _ in items])
    domain = np.array([dataset.infos[ti].domain for ti, _, _ in items])
    coords = umap_2d(hidden, seed)
    t2 = time.perf_counter()
    cfg = getattr(model, "cfg", None)
    info = {"backbone": getattr(cfg, "backbone", None), "size": getattr(cfg, "size", None),
            "n_per_task": int(n_per_task), "context": int(dataset.context_len),
            "seconds_hidden": round(t1 - t0, 3), "seconds_umap": round(t2 - t1, 3)}
    return EmbeddingResult(task=task, domain=domain, hidden=hidden, coords=coords,
                           silhouette=silhouette(hidden, domain), silhouette_2d=silhouette(coords, domain),
                           layer=int(layer), info=info)


def embedding_model(cfg):
    """The model of an `EmbeddingConfig`: its checkpoint, or an untrained (seeded) backbone/size."""
    if cfg.checkpoint:
        return load_for_embeddings(cfg.checkpoint, cfg.device)
    import torch

    from lramlab.models import LRAMConfig, build_model

    torch.manual_seed(cfg.seed)  # an untrained model: the baseline a trained one is compared to
    return build_model(LRAMConfig(backbone=cfg.backbone, size=cfg.size)).to(cfg.device).eval()


def run_embeddings(cfg, task_specs: Any = None) -> EmbeddingResult:
    """The embeddings study for an `lramlab.studies.EmbeddingConfig` (checkpoint or untrained preset).

    `task_specs` overrides the manifests for tasks outside them (as for the sampler)."""
    model = embedding_model(cfg)
    ds = make_dataset(cfg.data_dir, cfg.context, cfg.tasks, task_specs)
    res = embed_tasks(model, ds, cfg.n_per_task, cfg.layer, cfg.seed, cfg.batch_size, cfg.device, progress=True)
    res.info["checkpoint"] = str(cfg.checkpoint) if cfg.checkpoint else None
    return res
