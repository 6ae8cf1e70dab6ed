"""Speed benchmark of issue 4: our estimators against scikit-learn and faiss, one full evaluation,
and the training overhead of the fairseq hook. Writes ``results.md`` (the table, naming the machine)
and ``results.json`` (raw numbers) next to this file, or under ``--out``.

    .venv/bin/python -m benchmarks.speed            # full run (about 15 min on 2 CPU cores)
    .venv/bin/python -m benchmarks.speed --quick    # smoke run (about 1-2 min)

Every ratio in a table comes from one run of this command on one machine; times are medians of
``--repeats`` runs. GPU rows are measured only where CUDA is available, otherwise marked pending.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from benchmarks.machine import cpu_model

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
def kmeans_methods(n: int, k: int, seed: int, threads: int) -> Dict[str, dict]:
    """name -> {levels: [...], run: level -> centres (np/torch)}; levels in increasing effort."""
    from ssl_mi_callback.estimators import OnlineKMeans

    def ours(level):
        def run(x_np, x_t):
            km = OnlineKMeans(k, seed=seed, max_iter=level).fit(x_t)
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
        "ours OnlineKMeans.fit": {"levels": [2, 4, 8, 16, 32, 100], "unit": "max_iter", "make": ours},
        "ours OnlineKMeans.partial_fit": {"levels": [1, 2, 4], "unit": "epochs", "make": ours_stream},
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
        }
    except ImportError:
        methods["faiss Kmeans"] = None  # reported as skipped
    return methods


def bench_kmeans(configs: List[tuple], repeats: int, threads: int, seed: int = 0, budget_s: float = 1e9) -> List[dict]:
    rows = []
    started_all = time.perf_counter()
    for n, d, k in configs:
        if time.perf_counter() - started_all > budget_s:
            rows.append({"N": n, "D": d, "K": k, "skipped": "time budget of this run spent"})
            continue
        x_np = gaussian_mixture(n, d, components=k, seed=seed)
        x_t = torch.from_numpy(x_np)
        methods = kmeans_methods(n, k, seed, threads)
        curves: Dict[str, list] = {}
        for name, method in methods.items():
            if method is None:
                continue
            curve = []
            previous = None
            warm = min(n, max(4 * k, 2000))
            method["make"](method["levels"][0])(x_np[:warm], x_t[:warm])  # warm-up (imports, thread pools)
            for level in method["levels"]:
                t0 = time.perf_counter()
                centers = method["make"](level)(x_np, x_t)
                elapsed = time.perf_counter() - t0
                inertia = inertia_of(x_t, torch.as_tensor(np.asarray(centers)))
                curve.append({"level": level, "seconds": elapsed, "inertia": inertia})
                # stop climbing once converged (less than 0.1% better than the previous level)
                if not method.get("no_early_stop") and previous is not None and inertia > previous * (1 - 1e-3):
                    break
                previous = inertia if previous is None else min(previous, inertia)
            curves[name] = curve
        best = min(p["inertia"] for c in curves.values() for p in c)
        # T1: within 1% of the best inertia any method reached (the criterion);
        # T2: the inertia every method reaches (the worst method's best, + 1%): equal-inertia timing
        common = max(min(p["inertia"] for p in c) for c in curves.values()) * 1.01
        timed: Dict[tuple, list] = {}

        def time_to(name, target):
            point = next((p for p in curves[name] if p["inertia"] <= target), None)
            if point is None:
                return None, None
            key = (name, str(point["level"]))
            if key not in timed:
                fn = methods[name]["make"](point["level"])
                timed[key] = [point["seconds"]] + [median_time(lambda: fn(x_np, x_t), 1)[0] for _ in range(repeats - 1)]
            return point, statistics.median(timed[key])

        for name, method in methods.items():
            row = {"N": n, "D": d, "K": k, "method": name, "best_inertia": best, "common_inertia": common}
            if method is None:
                row["skipped"] = "faiss not installed (pip install faiss-cpu)"
                rows.append(row)
                continue
            row["curve"], row["unit"] = curves[name], method["unit"]
            last = min(curves[name], key=lambda p: p["inertia"])
            row["own_best_inertia"], row["own_best_level"], row["own_best_seconds"] = last["inertia"], last["level"], last["seconds"]
            p1, t1 = time_to(name, best * 1.01)
            p2, t2 = time_to(name, common)
            row["reached"] = p1 is not None
            row["level_t1"], row["seconds_t1"] = (p1["level"], t1) if p1 else (None, None)
            row["level"], row["seconds"], row["inertia"] = p2["level"], t2, p2["inertia"]
            row["frames_per_s"] = n / t2
            rows.append(row)
        here = [r for r in rows if (r.get("N"), r.get("D"), r.get("K")) == (n, d, k) and r.get("seconds")]
        ours = next((r for r in here if r["method"] == "ours OnlineKMeans.fit"), None)
        for r in here:
            if ours:
                r["ours_speedup"] = r["seconds"] / ours["seconds"]
                if r.get("seconds_t1") and ours.get("seconds_t1"):
                    r["ours_speedup_t1"] = r["seconds_t1"] / ours["seconds_t1"]
        print(f"[kmeans] N={n} D={d} K={k}: " + ", ".join(
            f"{r['method']} T2 {r['seconds']:.2f}s T1 {fmt(r.get('seconds_t1'))}" for r in here), flush=True)
        del x_np, x_t
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

    def isfinite_check():
        bool(torch.isfinite(x).all())

    def mean_variance():
        km._mean_variance(x, lambda t: t)

    def one_fit_iteration():
        OnlineKMeans(k, seed=seed, init=centers, max_iter=1).fit(x)

    for name, fn in [("matmul+argmin", matmul_argmin), ("exact distance (gather, sub, square)", exact_distances),
                     ("index_add float64 (chunk.double())", double_index_add), ("index_add float32", float_index_add),
                     ("one-hot matmul sums", onehot_matmul), ("isfinite check of x", isfinite_check),
                     ("_mean_variance (float64 pass)", mean_variance),
                     ("OnlineKMeans.fit(init=centres, max_iter=1) total", one_fit_iteration)]:
        fn()
        out[name] = median_time(fn, repeats)[0]
    seeding = median_time(lambda: OnlineKMeans(k, seed=seed, max_iter=1).fit(x[: min(n, 10000)]), 1)[0]
    out["k-means++ seeding, 3 x 10k-row sample (fit max_iter=1 on 10k rows)"] = seeding
    return out


# ----------------------------------------------------------------------------------- 2. probes
def bench_probes(n: int, d: int, classes: int, repeats: int, seed: int = 0) -> List[dict]:
    from ssl_mi_callback.estimators import LinearProbe, MLPProbe

    rng = np.random.default_rng(seed)
    zb = gaussian_mixture(2 * n, d, components=classes, seed=seed)
    za = zb + rng.standard_normal(zb.shape, dtype=np.float32) * 2.0  # the "masked" view: a noisy copy
    # labels: nearest of `classes` centres fitted on zb (what the product's probe predicts)
    from ssl_mi_callback.estimators import OnlineKMeans

    codes = OnlineKMeans(classes, seed=seed, max_iter=20).fit(zb).predict(zb).numpy()
    groups = np.arange(2 * n) // 200  # 200-frame "utterances"
    fit = groups % 2 == 0
    ev = ~fit
    x_fit, y_fit, g_fit, x_ev, y_ev = za[fit], codes[fit], groups[fit], za[ev], codes[ev]
    rows = []

    def ce_torch(log_proba):
        return float(-log_proba.gather(1, torch.as_tensor(y_ev)[:, None]).mean())

    for name, make in [("ours LinearProbe (L-BFGS, defaults)", lambda: LinearProbe(classes, seed=seed)),
                       ("ours MLPProbe (Adam, defaults)", lambda: MLPProbe(classes, seed=seed))]:
        seconds, probe = median_time(lambda: make().fit(x_fit, y_fit, g_fit), repeats)
        rows.append({"method": name, "seconds": seconds, "heldout_ce_nats": ce_torch(probe.predict_log_proba(x_ev)),
                     "best_step": getattr(probe, "best_step_", None)})
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x_fit)
        xs_fit, xs_ev = scaler.transform(x_fit), scaler.transform(x_ev)
        # ours minimises mean CE + (wd/2)||W||^2 with wd = 1e-4 -> sklearn C = 1 / (n_fit * wd)
        c_value = 1.0 / (len(x_fit) * 1e-4)
        target = rows[0]["heldout_ce_nats"] * 1.01
        curve = []
        for max_iter in (5, 10, 20, 40, 80, 160):
            def fit_lr(max_iter=max_iter):
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return LogisticRegression(C=c_value, max_iter=max_iter, tol=1e-6).fit(xs_fit, y_fit)
            t0 = time.perf_counter()
            model = fit_lr()
            elapsed = time.perf_counter() - t0
            proba = np.clip(model.predict_proba(xs_ev), 1e-300, None)
            index = np.searchsorted(model.classes_, y_ev)
            ce = float(-np.log(proba[np.arange(len(y_ev)), index]).mean())
            curve.append({"max_iter": max_iter, "seconds": elapsed, "heldout_ce_nats": ce})
            if ce <= target:
                seconds = statistics.median([elapsed] + [median_time(fit_lr, 1)[0] for _ in range(repeats - 1)])
                rows.append({"method": f"sklearn LogisticRegression (lbfgs, max_iter={max_iter}, first to reach ours' CE + 1%)",
                             "seconds": seconds, "heldout_ce_nats": ce, "curve": curve, "reached": True})
                break
        else:
            rows.append({"method": "sklearn LogisticRegression (lbfgs, max_iter=160; did not reach ours' CE + 1%)",
                         "seconds": curve[-1]["seconds"], "heldout_ce_nats": curve[-1]["heldout_ce_nats"],
                         "curve": curve, "reached": False})
    except ImportError:
        rows.append({"method": "sklearn LogisticRegression", "skipped": "scikit-learn not installed"})
    for r in rows:
        r.update(N_fit=int(fit.sum()), N_eval=int(ev.sum()), D=d, classes=classes)
    print("[probes] " + ", ".join(f"{r['method'][:30]} {r.get('seconds', 0):.2f}s CE={r.get('heldout_ce_nats', 0):.3f}" for r in rows), flush=True)
    return rows


# ----------------------------------------------------------------------------------- 3. full evaluation
@contextlib.contextmanager
def estimator_timers(store: dict):
    """Time k-means and the probe inside ``unsupervised_mi`` by wrapping what bounds.py looks up
    (no package code changes); falls back to no split if the names are gone."""
    from ssl_mi_callback.estimators import bounds

    saved = {}
    if hasattr(bounds, "OnlineKMeans"):
        base = bounds.OnlineKMeans

        class TimedKMeans(base):
            def fit(self, *a, **kw):
                t0 = time.perf_counter()
                try:
                    return super().fit(*a, **kw)
                finally:
                    store["kmeans"] = store.get("kmeans", 0.0) + time.perf_counter() - t0

            def predict(self, *a, **kw):
                t0 = time.perf_counter()
                try:
                    return super().predict(*a, **kw)
                finally:
                    store["kmeans"] = store.get("kmeans", 0.0) + time.perf_counter() - t0

            def inertia(self, *a, **kw):
                t0 = time.perf_counter()
                try:
                    return super().inertia(*a, **kw)
                finally:
                    store["kmeans"] = store.get("kmeans", 0.0) + time.perf_counter() - t0

        saved["OnlineKMeans"] = base
        bounds.OnlineKMeans = TimedKMeans
    if hasattr(bounds, "make_probe"):
        base_make = bounds.make_probe

        def timed_make(*a, **kw):
            probe = base_make(*a, **kw)
            for method in ("fit", "predict_log_proba"):
                original = getattr(probe, method)

                def wrapped(*args, _original=original, **kwargs):
                    t0 = time.perf_counter()
                    try:
                        return _original(*args, **kwargs)
                    finally:
                        store["probe"] = store.get("probe", 0.0) + time.perf_counter() - t0
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


def bench_evaluation(heldout: Path, kind: str, max_seconds: float, repeats: int) -> dict:
    from ssl_mi_callback.data import load_heldout
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter

    model = build_wav2vec2(kind)
    params = sum(p.numel() for p in model.parameters())
    load_s, subset = median_time(lambda: load_heldout(heldout, max_seconds=max_seconds, max_utterance_seconds=15.0), repeats)
    config = EvaluationConfig(mask_length=5 if kind == "tiny" else 10)  # tiny recipe / base defaults
    evaluator = Evaluator(config, subset, FairseqMaskedPredictionAdapter())
    records = []
    for _ in range(repeats):
        store: dict = {}
        with estimator_timers(store):
            record = evaluator.evaluate(model)
        seconds = dict(record["seconds"])
        seconds["kmeans"] = store.get("kmeans")
        seconds["probe"] = store.get("probe")
        if seconds["kmeans"] is not None and seconds["probe"] is not None:
            seconds["estimators_other"] = seconds["estimators"] - seconds["kmeans"] - seconds["probe"]
        records.append(seconds)
    med = {key: statistics.median([r[key] for r in records if r.get(key) is not None])
           for key in records[0] if any(r.get(key) is not None for r in records)}
    med["load_heldout"] = load_s
    whole = med["total"] + load_s
    result = {
        "model": f"wav2vec2 {kind} ({params / 1e6:.2f} M params, random init)",
        "audio_seconds": round(subset.total_seconds, 1),
        "utterances": len(subset.utterances),
        "frames_masked": record["subset"]["frames"],
        "seconds": med,
        "ratio_evaluate_to_forward": med["total"] / med["forward"],
        "ratio_with_loading_to_forward": whole / med["forward"],
        "repeats": repeats,
        "mi_bits": record["metrics"]["mi_bits"],
    }
    print(f"[evaluation] {kind}: {json.dumps({k: round(v, 3) for k, v in med.items()})} ratio {result['ratio_evaluate_to_forward']:.2f}", flush=True)
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


def _train(config_dir: Path, config_name: str, data: Path, work: Path, max_update: Optional[int]) -> dict:
    launcher = Path(sys.executable).parent / "ssl-mi-fairseq-hydra-train"
    command = [str(launcher) if launcher.exists() else sys.executable,
               *([] if launcher.exists() else ["-m", "ssl_mi_callback.integrations.fairseq.launcher"]),
               "--config-dir", str(config_dir), "--config-name", config_name,
               f"task.data={data}", f"checkpoint.save_dir={work / 'ckpt'}", f"hydra.run.dir={work / 'hydra'}"]
    if max_update is not None:
        command.append(f"optimization.max_update={max_update}")
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


def bench_hook(data: Path, work: Path, repeats: int, max_update: Optional[int]) -> dict:
    recipe = ROOT / "recipes/fairseq/tiny_wav2vec2.yaml"
    runs = {"with hook": [], "stock": []}
    if True:
        tmp = work / "hook_runs"
        stock_name = _stock_yaml(recipe, tmp / "configs")
        for i in range(repeats):  # alternate, so drifting machine load hits both alike
            runs["with hook"].append(_train(recipe.parent, "tiny_wav2vec2", data, tmp / f"mi{i}", max_update))
            runs["stock"].append(_train(tmp / "configs", stock_name, data, tmp / f"stock{i}", max_update))
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


# ----------------------------------------------------------------------------------- report
def fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_report(results: dict, out: Path) -> None:
    m = results["machine"]
    lines = [
        "# Speed benchmark (issue 4)",
        "",
        f"Command: `{results['command']}` ({results['finished']} UTC, {results['elapsed_s']:.0f} s).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}), torch {m['torch']}, "
        f"scikit-learn {m['sklearn']}, faiss {m['faiss'] or 'not installed'}, fairseq {m['fairseq']}, Python {m['python']}; "
        f"GPU: {m['cuda'] or 'none'}. Load average (1/5/15 min) at start {', '.join(f'{v:.2f}' for v in m['loadavg_start'])}, "
        f"at end {', '.join(f'{v:.2f}' for v in results['loadavg_end'])} (the machine is shared: absolute times move with load, "
        "ratios within one table are measured side by side).",
        "",
        "## 1. k-means: time to reach the same inertia (within 1% of the best of all methods), CPU",
        "",
        "Data: anisotropic Gaussian mixture (K components, unequal weights, rank-16 covariance + isotropic noise), float32, seed 0. "
        "Each method climbs its own effort ladder (iterations/epochs, stopping once it improves < 0.1%); inertia is "
        "measured by one exact routine on all N rows. **T1** = first setting within 1% of the best inertia of all methods "
        "(the issue's criterion; methods that settle in a worse local minimum never reach it). **T2** = first setting "
        "within 1% of the inertia *every* method reaches (the worst method's own best): the equal-inertia comparison. "
        "Times are medians of the repeats of that setting; `speed-up of ours` = that method's time / ours.fit "
        "(> 1: ours faster). frames/s = N / time to T2. Each method gets a warm-up call first.",
        "",
        "| N | D | K | method | T2: setting | T2: time (s) | T2: frames/s | T2: speed-up of ours | T1: setting | T1: time (s) | own best inertia / best | own best: setting, time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["kmeans"]:
        if "method" not in r:
            lines.append(f"| {r['N']} | {r['D']} | {r['K']} | all | {r.get('skipped')} | | | | | | | |")
            continue
        if r.get("skipped"):
            lines.append(f"| {r['N']} | {r['D']} | {r['K']} | {r['method']} | skipped: {r['skipped']} | | | | | | | |")
            continue
        t1 = f"{r['unit']}={r['level_t1']}" if r["reached"] else "not reached"
        lines.append(
            f"| {r['N']} | {r['D']} | {r['K']} | {r['method']} | {r['unit']}={r['level']} | {r['seconds']:.2f} | "
            f"{r['frames_per_s']:.0f} | {fmt(r.get('ours_speedup'))} | {t1} | {fmt(r.get('seconds_t1'))} | "
            f"{r['own_best_inertia'] / r['best_inertia']:.4f} | {r['unit']}={r['own_best_level']}, {r['own_best_seconds']:.2f} |")
    for gpu_row in results.get("kmeans_gpu", []):
        lines.append(gpu_row)
    lines += ["", f"Grid run: {results['kmeans_grid_note']}", ""]
    prof = results.get("kmeans_profile")
    if prof:
        lines += [f"### Where one OnlineKMeans Lloyd iteration goes (N={prof['N']}, D={prof['D']}, K={prof['K']}, median s)", "",
                  "| part | seconds |", "|---|---|"]
        lines += [f"| {key} | {value:.4f} |" for key, value in prof.items() if key not in ("N", "D", "K")]
        lines.append("")
    lines += ["## 2. Probes at the same held-out cross-entropy, CPU", "",
              "| method | N fit / eval | D | classes | fit time (s) | held-out CE (nats) |", "|---|---|---|---|---|---|"]
    for r in results["probes"]:
        if r.get("skipped"):
            lines.append(f"| {r['method']} | skipped: {r['skipped']} | | | | |")
            continue
        lines.append(f"| {r['method']} | {r['N_fit']} / {r['N_eval']} | {r['D']} | {r['classes']} | {r['seconds']:.2f} | {r['heldout_ce_nats']:.4f} |")
    lines += ["", "## 3. One full evaluation (Evaluator.evaluate) of a wav2vec 2.0 on generated held-out speech", "",
              "Settings: EvaluationConfig defaults (last layer, K=50, linear probe, bootstrap 200, baselines on), "
              "mask_length 5 for the tiny recipe, 10 for base. `forward` = both views; `gather` = concatenating features; "
              "`kmeans`/`probe` timed inside `unsupervised_mi`; `other` = split, bootstrap, checks; load = `load_heldout` (not part of evaluate).", "",
              "| device | model | audio (s) | masked frames | load | forward (2 views) | gather | k-means | probe | other estimators | baselines | evaluate total | total / forward | (total + load) / forward |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["evaluation"]:
        if r.get("skipped"):
            lines.append(f"| CPU | {r['model']} | skipped: {r['skipped']} | | | | | | | | | | | |")
            continue
        s = r["seconds"]
        lines.append(
            f"| CPU | {r['model']} | {r['audio_seconds']} | {r['frames_masked']} | {s['load_heldout']:.2f} | {s['forward']:.2f} | "
            f"{s['gather']:.3f} | {fmt(s.get('kmeans'))} | {fmt(s.get('probe'))} | {fmt(s.get('estimators_other'))} | {s['baselines']:.2f} | "
            f"{s['total']:.2f} | {r['ratio_evaluate_to_forward']:.2f} | {r['ratio_with_loading_to_forward']:.2f} |")
    for gpu_row in results.get("evaluation_gpu", []):
        lines.append(gpu_row)
    h = results.get("hook")
    lines += ["", "## 4. Training overhead of the fairseq hook (tiny_wav2vec2 recipe, its default interval), CPU", ""]
    if h and not h.get("skipped"):
        b = h["implied_bound_mb"]
        lines += [
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
            f"{h['peak_rss_mb_with_hook'] - h['peak_rss_mb_stock']:.0f} MB.",
        ]
    else:
        lines.append(f"skipped: {h.get('skipped') if h else 'not run'}")
    lines += ["", "## GPU rows", "", f"All GPU rows (k-means/probe on CUDA, full evaluation of base size on 1 h of audio, float32 and bfloat16): "
              f"{results['gpu_note']}.", ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, one repeat (about 1-2 min)")
    parser.add_argument("--out", type=Path, default=None, help="where results.md / results.json go (default: next to this file; --quick: runs/bench_speed/quick)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_speed", help="corpus and training runs")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per timing (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch/sklearn/faiss (default: all cores)")
    parser.add_argument("--kmeans-budget", type=float, default=None, help="seconds after which remaining k-means grid points are skipped")
    parser.add_argument("--large", action="store_true", help="add N=1e6 (D=256, K=50) to the k-means grid")
    parser.add_argument("--report-only", action="store_true", help="rewrite results.md from an existing results.json")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: kmeans,probes,evaluation,hook")
    args = parser.parse_args(argv)
    if args.report_only:
        out = args.out or HERE
        results = json.loads((out / "results.json").read_text())
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
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    repeats = args.repeats or (1 if args.quick else 3)
    skip = set(filter(None, args.skip.split(",")))
    results: dict = {"machine": machine(), "quick": args.quick, "repeats": repeats,
                     "command": " ".join([".venv/bin/python -m benchmarks.speed", *(argv if argv is not None else sys.argv[1:])])}
    gpu = torch.cuda.is_available()
    results["gpu_note"] = "measured on " + torch.cuda.get_device_name(0) if gpu else PENDING_GPU
    if args.quick:
        grid = [(20000, 256, 50)]
        grid_note = "quick: N=2e4, D=256, K=50 only"
    else:
        grid = [(100000, 768, 50), (100000, 256, 50), (100000, 1024, 100), (100000, 768, 500), (100000, 768, 100)]
        if args.large:
            grid.append((1000000, 256, 50))
        grid_note = ("representative subset of N {1e5, 1e6} x D {256, 768, 1024} x K {50, 100, 500}: N=1e5 at (256, 50), "
                     "(768, 50), (1024, 100), (768, 500), (768, 100), run in that order (N=1e6 at (256, 50) with --large); the full "
                     "18-point grid does not fit ~15 min on 2 shared cores (N=1e6 alone takes minutes per method); "
                     "points past the time budget are listed as skipped")
    results["kmeans_grid_note"] = grid_note
    if "kmeans" not in skip:
        budget = args.kmeans_budget if args.kmeans_budget is not None else (1e9 if args.quick else 420.0)
        results["kmeans"] = bench_kmeans(grid, repeats, threads, budget_s=budget)
        prof_cfg = (20000, 256, 50) if args.quick else (100000, 768, 50)
        results["kmeans_profile"] = kmeans_iteration_profile(*prof_cfg, repeats=repeats)
    else:
        results["kmeans"] = []
    results["kmeans_gpu"] = [] if gpu else [f"| 1e5-1e6 | 768 | 50-500 | ours OnlineKMeans on CUDA | {PENDING_GPU} | | | | |"]
    results["probes"] = [] if "probes" in skip else (
        bench_probes(5000, 256, 50, repeats) if args.quick else bench_probes(20000, 768, 50, repeats))

    work = args.work
    corpus = work / "corpus"
    if not ("evaluation" in skip and "hook" in skip) and not (corpus / "heldout.tsv").exists():
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
