"""L-BFGS with a strong-Wolfe line search that reads the device once per objective evaluation.

The algorithm is ``torch.optim.LBFGS(line_search_fn="strong_wolfe")``'s (itself minFunc's): the same first
step ``min(1, 1 / |g|_1)``, curvature pairs kept when ``s^T y > 1e-10``, line search (bracketing, then a
cubic-interpolation zoom, c1 = 1e-4, c2 = 0.9) and stopping rules, so the iterates agree with torch's up to
rounding (torch computes step lengths and the Wolfe tests on float32 tensors; here the tests are made in
float32 and step lengths rounded to it, while the cubic step itself is found in float64, so counts can
differ once a search works at float32's resolution). What differs is how it computes, for a GPU:

- the direction ``-H g`` uses the compact form of the L-BFGS inverse Hessian (Byrd, Nocedal & Schnabel
  1994, eq. 3.13), a few matrix products over the stacked pairs instead of 4 m vector operations::

      H = gamma I + [S  gamma Y] [[R^-T (D + gamma Y^T Y) R^-1, -R^-T], [-R^-1, 0]] [S^T; gamma Y^T]

  with S, Y the last m steps and gradient changes (columns, oldest first), R the upper triangle of
  S^T Y, D its diagonal and gamma = s^T y / y^T y of the newest pair;
- the numbers the line search and the stopping rules compare (f, g^T d, max |g|, max |d|) come back from
  the device together, once per evaluation and once per iteration, instead of once per comparison: torch's
  version waits for a GPU about 45 times per iteration with a full history (by our reading of
  torch/optim/lbfgs.py; benchmarks/speed/gpu_probe_lbfgs/notes.md has the measured effect).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

Objective = Callable[[Tensor], Tuple[Tensor, Tensor]]
"""x -> (f(x) as a 0-dim tensor, its gradient, shaped like x), computed where x is, without a host read."""


@dataclass(frozen=True)
class LBFGSResult:
    x: Tensor  # the last accepted iterate
    loss: float  # f(x)
    n_iter: int  # iterations begun, as torch counts them (one that stops at the g^T d test included)
    n_evals: int  # objective evaluations, the first included


@dataclass
class _Point:
    """One evaluation along the search line: step t, f, g^T d, (g - g_start)^T d, max |g| (host numbers),
    g and the point x + t d itself (device; ``x`` is None where the caller keeps no iterate)."""

    t: float
    f: float
    gtd: float
    change_td: float
    g_max: float
    g: Tensor
    x: Optional[Tensor] = None


class _Pairs:
    """The last ``size`` curvature pairs (s, y) in ring buffers, with S Y^T and Y Y^T kept up to date
    (one row and column per new pair), for the compact inverse-Hessian product."""

    def __init__(self, size: int, like: Tensor) -> None:
        self.size, self.count, self.next = size, 0, 0
        self.steps = like.new_empty((size, like.numel()))
        self.changes = like.new_empty((size, like.numel()))
        self.step_dot_change = like.new_zeros((size, size))  # [i, j] = s_i . y_j (ring slots)
        self.change_dot_change = like.new_zeros((size, size))  # [i, j] = y_i . y_j
        self.gamma: Optional[Tensor] = None

    def add(self, step: Tensor, change: Tensor, step_dot_change: float) -> None:
        """Keep (s, y), dropping the oldest pair when full. ``step_dot_change`` is the s^T y the pair was
        accepted with (> 0): it is R's diagonal, so R stays invertible whatever the device's own rounding
        of s . y."""
        slot = self.next
        self.steps[slot], self.changes[slot] = step, change
        self.count, self.next = min(self.count + 1, self.size), (slot + 1) % self.size
        steps, changes = self.steps[: self.count], self.changes[: self.count]
        self.step_dot_change[slot, : self.count] = changes @ step
        self.step_dot_change[: self.count, slot] = steps @ change
        self.step_dot_change[slot, slot] = step_dot_change
        change_dots = changes @ change
        self.change_dot_change[slot, : self.count] = change_dots
        self.change_dot_change[: self.count, slot] = change_dots
        self.gamma = self.step_dot_change[slot, slot] / change_dots[slot]

    def inverse_hessian_times(self, g: Tensor) -> Tensor:
        """H g by the compact form (module docstring). The big products work on the ring buffers as they
        are; only the m x m algebra (in float64) follows the pairs' age, through a permutation made on g's
        device (no host-to-device copy)."""
        if self.gamma is None:  # no pair yet: H = I
            return g.clone()
        n = self.count
        age = (torch.arange(n, device=g.device) + (self.next - n)) % self.size  # ring slot of the i-th oldest
        steps, changes = self.steps[:n], self.changes[:n]
        sy = self.step_dot_change[:n, :n][age][:, age].double()
        yy = self.change_dot_change[:n, :n][age][:, age].double()
        s_g, y_g = (steps @ g).double()[age, None], (changes @ g).double()[age, None]
        gamma = self.gamma.double()
        upper = torch.triu(sy)
        p = torch.linalg.solve_triangular(upper, s_g, upper=True)
        rhs = torch.diagonal(sy)[:, None] * p + gamma * (yy @ p) - gamma * y_g
        top = torch.linalg.solve_triangular(upper.T, rhs, upper=False)
        by_slot = torch.zeros((2, n), dtype=g.dtype, device=g.device)
        by_slot[0, age], by_slot[1, age] = top[:, 0].to(g.dtype), p[:, 0].to(g.dtype)
        gamma = gamma.to(g.dtype)
        return gamma * g + steps.T @ by_slot[0] - gamma * (changes.T @ by_slot[1])


def _cubic_minimum(t1: float, f1: float, d1: float, t2: float, f2: float, d2: float,
                   bounds: Optional[Tuple[float, float]] = None) -> float:
    """Minimiser of the cubic through (t1, f1, slope d1) and (t2, f2, slope d2), clipped to ``bounds``
    (default the interval between t1 and t2); the middle when the cubic has no minimum (torch's
    ``_cubic_interpolate``)."""
    low, high = bounds if bounds is not None else (min(t1, t2), max(t1, t2))
    middle = (low + high) / 2.0
    if t1 == t2:  # two steps that round to the same float32: no cubic
        return middle
    c1 = d1 + d2 - 3 * (f1 - f2) / (t1 - t2)
    c2_square = c1 * c1 - d1 * d2
    if not c2_square >= 0:  # no minimum (or NaN)
        return middle
    c2 = c2_square ** 0.5
    near, far, d_near, d_far = (t1, t2, d1, d2) if t1 <= t2 else (t2, t1, d2, d1)
    denominator = d_far - d_near + 2 * c2
    if denominator == 0:  # equal slopes on a straight line: torch's tensors give inf/nan here
        return middle
    minimum = far - (far - near) * ((d_far + c2 - c1) / denominator)
    return min(max(minimum, low), high) if math.isfinite(minimum) else middle


def _float32(value: float) -> float:
    """``value`` rounded to float32: torch's line search computes its step lengths as float32 tensors, so a
    search whose bracket has shrunk to float32's resolution ends as soon as torch's would."""
    return float(np.float32(value))


def _armijo_fails(f_new: float, f: float, t: float, gtd: float, c1: float) -> bool:
    """f_new > f + c1 t g^T d, in float32 as torch's line search computes it (its slopes are float32
    tensors): a change of f below float32's resolution counts as no increase, so a converged search
    stops instead of chasing rounding."""
    return bool(np.float32(f_new) > np.float32(f) + np.float32(c1 * t) * np.float32(gtd))


def _curvature_holds(gtd_new: float, gtd: float, c2: float) -> bool:
    """|g_new^T d| <= -c2 g^T d (strong Wolfe), in float32 as torch computes it."""
    return bool(abs(np.float32(gtd_new)) <= np.float32(-c2) * np.float32(gtd))


def _strong_wolfe(evaluate: Callable[[float], _Point], start: _Point, t: float, d_max: float, max_evals: int,
                  c1: float = 1e-4, c2: float = 0.9, tolerance_change: float = 1e-9) -> Tuple[_Point, int]:
    """A step along d satisfying the strong Wolfe conditions (torch's ``_strong_wolfe``, on host numbers):
    the accepted point and the evaluations spent."""
    f, gtd = start.f, start.gtd
    new = evaluate(t)
    evals, iteration = 1, 0
    previous = start
    done = False
    bracket: List[_Point] = []
    while iteration < max_evals:
        if _armijo_fails(new.f, f, new.t, gtd, c1) or (iteration > 1 and new.f >= previous.f):
            bracket = [previous, new]
            break
        if _curvature_holds(new.gtd, gtd, c2):
            bracket, done = [new], True
            break
        if new.gtd >= 0:
            bracket = [previous, new]
            break
        low, high = new.t + 0.01 * (new.t - previous.t), new.t * 10
        t = _float32(_cubic_minimum(previous.t, previous.f, previous.gtd, new.t, new.f, new.gtd, bounds=(low, high)))
        previous, new = new, evaluate(t)
        evals += 1
        iteration += 1
    if iteration == max_evals:
        bracket = [start, new]

    insufficient_progress = False
    low_pos, high_pos = (0, 1) if bracket[0].f <= bracket[-1].f else (1, 0)
    while not done and iteration < max_evals:
        if abs(bracket[1].t - bracket[0].t) * d_max < tolerance_change:
            break
        t = _float32(_cubic_minimum(bracket[0].t, bracket[0].f, bracket[0].gtd, bracket[1].t, bracket[1].f, bracket[1].gtd))
        top, bottom = max(bracket[0].t, bracket[1].t), min(bracket[0].t, bracket[1].t)
        margin = 0.1 * (top - bottom)
        if min(top - t, t - bottom) < margin:  # too close to an end of the bracket
            if insufficient_progress or t >= top or t <= bottom:
                t = _float32(top - margin if abs(t - top) < abs(t - bottom) else bottom + margin)
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False
        new = evaluate(t)
        evals += 1
        iteration += 1
        if _armijo_fails(new.f, f, new.t, gtd, c1) or new.f >= bracket[low_pos].f:
            bracket[high_pos] = new
            low_pos, high_pos = (0, 1) if bracket[0].f <= bracket[1].f else (1, 0)
        else:
            if _curvature_holds(new.gtd, gtd, c2):
                done = True
            elif new.gtd * (bracket[high_pos].t - bracket[low_pos].t) >= 0:
                bracket[high_pos] = bracket[low_pos]
            bracket[low_pos] = new
    return bracket[low_pos], evals


def minimize(
    objective: Objective,
    x0: Tensor,
    *,
    max_iter: int,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    max_eval: Optional[int] = None,
) -> LBFGSResult:
    """Minimise ``objective`` from ``x0`` (a 1-d tensor; the result lives where it does) with at most
    ``max_iter`` iterations and ``max_eval`` evaluations (default 1.25 max_iter), as
    ``torch.optim.LBFGS(lr=1, line_search_fn="strong_wolfe")`` with the same arguments would: stops when
    max |g| <= tolerance_grad, or when g^T d, the step or the change of f fall below tolerance_change."""
    if x0.dim() != 1:
        raise ValueError(f"x0 must be a 1-d tensor, got shape {tuple(x0.shape)}")
    max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
    for name, value in (("max_iter", max_iter), ("max_eval", max_eval), ("history_size", history_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    x = x0.detach().clone()

    loss, g = objective(x)
    f, g_max = torch.stack([loss.to(g.dtype), g.abs().max()]).tolist()  # one device-to-host copy
    evals, n_iter = 1, 0
    if g_max <= tolerance_grad:
        return LBFGSResult(x, f, 0, evals)
    pairs = _Pairs(min(history_size, max_iter), x)
    d = g.neg()
    previous_g: Optional[Tensor] = None
    t = change_td = 0.0  # the last step and (g_new - g)^T d along it
    while n_iter < max_iter:
        n_iter += 1
        if previous_g is not None:
            ys = t * change_td  # y^T s, y = g_new - g, s = t d: read with the accepted point
            if ys > 1e-10:
                pairs.add(d * t, g - previous_g, ys)
            d = pairs.inverse_hessian_times(g).neg_()
        previous_g, previous_f = g, f
        numbers = [g.dot(d), d.abs().max()] + ([g.abs().sum()] if n_iter == 1 else [])
        gtd_t, d_max_t, *first = torch.stack(numbers).tolist()  # one device-to-host copy
        t = _float32(min(1.0, 1.0 / first[0])) if first and first[0] > 0 else 1.0
        if gtd_t > -tolerance_change:
            break
        start = _Point(0.0, f, gtd_t, 0.0, g_max, g, x)

        def evaluate(step: float, direction: Tensor = d, g_start: Tensor = g, x_start: Tensor = x) -> _Point:
            """f, g at x + step d; the numbers the search compares come back in one device-to-host copy."""
            x_at = x_start + step * direction
            loss_at, g_at = objective(x_at)
            numbers = [loss_at.to(g_at.dtype), g_at.dot(direction), (g_at - g_start).dot(direction), g_at.abs().max()]
            f_at, gtd_at, change_td_at, g_max_at = torch.stack(numbers).tolist()
            return _Point(step, f_at, gtd_at, change_td_at, g_max_at, g_at, x_at)

        accepted, spent = _strong_wolfe(evaluate, start, t, d_max_t, max_eval - evals)
        evals += spent
        t, x = accepted.t, accepted.x  # the evaluated point itself: its g is the one read
        f, g, g_max = accepted.f, accepted.g, accepted.g_max
        change_td = accepted.change_td
        if n_iter == max_iter or evals >= max_eval or g_max <= tolerance_grad:
            break
        if t * d_max_t <= tolerance_change or abs(f - previous_f) < tolerance_change:
            break
    return LBFGSResult(x, f, n_iter, evals)
