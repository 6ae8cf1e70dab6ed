"""The selection benchmark (issue 8) end to end in its smoke configuration: corpus generation, HuBERT
labels, two tiny fairseq trainings, ``ssl-mi score`` of every checkpoint with and without labels, the
probe_train -> probe_test probe, the pre-registered decision and the report. Asserts only that the pipeline
works and its numbers are finite (3 checkpoints per series support no claim; the full run is a documented
command, benchmarks/selection/results.md)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import require
from fairseq_runs import ROOT

pytestmark = pytest.mark.slow

SMOKE = ROOT / "benchmarks" / "selection" / "configs" / "smoke.yaml"


def test_smoke_configuration_runs_end_to_end_with_finite_numbers(tmp_path):
    require("fairseq")
    out, results_dir = tmp_path / "work", tmp_path / "results"
    command = [sys.executable, "-m", "benchmarks.selection", "--out", str(out), "--config", str(SMOKE),
               "--results-dir", str(results_dir)]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((results_dir / "results.json").read_text())
    assert {s["name"] for s in results["plan"]["series"]} == {"w2v", "hubert"}
    assert all(t["returncode"] == 0 for t in results["training"].values())
    rows = results["rows"]
    assert len(rows) == 6 and {r["series"] for r in rows} == {"w2v", "hubert"}  # 3 checkpoints per series
    for row in rows:
        metrics = row["metrics"]
        for key in ("mi_bits_l2", "mi_bits_centered_l2", "mi_given_position_bits_centered_l2", "mi_position_bits_centered_l2",
                    "phone_accuracy_l2", "split_probe_accuracy_l2", "rankme_l2", "rankme_t_l2", "kmeans_inertia_eval_l2"):
            assert isinstance(metrics.get(key), float) and math.isfinite(metrics[key]), (row["series"], row["step"], key)
        assert 0.0 <= metrics["phone_accuracy_l2"] <= 1.0 and math.isfinite(row["valid_loss"])
    decision = results["summary"]["decision"]
    assert decision["chosen"] in {c["key"] for c in decision["candidates"]} and len(decision["candidates"]) == 11
    report = (results_dir / "results.md").read_text()
    for heading in ("## Series", "## Decision on the development series", "## Test series", "## Every checkpoint"):
        assert heading in report
    assert "nan" not in report.split("## Every checkpoint")[1].lower()  # every checkpoint's numbers are finite
