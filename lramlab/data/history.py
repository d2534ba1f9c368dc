"""Windows that span consecutive episodes of a learning history (Algorithm Distillation, App. D.4).

A task directory holds one learning history (e.g. a Dark-Room goal's, `lramlab data generate
--policy history`), its episodes in learning order; a window of C timesteps may cover the end of
one episode and the start of the next, so a model sees how returns improve from one episode to the
next. Shape letters as in `lramlab.data.sampling`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lramlab.data.sampling import VAL_FRACTION, TrajectoryDataset



class HistoryDataset(TrajectoryDataset):
    """Windows of C timesteps over a task's episodes laid end to end (its learning history).

    A task directory holds one history, episodes in file order. The split is contiguous, not
    hashed: the LAST k = max(1, round(val_fraction * n)) episodes are the validation part (tasks
    with >= 2 episodes), so training windows never contain validation steps and validation
    windows never reach back into training episodes. `history_start` drops that leading
    fraction of the training part (e.g. the early, random-walk episodes).

    Window end points are every timestep of the split (episodes weighted by length, as in
    `TrajectoryDataset`); a window ending at step `end` of episode i holds the previous C steps of
    the split's episodes i, i-1, ..., right-padded where the split starts (the real steps first, as
    in `TrajectoryDataset`: a window from the split's first step is what the agent sees from
    `init_state`). R̂ and rewards are the episodes' own (R̂ restarts at each episode's return),
    as in AD with RTG conditioning.
    """

    def __init__(self, roots, split: str = "train", context_len: int = 200,
                 val_fraction: float = VAL_FRACTION, history_start: float = 0.0, **kw: Any):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not 0.0 <= history_start < 1.0:
            raise ValueError(f"history_start={history_start!r}: expected 0 <= value < 1")
        super().__init__(roots, split="all", context_len=context_len, val_fraction=val_fraction, **kw)
        self.split = split
        self.history_start = float(history_start)
        eps = []
        for d in self.data:
            n = len(d)
            k = max(1, int(val_fraction * n + 0.5)) if (n >= 2 and val_fraction > 0) else 0
            if split == "val":
                sel = np.arange(n - k, n)
            elif split == "train":
                first = int(history_start * (n - k))
                sel = np.arange(first, n - k)
            else:
                sel = np.arange(n)
            eps.append(sel.astype(np.int64))
        self.set_episodes(eps)
        self.history_episodes = [_history_episodes(d) for d in self.data]

    def fill_window(self, out: dict, b: int, ti: int, episode: int, end: int, start: int | None = None) -> None:
        """Row b := the C steps ending at step `end` of file episode `episode`, across episodes.

        `start` (a step of the same episode, as `sampling.validation_items` gives) keeps the
        window inside that episode, like the base class; without it the window reaches back
        through the split's earlier episodes.
        """
        C = self.context_len
        eps = self.episodes[ti]
        pos = int(np.searchsorted(eps, episode))
        if pos >= len(eps) or eps[pos] != episode:
            raise ValueError(f"{self.tasks[ti]}: episode {episode} is not in the {self.split!r} split")
        if start is not None:
            if not max(0, int(end) - C + 1) <= int(start) <= int(end):
                raise ValueError(f"window start {start} outside [{max(0, int(end) - C + 1)}, {end}]")
            pos_stop = pos  # do not cross into the previous episode
        else:
            h = self.history_episodes[ti]  # do not cross into the previous learner's history
            pos_stop = int(np.searchsorted(eps, (int(episode) // h) * h)) if h else 0
        pieces = []
        need, cur_end = C, int(end)
        while need > 0 and pos >= pos_stop:
            ep = int(eps[pos])
            first = max(0, cur_end - need + 1) if start is None else int(start)
            pieces.append(self.read_window(ti, ep, first, cur_end + 1))
            need -= cur_end - first + 1
            pos -= 1
            if pos >= 0:
                cur_end = int(self.data[ti].lengths[eps[pos]]) - 1
        pieces.reverse()
        w = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
        self.write_row(out, b, ti, w)

    def validation_items(self, domain: str, rank: int = 0, world_size: int = 1) -> list[tuple[int, int, int]]:
        """Windows tiling each task's split stream (its episodes end to end) from the END backwards,
        so every timestep is a target exactly once and windows span episode boundaries (the
        earliest one is shorter, right-padded). Window j goes to rank j % world_size."""
        C = self.context_len
        items = []
        for ti in self.domain_tasks[domain]:
            n = int(self.n_steps[ti])
            if n == 0:
                continue
            ends = np.arange(n - 1, -1, -C)[::-1]
            eps, steps = self.locate(ti, ends)
            items.extend((ti, int(e), int(s)) for e, s in zip(eps, steps))
        return items[rank::world_size]


def _history_episodes(data) -> int:
    """meta.json's ``history_episodes`` (episodes per learner; 0: one history per directory)."""
    n = data.meta.get("history_episodes", 0) if isinstance(data.meta, dict) else 0
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{data.task_dir / 'meta.json'}: 'history_episodes' must be a non-negative integer, "
                         f"got {n!r}")
    return n
