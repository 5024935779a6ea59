"""One process or many (torchrun): the device, the process group, and the few collectives training needs.

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) the group uses nccl on CUDA and gloo on CPU; alone, every
collective is the identity, so the loop reads the same either way.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from tedloc_edge.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value of a picklable object, on every rank."""
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sum a dict of numbers over ranks (same keys on every rank)."""
        if not self.active:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        tdist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel around the trainable module when several processes run."""
        if not self.active:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def close(self) -> None:
        if self.active and tdist.is_initialized():
            # DDP's reducer keeps the group alive through reference cycles; free it now, while the interpreter
            # is whole, so gloo's threads never outlive it (they abort the process at exit otherwise).
            gc.collect()
            tdist.destroy_process_group()
            gc.collect()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def setup_distributed(device_name: str = "auto") -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world > 1 and not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group(backend=backend)
        log.info("process %d of %d on %s (%s)", rank, world, device, backend)
    if device.type == "cpu" and world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return Dist(rank, world, device)
