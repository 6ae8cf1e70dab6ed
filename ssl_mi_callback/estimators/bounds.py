"""Variational lower bounds on mutual information, in bits.

Unsupervised (two views of the same frames):
    I(Za; Zb) >= I(Za; c(Zb)) >= H(c) - CE,   CE = mean_eval -log2 q(c | za),
with c the k-means cluster of zb and q a probe. Supervised (frame labels Y):
    I(Z; Y) >= H(Y) - CE,   CE = mean_eval -log2 q(y | z).
K-means and the probe learn on the fit part of the utterances; H and CE are measured on the disjoint
eval part (split by utterance, never by frame). Entropies are plug-in estimates on the eval part.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .bootstrap import bound_interval
from .information import LN2, entropy_bits
from .kmeans import OnlineKMeans
from .probes import PROBES, make_probe
from .reduce import ReduceFn
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
    finite_rows,
    resolve_device,
)

Device = Optional[Union[str, torch.device]]


@dataclass(frozen=True)
class MIResult:
    """Fields common to both bounds (all in bits where the name says so).

    mi_bits: the bound H - CE on the eval part; ce_bits: mean -log2 q(target | features) there;
    mi_normalized: mi_bits / H (None when H = 0); ci95_bits: 95% basic bootstrap interval of
    mi_bits over eval utterances (None when bootstrap = 0); n_frames_* / n_utterances_*: sizes of the
    fit and eval parts; probe, seed, fit_fraction, bootstrap: the settings; dropped_nonfinite: frames
    removed because a feature was NaN or inf.
    """

    estimator: ClassVar[str]
    mi_bits: float
    ce_bits: float
    mi_normalized: Optional[float]
    ci95_bits: Optional[Tuple[float, float]]
    n_frames_fit: int
    n_frames_eval: int
    n_utterances_fit: int
    n_utterances_eval: int
    probe: str
    seed: int
    fit_fraction: float
    bootstrap: int
    dropped_nonfinite: int

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable fields, with ``estimator`` naming the bound."""
        fields = dataclasses.asdict(self)
        if fields["ci95_bits"] is not None:
            fields["ci95_bits"] = list(fields["ci95_bits"])
        return {"estimator": self.estimator, **fields}


@dataclass(frozen=True)
class UnsupervisedMIResult(MIResult):
    """I(Za; c(Zb)) bound. h_c_bits: H(c) on eval; clusters: K; kmeans_inertia_eval: mean squared
    distance of eval zb frames to their centre."""

    estimator: ClassVar[str] = "unsupervised"
    h_c_bits: float
    clusters: int
    kmeans_inertia_eval: float


@dataclass(frozen=True)
class SupervisedMIResult(MIResult):
    """I(Z; Y) bound. h_y_bits: H(Y) on eval; accuracy: probe accuracy on eval; n_classes: label ids
    0..n_classes-1."""

    estimator: ClassVar[str] = "supervised"
    h_y_bits: float
    accuracy: float
    n_classes: int


@dataclass(frozen=True)
class _EvalBound:
    entropy: float
    cross_entropy: float
    interval: Optional[Tuple[float, float]]


def _bound_on_eval(
    log_q_nats: Tensor, targets: Tensor, groups: Tensor, n_classes: int, bootstrap: int, seed: int
) -> _EvalBound:
    """H(target) and CE on the eval frames, and the bootstrap interval of H - CE over utterances."""
    cross_entropy_bits = (-log_q_nats.double() / LN2).cpu()
    targets, groups = targets.cpu(), groups.cpu()
    counts = torch.bincount(targets, minlength=n_classes)
    interval = None
    if bootstrap > 0:
        _, utterance = torch.unique(groups, return_inverse=True)
        n_utterances = int(utterance.max()) + 1
        class_counts = torch.bincount(utterance * n_classes + targets, minlength=n_utterances * n_classes)
        cross_entropy_sums = torch.zeros(n_utterances, dtype=torch.float64).index_add_(0, utterance, cross_entropy_bits)
        interval = bound_interval(
            class_counts.view(n_utterances, n_classes), cross_entropy_sums, bootstrap, make_generator(seed, "bootstrap")
        )
    return _EvalBound(float(entropy_bits(counts)), float(cross_entropy_bits.mean()), interval)


def _common_settings(probe: str, fit_fraction: float, bootstrap: int) -> Tuple[str, float, int]:
    return (
        check_choice(probe, "probe", PROBES),
        check_fraction(fit_fraction, "fit_fraction"),
        check_int(bootstrap, "bootstrap", 0),
    )


def _split(groups: Tensor, fit_fraction: float, seed: int) -> Tuple[Tensor, Tensor]:
    """Fit/eval frame masks by utterance, at least 2 utterances per part."""
    return split_by_group(groups, fit_fraction, make_generator(seed, "fit-eval-split"), min_groups_per_part=2)


def _n_groups(groups: Tensor) -> int:
    return int(torch.unique(groups).shape[0])


