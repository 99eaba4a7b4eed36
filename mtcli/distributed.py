"""torch.distributed under torchrun: which process this is, and the few collectives training needs.

`torchrun --nproc_per_node N -m mtcli train CONFIG` sets RANK, LOCAL_RANK and WORLD_SIZE; without them
(a plain `mtcli train`) there is one process and every function here is a no-op. torch is imported by the
functions that need it, so that asking which process this is costs nothing.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, validates and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def start(world: World, device: torch.device) -> None:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA)."""
    import torch.distributed as dist

    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)


def stop(clean: bool = True) -> None:
    """Leave the process group; after a normal end, first wait for everyone (gloo aborts a process that
    tears down its connections while a peer still uses them). After an error, do not wait: the peers may
    never arrive, and torchrun stops them when this process exits."""
    import torch.distributed as dist

    if dist.is_initialized():
        # A finished Trainer sits in a reference cycle with its DDP wrapper, which holds the group: collect it
        # now, while the group and the interpreter are alive. Left to a later collection, the group's gloo
        # threads may be torn down during interpreter exit, which aborts the process (SIGABRT).
        gc.collect()
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def all_sum(values: list[float], world: World) -> list[float]:
    """Element-wise sum over all processes (float64, so step counts and seconds stay exact)."""
    import torch
    import torch.distributed as dist

    if not world.distributed:
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast(obj: Any, world: World, group: Any = None) -> Any:
    """Rank 0's `obj` on every process (plain picklable data, sent once per validation or at start)."""
    import torch.distributed as dist

    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


# A preparation of a large corpus (tokenizer training, encoding) can take far longer than the default
# collective timeout (30 minutes for gloo, 10 for NCCL): the processes waiting for rank 0 wait this long.
PREPARE_TIMEOUT = timedelta(hours=6)


@contextlib.contextmanager
def patient_group(world: World, timeout: timedelta = PREPARE_TIMEOUT) -> Iterator[Any]:
    """A gloo group of every process whose collectives wait up to `timeout` (None without torchrun)."""
    import torch.distributed as dist

    if not world.distributed:
        yield None
        return
    group = dist.new_group(backend="gloo", timeout=timeout)
    try:
        yield group
    finally:
        dist.destroy_process_group(group)


T = TypeVar("T")


def share(items: list[T], world: World) -> list[T]:
    """This process's share of one update's batches: every N-th, from its rank on. The shares of the N
    processes are disjoint and together hold every batch."""
    return items[world.rank:: world.size]


def gather(obj: Any, world: World) -> list[Any]:
    """Every process's `obj`, in rank order, on every process."""
    import torch.distributed as dist

    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
