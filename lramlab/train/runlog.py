"""What a run directory records besides checkpoints: versions, JSON files, metrics.jsonl and
TensorBoard events (rank 0)."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lramlab._dataclass_cli import json_dumps
from lramlab._io import atomic_write_text

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


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a torn (unparseable) one."""
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return float("inf")


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_dumps(obj, indent=2, sort_keys=True, default=str))


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
            # drop lines past the checkpoint: the resumed run writes them again (and a line torn
            # by a killed process: it can only be the last one, past the checkpoint too)
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and _step_of(ln) <= resume_step]
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
        self.f.write(json_dumps(rec) + "\n")
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


