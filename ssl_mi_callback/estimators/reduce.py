"""The injectable cross-process reduction.

Estimators that accumulate fixed-size sums (k-means) accept ``reduce_fn``: a function that returns
the elementwise sum of its tensor over all processes. Single process: the identity (default). Under
torch.distributed the caller passes, for example::

    def all_reduce_sum(t):
        torch.distributed.all_reduce(t)
        return t

so that no estimator imports torch.distributed itself.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

ReduceFn = Callable[[Tensor], Tensor]


def no_reduce(tensor: Tensor) -> Tensor:
    """Single-process reduction: the tensor itself."""
    return tensor
