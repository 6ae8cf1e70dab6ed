"""The GPU rows' command of the speed benchmark (benchmarks/speed/gpu.py, issue 4), run on the CPU in
its smoke configuration: the same code that a GPU machine runs (held-out audio made from the corpus,
evaluation in float32 and bfloat16, base-recipe overhead, k-means against plain Lloyd, the tiny recipe
with and without the hook), so that a GPU session is not the first to run it. Timings of a CPU smoke
run support no claim; only that every section works and reports finite numbers."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import require
from fairseq_runs import ROOT


@pytest.mark.slow
def test_gpu_command_runs_every_section_on_the_cpu(speech_corpus, tmp_path):
    require("fairseq")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "benchmarks.speed.gpu", "--device", "cpu", "--quick", "--repeats", "1",
               "--budget-s", "100000",  # every section, however busy the machine (the device's budget is not tested)
               "--corpus", os.path.relpath(speech_corpus, ROOT), "--work", str(tmp_path / "work"), "--out", str(out)]
    # the corpus as a relative path (as run.sh gives it): fairseq's hydra runs the hook in another folder
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results_gpu.json").read_text())
    assert results["failures"] == {} and results["skipped_sections"] == [], results["failures"]
    assert "variant" in results["heldout_note"]
    evaluation = {row["dtype"]: row for row in results["evaluation"]}
    assert set(evaluation) == {"float32", "bfloat16"}
    for row in evaluation.values():
        assert row["audio_seconds"] >= 29.0 and row["ratio_evaluate_to_forward"] >= 1.0
        assert all(math.isfinite(row["seconds"][part]) for part in ("forward", "kmeans", "probe", "total"))
        assert math.isfinite(row["mi_bits"]) and len(row["ci95"]) == 2
    assert results["precision_agreement"]["half_width"] > 0
    assert [row["precision"] for row in results["base_overhead"]] == ["float32 weights", "bfloat16 weights"]
    assert all(0 < row["overhead_percent"] < 100 for row in results["base_overhead"])
    (kmeans,) = results["kmeans"]
    assert kmeans["ours_best_inertia_vs_plain"] <= 1.01  # k-means++ and Lloyd reach plain Lloyd's inertia
    assert results["hook"]["mi_bits"] and all(math.isfinite(v) for v in results["hook"]["mi_bits"])
    report = (out / "results_gpu.md").read_text()
    for heading in ("## 1. One full evaluation", "## 2. Hook overhead", "## 3. k-means on the GPU", "## 4. The tiny fairseq recipe"):
        assert heading in report


def test_target_rows_of_the_committed_gpu_run_state_each_ratio_and_verdict():
    """The main report's GPU target rows (gpu.target_rows) from the committed results_gpu.json: one row per
    measured precision and section, the ratio as measured, 'met' exactly when the target holds; failed
    rows are left out."""
    from benchmarks.speed import gpu

    results = json.loads((ROOT / "benchmarks/speed/results_gpu.json").read_text())
    rows = gpu.target_rows(results)
    evaluation = [r for r in results["evaluation"] if "skipped" not in r]
    overhead = [r for r in results["base_overhead"] if "skipped" not in r]
    assert len(rows) == len(evaluation) + len(overhead) + 1 and len(evaluation) == 2
    for row, measured in zip(rows, evaluation):
        ratio = measured["ratio_evaluate_to_forward"]
        assert f"{measured['dtype']} weights" in row and f"{ratio:.2f}x" in row
        assert ("| met (" in row) == (ratio <= 1.25) and results["machine"]["cuda"] in row
    for row, measured in zip(rows[len(evaluation):], overhead):
        assert f"{measured['overhead_percent']:.3g}%" in row and ("| met (" in row) == (measured["overhead_percent"] <= 2)
    percent = results["hook"]["overhead_percent_eval_of_stock_train"]
    assert f"{percent:.1f}%" in rows[-1] and ("| met (" in rows[-1]) == (percent <= 2)

    failed = dict(results, evaluation=[{"dtype": "float32", "skipped": "RuntimeError: out of memory"}],
                  base_overhead=[{"skipped": "x"}], hook={"skipped": "x"})
    assert gpu.target_rows(failed) == []
