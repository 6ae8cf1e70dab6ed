"""Variational lower bounds on mutual information, in bits.

Unsupervised (two views of the same frames), with c the k-means cluster of zb and q(c | za) a probe:
    I(Za; Zb) >= I(Za; c(Zb)) >= E[log2 q(c | za)] - E[log2 qbar(c)],   qbar(c) = E_za[q(c | za)].
Supervised (frame labels Y): I(Z; Y) >= E[log2 q(y | z)] - E[log2 qbar(y)].

The second inequality holds for every q: the gap to I(Za; c) is E_za KL(p(c|za) || q(c|za)) -
KL(p(c) || qbar(c)) >= 0 by joint convexity of KL. It is never below the Barber-Agakov bound
H(c) - CE (which pays KL(p(c) || qbar(c)) on top), and it is exactly 0 when q ignores za, so an
uninformative view reads 0 instead of minus the cost of estimating the class frequencies.

The q measured is the probe mixed with the fit part's (add-1/2 smoothed) target frequencies,
q = (1 - w) q_probe + w p_fit with w = ``prior_mix`` (default 0.01). Any q gives a valid bound; the mix
costs at most -log2(1 - w) = 0.0145 bits when the probe is right and caps what one frame can cost at
-log2(w p_fit(target)), so a probe that is confidently wrong on the eval utterances (seen on destroyed
checkpoints: CE 41 bits against H(c) = 2.4 bits) no longer drives the bound to -39 bits.

K-means and the probe learn on the fit part of the utterances; the bound is measured on the disjoint
eval part (split by utterance, never by frame): -mean log2 qbar(target) - CE, with qbar the mean of
q over the eval frames (it needs no labels), plus a delete-one-utterance jackknife bias correction.
See :mod:`.bootstrap` for the statistics and the interval.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .bootstrap import EvalStatistics, basic_interval, bound_interval, resample_weights
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
    check_label_range,
    check_same_length,
    finite_rows,
    resolve_device,
)

Device = Optional[Union[str, torch.device]]


@dataclass(frozen=True)
class MIResult:
    """Fields common to both bounds (all in bits where the name says so).

    mi_bits: the bound on the eval part (jackknife-corrected; = reference term - ce_bits);
    ce_bits: mean -log2 q(target | features) there; mi_normalized: mi_bits / reference term (None
    when it is 0); ci95_bits: 95% basic bootstrap interval of mi_bits over eval utterances (None
    when bootstrap = 0; it contains mi_bits, see :mod:`.bootstrap`); bias_correction_bits: what the jackknife added; n_frames_* /
    n_utterances_*: sizes of the fit and eval parts; probe, seed, fit_fraction, bootstrap: the
    settings; probe_weight_decay: the probe's L2 strength (linear: chosen by cross-validation, None =
    it kept the marginal); prior_mix: weight of the fit part's target frequencies mixed into the probe
    (module docstring); dropped_nonfinite: frames removed because a feature was NaN or inf or their
    squared norm overflows (validation.finite_rows).
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
    bias_correction_bits: float
    probe_weight_decay: Optional[float]
    prior_mix: float
    dropped_nonfinite: int

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable fields, with ``estimator`` naming the bound."""
        fields = dataclasses.asdict(self)
        if fields["ci95_bits"] is not None:
            fields["ci95_bits"] = list(fields["ci95_bits"])
        return {"estimator": self.estimator, **fields}


@dataclass(frozen=True)
class UnsupervisedMIResult(MIResult):
    """I(Za; c(Zb)) bound. h_c_bits: the reference term -mean log2 qbar(c) on eval, jackknife-corrected
    (so mi_bits = h_c_bits - ce_bits; it is >= H(c) up to sampling noise, equal when the probe's mean
    prediction matches the cluster frequencies); h_c_plugin_bits: plug-in H(c) on eval; clusters: K;
    kmeans_inertia_eval: mean squared distance of eval zb frames to their centre.

    With a control variable P (``unsupervised_mi(control=P)``; None otherwise): mi_given_control_bits
    = CE(c | P) - CE(c | Za, P) on eval, an estimate of I(Za; c | P) = I(Za, P; c) - I(P; c) (not a
    bound: both CEs are upper bounds); its 95% basic bootstrap interval over eval utterances
    ci95_given_control_bits; control_mi_bits: the bound on I(P; c) (what P alone predicts of c)."""

    estimator: ClassVar[str] = "unsupervised"
    h_c_bits: float
    h_c_plugin_bits: float
    clusters: int
    kmeans_inertia_eval: float
    mi_given_control_bits: Optional[float] = None
    ci95_given_control_bits: Optional[Tuple[float, float]] = None
    control_mi_bits: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        """As :meth:`MIResult.to_dict`; the control fields only when a control was given."""
        fields = super().to_dict()
        if self.mi_given_control_bits is None:
            for name in CONTROL_FIELDS:
                del fields[name]
        elif fields["ci95_given_control_bits"] is not None:
            fields["ci95_given_control_bits"] = list(fields["ci95_given_control_bits"])
        return fields


CONTROL_FIELDS = ("mi_given_control_bits", "ci95_given_control_bits", "control_mi_bits")


@dataclass(frozen=True)
class SupervisedMIResult(MIResult):
    """I(Z; Y) bound. h_y_bits: the reference term -mean log2 qbar(y) on eval, jackknife-corrected
    (mi_bits = h_y_bits - ce_bits); h_y_plugin_bits: plug-in H(Y) on eval; accuracy: probe accuracy on
    eval; n_classes: label ids 0..n_classes-1."""

    estimator: ClassVar[str] = "supervised"
    h_y_bits: float
    h_y_plugin_bits: float
    accuracy: float
    n_classes: int


JACKKNIFE_MIN_UTTERANCES = 5
"""The jackknife bias correction needs this many eval utterances; with fewer, leaving one out changes
qbar wholesale (a class seen in one utterance, predicted in another) and the "correction" reached
hundreds of bits on a collapsed model scored on 2 eval utterances (selection benchmark). Below it the
bound is uncorrected; above it the correction is capped at the plug-in entropy of the eval targets."""


@dataclass(frozen=True)
class _EvalBound:
    mi: float  # jackknife-corrected bound, bits
    cross_entropy: float  # mean -log2 q(target | x) on eval
    plugin_entropy: float  # plug-in H(target) on eval
    bias_correction: float  # added to the raw bound by the jackknife
    interval: Optional[Tuple[float, float]]


def _bound_on_eval(log_proba_nats: Tensor, targets: Tensor, groups: Tensor, bootstrap: int, seed: int) -> _EvalBound:
    """The bound -mean log2 qbar(target) - CE on the eval frames with its jackknife bias correction over
    utterances, and the basic bootstrap interval over utterances."""
    statistics = EvalStatistics.from_frames(log_proba_nats, targets, groups)
    correction = 0.0
    if statistics.n_utterances >= JACKKNIFE_MIN_UTTERANCES:
        limit = statistics.plugin_entropy()  # a bias beyond the targets' entropy is leave-one-out noise
        correction = min(max(-statistics.jackknife_bias(), -limit), limit)
    interval = None
    if bootstrap > 0:
        interval = bound_interval(statistics, bootstrap, make_generator(seed, "bootstrap"))
    return _EvalBound(
        mi=float(statistics.bound()) + correction,
        cross_entropy=statistics.cross_entropy(),
        plugin_entropy=statistics.plugin_entropy(),
        bias_correction=correction,
        interval=interval,
    )


PRIOR_MIX = 0.01
"""Default weight of the fit part's target frequencies in the measured q (module docstring)."""


