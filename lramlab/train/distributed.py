"""Distributed data parallel set-up for `lramlab train` (paper App. C.4: DDP across GPUs).

`torchrun --nproc_per_node=N -m lramlab.train ...` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; `init_distributed()` reads them and starts a process group
(gloo on a CPU, NCCL on GPUs). Without them it returns a single-process `DistInfo` and
nothing is initialised, so the same code path trains on one CPU, one GPU or many.

Rank 0 alone logs and writes checkpoints; every rank holds the same weights because DDP
averages gradients before each optimizer step.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (0, 1, 0 when absent)."""
    def _int(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError as err:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer") from err

    return _int("RANK", 0), _int("WORLD_SIZE", 1), _int("LOCAL_RANK", 0)


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' -> this rank's GPU when CUDA is available, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch.cuda.is_available() is False")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if device.startswith("cuda:"):
        return torch.device(device)
    if device != "cpu":
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return torch.device("cpu")


def init_distributed(device: torch.device) -> DistInfo:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1)."""
    rank, world, local = env_world()
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, backend=backend)


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `x` over ranks (a copy; `x` itself is left alone)."""
    if not info.distributed:
        return x.clone()
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank `src`'s python object on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def free_port() -> int:
    """A free TCP port on localhost (for tests that start their own process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gather_objects(obj, info: DistInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] (picklable objects); [obj] in a single process."""
    if not info.distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
