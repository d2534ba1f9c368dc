"""What a run trains on: task selection, datasets (episode or history windows), samplers and the
fixed validation batches."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lramlab.train.config import TrainConfig
from lramlab.train.distributed import DistInfo

# ---------------------------------------------------------------------------------------
# data


def _resolve_task_names(requested: Sequence[str], found: Sequence[str]) -> list[str]:
    """Requested ids or bare names -> ids found in the data (error lists what was found)."""
    out = []
    for name in requested:
        if name in found:
            out.append(name)
            continue
        hits = [t for t in found if t.split("/", 1)[-1] == name]
        if len(hits) == 1:
            out.append(hits[0])
            continue
        what = "is ambiguous" if hits else "is not in the data"
        raise ValueError(f"task {name!r} {what}; tasks found: {', '.join(found[:40])}"
                         f"{' ...' if len(found) > 40 else ''}")
    return out


def found_tasks(roots: Sequence[str]) -> list[str]:
    """Sorted task ids of the task directories under the roots."""
    from lramlab.data.store import TaskData, find_tasks

    return sorted({TaskData(d, max_open=1).task for root in roots for d in find_tasks(root)})


def select_tasks(cfg: TrainConfig) -> list[str] | None:
    """Task ids to train on after the tasks/domains/split filters (None: everything found)."""
    if not cfg.tasks and not cfg.domains and cfg.split == "any":
        return None
    found = found_tasks(cfg.data)
    chosen = _resolve_task_names(cfg.tasks, found) if cfg.tasks else list(found)
    if cfg.domains:
        doms = set(cfg.domains)
        known = sorted({t.split("/")[0] for t in found})
        bad = doms - set(known)
        if bad:
            raise ValueError(f"domains {sorted(bad)} not in the data; domains found: {known}")
        chosen = [t for t in chosen if t.split("/")[0] in doms]
    if cfg.split != "any":
        from lramlab.manifests import get_task

        chosen = [t for t in chosen if get_task(t).split == cfg.split]
    if not chosen:
        raise ValueError(f"no task left after the filters tasks={cfg.tasks} domains={cfg.domains} "
                         f"split={cfg.split!r} in {list(cfg.data)}")
    return chosen


def make_datasets(cfg: TrainConfig, task_specs=None, reward_scale=None):
    """(train dataset, validation dataset or None) for the config's data and window kind."""
    tasks = select_tasks(cfg)
    kw = dict(context_len=cfg.context, val_fraction=cfg.val_fraction, tasks=tasks,
              task_specs=task_specs, reward_scale=reward_scale)
    if cfg.window == "history":
        from lramlab.data.history import HistoryDataset

        train = HistoryDataset(list(cfg.data), split="train", history_start=cfg.history_start, **kw)
        val = HistoryDataset(list(cfg.data), split="val", **kw) if cfg.val_fraction > 0 else None
    else:
        from lramlab.data.sampling import TrajectoryDataset

        train = TrajectoryDataset(list(cfg.data), split="train", **kw)
        if cfg.history_start > 0:
            train.keep_from(cfg.history_start)
        val = TrajectoryDataset(list(cfg.data), split="val", **kw) if cfg.val_fraction > 0 else None
        if cfg.top_fraction < 1:  # fine-tuning data (App. D.3): each split's best episodes per task
            for d in (train, val):
                if d is not None:
                    d.keep_top(cfg.top_fraction)
    if val is not None and int(val.n_steps.sum()) == 0:
        val = None
    return train, val


def make_sampler(dataset, cfg: TrainConfig, info: DistInfo):
    from lramlab.data.sampling import DomainBalancedSampler, SamplerConfig

    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {info.world_size} ranks")
    sc = SamplerConfig(batch_size=cfg.batch_size // info.world_size, seed=cfg.seed, rank=info.rank,
                       world_size=info.world_size)
    return DomainBalancedSampler(dataset, sc)


def next_batches(sampler, cfg: TrainConfig) -> list[dict]:
    """The micro-batches of one update: one per domain (domain-balanced, the paper's default), or,
    with domain_balanced=False, one micro-batch of a domain drawn in proportion to its timesteps."""
    if cfg.domain_balanced or len(sampler.domains) == 1:
        return sampler.next_update()
    ds = sampler.ds
    sizes = np.array([float(ds.n_steps[ds.domain_tasks[d]].sum()) for d in sampler.domains])
    dom = sampler.domains[int(sampler.rng.choice(len(sizes), p=sizes / sizes.sum()))]  # checkpointed rng
    sampler.updates += 1
    return [ds.make_batch(dom, sampler.sample_items(dom))]


def validation_batch_list(val_ds, cfg: TrainConfig, info: DistInfo) -> list[dict]:
    """At most `val_batches` batches per domain, windows spread evenly over the held-out data."""
    from lramlab.data.sampling import validation_items

    out = []
    per_rank = max(1, cfg.batch_size // info.world_size)
    tile = getattr(val_ds, "validation_items", None)  # history windows tile across episodes
    for dom in val_ds.domains:
        items = tile(dom) if tile is not None else validation_items(val_ds, dom)
        if not items:
            continue
        cap = cfg.val_batches * cfg.batch_size
        if cap and len(items) > cap:
            pick = np.unique(np.linspace(0, len(items) - 1, cap).round().astype(int))
            items = [items[i] for i in pick]
        items = items[info.rank::info.world_size]
        for i in range(0, len(items), per_rank):
            out.append(val_ds.make_batch(dom, items[i:i + per_rank]))
    return out


