"""The few ``torch.distributed`` calls the workflows and searches share: this process's rank and the
world size (``(0, 1)`` without an initialised process group), gathering Python objects from every
rank, and a barrier. Work is split by index (item ``i`` on rank ``i % world``)."""

from __future__ import annotations

from typing import Any


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_objects(own: Any, world: int) -> list[Any]:
    """Every rank's ``own`` in rank order (``[own]`` in one process)."""
    if world == 1:
        return [own]
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, own)
    return parts


def broadcast_object(obj: Any, src: int, world: int) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(world: int) -> None:
    """Wait for every rank (nothing in one process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
