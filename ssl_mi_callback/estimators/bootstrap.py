"""The bound on the eval part from per-utterance sufficient statistics: point estimate, delete-one-
utterance jackknife bias correction, and bootstrap interval over utterances (cheap, vectorised).

For each eval utterance u the statistics are: ``class_counts[u, k]`` (frames with target k),
``prob_sums[u, k]`` (sum over its frames of q(k | x)) and ``cost_sums[u]`` (sum over its frames of
-log2 q(target | x)). With multiplicities w over utterances (all ones for the data itself, a
bootstrap resample otherwise), N = sum_u w_u n_u, p_k = (w @ class_counts)_k / N,
qbar_k = (w @ prob_sums)_k / N and

    bound(w) = -sum_k p_k log2 qbar_k  -  (w @ cost_sums) / N        (bits).

The first term is non-linear in the counts and biased by O(1/N) (low, for a calibrated probe, like
the plug-in entropy; exactly 0 when the probe ignores its input). The point estimate removes that
bias with the delete-one-utterance jackknife, bound - (U - 1) (mean_u bound(without u) - bound),
which counts utterances, not frames: frames of one utterance are alike, so a frame-count rule such
as Miller-Madow, (K - 1) / 2N, under-corrects. The interval is the basic bootstrap interval of the
uncorrected resampled bounds, whose centre is the bootstrap's own bias-corrected estimate; both
corrections estimate the same bias, so the point estimate sits inside the interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from .information import LN2

_MAX_ENTRIES = 1 << 22  # resamples x utterances held at once
_TINY = 1e-300


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


@dataclass(frozen=True)
class EvalStatistics:
    """Per-utterance sufficient statistics of the bound, float64 on the CPU.

    With qbar the mean of q over all eval frames, the bound for multiplicities w is computed as

        bound(w) = (w @ gain_sums) / N  -  sum_k p_k log2((w @ ratio_sums)_k / N),

    ``gain_sums[u]`` = sum over u's frames of log2 q(target | x) - log2 qbar(target) and
    ``ratio_sums[u, k]`` = sum over u's frames of q(k | x) / qbar_k (the second term is 0 for the data
    itself). This is the formula of the module docstring rearranged so that a probe that ignores its
    input gives exactly 0, also in every resample, instead of a difference of two rounded sums.
    """

    class_counts: Tensor  # (U, K) frames with target k
    ratio_sums: Tensor  # (U, K) sum of q(k | x) / qbar_k
    gain_sums: Tensor  # (U,) sum of log2 q(target | x) - log2 qbar(target)
    cost_sums: Tensor  # (U,) sum of -log2 q(target | x)
    frames: Tensor  # (U,)

    @classmethod
    def from_frames(cls, log_proba_nats: Tensor, targets: Tensor, groups: Tensor) -> "EvalStatistics":
        """From the probe's log q(. | x) in nats (frames, K), the targets and utterance ids of the frames."""
        log_proba = log_proba_nats.detach().double().cpu()
        targets, groups = targets.cpu(), groups.cpu()
        n_frames, n_classes = log_proba.shape
        _, utterance = torch.unique(groups, return_inverse=True)
        n_utterances = int(utterance.max()) + 1
        log_qbar = torch.logsumexp(log_proba, dim=0) - math.log(n_frames)
        class_counts = torch.zeros(n_utterances, n_classes, dtype=torch.float64)
        class_counts.index_put_((utterance, targets), torch.ones(n_frames, dtype=torch.float64), accumulate=True)
        ratio_sums = torch.zeros(n_utterances, n_classes, dtype=torch.float64)
        ratio_sums.index_add_(0, utterance, (log_proba - log_qbar).exp())
        log_q = log_proba.gather(1, targets[:, None])[:, 0]
        gain_sums = torch.zeros(n_utterances, dtype=torch.float64).index_add_(0, utterance, (log_q - log_qbar[targets]) / LN2)
        cost_sums = torch.zeros(n_utterances, dtype=torch.float64).index_add_(0, utterance, -log_q / LN2)
        return cls(class_counts, ratio_sums, gain_sums, cost_sums, class_counts.sum(1))

    @property
    def n_utterances(self) -> int:
        return int(self.frames.shape[0])

    def bound(self, weights: Optional[Tensor] = None) -> Tensor:
        """The uncorrected bound in bits for multiplicities ``weights`` (..., U); None = the data."""
        if weights is None:
            weights = torch.ones(self.n_utterances, dtype=torch.float64)
        return self._bound(weights @ self.class_counts, weights @ self.ratio_sums, weights @ self.gain_sums,
                           weights @ self.frames)

    def cross_entropy(self) -> float:
        """Mean -log2 q(target | x) over the eval frames."""
        return float(self.cost_sums.sum() / self.frames.sum())

    def jackknife_bias(self) -> float:
        """Delete-one-utterance jackknife estimate of the bias of the bound, in bits:
        (U - 1) (mean_u bound(without u) - bound). The corrected bound is bound - jackknife_bias."""
        totals = (self.class_counts.sum(0), self.ratio_sums.sum(0), self.gain_sums.sum(), self.frames.sum())
        full = self._bound(*totals)
        leave_one_out = self._bound(
            (totals[0][None, :] - self.class_counts).clamp_min(0.0),
            totals[1][None, :] - self.ratio_sums,
            totals[2] - self.gain_sums,
            totals[3] - self.frames,
        )
        return float((self.n_utterances - 1) * (leave_one_out.mean() - full))

    @staticmethod
    def _bound(counts: Tensor, ratios: Tensor, gains: Tensor, frames: Tensor) -> Tensor:
        log_ratio = torch.log(ratios.clamp_min(_TINY)) - torch.log(frames)[..., None]
        shift = torch.where(counts > 0, counts * log_ratio, torch.zeros_like(counts)).sum(-1) / LN2
        return (gains - shift) / frames

    def plugin_entropy(self) -> float:
        """Plug-in entropy of the eval targets, bits."""
        counts = self.class_counts.sum(0)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * torch.log(p)).sum() / LN2)


def bound_interval(
    statistics: EvalStatistics, n_resamples: int, generator: torch.Generator, level: float = 0.95
) -> Tuple[float, float]:
    """Basic bootstrap interval of the bound, utterances resampled with replacement (the probe and the
    clusters are not refitted): [2 b - q_hi, 2 b - q_lo] with b the uncorrected bound and q_lo, q_hi
    the quantiles of the uncorrected resampled bounds.

    It takes the distribution of (estimate - truth) to be that of (resample - estimate), so it carries
    the estimate's bias: its centre is the bootstrap bias-corrected bound 2 b - mean(resamples), which
    the jackknife-corrected point estimate matches up to noise. (The percentile interval of the same
    resamples would sit around b - bias, below the point estimate.)
    """
    n_utterances = statistics.n_utterances
    block = max(1, _MAX_ENTRIES // n_utterances)
    resampled = []
    for start in range(0, n_resamples, block):
        weights = resample_weights(n_utterances, min(block, n_resamples - start), generator)
        resampled.append(statistics.bound(weights))
    return basic_interval(float(statistics.bound()), torch.cat(resampled), level)
