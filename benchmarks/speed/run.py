"""Speed benchmark of issue 4: our estimators against scikit-learn and faiss, one full evaluation,
and the training overhead of the fairseq hook. Writes ``results.md`` (the table, naming the machine)
and ``results.json`` (raw numbers) next to this file, or under ``--out``.

    .venv/bin/python -m benchmarks.speed --threads 1 --large   # full run (about 45 min on 2 shared CPU cores)
    .venv/bin/python -m benchmarks.speed --quick    # smoke run (about 1-2 min)

The sections can run as separate commands (``--skip``, ``--points``, each with its own ``--out``) and be
joined into one report with ``--report-only --merge A/results.json B/results.json`` (every command,
its times and load averages are listed). ``--method-budget`` caps each k-means method's effort ladder
per grid point, so a slow method (scikit-learn's full Lloyd at K=500) is cut with a note instead of
dropping the point. ``results_notes.md`` (a hand-written reading of the current run) and
``results_older.md`` (older runs) are included in ``results.md`` when present.
The ``base_overhead`` section estimates the hook's overhead at the base recipes' defaults from two measured
parts (one wav2vec 2.0 base training update on the recipe's per-GPU batch, one evaluation at its held-out size).

Every ratio in a table comes from one run of this command on one machine; times are medians of
``--repeats`` runs. GPU rows are measured only where CUDA is available, otherwise marked pending.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from benchmarks.machine import cpu_model, faiss_openblas, openblas_kernels_pinned

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PENDING_GPU = "pending (no GPU in this run)"


# ----------------------------------------------------------------------------------- machine
def machine() -> dict:
    model = cpu_model()
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_start": list(os.getloadavg()),
    }
    from importlib import metadata

    for name, dist in (("sklearn", "scikit-learn"), ("faiss", "faiss-cpu"), ("fairseq", "fairseq")):
        try:
            info[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[name] = None
    return info


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What to call before a clock read on ``device``: a CUDA synchronize (kernels run after the call
    returns), nothing on the CPU."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


# ----------------------------------------------------------------------------------- data
def gaussian_mixture(n: int, d: int, components: int, seed: int, rank: int = 16) -> np.ndarray:
    """Anisotropic Gaussian mixture (float32): x = mu_c + A_c z + noise, A_c a random D x rank
    factor per component, unequal component weights; roughly like SSL frame features."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.0, (components, d)).astype(np.float32) * 2.0
    factors = rng.normal(0.0, 1.0 / np.sqrt(rank), (components, d, rank)).astype(np.float32)
    weights = rng.dirichlet(np.full(components, 2.0))
    labels = rng.choice(components, size=n, p=weights)
    x = np.empty((n, d), dtype=np.float32)
    for c in range(components):
        rows = np.nonzero(labels == c)[0]
        if len(rows) == 0:
            continue
        z = rng.standard_normal((len(rows), rank), dtype=np.float32)
        x[rows] = means[c] + z @ factors[c].T * 1.5
    x += rng.standard_normal((n, d), dtype=np.float32) * 0.5
    return x


def inertia_of(x: torch.Tensor, centers: torch.Tensor, chunk: int = 32768) -> float:
    """Mean squared distance to the nearest centre (one common, exact measurement for all methods)."""
    centers = centers.float()
    cn = (centers * centers).sum(1)
    total = 0.0
    for part in torch.split(x, chunk):
        d = (part * part).sum(1, keepdim=True) + cn - 2.0 * part @ centers.T
        total += float(d.min(1).values.clamp_min(0).double().sum())
    return total / x.shape[0]


# ----------------------------------------------------------------------------------- 1. k-means
OURS_FIT = "ours OnlineKMeans.fit"
OURS_STREAM = "ours OnlineKMeans.partial_fit"
OURS_SAMPLED = "ours OnlineKMeans.fit(fit_sample=256K)"
SAMPLE_PER_CENTRE = 256
"""Rows per centre of the sampled variant of ours: faiss's default training sample (max_points_per_centroid)."""
OURS_VARIANTS = (("", OURS_FIT, "ours", "fit"), ("stream_", OURS_STREAM, "ours_stream", "partial_fit"),
                 ("sampled_", OURS_SAMPLED, "ours_sampled", "fit(fit_sample)"))
"""Each of our k-means variants: prefix of its verdict keys, method name, key of its time, table label."""


