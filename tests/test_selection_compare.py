"""benchmarks/selection/compare.py on the committed quick run (benchmarks/selection/results_quick.json)."""
from __future__ import annotations

import copy
import json

import pytest

from fairseq_runs import ROOT


def test_compare_finds_a_moved_metric_and_refuses_other_checkpoints(capsys):
    from benchmarks.selection import compare

    old = json.loads((ROOT / "benchmarks/selection/results_quick.json").read_text())
    new = copy.deepcopy(old)
    metric = "mi_bits_centered_l2"
    new["rows"][3]["metrics"][metric] += 0.0125
    differences = compare.metric_differences(old, new)
    family = metric.rsplit("_l", 1)[0]
    assert max(differences[family]) == pytest.approx(0.0125)
    assert all(max(values) == 0 for name, values in differences.items() if name != family)
    assert "rankme" not in " ".join(differences)  # only the estimator's outputs and the ground truths
    product = compare.PRODUCT_DEFAULT_METRIC
    assert compare.product_summary(old) == f"not scored in this run ({product} missing)"  # made before position control
    scored = copy.deepcopy(old)
    scored["summary"]["scopes"]["all"]["acc_last"][product] = old["summary"]["scopes"]["all"]["acc_last"]["mi_c_last"]
    assert compare.product_summary(scored).startswith("Spearman pooled ")

    fewer = dict(new, rows=new["rows"][1:])
    with pytest.raises(SystemExit, match="different checkpoints"):
        compare.metric_differences(old, fewer)
