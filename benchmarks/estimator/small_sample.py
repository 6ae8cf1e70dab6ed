"""Small-sample behaviour of the MI estimator (old vs new) on real tiny wav2vec 2.0 features.

Writes a markdown report (default benchmarks/estimator/small_sample.md) with, per checkpoint of one
tiny wav2vec 2.0 run: the unsupervised bound, its 95% interval, the reference/entropy term and CE with
the old estimator (git commit OLD_COMMIT) and the current one; the spread over estimator seeds;
held-out sizes 1 / 2.4 / 5 min and K in {16, 50}; a "destroyed" control (za rows shuffled across
utterances, so I(Za; Zb) = 0); the supervised phone bound I(Z; Y) and probe accuracy with the
Spearman correlation between the unsupervised and supervised numbers; known-answer synthetic cases.

Inputs (training about 5 minutes on 2 cores; this script about 15 minutes on 2 busy cores, features
cached under --cache):

    .venv/bin/python -m ssl_mi_callback.corpus --out /tmp/est/corpus --minutes 12 --seed 0 \\
        --splits train=0.65,valid=0.05,heldout=0.2,probe_train=0.05,probe_test=0.05
    .venv/bin/ssl-mi-fairseq-hydra-train --config-dir recipes/fairseq --config-name tiny_wav2vec2 \\
        task.data=/tmp/est/corpus checkpoint.save_dir=/tmp/est/ck hydra.run.dir=/tmp/est/hy \\
        checkpoint.keep_interval_updates=-1 optimization.max_update=600
    .venv/bin/python -m ssl_mi_callback.corpus --out /tmp/est/corpus_big --minutes 6 --seed 1 \\
        --splits heldout=0.95,valid=0.05          # 5.7 min of held-out speech for the size study
    .venv/bin/python benchmarks/estimator/small_sample.py --corpus /tmp/est/corpus \\
        --big-corpus /tmp/est/corpus_big --checkpoints /tmp/est/ck --cache /tmp/est/feat

Features are extracted exactly as the product does (``Evaluator._local_features``: fixed span masks,
mask_prob 0.5, mask_length 5 as in recipes/fairseq/tiny_wav2vec2.yaml, last layer). Update 0 is the
same architecture freshly initialised. The old estimator is imported from ``git show OLD_COMMIT``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
OLD_COMMIT = "1de4efdae1fd477630b47529cd2788a8dda85fa4"
MASK_LENGTH = 5  # recipes/fairseq/tiny_wav2vec2.yaml task.mi_mask_length
BOOTSTRAP = 1000

SAMPLE_RATE = 16000


def checkpoint_paths(directory: Path) -> Dict[int, Path]:
    """{update: path} of the interval checkpoints ``checkpoint_<epoch>_<update>.pt``."""
    found = {}
    for path in Path(directory).glob("checkpoint_*_*.pt"):
        match = re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def random_init_model(path: Path, seed: int = 0) -> torch.nn.Module:
    """The architecture of the checkpoint at ``path`` with freshly initialised weights (update 0)."""
    from ssl_mi_callback.integrations.fairseq import offline  # noqa: F401  (applies the compat patches)
    from ssl_mi_callback.integrations.fairseq import tasks as _mi_tasks  # noqa: F401
    from ssl_mi_callback.integrations.fairseq.safe_load import load_checkpoint
    from fairseq import tasks
    from omegaconf import OmegaConf

    state = load_checkpoint(path)
    cfg = state["cfg"]
    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(cfg)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(seed)
    return task.build_model(cfg.model).eval()


def extract(model: torch.nn.Module, corpus: Path, split: str, max_seconds: float, mask_length: int,
            mask_prob: float = 0.5, mask_seed: int = 0) -> Dict[str, np.ndarray]:
    """The product's two-view features of ``model`` on ``corpus/<split>.tsv`` (last layer)."""
    from ssl_mi_callback.corpus import read_labels
    from ssl_mi_callback.data import load_heldout
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features import resolve_layers
    from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter

    corpus = Path(corpus)
    subset = load_heldout(corpus / f"{split}.tsv", max_seconds=max_seconds, max_utterance_seconds=15.0)
    manifest = (corpus / f"{split}.tsv").read_text().splitlines()[1:]
    uid_row = {line.split("\t")[0]: row for row, line in enumerate(manifest)}
    labels = read_labels(corpus, split)
    config = EvaluationConfig(layers=(-1,), mask_prob=mask_prob, mask_length=mask_length, mask_seed=mask_seed,
                              bootstrap=0, baselines=False)
    adapter = FairseqMaskedPredictionAdapter()
    evaluator = Evaluator(config, subset, adapter)
    layer = resolve_layers([-1], adapter.num_layers(model))[0]
    with torch.no_grad():
        parts = evaluator._local_features(model, [layer])
        out: Dict[str, List[np.ndarray]] = {k: [] for k in
                                            ("za", "zb", "groups", "labels", "z_all", "groups_all", "labels_all")}
        from ssl_mi_callback.views import span_mask

        for batch, (index, per_layer, groups, _, _) in zip(evaluator.batches, parts):
            assert batch.index == index
            za, zb = per_layer[layer]
            out["za"].append(za.numpy())
            out["zb"].append(zb.numpy())
            out["groups"].append(groups.numpy())
            waveforms = batch.waveforms()
            num_frames = adapter.num_frames(model, batch.num_samples)
            no_mask = torch.zeros(len(batch.utterances), num_frames, dtype=torch.bool)
            unmasked = adapter.extract_views(model, waveforms, no_mask, [layer])[1][layer]
            for row, utterance in enumerate(batch.utterances):
                frame_labels = labels[uid_row[utterance.uid]]
                frame_labels = np.concatenate([frame_labels, np.full(max(0, num_frames - len(frame_labels)),
                                                                     frame_labels[-1])])[:num_frames]
                mask = span_mask(num_frames, config.mask_config(), utterance.uid).numpy()
                out["labels"].append(frame_labels[mask])
                out["z_all"].append(unmasked[row].float().numpy())
                out["labels_all"].append(frame_labels)
                out["groups_all"].append(np.full(num_frames, utterance.index))
    arrays = {key: np.concatenate(value) for key, value in out.items()}
    assert len(arrays["labels"]) == len(arrays["za"])
    seconds = np.zeros(len(subset.utterances))
    for utterance in subset.utterances:
        seconds[utterance.index] = utterance.num_samples / SAMPLE_RATE
    arrays["seconds"] = seconds
    return arrays


