"""Plug-in information quantities in bits."""
from __future__ import annotations

import math

import torch
from torch import Tensor

LN2 = math.log(2.0)


def entropy_bits(counts: Tensor) -> Tensor:
    """Empirical entropy H = -sum_k (n_k / n) log2(n_k / n) along the last dimension (0 log 0 = 0).

    Computed as log2 n - (1/n) sum_k n_k log2 n_k in float64.
    """
    counts = counts.double()
    total = counts.sum(-1)
    return (torch.log(total) - torch.special.xlogy(counts, counts).sum(-1) / total) / LN2