def mix_with_prior(log_proba_nats: Tensor, fit_targets: Tensor, n_classes: int, weight: float) -> Tensor:
    """log[(1 - weight) q(y | x) + weight p_fit(y)], p_fit the add-1/2 smoothed frequencies of ``fit_targets``."""
    if _check_prior_mix(weight) == 0.0:
        return log_proba_nats
    counts = torch.bincount(fit_targets, minlength=n_classes).double()
    log_prior = torch.log((counts + 0.5) / (counts.sum() + 0.5 * n_classes)).to(log_proba_nats)
    return torch.logaddexp(log_proba_nats + math.log1p(-weight), log_prior + math.log(weight))


@dataclass(frozen=True)
class _ControlledEstimate:
    mi_given_control: float  # CE(c | P) - CE(c | Za, P), bits
    interval: Optional[Tuple[float, float]]
    control_bound: float  # bound on I(P; c)


def _given_control(
    za: Tensor, control: Tensor, codes: Tensor, groups: Tensor, fit: Tensor, held_out: Tensor,
    *, probe: str, clusters: int, seed: int, bootstrap: int, prior_mix: float,
) -> _ControlledEstimate:
    """I(Za; c | P) as CE(c | P) - CE(c | Za, P): one probe on P alone, one on [Za, P], both fitted on the
    fit part and measured (mixed with the prior like the main bound) on the eval part."""
    joint = torch.cat([za, control], dim=1)
    log_q = []
    for inputs in (control, joint):
        q = make_probe(probe, clusters, seed=seed).fit(inputs[fit], codes[fit], groups[fit])
        log_q.append(mix_with_prior(q.predict_log_proba(inputs[held_out]), codes[fit], clusters, prior_mix))
    targets, eval_groups = codes[held_out], groups[held_out]
    control_bound = _bound_on_eval(log_q[0], targets, eval_groups, 0, seed).mi
    picked = [lq.gather(1, targets[:, None])[:, 0].detach().double().cpu() for lq in log_q]
    gains = (picked[1] - picked[0]) / math.log(2.0)  # log2 q(c | Za, P) - log2 q(c | P) per frame
    _, utterance = torch.unique(eval_groups.cpu(), return_inverse=True)
    n_utterances = int(utterance.max()) + 1
    gain_sums = torch.zeros(n_utterances, dtype=torch.float64).index_add_(0, utterance, gains)
    frames = torch.bincount(utterance, minlength=n_utterances).double()
    estimate = float(gain_sums.sum() / frames.sum())
    interval = None
    if bootstrap > 0:
        weights = resample_weights(n_utterances, bootstrap, make_generator(seed, "bootstrap-control"))
        interval = basic_interval(estimate, (weights @ gain_sums) / (weights @ frames))
    return _ControlledEstimate(estimate, interval, control_bound)


