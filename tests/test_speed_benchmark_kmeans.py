"""The k-means part of the speed benchmark (benchmarks/speed/run.py, issue 4): the method filter, the
sampled variant of ours in the target table, and faiss's BLAS kernels. Real faiss, real OpenBLAS; the
timings of these tiny points support no claim."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks.machine import (
    OPENBLAS_FALLBACK_CORES,
    cpu_flags,
    faiss_openblas,
    numpy_openblas,
    openblas_kernels,
    pin_openblas_kernels,
)
from benchmarks.speed.run import OURS_FIT, OURS_SAMPLED, bench_kmeans, kmeans_methods, kmeans_targets, write_report
from conftest import require


def test_methods_filter_runs_only_the_named_methods_and_scores_the_sampled_variant():
    require("faiss")
    only = [OURS_FIT, OURS_SAMPLED, "faiss Kmeans"]
    rows = bench_kmeans([(3000, 16, 10)], repeats=1, threads=1, only=only)
    assert sorted(row["method"] for row in rows) == sorted(only)
    sampled = next(row for row in rows if row["method"] == OURS_SAMPLED)
    faiss = next(row for row in rows if row["method"] == "faiss Kmeans")
    assert sampled["own_best_inertia"] > 0 and sampled["curve"][0]["level"] == 1
    t2 = next(t for t in kmeans_targets(rows) if t["criterion"] == "T2")
    # T2 is the worst own best (+1%), which every method reaches: the verdict carries the ratio of their times
    assert t2["ours_sampled"] == sampled["seconds"] and t2["faiss"] == faiss["seconds"]
    ratio = faiss["seconds"] / sampled["seconds"]
    assert t2["sampled_vs_faiss"] == f"{'met' if ratio >= 0.8 else 'missed'} ({ratio:.2f}x)"
    for target in kmeans_targets(rows):
        assert target["vs_minibatch"] == "MiniBatchKMeans not run"
        assert "stream_vs_faiss" not in target  # partial_fit was not asked for
    with pytest.raises(SystemExit, match="unknown"):
        kmeans_methods(3000, 10, seed=0, threads=1, only=["ours OnlineKMeans.fit, fit_sample=256K"])


@pytest.mark.parametrize("owner", ["faiss", "numpy"])
def test_an_openblas_gets_the_kernels_the_user_or_the_cpu_allows(owner, monkeypatch):
    """faiss's OpenBLAS (for its k-means) and numpy's (for scikit-learn's logistic regression), each a
    real bundled library read in a fresh interpreter."""
    require(owner)
    library = faiss_openblas() if owner == "faiss" else numpy_openblas()
    if library is None:
        pytest.skip(f"this {owner} build bundles no OpenBLAS")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert openblas_kernels(library) == "Haswell"
    assert pin_openblas_kernels(library) == "Haswell (OPENBLAS_CORETYPE=Haswell given)"
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    detected = openblas_kernels(library)
    assert not detected.startswith("unknown")
    report = pin_openblas_kernels(library)
    if detected in OPENBLAS_FALLBACK_CORES and "avx2" in cpu_flags():  # a CPU OpenBLAS does not know, with AVX2 or AVX-512
        assert os.environ["OPENBLAS_CORETYPE"] == ("SkylakeX" if "avx512f" in cpu_flags() else "Haswell")
        assert report.startswith(os.environ["OPENBLAS_CORETYPE"]) and openblas_kernels(library) == os.environ["OPENBLAS_CORETYPE"]
    else:  # OpenBLAS knew the CPU (or it has no AVX2): nothing is forced
        assert "OPENBLAS_CORETYPE" not in os.environ and report.startswith(detected)


def test_report_of_a_run_without_the_default_fit_still_renders(tmp_path):
    """The committed follow-up run, less its rows of ours.fit (as `--methods` without it would give)."""
    results = json.loads((Path(__file__).parent.parent / "benchmarks/speed/kmeans_fit_sample/results.json").read_text())
    results["kmeans"] = [row for row in results["kmeans"] if row.get("method") != OURS_FIT]
    write_report(results, tmp_path)
    report = (tmp_path / "results.md").read_text()
    assert "| ours >= 0.8x faiss | 1000000, 1024, 500 |" in report and "fit(fit_sample): met (2.26x)" in report
    assert "| ours >= MiniBatchKMeans speed |" not in report  # MiniBatchKMeans did not run: no target row
