"""Probes q(y | x): classifiers whose cross-entropy upper-bounds H(Y | X), giving I(X; Y) >= H(Y) - CE.

Both probes standardise inputs with statistics of their training part, hold out whole groups
(utterances) for early stopping, and start from the (smoothed) marginal of the training labels —
zero weights and bias log p(y) — so an uninformative input keeps CE close to H(Y) instead of paying
for an over-regularised fit. All randomness comes from ``seed``; no global RNG is used.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        x = as_features(x, "x", device)
        y = as_ids(y, "y", device, nonnegative=True)
        groups = as_ids(groups, "groups", device)
        check_same_length(x=x, y=y, groups=groups)
        if not bool(torch.isfinite(x).all()):
            raise EstimatorInputError("x contains NaN or inf; drop those frames first")
        n_classes = int(y.max()) + 1 if self.n_classes is None else check_int(self.n_classes, "n_classes", 1)
        if int(y.max()) >= n_classes:
            raise EstimatorInputError(f"y has class id {int(y.max())} but n_classes={n_classes}")
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


class LinearProbe(_Probe):
    """Multinomial logistic regression q(y|x) = softmax(W x + b), L2 on W, full-batch L-BFGS.

    Minimises CE + (weight_decay / 2) ||W||^2. One step = ``lbfgs_iter`` L-BFGS iterations
    (strong-Wolfe line search); early stopping after ``patience`` steps without validation gain.
    """

    def __init__(
        self,
        n_classes: Optional[int] = None,
        *,
        seed: int = 0,
        weight_decay: float = 1e-4,
        max_steps: int = 20,
        lbfgs_iter: int = 10,
        patience: int = 2,
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
        self.lbfgs_iter = lbfgs_iter

    def _build(self, n_features: int, log_prior: Tensor, generator: torch.Generator) -> nn.Module:
        model = nn.utils.skip_init(nn.Linear, n_features, len(log_prior))
        with torch.no_grad():
            model.weight.zero_()
            model.bias.copy_(log_prior)
        return model

    def _make_step(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Callable[[], None]:
        optimizer = torch.optim.LBFGS(
            model.parameters(),
            lr=1.0,
            max_iter=check_int(self.lbfgs_iter, "lbfgs_iter", 1),
            history_size=10,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y) + self._l2(model)
            loss.backward()
            return loss

        return lambda: optimizer.step(closure)


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
