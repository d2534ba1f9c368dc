"""lramlab — a research workbench for Large Recurrent Action Models.

`import lramlab` needs only torch, numpy, h5py and pyyaml; simulators, umap, plotly,
papermill and mamba-ssm are imported where used (see `lramlab._optional.require`).
"""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: Repository root (holds `data_manifests/` and `notebooks/` for an editable install).
REPO_ROOT = Path(__file__).resolve().parent.parent


def _plain_progress_when_headless() -> None:
    """Under `lramlab pipeline` (env LRAMLAB_HEADLESS=1: a papermill kernel no front end watches)
    progress bars are plain text: `tqdm.auto` would pick the notebook's widget bar, which is saved
    frozen at its first state ("0/30") since no widget state is kept. Text bars end in their final
    state once the pipeline folds their carriage returns."""
    import os

    if os.environ.get("LRAMLAB_HEADLESS") != "1":
        return
    try:
        import tqdm.auto
        import tqdm.autonotebook
        import tqdm.std
    except ImportError:
        return
    tqdm.auto.tqdm = tqdm.autonotebook.tqdm = tqdm.std.tqdm
    tqdm.auto.trange = tqdm.autonotebook.trange = tqdm.std.trange


_plain_progress_when_headless()
