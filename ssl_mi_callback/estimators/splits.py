"""Splits by utterance (group), never by frame, and per-utterance centring."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .validation import EstimatorInputError


def split_by_group(
    groups: Tensor,
    first_fraction: float,
    generator: torch.Generator,
    *,
    names: Tuple[str, str] = ("fit", "eval"),
    min_groups_per_part: int = 1,
) -> Tuple[Tensor, Tensor]:
    """Boolean frame masks (first, second) assigning whole groups to two parts.

    The distinct group ids are sorted and permuted with ``generator``; the first
    ``round(first_fraction * n_groups)`` of them (at least 1, at most n_groups - 1) form the first
    part. The split depends only on the set of ids and the generator, not on frame order.
    """
    unique = torch.unique(groups)
    n_groups = int(unique.shape[0])
    need = 2 * min_groups_per_part
    if n_groups < 2:
        raise EstimatorInputError(
            f"all frames belong to a single utterance (group {int(unique[0])}); the {names[0]}/{names[1]} "
            f"split is by utterance and needs at least {need} utterances"
        )
    n_first = min(max(round(first_fraction * n_groups), 1), n_groups - 1)
    n_second = n_groups - n_first
    if min(n_first, n_second) < min_groups_per_part:
        raise EstimatorInputError(
            f"{n_groups} utterances split into {n_first} {names[0]} / {n_second} {names[1]}; "
            f"need at least {min_groups_per_part} utterances per part ({need} in all)"
        )
    order = torch.randperm(n_groups, generator=generator).to(unique.device)
    first = torch.isin(groups, unique[order[:n_first]])
    return first, ~first


def center_by_group(x: Tensor, groups: Tensor) -> Tensor:
    """``x`` [N, D] minus the mean of its group (utterance): x_i - mean_{j: g_j = g_i} x_j.

    Removes what is constant over an utterance (voice, channel, loudness) from a view before k-means
    and the probe, so the bound counts only structure that varies within utterances.
    """
    _, index = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(int(index.max()) + 1 if index.numel() else 0, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, index, x.double())
    counts = torch.bincount(index, minlength=sums.shape[0]).to(sums.dtype)[:, None]
    return (x.double() - (sums / counts)[index]).to(x.dtype)
