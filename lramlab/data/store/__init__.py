"""HDF5 trajectory store: one file per episode, one directory per task (LRAM's released layout).

Layout::

    DIR/<domain>/<name>/episode_000000.hdf5   one episode per file
    DIR/<domain>/<name>/meta.json             {"task": id, "policy": ..., "seed": ..., ...}
    DIR/<domain>/<name>/stats.json            episode lengths, returns (raw, and in the model's units
                                              under the task's reward rule), success; `write_stats`
    DIR/<domain>/<name>/packed.hdf5           optional: all episodes concatenated (`pack_task`,
                                              `lramlab data pack`); readers use it while current

A task directory may also be passed directly (the released layout: a flat directory of episode
files). Episode datasets (T timesteps, O state dims, A continuous action dims):

    states         (T, O) float32, or (T, 1, 64, 64) uint8 for image tasks
    actions        (T,) int64 (discrete) or (T, A) float32 in [-1, 1] (continuous)
    rewards        (T,) float32, as the source gave them (raw env rewards for generated data; the
                   model's reward rule, e.g. Atari's clip, is applied when windows are read)
    returns_to_go  (T,) float32, raw (not divided by the reward scale): rtg[t] = sum(rewards[t:])
    dones          (T,) bool, True only at the last step of an episode that terminated
    success        (T,) bool, optional

File attrs: `task`, `index` (written first) and `complete=1` (written last, just before the
atomic rename). A reader rejects a file with lramlab's first attributes but no `complete` (an
unfinished write). A file with none of them is foreign -- LRAM's released data -- and is read
as is, without a flag; its `returns_to_go`, when missing, are computed from the rewards.

Scale. Every reader in a process takes its open files from one LRU (`handles.POOL`, at most
`max_open_files()`, default 128 and never more than a quarter of `ulimit -n`), whatever the number
of tasks or episodes; packed files are read with pread, without memory maps. An OS error
(EMFILE, EACCES, EIO, ENOSPC) is raised as the OSError it is, never reported as a damaged file.
`check_dataset` (`lramlab data check`, and the start of `lramlab train`) reads every file and
compares it with its task's spec, caching each file's result by (name, size, mtime).

Atomicity vs durability. Every write goes to a hidden tmp file that is renamed into place only
when whole, so a KILLED process never leaves a file that looks complete. Durability (surviving a
POWER LOSS) needs fsync, which costs milliseconds per file: `write_episode(fsync=True)` (default)
syncs each file; `StoreWriter` (used by `lramlab data generate`) writes without fsync and syncs the
files and the directory once per `sync_every` episodes / `sync_seconds` / at close. Before its
first unsynced write it durably records the lowest unsynced index (and the kernel boot id) in
`.unsynced.json`; the next writer on that directory (`recover_unsynced`) keeps those files if the
machine has not rebooted since (a killed process: the data is whole in the page cache) and
otherwise deletes every episode file from that index on, so after a power loss the possibly
damaged tail (zero-length, truncated or zero-filled files) is regenerated instead of trusted. A
damaged file is also rejected by every reader when it fails to open (HDF5 detects a file shorter
than its superblock says; damaged metadata) or lacks `complete` -- but zeroed blocks inside raw
uncompressed data read back as zeros, which is why the marker, not the reader, guards the tail.

Every read is validated; a bad file raises `TrajectoryFileError` naming the file, the dataset
and what was expected. Reading a window reads only that slice (h5py hyperslab reads).
"""
from __future__ import annotations
from __future__ import annotations

from lramlab._io import atomic_write_text
from lramlab.data.store.check import (DatasetReport, TaskReport, check_dataset, check_main, check_task,
                                      data_target_return, find_task_dirs, pack_main, task_stats, write_stats)
from lramlab.data.store.episodes import (ALL_KEYS, EPISODE_GLOB, LRAMLAB_ATTRS, MAX_ACT_DIM, OPTIONAL_KEYS,
                                         PACKED_NAME, REQUIRED_KEYS, UNSYNCED_NAME, TrajectoryFileError,
                                         episode_filename, episode_length, find_tasks, is_complete,
                                         list_episode_files, read_episode, returns_to_go, task_id_of,
                                         write_episode)
from lramlab.data.store.handles import max_open_files, set_max_open_files
from lramlab.data.store.packed import pack_task, use_packed
from lramlab.data.store.taskdata import TaskData
from lramlab.data.store.validate import CACHE_NAME, TaskExpect, inspect_file, task_expect
from lramlab.data.store.writer import StoreWriter, recover_unsynced

__all__ = ["ALL_KEYS", "CACHE_NAME", "EPISODE_GLOB", "LRAMLAB_ATTRS", "MAX_ACT_DIM", "OPTIONAL_KEYS", "PACKED_NAME",
           "REQUIRED_KEYS", "UNSYNCED_NAME", "DatasetReport", "StoreWriter", "TaskData", "TaskExpect", "TaskReport",
           "TrajectoryFileError", "atomic_write_text", "check_dataset", "check_main", "check_task",
           "data_target_return", "episode_filename", "episode_length", "find_task_dirs", "find_tasks",
           "inspect_file", "is_complete", "list_episode_files", "max_open_files", "pack_main", "pack_task",
           "read_episode", "recover_unsynced", "returns_to_go", "set_max_open_files", "task_expect", "task_id_of",
           "task_stats", "use_packed", "write_episode", "write_stats"]
