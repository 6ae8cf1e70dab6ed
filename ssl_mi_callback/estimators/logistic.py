"""L2-penalised multinomial logistic regressions that share their frames, fitted as one problem.

The linear probe fits one regression per cross-validation fold along its regularisation path, and one
on all frames at the end. Here F such regressions on the same frames x (each training on its own subset)
are one objective over the stacked parameters, so every evaluation of all F is two matrix products
over x (for the logits and the weight gradient) and a handful of element-wise kernels, and one L-BFGS
run (:func:`.lbfgs.minimize`) fits them together: on a GPU, where each small kernel costs its launch,
F folds cost about what one did. The regressions do not interact (the objective is a sum of F terms
in disjoint parameters), so the joint minimum is each one's own minimum. The price: every problem's logits
are computed on all N frames, its held-out ones included (N x F x K values held at once; for the probe's
3 folds, 1.5x the multiply-adds of the three training subsets), and no subset of x is copied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

from . import lbfgs


@dataclass(frozen=True)
class LogisticProblems:
    """F regressions q_f(y | x) = softmax(W_f x + b_f) on shared frames, each minimising::

        L_f = [sum_{i in f} -log q_f(y_i | x_i) - alpha sum_k log softmax(b_f)_k] / (n_f + alpha K) + (wd / 2) ||W_f||^2

    over the n_f frames it trains on; the ``alpha`` pseudo-frames per class at the mean input make b_f the
    add-alpha smoothed class frequencies when W_f = 0. Parameters are stacked: W (F, K, D), b (F, K).
    Build with :meth:`build`."""

    x: Tensor  # (N, D) standardised frames (float32 in the probe)
    label_index: Tensor  # (N, F, 1) int64: y_i for every problem (an expanded view, no copy)
    row_weight: Tensor  # (N, F), x's dtype: 1 / (n_f + alpha K) where frame i trains problem f, else 0
    prior_weight: Tensor  # (F, 1), x's dtype: alpha / (n_f + alpha K)
    n_classes: int

    @classmethod
    def build(cls, x: Tensor, y: Tensor, n_classes: int, trains: Tensor, prior_pseudo_count: float) -> "LogisticProblems":
        """``trains`` (N, F) bool: frame i is in problem f's training set."""
        normaliser = trains.sum(0, dtype=torch.float64) + prior_pseudo_count * n_classes  # (F,)
        row_weight = (trains.double() / normaliser).to(x.dtype)
        prior_weight = (prior_pseudo_count / normaliser).to(x.dtype)[:, None]
        label_index = y[:, None, None].expand(-1, trains.shape[1], 1)
        return cls(x, label_index, row_weight, prior_weight, n_classes)

    @property
    def n_problems(self) -> int:
        return self.row_weight.shape[1]

    def log_proba(self, weight: Tensor, bias: Tensor) -> Tensor:
        """log q_f(k | x_i), shape (N, F, K): one matrix product for all problems."""
        n_problems, n_classes, n_features = weight.shape
        logits = torch.addmm(bias.reshape(-1), self.x, weight.reshape(-1, n_features).T)
        return logits.view(-1, n_problems, n_classes).log_softmax(dim=2)

    def label_log_proba(self, weight: Tensor, bias: Tensor) -> Tensor:
        """log q_f(y_i | x_i), shape (N, F)."""
        return self.log_proba(weight, bias).gather(2, self.label_index).squeeze(2)

    def objective(self, strength: float, weight: Tensor, bias: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """sum_f L_f and its gradient in closed form (no autograd graph), with w_if = ``row_weight``:

        dL/dW_f = sum_i w_if (q_f(. | x_i) - e_{y_i}) x_i^T + wd W_f,
        dL/db_f = sum_i w_if (q_f(. | x_i) - e_{y_i}) + alpha (K softmax(b_f) - 1) / (n_f + alpha K).
        """
        n_problems, n_classes, n_features = weight.shape
        log_proba = self.log_proba(weight, bias)
        data = -(self.row_weight * log_proba.gather(2, self.label_index).squeeze(2)).sum()
        log_prior = bias.log_softmax(dim=1)
        loss = data - (self.prior_weight * log_prior).sum() + 0.5 * strength * (weight * weight).sum()
        residual = log_proba.exp_().mul_(self.row_weight[:, :, None])  # w_if (q_f - e_y), in place
        residual.scatter_add_(2, self.label_index, -self.row_weight[:, :, None])
        grad_weight = torch.addmm(
            weight.reshape(-1, n_features), residual.view(-1, n_problems * n_classes).T, self.x, beta=strength
        )
        grad_bias = residual.sum(0) + self.prior_weight * (n_classes * log_prior.exp() - 1.0)
        return loss, grad_weight.view_as(weight), grad_bias

    def solve(
        self, strength: float, weight: Tensor, bias: Tensor, *, max_iter: int, tolerance: float
    ) -> Tuple[Tensor, Tensor, int]:
        """Minimise sum_f L_f from (weight, bias) with at most ``max_iter`` iterations of
        :func:`.lbfgs.minimize` (torch's L-BFGS with a strong-Wolfe line search, history 20, gradient
        tolerance ``tolerance``): the stacked solution and the iterations used."""
        n_weights = weight.numel()

        def objective(flat: Tensor) -> Tuple[Tensor, Tensor]:
            loss, grad_weight, grad_bias = self.objective(strength, flat[:n_weights].view_as(weight),
                                                          flat[n_weights:].view_as(bias))
            return loss, torch.cat([grad_weight.reshape(-1), grad_bias.reshape(-1)])

        with torch.no_grad():
            result = lbfgs.minimize(
                objective,
                torch.cat([weight.reshape(-1), bias.reshape(-1)]),
                max_iter=max_iter,
                tolerance_grad=float(tolerance),
                tolerance_change=1e-12,
                history_size=20,
            )
        return result.x[:n_weights].view_as(weight), result.x[n_weights:].view_as(bias), result.n_iter