def unsupervised_mi(
    za: ArrayLike,
    zb: ArrayLike,
    groups: ArrayLike,
    *,
    clusters: int = 50,
    probe: str = "linear",
    seed: int = 0,
    fit_fraction: float = 0.5,
    bootstrap: int = 1000,
    reduce_fn: Optional[ReduceFn] = None,
    device: Device = None,
) -> UnsupervisedMIResult:
    """Lower bound on I(Za; Zb) in bits: H(c) - CE with c = k-means cluster of zb, q(c | za) a probe.

    ``za`` (N, Da) and ``zb`` (N, Db) are paired frames (dims may differ), ``groups`` (N,) the utterance
    of each frame. Frames with a NaN/inf in za or zb are dropped and counted. ``reduce_fn`` sums the
    k-means statistics across processes (see :mod:`.reduce`; the k-means++ seeds must agree, else an
    error); the probe and the bound use this process's frames. Computes on the inputs' device (or
    ``device``).
    """
    probe, fit_fraction, bootstrap = _common_settings(probe, fit_fraction, bootstrap)
    clusters = check_int(clusters, "clusters", 2)
    device = resolve_device(za, zb, groups, device=device)
    za, zb = as_features(za, "za", device), as_features(zb, "zb", device)
    groups = as_ids(groups, "groups", device)
    check_same_length(za=za, zb=zb, groups=groups)
    finite, dropped = finite_rows(za, zb)
    za, zb, groups = za[finite], zb[finite], groups[finite]
    fit, held_out = _split(groups, fit_fraction, seed)
    n_fit, n_eval = int(fit.sum()), int(held_out.sum())
    for part, n_frames in (("fit", n_fit), ("eval", n_eval)):
        if n_frames < clusters:
            raise EstimatorInputError(f"the {part} part has {n_frames} frames, fewer than clusters={clusters}")

    kmeans = OnlineKMeans(clusters, seed=seed, reduce_fn=reduce_fn).fit(zb[fit])
    codes = kmeans.predict(zb)
    q = make_probe(probe, clusters, seed=seed).fit(za[fit], codes[fit], groups[fit])
    eval_codes = codes[held_out]
    log_q = q.predict_log_proba(za[held_out]).gather(1, eval_codes[:, None])[:, 0]
    bound = _bound_on_eval(log_q, eval_codes, groups[held_out], clusters, bootstrap, seed)
    mi = bound.entropy - bound.cross_entropy
    return UnsupervisedMIResult(
        mi_bits=mi,
        ce_bits=bound.cross_entropy,
        mi_normalized=mi / bound.entropy if bound.entropy > 0 else None,
        ci95_bits=bound.interval,
        n_frames_fit=n_fit,
        n_frames_eval=n_eval,
        n_utterances_fit=_n_groups(groups[fit]),
        n_utterances_eval=_n_groups(groups[held_out]),
        probe=probe,
        seed=seed,
        fit_fraction=fit_fraction,
        bootstrap=bootstrap,
        dropped_nonfinite=dropped,
        h_c_bits=bound.entropy,
        clusters=clusters,
        kmeans_inertia_eval=kmeans.inertia(zb[held_out]),
    )


def supervised_mi(
    z: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike,
    *,
    probe: str = "linear",
    seed: int = 0,
    fit_fraction: float = 0.5,
    bootstrap: int = 1000,
    n_classes: Optional[int] = None,
    device: Device = None,
) -> SupervisedMIResult:
    """Lower bound on I(Z; Y) in bits: H(Y) - CE with q(y | z) a probe, plus the probe's accuracy.

    ``labels`` (N,) are non-negative class ids (``n_classes`` defaults to max + 1); ``groups`` (N,) the
    utterance of each frame. Frames with a NaN/inf feature are dropped and counted.
    """
    probe, fit_fraction, bootstrap = _common_settings(probe, fit_fraction, bootstrap)
    device = resolve_device(z, labels, groups, device=device)
    z = as_features(z, "z", device)
    labels = as_ids(labels, "labels", device, nonnegative=True)
    groups = as_ids(groups, "groups", device)
    check_same_length(z=z, labels=labels, groups=groups)
    largest_label = int(labels.max())
    n_classes = largest_label + 1 if n_classes is None else check_int(n_classes, "n_classes", 1)
    if largest_label >= n_classes:
        raise EstimatorInputError(f"labels has id {largest_label} but n_classes={n_classes}")
    finite, dropped = finite_rows(z)
    z, labels, groups = z[finite], labels[finite], groups[finite]
    fit, held_out = _split(groups, fit_fraction, seed)

    q = make_probe(probe, n_classes, seed=seed).fit(z[fit], labels[fit], groups[fit])
    eval_labels = labels[held_out]
    log_proba = q.predict_log_proba(z[held_out])
    log_q = log_proba.gather(1, eval_labels[:, None])[:, 0]
    bound = _bound_on_eval(log_q, eval_labels, groups[held_out], n_classes, bootstrap, seed)
    mi = bound.entropy - bound.cross_entropy
    return SupervisedMIResult(
        mi_bits=mi,
        ce_bits=bound.cross_entropy,
        mi_normalized=mi / bound.entropy if bound.entropy > 0 else None,
        ci95_bits=bound.interval,
        n_frames_fit=int(fit.sum()),
        n_frames_eval=int(held_out.sum()),
        n_utterances_fit=_n_groups(groups[fit]),
        n_utterances_eval=_n_groups(groups[held_out]),
        probe=probe,
        seed=seed,
        fit_fraction=fit_fraction,
        bootstrap=bootstrap,
        dropped_nonfinite=dropped,
        h_y_bits=bound.entropy,
        accuracy=float((log_proba.argmax(dim=1) == eval_labels).double().mean()),
        n_classes=n_classes,
    )