def kmeans_methods(n: int, k: int, seed: int, threads: int, only: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    """name -> {levels: [...], run: level -> centres (np/torch)}; levels in increasing effort.
    ``only``: keep just these method names (every method when None)."""
    from ssl_mi_callback.estimators import OnlineKMeans

    def ours(level, fit_sample=None):
        def run(x_np, x_t):
            km = OnlineKMeans(k, seed=seed, max_iter=level, fit_sample=fit_sample).fit(x_t)
            return km.cluster_centers_
        return run

    def ours_stream(level):  # partial_fit over mini-batches, `level` epochs
        def run(x_np, x_t):
            km = OnlineKMeans(k, seed=seed)
            for _ in range(level):
                for part in torch.split(x_t, 16384):
                    km.partial_fit(part)
            return km.cluster_centers_
        return run

    methods = {
        OURS_FIT: {"levels": [1, 2, 4, 8, 16, 32, 100], "unit": "max_iter", "make": ours},
        OURS_STREAM: {"levels": [1, 2, 4], "unit": "epochs", "make": ours_stream},
        # Lloyd on a seeded sample of 256 rows per centre, as faiss trains by default (not the evaluator's setting)
        OURS_SAMPLED: {"levels": [1, 2, 5, 10, 20], "unit": "max_iter",
                       "make": lambda level: ours(level, fit_sample=SAMPLE_PER_CENTRE * k)},
    }
    try:
        from sklearn.cluster import KMeans, MiniBatchKMeans

        def skl_mb(level):
            def run(x_np, x_t):
                return MiniBatchKMeans(k, batch_size=4096, n_init=3, max_iter=level, random_state=seed).fit(x_np).cluster_centers_
            return run

        def skl_km(level):
            def run(x_np, x_t):
                return KMeans(k, n_init=1, max_iter=level, random_state=seed, algorithm="lloyd").fit(x_np).cluster_centers_
            return run

        methods["sklearn MiniBatchKMeans"] = {"levels": [1, 2, 4, 8, 16, 50], "unit": "max_iter (epochs)", "make": skl_mb}
        methods["sklearn KMeans"] = {"levels": [2, 4, 8, 16, 32, 100], "unit": "max_iter", "make": skl_km}
    except ImportError:
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(threads)

        def fa(level):
            niter, full, nredo = level

            def run(x_np, x_t):
                km = faiss.Kmeans(x_np.shape[1], k, niter=niter, nredo=nredo, seed=seed + 1, verbose=False,
                                  max_points_per_centroid=(n // k + 1) if full else 256)
                km.train(x_np)
                return km.centroids
            return run

        # faiss seeds at random points (no k-means++) and by default trains on 256 points per cluster;
        # its ladder also raises the sample to all points and nredo (restarts, best kept) like our n_init
        methods["faiss Kmeans"] = {
            "levels": [(10, False, 1), (20, False, 1), (20, True, 1), (20, True, 3), (50, True, 3)],
            "unit": "(niter, all points, nredo)", "make": fa, "no_early_stop": True,
            "effort": lambda level: level[0] * level[2] * (n if level[1] else min(n, 256 * k)),
        }
    except ImportError:
        methods["faiss Kmeans"] = None  # reported as skipped
    if only is not None:
        unknown = sorted(set(only) - set(methods))
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; choose from {sorted(methods)}")
        methods = {name: method for name, method in methods.items() if name in only}
    return methods


def _effort(method: dict, level) -> float:
    """A number proportional to the work of one ladder level (iterations, epochs, or faiss's
    niter x nredo x training points)."""
    return float(method["effort"](level)) if "effort" in method else float(level)


def bench_kmeans(configs: List[tuple], repeats: int, threads: int, seed: int = 0, budget_s: float = 1e9,
                 method_budget_s: float = 1e9, checkpoint: Optional[Callable[[List[dict]], None]] = None,
                 only: Optional[Sequence[str]] = None) -> List[dict]:
    """Time-to-inertia of every method (or the ``only`` ones) at every grid point.

    Each method climbs its effort ladder until it improves < 0.1% or its ladder time would pass
    ``method_budget_s`` (predicted from the last level's time; the method is then marked as cut by the
    budget). Grid points that start after ``budget_s`` are skipped. ``checkpoint(rows)`` is called
    after each point so a stopped run keeps what it measured.
    """
    rows = []
    started_all = time.perf_counter()
    for n, d, k in configs:
        if time.perf_counter() - started_all > budget_s:
            rows.append({"N": n, "D": d, "K": k, "skipped": f"time budget of this run ({budget_s:.0f} s) spent"})
            continue
        point_started = time.perf_counter()
        x_np = gaussian_mixture(n, d, components=k, seed=seed)
        x_t = torch.from_numpy(x_np)
        methods = kmeans_methods(n, k, seed, threads, only)
        curves: Dict[str, list] = {}
        cut: Dict[str, str] = {}
        for name, method in methods.items():
            if method is None:
                continue
            curve = []
            previous = None
            spent = 0.0
            warm = min(n, max(4 * k, 2000))
            method["make"](method["levels"][0])(x_np[:warm], x_t[:warm])  # warm-up (imports, thread pools)
            for level in method["levels"]:
                if curve:
                    last = curve[-1]
                    ratio = _effort(method, level) / _effort(method, last["level"])
                    if spent + last["seconds"] * ratio > method_budget_s:
                        cut[name] = (f"ladder stopped before {method['unit']}={level}: predicted "
                                     f"{last['seconds'] * ratio:.0f} s would pass the {method_budget_s:.0f} s budget")
                        break
                t0 = time.perf_counter()
                centers = method["make"](level)(x_np, x_t)
                elapsed = time.perf_counter() - t0
                spent += elapsed
                inertia = inertia_of(x_t, torch.as_tensor(np.asarray(centers)))
                curve.append({"level": level, "seconds": elapsed, "inertia": inertia})
                # stop climbing once converged (less than 0.1% better than the previous level)
                if not method.get("no_early_stop") and previous is not None and inertia > previous * (1 - 1e-3):
                    break
                previous = inertia if previous is None else min(previous, inertia)
            curves[name] = curve
            print(f"[kmeans]   N={n} D={d} K={k} {name}: " + ", ".join(
                f"{p['level']}: {p['seconds']:.1f}s {p['inertia']:.4g}" for p in curve) + (f" ({cut[name]})" if name in cut else ""), flush=True)
        best = min(p["inertia"] for c in curves.values() for p in c)
        # T1: within 1% of the best inertia any method reached (the issue's criterion);
        # T2: the inertia every method reaches within its budget (the worst method's best, + 1%):
        # equal-inertia timing; a method cut by the budget sets it with the best it reached
        common = max(min(p["inertia"] for p in c) for c in curves.values()) * 1.01
        timed: Dict[tuple, list] = {}

        def time_to(name, target):
            point = next((p for p in curves[name] if p["inertia"] <= target), None)
            if point is None:
                return None, None, 0
            key = (name, str(point["level"]))
            if key not in timed:
                fn = methods[name]["make"](point["level"])
                extra = repeats - 1 if point["seconds"] * (repeats - 1) <= method_budget_s else 0
                timed[key] = [point["seconds"]] + [median_time(lambda: fn(x_np, x_t), 1)[0] for _ in range(extra)]
            return point, statistics.median(timed[key]), len(timed[key])

        for name, method in methods.items():
            row = {"N": n, "D": d, "K": k, "method": name, "best_inertia": best, "common_inertia": common}
            if method is None:
                row["skipped"] = "faiss not installed (pip install faiss-cpu)"
                rows.append(row)
                continue
            row["curve"], row["unit"] = curves[name], method["unit"]
            row["budget_cut"] = cut.get(name)
            last = min(curves[name], key=lambda p: p["inertia"])
            row["own_best_inertia"], row["own_best_level"], row["own_best_seconds"] = last["inertia"], last["level"], last["seconds"]
            p1, t1, n1 = time_to(name, best * 1.01)
            p2, t2, n2 = time_to(name, common)
            row["reached"] = p1 is not None
            row["reached_t2"] = p2 is not None
            row["level_t1"], row["seconds_t1"], row["timings_t1"] = (p1["level"], t1, n1) if p1 else (None, None, 0)
            row["level"], row["seconds"], row["timings"] = (p2["level"], t2, n2) if p2 else (None, None, 0)
            row["inertia"] = p2["inertia"] if p2 else None
            row["frames_per_s"] = n / t2 if t2 else None
            row["t2_rule"] = "all methods"
            rows.append(row)
        here = [r for r in rows if (r.get("N"), r.get("D"), r.get("K")) == (n, d, k) and "curve" in r]
        ours = next((r for r in here if r["method"] == OURS_FIT), None)
        for r in here:
            if ours and r.get("seconds") and ours.get("seconds"):
                r["ours_speedup"] = r["seconds"] / ours["seconds"]
            if ours and r.get("seconds_t1") and ours.get("seconds_t1"):
                r["ours_speedup_t1"] = r["seconds_t1"] / ours["seconds_t1"]
        for r in here:
            r["point_seconds"] = time.perf_counter() - point_started
        print(f"[kmeans] N={n} D={d} K={k} ({time.perf_counter() - point_started:.0f} s): " + ", ".join(
            f"{r['method']} T2 {fmt(r.get('seconds'))}s T1 {fmt(r.get('seconds_t1'))}" for r in here), flush=True)
        del x_np, x_t
        if checkpoint is not None:
            checkpoint(rows)
    return rows


def retarget_kmeans(rows: List[dict]) -> List[dict]:
    """Recompute T2 of a run whose T2 target excluded the methods cut by the budget (the first version
    of the per-method budget) with today's rule: the worst own best of *all* methods + 1%. A level
    whose repeats were timed keeps its median; any other level gets its single ladder time
    (``timings`` = 1)."""
    points: Dict[tuple, List[dict]] = {}
    for r in rows:
        if "curve" in r:
            points.setdefault((r["N"], r["D"], r["K"]), []).append(r)
    for here in points.values():
        if all(r.get("t2_rule") == "all methods" for r in here):
            continue
        common = max(r["own_best_inertia"] for r in here) * 1.01
        for r in here:
            medians = {}
            if r.get("level") is not None:
                medians[str(r["level"])] = (r["seconds"], r.get("timings", 1))
            if r.get("level_t1") is not None:
                medians[str(r["level_t1"])] = (r["seconds_t1"], r.get("timings_t1", 1))
            point = next((p for p in r["curve"] if p["inertia"] <= common), None)
            r["common_inertia"], r["t2_rule"] = common, "all methods"
            r["reached_t2"] = point is not None
            if point is None:
                r["level"] = r["seconds"] = r["inertia"] = r["frames_per_s"] = None
                r["timings"] = 0
                continue
            seconds, count = medians.get(str(point["level"]), (point["seconds"], 1))
            r["level"], r["seconds"], r["timings"], r["inertia"] = point["level"], seconds, count, point["inertia"]
            r["frames_per_s"] = r["N"] / seconds
        ours = next((r for r in here if r["method"] == OURS_FIT), None)
        for r in here:
            r["ours_speedup"] = r["seconds"] / ours["seconds"] if ours and r.get("seconds") and ours.get("seconds") else None
    return rows


def kmeans_iteration_profile(n: int, d: int, k: int, repeats: int, seed: int = 0) -> dict:
    """Where one Lloyd iteration of OnlineKMeans spends its time (waste hunting), next to a lean one."""
    from ssl_mi_callback.estimators import OnlineKMeans

    x = torch.from_numpy(gaussian_mixture(n, d, components=2 * k, seed=seed))
    km = OnlineKMeans(k, seed=seed, max_iter=1).fit(x)
    centers = km.cluster_centers_
    cn = (centers * centers).sum(1)
    chunk = 16384
    out = {"N": n, "D": d, "K": k}

    def matmul_argmin():
        for part in torch.split(x, chunk):
            torch.argmin(cn - 2.0 * part @ centers.T, dim=1)

    labels = torch.cat([torch.argmin(cn - 2.0 * p @ centers.T, dim=1) for p in torch.split(x, chunk)])

    def exact_distances():  # ((chunk - centers[labels]) ** 2).sum(1), as _assign_chunks does
        for part, lab in zip(torch.split(x, chunk), torch.split(labels, chunk)):
            ((part - centers[lab]) ** 2).sum(1)

    def double_index_add():  # stats in float64 via chunk.double()
        stats = torch.zeros(k, d, dtype=torch.float64)
        for part, lab in zip(torch.split(x, chunk), torch.split(labels, chunk)):
            stats.index_add_(0, lab, part.double())

    def float_index_add():
        stats = torch.zeros(k, d)
        for part, lab in zip(torch.split(x, chunk), torch.split(labels, chunk)):
            stats.index_add_(0, lab, part)

    def onehot_matmul():  # sums as a (K x chunk) @ (chunk x D) product, float32 with float64 accumulation across chunks
        stats = torch.zeros(k, d, dtype=torch.float64)
        for part, lab in zip(torch.split(x, chunk), torch.split(labels, chunk)):
            onehot = torch.nn.functional.one_hot(lab, k).T.float()
            stats += (onehot @ part).double()

    def row_norms_one_temporary():  # (chunk * chunk).sum(1) on a 16384-row temporary, as before 2026-11-26 14:17
        for part in torch.split(x, chunk):
            (part * part).sum(1)

    def row_norms_blocks():  # the same sums from 1024-row temporaries, as _assign_chunks does now
        for part in torch.split(x, chunk):
            torch.cat([(block * block).sum(1) for block in torch.split(part, 1024)])

    def isfinite_check():
        bool(torch.isfinite(x).all())

    def mean_variance():
        km._mean_variance(x, lambda t: t)

    def one_fit_iteration():
        OnlineKMeans(k, seed=seed, init=centers, max_iter=1).fit(x)

    for name, fn in [("matmul+argmin", matmul_argmin), ("exact distance (gather, sub, square)", exact_distances),
                     ("index_add float64 (chunk.double())", double_index_add), ("index_add float32", float_index_add),
                     ("one-hot matmul sums", onehot_matmul),
                     ("row norms, one 16384-row temporary per chunk", row_norms_one_temporary),
                     ("row norms, 1024-row temporaries", row_norms_blocks), ("isfinite check of x", isfinite_check),
                     ("_mean_variance (1024-row blocks)", mean_variance),
                     ("OnlineKMeans.fit(init=centres, max_iter=1) total", one_fit_iteration)]:
        try:
            fn()
            out[name] = median_time(fn, repeats)[0]
        except Exception as error:  # a renamed internal must not lose the grid measured before
            out[name] = f"not measured ({type(error).__name__}: {error})"
    seeding = median_time(lambda: OnlineKMeans(k, seed=seed, max_iter=1).fit(x[: min(n, 10000)]), 1)[0]
    out["k-means++ seeding, 3 x 10k-row sample (fit max_iter=1 on 10k rows)"] = seeding
    return out


# ----------------------------------------------------------------------------------- 2. probes
def _timed_repeats(fn: Callable[[], object], repeats: int, budget_s: float) -> tuple[float, object, int]:
    """Median seconds of up to ``repeats`` calls (no further call once ``budget_s`` is spent), the last
    result, and how many calls were timed."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
        if sum(times) > budget_s:
            break
    return statistics.median(times), result, len(times)


def _quiet(fn: Callable[[], object]) -> Callable[[], object]:
    """Run ``fn`` with warnings (sklearn's ConvergenceWarning at small max_iter) silenced."""
    def run():
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    return run


def bench_probes(n: int, d: int, classes: int, repeats: int, seed: int = 0, budget_s: float = 400.0) -> List[dict]:
    """Probes at the same held-out cross-entropy.

    (a) same job: ours ``LinearProbe(weight_decay="auto")`` (L2 chosen by 3-fold group CV over the
        half-decade path, then a refit) vs sklearn ``LogisticRegressionCV`` (lbfgs, multinomial) on
        the same grid (C = 1 / (n_fit wd)), the same 3 utterance folds (GroupKFold), neg. log loss.
    (b) same solver problem: both at the L2 ours chose, each climbing its iteration ladder until its
        held-out CE is within 1% of the lower of the two converged CEs.
    Plus MLPProbe at its defaults. ``budget_s``: no further repeat of one timing once it is spent.
    """
    from ssl_mi_callback.estimators import LinearProbe, MLPProbe, OnlineKMeans
    from ssl_mi_callback.estimators.probes import WEIGHT_DECAY_GRID

    rng = np.random.default_rng(seed)
    zb = gaussian_mixture(2 * n, d, components=classes, seed=seed)
    za = zb + rng.standard_normal(zb.shape, dtype=np.float32) * 2.0  # the "masked" view: a noisy copy
    # labels: nearest of `classes` centres fitted on zb (what the product's probe predicts)
    codes = OnlineKMeans(classes, seed=seed, max_iter=20).fit(zb).predict(zb).numpy()
    groups = np.arange(2 * n) // 200  # 200-frame "utterances"
    fit = groups % 2 == 0
    ev = ~fit
    x_fit, y_fit, g_fit, x_ev, y_ev = za[fit], codes[fit], groups[fit], za[ev], codes[ev]
    n_fit = len(x_fit)
    rows: List[dict] = []

    def ce_torch(probe) -> float:
        log_proba = probe.predict_log_proba(x_ev)
        return float(-log_proba.gather(1, torch.as_tensor(y_ev)[:, None]).mean())

    def ce_sklearn(model, xs_ev) -> float:
        proba = np.zeros((len(y_ev), classes))
        proba[:, model.classes_] = model.predict_proba(xs_ev)
        return float(-np.log(np.clip(proba[np.arange(len(y_ev)), y_ev], 1e-300, None)).mean())

    def log(row):
        rows.append(row)
        print(f"[probes] {row['method']}: {fmt(row.get('seconds'))} s (x{row.get('timings', 1)}), CE {fmt(row.get('heldout_ce_nats'), 4)}", flush=True)

    # ---- (a) same job: cross-validated L2 + refit
    seconds, probe, count = _timed_repeats(lambda: LinearProbe(classes, seed=seed).fit(x_fit, y_fit, g_fit), repeats, budget_s)
    chosen_wd = float(probe.weight_decay_)
    log({"part": "a", "method": "ours LinearProbe(weight_decay='auto'): 3-fold group CV on the 10-point path, then refit",
         "seconds": seconds, "timings": count, "heldout_ce_nats": ce_torch(probe), "weight_decay": chosen_wd,
         "C_equivalent": 1.0 / (n_fit * chosen_wd) if chosen_wd > 0 and math.isfinite(chosen_wd) else None,
         "cv_points_tried": len(probe.cv_bits_) - 1, "refit_iterations": probe.n_iter_,
         "settings": f"path_iter={probe.path_iter}, lbfgs_iter={probe.lbfgs_iter}, tolerance={probe.tolerance}, patience={probe.patience}"})
    try:
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
        from sklearn.model_selection import GroupKFold
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        log({"part": "a", "method": "sklearn LogisticRegressionCV", "skipped": "scikit-learn not installed"})
        sklearn_ok = False
    else:
        sklearn_ok = True
    if sklearn_ok:
        # ours minimises mean CE + (wd/2)||W||^2; sklearn C * sum CE + (1/2)||W||^2 -> C = 1 / (n_fit wd).
        # n_fit = all fit frames (the refit); inside a fold sklearn uses the same C on 2/3 of them, so its
        # fold penalty is 1.5x ours there (0.18 decade, within a half-decade grid step)
        cs = sorted(1.0 / (n_fit * wd) for wd in WEIGHT_DECAY_GRID)  # strongest L2 first, as ours
        folds = list(GroupKFold(n_splits=3).split(x_fit, y_fit, g_fit))

        def fit_cv():
            scaler = StandardScaler().fit(x_fit)
            model = LogisticRegressionCV(Cs=cs, l1_ratios=(0.0,), cv=folds, solver="lbfgs", scoring="neg_log_loss",
                                         n_jobs=1, refit=True).fit(scaler.transform(x_fit), y_fit)
            return scaler, model

        seconds, (scaler, model), count = _timed_repeats(_quiet(fit_cv), repeats, budget_s)
        c_chosen = float(np.ravel(model.C_)[0])
        log({"part": "a", "method": "sklearn LogisticRegressionCV(lbfgs, same 10 Cs, GroupKFold(3), neg_log_loss, max_iter=100, tol=1e-4), refit",
             "seconds": seconds, "timings": count, "heldout_ce_nats": ce_sklearn(model, scaler.transform(x_ev)),
             "C": c_chosen, "weight_decay_equivalent": 1.0 / (n_fit * c_chosen),
             "refit_iterations": int(np.max(model.n_iter_[..., -1])) if np.ndim(model.n_iter_) else int(model.n_iter_)})

    # ---- (b) same solver problem at the L2 ours chose: time to the same held-out CE
    if chosen_wd > 0 and math.isfinite(chosen_wd) and sklearn_ok:
        scaler = StandardScaler().fit(x_fit)
        xs_fit, xs_ev = scaler.transform(x_fit), scaler.transform(x_ev)
        c_value = 1.0 / (n_fit * chosen_wd)
        ours_levels = [5, 10, 20, 40, 80, 200]
        skl_levels = [5, 10, 20, 40, 80, 160, 320]

        def ours_fit(level):
            return lambda: LinearProbe(classes, seed=seed, weight_decay=chosen_wd, lbfgs_iter=level).fit(x_fit, y_fit, g_fit)

        def skl_fit(level):  # the scaler is part of the job, as ours standardises inside fit
            def run():
                sc = StandardScaler().fit(x_fit)
                return sc, LogisticRegression(C=c_value, max_iter=level, tol=1e-6).fit(sc.transform(x_fit), y_fit)
            return _quiet(run)

        curves = {"ours": [], "sklearn": []}
        for level in ours_levels:
            t0 = time.perf_counter()
            pr = ours_fit(level)()
            curves["ours"].append({"level": level, "seconds": time.perf_counter() - t0, "heldout_ce_nats": ce_torch(pr),
                                   "iterations": pr.n_iter_})
            # converged: torch's L-BFGS may also stop on its evaluation cap (1.25 x max_iter), so n_iter < level
            # alone does not prove it; stop when a higher cap no longer changes the solution
            previous = curves["ours"][-2] if len(curves["ours"]) > 1 else None
            if previous is not None and (pr.n_iter_ <= previous["iterations"] or
                                         abs(curves["ours"][-1]["heldout_ce_nats"] - previous["heldout_ce_nats"]) < 1e-5 * previous["heldout_ce_nats"]):
                break
        for level in skl_levels:
            t0 = time.perf_counter()
            sc, lr = skl_fit(level)()
            curves["sklearn"].append({"level": level, "seconds": time.perf_counter() - t0,
                                      "heldout_ce_nats": ce_sklearn(lr, sc.transform(x_ev)), "iterations": int(np.max(lr.n_iter_))})
            if int(np.max(lr.n_iter_)) < level:
                break
        target = min(curves["ours"][-1]["heldout_ce_nats"], curves["sklearn"][-1]["heldout_ce_nats"]) * 1.01
        for who, make, unit in (("ours", ours_fit, "lbfgs_iter"), ("sklearn", skl_fit, "max_iter")):
            hit = next((p for p in curves[who] if p["heldout_ce_nats"] <= target), None)
            name = (f"ours LinearProbe(weight_decay={chosen_wd:.3g}) (L-BFGS, float32)" if who == "ours" else
                    f"sklearn LogisticRegression(C={c_value:.3g}, lbfgs, float64, tol=1e-6)")
            if hit is None:
                log({"part": "b", "method": name, "seconds": None, "heldout_ce_nats": curves[who][-1]["heldout_ce_nats"],
                     "setting": f"did not reach the target within {unit}={curves[who][-1]['level']}", "curve": curves[who],
                     "target_ce_nats": target})
                continue
            fn = make(hit["level"])
            extra = [median_time(fn, 1)[0] for _ in range(repeats - 1)] if hit["seconds"] * repeats < budget_s else []
            log({"part": "b", "method": name, "seconds": statistics.median([hit["seconds"]] + extra), "timings": 1 + len(extra),
                 "heldout_ce_nats": hit["heldout_ce_nats"], "setting": f"{unit}={hit['level']} ({hit['iterations']} iterations)",
                 "converged": {"setting": f"{unit}={curves[who][-1]['level']} ({curves[who][-1]['iterations']} iterations)",
                               "seconds": curves[who][-1]["seconds"], "heldout_ce_nats": curves[who][-1]["heldout_ce_nats"]},
                 "curve": curves[who], "target_ce_nats": target})

    # ---- MLP at its defaults
    seconds, probe, count = _timed_repeats(lambda: MLPProbe(classes, seed=seed).fit(x_fit, y_fit, g_fit), repeats, budget_s)
    log({"part": "mlp", "method": "ours MLPProbe (Adam, defaults)", "seconds": seconds, "timings": count,
         "heldout_ce_nats": ce_torch(probe), "best_step": probe.best_step_})
    for r in rows:
        r.update(N_fit=int(fit.sum()), N_eval=int(ev.sum()), D=d, classes=classes)
    return rows


# ----------------------------------------------------------------------------------- 3. full evaluation
@contextlib.contextmanager
def estimator_timers(store: dict, sync: Callable[[], None] = lambda: None):
    """Time k-means and the probe inside ``unsupervised_mi`` by wrapping what bounds.py looks up
    (no package code changes); falls back to no split if the names are gone. ``sync`` runs before
    each clock read (a CUDA synchronize on a GPU, where kernels run after the call returns)."""
    from ssl_mi_callback.estimators import bounds

    def clock() -> float:
        sync()
        return time.perf_counter()

    saved = {}
    if hasattr(bounds, "OnlineKMeans"):
        base = bounds.OnlineKMeans

        class TimedKMeans(base):
            def fit(self, *a, **kw):
                t0 = clock()
                try:
                    return super().fit(*a, **kw)
                finally:
                    store["kmeans"] = store.get("kmeans", 0.0) + clock() - t0

            def predict(self, *a, **kw):
                t0 = clock()
                try:
                    return super().predict(*a, **kw)
                finally:
                    store["kmeans"] = store.get("kmeans", 0.0) + clock() - t0

            def inertia(self, *a, **kw):
                t0 = clock()
                try:
                    return super().inertia(*a, **kw)
                finally:
                    store["kmeans"] = store.get("kmeans", 0.0) + clock() - t0

        saved["OnlineKMeans"] = base
        bounds.OnlineKMeans = TimedKMeans
    if hasattr(bounds, "make_probe"):
        base_make = bounds.make_probe

        def timed_make(*a, **kw):
            probe = base_make(*a, **kw)
            for method in ("fit", "predict_log_proba"):
                original = getattr(probe, method)

                def wrapped(*args, _original=original, **kwargs):
                    t0 = clock()
                    try:
                        return _original(*args, **kwargs)
                    finally:
                        store["probe"] = store.get("probe", 0.0) + clock() - t0
                setattr(probe, method, wrapped)
            return probe

        saved["make_probe"] = base_make
        bounds.make_probe = timed_make
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(bounds, name, value)


def build_wav2vec2(kind: str):
    from ssl_mi_callback.integrations.fairseq import compat

    compat.apply()
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    import yaml

    if kind == "tiny":
        cfg = yaml.safe_load((ROOT / "recipes/fairseq/tiny_wav2vec2.yaml").read_text())["model"]
        cfg.pop("_name")
        config = Wav2Vec2Config(**cfg)
    else:
        config = Wav2Vec2Config()  # fairseq defaults: wav2vec 2.0 base, 95 M parameters
    torch.manual_seed(0)
    model = Wav2Vec2Model(config)
    return model


def section2_evaluator(kind: str, subset):
    """The evaluator of section 2 for a wav2vec 2.0 ``kind`` on held-out ``subset``: EvaluationConfig defaults,
    mask_length 5 for the tiny recipe's model, 10 (the base default) otherwise."""
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter

    return Evaluator(EvaluationConfig(mask_length=5 if kind == "tiny" else 10), subset, FairseqMaskedPredictionAdapter())


def bench_evaluation(heldout: Path, kind: str, max_seconds: float, repeats: int, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, warmup: bool = False) -> dict:
    """Evaluator.evaluate of a random-init wav2vec 2.0 ``kind`` on ``max_seconds`` of ``heldout``, its
    weights on ``device`` in ``dtype``: medians of ``repeats`` calls, split by stage (a GPU is
    synchronised before every clock read); ``warmup``: one call first, reported apart (kernels,
    allocator)."""
    from ssl_mi_callback.data import load_heldout

    device = torch.device(device)
    sync = synchronizer(device)
    model = build_wav2vec2(kind).to(device=device, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    load_s, subset = median_time(lambda: load_heldout(heldout, max_seconds=max_seconds, max_utterance_seconds=15.0), repeats)
    evaluator = section2_evaluator(kind, subset)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    records = []
    for _ in range(repeats + int(warmup)):
        store: dict = {}
        with estimator_timers(store, sync):
            record = evaluator.evaluate(model)
        seconds = dict(record["seconds"])
        seconds["kmeans"] = store.get("kmeans")
        seconds["probe"] = store.get("probe")
        if seconds["kmeans"] is not None and seconds["probe"] is not None:
            seconds["estimators_other"] = seconds["estimators"] - seconds["kmeans"] - seconds["probe"]
        records.append(seconds)
    first_call, records = (records[0], records[1:]) if warmup else (None, records)
    med = {key: statistics.median([r[key] for r in records if r.get(key) is not None])
           for key in records[0] if any(r.get(key) is not None for r in records)}
    med["load_heldout"] = load_s
    whole = med["total"] + load_s
    metrics = record["metrics"]
    result = {
        "model": f"wav2vec2 {kind} ({params / 1e6:.2f} M params, random init)",
        "dtype": str(dtype).replace("torch.", ""),
        "audio_seconds": round(subset.total_seconds, 1),
        "utterances": len(subset.utterances),
        "frames_masked": record["subset"]["frames"],
        "seconds": med,
        "first_call": first_call,
        "ratio_evaluate_to_forward": med["total"] / med["forward"],
        "ratio_with_loading_to_forward": whole / med["forward"],
        "repeats": repeats,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "mi_bits": metrics["mi_bits"],
        "ci95": [metrics[k] for k in sorted(metrics) if k.startswith("mi_given_position_ci95_")]
                or [metrics[k] for k in sorted(metrics) if k.startswith("mi_ci95_")],
    }
    print(f"[evaluation] {kind} {result['dtype']}: {json.dumps({k: round(v, 3) for k, v in med.items()})} "
          f"ratio {result['ratio_evaluate_to_forward']:.2f}", flush=True)
    return result


# ----------------------------------------------------------------------------------- 4. hook overhead
def _stock_yaml(source: Path, target_dir: Path) -> str:
    """A copy of the tiny recipe without the MI task: audio_pretraining, best by loss, no mi_* keys."""
    import yaml

    cfg = yaml.safe_load(source.read_text())
    cfg["task"] = {key: value for key, value in cfg["task"].items() if not key.startswith("mi_")}
    cfg["task"]["_name"] = "audio_pretraining"
    cfg["checkpoint"]["best_checkpoint_metric"] = "loss"
    cfg["checkpoint"]["maximize_best_checkpoint_metric"] = False
    target_dir.mkdir(parents=True, exist_ok=True)
    (target_dir / "tiny_wav2vec2_stock.yaml").write_text("# @package _group_\n" + yaml.safe_dump(cfg, sort_keys=False))
    return "tiny_wav2vec2_stock"


def _train(config_dir: Path, config_name: str, data: Path, work: Path, max_update: Optional[int],
           overrides: Sequence[str] = ()) -> dict:
    launcher = Path(sys.executable).parent / "ssl-mi-fairseq-hydra-train"
    command = [str(launcher) if launcher.exists() else sys.executable,
               *([] if launcher.exists() else ["-m", "ssl_mi_callback.integrations.fairseq.launcher"]),
               "--config-dir", str(config_dir), "--config-name", config_name,
               f"task.data={data}", f"checkpoint.save_dir={work / 'ckpt'}", f"hydra.run.dir={work / 'hydra'}"]
    if max_update is not None:
        command.append(f"optimization.max_update={max_update}")
    command.extend(overrides)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # a small wrapper process forks the run, so ru_maxrss is the run's own peak (a child forked from
    # this big process would inherit this process's high-water mark)
    wrapper = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
               "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)")
    rss_file = work / "peak_rss_kb"
    t0 = time.perf_counter()
    with open(work / "train.log", "w") as log:
        returncode = subprocess.call([sys.executable, "-S", "-c", wrapper, str(rss_file), *command],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t0
    if returncode != 0:
        raise RuntimeError(f"training failed ({returncode}); see {work / 'train.log'}")
    evals = []
    history = work / "ckpt" / "mi_history.jsonl"
    if history.exists():
        for line in history.read_text().splitlines():
            record = json.loads(line)
            evals.append(record.get("seconds", {}))
    import re

    done = re.findall(r"done training in ([0-9.]+) seconds", (work / "train.log").read_text())
    return {"wall_s": wall, "train_s": float(done[-1]) if done else None, "peak_rss_mb": int(rss_file.read_text()) / 1024, "evaluations": evals, "log": str(work / "train.log")}


def bench_hook(data: Path, work: Path, repeats: int, max_update: Optional[int], overrides: Sequence[str] = ()) -> dict:
    """The tiny recipe with and without the hook, alternating; ``overrides`` (fairseq keys, e.g.
    ``common.cpu=false``) go to both."""
    recipe = ROOT / "recipes/fairseq/tiny_wav2vec2.yaml"
    runs = {"with hook": [], "stock": []}
    tmp = work / "hook_runs"
    stock_name = _stock_yaml(recipe, tmp / "configs")
    for i in range(repeats):  # alternate, so drifting machine load hits both alike
        runs["with hook"].append(_train(recipe.parent, "tiny_wav2vec2", data, tmp / f"mi{i}", max_update, overrides))
        runs["stock"].append(_train(tmp / "configs", stock_name, data, tmp / f"stock{i}", max_update, overrides))
        print(f"[hook] pair {i}: with hook {runs['with hook'][-1]['wall_s']:.1f}s, stock {runs['stock'][-1]['wall_s']:.1f}s", flush=True)
    hook_train = statistics.median(r["train_s"] for r in runs["with hook"])
    stock_train = statistics.median(r["train_s"] for r in runs["stock"])
    hook_wall = statistics.median(r["wall_s"] for r in runs["with hook"])
    stock_wall = statistics.median(r["wall_s"] for r in runs["stock"])
    eval_seconds = [sum(e.get("wall", e.get("total", 0.0)) for e in r["evaluations"]) for r in runs["with hook"]]
    return {
        "max_update": max_update or 300,
        "runs": runs,
        "wall_with_hook_s": hook_wall,
        "wall_stock_s": stock_wall,
        "overhead_percent_wall": 100.0 * (hook_wall - stock_wall) / stock_wall,
        "train_with_hook_s": hook_train, "train_stock_s": stock_train,
        "overhead_percent_train": 100.0 * (hook_train - stock_train) / stock_train,
        "evaluation_seconds_per_run": statistics.median(eval_seconds),
        "evaluations_per_run": len(runs["with hook"][0]["evaluations"]),
        "overhead_percent_from_eval_time": 100.0 * statistics.median(eval_seconds) / stock_wall,
        "overhead_percent_eval_of_stock_train": 100.0 * statistics.median(eval_seconds) / stock_train,
        "peak_rss_mb_with_hook": max(r["peak_rss_mb"] for r in runs["with hook"]),
        "peak_rss_mb_stock": max(r["peak_rss_mb"] for r in runs["stock"]),
        "implied_bound_mb": implied_bound_mb(recipe),
    }


def implied_bound_mb(recipe: Path) -> dict:
    """Memory the hook may add, from the recipe's settings (tiny model: 50 frames/s, D = 64, 2 heads,
    first conv 64 channels at stride 5, one scored layer)."""
    import yaml

    cfg = yaml.safe_load(recipe.read_text())
    task, model = cfg["task"], cfg["model"]
    dim, heads = model["encoder_embed_dim"], model["encoder_attention_heads"]
    frames = task["mi_max_seconds"] * 50
    audio = task["mi_max_seconds"] * 16000 * 4  # held-out waveforms kept in memory (float32)
    features = frames * dim * 4 * 2  # Za + Zb float32 at every frame (upper bound: all frames masked)
    first_conv = task["mi_batch_seconds"] * 16000 / 5 * 64 * 4  # first conv output of one forward batch
    utt_frames = task["mi_max_utterance_seconds"] * 50
    per_batch = max(1.0, task["mi_batch_seconds"] / task["mi_max_utterance_seconds"])
    attention = per_batch * heads * utt_frames**2 * 4  # attention weights of one layer for one batch
    mb = {"heldout_audio": audio, "features_za_zb": features, "forward_batch_first_conv_x2": 2 * first_conv,
          "attention_one_batch": attention}
    mb = {key: value / 2**20 for key, value in mb.items()}
    mb["total"] = sum(mb.values())
    return mb


# ----------------------------------------------------------------------------------- 5. base recipes' overhead (estimated)
BASE_RECIPES = ("wav2vec2_base_librispeech_mi", "hubert_base_librispeech_mi")


def _busy_processes(limit: int = 6) -> List[str]:
    """Other processes using CPU now (ps %CPU > 20, this process left out): who shares the cores."""
    try:
        text = subprocess.run(["ps", "-eo", "pid=,pcpu=,args=", "--sort=-pcpu"], capture_output=True, text=True, timeout=10).stdout
    except Exception:  # ps missing: nothing to say
        return []
    busy = []
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or int(parts[0]) == os.getpid():
            continue
        if float(parts[1]) > 20.0:
            busy.append(f"{float(parts[1]):.0f}% {parts[2][:110]}")
    return busy[:limit]


def _speech_batch(corpus: Path, utterances: int, samples: int) -> tuple[torch.Tensor, str]:
    """``utterances`` x ``samples`` of the corpus' generated speech (train split, then the others),
    concatenated and cut into equal utterances; tiled if the corpus is shorter; noise if it has none."""
    from ssl_mi_callback.data import load_heldout

    need = utterances * samples
    pieces, got, used = [], 0, []
    for split in ("train", "valid", "probe_train", "probe_test", "heldout"):
        manifest = corpus / f"{split}.tsv"
        if got >= need or not manifest.exists():
            continue
        subset = load_heldout(manifest, max_seconds=(need - got) / 16000 + 1.0)
        for utterance in subset.utterances:
            pieces.append(utterance.waveform.astype(np.float32))
            got += utterance.num_samples
        used.append(f"{split}.tsv ({len(subset.utterances)} utterances)")
        if got >= need:
            break
    if got == 0:
        rng = np.random.default_rng(0)
        return torch.from_numpy(rng.standard_normal(need).astype(np.float32) * 0.1).view(utterances, samples), "Gaussian noise (no audio in the corpus)"
    audio = np.concatenate(pieces)
    source = f"generated speech of the benchmark corpus: {', '.join(used)}, concatenated and cut into {utterances} x {samples} samples"
    if len(audio) < need:
        audio = np.tile(audio, math.ceil(need / len(audio)))
        source += f" (the corpus has {got / 16000:.1f} s: tiled)"
    return torch.from_numpy(np.ascontiguousarray(audio[:need])).view(utterances, samples), source


def _wav2vec2_update(model, optimizer, source: torch.Tensor, weights: Dict[str, float], clip_norm: float) -> tuple[float, List[str]]:
    """One training update as fairseq's trainer runs it with the wav2vec criterion (infonce): returns
    the loss per target (nats) and the names of the extra losses the model gave."""
    import torch.nn.functional as F

    model.train()
    optimizer.zero_grad(set_to_none=True)
    net_output = model(source=source, padding_mask=None, mask=True)
    logits = model.get_logits(net_output).float()
    target = model.get_targets(None, net_output)
    loss = F.cross_entropy(logits, target, reduction="sum")
    sample_size = target.numel()
    # get_extra_losses lists the codebook-diversity penalty (prob_perplexity, only with quantize_targets)
    # and then features_pen; the recipe's loss_weights [w_prob_perplexity, w_features_pen] pair with them by name
    names = [name for name in ("prob_perplexity", "features_pen") if name in net_output]
    for name, penalty in zip(names, model.get_extra_losses(net_output)):
        coef = weights.get(name, 0.0)
        if coef != 0 and penalty is not None:
            loss = loss + coef * penalty.float() * sample_size
    loss.backward()
    for p in model.parameters():  # fairseq's trainer: gradients / sample_size (optimizer.multiply_grads)
        if p.grad is not None:
            p.grad.mul_(1.0 / sample_size)
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return float(loss.detach()) / sample_size, names


def recipe_training(cfg: dict, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Dict[str, float], float]:
    """What a base recipe's update needs: torch AdamW with the recipe's adam settings (fairseq's adam is
    AdamW-style), the criterion's extra-loss weights by name, and the clip norm."""
    import ast

    opt_cfg = cfg["optimizer"]
    betas = ast.literal_eval(str(opt_cfg.get("adam_betas", "(0.9, 0.999)")))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(cfg["optimization"]["lr"][0]), betas=tuple(betas),
                                  eps=float(opt_cfg.get("adam_eps", 1e-8)), weight_decay=float(opt_cfg.get("weight_decay", 0.0)))
    loss_weights = list(cfg["criterion"].get("loss_weights") or [])
    weights = dict(zip(("prob_perplexity", "features_pen"), loss_weights)) if len(loss_weights) == 2 else {}
    return optimizer, weights, float(cfg["optimization"].get("clip_norm", 0.0) or 0.0)


def bench_base_overhead(corpus: Path, work: Path, repeats: int, quick: bool, utterances: Optional[int] = None) -> dict:
    """Hook overhead at the base recipes' defaults, estimated from two measured parts (CPU):
    one training update of wav2vec 2.0 base on the recipe's per-GPU batch, and one evaluation at the
    recipe's held-out size; overhead = evaluation / (validate_interval_updates x update)."""
    import resource

    import yaml

    started_load, busy_start = list(os.getloadavg()), _busy_processes()
    recipes = {name: yaml.safe_load((ROOT / "recipes/fairseq" / f"{name}.yaml").read_text()) for name in BASE_RECIPES}
    main_cfg = recipes[BASE_RECIPES[0]]
    max_tokens = int(main_cfg["dataset"]["max_tokens"])
    max_sample = int(main_cfg["task"]["max_sample_size"])
    recipe_utterances = max_tokens // max_sample
    if quick:
        n_utt, n_samples = 1, int(main_cfg["task"].get("min_sample_size", 32000))
        batch_note = (f"--quick: a much smaller batch, 1 x {n_samples} samples instead of the recipe's "
                      f"{recipe_utterances} x {max_sample}; its time is scaled by audio to the recipe batch (smoke run only, not representative)")
    else:
        n_utt = min(recipe_utterances, utterances) if utterances else recipe_utterances
        n_samples = max_sample
        batch_note = (f"the recipe's per-GPU batch: floor(max_tokens / max_sample_size) = floor({max_tokens} / {max_sample}) = "
                      f"{recipe_utterances} utterances x {max_sample} samples")
        if n_utt < recipe_utterances:
            batch_note += f"; measured on {n_utt} of them (--base-utterances) and scaled by utterance count"
    source, source_note = _speech_batch(corpus, n_utt, n_samples)

    # ---- (2) one evaluation at the recipe's held-out size (run first: it needs less memory)
    mi_seconds = float(main_cfg["task"]["mi_max_seconds"])
    eval_seconds_asked = 20.0 if quick else mi_seconds
    evaluation = bench_evaluation(corpus / "heldout.tsv", "base", max_seconds=eval_seconds_asked, repeats=1)
    eval_measured = evaluation["seconds"]["total"] + evaluation["seconds"]["load_heldout"]
    eval_audio = float(evaluation["audio_seconds"])

    # ---- (1) one training update
    model = build_wav2vec2("base")
    params = sum(p.numel() for p in model.parameters())
    optimizer, weights, clip_norm = recipe_training(main_cfg, model)
    opt_cfg = main_cfg["optimizer"]
    betas, lr = optimizer.defaults["betas"], optimizer.defaults["lr"]
    warm = source[:1, : min(n_samples, 32000)].clone()
    t0 = time.perf_counter()
    _, extra_names = _wav2vec2_update(model, optimizer, warm, weights, clip_norm)  # warm-up: allocator, Adam state, thread pools
    warmup_s = time.perf_counter() - t0
    times, losses = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        losses.append(_wav2vec2_update(model, optimizer, source, weights, clip_norm)[0])
        times.append(time.perf_counter() - t0)
        print(f"[base_overhead] update {i + 1}/{repeats}: {times[-1]:.1f} s on {n_utt} x {n_samples} samples, loss {losses[-1]:.3f}", flush=True)
    update_measured = statistics.median(times)
    unused = [f"{name} (weight {weights[name]})" for name in weights if name not in extra_names]

    # ---- what the hook writes on a new best: the model's weights (torch.save of the state dict)
    export_s = None
    with tempfile.TemporaryDirectory(dir=work if work.exists() else None) as tmp:
        t0 = time.perf_counter()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(tmp) / "export.pt")
        export_s = time.perf_counter() - t0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del model, optimizer

    rows = []
    for name, cfg in recipes.items():
        r_tokens, r_sample = int(cfg["dataset"]["max_tokens"]), int(cfg["task"]["max_sample_size"])
        r_utt = r_tokens // r_sample
        interval = int(cfg["dataset"].get("validate_interval_updates") or 0)
        r_mi = float(cfg["task"]["mi_max_seconds"])
        update_scale = (r_utt * r_sample) / (n_utt * n_samples)
        update_s = update_measured * update_scale
        eval_scale = r_mi / eval_audio if eval_audio < r_mi - 0.5 else 1.0
        eval_s = eval_measured * eval_scale
        overhead = 100.0 * eval_s / (interval * update_s) if interval else None
        with_export = 100.0 * (eval_s + export_s) / (interval * update_s) if interval else None
        rows.append({"recipe": name, "model_trained": cfg["model"]["_name"], "validate_interval_updates": interval,
                     "max_tokens": r_tokens, "max_sample_size": r_sample, "utterances": r_utt,
                     "batch_audio_seconds": r_utt * r_sample / 16000, "mi_max_seconds": r_mi,
                     "update_s": update_s, "update_scale": update_scale, "eval_s": eval_s, "eval_scale": eval_scale,
                     "overhead_percent": overhead, "overhead_percent_with_export": with_export,
                     "met": overhead is not None and overhead <= 2.0,
                     "criterion": cfg["criterion"]["_name"], "world_size": cfg.get("distributed_training", {}).get("distributed_world_size"), "clip_norm": float(cfg["optimization"].get("clip_norm", 0.0) or 0.0)})
        print(f"[base_overhead] {name}: update {update_s:.1f} s x {interval}, evaluation {eval_s:.1f} s -> "
              f"{fmt(overhead, 4)}% (with export {fmt(with_export, 4)}%)", flush=True)
    return {
        "quick": quick,
        "model": f"wav2vec2 base (Wav2Vec2Config defaults, {params / 1e6:.2f} M params, random init)",
        "batch_note": batch_note, "audio_source": source_note,
        "measured_batch": {"utterances": n_utt, "samples": n_samples, "audio_seconds": n_utt * n_samples / 16000},
        "update_seconds": times, "update_s": update_measured, "update_repeats": repeats, "warmup_s": warmup_s,
        "warmup_note": f"one warm-up update on 1 x {warm.shape[1]} samples first (not timed in the median)",
        "loss_per_target_nats": losses,
        "optimizer": f"torch AdamW (decoupled weight decay, as fairseq's adam), lr {lr}, betas {tuple(betas)}, eps {opt_cfg.get('adam_eps')}, "
                     f"weight_decay {opt_cfg.get('weight_decay')}; gradients / sample_size first"
                     + (f"; clip_norm {clip_norm}" if clip_norm > 0 else "; no clipping (the wav2vec 2.0 recipe has none)"),
        "criterion": "wav2vec criterion (infonce): cross_entropy(get_logits, target 0, sum)"
                     + "".join(f" + {weights.get(n, 0.0)} x {n} x sample_size" for n in extra_names)
                     + (f"; not in this model's output (no quantizer in the default config): {', '.join(unused)}" if unused else ""),
        "evaluation": evaluation, "eval_measured_s": eval_measured, "eval_audio_seconds": eval_audio,
        "eval_max_seconds_asked": eval_seconds_asked,
        "export_s": export_s, "peak_rss_mb": peak_rss_mb,
        "recipes": rows,
        "loadavg_start": started_load, "loadavg_end": list(os.getloadavg()),
        "busy_processes_start": busy_start, "busy_processes_end": _busy_processes(),
    }


# ----------------------------------------------------------------------------------- report
def fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3g}%"


def _ratio_verdict(other: Optional[float], ours: Optional[float], need: float, other_name: str,
                   other_cut: bool = False, ours_cut: bool = False) -> str:
    """'met'/'missed' for the target 'other's time / ours' time >= need', with the ratio."""
    within = lambda cut: " within its budget" if cut else ""
    if ours is None and other is None:
        return "n/a (neither reached it)"
    if ours is None:
        return f"missed (ours did not reach it{within(ours_cut)})"
    if other is None:
        return f"met ({other_name} did not reach it{within(other_cut)})"
    ratio = other / ours
    return f"{'met' if ratio >= need else 'missed'} ({ratio:.2f}x)"


def kmeans_targets(rows: List[dict]) -> List[dict]:
    """Per grid point and criterion: each of ours (``fit``, ``partial_fit``, and ``fit`` with
    ``fit_sample`` where it ran) vs MiniBatchKMeans (target >= 1x its speed) and vs faiss (target
    >= 0.8x faiss's speed); speed ratio = their time / ours."""
    points: Dict[tuple, Dict[str, dict]] = {}
    for r in rows:
        if "curve" in r:
            points.setdefault((r["N"], r["D"], r["K"]), {})[r["method"]] = r
    out = []
    for (n, d, k), methods in points.items():
        mb = methods.get("sklearn MiniBatchKMeans", {})
        fa = methods.get("faiss Kmeans", {})
        for criterion, key in (("T1", "seconds_t1"), ("T2", "seconds")):
            target = {"N": n, "D": d, "K": k, "criterion": criterion, "minibatch": mb.get(key), "faiss": fa.get(key),
                      "minibatch_ran": bool(mb), "faiss_ran": bool(fa)}
            for prefix, name, seconds, _ in OURS_VARIANTS:
                ours = methods.get(name)
                if ours is None:
                    continue
                target[seconds] = ours.get(key)
                for suffix, other, other_name, need in (("vs_minibatch", mb, "MiniBatchKMeans", 1.0), ("vs_faiss", fa, "faiss", 0.8)):
                    target[prefix + suffix] = _ratio_verdict(
                        other.get(key), ours.get(key), need, other_name, bool(other.get("budget_cut")),
                        bool(ours.get("budget_cut"))) if other else f"{other_name} not run"
            out.append(target)
    return out


def _parts(results: dict) -> List[dict]:
    if results.get("parts"):
        return results["parts"]
    return [{"command": results["command"], "finished": results["finished"], "elapsed_s": results["elapsed_s"],
             "loadavg_start": results["machine"]["loadavg_start"], "loadavg_end": results["loadavg_end"],
             "sections": "all", "busy_processes_start": (results.get("base_overhead") or {}).get("busy_processes_start")}]


HOOK_TARGET = "hook adds <= 2% to training wall time at the recipe defaults"


def hook_target_row(where: str, percent: float) -> str:
    """Target-table row of a measured hook overhead in the tiny recipe (the hook's evaluation time / stock training)."""
    return f"| {HOOK_TARGET} | {where} | {'met' if percent <= 2 else 'missed'} ({percent:.1f}% by the hook's own evaluation time) |"


def base_recipes_target_row(where: str, percent: float, interval: int, detail: str = "") -> str:
    """Target-table row of the base recipes' overhead, one evaluation / (interval x one update)."""
    return (f"| {HOOK_TARGET}, base recipes (estimated from measured parts) | {where} | {'met' if percent <= 2 else 'missed'} "
            f"({percent:.3g}%: one evaluation per {interval} updates{detail}) |")


CUDA_GRAPH_SETTINGS = {"on": [True], "off": [False], "both": [False, True]}
"""--cuda-graphs of benchmarks.speed.gpu and probe_ops: the probe's CUDA graphs off and/or on, in this order."""

GPU_FOLLOW_UPS = ["gpu_probe_graphs/results_gpu.md"]
"""Tables of later GPU runs of one section (next to their results_gpu.json) whose target rows join the main
report's, after those of the complete run in results_gpu.json."""


def write_report(results: dict, out: Path) -> None:
    m = results["machine"]
    loads = lambda values: ", ".join(f"{v:.2f}" for v in values)
    lines = ["# Speed benchmark (issue 4)", "",
             f"## Current run ({_parts(results)[0]['finished'][:10]})", "",
             "Commands (run one after the other, never two of them at once; `OMP_NUM_THREADS=1`, torch/sklearn/faiss on 1 thread):", ""]
    for part in _parts(results):
        started = part.get("started") or (datetime.datetime.strptime(part["finished"], "%Y-%m-%d %H:%M")
                                           - datetime.timedelta(seconds=part["elapsed_s"])).strftime("%Y-%m-%d %H:%M")
        lines.append(f"- `OMP_NUM_THREADS=1 {part['command']}` ({part['sections']}): {started} to {part['finished']} UTC, "
                     f"{part['elapsed_s']:.0f} s; load average (1/5/15 min) at start {loads(part['loadavg_start'])}, "
                     f"at end {loads(part['loadavg_end'])}"
                     + (f"; {len(part['busy_processes_start'])} other CPU-bound processes running at its start (named in section 3b)"
                        if part.get("busy_processes_start") else ""))
    rerun_report = ".venv/bin/python -m benchmarks.speed --report-only" + (
        "" if out.resolve() == HERE else f" --out {os.path.relpath(out.resolve(), ROOT)}")
    lines += ["", f"Report: `{results.get('report_command', rerun_report)}`.", "",
              f"Machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}), torch {m['torch']}, "
              f"scikit-learn {m['sklearn']}" + (f" (numpy's OpenBLAS kernels, which its logistic regression uses: {m['numpy_blas']})"
                                                if m.get("numpy_blas") else "") + f", faiss {m['faiss'] or 'not installed'}"
              + (f" (its OpenBLAS kernels: {m['faiss_blas']})" if m.get("faiss_blas") else "")
              + f", fairseq {m['fairseq']}, Python {m['python']}; "
              f"GPU: {m['cuda'] or 'none'}. Other jobs may share the cores: the load averages listed with each command tell "
              f"(above {m['torch_threads']}, the benchmark's own threads, something else ran beside it); absolute times move with "
              "that load, while the ratios in one table are measured side by side, minutes apart, so they are the numbers to read.", ""]

    # ---- targets summary
    targets = kmeans_targets(results.get("kmeans", []))
    evaluation = [r for r in results.get("evaluation", []) if not r.get("skipped")]
    h = results.get("hook")
    lines += ["### Targets of issue 4 in this run", "",
              "k-means (ours = `OnlineKMeans.fit` (Lloyd on all rows, the evaluator's setting), `OnlineKMeans.partial_fit` (streamed mini-batches) "
              f"and `fit` on a seeded sample of {SAMPLE_PER_CENTRE} rows per centre (`fit_sample`, as faiss trains), each where it ran; speed ratio = their time / ours; T1 = within 1% of the best inertia any method "
              "reached, the issue's 'same inertia'; T2 = within 1% of the inertia every method reaches; details in section 4):", "",
              "| target | N, D, K | T1 | T2 |", "|---|---|---|---|"]
    by_point: Dict[tuple, Dict[str, dict]] = {}
    for t in targets:
        by_point.setdefault((t["N"], t["D"], t["K"]), {})[t["criterion"]] = t
    for (n, d, k), crit in by_point.items():
        both = lambda c, key: "; ".join(f"{label}: {c[prefix + key]}" for prefix, _, _, label in OURS_VARIANTS if prefix + key in c)
        if crit["T2"]["minibatch_ran"]:
            lines.append(f"| ours >= MiniBatchKMeans speed | {n}, {d}, {k} | {both(crit['T1'], 'vs_minibatch')} | {both(crit['T2'], 'vs_minibatch')} |")
        if crit["T2"]["faiss_ran"]:
            lines.append(f"| ours >= 0.8x faiss | {n}, {d}, {k} | {both(crit['T1'], 'vs_faiss')} | {both(crit['T2'], 'vs_faiss')} |")
    for row in results.get("kmeans", []):
        if "method" not in row and row.get("skipped"):
            lines.append(f"| all | {row['N']}, {row['D']}, {row['K']} | not run: {row['skipped']} | |")
    other_start, other_header = len(lines), ["", "Other targets:", "", "| target | where | result |", "|---|---|---|"]
    lines += other_header
    gpu_json = HERE / "results_gpu.json"
    gpu_results = json.loads(gpu_json.read_text()) if out.resolve() == HERE and gpu_json.exists() else None
    for r in evaluation:
        lines.append(f"| full evaluation <= 1.25x two-view forward (target is for the GPU) | CPU, {r['model'].split(' (')[0]} | "
                     f"{r['ratio_evaluate_to_forward']:.2f}x on CPU (GPU: {'the GPU rows below' if gpu_results else PENDING_GPU}) |")
    probe_a = [p for p in results.get("probes", []) if p.get("part") == "a" and p.get("seconds")]
    probe_b = [p for p in results.get("probes", []) if p.get("part") == "b" and p.get("seconds")]
    if len(probe_a) == 2:
        lines.append(f"| probes vs scikit-learn at the same held-out CE (no numeric target) | same job: CV over the L2 grid + refit | "
                     f"sklearn / ours time {probe_a[1]['seconds'] / probe_a[0]['seconds']:.2f}x, held-out CE ours "
                     f"{100 * (probe_a[0]['heldout_ce_nats'] / probe_a[1]['heldout_ce_nats'] - 1):+.1f}% |")
    if len(probe_b) == 2:
        lines.append(f"| probes vs scikit-learn at the same held-out CE (no numeric target) | same solver problem at ours' L2 | "
                     f"sklearn / ours time {probe_b[1]['seconds'] / probe_b[0]['seconds']:.2f}x |")
    if h and not h.get("skipped"):
        lines.append(hook_target_row("tiny_wav2vec2, CPU", h["overhead_percent_eval_of_stock_train"]))
    bo = results.get("base_overhead")
    if bo and not bo.get("skipped"):
        for row in bo.get("recipes", []):
            if row.get("overhead_percent") is None:
                continue
            lines.append(base_recipes_target_row(f"{row['recipe']}, CPU{' (--quick: smoke run)' if bo.get('quick') else ''}",
                                                 row["overhead_percent"], row["validate_interval_updates"], "; see section 3b"))
    follow_ups = [(json.loads((HERE / link).with_suffix(".json").read_text()), link) for link in GPU_FOLLOW_UPS
                  if out.resolve() == HERE and (HERE / link).with_suffix(".json").exists()]
    if gpu_results:  # the GPU rows belong to the main report
        from benchmarks.speed import gpu as gpu_bench

        lines += gpu_bench.target_rows(gpu_results)
        for follow_up, link in follow_ups:
            lines += gpu_bench.target_rows(follow_up, link)
    if len(lines) == other_start + len(other_header):  # a run of k-means only: no other target was measured
        del lines[other_start:]
    if out.resolve() == HERE:
        lines += ["", "GPU rows: " + (f"measured by `{gpu_results['command']}` on {gpu_results['machine']['cuda'] or gpu_results['device']} "
                                      f"({gpu_results['started']} UTC), in [results_gpu.md](results_gpu.md)."
                                      if gpu_results else
                                      "none measured yet. `python -m benchmarks.speed.gpu` measures them (one device call: "
                                      "`benchmarks/speed/device/prepare.sh` here, `benchmarks/speed/device/run.sh` there) and writes "
                                      "results_gpu.md; the pending rows below stay until then.")]
        for follow_up, link in follow_ups:
            lines += ["", f"Later GPU rows: `{follow_up['command']}` on {follow_up['machine']['cuda'] or follow_up['device']} "
                          f"({follow_up['started']} UTC), in [{link}]({link})."]
    lines.append("")
    notes = HERE / "results_notes.md"  # hand-written reading of the current run (kept by --report-only)
    if notes.exists() and out.resolve() == HERE:
        lines += [notes.read_text().rstrip(), ""]

    # ---- probes
    probes = results.get("probes", [])
    if probes:
        info = probes[0]
        lines += [f"### 1. Probes, CPU (N fit / eval {info['N_fit']} / {info['N_eval']}, D {info['D']}, {info['classes']} classes, "
                  "200-frame utterances as groups)", "",
                  "Data: the k-means generator (Gaussian mixture) as the unmasked view, the masked view a noisy copy (+ N(0, 2^2)), "
                  "labels the nearest of 50 centres fitted on the unmasked view; fit and eval parts are disjoint utterances. "
                  "Times are medians of the repeats (count in brackets); held-out CE is on the eval part, in nats. "
                  "Every fit includes the standardisation (ours does it inside fit; sklearn gets a StandardScaler in the timed call).", "",
                  "**(a) Same job: choose the L2 strength by 3-fold cross-validation over utterances on the same 10-point grid, then refit on all fit frames.** "
                  "sklearn's C = 1 / (n_fit wd) with n_fit = all fit frames (the refit; inside a fold the same C meets 2/3 of the frames, so "
                  "its fold penalty is 1.5x ours, 0.18 decade, within a half-decade grid step). Ours stops the path after 2 points without gain "
                  "(patience 2) and gives each path point `path_iter` L-BFGS iterations, warm-started; sklearn runs the whole path with its defaults.", "",
                  "| method | fit time (s) | held-out CE (nats) | chosen L2 (wd; C) | notes |", "|---|---|---|---|---|"]
        for r in [p for p in probes if p.get("part") == "a"]:
            if r.get("skipped"):
                lines.append(f"| {r['method']} | skipped: {r['skipped']} | | | |")
                continue
            wd = r.get("weight_decay", r.get("weight_decay_equivalent"))
            c = r.get("C_equivalent", r.get("C"))
            note = (f"{r['cv_points_tried']} path points tried, refit {r['refit_iterations']} iterations; {r['settings']}"
                    if "cv_points_tried" in r else f"refit {r.get('refit_iterations')} iterations")
            lines.append(f"| {r['method']} | {r['seconds']:.2f} ({r['timings']}) | {r['heldout_ce_nats']:.4f} | {fmt(wd, 3) if wd is None else f'{wd:.3g}'}; "
                         f"{'-' if c is None else f'{c:.3g}'} | {note} |")
        a = [p for p in probes if p.get("part") == "a" and p.get("seconds")]
        if len(a) == 2:
            ratio = a[1]["seconds"] / a[0]["seconds"]
            lines += ["", f"sklearn / ours time: **{ratio:.2f}x** (> 1: ours faster" + (f"; here ours is {1 / ratio:.2f}x slower" if ratio < 1 else "") + "); "
                      f"held-out CE ours {a[0]['heldout_ce_nats']:.4f} vs sklearn {a[1]['heldout_ce_nats']:.4f} nats "
                      f"({100 * (a[0]['heldout_ce_nats'] / a[1]['heldout_ce_nats'] - 1):+.1f}%)."]
        b = [p for p in probes if p.get("part") == "b"]
        if b:
            lines += ["", f"**(b) Same solver problem: both at the L2 ours chose, time to the same held-out CE.** Each climbs its iteration cap "
                      "(ours `lbfgs_iter` 5, 10, 20, 40, 80, 200; sklearn `max_iter` 5 ... 320) until the solution stops changing; the target is "
                      f"the lower of the two converged held-out CEs + 1% = {b[0]['target_ce_nats']:.4f} nats; the row is the first cap that reaches it.", "",
                      "| method | first cap reaching the target | time (s) | held-out CE (nats) | converged: cap, time (s), CE |", "|---|---|---|---|---|"]
            for r in b:
                conv = r.get("converged")
                conv_text = f"{conv['setting']}, {conv['seconds']:.2f}, {conv['heldout_ce_nats']:.4f}" if conv else "-"
                count = f" ({r['timings']})" if r.get("timings") else ""
                lines.append(f"| {r['method']} | {r['setting']} | {fmt(r.get('seconds'))}{count} | "
                             f"{r['heldout_ce_nats']:.4f} | {conv_text} |")
            if len(b) == 2 and b[0].get("seconds") and b[1].get("seconds"):
                ratio = b[1]["seconds"] / b[0]["seconds"]
                lines += ["", f"sklearn / ours time to the target: **{ratio:.2f}x** (> 1: ours faster"
                          + (f"; here ours is {1 / ratio:.2f}x slower)." if ratio < 1 else ").")]
        for r in [p for p in probes if p.get("part") == "mlp"]:
            lines += ["", f"**MLP probe** (ours MLPProbe, Adam, defaults: hidden 256, early stopping on held-out utterances): "
                      f"{r['seconds']:.2f} s ({r['timings']}), held-out CE {r['heldout_ce_nats']:.4f} nats (best epoch {r.get('best_step')})."]
        lines.append("")

    # ---- evaluation
    if results.get("evaluation"):
        lines += ["### 2. One full evaluation (Evaluator.evaluate) of a wav2vec 2.0 on generated held-out speech, CPU", "",
                  "Settings: EvaluationConfig defaults (last layer, K=50, linear probe, bootstrap 200, baselines on, centering 'utterance'), "
                  "mask_length 5 for the tiny recipe, 10 for base; random-init models. `forward` = both views; `gather` = concatenating features; "
                  "`k-means`/`probe` timed inside `unsupervised_mi`; `other` = per-utterance centering, split, prior mix, bootstrap, checks; "
                  "load = `load_heldout` (not part of evaluate). Medians of the repeats.", "",
                  "| device | model | audio (s) | masked frames | load | forward (2 views) | gather | k-means | probe | other | baselines | evaluate total | total / forward | (total + load) / forward | repeats |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["evaluation"]:
            if r.get("skipped"):
                lines.append(f"| CPU | {r['model']} | skipped: {r['skipped']} | | | | | | | | | | | | |")
                continue
            s = r["seconds"]
            lines.append(
                f"| CPU | {r['model']} | {r['audio_seconds']} | {r['frames_masked']} | {s['load_heldout']:.2f} | {s['forward']:.2f} | "
                f"{s['gather']:.3f} | {fmt(s.get('kmeans'))} | {fmt(s.get('probe'))} | {fmt(s.get('estimators_other'))} | {s['baselines']:.2f} | "
                f"{s['total']:.2f} | {r['ratio_evaluate_to_forward']:.2f} | {r['ratio_with_loading_to_forward']:.2f} | {r.get('repeats')} |")
        for gpu_row in results.get("evaluation_gpu", []):
            lines.append(gpu_row + " |")
        lines.append("")

    # ---- hook
    if h:
        lines += ["### 3. Training overhead of the fairseq hook (tiny_wav2vec2 recipe at its defaults), CPU", ""]
        if not h.get("skipped"):
            b = h["implied_bound_mb"]
            n_pairs = len(h["runs"]["stock"]) if h.get("runs") else "?"
            lines += [
                f"Runs alternate (with hook, stock) x {n_pairs}; medians.", "",
                "| run | max_update | evaluations | process wall (s, median) | fairseq 'done training in' (s, median) | hook evaluation time (s) | peak RSS (MB) |",
                "|---|---|---|---|---|---|---|",
                f"| stock task (`audio_pretraining`, best by loss) | {h['max_update']} | 0 | {h['wall_stock_s']:.1f} | {h['train_stock_s']:.1f} | - | {h['peak_rss_mb_stock']:.0f} |",
                f"| with hook (`audio_pretraining_mi`) | {h['max_update']} | {h['evaluations_per_run']} | {h['wall_with_hook_s']:.1f} | {h['train_with_hook_s']:.1f} | "
                f"{h['evaluation_seconds_per_run']:.1f} | {h['peak_rss_mb_with_hook']:.0f} |",
                "",
                f"Overhead of the hook: **{h['overhead_percent_eval_of_stock_train']:.1f}%** of the stock training time (its own evaluation "
                f"time / stock 'done training in'; the robust measure on a shared machine); wall-clock differences, noisier: "
                f"{h['overhead_percent_train']:.1f}% of training time, {h['overhead_percent_wall']:.1f}% of process wall time (includes ~10 s of imports).",
                "",
                f"Memory bound implied by the settings (mi_max_seconds, mi_max_utterance_seconds, mi_batch_seconds; D=64, 2 heads, one layer): "
                f"held-out audio {b['heldout_audio']:.1f} MB + Za/Zb features <= {b['features_za_zb']:.1f} MB + forward batch (first conv output x 2) "
                f"{b['forward_batch_first_conv_x2']:.1f} MB + attention weights of one batch {b.get('attention_one_batch', 0):.1f} MB "
                f"= {b['total']:.1f} MB above the stock run; measured difference in peak RSS "
                f"{h['peak_rss_mb_with_hook'] - h['peak_rss_mb_stock']:.0f} MB.", ""]
        else:
            lines += [f"skipped: {h.get('skipped')}", ""]

    # ---- hook overhead at the base recipes' defaults (estimated)
    bo = results.get("base_overhead")
    if bo:
        lines += ["### 3b. Hook overhead at the base recipes' defaults, estimated from measured parts, CPU", ""]
        if bo.get("skipped"):
            lines += [f"skipped: {bo['skipped']}", ""]
        else:
            ev, mb = bo["evaluation"], bo["measured_batch"]
            lines += [
                "Not a training run (a base model does not train on 2 CPU cores): two parts measured in one process, and their ratio "
                "overhead = one evaluation / (validate_interval_updates x one update).", "",
                f"- **Update**: {bo['model']}, built by `build_wav2vec2('base')` as in section 2; train mode, the model's own masking "
                f"(`model(source=..., padding_mask=None, mask=True)`), {bo['criterion']}; backward; {bo['optimizer']}. "
                f"Batch: {bo['batch_note']} ({mb['audio_seconds']:.1f} s measured); audio: {bo['audio_source']}. "
                f"{bo['warmup_note'][0].upper() + bo['warmup_note'][1:]} ({bo['warmup_s']:.1f} s); then "
                f"{bo['update_repeats']} timed update(s): " + ", ".join(f"{t:.1f}" for t in bo["update_seconds"])
                + f" s, median **{bo['update_s']:.1f} s**.",
                f"- **Evaluation**: `bench_evaluation` of section 2 (Evaluator.evaluate + load_heldout, base settings) on the corpus' "
                f"held-out split, asked for {bo['eval_max_seconds_asked']:.0f} s: it has {bo['eval_audio_seconds']:.1f} s "
                f"({ev['utterances']} utterances), measured {bo['eval_measured_s']:.1f} s (forward {ev['seconds']['forward']:.1f} s, "
                f"estimators {ev['seconds']['estimators']:.2f} s, baselines {ev['seconds']['baselines']:.2f} s, load "
                f"{ev['seconds']['load_heldout']:.2f} s). Scaled linearly by audio seconds to the recipe's task.mi_max_seconds "
                f"(evaluation time is linear in audio: the forward is {100 * ev['seconds']['forward'] / ev['seconds']['total']:.0f}% of it here; section 2).",
                f"- **Export** (what the hook also writes when an evaluation is a new best): torch.save of the model's state dict, "
                f"{bo['export_s']:.1f} s; the last column adds it to every evaluation (upper bound).",
                f"- Peak RSS of the process: {bo['peak_rss_mb']:.0f} MB. Load average (1/5/15 min) at the start of this section "
                f"{', '.join(f'{v:.2f}' for v in bo['loadavg_start'])}, at its end {', '.join(f'{v:.2f}' for v in bo['loadavg_end'])}; "
                "other processes busy at its start: " + ("; ".join(f"`{p}`" for p in bo.get("busy_processes_start", [])) or "none")
                + ", at its end: " + ("; ".join(f"`{p}`" for p in bo.get("busy_processes_end", [])) or "none") + ".", "",
                "| recipe (model it trains) | validate_interval_updates | per-GPU batch (utterances x samples = s) | update (s) | "
                "evaluation at mi_max_seconds (s) | evaluation / update | scaling | hook overhead | with an export at every evaluation | target <= 2% |",
                "|---|---|---|---|---|---|---|---|---|---|"]
            for row in bo["recipes"]:
                scaling = []
                if abs(row["eval_scale"] - 1.0) > 1e-9:
                    scaling.append(f"evaluation x {row['eval_scale']:.3f} ({bo['eval_measured_s']:.1f} s on {bo['eval_audio_seconds']:.1f} s "
                                   f"-> {row['mi_max_seconds']:.0f} s of audio)")
                if abs(row["update_scale"] - 1.0) > 1e-9:
                    scaling.append(f"update x {row['update_scale']:.3f} (measured on {mb['utterances']} x {mb['samples']} samples)")
                lines.append(
                    f"| {row['recipe']} ({row['model_trained']}, criterion {row['criterion']}) | {row['validate_interval_updates']} | "
                    f"{row['utterances']} x {row['max_sample_size']} = {row['batch_audio_seconds']:.1f} | {row['update_s']:.1f} | "
                    f"{row['eval_s']:.1f} | {row['eval_s'] / row['update_s']:.2f} | {'; '.join(scaling) or 'none'} | "
                    f"**{_pct(row.get('overhead_percent'))}** | {_pct(row.get('overhead_percent_with_export'))} | {'met' if row.get('met') else 'missed'} |")
            forward_per_s = ev["seconds"]["forward"] / (2.0 * ev["audio_seconds"])  # one view, per second of audio
            first = bo["recipes"][0] if bo["recipes"] else None
            if first and first.get("validate_interval_updates") and forward_per_s > 0:
                break_even = 0.02 * first["validate_interval_updates"]
                forwards = first["update_s"] / (forward_per_s * first["batch_audio_seconds"])
                lines += ["", f"Margin: at {first['validate_interval_updates']} updates per evaluation, the 2% target is missed only if one "
                          f"evaluation costs more than {break_even:.0f} updates; measured {first['eval_s'] / first['update_s']:.2f}, "
                          f"{break_even / (first['eval_s'] / first['update_s']):.0f}x below. On this CPU one update costs {forwards:.1f} "
                          "single-view evaluation forwards of its batch's audio (from the two measurements: update seconds / "
                          "(forward seconds per view and audio second x batch audio)); where an update costs fewer forwards (a GPU with "
                          "fast backward kernels), evaluation / update is larger by the same factor."]
            lines += [
                "",
                "Caveats:",
                "",
                "- Both parts are CPU timings (1 thread, shared cores: the absolute seconds are inflated by the machine's load and far from a "
                "GPU's). The ratio, not the absolute, is what carries over to GPUs, roughly: both are dominated by the same model's "
                "forward (evaluation: two forward passes without gradients) and forward/backward (update). fp16 (the recipes' "
                "common.fp16) and GPU kernels may change the two sides unequally.",
                "- Single-process evaluation: in DDP each rank forwards only its round-robin share of the held-out utterances "
                "(" + ", ".join(f"{r['recipe']}: {r.get('world_size')} GPUs" for r in bo["recipes"]) + "), so the forward part here is an "
                "overestimate, by up to the world size.",
                "- The update is one process's forward/backward/Adam step only: no data loading, no gradient all-reduce, no fp16 loss "
                "scaling, no logging or checkpoint saving; real updates are longer, which makes the overhead smaller.",
                "- The model is `Wav2Vec2Config()` defaults (as in section 2), not the recipe's `model:` block (quantize_targets, "
                "final_dim 256, layerdrop 0.05, feature_grad_mult 0.1, input/feature dropout 0.1): no quantizer (so no codebook "
                "penalty), 12 layers always. The HuBERT row reuses the wav2vec 2.0 update and evaluation: HuBERT base has the same "
                "conv feature encoder and 12-layer transformer, with a cheaper loss (no negatives, no quantizer).",
                "- The update is a median of few repeats; the evaluation is one run.",
                ""]

    # ---- k-means
    if results.get("kmeans"):
        lines += ["### 4. k-means: time to reach the same inertia, CPU", "",
                  "Data: anisotropic Gaussian mixture (K components, unequal weights, rank-16 covariance + isotropic noise), float32, seed 0. "
                  "Each method climbs its own effort ladder (iterations/epochs, or faiss's (niter, all points, nredo)), stopping once it improves "
                  "< 0.1% or when the next level is predicted to pass the per-method budget; inertia is measured by one exact routine on all N rows. "
                  "**T1** = first setting within 1% of the best inertia any method reached (the issue's 'same inertia'; a method that settles in "
                  "a worse local minimum never reaches it). **T2** = first setting within 1% of the inertia every method reaches (the worst "
                  "method's own best; a method cut by the budget sets it with the best it reached within the budget). Times are medians of "
                  "the repeats of that setting (how many in brackets; 1 = the ladder's single timing, where repeats would pass the budget "
                  "or the setting was not the one first timed); "
                  "`speed-up of ours` = that method's time / ours.fit's at T2 (> 1: ours.fit faster); frames/s = N / time to T2. "
                  "Each method gets a warm-up call first.", "",
                  "| N | D | K | method | T2: setting | T2: time (s) | T2: frames/s | T2: speed-up of ours | T1: setting | T1: time (s) | own best inertia / best | own best: setting, time (s) | ladder |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["kmeans"]:
            if "method" not in r:
                lines.append(f"| {r['N']} | {r['D']} | {r['K']} | all | not run: {r.get('skipped')} | | | | | | | | |")
                continue
            if r.get("skipped"):
                lines.append(f"| {r['N']} | {r['D']} | {r['K']} | {r['method']} | skipped: {r['skipped']} | | | | | | | | |")
                continue
            t2 = f"{r['unit']}={r['level']}" if r.get("level") is not None else "not reached"
            t1 = f"{r['unit']}={r['level_t1']}" if r["reached"] else "not reached"
            ladder = r.get("budget_cut") or "converged / ladder done"
            n2 = f" ({r['timings']})" if r.get("seconds") and r.get("timings") else ""
            run_tag = f" (run {r['run']})" if r.get("run", 1) > 1 else ""
            n1 = f" ({r['timings_t1']})" if r.get("seconds_t1") and r.get("timings_t1") else ""
            lines.append(
                f"| {r['N']}{run_tag} | {r['D']} | {r['K']} | {r['method']} | {t2} | {fmt(r.get('seconds'))}{n2} | "
                f"{fmt(r.get('frames_per_s'), 0)} | {fmt(r.get('ours_speedup'))} | {t1} | {fmt(r.get('seconds_t1'))}{n1} | "
                f"{r['own_best_inertia'] / r['best_inertia']:.4f} | {r['unit']}={r['own_best_level']}, {r['own_best_seconds']:.2f} | {ladder} |")
        for gpu_row in results.get("kmeans_gpu", []):
            lines.append(gpu_row + " | | | | |")
        lines += ["", f"Grid: {results['kmeans_grid_note']}.", ""]
        if any(t["faiss_ran"] or t["minibatch_ran"] for t in targets):  # a reference to compare with
            variants = [(prefix, label, seconds) for prefix, _, seconds, label in OURS_VARIANTS if any(seconds in t for t in targets)]
            lines += ["Targets per point (speed ratio = their time / ours; ours >= MiniBatchKMeans needs >= 1x, >= 0.8x faiss needs >= 0.8x; "
                      "`fit` is the evaluator's setting, the streaming `partial_fit` path and `fit` on faiss's training sample "
                      f"(`fit_sample` = {SAMPLE_PER_CENTRE} rows per centre) are shown where they ran):", "",
                      "| N | D | K | criterion | MiniBatchKMeans (s) | faiss (s) | "
                      + " | ".join(f"{label} (s) | {label} vs MiniBatch | {label} vs faiss" for _, label, _ in variants) + " |",
                      "|---|---|---|---|---|---|" + "---|---|---|" * len(variants)]
            for t in targets:
                lines.append(f"| {t['N']} | {t['D']} | {t['K']} | {t['criterion']} | {fmt(t['minibatch'])} | {fmt(t['faiss'])} | "
                             + " | ".join(f"{fmt(t.get(seconds))} | {t.get(prefix + 'vs_minibatch', 'not run')} | {t.get(prefix + 'vs_faiss', 'not run')}"
                                          for prefix, _, seconds in variants) + " |")
            lines.append("")
        prof = results.get("kmeans_profile")
        if prof:
            lines += [f"Where one OnlineKMeans Lloyd iteration goes (N={prof['N']}, D={prof['D']}, K={prof['K']}, median s"
                      + (f", from run {prof['run']}" if prof.get("run") else "") + "): the parts re-enact, standalone, the steps of the "
                      "implementations before the optimisations of 2026-11-26 05:48 (exact-distance pass, float64 index_add, element-wise "
                      "isfinite, float64 variance: see the older runs below) and 14:17 (row norms from one chunk-sized temporary) "
                      "next to their cheaper replacements; the 'total' row is today's real call.", "", "| part | seconds |", "|---|---|"]
            lines += [f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
                      for key, value in prof.items() if key not in ("N", "D", "K", "run")]
            lines.append("")
    lines += ["### GPU rows", "", f"All GPU rows (k-means/probe on CUDA, full evaluation of base size on 1 h of audio, float32 and bfloat16): "
              f"{results['gpu_note']}.", ""]
    older = HERE / "results_older.md"
    if older.exists() and out.resolve() == HERE:
        lines += [older.read_text().rstrip(), ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _supersede(merged: dict, section: str) -> None:
    """Mark ``section`` in the earlier runs' section lists as replaced by the run being merged now."""
    later = len(merged["parts"]) + 1
    for part in merged["parts"]:
        names = [name.strip() for name in part["sections"].split(",")]
        part["sections"] = ", ".join(f"{name} (superseded by run {later})" if name == section else name for name in names)


def merge_results(paths: List[Path]) -> dict:
    """One report from several partial runs of this command (each with --skip): sections taken from the
    run that measured them, every run's command, times and load averages kept."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    merged: dict = {"machine": runs[0]["machine"], "parts": [], "gpu_note": runs[0]["gpu_note"]}
    for run in runs:
        sections = []
        if run.get("kmeans"):  # k-means rows of several runs are kept side by side (each point from one run)
            measured = {(r["N"], r["D"], r["K"]) for r in run["kmeans"] if "method" in r}
            earlier = [r for r in merged.get("kmeans", []) if "method" in r or (r["N"], r["D"], r["K"]) not in measured]
            done = {(r["N"], r["D"], r["K"]) for r in earlier if "method" in r}
            merged["kmeans"] = earlier + [dict(r, run=len(merged["parts"]) + 1) for r in run["kmeans"]
                                          if "method" in r or (r["N"], r["D"], r["K"]) not in done]
            notes = [merged["kmeans_grid_note"]] if merged.get("kmeans_grid_note") else []
            merged["kmeans_grid_note"] = "; ".join(notes + [f"run {len(merged['parts']) + 1}: {run['kmeans_grid_note']}"])
            sections.append("k-means " + ", ".join(f"({n}, {d}, {k})" for n, d, k in sorted(measured, key=lambda p: (p[0], p[2], p[1]))))
            if run.get("kmeans_profile") and "kmeans_profile" not in merged:  # the first run's (main grid) profile
                merged["kmeans_profile"] = dict(run["kmeans_profile"], run=len(merged["parts"]) + 1)
        for key in ("probes", "evaluation"):
            if run.get(key):
                _supersede(merged, key)
                merged[key] = run[key]
                sections.append(key)
        for key in ("kmeans_gpu", "evaluation_gpu"):
            if run.get(key) is not None:
                merged[key] = run[key]
        if run.get("hook"):
            _supersede(merged, "hook")
            merged["hook"] = run["hook"]
            sections.append("hook")
        if run.get("base_overhead"):
            merged["base_overhead"] = run["base_overhead"]
            sections.append("base_overhead")
        merged["parts"].append({"command": run["command"], "started": run.get("started"), "finished": run["finished"],
                                "elapsed_s": run["elapsed_s"], "loadavg_start": run["machine"]["loadavg_start"],
                                "loadavg_end": run["loadavg_end"], "sections": ", ".join(sections),
                                **({"busy_processes_start": run["base_overhead"].get("busy_processes_start", [])}
                                   if run.get("base_overhead") and not run["base_overhead"].get("skipped") else {})})
    return merged



# ----------------------------------------------------------------------------------- main
def work_default_out(args) -> Path:
    return args.work / "quick" if args.quick else HERE


def main(argv: Optional[List[str]] = None, numpy_blas: Optional[str] = None) -> None:
    """The benchmark command; ``numpy_blas``: the kernels numpy's OpenBLAS was loaded with (``__main__`` pins
    them before numpy loads), for the machine line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, one repeat (about 1-2 min)")
    parser.add_argument("--out", type=Path, default=None, help="where results.md / results.json go (default: next to this file; --quick: runs/bench_speed/quick)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_speed", help="corpus and training runs")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per timing (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch/sklearn/faiss (default: all cores)")
    parser.add_argument("--kmeans-budget", type=float, default=None, help="seconds after which remaining k-means grid points are skipped (default 2400)")
    parser.add_argument("--method-budget", type=float, default=120.0, help="seconds of effort-ladder time per k-means method and grid point (default 120)")
    parser.add_argument("--points", default=None,
                        help="k-means grid points to run instead of the default grid, as NxDxK[,NxDxK...], e.g. 1000000x256x50")
    parser.add_argument("--methods", default=None,
                        help="k-means methods to run, comma-separated names as in the tables (default: all); T1 and T2 then "
                             "come from these methods only")
    parser.add_argument("--large", action="store_true", help="add N=1e6 (D=256, K=50) to the k-means grid")
    parser.add_argument("--report-only", action="store_true", help="rewrite results.md from an existing results.json")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="with --report-only: build results.json/results.md under --out from these partial runs' results.json")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: kmeans,probes,evaluation,hook,base_overhead")
    parser.add_argument("--base-utterances", type=int, default=None,
                        help="base_overhead: time the update on this many of the recipe batch's utterances and scale by count (if the full batch does not fit in memory)")
    args = parser.parse_args(argv)
    if args.report_only:
        out = args.out or HERE
        if args.merge:
            merged = merge_results(args.merge)
            merged["report_command"] = " ".join([".venv/bin/python -m benchmarks.speed", *(argv if argv is not None else sys.argv[1:])])
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(merged, indent=1, default=str) + "\n")
        results = json.loads((out / "results.json").read_text())
        if results.get("kmeans"):
            results["kmeans"] = retarget_kmeans(results["kmeans"])
        if results.get("hook") and not results["hook"].get("skipped"):
            results["hook"]["implied_bound_mb"] = implied_bound_mb(ROOT / "recipes/fairseq/tiny_wav2vec2.yaml")
            (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        for name, dist in (("sklearn", "scikit-learn"), ("faiss", "faiss-cpu"), ("fairseq", "fairseq")):
            if results["machine"].get(name) is None:
                results["machine"][name] = machine().get(name)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        write_report(results, out)
        print(f"rewrote {out / 'results.md'}")
        return
    started = time.perf_counter()
    started_utc = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    repeats = args.repeats or (1 if args.quick else 3)
    skip = set(filter(None, args.skip.split(",")))
    results: dict = {"machine": {**machine(), "numpy_blas": numpy_blas}, "quick": args.quick, "repeats": repeats,
                     "started": started_utc,
                     "command": " ".join([".venv/bin/python -m benchmarks.speed", *(argv if argv is not None else sys.argv[1:])])}
    gpu = torch.cuda.is_available()
    results["gpu_note"] = "measured on " + torch.cuda.get_device_name(0) if gpu else PENDING_GPU
    if args.quick:
        grid = [(20000, 256, 50)]
        grid_note = "quick: N=2e4, D=256, K=50 only"
    else:
        grid = [(100000, 768, 50), (100000, 256, 50), (100000, 1024, 100), (100000, 768, 100), (100000, 768, 500)]
        if args.large:
            grid.append((1000000, 256, 50))
        grid_note = ("representative subset of N {1e5, 1e6} x D {256, 768, 1024} x K {50, 100, 500}: N=1e5 at (768, 50), "
                     "(256, 50), (1024, 100), (768, 100), (768, 500), run in that order (N=1e6 at (256, 50) with --large); the full "
                     "18-point grid does not fit on 2 shared cores (N=1e6 alone takes minutes per method). "
                     f"Per-method ladder budget {args.method_budget:.0f} s per point (a level predicted to pass it is not run; "
                     "the method is then marked 'cut by budget'); points starting after "
                     f"{args.kmeans_budget if args.kmeans_budget is not None else 2400:.0f} s of k-means time are listed as skipped")
    if args.points:
        grid = [tuple(int(v) for v in point.split("x")) for point in args.points.split(",")]
        grid_note = (f"only {args.points} (--points); per-method ladder budget {args.method_budget:.0f} s per point (a level predicted "
                     "to pass it is not run; the method is then marked 'cut by budget')")
    only = [name.strip() for name in args.methods.split(",")] if args.methods else None
    if only:
        grid_note += f"; methods: only {', '.join(only)} (--methods), so T1 and T2 come from these"
    results["kmeans_grid_note"] = grid_note
    if "kmeans" not in skip:
        budget = args.kmeans_budget if args.kmeans_budget is not None else (1e9 if args.quick else 2400.0)
        out_early = args.out or (work_default_out(args))
        out_early.mkdir(parents=True, exist_ok=True)

        def checkpoint(rows):  # a stopped run keeps the points it finished
            results["kmeans"] = rows
            results["loadavg_end"] = list(os.getloadavg())
            (out_early / "results.partial.json").write_text(json.dumps(results, indent=1, default=str) + "\n")

        with openblas_kernels_pinned(faiss_openblas()) as faiss_blas:  # before faiss loads; later sections' processes keep their own
            results["machine"]["faiss_blas"] = faiss_blas
            results["kmeans"] = bench_kmeans(grid, repeats, threads, budget_s=budget, method_budget_s=args.method_budget,
                                             checkpoint=checkpoint, only=only)
        prof_cfg = (20000, 256, 50) if args.quick else (100000, 768, 50)
        results["kmeans_profile"] = kmeans_iteration_profile(*prof_cfg, repeats=repeats)
    else:
        results["kmeans"] = []
    results["kmeans_gpu"] = [] if gpu else [f"| 1e5-1e6 | 768 | 50-500 | ours OnlineKMeans on CUDA | {PENDING_GPU} | | | | |"]
    results["probes"] = [] if "probes" in skip else (
        bench_probes(5000, 256, 50, repeats) if args.quick else bench_probes(20000, 768, 50, repeats))

    work = args.work
    corpus = work / "corpus"
    if not {"evaluation", "hook", "base_overhead"} <= skip and not (corpus / "heldout.tsv").exists():
        subprocess.run([sys.executable, "-m", "ssl_mi_callback.corpus", "--out", str(corpus), "--minutes", "12", "--seed", "0",
                        "--splits", "train=0.65,valid=0.05,heldout=0.2,probe_train=0.05,probe_test=0.05"], check=True, cwd=ROOT)
    results["evaluation"] = []
    if "evaluation" not in skip:
        plan = [("tiny", 20.0 if args.quick else 150.0, repeats), ("base", 20.0 if args.quick else 60.0, 1 if args.quick else 2)]
        for kind, seconds, reps in plan:
            try:
                results["evaluation"].append(bench_evaluation(corpus / "heldout.tsv", kind, seconds, reps))
            except Exception as error:  # report, do not lose the other sections
                results["evaluation"].append({"model": f"wav2vec2 {kind}", "skipped": f"{type(error).__name__}: {error}"})
    results["evaluation_gpu"] = [] if gpu else [
        f"| GPU | wav2vec2 base (95 M), 1 h held-out audio, float32 / bfloat16 | {PENDING_GPU} | | | | | | | | | | | |"]
    if "hook" not in skip:
        try:
            results["hook"] = bench_hook(corpus, work, 1 if args.quick else max(1, repeats - 1), 50 if args.quick else None)
        except Exception as error:
            results["hook"] = {"skipped": f"{type(error).__name__}: {error}"}
    if "base_overhead" not in skip:
        try:
            results["base_overhead"] = bench_base_overhead(corpus, work, repeats if args.repeats else (1 if args.quick else 2),
                                                           args.quick, args.base_utterances)
        except Exception as error:  # report, do not lose the other sections
            results["base_overhead"] = {"skipped": f"{type(error).__name__}: {error}"}
    results["loadavg_end"] = list(os.getloadavg())
    results["elapsed_s"] = time.perf_counter() - started
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    out = args.out or (work / "quick" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    write_report(results, out)
    print(f"wrote {out / 'results.md'} and results.json in {results['elapsed_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
