"""benchmarks/speed/probe_ops.py: the operation counter and one counted probe fit (real LinearProbe)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.speed.probe_ops import _OperationCounter, count_fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_counter_counts_each_dispatched_operation():
    a, b = torch.ones(3, 4), torch.ones(4, 2)
    with _OperationCounter() as counter:
        torch.addmm(torch.zeros(2), a, b).log_softmax(dim=1).sum()
    assert counter.counts["addmm"] == 1 and counter.counts["_log_softmax"] == 1 and counter.counts["sum"] == 1


def test_count_fit_reports_the_fit_it_counted():
    rng = np.random.default_rng(0)
    y = rng.integers(4, size=600)
    x = torch.from_numpy((rng.normal(size=(4, 5))[y] + rng.normal(size=(600, 5))).astype(np.float32))
    row = count_fit((x, torch.from_numpy(y), torch.arange(600) // 20, 4, 0), repeats=1)
    assert row["frames_x_dims"] == [600, 5] and row["operations"] > row["matrix_products"] > 0
    assert len(row["cv_bits"]) >= 2 and row["weight_decay"] > 0 and row["refit_iterations"] > 0
