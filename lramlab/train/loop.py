"""The training step (a function) and the thin loop around it (`run`).

One optimizer update = one micro-batch per domain (gradient accumulation over the domains, paper
App. C.1), the loss averaged over the domains. Under DDP each rank holds B / world_size windows
of each micro-batch; the per-rank loss is re-weighted by its share of the global number of
predicted targets so that the averaged gradient equals the gradient of ONE process on the union
of the ranks' windows (masked cross-entropy is a mean over valid targets, and ranks see different
numbers of them because windows are left-padded).

Shape letters: B windows, T timesteps (= context C), V = 2066 vocabulary.
"""
from __future__ import annotations

import contextlib
import json
import math
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from lramlab.train import checkpoint as ckpt_mod
from lramlab.train.config import TrainConfig
from lramlab.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup,
    env_world,
    init_distributed,
    pick_device,
)

DOMAIN_KEY = "domain"


# ---------------------------------------------------------------------------------------
# results


@dataclass
class RunResult:
    """What `run` returns: where the run lives and its final numbers."""

    run_dir: Path
    step: int
    metrics: dict = field(default_factory=dict)   # final metrics (also RUN_DIR/metrics.json)
    checkpoint: Path | None = None                 # RUN_DIR/checkpoints/last.pt
    model_path: Path | None = None                 # RUN_DIR/model.pt (model.save format)
    wall_s: float = 0.0
    tasks: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "step": self.step, "metrics": self.metrics,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "model_path": str(self.model_path) if self.model_path else None,
                "wall_s": self.wall_s, "tasks": self.tasks, "domains": self.domains}


# ---------------------------------------------------------------------------------------
# optimizer and schedule


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up from 0 to `lr` over `warmup` steps, then cosine decay to `min_lr` at `steps`."""
    if cfg.warmup > 0 and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices/filters only (biases, norms and 1-d gains are not decayed)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters (everything is frozen: check freeze=...)")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """LambdaLR over `lr_at` (its factor is relative to cfg.lr)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.lr)


# ---------------------------------------------------------------------------------------
# batches


def batch_to(batch: dict, device: torch.device) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        out[k] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
    return out


def target_count(batch: dict) -> torch.Tensor:
    """Number of predicted targets: valid steps (discrete) or valid steps x real dims (continuous)."""
    mask = batch["mask"]
    act_dim = batch["act_dim"]
    per_row = torch.where(act_dim > 0, act_dim, torch.ones_like(act_dim)).to(torch.float64)
    return (mask.to(torch.float64).sum(1) * per_row).sum()


