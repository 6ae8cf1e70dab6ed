"""Probes: learn what is there, fall back to the marginal when nothing is, split by group, determinism."""
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ssl_mi_callback.estimators import (
    EstimatorInputError,
    LinearProbe,
    MLPProbe,
    entropy_bits,
    make_probe,
    split_by_group,
)
from ssl_mi_callback.estimators.seeding import make_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")),
]


def cross_entropy_bits(probe, x, y):
    log_q = probe.predict_log_proba(x).cpu().double()
    return float(-log_q[torch.arange(len(y)), torch.as_tensor(y)].mean() / math.log(2))


def noisy_classes(seed, n_utterances=60, frames=40, n_classes=6, dims=10, noise=1.5):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, dims))
    y = rng.integers(n_classes, size=n_utterances * frames)
    x = (means[y] + noise * rng.normal(size=(len(y), dims))).astype(np.float32)
    return x, y, np.repeat(np.arange(n_utterances), frames)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_probe_separates_separable_classes(kind, device, two_views):
    za, _, groups, s, _ = two_views(8, n_utterances=30, frames_per_utterance=40)
    probe = make_probe(kind, seed=0).fit(torch.from_numpy(za).to(device), s, groups)
    log_q = probe.predict_log_proba(za)
    assert log_q.shape == (len(s), 8) and log_q.device.type == device
    assert torch.allclose(torch.logsumexp(log_q, dim=1), torch.zeros(len(s), device=device), atol=1e-5)
    assert float((probe.predict(za).cpu() == torch.from_numpy(s)).double().mean()) > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_linear_probe_fits_alike_with_and_without_cuda_graphs(monkeypatch):
    """On a GPU the probe's L-BFGS steps are replayed from CUDA graphs; without them (SSL_MI_CUDA_GRAPHS=0)
    the cross-validation curve, the chosen strength and the fit's cross-entropy agree up to rounding (the
    200-iteration refit carries rounding along its path: log-probabilities differ by up to ~0.005 nats)."""
    from ssl_mi_callback.estimators import cuda_graphs, lbfgs

    x, y, groups = noisy_classes(seed=2)
    fits, replays = [], []
    minimize = lbfgs.minimize

    def counting_minimize(*args, **kwargs):
        result = minimize(*args, **kwargs)
        replays[-1] += result.graph_replays
        return result

    monkeypatch.setattr(lbfgs, "minimize", counting_minimize)
    for graphs in (False, True):
        replays.append(0)
        with cuda_graphs.switched(graphs):
            fits.append(LinearProbe(seed=0).fit(torch.from_numpy(x).cuda(), y, groups))
    eager, graphed = fits
    assert cuda_graphs.failure() is None and replays[0] == 0 and replays[1] > 100  # the graphs did run
    assert graphed.weight_decay_ == eager.weight_decay_
    assert graphed.cv_bits_ == pytest.approx(eager.cv_bits_, abs=1e-3)
    assert cross_entropy_bits(graphed, x, y) == pytest.approx(cross_entropy_bits(eager, x, y), abs=1e-3)


def test_linear_probe_is_as_good_as_sklearn_logistic_regression():
    x, y, groups = noisy_classes(seed=0)
    fit, held_out = groups < 40, groups >= 40
    ours = LinearProbe(seed=0).fit(x[fit], y[fit], groups[fit])
    reference = LogisticRegression(C=1e4, max_iter=2000).fit(x[fit], y[fit])
    reference_ce = float(-np.log2(reference.predict_proba(x[held_out])[np.arange(held_out.sum()), y[held_out]]).mean())
    ours_ce = cross_entropy_bits(ours, x[held_out], y[held_out])
    assert ours_ce <= reference_ce + 0.01, (ours_ce, reference_ce)