def cached_features(cache: Path, name: str, model_fn, corpus: Path, split: str, max_seconds: float,
                    mask_length: int) -> Dict[str, np.ndarray]:
    path = Path(cache) / f"{name}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = extract(model_fn(), corpus, split, max_seconds, mask_length)
        np.savez(path, **arrays)
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def prefix_by_seconds(arrays: Dict[str, np.ndarray], max_seconds: Optional[float]) -> Dict[str, np.ndarray]:
    """The first utterances (manifest order) up to ``max_seconds`` of audio, as a smaller held-out set."""
    if max_seconds is None:
        return arrays
    keep = np.flatnonzero(np.cumsum(arrays["seconds"]) <= max_seconds + 1e-9)
    out = {}
    for key in ("za", "zb", "groups", "labels"):
        out[key] = arrays[key][np.isin(arrays["groups"], keep)]
    for key in ("z_all", "groups_all", "labels_all"):
        out[key] = arrays[key][np.isin(arrays["groups_all"], keep)]
    out["seconds"] = arrays["seconds"][keep]
    return out


# --- estimators ----------------------------------------------------------------------------------
def old_estimators(commit: str = OLD_COMMIT):
    """The estimators package as of ``commit``, imported as ``old_estimators`` (relative imports only)."""
    target = Path(tempfile.mkdtemp(prefix="old_estimators_")) / "old_estimators"
    target.mkdir()
    names = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", commit, "ssl_mi_callback/estimators/"],
                           check=True, capture_output=True, text=True).stdout.split()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{name}"], check=True,
                                  capture_output=True, text=True).stdout
            (target / Path(name).name).write_text(text)
    sys.path.insert(0, str(target.parent))
    import old_estimators as module  # noqa: E402

    return module


