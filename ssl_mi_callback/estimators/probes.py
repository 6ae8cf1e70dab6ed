"""Probes q(y | x): classifiers fitted on the fit part; the bounds measure them on the eval part.

Both probes standardise inputs with statistics of their training frames and can always fall back to
the (add-1/2 smoothed) marginal of the training labels (zero weights, bias log p(y)), so an
uninformative input keeps q(y | x) = p(y) instead of paying for an over-regularised or over-fitted
fit. The linear probe (default) chooses its L2 strength by cross-validation over whole groups
(utterances) on a regularisation path that starts at the marginal, then refits on all frames; the
MLP holds out whole groups for early stopping from the marginal. All randomness comes from ``seed``;
no global RNG is used.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import lbfgs
from .seeding import make_generator
from .splits import split_by_group
from .validation import (
    ArrayLike,
    EstimatorInputError,
    as_features,
    as_ids,
    check_choice,
    check_fraction,
    check_int,
    check_same_length,
    resolve_device,
)

Device = Optional[Union[str, torch.device]]
PROBES = ("linear", "mlp")
_EVAL_CHUNK = 65536


def _uniform(shape: Tuple[int, ...], bound: float, generator: torch.Generator) -> Tensor:
    return (torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound


class _Probe:
    """Shared fit/predict logic; subclasses build the network and its optimisation step."""

    def __init__(
        self,
        n_classes: Optional[int],
        *,
        seed: int,
        weight_decay: float,
        max_steps: int,
        patience: int,
        validation_fraction: float,
        device: Device,
    ) -> None:
        self.n_classes = n_classes
        self.seed = seed
        self.weight_decay = weight_decay
        self.max_steps = max_steps
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device

    # subclass hooks ---------------------------------------------------------------------------
    def _build(self, n_features: int, log_prior: Tensor, generator: torch.Generator) -> nn.Module:
        raise NotImplementedError

    def _make_step(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Callable[[], None]:
        raise NotImplementedError

    # public API --------------------------------------------------------------------------------
    def fit(self, x: ArrayLike, y: ArrayLike, groups: ArrayLike) -> "_Probe":
        """Train on ``x`` -> ``y``; whole groups (``validation_fraction`` of them) decide early stopping.

        Keeps the parameters with the lowest validation cross-entropy, including the initial marginal.
        """
        device = resolve_device(x, y, groups, device=self.device)
        x, y, groups, n_classes = self._check_inputs(x, y, groups, device)
        check_int(self.max_steps, "max_steps", 1)
        check_int(self.patience, "patience", 1)

        validation, train = split_by_group(
            groups,
            check_fraction(self.validation_fraction, "validation_fraction"),
            make_generator(self.seed, "probe-validation-split"),
            names=("validation", "train"),
        )
        self.n_classes_ = n_classes
        self.mean_, self.scale_ = self._standardisation(x[train])
        x = self._standardise(x)
        counts = torch.bincount(y[train], minlength=n_classes).double()
        log_prior = torch.log((counts + 0.5) / (counts.sum() + 0.5 * n_classes)).float()
        model = self._build(x.shape[1], log_prior.cpu(), make_generator(self.seed, "probe-init")).to(device)
        step = self._make_step(model, x[train], y[train], make_generator(self.seed, "probe-batches"))

        x_validation, y_validation = x[validation], y[validation]
        best_loss, best_step, waited = self._loss(model, x_validation, y_validation), 0, 0
        best_state = copy.deepcopy(model.state_dict())
        for step_index in range(1, self.max_steps + 1):
            step()
            loss = self._loss(model, x_validation, y_validation)
            if loss < best_loss - 1e-6:
                best_loss, best_state, best_step, waited = loss, copy.deepcopy(model.state_dict()), step_index, 0
            else:
                waited += 1
                if waited >= self.patience:
                    break
        model.load_state_dict(best_state)
        self.model_ = model.eval()
        self.best_step_ = best_step
        self.validation_loss_ = best_loss
        return self

    def predict_log_proba(self, x: ArrayLike) -> Tensor:
        """log q(y | x) in nats, shape (frames, n_classes), on the device the probe was fitted on."""
        if not hasattr(self, "model_"):
            raise EstimatorInputError(f"this {type(self).__name__} is not fitted yet; call fit first")
        x = as_features(x, "x", next(self.model_.parameters()).device)  # the probe's device
        if x.shape[1] != self.mean_.shape[0]:
            raise EstimatorInputError(f"x has {x.shape[1]} dims but the probe was fitted on {self.mean_.shape[0]}")
        x = self._standardise(x)
        with torch.no_grad():
            return torch.cat([F.log_softmax(self.model_(chunk), dim=1) for chunk in torch.split(x, _EVAL_CHUNK)])

    def predict(self, x: ArrayLike) -> Tensor:
        """Most probable class per frame."""
        return self.predict_log_proba(x).argmax(dim=1)

    # internals ---------------------------------------------------------------------------------
    def _check_inputs(
        self, x: ArrayLike, y: ArrayLike, groups: ArrayLike, device: torch.device
    ) -> Tuple[Tensor, Tensor, Tensor, int]:
        x = as_features(x, "x", device)
        y = as_ids(y, "y", device, nonnegative=True)
        groups = as_ids(groups, "groups", device)
        check_same_length(x=x, y=y, groups=groups)
        if not bool(torch.isfinite(x).all()):
            raise EstimatorInputError("x contains NaN or inf; drop those frames first")
        n_classes = int(y.max()) + 1 if self.n_classes is None else check_int(self.n_classes, "n_classes", 1)
        if int(y.max()) >= n_classes:
            raise EstimatorInputError(f"y has class id {int(y.max())} but n_classes={n_classes}")
        return x, y, groups, n_classes

    @staticmethod
    def _standardisation(x: Tensor) -> Tuple[Tensor, Tensor]:
        """Per-dimension mean and scale (float64); constant dimensions (std <= 1e-6 |mean|) get scale 1."""
        x = x.double()
        mean = x.mean(0)
        std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.zeros_like(mean)
        constant = std <= 1e-6 * mean.abs()
        return mean, torch.where(constant, torch.ones_like(std), std)

    def _standardise(self, x: Tensor) -> Tensor:
        return ((x.double() - self.mean_.to(x.device)) / self.scale_.to(x.device)).float()

    @staticmethod
    def _loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
        """Mean cross-entropy in nats, evaluated in chunks."""
        with torch.no_grad():
            total = sum(
                float(F.cross_entropy(model(xc), yc, reduction="sum"))
                for xc, yc in zip(torch.split(x, _EVAL_CHUNK), torch.split(y, _EVAL_CHUNK))
            )
        return total / x.shape[0]

    def _l2(self, model: nn.Module) -> Tensor:
        """(weight_decay / 2) * sum of squared weights (biases are not penalised)."""
        return 0.5 * self.weight_decay * sum((p**2).sum() for name, p in model.named_parameters() if "weight" in name)


WEIGHT_DECAY_GRID = tuple(10.0 ** (exponent / 2) for exponent in range(1, -9, -1))  # 3.16 ... 1e-4
"""L2 strengths the linear probe chooses from (half-decades), strongest first."""


class LinearProbe(_Probe):
    """Multinomial logistic regression q(y|x) = softmax(W x + b), L2 on W, full-batch L-BFGS.

    Minimises ``[sum_i CE_i - alpha sum_k log softmax(b)_k] / (n + alpha K) + (wd / 2) ||W||^2``: the
    ``alpha`` (= ``prior_pseudo_count``, default 1/2) pseudo-frames per class at the mean input make the
    fitted bias the add-1/2 smoothed class frequencies when W = 0, so an unseen class never gets
    probability 0.

    ``weight_decay="auto"`` (default) chooses wd by ``folds``-fold cross-validation over whole groups
    (utterances): a regularisation path from the marginal (W = 0, wd = inf) through
    ``weight_decays`` (strongest first), each fit warm-started from the previous one and given
    ``path_iter`` L-BFGS iterations (a warm start half a decade away is close to its optimum, and the
    path only has to rank the strengths); the path stops after ``patience`` grid points without a
    lower summed held-out cross-entropy. The probe is then refitted on all frames with the chosen wd,
    starting from the folds' mean solution there, to convergence (``lbfgs_iter`` iterations at most,
    gradient tolerance ``tolerance``); ``weight_decay_`` afterwards (``inf`` means the marginal won,
    i.e. the input was not worth a single weight). A number fixes wd instead (no
    cross-validation). ``max_steps`` and ``validation_fraction`` are accepted for compatibility and
    unused.
    """

    def __init__(
        self,
        n_classes: Optional[int] = None,
        *,
        seed: int = 0,
        weight_decay: Union[str, float] = "auto",
        weight_decays: Sequence[float] = WEIGHT_DECAY_GRID,
        folds: int = 3,
        max_steps: int = 20,
        lbfgs_iter: int = 200,
        path_iter: int = 20,
        tolerance: float = 1e-5,
        patience: int = 2,
        prior_pseudo_count: float = 0.5,
        validation_fraction: float = 0.15,
        device: Device = None,
    ) -> None:
        super().__init__(
            n_classes,
            seed=seed,
            weight_decay=weight_decay,  # type: ignore[arg-type]
            max_steps=max_steps,
            patience=patience,
            validation_fraction=validation_fraction,
            device=device,
        )
        self.weight_decays = weight_decays
        self.folds = folds
        self.lbfgs_iter = lbfgs_iter
        self.path_iter = path_iter
        self.tolerance = tolerance
        self.prior_pseudo_count = prior_pseudo_count

    def fit(self, x: ArrayLike, y: ArrayLike, groups: ArrayLike) -> "LinearProbe":
        """Train on ``x`` -> ``y``; ``groups`` (utterances) define the cross-validation folds.

        Sets ``weight_decay_`` (chosen L2 strength, ``inf`` = the marginal), ``cv_bits_`` (mean held-out
        cross-entropy in bits at each grid point tried, the marginal first) and ``n_iter_`` (L-BFGS
        iterations of the final fit).
        """
        device = resolve_device(x, y, groups, device=self.device)
        x, y, groups, n_classes = self._check_inputs(x, y, groups, device)
        check_int(self.lbfgs_iter, "lbfgs_iter", 1)
        check_int(self.path_iter, "path_iter", 1)
        check_int(self.patience, "patience", 1)
        if not self.prior_pseudo_count > 0:
            raise EstimatorInputError(f"prior_pseudo_count must be > 0, got {self.prior_pseudo_count}")
        self.n_classes_ = n_classes
        self.mean_, self.scale_ = self._standardisation(x)
        x = self._standardise(x)
        if isinstance(self.weight_decay, str):
            if self.weight_decay != "auto":
                raise EstimatorInputError(f"weight_decay must be 'auto' or a number >= 0, got {self.weight_decay!r}")
            grid = [float(value) for value in self.weight_decays]
            if not grid or any(not value > 0 for value in grid) or grid != sorted(grid, reverse=True):
                raise EstimatorInputError("weight_decays must be positive numbers, strongest first")
            self.cv_bits_, best, fold_solutions = self._cross_validate(x, y, groups, n_classes, grid)
            strength = grid[best - 1] if best else None  # best = 0: the marginal
        else:
            if not float(self.weight_decay) >= 0:
                raise EstimatorInputError(f"weight_decay must be 'auto' or a number >= 0, got {self.weight_decay!r}")
            self.cv_bits_, strength, fold_solutions = [], float(self.weight_decay), []
        weight, bias = self._marginal(y, n_classes, x.shape[1])
        n_iter = 0
        if strength is not None:
            if fold_solutions:  # start at the folds' mean solution: the objective is strictly convex, so
                weight = torch.stack([w for w, _ in fold_solutions]).mean(0)  # only the cost changes
                bias = torch.stack([b for _, b in fold_solutions]).mean(0)
            weight, bias, n_iter = self._solve(x, y, n_classes, strength, weight, bias, self.lbfgs_iter)
        self.weight_decay_ = strength if strength is not None else math.inf
        self.n_iter_ = n_iter
        model = nn.utils.skip_init(nn.Linear, x.shape[1], n_classes)
        with torch.no_grad():
            model.weight.copy_(weight)
            model.bias.copy_(bias)
        self.model_ = model.to(device).eval()
        return self

    # internals ---------------------------------------------------------------------------------
    def _marginal(self, y: Tensor, n_classes: int, n_features: int) -> Tuple[Tensor, Tensor]:
        counts = torch.bincount(y, minlength=n_classes).double()
        alpha = float(self.prior_pseudo_count)
        bias = torch.log((counts + alpha) / (counts.sum() + alpha * n_classes)).float()
        return torch.zeros(n_classes, n_features, device=y.device), bias

    def _objective(
        self, x: Tensor, y: Tensor, n_classes: int, strength: float, weight: Tensor, bias: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """The penalised objective and its gradient in closed form (no autograd graph):

        L = [sum_i -log p_i(y_i) - alpha sum_k log softmax(b)_k] / (n + alpha K) + (wd / 2) ||W||^2,
        p_i = softmax(W x_i + b);  dL/dW = (P - Y)^T X / (n + alpha K) + wd W,
        dL/db = [sum_i (p_i - y_i) + alpha (K softmax(b) - 1)] / (n + alpha K), Y the one-hot labels.
        """
        alpha = float(self.prior_pseudo_count)
        normaliser = x.shape[0] + alpha * n_classes
        log_proba = torch.addmm(bias, x, weight.T).log_softmax(dim=1)
        data = -log_proba.gather(1, y[:, None]).sum()
        log_prior = bias.log_softmax(dim=0)
        loss = (data - alpha * log_prior.sum()) / normaliser + 0.5 * strength * (weight * weight).sum()
        residual = log_proba.exp_()  # p_i - y_i, in place of the log-probabilities
        residual.scatter_add_(1, y[:, None], residual.new_full((x.shape[0], 1), -1.0))
        grad_weight = torch.addmm(weight, residual.T, x, beta=strength, alpha=1.0 / normaliser)
        grad_bias = (residual.sum(0) + alpha * (n_classes * log_prior.exp() - 1.0)) / normaliser
        return loss, grad_weight, grad_bias

    def _solve(
        self, x: Tensor, y: Tensor, n_classes: int, strength: float, weight: Tensor, bias: Tensor, max_iter: int
    ) -> Tuple[Tensor, Tensor, int]:
        """Minimise the penalised objective (:meth:`_objective`) at one L2 strength from (weight, bias) with
        at most ``max_iter`` L-BFGS iterations (:func:`.lbfgs.minimize`, torch's L-BFGS with a strong-Wolfe
        line search, history 20, reading the device once per objective evaluation, its steps replayed as
        CUDA graphs on a GPU); returns the solution and the iterations used."""
        n_weights = weight.numel()

        def objective(flat: Tensor) -> Tuple[Tensor, Tensor]:
            loss, grad_weight, grad_bias = self._objective(
                x, y, n_classes, strength, flat[:n_weights].view_as(weight), flat[n_weights:]
            )
            return loss, torch.cat([grad_weight.reshape(-1), grad_bias])

        with torch.no_grad():
            result = lbfgs.minimize(
                objective,
                torch.cat([weight.reshape(-1), bias]),
                max_iter=max_iter,
                tolerance_grad=float(self.tolerance),
                tolerance_change=1e-12,
                history_size=20,
                cuda_graphs=True,
            )
        return result.x[:n_weights].view_as(weight), result.x[n_weights:], result.n_iter

    def _cross_validate(
        self, x: Tensor, y: Tensor, groups: Tensor, n_classes: int, grid: List[float]
    ) -> Tuple[List[float], int, List[Tuple[Tensor, Tensor]]]:
        """Held-out cross-entropy (bits per frame, over all folds) along the path; index of the best
        (0 = the marginal, i = grid[i - 1]); the folds' (weight, bias) at the best."""
        held_out = _group_folds(groups, check_int(self.folds, "folds", 2), make_generator(self.seed, "probe-folds"))
        states = [self._marginal(y[~part], n_classes, x.shape[1]) for part in held_out]

        def score() -> float:
            total = 0.0
            for part, (weight, bias) in zip(held_out, states):
                with torch.no_grad():
                    total += float(F.cross_entropy(F.linear(x[part], weight, bias), y[part], reduction="sum"))
            return total / x.shape[0] / math.log(2.0)

        curve = [score()]
        best, waited, best_states = 0, 0, states
        for index, strength in enumerate(grid, start=1):
            states = [
                self._solve(x[~part], y[~part], n_classes, strength, weight, bias, self.path_iter)[:2]
                for part, (weight, bias) in zip(held_out, states)
            ]
            curve.append(score())
            if curve[-1] < curve[best] - 1e-6:
                best, waited, best_states = index, 0, states
            else:
                waited += 1
                if waited >= self.patience:
                    break
        return curve, best, best_states


