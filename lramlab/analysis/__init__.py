"""Study analyses: embeddings (UMAP + silhouette), the latency/throughput/memory grid, plotly figures.

    from lramlab.analysis import embeddings, latency, plots
    res = embeddings.embed_tasks(model, embeddings.make_dataset("data/"), n_per_task=32)
    fig = plots.umap_scatter(res)

Submodules import their optional packages (umap-learn, scikit-learn, plotly) only when used,
so `import lramlab.analysis` needs nothing beyond lramlab's core.
"""
from __future__ import annotations

import importlib

__all__ = ["embeddings", "latency", "plots"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