def new_estimators():
    from ssl_mi_callback import estimators

    return estimators


def unsupervised(module, arrays, clusters: int, seed: int) -> dict:
    started = time.perf_counter()
    result = module.unsupervised_mi(arrays["za"], arrays["zb"], arrays["groups"], clusters=clusters, seed=seed,
                                    bootstrap=BOOTSTRAP).to_dict()
    result["seconds"] = time.perf_counter() - started
    return result


def supervised(module, arrays, seed: int, n_classes: int) -> dict:
    started = time.perf_counter()
    result = module.supervised_mi(arrays["z_all"], arrays["labels_all"], arrays["groups_all"], seed=seed,
                                  bootstrap=BOOTSTRAP, n_classes=n_classes).to_dict()
    result["seconds"] = time.perf_counter() - started
    return result


def destroyed(arrays: Dict[str, np.ndarray], seed: int = 0) -> Dict[str, np.ndarray]:
    """za rows shuffled across all frames (hence across utterances): Za independent of Zb."""
    out = dict(arrays)
    out["za"] = arrays["za"][np.random.default_rng(seed).permutation(len(arrays["za"]))]
    return out


def contains(result: dict) -> bool:
    low, high = result["ci95_bits"]
    return low <= result["mi_bits"] <= high


# --- formatting ----------------------------------------------------------------------------------
def fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:+.{digits}f}" if digits == 3 else f"{value:.{digits}f}"


def interval(result: dict) -> str:
    low, high = result["ci95_bits"]
    return f"[{low:+.3f}, {high:+.3f}]"


def spread(values: List[float]) -> str:
    return f"{np.mean(values):+.3f} ± {np.std(values, ddof=1):.3f}"


def wd(result: dict) -> str:
    value = result.get("probe_weight_decay", "-")
    return "marginal" if value is None else (f"{value:.2g}" if isinstance(value, float) else str(value))


def table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def machine() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
    from benchmarks.machine import cpu_model

    cpu = cpu_model()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores (shared with other jobs; load {load:.1f} at start), "
            f"torch {torch.__version__}, 1 torch thread, Python {platform.python_version()}")