def test_linear_probe_closed_form_gradient_matches_autograd():
    """The solver's hand-written gradient is the gradient of the documented objective (autograd on
    cross_entropy + prior pseudo-counts + L2), with a class that no frame has (only the prior term)."""
    x, y, _ = noisy_classes(seed=3, n_utterances=10, frames=30)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    n_classes, strength, alpha = 8, 0.03, 0.5
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(n_classes, x.shape[1], generator=generator, dtype=torch.float64)
    bias = torch.randn(n_classes, generator=generator, dtype=torch.float64)
    probe = LinearProbe(n_classes, prior_pseudo_count=alpha)
    loss, grad_weight, grad_bias = probe._objective(x.double(), y, n_classes, strength, weight, bias)

    w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    reference = (
        torch.nn.functional.cross_entropy(x.double() @ w.T + b, y, reduction="sum")
        - alpha * torch.log_softmax(b, dim=0).sum()
    ) / (len(y) + alpha * n_classes) + 0.5 * strength * (w**2).sum()
    reference.backward()
    assert float(loss) == pytest.approx(float(reference), rel=1e-12)
    assert torch.allclose(grad_weight, w.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad_bias, b.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("features", ["constant", "noise"])
def test_uninformative_input_falls_back_to_the_marginal(kind, features):
    rng = np.random.default_rng(1)
    n_utterances, frames = 60, 50
    y = rng.choice(5, size=n_utterances * frames, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    if features == "constant":
        x = np.full((len(y), 12), 3.7, np.float32)
    else:
        x = rng.normal(size=(len(y), 12)).astype(np.float32)
    groups = np.repeat(np.arange(n_utterances), frames)
    fit, held_out = groups < 30, groups >= 30
    probe = make_probe(kind, seed=0).fit(x[fit], y[fit], groups[fit])
    entropy = float(entropy_bits(torch.bincount(torch.from_numpy(y[held_out]))))
    assert cross_entropy_bits(probe, x[held_out], y[held_out]) <= entropy + 0.02


def test_n_classes_reserves_logits_for_unseen_classes():
    x, y, groups = noisy_classes(seed=2, n_classes=3)
    probe = LinearProbe(n_classes=7).fit(x, y, groups)
    log_q = probe.predict_log_proba(x)
    assert log_q.shape == (len(y), 7)
    assert float(log_q[:, 3:].exp().max()) < 1e-2


@pytest.mark.parametrize("probe_class", [LinearProbe, MLPProbe])
def test_same_seed_same_log_probabilities(probe_class):
    x, y, groups = noisy_classes(seed=3)
    first = probe_class(seed=4, max_steps=15).fit(x, y, groups).predict_log_proba(x)
    second = probe_class(seed=4, max_steps=15).fit(x, y, groups).predict_log_proba(x)
    assert torch.equal(first, second)


def test_group_split_keeps_utterances_whole_and_ignores_frame_order():
    groups = torch.from_numpy(np.random.default_rng(0).integers(0, 25, size=1000))
    first, second = split_by_group(groups, 0.3, make_generator(0, "test"))
    assert not set(groups[first].tolist()) & set(groups[second].tolist())
    assert len(set(groups[first].tolist())) == round(0.3 * 25)
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(1))
    shuffled_first, _ = split_by_group(groups[order], 0.3, make_generator(0, "test"))
    assert set(groups[order][shuffled_first].tolist()) == set(groups[first].tolist())


def test_probe_input_errors():
    x, y, groups = noisy_classes(seed=5)
    with pytest.raises(EstimatorInputError, match="not fitted"):
        LinearProbe().predict_log_proba(x)
    with pytest.raises(EstimatorInputError, match="n_classes=2"):
        LinearProbe(n_classes=2).fit(x, y, groups)
    with pytest.raises(EstimatorInputError, match="single utterance"):
        LinearProbe().fit(x, y, np.zeros_like(groups))
    with pytest.raises(EstimatorInputError, match="probe must be one of"):
        make_probe("svm")


def test_cross_validation_chooses_a_strong_l2_when_frames_are_few():
    """64 dims, 50 classes, weak signal, ~1000 frames (the demo's regime): a fixed weak L2 overfits far
    above the marginal's cross-entropy; the cross-validated strength does not, and beats it."""
    x, y, groups = noisy_classes(seed=6, n_utterances=40, frames=40, n_classes=50, dims=64, noise=4.0)
    fit, held_out = groups < 25, groups >= 25
    auto = LinearProbe(n_classes=50, seed=0).fit(x[fit], y[fit], groups[fit])
    weak = LinearProbe(n_classes=50, seed=0, weight_decay=1e-4).fit(x[fit], y[fit], groups[fit])
    marginal = float(entropy_bits(torch.bincount(torch.from_numpy(y[held_out]), minlength=50)))
    auto_ce = cross_entropy_bits(auto, x[held_out], y[held_out])
    assert auto.weight_decay_ >= 1e-2 and weak.weight_decay_ == 1e-4
    assert auto_ce < cross_entropy_bits(weak, x[held_out], y[held_out]) - 0.5
    assert auto_ce < marginal + 0.1
    assert len(auto.cv_bits_) >= 2 and min(auto.cv_bits_) == auto.cv_bits_[
        [math.inf, *auto.weight_decays].index(auto.weight_decay_)]


def test_linear_probe_keeps_the_exact_marginal_for_constant_input():
    rng = np.random.default_rng(7)
    y = rng.choice(4, size=1200, p=[0.5, 0.3, 0.15, 0.05])
    groups = np.repeat(np.arange(30), 40)
    probe = LinearProbe(seed=0).fit(np.full((1200, 6), 2.0, np.float32), y, groups)
    assert probe.weight_decay_ == math.inf
    assert torch.count_nonzero(probe.model_.weight) == 0
    expected = np.log((np.bincount(y, minlength=4) + 0.5) / (1200 + 0.5 * 4))
    assert np.allclose(probe.predict_log_proba(np.zeros((1, 6), np.float32)).numpy()[0], expected, atol=1e-5)


def test_linear_probe_weight_decay_settings():
    x, y, groups = noisy_classes(seed=8)
    assert LinearProbe(weight_decay=0.01).fit(x, y, groups).weight_decay_ == 0.01
    with pytest.raises(EstimatorInputError, match="weight_decay must be 'auto'"):
        LinearProbe(weight_decay="strong").fit(x, y, groups)
    with pytest.raises(EstimatorInputError, match="strongest first"):
        LinearProbe(weight_decays=(1e-3, 1e-1)).fit(x, y, groups)