def _probe_weight_decay(q: Any) -> Optional[float]:
    """The probe's L2 strength (None: the linear probe kept the marginal, W = 0)."""
    value = float(getattr(q, "weight_decay_", q.weight_decay))
    return None if math.isinf(value) else value


def _check_prior_mix(weight: float) -> float:
    if not 0.0 <= weight < 1.0:
        raise EstimatorInputError(f"prior_mix must be in [0, 1), got {weight}")
    return float(weight)


def _common_settings(probe: str, fit_fraction: float, bootstrap: int, prior_mix: float) -> Tuple[str, float, int, float]:
    return (
        check_choice(probe, "probe", PROBES),
        check_fraction(fit_fraction, "fit_fraction"),
        check_int(bootstrap, "bootstrap", 0),
        _check_prior_mix(prior_mix),
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
    prior_mix: float = PRIOR_MIX,
    reduce_fn: Optional[ReduceFn] = None,
    control: Optional[ArrayLike] = None,
    device: Device = None,
) -> UnsupervisedMIResult:
    """Lower bound on I(Za; Zb) in bits: -mean log2 qbar(c) - CE with c = k-means cluster of zb, q(c | za)
    a probe and qbar its mean prediction on the eval frames (module docstring).

    ``za`` (N, Da) and ``zb`` (N, Db) are paired frames (dims may differ), ``groups`` (N,) the utterance
    of each frame. Frames with a NaN/inf in za or zb are dropped and counted. ``reduce_fn`` sums the
    k-means statistics across processes (see :mod:`.reduce`; the k-means++ seeds must agree, else an
    error); the probe and the bound use this process's frames. ``prior_mix``: weight of the fit part's
    cluster frequencies mixed into the probe (module docstring). ``control`` (N, Dp): features of a
    nuisance variable P the views share (e.g. :func:`.position.position_features`); when given, the
    result also has I(Za; c | P) estimated as CE(c | P) - CE(c | Za, P) (two more probes). Computes on
    the inputs' device (or ``device``).
    """
    probe, fit_fraction, bootstrap, prior_mix = _common_settings(probe, fit_fraction, bootstrap, prior_mix)
    clusters = check_int(clusters, "clusters", 2)
    device = resolve_device(za, zb, groups, device=device)
    za, zb = as_features(za, "za", device), as_features(zb, "zb", device)
    groups = as_ids(groups, "groups", device)
    check_same_length(za=za, zb=zb, groups=groups)
    if control is not None:
        control = as_features(control, "control", device)
        check_same_length(za=za, control=control)
    finite, dropped = finite_rows(za, zb) if control is None else finite_rows(za, zb, control)
    if control is not None:
        control = control[finite]
    za, zb, groups = za[finite], zb[finite], groups[finite]
    fit, held_out = _split(groups, fit_fraction, seed)
    n_fit, n_eval = int(fit.sum()), int(held_out.sum())
    for part, n_frames in (("fit", n_fit), ("eval", n_eval)):
        if n_frames < clusters:
            raise EstimatorInputError(f"the {part} part has {n_frames} frames, fewer than clusters={clusters}")

    kmeans = OnlineKMeans(clusters, seed=seed, reduce_fn=reduce_fn).fit(zb[fit])
    codes = kmeans.predict(zb)
    q = make_probe(probe, clusters, seed=seed).fit(za[fit], codes[fit], groups[fit])
    log_proba = mix_with_prior(q.predict_log_proba(za[held_out]), codes[fit], clusters, prior_mix)
    bound = _bound_on_eval(log_proba, codes[held_out], groups[held_out], bootstrap, seed)
    reference = bound.mi + bound.cross_entropy
    controlled = None
    if control is not None:
        controlled = _given_control(
            za, control, codes, groups, fit, held_out,
            probe=probe, clusters=clusters, seed=seed, bootstrap=bootstrap, prior_mix=prior_mix,
        )
    return UnsupervisedMIResult(
        mi_bits=bound.mi,
        ce_bits=bound.cross_entropy,
        mi_normalized=bound.mi / reference if reference > 0 else None,
        ci95_bits=bound.interval,
        n_frames_fit=n_fit,
        n_frames_eval=n_eval,
        n_utterances_fit=_n_groups(groups[fit]),
        n_utterances_eval=_n_groups(groups[held_out]),
        probe=probe,
        seed=seed,
        fit_fraction=fit_fraction,
        bootstrap=bootstrap,
        bias_correction_bits=bound.bias_correction,
        probe_weight_decay=_probe_weight_decay(q),
        prior_mix=prior_mix,
        dropped_nonfinite=dropped,
        h_c_bits=reference,
        h_c_plugin_bits=bound.plugin_entropy,
        clusters=clusters,
        kmeans_inertia_eval=kmeans.inertia(zb[held_out]),
        mi_given_control_bits=None if controlled is None else controlled.mi_given_control,
        ci95_given_control_bits=None if controlled is None else controlled.interval,
        control_mi_bits=None if controlled is None else controlled.control_bound,
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
    prior_mix: float = PRIOR_MIX,
    device: Device = None,
) -> SupervisedMIResult:
    """Lower bound on I(Z; Y) in bits: -mean log2 qbar(y) - CE with q(y | z) a probe and qbar its mean
    prediction on the eval frames, plus the probe's accuracy (of the probe itself, before the
    ``prior_mix`` of the label frequencies that the bound measures).

    ``labels`` (N,) are non-negative class ids (``n_classes`` defaults to max + 1); ``groups`` (N,) the
    utterance of each frame. Frames with a NaN/inf feature are dropped and counted.
    """
    probe, fit_fraction, bootstrap, prior_mix = _common_settings(probe, fit_fraction, bootstrap, prior_mix)
    device = resolve_device(z, labels, groups, device=device)
    z = as_features(z, "z", device)
    labels = as_ids(labels, "labels", device, nonnegative=True)
    groups = as_ids(groups, "groups", device)
    check_same_length(z=z, labels=labels, groups=groups)
    n_classes = check_label_range(labels, "labels", n_classes)
    finite, dropped = finite_rows(z)
    z, labels, groups = z[finite], labels[finite], groups[finite]
    fit, held_out = _split(groups, fit_fraction, seed)

    q = make_probe(probe, n_classes, seed=seed).fit(z[fit], labels[fit], groups[fit])
    eval_labels = labels[held_out]
    log_proba = q.predict_log_proba(z[held_out])
    mixed = mix_with_prior(log_proba, labels[fit], n_classes, prior_mix)
    bound = _bound_on_eval(mixed, eval_labels, groups[held_out], bootstrap, seed)
    reference = bound.mi + bound.cross_entropy
    return SupervisedMIResult(
        mi_bits=bound.mi,
        ce_bits=bound.cross_entropy,
        mi_normalized=bound.mi / reference if reference > 0 else None,
        ci95_bits=bound.interval,
        n_frames_fit=int(fit.sum()),
        n_frames_eval=int(held_out.sum()),
        n_utterances_fit=_n_groups(groups[fit]),
        n_utterances_eval=_n_groups(groups[held_out]),
        probe=probe,
        seed=seed,
        fit_fraction=fit_fraction,
        bootstrap=bootstrap,
        bias_correction_bits=bound.bias_correction,
        probe_weight_decay=_probe_weight_decay(q),
        prior_mix=prior_mix,
        dropped_nonfinite=dropped,
        h_y_bits=reference,
        h_y_plugin_bits=bound.plugin_entropy,
        accuracy=float((log_proba.argmax(dim=1) == eval_labels).double().mean()),
        n_classes=n_classes,
    )