def autocast_ctx(device: torch.device, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _loss(model, batch, amp: bool, device: torch.device):
    from lramlab.models import action_loss

    with autocast_ctx(device, amp):
        logits = model(batch)
    # the loss in fp32: bf16 log-softmax over 2066 classes loses precision
    loss, metrics = action_loss(logits.float(), batch)
    return loss, metrics


def train_step(model: torch.nn.Module, batches: Sequence[dict], optimizer: torch.optim.Optimizer,
               scheduler=None, *, grad_clip: float = 0.25, amp: bool = True,
               device: torch.device | str = "cpu", dist_info: DistInfo | None = None) -> dict[str, float]:
    """One optimizer update on one micro-batch per domain (loss averaged over the domains).

    Returns `train/loss`, `train/<domain>/loss`, `train/grad_norm`, `train/lr` (the lr used).
    """
    device = torch.device(device)
    info = dist_info or DistInfo()
    model.train()
    optimizer.zero_grad(set_to_none=True)
    n = len(batches)
    if n == 0:
        raise ValueError("train_step got no batches")
    metrics: dict[str, float] = {}
    total = 0.0
    for i, batch in enumerate(batches):
        batch = batch_to(batch, device)
        dom = batch.get(DOMAIN_KEY, f"batch{i}")
        weight = 1.0 / n
        if info.distributed:
            # equal to one process on the union of the ranks' windows (see module docstring)
            local = target_count(batch)
            glob = all_reduce_sum(local, info)
            weight *= float(local * info.world_size / glob.clamp_min(1.0))
        sync = (i == n - 1) or not hasattr(model, "no_sync")
        ctx = contextlib.nullcontext() if sync else model.no_sync()
        with ctx:
            loss, _ = _loss(model, batch, amp, device)
            (loss * weight).backward()
        lv = float(loss.detach())
        metrics[f"train/{dom}/loss"] = lv
        total += lv / n
    params = [p for p in model.parameters() if p.requires_grad]
    if grad_clip and grad_clip > 0:
        gn = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        gn = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None]))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    metrics["train/loss"] = total
    metrics["train/grad_norm"] = float(gn)
    metrics["train/lr"] = float(lr)
    return metrics


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[dict], *, amp: bool = True,
             device: torch.device | str = "cpu", dist_info: DistInfo | None = None) -> dict[str, float]:
    """Validation loss and perplexity, per domain and averaged over domains (paper Fig. 2a).

    Perplexity = exp(mean cross-entropy per predicted target) of a domain; `val/perplexity` is the
    mean over domains of the per-domain perplexities, as the paper averages domain scores.
    """
    device = torch.device(device)
    info = dist_info or DistInfo()
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    for batch in batches:
        batch = batch_to(batch, device)
        dom = batch.get(DOMAIN_KEY, "all")
        loss, _ = _loss(model, batch, amp, device)
        cnt = float(target_count(batch))
        s = sums.setdefault(dom, [0.0, 0.0])
        s[0] += float(loss) * cnt
        s[1] += cnt
    if info.distributed:  # sum (loss * targets, targets) per domain over the ranks
        doms = sorted({d for ds in _gather(sorted(sums), info) for d in ds})
        vec = torch.tensor([sums.get(d, [0.0, 0.0]) for d in doms], dtype=torch.float64, device=device)
        vec = all_reduce_sum(vec, info).cpu()
        sums = {d: [float(vec[i, 0]), float(vec[i, 1])] for i, d in enumerate(doms)}
    out: dict[str, float] = {}
    ppl, losses = [], []
    for dom in sorted(sums):
        s, c = sums[dom]
        if c <= 0:
            continue
        mean = s / c
        out[f"val/{dom}/loss"] = mean
        out[f"val/{dom}/perplexity"] = math.exp(min(mean, 50.0))
        ppl.append(out[f"val/{dom}/perplexity"])
        losses.append(mean)
    if ppl:
        out["val/loss"] = float(np.mean(losses))
        out["val/perplexity"] = float(np.mean(ppl))
    if was_training:
        model.train()
    return out


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
        from lramlab.icl import HistoryDataset

        train = HistoryDataset(list(cfg.data), split="train", history_start=cfg.history_start, **kw)
        val = HistoryDataset(list(cfg.data), split="val", **kw) if cfg.val_fraction > 0 else None
    else:
        from lramlab.data.sampling import TrajectoryDataset

        train = TrajectoryDataset(list(cfg.data), split="train", **kw)
        if cfg.history_start > 0:
            _drop_leading_episodes(train, cfg.history_start)
        val = TrajectoryDataset(list(cfg.data), split="val", **kw) if cfg.val_fraction > 0 else None
    if val is not None and int(val.n_steps.sum()) == 0:
        val = None
    return train, val


def _drop_leading_episodes(ds, frac: float) -> None:
    """Keep, per task, only training episodes with file index >= frac * n_episodes (the later part
    of a learning history, or of data generated in improving order)."""
    for ti, d in enumerate(ds.data):
        first = int(frac * len(d))
        ds.episodes[ti] = ds.episodes[ti][ds.episodes[ti] >= first]
    ds.lengths = [d.lengths[e] for d, e in zip(ds.data, ds.episodes)]
    ds.starts = [np.concatenate([[0], np.cumsum(ln)]).astype(np.int64) for ln in ds.lengths]
    ds.n_steps = np.array([int(s[-1]) for s in ds.starts], dtype=np.int64)


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


# ---------------------------------------------------------------------------------------
# model


