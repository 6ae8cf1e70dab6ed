"""The k-means part of the speed benchmark (benchmarks/speed/run.py, issue 4): the method filter, the
sampled variant of ours in the target table, and faiss's BLAS kernels. Real faiss, real OpenBLAS; the
timings of these tiny points support no claim."""
from __future__ import annotations

import os

import pytest

from benchmarks.machine import OPENBLAS_FALLBACK_CORES, faiss_openblas, openblas_kernels, pin_faiss_openblas_kernels
from benchmarks.speed.run import OURS_FIT, OURS_SAMPLED, bench_kmeans, kmeans_methods, kmeans_targets
from conftest import require


def test_methods_filter_runs_only_the_named_methods_and_scores_the_sampled_variant():
    require("faiss")
    only = [OURS_FIT, OURS_SAMPLED, "faiss Kmeans"]
    rows = bench_kmeans([(3000, 16, 10)], repeats=1, threads=1, only=only)
    assert sorted(row["method"] for row in rows) == sorted(only)
    sampled = next(row for row in rows if row["method"] == OURS_SAMPLED)
    assert sampled["own_best_inertia"] > 0 and sampled["curve"][0]["level"] == 1
    for target in kmeans_targets(rows):
        assert target["sampled_vs_faiss"].startswith(("met", "missed", "n/a"))
        assert target["vs_minibatch"] == "MiniBatchKMeans not run"
        assert "stream_vs_faiss" not in target  # partial_fit was not asked for
    with pytest.raises(SystemExit, match="unknown"):
        kmeans_methods(3000, 10, seed=0, threads=1, only=["ours OnlineKMeans.fit, fit_sample=256K"])


def test_faiss_gets_the_openblas_kernels_the_user_or_the_cpu_allows(monkeypatch):
    require("faiss")
    library = faiss_openblas()
    assert library is not None and library.exists()
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert openblas_kernels(library) == "Haswell"
    assert pin_faiss_openblas_kernels() == "Haswell (OPENBLAS_CORETYPE=Haswell given)"
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    detected = openblas_kernels(library)
    report = pin_faiss_openblas_kernels()
    if detected in OPENBLAS_FALLBACK_CORES and "set by the benchmark" in report:  # an unknown CPU with AVX2 or AVX-512
        assert report.startswith(os.environ["OPENBLAS_CORETYPE"]) and openblas_kernels(library) == os.environ["OPENBLAS_CORETYPE"]
    else:  # OpenBLAS knew the CPU (or it has no AVX2): nothing is forced
        assert "OPENBLAS_CORETYPE" not in os.environ and report.startswith(detected)