# --- the study -----------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="corpus of the training run (its heldout split)")
    parser.add_argument("--big-corpus", type=Path, required=True, help="corpus with >= 5 min of heldout speech")
    parser.add_argument("--checkpoints", type=Path, required=True, help="save_dir with checkpoint_<epoch>_<update>.pt")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/est/feat"), help="feature cache directory")
    parser.add_argument("--seeds", type=int, default=5, help="estimator seeds per setting")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("small_sample.md"))
    parser.add_argument("--raw", type=Path, default=None, help="also write every result as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()
    host = machine()
    from ssl_mi_callback.integrations.fairseq.offline import load_model

    old, new = old_estimators(), new_estimators()
    seeds = list(range(args.seeds))
    n_phones = len((args.corpus / "phones.txt").read_text().split())
    paths = checkpoint_paths(args.checkpoints)
    if not paths:
        raise SystemExit(f"no checkpoint_<epoch>_<update>.pt in {args.checkpoints}")
    first = next(iter(paths.values()))
    models = {0: lambda: random_init_model(first)}
    models.update({update: (lambda p=path: load_model(p)) for update, path in paths.items()})
    last = max(paths)

    # features: the demo's held-out set (2.4 min) and the big one (5.7 min) for the size study
    main_features = {u: cached_features(args.cache, f"main_u{u}", fn, args.corpus, "heldout", 1e9, MASK_LENGTH)
                     for u, fn in models.items()}
    size_models = sorted({0, 100, 300, last} & set(models))
    big_features = {u: cached_features(args.cache, f"big_u{u}", models[u], args.big_corpus, "heldout", 300.0,
                                       MASK_LENGTH) for u in size_models}
    print(f"features ready ({time.time() - started:.0f} s)", flush=True)
    raw: List[dict] = []

    def record(kind: str, **fields) -> dict:
        raw.append({"kind": kind, **fields})
        return fields["result"]

    # A. every checkpoint on the demo held-out set, K = 50
    models_a = list(main_features) + ["destroyed"]
    rows_a, rows_a_seeds, summary = [], [], {}
    for u in models_a:
        arrays = destroyed(main_features[last]) if u == "destroyed" else main_features[u]
        runs = {name: [record("A", model=u, estimator=name, seed=s, result=unsupervised(module, arrays, 50, s))
                       for s in seeds] for name, module in (("old", old), ("new", new))}
        sup = [] if u == "destroyed" else [
            record("A-sup", model=u, seed=s, result=supervised(new, arrays, s, n_phones)) for s in seeds]
        sup_old = [] if u == "destroyed" else [
            record("A-sup-old", model=u, seed=0, result=supervised(old, arrays, 0, n_phones))]
        o, n = runs["old"][0], runs["new"][0]
        summary[u] = {
            "old": np.mean([r["mi_bits"] for r in runs["old"]]), "new": np.mean([r["mi_bits"] for r in runs["new"]]),
            "sup": np.mean([r["mi_bits"] for r in sup]) if sup else None,
            "acc": np.mean([r["accuracy"] for r in sup]) if sup else None,
            "sup_old": sup_old[0]["mi_bits"] if sup_old else None,
        }
        rows_a.append([str(u), fmt(o["mi_bits"]), interval(o), fmt(o["h_c_bits"], 4), fmt(o["ce_bits"], 4),
                       fmt(n["mi_bits"]), interval(n), fmt(n["h_c_bits"], 4), fmt(n["h_c_plugin_bits"], 4),
                       fmt(n["ce_bits"], 4), wd(n)])
        rows_a_seeds.append([
            str(u), spread([r["mi_bits"] for r in runs["old"]]), f"{sum(map(contains, runs['old']))}/{len(seeds)}",
            spread([r["mi_bits"] for r in runs["new"]]), f"{sum(map(contains, runs['new']))}/{len(seeds)}",
            "-" if not sup else spread([r["mi_bits"] for r in sup]),
            "-" if not sup else f"{summary[u]['acc']:.3f}",
            "-" if not sup_old else fmt(sup_old[0]["mi_bits"]),
        ])
        print(f"A {u}: old {summary[u]['old']:+.3f} new {summary[u]['new']:+.3f} ({time.time() - started:.0f} s)",
              flush=True)

    # B. held-out size x K, a few checkpoints + the destroyed control
    rows_b = []
    for minutes in (1.0, 2.4, 5.0):
        for clusters in (16, 50):
            for u in size_models + ["destroyed"]:
                base = big_features[last] if u == "destroyed" else big_features[u]
                arrays = prefix_by_seconds(base, minutes * 60)
                if u == "destroyed":
                    arrays = destroyed(arrays)
                runs = {name: [record("B", model=u, minutes=minutes, clusters=clusters, estimator=name, seed=s,
                                      result=unsupervised(module, arrays, clusters, s)) for s in seeds]
                        for name, module in (("old", old), ("new", new))}
                n0 = runs["new"][0]
                rows_b.append([
                    f"{minutes:g}", str(clusters), str(u), f"{n0['n_frames_fit']}/{n0['n_frames_eval']}",
                    spread([r["mi_bits"] for r in runs["old"]]),
                    f"{np.mean([r['ci95_bits'][1] - r['ci95_bits'][0] for r in runs['old']]):.3f}",
                    f"{sum(map(contains, runs['old']))}/{len(seeds)}",
                    spread([r["mi_bits"] for r in runs["new"]]),
                    f"{np.mean([r['ci95_bits'][1] - r['ci95_bits'][0] for r in runs['new']]):.3f}",
                    f"{sum(map(contains, runs['new']))}/{len(seeds)}",
                    ", ".join(sorted({wd(r) for r in runs["new"]})),
                ])
            print(f"B {minutes} min K={clusters} ({time.time() - started:.0f} s)", flush=True)

    # C. synthetic known answers (the test suite's generator)
    rows_c = synthetic_rows(old, new, seeds, record)

    # correlations over the trained checkpoints and update 0
    updates = [u for u in models_a if u != "destroyed"]
    correlations = []
    for name in ("old", "new"):
        unsup = [summary[u][name] for u in updates]
        correlations.append([name, f"{spearman(unsup, [summary[u]['sup'] for u in updates]):+.2f}",
                             f"{spearman(unsup, [summary[u]['acc'] for u in updates]):+.2f}"])
    timing = {name: np.mean([r["result"]["seconds"] for r in raw if r["kind"] == "A" and r["estimator"] == name])
              for name in ("old", "new")}
    logged = {}
    history = args.checkpoints / "mi_history.jsonl"
    if history.exists():
        for line in history.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("status") == "ok":
                logged[entry.get("step")] = entry["metrics"]["mi_bits"]

    lines = [
        "# Estimator small-sample benchmark (old vs new)",
        "",
        f"Written by `benchmarks/estimator/small_sample.py` in {time.time() - started:.0f} s on {host}.",
        f"Old estimator: commit `{OLD_COMMIT[:7]}` (Barber-Agakov H(c) - CE with plug-in H, linear probe L2 1e-4 "
        "with early stopping on 15 % of the fit utterances, basic bootstrap interval). New: the working tree "
        "(bound -mean log2 qbar(c) - CE with utterance jackknife bias correction, L2 chosen by 3-fold "
        "utterance cross-validation, basic bootstrap interval; docs/estimator.md).",
        f"Model: recipes/fairseq/tiny_wav2vec2.yaml trained 600 updates on the 12-min corpus, every 50 updates "
        f"kept; update 0 = same architecture, fresh init; `destroyed` = update {last} with za rows shuffled "
        f"across utterances (true I(Za; Zb) = 0). Last layer, mask_prob 0.5, mask_length {MASK_LENGTH}, "
        f"fit/eval = 50/50 by utterance, {BOOTSTRAP} bootstrap resamples, {len(seeds)} estimator seeds "
        "(split, k-means, probe). Bits throughout.",
        f"Mean time per unsupervised call (section A, K = 50): old {timing['old']:.2f} s, new {timing['new']:.2f} s.",
        "",
        f"## A. Every checkpoint, demo held-out set ({sum(main_features[last]['seconds']) / 60:.1f} min, "
        f"{len(main_features[last]['za'])} masked frames), K = 50, seed 0",
        "",
        "Old H is the plug-in H(c); new H is the bound's reference term -mean log2 qbar(c) (mi = H - CE), "
        "H plug-in is the plain entropy for comparison; wd is the L2 strength the new probe chose.",
        "",
    ]
    lines += table(["update", "old mi", "old ci95", "old H", "old CE", "new mi", "new ci95", "new H", "H plug-in",
                    "new CE", "wd"], rows_a)
    lines += ["", f"Spread over {len(seeds)} estimator seeds (mean ± sd), how many intervals contain their own "
              "point estimate, and the supervised phone bound I(Z; Y) (new estimator, unmasked last-layer "
              "features at every frame of the same held-out audio, 40 phone classes) with probe accuracy; "
              "`logged` is what training logged (old estimator, 2.0 min cap).", ""]
    rows_a_seeds = [row + [fmt(logged.get(int(row[0]))) if row[0].isdigit() and int(row[0]) in logged else "-"]
                    for row in rows_a_seeds]
    lines += table(["update", "old mi", "old ci∋mi", "new mi", "new ci∋mi", "I(Z;Y) new", "phone acc",
                    "I(Z;Y) old", "logged"], rows_a_seeds)
    lines += ["", f"Spearman over the {len(updates)} models (updates 0-{last}) of the unsupervised bound "
              "(seed mean) with the supervised bound and with phone accuracy:", ""]
    lines += table(["estimator", "vs I(Z;Y)", "vs accuracy"], correlations)
    lines += ["", "## B. Held-out size x K (big corpus prefixes), mean ± sd over seeds, mean interval width, "
              "intervals containing their estimate", ""]
    lines += table(["minutes", "K", "model", "frames fit/eval", "old mi", "old width", "old ci∋mi", "new mi",
                    "new width", "new ci∋mi", "new wd"], rows_b)
    lines += ["", "## C. Synthetic known answers (tests/conftest.py `_two_views`; 50 frames per utterance)", ""]
    lines += table(["case", "utterances", "truth", "old mi", "old ci∋mi", "old low<=truth", "new mi", "new ci∋mi",
                    "new low<=truth"], rows_c)
    lines.append("")
    args.out.write_text("\n".join(lines))
    if args.raw:
        args.raw.write_text(json.dumps(raw, default=str))
    print(f"wrote {args.out} ({time.time() - started:.0f} s)")
    return 0


def synthetic_rows(old, new, seeds, record) -> List[List[str]]:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import _two_views  # the test suite's generator

    p = np.array([0.3, 0.2, 0.15, 0.15, 0.1, 0.05, 0.03, 0.02])
    joint = p[:, None] * (0.7 * np.eye(8) + 0.3 / 8)
    truth_noisy = float((joint * np.log2(joint / (p[:, None] * joint.sum(0)[None, :]))).sum())
    cases = []
    for n_utterances in (20, 40, 100):
        cases.append(("noisy channel, 8 states, K=8", n_utterances, truth_noisy, 8,
                      lambda s, n=n_utterances: _two_views(8, p=p, flip=0.3, n_utterances=n, dims_a=12, dims_b=20,
                                                           seed=s)[:3]))
        cases.append(("independent views, K=50", n_utterances, 0.0, 50,
                      lambda s, n=n_utterances: _independent(_two_views(16, n_utterances=n, seed=s), s)))
    cases.append(("separable, 16 states, K=16", 80, 4.0, 16, lambda s: _two_views(16, seed=s)[:3]))
    rows = []
    for name, n_utterances, truth, clusters, make in cases:
        runs = {}
        for label, module in (("old", old), ("new", new)):
            runs[label] = []
            for s in seeds:
                za, zb, groups = make(s)
                result = module.unsupervised_mi(za, zb, groups, clusters=clusters, seed=s, bootstrap=BOOTSTRAP).to_dict()
                runs[label].append(record("C", case=name, utterances=n_utterances, estimator=label, seed=s,
                                          result=result))
        rows.append([name, str(n_utterances), f"{truth:.3f}"] + [
            cell for label in ("old", "new") for cell in (
                spread([r["mi_bits"] for r in runs[label]]), f"{sum(map(contains, runs[label]))}/{len(seeds)}",
                f"{sum(r['ci95_bits'][0] <= truth for r in runs[label])}/{len(seeds)}")])
    return rows


def _independent(views, seed):
    za, zb, groups = views[:3]
    return np.random.default_rng(1000 + seed).normal(size=za.shape).astype(np.float32), zb, groups


if __name__ == "__main__":
    sys.exit(main())