def _group_folds(groups: Tensor, folds: int, generator: torch.Generator) -> List[Tensor]:
    """Frame masks of ``min(folds, n_groups)`` held-out parts made of whole groups (seeded order)."""
    unique = torch.unique(groups)
    if unique.shape[0] < 2:
        raise EstimatorInputError(
            f"all frames belong to a single utterance (group {int(unique[0])}); cross-validation is by "
            "utterance and needs at least 2 utterances"
        )
    order = unique[torch.randperm(unique.shape[0], generator=generator).to(unique.device)]
    n_folds = min(folds, int(unique.shape[0]))
    return [torch.isin(groups, order[fold::n_folds]) for fold in range(n_folds)]


class MLPProbe(_Probe):
    """Three-layer MLP q(y|x) = softmax(W3 relu(W2 relu(W1 x + b1) + b2) + b3), Adam on mini-batches.

    Minimises CE + (weight_decay / 2) sum ||W_i||^2. One step = one epoch in a seeded order;
    early stopping after ``patience`` epochs without validation gain.
    """

    def __init__(
        self,
        n_classes: Optional[int] = None,
        *,
        seed: int = 0,
        hidden: int = 256,
        weight_decay: float = 1e-4,
        learning_rate: float = 1e-3,
        batch_size: int = 1024,
        max_steps: int = 100,
        patience: int = 5,
        validation_fraction: float = 0.15,
        device: Device = None,
    ) -> None:
        super().__init__(
            n_classes,
            seed=seed,
            weight_decay=weight_decay,
            max_steps=max_steps,
            patience=patience,
            validation_fraction=validation_fraction,
            device=device,
        )
        self.hidden = hidden
        self.learning_rate = learning_rate
        self.batch_size = batch_size

    def _build(self, n_features: int, log_prior: Tensor, generator: torch.Generator) -> nn.Module:
        hidden = check_int(self.hidden, "hidden", 1)
        sizes = [(n_features, hidden), (hidden, hidden), (hidden, len(log_prior))]
        layers = [nn.utils.skip_init(nn.Linear, fan_in, fan_out) for fan_in, fan_out in sizes]
        with torch.no_grad():
            for layer, (fan_in, _) in zip(layers[:2], sizes):
                bound = fan_in**-0.5  # torch's default nn.Linear range, drawn from our generator
                layer.weight.copy_(_uniform(tuple(layer.weight.shape), bound, generator))
                layer.bias.copy_(_uniform(tuple(layer.bias.shape), bound, generator))
            layers[2].weight.zero_()
            layers[2].bias.copy_(log_prior)
        return nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2])

    def _make_step(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Callable[[], None]:
        optimizer = torch.optim.Adam(model.parameters(), lr=self.learning_rate)
        batch_size = check_int(self.batch_size, "batch_size", 1)

        def epoch() -> None:
            order = torch.randperm(x.shape[0], generator=generator).to(x.device)
            for rows in torch.split(order, batch_size):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x[rows]), y[rows]) + self._l2(model)
                loss.backward()
                optimizer.step()

        return epoch


Probe = Union[LinearProbe, MLPProbe]


def make_probe(kind: str = "linear", n_classes: Optional[int] = None, *, seed: int = 0, **options) -> Probe:
    """A probe by name: "linear" (:class:`LinearProbe`) or "mlp" (:class:`MLPProbe`)."""
    probe_class = {"linear": LinearProbe, "mlp": MLPProbe}[check_choice(kind, "probe", PROBES)]
    return probe_class(n_classes, seed=seed, **options)
