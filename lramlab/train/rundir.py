"""What a training run may do to its run directory, and what a resume or fine-tune may change.

- `claim_run_dir(cfg, info)`: refuses a directory that already holds a run unless `resume` or
  `overwrite` (then `clear_earlier_run` deletes that run's files -- and only those -- once the new
  run's data and model have passed their checks), and holds an
  exclusive lock (`OUT/.lock`, flock) while the run lives, so two runs never write one directory
  (the kernel drops the lock when a process dies, even by SIGKILL). Stale `.*.tmp` files of killed
  atomic writes are removed under the lock.
- `resume_changes(saved, cfg, ...)`: the `--resume` policy of `TrainConfig` (its module docstring):
  fields in `RESUME_MAY_CHANGE` are applied and returned for the record; any other change refuses,
  naming every such field with its old and new value.
- `check_finetune(model_cfg, cfg, path)`: `finetune_from` must hold the model this config describes.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from lramlab._io import fsync_dir, remove_stale_tmp
from lramlab.train.config import RESUME_MAY_CHANGE, RUN_MODE_FIELDS, TrainConfig, default_warmup

#: files and directories a run writes into its directory (what `overwrite` deletes)
RUN_FILES = ("config.json", "versions.json", "metrics.jsonl", "metrics.json", "model.pt", "checkpoints", "tb")
LOCK_NAME = ".lock"


def existing_run(run_dir: Path) -> list[str]:
    """Names of the run files in `run_dir` that show a run was started there ([] for none)."""
    found = [n for n in ("config.json", "metrics.jsonl", "metrics.json", "model.pt") if (run_dir / n).exists()]
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir() and any(p.suffix == ".pt" and not p.name.startswith(".") for p in ckpts.iterdir()):
        found.append("checkpoints/")
    return found


class RunLock:
    """An exclusive flock on OUT/.lock for the life of the run (rank 0)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self.fd = None
        try:
            import fcntl
        except ImportError:  # no flock on this platform: no lock (the existing-run check still holds)
            return
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise ValueError(f"run directory {run_dir} is in use by another training process (pid {holder}); "
                             f"wait for it to finish or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (harmless, reused)
            self.fd = None


def claim_run_dir(cfg: TrainConfig, info) -> RunLock | None:
    """Check (every rank) and prepare (rank 0) `cfg.out` for this run; rank 0 returns the lock."""
    run_dir = cfg.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(20, "--out: exists and is not a directory", str(run_dir))
    lock = None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
    try:
        found = existing_run(run_dir)
        if found and not (cfg.resume or cfg.overwrite):
            raise ValueError(f"run directory {run_dir} already holds a run ({', '.join(found)}): pass --resume "
                             f"(resume=True) to continue it, --overwrite (overwrite=True) to replace it, or choose "
                             f"another --out")
        if info.is_main:
            remove_stale_tmp(run_dir)  # killed atomic writes; safe: we hold the lock
            if (run_dir / "checkpoints").is_dir():
                remove_stale_tmp(run_dir / "checkpoints")
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def clear_earlier_run(run_dir: Path) -> None:
    """--overwrite: delete the earlier run's files (and only those). The loop calls it once the
    data, the tasks and the model have passed their checks, so a run refused for its input leaves
    the earlier one whole."""
    found = existing_run(run_dir)
    if not found:
        return
    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    fsync_dir(run_dir)
    print(f"lramlab train: --overwrite: removed the earlier run in {run_dir} ({', '.join(found)})", file=sys.stderr)


def check_fits_in_memory(cfg: TrainConfig, d_model: int) -> None:
    """Refuse a micro-batch that cannot fit in this machine's memory before anything is allocated
    (a batch of 10^9 windows got the process OOM-killed, taking nothing else down with it only by
    luck). The estimate is a lower bound -- the float states of B x C steps and ONE activation
    tensor of 3 tokens per step -- so it never refuses a batch that fits."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return
    if cfg.backbone == "xlstm":  # the xlstm package builds a causal mask of (3 C)^2 bytes with the model
        mask = (3 * cfg.context) ** 2
        if mask > ram:
            raise ValueError(f"context={cfg.context}: the xLSTM model alone needs at least {mask / 2**30:.1f} GiB "
                             f"(its causal mask over {3 * cfg.context} tokens), more than this machine's "
                             f"{ram / 2**30:.1f} GiB of memory; give a smaller --context")
    need = cfg.batch_size * cfg.context * (204 * 4 + 3 * d_model * 4)
    if need > ram:
        raise ValueError(f"batch_size={cfg.batch_size} x context={cfg.context}: one micro-batch needs at least "
                         f"{need / 2**30:.1f} GiB (states and one activation tensor of width {d_model}), more than "
                         f"this machine's {ram / 2**30:.1f} GiB of memory; give a smaller --batch-size or --context")


def warn_long_warmup(cfg: TrainConfig) -> str | None:
    """The warning for a warm-up as long as the run (the learning rate never reaches `lr`)."""
    if cfg.warmup and cfg.warmup >= cfg.steps:
        return (f"warmup={cfg.warmup} steps is not shorter than the run (steps={cfg.steps}): the learning rate "
                f"rises linearly for the whole run and never reaches lr={cfg.lr:g}; leave --warmup out for "
                f"{default_warmup(cfg.steps)} (min(4000, steps // 10)) or give a smaller one")
    return None


def _norm(v):
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def resume_changes(saved: dict, cfg: TrainConfig, ckpt_path: Path, ckpt_step: int) -> dict[str, list]:
    """{field: [old, new]} of the allowed changes; ValueError naming every refused change."""
    now = cfg.to_dict()
    refused, allowed = [], {}
    for name, new in now.items():
        if name in RUN_MODE_FIELDS or name not in saved:  # a field newer than the checkpoint: nothing to compare
            continue
        if name == "data":  # by content and resolved path, once the data are read: check_resume_data
            continue
        old = saved[name]
        if _norm(old) == _norm(new):
            continue
        if name in RESUME_MAY_CHANGE:
            allowed[name] = [old, new]
        else:
            refused.append(name)
    if refused:
        shown = "; ".join(f"{n}={saved[n]!r} -> {now[n]!r}" for n in refused)
        hint = ""
        if "warmup" in refused and saved.get("steps") != now["steps"]:
            hint = (f" (the default warm-up follows steps: min(4000, steps // 10); pass --warmup {saved['warmup']} "
                    f"to keep the run's)")
        raise ValueError(f"--resume: {ckpt_path} was written with different settings: {shown}{hint}. "
                         f"These fix the data order, the model or the optimizer state and cannot change on resume; "
                         f"only {', '.join(sorted(RESUME_MAY_CHANGE))} may")
    if cfg.steps < ckpt_step:
        raise ValueError(f"--resume: {ckpt_path} is at step {ckpt_step}, past steps={cfg.steps}: give --steps >= "
                         f"{ckpt_step} (or train a new run)")
    return allowed


def check_resume_data(saved: dict, cfg: TrainConfig, now: dict, ckpt_path: Path) -> dict[str, list]:
    """--resume: the data must be what the run read (`train.data.data_fingerprint`: resolved roots,
    a digest of the episode files' names and lengths). The same data under another spelling or
    path resumes (the change is returned for the record); changed data refuses, naming how."""
    old = saved.get("data_fingerprint")
    if not isinstance(old, dict):  # a checkpoint from before fingerprints: its paths, resolved here
        then = [str(Path(d).resolve()) for d in saved.get("data", ())]
        if then and then != now["resolved"]:
            raise ValueError(f"--resume: {ckpt_path} was written with data={list(saved.get('data', ()))!r}, "
                             f"this run has data={list(cfg.data)!r}; the data fix the order of the batches and "
                             f"cannot change on resume")
        return {}
    if old.get("digest") != now["digest"]:
        a, b = old.get("episodes", {}), now["episodes"]
        diffs = [f"{t}: {a.get(t, 0)} -> {b.get(t, 0)} episodes" for t in sorted(set(a) | set(b))
                 if a.get(t, 0) != b.get(t, 0)]
        how = "; ".join(diffs[:5]) + (" ..." if len(diffs) > 5 else "") if diffs else \
            "the same number of episodes, but other files or lengths"
        raise ValueError(f"--resume: the data in {', '.join(now['resolved'])} changed since {ckpt_path} was "
                         f"written ({how}); a resumed run must read the same episodes. Restore the data, or "
                         f"train a new run (--out elsewhere, or --overwrite)")
    if old.get("resolved") != now["resolved"]:
        return {"data": [old.get("resolved"), now["resolved"]]}
    return {}


#: LRAMConfig fields a TrainConfig decides (make_model_config) and a fine-tune must match
FINETUNE_MODEL_FIELDS = ("backbone", "size", "d_model", "n_layers", "n_heads", "slstm_at", "tokens", "context_steps")
_CLI_NAME = {"context_steps": "context", "slstm_at": "slstm-at", "n_heads": "n-heads", "d_model": "d-model",
             "n_layers": "n-layers"}


def check_finetune(model_cfg, wanted_cfg, path) -> None:
    """ValueError naming each model setting where the checkpoint at `path` differs from this run's."""
    diffs = []
    for name in FINETUNE_MODEL_FIELDS:
        have, want = _norm(getattr(model_cfg, name)), _norm(getattr(wanted_cfg, name))
        if have != want:
            diffs.append((name, have, want))
    if diffs:
        shown = "; ".join(f"{n}={h!r} in the checkpoint, {w!r} in this run" for n, h, w in diffs)
        flags = " ".join(f"--{_CLI_NAME.get(n, n).replace('_', '-')} {_flag_value(h)}" for n, h, _ in diffs
                         if n in ("backbone", "size", "d_model", "n_layers", "n_heads", "slstm_at", "tokens",
                                  "context_steps"))
        raise ValueError(f"--finetune-from {path}: its model differs from this run's settings: {shown}. "
                         f"Give the checkpoint's settings{': ' + flags if flags else ''}")


def _flag_value(v) -> str:
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v) if v else "1:0"  # no sLSTM block: the [1:0] ratio
    return str(v)