def make_model_config(cfg: TrainConfig):
    from lramlab.models import LRAMConfig

    kw: dict[str, Any] = dict(backbone=cfg.backbone, size=cfg.size, context_steps=cfg.context,
                              tokens=cfg.tokens)
    if cfg.slstm_at is not None:
        kw["slstm_at"] = cfg.model_slstm_at()
    if cfg.n_heads is not None:
        kw["n_heads"] = cfg.n_heads
    return LRAMConfig(**kw)


def _encoder_modules(model) -> list[str]:
    names = [n for n, _ in model.named_children()]
    return [n for n in names if "enc" in n.lower() or "embed" in n.lower() or n.lower() in ("ln", "norm", "embed_ln")]


def apply_freeze(model: torch.nn.Module, specs: Sequence[str]) -> list[str]:
    """Freeze parameters by part; returns the names of the frozen parameters.

    "encoders": state/image/RTG/reward encoders and their LayerNorm; "backbone": all backbone
    blocks; "backbone:N": the first N backbone blocks; "head": the action head; anything else is
    a parameter-name prefix.
    """
    frozen: list[str] = []
    params = dict(model.named_parameters())

    def _freeze(prefixes: Sequence[str], what: str):
        hit = [n for n in params if any(n == p or n.startswith(p + ".") for p in prefixes)]
        if not hit:
            raise ValueError(f"freeze={what!r} matches no parameter; top-level modules: "
                             f"{[n for n, _ in model.named_children()]}")
        for n in hit:
            params[n].requires_grad_(False)
        frozen.extend(hit)

    for spec in specs:
        if spec == "encoders":
            _freeze(_encoder_modules(model), spec)
        elif spec == "backbone":
            _freeze(["backbone"], spec)
        elif spec.startswith("backbone:"):
            k = int(spec.split(":", 1)[1])
            blocks = _backbone_block_prefixes(model)
            if k > len(blocks):
                raise ValueError(f"freeze={spec!r}: the backbone has only {len(blocks)} blocks")
            if k:
                _freeze(blocks[:k], spec)
        elif spec == "head":
            _freeze([n for n, _ in model.named_children() if "head" in n.lower()], spec)
        else:
            _freeze([spec], spec)
    return sorted(set(frozen))


def _backbone_block_prefixes(model) -> list[str]:
    """Parameter prefixes of the backbone's blocks, in depth order."""
    bb = getattr(model, "backbone", None)
    if bb is None:
        raise ValueError("model has no .backbone to freeze blocks of")
    if hasattr(bb, "block_prefixes"):
        return [f"backbone.{p}" for p in bb.block_prefixes()]
    # the first ModuleList of the backbone holds its blocks
    for name, mod in bb.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            return [f"backbone.{name}.{i}" for i in range(len(mod))]
    raise ValueError("cannot find the backbone's block list (no nn.ModuleList inside .backbone)")


