"""Trajectory data: the HDF5 store (`store`), window sampling (`sampling`), the loader benchmark (`bench`)."""
from __future__ import annotations

from lramlab.data.store import (
    TaskData,
    TrajectoryFileError,
    check_dataset,
    find_tasks,
    read_episode,
    write_episode,
    write_stats,
)

__all__ = ["TaskData", "TrajectoryFileError", "check_dataset", "find_tasks", "read_episode",
           "write_episode", "write_stats"]
