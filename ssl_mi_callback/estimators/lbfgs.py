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
  torch/optim/lbfgs.py; benchmarks/speed/gpu_probe_lbfgs/notes.md has the measured effect);
- with ``cuda_graphs`` on a GPU, the tensor work between two reads (one evaluation; one iteration's move,
  curvature pair and direction) is captured once into a CUDA graph and replayed, one launch instead of
  dozens (:mod:`.cuda_graphs`; the state lives in fixed tensors, step lengths go in as device scalars, and
  the pairs are kept oldest first in all m slots, the unfilled ones inert, so shapes never change).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .cuda_graphs import Program, enabled as cuda_graphs_enabled

Objective = Callable[[Tensor], Tuple[Tensor, Tensor]]
"""x -> (f(x) as a 0-dim tensor, its gradient, shaped like x), computed where x is, without a host read."""


@dataclass(frozen=True)
class LBFGSResult:
    x: Tensor  # the last accepted iterate
    loss: float  # f(x)
    n_iter: int  # iterations begun, as torch counts them (one that stops at the g^T d test included)
    n_evals: int  # objective evaluations, the first included
    graph_replays: int = 0  # steps (evaluations and iterations) replayed from CUDA graphs


@dataclass
class _Point:
    """One evaluation along the search line: step t, f, g^T d, (g - g_start)^T d, max |g| (host numbers), and
    on the device the point x + t d and its gradient (a 2 x n tensor or a pair; None for the line's start,
    which the run keeps itself)."""

    t: float
    f: float
    gtd: float
    change_td: float
    g_max: float
    tensors: Optional[Sequence[Tensor]] = None


class _Pairs:
    """The last ``size`` curvature pairs (s, y), with S^T Y and Y^T Y kept up to date (one row and column per
    new pair), for the compact inverse-Hessian product. Two layouts, the same arithmetic up to the order of
    summation:

    - default (eager): a ring. Slot ``next`` takes the newest pair, the products run over the filled slots,
      and the m x m algebra follows the pairs' age through a permutation: no copy of the big buffers per
      pair;
    - ``static`` (the fixed shapes a CUDA graph needs): oldest first with the newest in the last slot,
      shifted one slot per new pair, and the products over all ``size`` slots. A slot not filled yet is inert
      (s = y = 0, its rows and columns of S^T Y and Y^T Y zero, 1 on R's diagonal), so it adds exact zeros.
    """

    def __init__(self, size: int, like: Tensor, static: bool = False) -> None:
        self.size, self.count, self.next, self.static = size, 0, 0, static
        self.steps = like.new_zeros((size, like.numel()))
        self.changes = like.new_zeros((size, like.numel()))
        # [i, j] = s_i . y_j; the 1s on the diagonal keep the static layout's unfilled slots inert
        self.step_dot_change = torch.eye(size, dtype=like.dtype, device=like.device)
        self.change_dot_change = like.new_zeros((size, size))  # [i, j] = y_i . y_j
        self.gamma = like.new_ones(())  # s^T y / y^T y of the newest pair

    def add(self, step: Tensor, change: Tensor, step_dot_change: Union[float, Tensor]) -> None:
        """Keep (s, y), dropping the oldest pair when full (:meth:`count_one_more`, then :meth:`push`)."""
        self.count_one_more()
        self.push(step, change, step_dot_change)

    def count_one_more(self) -> None:
        """The host's part of :meth:`add`: one pair more, ``size`` at most (kept out of a graph's body)."""
        self.count = min(self.count + 1, self.size)

    def push(self, step: Tensor, change: Tensor, step_dot_change: Union[float, Tensor]) -> None:
        """The device work of :meth:`add`, for a count already raised. ``step_dot_change`` is the s^T y the
        pair was accepted with (> 0): it is R's diagonal, so R stays invertible whatever the device's own
        rounding of s . y."""
        if self.static:  # shift the pairs one slot towards the front; the newest goes last
            last = self.size - 1
            for buffer in (self.steps, self.changes):
                buffer[0:last] = buffer[1:].clone()
            for matrix in (self.step_dot_change, self.change_dot_change):
                matrix[0:last, 0:last] = matrix[1:, 1:].clone()
            slot, rows = last, self.size
        else:  # Python state: this layout never runs in a graph
            slot, rows, self.next = self.next, self.count, (self.next + 1) % self.size
        self.steps[slot], self.changes[slot] = step, change
        steps, changes = self.steps[:rows], self.changes[:rows]
        self.step_dot_change[slot, :rows] = changes @ step
        self.step_dot_change[:rows, slot] = steps @ change
        self.step_dot_change[slot, slot] = step_dot_change
        change_dots = changes @ change
        self.change_dot_change[slot, :rows] = change_dots
        self.change_dot_change[:rows, slot] = change_dots
        self.gamma.copy_(self.step_dot_change[slot, slot] / change_dots[slot])

    def inverse_hessian_times(self, g: Tensor) -> Tensor:
        """H g by the compact form (module docstring); H = I before the first pair. Only the m x m algebra
        runs in float64."""
        if self.count == 0:
            return g.clone()
        n = self.size if self.static else self.count
        steps, changes = self.steps[:n], self.changes[:n]
        sy = self.step_dot_change[:n, :n].double()
        yy = self.change_dot_change[:n, :n].double()
        s_g, y_g = (steps @ g).double(), (changes @ g).double()
        age = None
        if not self.static:  # the ring: the m x m algebra in age order, through the slot of the i-th oldest
            age = (torch.arange(n, device=g.device) + (self.next - n)) % self.size
            sy, yy, s_g, y_g = sy[age][:, age], yy[age][:, age], s_g[age], y_g[age]
        gamma = self.gamma.double()
        upper = torch.triu(sy)
        p = torch.linalg.solve_triangular(upper, s_g[:, None], upper=True)
        rhs = torch.diagonal(sy)[:, None] * p + gamma * (yy @ p) - gamma * y_g[:, None]
        top = torch.linalg.solve_triangular(upper.T, rhs, upper=False)
        top, p = top[:, 0].to(g.dtype), p[:, 0].to(g.dtype)
        if age is not None:  # back to the slots' order
            by_slot = torch.zeros((2, n), dtype=g.dtype, device=g.device)
            by_slot[0, age], by_slot[1, age] = top, p
            top, p = by_slot
        gamma = gamma.to(g.dtype)
        return gamma * g + steps.T @ top - gamma * (changes.T @ p)


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


