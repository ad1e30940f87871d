"""The few ``torch.distributed`` calls the workflows and searches share: this process's rank and the
world size (``(0, 1)`` without an initialised process group), gathering Python objects from every
rank, a barrier, and the check that every rank works on the same groups. Work is split by index
(item ``i`` on rank ``i % world``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import InvalidInputError


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


def require_same(value: Any, world: int, what: str) -> None:
    """Refuse to go on when the ranks hold different ``value`` s (nothing in one process). Work is
    split and merged by group id: a rank whose model traced into other groups, or holds other
    weights, would score other channels under the same ids, and the merged result would be wrong
    without a sign."""
    if world == 1:
        return
    parts = gather_objects(value, world)
    odd = [r for r, part in enumerate(parts) if part != parts[0]]
    if odd:
        raise InvalidInputError(
            f"{what} differ between ranks (rank 0 and rank(s) {odd}): every rank must build the same model "
            "(the same weights: seed its initialisation or load one checkpoint) on the same example inputs. A "
            "model whose forward iterates a Python set runs its ops in an order that depends on PYTHONHASHSEED, "
            "and the IR numbers its groups in that order: set PYTHONHASHSEED to one value on every rank.")


def require_same_groups(groups: Iterable[Any], world: int) -> None:
    """:func:`require_same` on label groups: their ids, sizes, steps and parameter axes."""
    if world > 1:
        require_same([(g.gid, g.size, g.step, sorted(g.members)) for g in groups], world,
                     "the IR's prunable groups (ids, sizes, parameters)")