# ---------------------------------------------------------------------------------------
# run directory


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "torch": torch.__version__, "numpy": np.__version__}
    for mod in ("lramlab", "xlstm", "h5py", "gymnasium", "mamba_ssm"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "unknown")
        except Exception:  # noqa: BLE001 - optional packages
            out[mod] = None
    out["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    try:
        from lramlab import REPO_ROOT

        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        out["git_commit"] = commit.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        out["git_dirty"] = bool(dirty.stdout.strip()) if commit.returncode == 0 else None
    except Exception:  # noqa: BLE001 - no git, not a repo
        out["git_commit"] = None
    return out


def _write_json(path: Path, obj: Any) -> None:
    from lramlab.data.store import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


class MetricLogger:
    """Rank 0: metrics.jsonl (one line per logged step) + TensorBoard when installed."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        self.note = None
        if not enabled:
            return
        if resume_step > 0 and self.path.exists():
            # drop lines past the checkpoint: the resumed run writes them again
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            from lramlab.data.store import atomic_write_text

            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        elif resume_step == 0 and self.path.exists():
            self.path.unlink()
        self.f = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
            except Exception as err:  # noqa: BLE001 - tensorboard is optional
                self.note = f"TensorBoard logging skipped ({type(err).__name__}: {err}); metrics.jsonl has everything"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled or not metrics:
            return
        rec = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.f.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


# ---------------------------------------------------------------------------------------
# the loop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _gather(obj, info: DistInfo) -> list:
    if not info.distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def _save(path: Path, step: int, model, optimizer, scheduler, sampler, cfg: TrainConfig,
          info: DistInfo, metrics: dict) -> None:
    # every rank's RNG and sampler state, so a resumed DDP run continues each rank exactly
    rngs = _gather(ckpt_mod.rng_state(), info)
    samplers = _gather(sampler.state_dict(), info)
    if info.is_main:
        ckpt_mod.save_checkpoint(path, step=step, model=model, optimizer=optimizer, scheduler=scheduler,
                                 rng=rngs, sampler=samplers, train_config=cfg.to_dict(), metrics=metrics)
    barrier(info)


def run(cfg: TrainConfig, *, task_specs=None, reward_scale=None) -> RunResult:
    """Train an LRAM agent as `cfg` says; the only way to train (CLI and notebooks call it).

    `task_specs` / `reward_scale` override the manifests for tasks outside them (tests, new data).
    Under torchrun each process calls this; rank 0 writes the run directory.
    """
    if not cfg.data:
        raise ValueError("TrainConfig.data is empty: give at least one dataset directory")
    for d in cfg.data:
        if not Path(d).is_dir():
            raise ValueError(f"data directory {d} does not exist")
    t0 = time.time()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    _, _, local_rank = env_world()
    device = pick_device(cfg.device, local_rank)
    info = init_distributed(device)
    try:
        return _run(cfg, device, info, t0, task_specs, reward_scale)
    finally:
        cleanup(info)


def _run(cfg, device, info, t0, task_specs, reward_scale) -> RunResult:
    from lramlab.models import build_model

    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(exist_ok=True)
    barrier(info)
    resume_ckpt = None
    if cfg.resume:
        if last.is_file():
            resume_ckpt = ckpt_mod.load_checkpoint(last)
            saved = resume_ckpt.get("train_config") or {}
            for k in ("backbone", "size", "context", "batch_size", "seed", "data", "tasks", "domains", "split",
                      "window", "history_start", "val_fraction", "tokens", "slstm_at", "n_heads"):
                a, b = saved.get(k), cfg.to_dict()[k]
                if isinstance(a, list):
                    a = tuple(a)
                if a is not None and a != b:
                    raise ValueError(f"--resume: {last} was written with {k}={a!r}, this run has {k}={b!r}")
        elif info.is_main:
            print(f"lramlab train: --resume but {last} does not exist; starting from step 0", file=sys.stderr)

    seed_everything(cfg.seed + info.rank)
    train_ds, val_ds = make_datasets(cfg, task_specs, reward_scale)
    sampler = make_sampler(train_ds, cfg, info)
    val_batches = validation_batch_list(val_ds, cfg, info) if val_ds is not None else []

    if resume_ckpt is not None:
        model = ckpt_mod.build_from_config_dict(resume_ckpt["model_config"])
        model.load_state_dict(resume_ckpt["model"])
    elif cfg.finetune_from:
        model = ckpt_mod.load_model_from_checkpoint(cfg.finetune_from)
    else:
        model = build_model(make_model_config(cfg))
    frozen = apply_freeze(model, cfg.freeze) if cfg.freeze else []
    model.to(device)
    model.train()
    # every rank must start from rank 0's weights (model init draws from per-rank seeds)
    if info.distributed:
        import torch.distributed as dist

        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    step = 0
    if resume_ckpt is not None:
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        step = int(resume_ckpt["step"])
        rngs, samplers = resume_ckpt["rng"], resume_ckpt["sampler"]
        if len(samplers) != info.world_size:
            raise ValueError(f"--resume: {last} was written by {len(samplers)} ranks, this run has "
                             f"{info.world_size}")
        sampler.load_state_dict(samplers[info.rank])
        ckpt_mod.set_rng_state(rngs[info.rank])

    # domain-balanced updates come through the loader (window reads in worker processes when
    # num_workers > 0; its state is the sampler's after the last update handed out)
    loader = stream = None
    if cfg.domain_balanced or len(sampler.domains) == 1:
        from lramlab.data.sampling import DomainBalancedLoader

        loader = DomainBalancedLoader(sampler, num_workers=cfg.num_workers)
        stream = iter(loader)
    source = loader if loader is not None else sampler

    train_model = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                          find_unused_parameters=False)  # LRAM touches unused encoders with zero grads

    logger = MetricLogger(run_dir, info.is_main, cfg.tensorboard, resume_step=step)
    if info.is_main:
        _write_json(run_dir / "config.json", {"train": cfg.to_dict(),
                                              "model": ckpt_mod.config_to_dict(model.cfg),
                                              "tasks": train_ds.tasks, "domains": sampler.domains,
                                              "world_size": info.world_size, "device": str(device),
                                              "frozen": frozen,
                                              "n_params": sum(p.numel() for p in model.parameters())})
        _write_json(run_dir / "versions.json", versions())
        if logger.note:
            print(f"lramlab train: {logger.note}", file=sys.stderr)

    bar = None
    if info.is_main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.backbone}/{cfg.size}", unit="step",
                   dynamic_ncols=True)
    last_metrics: dict[str, float] = {}
    val_metrics: dict[str, float] = {}
    t_log = time.time()
    steps_since = 0
    try:
        while step < cfg.steps:
            batches = next(stream) if stream is not None else next_batches(sampler, cfg)
            m = train_step(train_model, batches, optimizer, scheduler, grad_clip=cfg.grad_clip,
                           amp=cfg.amp, device=device, dist_info=info)
            step += 1
            steps_since += 1
            last_metrics.update(m)
            if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.time()
                m = dict(m)
                m["train/steps_per_s"] = steps_since / max(1e-9, now - t_log)
                t_log, steps_since = now, 0
                logger.log(step, m)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{m['train/loss']:.3f}", lr=f"{m['train/lr']:.2e}", refresh=False)
            if val_batches and cfg.val_every and step % cfg.val_every == 0 and step != cfg.steps:
                val_metrics = validate(model, val_batches, amp=cfg.amp, device=device, dist_info=info)
                logger.log(step, val_metrics)
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                logger.log(step, _periodic_eval(model, train_ds, cfg, info, device))
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step != cfg.steps:
                _save(last, step, model, optimizer, scheduler, source, cfg, info, last_metrics)
            if cfg.keep_every and step % cfg.keep_every == 0:
                _save(ckpt_dir / f"step_{step:07d}.pt", step, model, optimizer, scheduler, source, cfg, info,
                      last_metrics)
        # the end: validation, checkpoint, model file, final metrics
        final: dict[str, float] = {k: v for k, v in last_metrics.items()}
        if val_batches:
            val_metrics = validate(model, val_batches, amp=cfg.amp, device=device, dist_info=info)
            logger.log(step, val_metrics)
        final.update(val_metrics)
        if cfg.eval_every:
            ev = _periodic_eval(model, train_ds, cfg, info, device)
            logger.log(step, ev)
            final.update(ev)
        _save(last, step, model, optimizer, scheduler, source, cfg, info, final)
        model_path = run_dir / "model.pt"
        if info.is_main:
            _save_model_file(model, model_path)
            wall = time.time() - t0
            _write_json(run_dir / "metrics.json", {"step": step, "wall_s": wall, **final})
        barrier(info)
    finally:
        if stream is not None:
            stream.close()  # shuts the DataLoader workers down
        if bar is not None:
            bar.close()
        logger.close()
    return RunResult(run_dir=run_dir, step=step, metrics=final, checkpoint=last, model_path=model_path,
                     wall_s=time.time() - t0, tasks=list(train_ds.tasks), domains=list(sampler.domains))


def _save_model_file(model, path: Path) -> None:
    """model.save: the models' own format (config + weights), written atomically by models."""
    model.save(path)


def _periodic_eval(model, train_ds, cfg: TrainConfig, info: DistInfo, device) -> dict[str, float]:
    """Rollouts in the training tasks' environments (rank 0; others wait)."""
    out: dict[str, float] = {}
    if info.is_main:
        from lramlab.evaluate import evaluate_model

        res = evaluate_model(model, train_ds.tasks, episodes=cfg.eval_episodes, seed=cfg.seed,
                             device=device, skip_unavailable=True)
        out = res.metrics(prefix="eval")
    barrier(info)
    return out