class _Run:
    """The state of one minimisation and the tensor programs that change it, each a
    :class:`.cuda_graphs.Program` (captured into a CUDA graph and replayed on a GPU, when ``graphs``):

    - ``evaluate``: the point x + t d, f and g there, and the numbers the line search compares;
    - ``iterate`` (one program per case: with a new curvature pair, without, before any pair): take the
      accepted point as x and g, keep the pair, and compute the new direction d = -H g with g^T d and max |d|.

    With ``static`` (graphs always are) the state lives in fixed tensors, as a replayed graph reads and
    writes the same memory every time: the programs copy their results into them, and the host fills in
    step lengths as device scalars and copies in the accepted point. Otherwise (eager: the CPU, or graphs
    off) the state is held by reference and step lengths are Python numbers, with no copy, as before the
    graphs. Either way the host reads back one stack of numbers per call; the first evaluation and the
    first direction (d = -g) run as they are. :meth:`release` ends the run: it frees the graphs and breaks
    the reference cycle between the run and its programs' bound methods, so the objective's data is freed
    at once, not at the next cycle collection."""

    def __init__(self, objective: Objective, x0: Tensor, history_size: int, graphs: bool, static: bool) -> None:
        self.objective, self.static = objective, static
        self.x = x0.detach().clone()
        self.pairs = _Pairs(history_size, self.x, static=static)
        self.g = self.previous_g = self.d = self.point_numbers = self.direction_numbers = self.x
        self.point: Sequence[Tensor] = ()  # x + t d and its gradient, from evaluate
        self.accepted: Sequence[Tensor] = ()  # the accepted point and its gradient
        self.step: Union[float, Tensor] = 0.0  # t of the next evaluation
        self.accepted_step: Union[float, Tensor] = 0.0
        self.accepted_step_dot_change: Union[float, Tensor] = 0.0
        if static:  # the fixed tensors
            self.g, self.previous_g, self.d = (torch.empty_like(self.x) for _ in range(3))
            self.step, self.accepted_step, self.accepted_step_dot_change = (self.x.new_zeros(()) for _ in range(3))
            self.accepted = self.x.new_zeros((2, self.x.numel()))
            self.point = torch.empty_like(self.accepted)
            self.point_numbers = self.x.new_empty(4)  # f, g^T d, (g - g_start)^T d, max |g| there
            self.direction_numbers = self.x.new_empty(2)  # g^T d, max |d|
        device = self.x.device if graphs else torch.device("cpu")  # a CPU "device" runs programs eagerly
        self.evaluate_program = Program(self._evaluate, device)
        self.iterate_programs = {case: Program(lambda add=add: self._iterate(add), device)
                                 for case, add in (("add", True), ("keep", False), ("none", False))}

    def _hold(self, name: str, value: Tensor) -> None:
        """State ``name`` := ``value``: copied into its fixed tensor under static shapes, else by reference."""
        if self.static:
            getattr(self, name).copy_(value)
        else:
            setattr(self, name, value)

    def _hold_number(self, name: str, value: float) -> None:
        """A step length or s^T y: filled into its device scalar under static shapes, else kept as is."""
        if self.static:
            getattr(self, name).fill_(value)
        else:
            setattr(self, name, value)

    def _hold_direction(self, minus_direction: Tensor) -> None:
        """d := -``minus_direction``."""
        if self.static:
            torch.neg(minus_direction, out=self.d)
        else:
            self.d = minus_direction.neg()

    def start(self) -> Tuple[float, float]:
        """f and max |g| at x0."""
        loss, g = self.objective(self.x)
        self._hold("g", g)
        f, g_max = torch.stack([loss.to(g.dtype), g.abs().max()]).tolist()  # one device-to-host copy
        return f, g_max

    def graph_replays(self) -> int:
        return sum(program.replays for program in [self.evaluate_program, *self.iterate_programs.values()])

    def release(self) -> None:
        """Free the graphs now, outside any capture (see :mod:`.cuda_graphs`), and drop the programs and the
        objective (the run is done)."""
        for program in [self.evaluate_program, *self.iterate_programs.values()]:
            program.release()
        self.evaluate_program, self.iterate_programs, self.objective = None, {}, None

    def first_direction(self) -> Tuple[float, float, float]:
        """d = -g; g^T d, max |d| and |g|_1."""
        self._hold_direction(self.g)
        gtd, d_max, g_sum = torch.stack([self.g.dot(self.d), self.d.abs().max(), self.g.abs().sum()]).tolist()
        return gtd, d_max, g_sum

    def evaluate(self, step: float) -> _Point:
        """f and g at x + step d; the numbers the search compares come back in one device-to-host copy."""
        self._hold_number("step", step)
        self.evaluate_program()
        tensors = self.point.clone() if self.static else self.point  # the next evaluation overwrites the fixed one
        f, gtd, change_td, g_max = self.point_numbers.tolist()
        return _Point(step, f, gtd, change_td, g_max, tensors)

    def next_direction(self, accepted: _Point, step_dot_change: float, add: bool) -> Tuple[float, float]:
        """Move to the accepted point, keep (t d, g_new - g) when ``add`` (accepted with s^T y =
        ``step_dot_change``), and compute the new direction; its g^T d and max |d|."""
        if not self.static:
            self.accepted = (self.x, self.g) if accepted.tensors is None else accepted.tensors
        elif accepted.tensors is None:  # the line's start: x and g stay
            self.accepted[0].copy_(self.x)
            self.accepted[1].copy_(self.g)
        else:
            self.accepted.copy_(accepted.tensors)
        if add:
            self._hold_number("accepted_step", accepted.t)
            self._hold_number("accepted_step_dot_change", step_dot_change)
            self.pairs.count_one_more()  # host state stays out of the programs
        self.iterate_programs["add" if add else "keep" if self.pairs.count else "none"]()
        gtd, d_max = self.direction_numbers.tolist()
        return gtd, d_max

    # the programs' bodies: tensor work only (under static shapes, on tensors that live as long as the run)
    def _evaluate(self) -> None:
        x_at = self.x + self.step * self.d
        loss, g_at = self.objective(x_at)
        if self.static:
            self.point[0].copy_(x_at)
            self.point[1].copy_(g_at)
        else:
            self.point = (x_at, g_at)
        numbers = [loss.to(g_at.dtype), g_at.dot(self.d), (g_at - self.g).dot(self.d), g_at.abs().max()]
        self._hold("point_numbers", torch.stack(numbers))

    def _iterate(self, add: bool) -> None:
        self._hold("previous_g", self.g)
        self._hold("x", self.accepted[0])
        self._hold("g", self.accepted[1])
        if add:
            self.pairs.push(self.d * self.accepted_step, self.g - self.previous_g, self.accepted_step_dot_change)
        self._hold_direction(self.pairs.inverse_hessian_times(self.g))
        self._hold("direction_numbers", torch.stack([self.g.dot(self.d), self.d.abs().max()]))


