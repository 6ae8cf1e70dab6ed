"""The one place that talks to torch.distributed. Everything else receives a :data:`GatherFn`.

Evaluation shards the held-out batches over ranks (rank r runs batches r, r+W, ...), then every rank
gathers all features in the global batch order and computes the same estimate from the same data, so
every rank logs an identical value and a run with W ranks gives the value of a run with one.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

GatherFn = Callable[[Any], list]
"""Takes this rank's picklable object; returns every rank's object, ordered by rank."""


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_objects(local: Any) -> list:
    """All-gather a picklable object over the default process group (a one-item list without one)."""
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return [local]
    gathered: list = [None] * world_size
    torch.distributed.all_gather_object(gathered, local)
    return gathered

