"""Bootstrap intervals over utterances, from per-utterance sufficient statistics (cheap, vectorised)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .information import entropy_bits

_MAX_WEIGHT_ENTRIES = 1 << 22  # resamples x utterances held at once


def resample_weights(n_utterances: int, n_resamples: int, generator: torch.Generator) -> Tensor:
    """(n_resamples, n_utterances) float64 multiplicities of utterances drawn with replacement."""
    draws = torch.randint(n_utterances, (n_resamples, n_utterances), generator=generator)
    weights = torch.zeros(n_resamples, n_utterances, dtype=torch.float64)
    return weights.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))


def basic_interval(estimate: float, resampled: Tensor, level: float = 0.95) -> Tuple[float, float]:
    """Basic (reverse-percentile) bootstrap interval [2 t - q_hi, 2 t - q_lo], with q_lo, q_hi the
    (1 -/+ level) / 2 quantiles of the resampled statistic: it carries the resampling bias to the
    other side (the plug-in entropy of a resample is biased low, so the truth tends to lie above t)."""
    tail = (1.0 - level) / 2.0
    low, high = torch.quantile(resampled.double(), torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return 2.0 * estimate - float(high), 2.0 * estimate - float(low)


def bound_interval(
    class_counts: Tensor,
    cross_entropy_sums: Tensor,
    n_resamples: int,
    generator: torch.Generator,
    level: float = 0.95,
) -> Tuple[float, float]:
    """Bootstrap interval of H(target) - CE over utterances resampled with replacement.

    ``class_counts`` (U, K): target counts per utterance; ``cross_entropy_sums`` (U,): per utterance
    sum of -log2 q(target | x). A resample with multiplicities w gives counts w @ class_counts and
    CE = (w @ cross_entropy_sums) / (w @ frames).
    """
    class_counts = class_counts.double().cpu()
    cross_entropy_sums = cross_entropy_sums.double().cpu()
    frames = class_counts.sum(1)
    estimate = float(entropy_bits(class_counts.sum(0)) - cross_entropy_sums.sum() / frames.sum())
    n_utterances = class_counts.shape[0]
    block = max(1, _MAX_WEIGHT_ENTRIES // n_utterances)
    resampled = []
    for start in range(0, n_resamples, block):
        weights = resample_weights(n_utterances, min(block, n_resamples - start), generator)
        cross_entropy = (weights @ cross_entropy_sums) / (weights @ frames)
        resampled.append(entropy_bits(weights @ class_counts) - cross_entropy)
    return basic_interval(estimate, torch.cat(resampled), level)