def minimize(
    objective: Objective,
    x0: Tensor,
    *,
    max_iter: int,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    max_eval: Optional[int] = None,
    cuda_graphs: bool = False,
    static_shapes: bool = False,
) -> LBFGSResult:
    """Minimise ``objective`` from ``x0`` (a 1-d tensor; the result lives where it does) with at most
    ``max_iter`` iterations and ``max_eval`` evaluations (default 1.25 max_iter), as
    ``torch.optim.LBFGS(lr=1, line_search_fn="strong_wolfe")`` with the same arguments would: stops when
    max |g| <= tolerance_grad, or when g^T d, the step or the change of f fall below tolerance_change.

    ``cuda_graphs``: on a GPU, replay each step's kernels as a CUDA graph (:mod:`.cuda_graphs`; unless
    graphs are off there). ``objective`` must then be capturable: fixed shapes, no host reads, no Python
    state changed per call. ``static_shapes`` runs the inverse-Hessian product over all history slots, the
    unfilled ones inert, also without graphs (graphs always do); the same arithmetic up to rounding.
    Under static shapes ``x0`` should be float32 or float64: step lengths are then held in its dtype."""
    if x0.dim() != 1:
        raise ValueError(f"x0 must be a 1-d tensor, got shape {tuple(x0.shape)}")
    max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
    for name, value in (("max_iter", max_iter), ("max_eval", max_eval), ("history_size", history_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    graphs = bool(cuda_graphs) and x0.is_cuda and cuda_graphs_enabled()
    run = _Run(objective, x0, min(history_size, max_iter), graphs, graphs or bool(static_shapes))
    try:
        return _minimize_loop(run, max_iter, max_eval, tolerance_grad, tolerance_change)
    finally:
        run.release()


def _minimize_loop(run: _Run, max_iter: int, max_eval: int, tolerance_grad: float, tolerance_change: float) -> LBFGSResult:
    """:func:`minimize`'s loop over ``run``."""
    f, g_max = run.start()
    evals, n_iter = 1, 0
    if g_max <= tolerance_grad:
        return LBFGSResult(run.x, f, 0, evals, 0)
    accepted: Optional[_Point] = None
    x_final: Optional[Tensor] = None  # the last accepted point (None: x0)
    while n_iter < max_iter:
        n_iter += 1
        if accepted is None:
            gtd, d_max, g_sum = run.first_direction()
            t = _float32(min(1.0, 1.0 / g_sum)) if g_sum > 0 else 1.0
        else:
            ys = accepted.t * accepted.change_td  # y^T s, y = g_new - g, s = t d: read with the accepted point
            gtd, d_max = run.next_direction(accepted, ys, add=ys > 1e-10)
            t = 1.0
        previous_f = f
        if gtd > -tolerance_change:
            break
        start = _Point(0.0, f, gtd, 0.0, g_max)
        accepted, spent = _strong_wolfe(run.evaluate, start, t, d_max, max_eval - evals)
        evals += spent
        t, f, g_max = accepted.t, accepted.f, accepted.g_max
        if accepted.tensors is not None:
            x_final = accepted.tensors[0]
        if n_iter == max_iter or evals >= max_eval or g_max <= tolerance_grad:
            break
        if t * d_max <= tolerance_change or abs(f - previous_f) < tolerance_change:
            break
    return LBFGSResult(run.x.clone() if x_final is None else x_final.clone(), f, n_iter, evals, run.graph_replays())
