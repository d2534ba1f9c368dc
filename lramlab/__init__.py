"""lramlab — a research workbench for Large Recurrent Action Models.

`import lramlab` needs only torch, numpy, h5py and pyyaml; simulators, umap, plotly,
papermill and mamba-ssm are imported where used (see `lramlab._optional.require`).
"""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: Repository root (holds `data_manifests/` and `notebooks/` for an editable install).
REPO_ROOT = Path(__file__).resolve().parent.parent
