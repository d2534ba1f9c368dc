"""What a run trains on: task selection, datasets (episode or history windows), samplers and the
fixed validation batches."""
from __future__ import annotations

import json
import sys
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
    from lramlab.data.store import find_tasks, task_id_of

    return sorted({task_id_of(d) for root in roots for d in find_tasks(root)})


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


class BadDataError(ValueError):
    """The data check found bad episode files and the run was not told to skip them."""


SKIPPED_NAME = "skipped_files.json"


def _rank() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return 0, 1


def check_data(cfg: TrainConfig, tasks: Sequence[str] | None = None, task_specs=None):
    """Check every episode file the run would read against its task's spec (`check_dataset`,
    cached per file, so a second run costs a stat per file), before the first update.

    Bad files stop the run with every one listed (`BadDataError`), unless `cfg.skip_bad`: then the
    run trains on the rest and rank 0 records what it left out in OUT/skipped_files.json. A stale
    or damaged packed.hdf5 is only a warning (the episode files are read instead). Under DDP rank 0
    checks first; the other ranks then find its results in the cache."""
    from lramlab.data.store import check_dataset

    rank, world = _rank()
    kw = dict(task_specs=task_specs, tasks=tasks, progress=cfg.progress and rank == 0)
    if world > 1:
        import torch.distributed as dist

        report = err = None
        if rank == 0:
            try:
                report = check_dataset(list(cfg.data), **kw)
            except Exception as e:  # noqa: BLE001 - re-raised after the barrier, so no rank hangs
                err = e
        dist.barrier()
        if err is not None:
            raise err
        if report is None:
            report = check_dataset(list(cfg.data), **kw)
    else:
        report = check_dataset(list(cfg.data), **kw)
    if report.packs:
        from lramlab.data.store.packed import ignore_packs

        ignore_packs(pk["file"] for pk in report.packs)  # a damaged pack is never read, in any rank
    if report.packs and rank == 0:
        for pk in report.packs:
            print(f"lramlab train: warning: {pk['file']} is {pk['status']} ({pk['reason']}); its task reads "
                  f"the episode files. Run `lramlab data pack --force` on it.", file=sys.stderr)
    if report.invalid:
        lines = [f"  {b['file']}{' [' + b['dataset'] + ']' if b['dataset'] else ''}: {b['reason']}"
                 for b in report.invalid]
        if not cfg.skip_bad:
            raise BadDataError(f"the data check found {len(report.invalid)} bad episode files (nothing was "
                               f"trained; fix or remove them, or pass --skip-bad to train on the others):\n"
                               + "\n".join(lines))
        if rank == 0:
            from lramlab._io import atomic_write_text

            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cfg.run_dir / SKIPPED_NAME, json.dumps(
                {"n_skipped": len(report.invalid), "files": report.invalid,
                 "n_used": report.episodes}, indent=1))
            print(f"lramlab train: --skip-bad: leaving out {len(report.invalid)} bad episode files "
                  f"(listed in {cfg.run_dir / SKIPPED_NAME}):\n" + "\n".join(lines[:20])
                  + ("\n  ..." if len(lines) > 20 else ""), file=sys.stderr)
    return report


def make_datasets(cfg: TrainConfig, task_specs=None, reward_scale=None):
    """(train dataset, validation dataset or None) for the config's data and window kind, over the
    files the data check passed (`check_data`)."""
    tasks = select_tasks(cfg)
    report = check_data(cfg, tasks, task_specs)
    files = report.valid_files()
    empty = [t.task for t in report.tasks if t.episodes == 0]
    if tasks is not None and empty:
        tasks = [t for t in tasks if t not in set(empty)]
    if not report.episodes:
        raise BadDataError(f"no valid episode file in {list(cfg.data)}")
    kw = dict(context_len=cfg.context, val_fraction=cfg.val_fraction, tasks=tasks,
              task_specs=task_specs, reward_scale=reward_scale, files=files)
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
    train.data_fingerprint = data_fingerprint(cfg.data, files, tasks)
    return train, val


def data_fingerprint(roots: Sequence[str], files: dict, tasks: Sequence[str] | None = None) -> dict:
    """What a resume compares: the data roots' resolved paths and a digest of the episode files a
    run reads (per task: file names and lengths), so the same data named another way resumes and
    data that changed under the run (episodes deleted, added, rewritten to another length) does not."""
    import hashlib
    from pathlib import Path

    from lramlab.data.store import task_id_of

    per_task: dict[str, list] = {}
    for task_dir, (names, lengths) in files.items():
        tid = task_id_of(task_dir)
        if tasks is not None and tid not in set(tasks):
            continue
        per_task.setdefault(tid, []).extend(f"{n}:{int(ln)}" for n, ln in zip(names, lengths))
    h = hashlib.sha256()
    for tid in sorted(per_task):
        h.update(json.dumps([tid, sorted(per_task[tid])]).encode())
    return {"resolved": [str(Path(d).resolve()) for d in roots], "digest": h.hexdigest(),
            "episodes": {t: len(v) for t, v in sorted(per_task.items())}}


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


