"""One process or several under ``torchrun``: rank, device and the few collectives we use.

``torchrun --nproc_per_node=K -m training.train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` reads them, picks the device (``cuda:LOCAL_RANK`` or the CPU)
and starts a process group (NCCL on GPUs, gloo on the CPU). Without those variables
everything here is a no-op on a world of one, so the same code runs headless on one
device.
"""
from __future__ import annotations

import datetime
import gc
import inspect
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

from shortcut_core.devices import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False  # whether this object started a process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (float64 or int64 tensors on any device)."""
        if self.active:
            moved = tensor.to(self.device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
        return bool(self.all_reduce_sum(t).item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable plain data), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.initialized and dist.is_initialized():
            # A two-rank CPU run once wrote its output and then lost rank 1 to SIGABRT
            # ("terminate called without an active exception") at exit. DDP's reducer sits in
            # reference cycles; if the interpreter's final teardown frees it, gloo work still
            # holding tensors needs the GIL while Python is shutting down. So: collect those
            # cycles while Python is alive, let every rank arrive, then tear down.
            gc.collect()
            self.barrier()
            dist.destroy_process_group()
            self.initialized = False


def pick_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when a GPU is there, else the CPU."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = resolve_device(spec)
    except ValueError as exc:
        raise ValueError(f"--device: {exc}") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def setup(device: str = "auto", timeout_minutes: float = 60.0) -> Dist:
    """Read the torchrun environment, choose the device, start the process group if K > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    d = Dist(rank=rank, world_size=world, local_rank=local_rank, device=dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {}
        if dev.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
            kwargs["device_id"] = dev  # binds NCCL to this GPU up front (torch >= 2.3)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
        d.initialized = True
    return d


def share(items: Sequence, rank: int, world_size: int) -> list:
    """Rank ``rank``'s disjoint share of ``items``: every ``world_size``-th one, from ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return list(items[rank::world_size])
