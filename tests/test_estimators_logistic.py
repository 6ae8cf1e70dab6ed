"""The stacked logistic regressions behind the linear probe: closed-form gradient, independent problems."""
import numpy as np
import pytest
import torch

from ssl_mi_callback.estimators.logistic import LogisticProblems

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def frames(seed, n=300, dims=10, n_classes=6, noise=1.5):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, dims))
    y = rng.integers(n_classes, size=n)
    x = means[y] + noise * rng.normal(size=(n, dims))
    return torch.from_numpy(x), torch.from_numpy(y)


def test_closed_form_gradient_matches_autograd_for_every_problem():
    """Three problems on overlapping subsets (one trains on no frame of class 0 and with a class no
    frame has): loss and gradient are autograd's on the sum of the documented per-problem objectives."""
    x, y = frames(seed=3)
    n_classes, strength, alpha = 8, 0.03, 0.5
    generator = torch.Generator().manual_seed(0)
    trains = torch.rand(len(y), 3, generator=generator) < torch.tensor([0.5, 0.7, 1.0])
    trains[y == 0, 0] = False
    weight = torch.randn(3, n_classes, x.shape[1], generator=generator, dtype=torch.float64)
    bias = torch.randn(3, n_classes, generator=generator, dtype=torch.float64)
    problems = LogisticProblems.build(x, y, n_classes, trains, alpha)
    loss, grad_weight, grad_bias = problems.objective(strength, weight, bias)

    w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    reference = sum(
        (torch.nn.functional.cross_entropy(x[rows] @ w[f].T + b[f], y[rows], reduction="sum")
         - alpha * torch.log_softmax(b[f], dim=0).sum()) / (int(rows.sum()) + alpha * n_classes)
        + 0.5 * strength * (w[f] ** 2).sum()
        for f, rows in enumerate(trains.T)
    )
    reference.backward()
    assert float(loss) == pytest.approx(float(reference), rel=1e-12)
    assert torch.allclose(grad_weight, w.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad_bias, b.grad, rtol=1e-10, atol=1e-12)


def test_problems_fitted_together_reach_each_ones_own_minimum():
    x, y = frames(seed=4)
    n_classes, strength = 6, 0.01  # float64: each solution within |g| / wd < 1e-4 of the minimum
    trains = torch.stack([torch.arange(len(y)) % 3 != fold for fold in range(3)], dim=1)
    zeros = torch.zeros(3, n_classes, x.shape[1], dtype=x.dtype), torch.zeros(3, n_classes, dtype=x.dtype)
    weight, bias, n_iter = LogisticProblems.build(x, y, n_classes, trains, 0.5).solve(
        strength, *zeros, max_iter=500, tolerance=1e-10)
    assert 0 < n_iter < 500
    for fold in range(3):
        alone = LogisticProblems.build(x, y, n_classes, trains[:, fold : fold + 1], 0.5)
        weight_alone, bias_alone, _ = alone.solve(strength, zeros[0][:1], zeros[1][:1], max_iter=500, tolerance=1e-10)
        assert torch.allclose(weight[fold], weight_alone[0], atol=1e-4)
        assert torch.allclose(bias[fold], bias_alone[0], atol=1e-4)
    # a frame outside a problem's training set does not move it
    changed = x.clone()
    changed[~trains[:, 0]] += 100.0
    alone = LogisticProblems.build(changed, y, n_classes, trains[:, :1], 0.5)
    assert torch.allclose(alone.solve(strength, zeros[0][:1], zeros[1][:1], max_iter=500, tolerance=1e-10)[0][0],
                          weight[0], atol=1e-4)
