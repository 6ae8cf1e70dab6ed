"""Selection-quality benchmark (issue 8): does the MI bound pick the checkpoint a phone probe would pick?

    .venv/bin/python -m benchmarks.selection --out DIR --quick   # about 16 min on 2 busy CPU cores (5 series x 8 checkpoints)
    .venv/bin/python -m benchmarks.selection --out DIR           # full configuration (over an hour; not run yet)
    .venv/bin/python -m benchmarks.selection --out DIR --config benchmarks/selection/configs/reduced.yaml  # about 45 min

Stages, each a subprocess of the repo's own tools (OMP_NUM_THREADS=1, one at a time):

1. corpus: ``python -m ssl_mi_callback.corpus --out DIR/corpus`` (settings from the plan YAML in
   ``configs/``); HuBERT frame labels with ``recipes/fairseq/prepare_hubert_labels.py`` when a series
   needs them.
2. training: every series of the plan with ``python -m ssl_mi_callback.integrations.fairseq.launcher``
   on a recipe of ``recipes/fairseq`` plus :data:`COMMON_OVERRIDES` (every interval checkpoint kept,
   the hook's own evaluation kept cheap and not used for selection, checkpoint_best.pt by validation
   loss) plus the series' overrides. The validation loss of every checkpoint is read from the log.
3. scoring: ``ssl-mi score CKPT... --data corpus/heldout.tsv --labels corpus/heldout.phn --layers ...
   --centering none --json`` per series, and the same without labels with ``--centering utterance``
   (the estimator's defaults otherwise); both MI settings come from the product itself.
4. analysis: for every label-free metric (MI per layer and aggregates, RankMe, RankMe-t, k-means
   inertia, validation loss, the latest checkpoint) its Spearman and Kendall correlation with the
   phone-probe accuracy, pooled over all checkpoints and within each series, the checkpoint it picks
   and its regret (probe accuracy of the best checkpoint minus that of the picked one, in points).
   The MI setting (centering x layer rule) is chosen on the development series only by a pre-registered
   rule (:func:`choose_setting`) and reported on the test series, where the issue's targets are judged.

Writes ``results.json`` and ``results.md`` into DIR and (unless ``--results-dir`` says otherwise) next to
this file. Stages whose outputs already exist in DIR with the same settings are reused
(``--fresh`` redoes everything).

Ground truth: the score command's supervised probe (linear, like the MI probe) is fitted on a random
half of the held-out utterances (estimator seed 0) and its frame accuracy measured on the other half;
it is *not* trained on probe_train and tested on probe_test (the corpus has those splits, the score
command does not use them).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from benchmarks.machine import cpu_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RECIPES = ROOT / "recipes" / "fairseq"
CONFIGS = HERE / "configs"
PYTHON = sys.executable

COMMON_OVERRIDES = (
    "checkpoint.keep_interval_updates=-1",       # keep every interval checkpoint
    "task.mi_select_checkpoint=false",           # the hook only logs; the benchmark scores offline
    "checkpoint.best_checkpoint_metric=loss",     # checkpoint_best.pt = lowest validation loss (a baseline)
    "checkpoint.maximize_best_checkpoint_metric=false",
    "task.mi_max_seconds=10",                     # keep the hook's own evaluation cheap
    "task.mi_clusters=8",
    "task.mi_bootstrap=20",
    "task.mi_baselines=false",
    "task.mi_export=",
)
ACCURACY_GAP = 0.02  # "clearly better": two checkpoints whose probe accuracies differ by >= 2 points


# ----------------------------------------------------------------------------------- helpers
def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_logged(command: Sequence[str], log_path: Path, timeout: float) -> tuple[int, float]:
    """Run ``command`` from the repo root with stdout+stderr to ``log_path``; (return code, seconds)."""
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as handle:
        handle.write("$ " + shlex.join(command) + "\n")
        handle.flush()
        try:
            completed = subprocess.run(command, cwd=ROOT, env=subprocess_env(), stdout=handle,
                                       stderr=subprocess.STDOUT, timeout=timeout)
            code = completed.returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - started


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def machine() -> dict:
    model = cpu_model()
    import torch

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads_per_process": 1,
    }


class LoadSampler:
    """1-minute load averages sampled at every stage boundary."""

    def __init__(self) -> None:
        self.samples: List[float] = []

    def sample(self) -> None:
        self.samples.append(round(os.getloadavg()[0], 2))

    def summary(self) -> dict:
        if not self.samples:
            return {}
        return {"min": min(self.samples), "max": max(self.samples),
                "mean": round(sum(self.samples) / len(self.samples), 2), "samples": len(self.samples)}


# ----------------------------------------------------------------------------------- plan
def load_plan(path: Path) -> dict:
    import yaml

    plan = yaml.safe_load(path.read_text(encoding="utf-8"))
    names = [series["name"] for series in plan["series"]]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: series names must be unique, got {names}")
    for series in plan["series"]:
        if not (RECIPES / f"{series['recipe']}.yaml").is_file():
            raise SystemExit(f"{path}: series {series['name']}: no recipe {series['recipe']} in {RECIPES}")
    return plan


def training_overrides(plan: dict, series: dict) -> List[str]:
    training = plan["training"]
    return [
        *COMMON_OVERRIDES,
        f"optimization.max_update={training['max_update']}",
        f"checkpoint.save_interval_updates={training['save_every']}",
        f"dataset.validate_interval_updates={training['save_every']}",
        *series.get("overrides", []),
    ]


# ----------------------------------------------------------------------------------- stage 1: data
def parse_splits(text: str) -> Dict[str, float]:
    """``train=0.7,valid=0.05`` -> {"train": 0.7, "valid": 0.05}."""
    return {name: float(share) for name, share in (item.split("=", 1) for item in text.split(","))}


def make_corpus(plan: dict, out: Path, fresh: bool = False) -> dict:
    corpus = plan["corpus"]
    command = [PYTHON, "-m", "ssl_mi_callback.corpus", "--out", str(out / "corpus"), "--minutes", str(corpus["minutes"]),
               "--seed", str(corpus["seed"]), "--splits", corpus["splits"], "--jobs", "2"]
    info_path = out / "corpus" / "corpus.json"
    if not fresh and info_path.is_file():  # reuse: the checkpoints and scores of DIR were made on this audio
        settings = json.loads(info_path.read_text()).get("settings", {})
        if (settings.get("minutes") == float(corpus["minutes"]) and settings.get("seed") == corpus["seed"]
                and settings.get("splits") == parse_splits(corpus["splits"])):
            log(f"corpus: reusing {out / 'corpus'}")
            return {"command": shlex.join(command), "seconds": 0.0, "reused": True, "log_tail": tail(out / "corpus.log", 1),
                    "splits": json.loads(info_path.read_text()).get("splits")}
    log("corpus: " + shlex.join(command[1:]))
    code, seconds = run_logged(command, out / "corpus.log", timeout=3600)
    if code != 0:
        raise SystemExit(f"corpus generation failed (exit {code}); see {out / 'corpus.log'}:\n{tail(out / 'corpus.log')}")
    info = json.loads((out / "corpus" / "corpus.json").read_text())
    return {"command": shlex.join(command), "seconds": round(seconds, 1), "log_tail": tail(out / "corpus.log", 1),
            "splits": info.get("splits")}


def make_hubert_labels(plan: dict, out: Path, reuse: bool = False) -> dict:
    """MFCC k-means frame labels for the HuBERT series; ``reuse``: keep DIR/km when the corpus was reused
    and km.log shows the same command."""
    labels = plan.get("hubert_labels", {})
    command = [PYTHON, str(RECIPES / "prepare_hubert_labels.py"), str(out / "corpus"), "--out", str(out / "km"),
               "--splits", "train", "valid", "heldout", "--k", str(labels.get("k", 50)), "--seed", str(labels.get("seed", 0))]
    if reuse and all((out / "km" / f"{split}.km").is_file() for split in ("train", "valid", "heldout")) \
            and (out / "km.log").is_file() and (out / "km.log").read_text().startswith("$ " + shlex.join(command) + "\n"):
        log(f"hubert labels: reusing {out / 'km'}")
        return {"command": shlex.join(command), "seconds": 0.0, "reused": True}
    log("hubert labels: " + shlex.join(command[1:]))
    code, seconds = run_logged(command, out / "km.log", timeout=3600)
    if code != 0:
        raise SystemExit(f"HuBERT label preparation failed (exit {code}); see {out / 'km.log'}:\n{tail(out / 'km.log')}")
    return {"command": shlex.join(command), "seconds": round(seconds, 1)}


# ----------------------------------------------------------------------------------- stage 2: training
VALID_LINE = re.compile(r"valid on 'valid' subset \| loss (-?[0-9.e+-]+|-?inf|nan) .*?\| num_updates (\d+)")
CHECKPOINT_NAME = re.compile(r"checkpoint_\d+_(\d+)\.pt")


def checkpoint_paths(directory: Path) -> Dict[int, Path]:
    """{update: path} of the interval checkpoints ``checkpoint_<epoch>_<update>.pt``."""
    found = {}
    for path in directory.glob("checkpoint_*_*.pt"):
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def validation_losses(log_path: Path) -> Dict[int, float]:
    """{update: validation loss} from the fairseq log (the host's own ``loss`` on the valid split)."""
    losses = {}
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = VALID_LINE.search(line)
        if match:
            losses[int(match.group(2))] = float(match.group(1))
    return losses


def train_series(plan: dict, series: dict, out: Path, fresh: bool) -> dict:
    run_dir = out / "series" / series["name"]
    save_dir = run_dir / "checkpoints"
    overrides = training_overrides(plan, series)
    data_args = [f"task.data={out / 'corpus'}"]
    if series["recipe"] == "tiny_hubert":
        data_args.append(f"task.label_dir={out / 'km'}")
    command = [PYTHON, "-m", "ssl_mi_callback.integrations.fairseq.launcher", "--config-dir", str(RECIPES),
               "--config-name", series["recipe"], *data_args, f"checkpoint.save_dir={save_dir}",
               f"hydra.run.dir={run_dir / 'hydra'}", *overrides]
    marker = run_dir / "train.json"
    if not fresh and marker.is_file():
        previous = json.loads(marker.read_text())
        if previous.get("command") == shlex.join(command) and previous.get("returncode") == 0:
            log(f"train {series['name']}: reusing {save_dir} ({len(previous['checkpoints'])} checkpoints)")
            return {**previous, "reused": True}
    if save_dir.exists():
        for stale in save_dir.glob("*.pt"):
            stale.unlink()
        for stale in save_dir.glob("*.jsonl"):
            stale.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"train {series['name']}: {series['recipe']} + {' '.join(series.get('overrides', [])) or '(recipe settings)'}")
    code, seconds = run_logged(command, run_dir / "train.log", timeout=3 * 3600)
    checkpoints = {step: str(path) for step, path in checkpoint_paths(save_dir).items()}
    result = {
        "command": shlex.join(command), "returncode": code, "seconds": round(seconds, 1),
        "checkpoints": checkpoints, "valid_loss": validation_losses(run_dir / "train.log"),
    }
    if code != 0:
        result["error_tail"] = tail(run_dir / "train.log")
        log(f"train {series['name']}: FAILED (exit {code}); {len(checkpoints)} checkpoints; tail:\n{result['error_tail']}")
    else:
        log(f"train {series['name']}: {len(checkpoints)} checkpoints in {seconds:.0f} s")
    marker.write_text(json.dumps(result, indent=1) + "\n")
    return result


# ----------------------------------------------------------------------------------- stage 3: scoring
CENTERINGS = ("none", "utterance")  # every checkpoint is scored once per setting of ssl-mi score --centering


def score_series(plan: dict, series: dict, trained: dict, out: Path, fresh: bool) -> dict:
    """``ssl-mi score`` of every checkpoint of a series, once per :data:`CENTERINGS` setting.

    The ``none`` run gets the labels (the phone-probe ground truth is computed on raw features and is
    the same for both settings); the ``utterance`` run is label-free and lands under ``"centered"``."""
    results: dict = {}
    for centering in CENTERINGS:
        results[centering] = score_series_once(plan, series, trained, out, fresh, centering)
    return {**results["none"], "centered": results["utterance"],
            "seconds": sum(r.get("seconds") or 0.0 for r in results.values())}


def score_series_once(plan: dict, series: dict, trained: dict, out: Path, fresh: bool, centering: str) -> dict:
    run_dir = out / "series" / series["name"]
    score = plan["score"]
    paths = [trained["checkpoints"][step] for step in sorted(trained["checkpoints"], key=int)]
    suffix = "" if centering == "none" else f"_{centering}"
    json_path = run_dir / f"score{suffix}.json"
    labels = ["--labels", str(out / "corpus" / "heldout.phn")] if centering == "none" else []
    command = [PYTHON, "-m", "ssl_mi_callback.cli", "score", *paths, "--data", str(out / "corpus" / "heldout.tsv"),
               *labels, "--layers", str(score["layers"]), "--centering", centering,
               "--max-seconds", str(score.get("max_seconds", 300)), *map(str, score.get("extra", [])), "--json", str(json_path)]
    marker = run_dir / f"score{suffix}_command.txt"
    name = f"{series['name']} (centering {centering})"
    if not fresh and json_path.is_file() and marker.is_file() and marker.read_text() == shlex.join(command):
        log(f"score {name}: reusing {json_path}")
        return {"command": shlex.join(command), "seconds": None, "reused": True, **json.loads(json_path.read_text())}
    if not paths:
        return {"command": shlex.join(command), "seconds": 0.0, "checkpoints": [], "returncode": None}
    log(f"score {name}: {len(paths)} checkpoints")
    code, seconds = run_logged(command, run_dir / f"score{suffix}.log", timeout=3 * 3600)
    if not json_path.is_file():
        log(f"score {name}: FAILED (exit {code}), no JSON; tail:\n{tail(run_dir / f'score{suffix}.log')}")
        return {"command": shlex.join(command), "seconds": round(seconds, 1), "checkpoints": [], "returncode": code,
                "error_tail": tail(run_dir / f"score{suffix}.log")}
    marker.write_text(shlex.join(command))
    scored = json.loads(json_path.read_text())
    failed = [r for r in scored["checkpoints"] if r.get("status") != "ok"]
    log(f"score {name}: {len(paths) - len(failed)} ok, {len(failed)} failed in {seconds:.0f} s")
    for record in failed:
        log(f"  failed {record['checkpoint']}: {record.get('error')}")
    return {"command": shlex.join(command), "seconds": round(seconds, 1), "returncode": code, **scored}


def centered_metrics(metrics: dict) -> dict:
    """Label-free metrics of a ``--centering utterance`` record renamed ``<name>_centered_l<k>``
    (``mi_bits`` -> ``mi_bits_centered``); the baselines (RankMe, RankMe-t) do not depend on centering."""
    renamed = {}
    for key, value in metrics.items():
        match = re.fullmatch(r"(.+)_l(\d+)", key)
        if match and not match.group(1).startswith(("rankme", "phone_")):
            renamed[f"{match.group(1)}_centered_l{match.group(2)}"] = value
        elif key == "mi_bits":
            renamed["mi_bits_centered"] = value
    return renamed


def probe_split_series(plan: dict, series: dict, trained: dict, out: Path, fresh: bool) -> dict:
    """Second ground truth: a linear probe fitted on probe_train, accuracy on probe_test (probe_split.py)."""
    run_dir = out / "series" / series["name"]
    paths = [trained["checkpoints"][step] for step in sorted(trained["checkpoints"], key=int)]
    json_path = run_dir / "probe_split.json"
    command = [PYTHON, "-m", "benchmarks.selection.probe_split", *paths, "--corpus", str(out / "corpus"),
               "--layers", str(plan["score"]["layers"]), "--json", str(json_path)]
    marker = run_dir / "probe_split_command.txt"
    if not fresh and json_path.is_file() and marker.is_file() and marker.read_text() == shlex.join(command):
        log(f"probe_train/probe_test {series['name']}: reusing {json_path}")
        return {"command": shlex.join(command), "seconds": None, "reused": True, **json.loads(json_path.read_text())}
    if not paths:
        return {"command": shlex.join(command), "seconds": 0.0, "checkpoints": []}
    log(f"probe_train/probe_test {series['name']}: {len(paths)} checkpoints")
    code, seconds = run_logged(command, run_dir / "probe_split.log", timeout=3 * 3600)
    if not json_path.is_file():
        log(f"probe_split {series['name']}: FAILED (exit {code}); tail:\n{tail(run_dir / 'probe_split.log')}")
        return {"command": shlex.join(command), "seconds": round(seconds, 1), "checkpoints": [], "returncode": code}
    marker.write_text(shlex.join(command))
    return {"command": shlex.join(command), "seconds": round(seconds, 1), "returncode": code, **json.loads(json_path.read_text())}


# ----------------------------------------------------------------------------------- stage 4: analysis
def finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def collect_rows(plan: dict, trained: Dict[str, dict], scored: Dict[str, dict],
                 split_probe: Dict[str, dict]) -> tuple[List[dict], List[int]]:
    """One row per scored checkpoint: series info, step, validation loss, every metric of the score JSON
    and the probe_train/probe_test accuracies."""
    rows: List[dict] = []
    layers: set = set()
    for series in plan["series"]:
        name = series["name"]
        train = trained.get(name, {})
        valid_loss = {int(k): v for k, v in train.get("valid_loss", {}).items()}
        records = [r for r in scored.get(name, {}).get("checkpoints", []) if r.get("status") == "ok"]
        last_step = max((int(k) for k in train.get("checkpoints", {})), default=None)
        for record in records:
            step = record.get("step")
            if step is None:
                match = CHECKPOINT_NAME.fullmatch(Path(record["checkpoint"]).name)
                step = int(match.group(1)) if match else None
            metrics = dict(record["metrics"])
            for extra in scored.get(name, {}).get("centered", {}).get("checkpoints", []):
                if extra.get("status") == "ok" and extra["checkpoint"] == record["checkpoint"]:
                    metrics.update(centered_metrics(extra["metrics"]))
            for extra in split_probe.get(name, {}).get("checkpoints", []):
                if extra.get("status") == "ok" and extra["checkpoint"] == record["checkpoint"]:
                    metrics.update(extra["metrics"])
            layers.update(int(k) for k in record.get("layers", {}))
            rows.append({
                "series": name, "kind": series.get("kind"), "split": series.get("split", "dev"), "recipe": series["recipe"], "step": step,
                "is_last": step == last_step, "valid_loss": valid_loss.get(step, math.nan), "metrics": metrics,
                "checkpoint": record["checkpoint"], "seconds": record.get("seconds", {}).get("wall"),
            })
    return rows, sorted(layers)


class Metric:
    """A label-free selection criterion: ``value(row)``, with ``sign`` +1 when higher is better."""

    def __init__(self, key: str, label: str, value: Callable[[dict], float], sign: int, pooled: bool = True) -> None:
        self.key, self.label, self.value, self.sign, self.pooled = key, label, value, sign, pooled
        self.setting: Optional[dict] = None  # {"centering", "layer_rule"} for the MI candidates

    def score(self, row: dict) -> float:
        value = self.value(row)
        return self.sign * value if finite(value) else math.nan


def metric_value(name: str) -> Callable[[dict], float]:
    return lambda row: row["metrics"].get(name, math.nan)


def mean_of(names: Sequence[str]) -> Callable[[dict], float]:
    def value(row: dict) -> float:
        values = [row["metrics"].get(name, math.nan) for name in names]
        return sum(values) / len(values) if all(finite(v) for v in values) else math.nan
    return value


def best_layer_accuracy(layers: Sequence[int]) -> Callable[[dict], float]:
    def value(row: dict) -> float:
        values = [row["metrics"].get(f"phone_accuracy_l{k}", math.nan) for k in layers]
        values = [v for v in values if finite(v)]
        return max(values) if values else math.nan
    return value


LAYER_RULES = ("last", "layer 1", "mean", "normalised")   # in the order of the tie-break (simpler first)
CENTERING_SUFFIX = {"none": "", "utterance": "_centered"}   # metric-name infix of each ssl-mi score --centering


def candidate_metrics(layers: Sequence[int]) -> List[Metric]:
    """The MI settings the development series choose from: centering (none / utterance) x layer rule
    (last layer, layer 1, mean over the scored layers, MI / H(C) at the last layer), tie-break order."""
    last = layers[-1]
    metrics = []
    for centering, infix in CENTERING_SUFFIX.items():
        prefix = "mi" if centering == "none" else "mi_c"
        tag = "centering none" if centering == "none" else "centering utterance"
        rules = {
            "last": Metric(f"{prefix}_last", f"MI l{last}, {tag}" + (" = product default" if centering == "none" else ""),
                           metric_value(f"mi_bits{infix}_l{last}"), +1),
            "layer 1": Metric(f"{prefix}_l1", f"MI l1, {tag}", metric_value(f"mi_bits{infix}_l1"), +1),
            "mean": Metric(f"{prefix}_mean", f"MI mean over layers, {tag}", mean_of([f"mi_bits{infix}_l{k}" for k in layers]), +1),
            "normalised": Metric(f"{prefix}_normalized_last", f"MI / H(C) l{last}, {tag}", metric_value(f"mi_normalized{infix}_l{last}"), +1),
        }
        for rule in LAYER_RULES:
            if rule == "layer 1" and len(layers) < 2 or rule == "mean" and len(layers) < 2:
                continue
            rules[rule].setting = {"centering": centering, "layer_rule": rule}
            metrics.append(rules[rule])
    return metrics


def baseline_metrics(layers: Sequence[int]) -> List[Metric]:
    last = layers[-1]
    return [
        Metric("rankme_last", f"RankMe l{last} (higher)", metric_value(f"rankme_l{last}"), +1),
        Metric("rankme_t_last", f"RankMe-t l{last} (higher)", metric_value(f"rankme_t_l{last}"), +1),
        Metric("inertia_last", f"k-means inertia l{last} (lower)", metric_value(f"kmeans_inertia_eval_l{last}"), -1),
        Metric("valid_loss", "validation loss (lower)", lambda row: row["valid_loss"], -1),
        Metric("latest", "latest checkpoint", lambda row: float(row["step"]), +1, pooled=False),
    ]


def selection_metrics(layers: Sequence[int]) -> List[Metric]:
    return [*candidate_metrics(layers), *baseline_metrics(layers)]


SPEARMAN_TIE = 0.01  # pre-registered: candidates within this of the best development Spearman are tied


def choose_setting(summary: dict, layers: Sequence[int]) -> dict:
    """The pre-registered rule (results.md notes), on the development series only: highest pooled
    Spearman with the last-layer probe accuracy; within SPEARMAN_TIE of the best -> lower pooled regret,
    then lower worst within-series regret, then the simpler setting (candidate order)."""
    scope = summary["scopes"].get("split:dev")
    if scope is None:
        return {"error": "no development series in this run"}
    table = scope["acc_last"]
    candidates = candidate_metrics(layers)

    def number(value: object, default: float) -> float:
        return value if finite(value) else default

    rows = []
    for order, metric in enumerate(candidates):
        item = table[metric.key]
        rows.append({"key": metric.key, "label": metric.label, **metric.setting, "order": order,
                     "spearman": item["pooled"]["spearman"], "regret": item["pooled"]["regret_points"],
                     "worst_within_regret": item["within_max_regret_points"]})
    best = max(number(r["spearman"], -2.0) for r in rows)
    tied = [r for r in rows if number(r["spearman"], -2.0) >= best - SPEARMAN_TIE]
    chosen = min(tied, key=lambda r: (number(r["regret"], math.inf), number(r["worst_within_regret"], math.inf), r["order"]))
    return {"chosen": chosen["key"], "label": chosen["label"], "centering": chosen["centering"], "layer_rule": chosen["layer_rule"],
            "best_spearman": best, "tied": [r["key"] for r in tied], "candidates": rows}


def layer_metrics(layer: int) -> List[Metric]:
    return [
        Metric(f"mi_l{layer}", f"MI l{layer}", metric_value(f"mi_bits_l{layer}"), +1),
        Metric(f"rankme_l{layer}", f"RankMe l{layer}", metric_value(f"rankme_l{layer}"), +1),
        Metric(f"rankme_t_l{layer}", f"RankMe-t l{layer}", metric_value(f"rankme_t_l{layer}"), +1),
        Metric(f"inertia_l{layer}", f"k-means inertia l{layer} (lower)", metric_value(f"kmeans_inertia_eval_l{layer}"), -1),
    ]


def correlations(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Spearman and Kendall (tau-b) over the pairs where both are finite; NaN when undefined."""
    from scipy.stats import kendalltau, spearmanr

    pairs = [(x, y) for x, y in zip(xs, ys) if finite(x) and finite(y)]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return {"spearman": math.nan, "kendall": math.nan, "n": len(pairs)}
    x, y = zip(*pairs)
    return {"spearman": float(spearmanr(x, y).statistic), "kendall": float(kendalltau(x, y).statistic), "n": len(pairs)}


def pick(rows: Sequence[dict], metric: Metric) -> Optional[dict]:
    """The row the metric selects (best signed value; ties: the later step)."""
    candidates = [row for row in rows if finite(metric.score(row))]
    return max(candidates, key=lambda row: (metric.score(row), row["step"])) if candidates else None


def evaluate_metric(rows: Sequence[dict], metric: Metric, truth: Callable[[dict], float]) -> dict:
    """Correlations (signed so that +1 = the metric ranks like the probe), pick and regret, and
    discordant pairs: pairs whose probe accuracies differ by >= ACCURACY_GAP that the metric orders the
    other way round."""
    scores = [metric.score(row) for row in rows]
    accuracies = [truth(row) for row in rows]
    result: dict = correlations(scores, accuracies)
    oracle = max((row for row in rows if finite(truth(row))), key=truth, default=None)
    chosen = pick(rows, metric) if metric.pooled or len({row["series"] for row in rows}) == 1 else None
    if chosen is not None and oracle is not None:
        result.update(pick_series=chosen["series"], pick_step=chosen["step"], pick_accuracy=truth(chosen),
                      oracle_series=oracle["series"], oracle_step=oracle["step"], oracle_accuracy=truth(oracle),
                      regret_points=100.0 * (truth(oracle) - truth(chosen)))
    else:
        result.update(regret_points=math.nan)
    discordant = total = 0
    for a, b in combinations(range(len(rows)), 2):
        if not (finite(accuracies[a]) and finite(accuracies[b]) and finite(scores[a]) and finite(scores[b])):
            continue
        if abs(accuracies[a] - accuracies[b]) < ACCURACY_GAP:
            continue
        total += 1
        better, worse = (a, b) if accuracies[a] > accuracies[b] else (b, a)
        if scores[worse] >= scores[better]:
            discordant += 1
    result.update(discordant_pairs=discordant, clear_pairs=total)
    return result


def summarise(rows: Sequence[dict], layers: Sequence[int], chance: float = math.nan) -> dict:
    """Every table of results.md as numbers."""
    last = layers[-1]
    truths = {
        "acc_last": (f"phone-probe accuracy at the last layer (l{last})", metric_value(f"phone_accuracy_l{last}")),
        "acc_best_layer": ("phone-probe accuracy at the best scored layer", best_layer_accuracy(layers)),
        "split_last": (f"probe_train -> probe_test probe accuracy at the last layer (l{last})",
                       metric_value(f"split_probe_accuracy_l{last}")),
    }
    if not any(finite(row["metrics"].get(f"split_probe_accuracy_l{last}")) for row in rows):
        del truths["split_last"]
    series_names = list(dict.fromkeys(row["series"] for row in rows))
    splits = list(dict.fromkeys(row["split"] for row in rows))
    summary: dict = {"truths": {key: label for key, (label, _) in truths.items()}, "scopes": {}}
    scopes = {"all": list(rows)}
    if len(splits) > 1:
        scopes.update({f"split:{split}": [row for row in rows if row["split"] == split] for split in splits})
    recipes = list(dict.fromkeys(row.get("recipe") for row in rows if row.get("recipe")))
    if len(recipes) > 1:
        scopes.update({f"recipe:{recipe}": [row for row in rows if row.get("recipe") == recipe] for recipe in recipes})
    for scope, scope_rows in scopes.items():
        scope_series = [name for name in series_names if any(row["series"] == name for row in scope_rows)]
        entry: dict = {}
        for truth_key, (_, truth) in truths.items():
            table = {}
            for metric in selection_metrics(layers):
                pooled = evaluate_metric(scope_rows, metric, truth)
                within = {name: evaluate_metric([r for r in scope_rows if r["series"] == name], metric, truth)
                          for name in scope_series}
                spearmans = [w["spearman"] for w in within.values() if finite(w["spearman"])]
                kendalls = [w["kendall"] for w in within.values() if finite(w["kendall"])]
                regrets = [w["regret_points"] for w in within.values() if finite(w["regret_points"])]
                table[metric.key] = {
                    "label": metric.label, "pooled": pooled, "within": within,
                    "within_mean_spearman": sum(spearmans) / len(spearmans) if spearmans else math.nan,
                    "within_mean_kendall": sum(kendalls) / len(kendalls) if kendalls else math.nan,
                    "within_mean_regret_points": sum(regrets) / len(regrets) if regrets else math.nan,
                    "within_max_regret_points": max(regrets) if regrets else math.nan,
                }
            entry[truth_key] = table
        per_layer = {}
        for layer in layers:
            same_layer = metric_value(f"phone_accuracy_l{layer}")
            per_layer[str(layer)] = {}
            for metric in layer_metrics(layer):
                regrets = [evaluate_metric([r for r in scope_rows if r["series"] == name], metric, truths["acc_last"][1])["regret_points"]
                           for name in scope_series]
                regrets = [r for r in regrets if finite(r)]
                per_layer[str(layer)][metric.key] = {
                    "label": metric.label,
                    "vs_same_layer": evaluate_metric(scope_rows, metric, same_layer),
                    "vs_last_layer": evaluate_metric(scope_rows, metric, truths["acc_last"][1]),
                    "within_mean_regret_vs_last": sum(regrets) / len(regrets) if regrets else math.nan,
                }
        entry["per_layer"] = per_layer
        entry["layer_agreement"] = layer_agreement(scope_rows, layers)
        entry["degraded_vs_learned"] = {metric.key: degraded_vs_learned(scope_rows, metric, truths["acc_last"][1], chance)
                                        for metric in selection_metrics(layers)}
        summary["scopes"][scope] = entry
    summary["chance"] = chance
    summary["decision"] = choose_setting(summary, layers)
    return summary


DEGRADED_MARGIN, LEARNED_MARGIN = 0.02, 0.05  # accuracy above the constant-guess rate: < 2 points = degraded, >= 5 = learned


def degraded_vs_learned(rows: Sequence[dict], metric: Metric, truth: Callable[[dict], float], chance: float) -> dict:
    """Issue target "no degraded checkpoint ever scores above a healthy one": a checkpoint is degraded when
    its probe accuracy is < chance + 2 points (no phone information: destroyed, collapsed, stuck or not
    yet learned), learned when >= chance + 5 points; counts (degraded, learned) pairs with score(degraded)
    >= score(learned)."""
    if not finite(chance):
        return {"violations": None, "pairs": 0, "degraded": 0, "learned": 0}
    degraded = [r for r in rows if finite(truth(r)) and truth(r) < chance + DEGRADED_MARGIN and finite(metric.score(r))]
    learned = [r for r in rows if finite(truth(r)) and truth(r) >= chance + LEARNED_MARGIN and finite(metric.score(r))]
    if not metric.pooled:  # latest checkpoint: only comparable within a series
        pairs = [(d, l) for d in degraded for l in learned if d["series"] == l["series"]]
    else:
        pairs = [(d, l) for d in degraded for l in learned]
    violations = sum(metric.score(d) >= metric.score(l) for d, l in pairs)
    return {"violations": violations, "pairs": len(pairs), "degraded": len(degraded), "learned": len(learned)}


def layer_agreement(rows: Sequence[dict], layers: Sequence[int]) -> dict:
    """How often the layer with the highest MI is the layer with the highest probe accuracy."""
    agree = total = 0
    for row in rows:
        mi = {k: row["metrics"].get(f"mi_bits_l{k}", math.nan) for k in layers}
        acc = {k: row["metrics"].get(f"phone_accuracy_l{k}", math.nan) for k in layers}
        if not all(finite(v) for v in [*mi.values(), *acc.values()]):
            continue
        total += 1
        agree += max(mi, key=mi.get) == max(acc, key=acc.get)
    best_acc_layer = {}
    for row in rows:
        acc = {k: row["metrics"].get(f"phone_accuracy_l{k}", math.nan) for k in layers}
        if all(finite(v) for v in acc.values()):
            best = max(acc, key=acc.get)
            best_acc_layer[best] = best_acc_layer.get(best, 0) + 1
    return {"agree": agree, "checkpoints": total, "best_probe_layer_counts": {str(k): v for k, v in sorted(best_acc_layer.items())}}


def majority_rate(labels_path: Path) -> float:
    """Share of the most frequent phone over all frames of a .phn file (the accuracy of a constant guess)."""
    counts: Dict[str, int] = {}
    for line in labels_path.read_text().splitlines():
        for token in line.split():
            counts[token] = counts.get(token, 0) + 1
    total = sum(counts.values())
    return max(counts.values()) / total if total else math.nan


# ----------------------------------------------------------------------------------- report
def fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def check(ok: Optional[bool]) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def targets(summary: dict) -> List[tuple[str, str, Optional[bool]]]:
    """The issue's targets that this run can check, for the setting chosen on the development series,
    judged on the test series (all series when the run has no split): (target, measured, met?)."""
    rows = []
    names = {"acc_last": "held-out-halves probe", "split_last": "probe_train->probe_test probe"}
    scope_key = "split:test" if "split:test" in summary["scopes"] else "all"
    scope = summary["scopes"][scope_key]
    key = summary.get("decision", {}).get("chosen", "mi_last")
    where = "test series" if scope_key == "split:test" else "all series"
    for truth_key, truth_name in names.items():
        if truth_key not in scope:
            continue
        table = scope[truth_key]
        mi = table[key]
        tag = f"[{truth_name}, {where}, {mi['label']}]"
        s = mi["pooled"]["spearman"]
        rows.append((f"{tag} Spearman(MI, probe accuracy) >= 0.9, pooled", fmt(s), s >= 0.9 if finite(s) else None))
        for other in ("valid_loss", "rankme_last", "rankme_t_last"):
            o = table[other]["pooled"]["spearman"]
            rows.append((f"{tag} MI ahead of {table[other]['label']} on pooled Spearman", f"{fmt(s)} vs {fmt(o)}",
                         (s > o) if finite(s) and finite(o) else (True if finite(s) else None)))
        r = mi["pooled"]["regret_points"]
        rows.append((f"{tag} regret <= 1 accuracy point (pooled pick)", f"{fmt(r, 2)} points", r <= 1.0 if finite(r) else None))
        rw = mi["within_max_regret_points"]
        rows.append((f"{tag} regret <= 1 accuracy point within every series (worst series)", f"{fmt(rw, 2)} points",
                     rw <= 1.0 if finite(rw) else None))
        d, t = mi["pooled"]["discordant_pairs"], mi["pooled"]["clear_pairs"]
        rows.append((f"{tag} no checkpoint scores above one that is >= {ACCURACY_GAP * 100:.0f} points better (pooled pairs)",
                     f"{d} of {t} such pairs inverted", d == 0 if t else None))
        if truth_key == "acc_last":
            dl = scope.get("degraded_vs_learned", {}).get(key, {})
            if dl.get("pairs"):
                rows.append((f"{tag} no degraded checkpoint (acc < chance + {DEGRADED_MARGIN * 100:.0f} points) scores at or above "
                             f"a learned one (acc >= chance + {LEARNED_MARGIN * 100:.0f} points)",
                             f"{dl['violations']} of {dl['pairs']} pairs ({dl['degraded']} degraded, {dl['learned']} learned)",
                             dl["violations"] == 0))
    rows.append(("seed spread of the MI < 5% of its range across checkpoints", "not measured in this run", None))
    return rows


def metric_table(add: Callable[[str], None], table: dict, keys: Sequence[str], degraded: Optional[dict] = None) -> None:
    """One markdown table of label-free metrics (pooled and within-series correlations, picks, regret)."""
    extra_head = " | degraded >= learned pairs" if degraded is not None else ""
    add("| metric | Spearman pooled | Kendall pooled | inverted pairs | pooled pick (acc) | pooled regret | Spearman within series (mean) "
        "| regret within series: mean / worst" + extra_head + " |")
    add("|---|---|---|---|---|---|---|---|" + ("---|" if degraded is not None else ""))
    for key in keys:
        item = table[key]
        pooled = item["pooled"]
        picked = (f"{pooled['pick_series']}@{pooled['pick_step']} ({fmt(pooled['pick_accuracy'])})"
                  if pooled.get("pick_series") else "n/a (per series only)")
        cell = ""
        if degraded is not None:
            dl = degraded.get(key, {})
            cell = f" | {dl.get('violations')}/{dl.get('pairs')}" if dl.get("pairs") else " | -"
        add(f"| {item['label']} | {fmt(pooled['spearman'])} | {fmt(pooled['kendall'])} | "
            f"{pooled['discordant_pairs']}/{pooled['clear_pairs']} | {picked} | {fmt(pooled['regret_points'], 2)} | "
            f"{fmt(item['within_mean_spearman'])} | {fmt(item['within_mean_regret_points'], 2)} / "
            f"{fmt(item['within_max_regret_points'], 2)}{cell} |")


def picks_table(add: Callable[[str], None], table: dict, keys: Sequence[str]) -> None:
    add("| series | oracle step (acc) | " + " | ".join(table[k]["label"] for k in keys) + " |")
    add("|---|---|" + "---|" * len(keys))
    first_key = keys[0]
    for name in table[first_key]["within"]:
        first = table[first_key]["within"][name]
        cells = [f"{table[key]['within'][name].get('pick_step', '-')} / {fmt(table[key]['within'][name]['regret_points'], 1)}"
                 for key in keys]
        add(f"| {name} | {first.get('oracle_step', '-')} ({fmt(first.get('oracle_accuracy'))}) | " + " | ".join(cells) + " |")


def decision_sections(results: dict) -> List[str]:
    """The pre-registered choice on the development series and its report on the test series."""
    summary, layers = results["summary"], results["layers"]
    decision = summary.get("decision") or {}
    lines: List[str] = []
    add = lines.append
    if "chosen" not in decision:
        return lines
    add("## Decision on the development series (pre-registered rule, see the notes)")
    add("")
    add("| candidate | centering | layer rule | dev Spearman pooled | dev pooled regret | dev worst within-series regret | |")
    add("|---|---|---|---|---|---|---|")
    for row in decision["candidates"]:
        mark = "**chosen**" if row["key"] == decision["chosen"] else ("tied" if row["key"] in decision["tied"] else "")
        add(f"| {row['label']} | {row['centering']} | {row['layer_rule']} | {fmt(row['spearman'])} | {fmt(row['regret'], 2)} | "
            f"{fmt(row['worst_within_regret'], 2)} | {mark} |")
    add("")
    add(f"Chosen on the development series: **{decision['label']}** (best development Spearman {fmt(decision['best_spearman'])}; "
        f"tied within {SPEARMAN_TIE}: {', '.join(decision['tied'])}).")
    add("")
    if "split:test" not in summary["scopes"]:
        return lines
    chosen = decision["chosen"]
    other_centering = {k: v for k, v in (("mi_", "mi_c_"), ("mi_c_", "mi_"))}
    twin = next((chosen.replace(a, b, 1) for a, b in other_centering.items() if chosen.startswith(a)), None)
    keys = list(dict.fromkeys([chosen, *([twin] if twin else []), "mi_last", "mi_c_last", "rankme_last", "rankme_t_last",
                               "inertia_last", "valid_loss", "latest"]))
    scope = summary["scopes"]["split:test"]
    for truth_key in ("acc_last", "split_last"):
        if truth_key not in scope:
            continue
        table = [k for k in keys if k in scope[truth_key]]
        add(f"## Test series: the chosen setting vs. the other centering and the baselines -- {summary['truths'][truth_key]}")
        add("")
        metric_table(add, scope[truth_key], table, scope.get("degraded_vs_learned") if truth_key == "acc_last" else None)
        oracle = scope[truth_key][chosen]["pooled"]
        if oracle.get("oracle_series"):
            add("")
            add(f"Oracle (best probe accuracy over the test checkpoints): {oracle['oracle_series']}@{oracle['oracle_step']} "
                f"({fmt(oracle['oracle_accuracy'])}).")
        add("")
        add(f"Picks per test series (pick step / regret in points):")
        add("")
        picks_table(add, scope[truth_key], table)
        add("")
    return lines


def write_report(results: dict, path: Path) -> None:
    plan, summary, layers = results["plan"], results["summary"], results["layers"]
    last = layers[-1]
    quick = plan["name"] == "quick"
    lines: List[str] = []
    add = lines.append
    add(f"# Selection quality: MI vs. a phone probe ({plan['name']} configuration)")
    add("")
    if quick:
        add("> **Quick configuration** (`--quick`): 5 tiny series on a 12-minute generated corpus, 2-layer models. "
            "It shows the pipeline end to end and gives first numbers; it is *not* the issue's full benchmark "
            "(no development/test split of series, one estimator seed, a 1.8-minute held-out set).")
        add("")
    if plan["name"] == "reduced":
        add(f"> **Reduced full configuration** (`configs/reduced.yaml`): {len(plan['series'])} series "
            f"({sum(s.get('split') == 'dev' for s in plan['series'])} development, {sum(s.get('split') == 'test' for s in plan['series'])} test) "
            f"x {plan['training']['max_update'] // plan['training']['save_every']} checkpoints of 2-layer models on a "
            f"{plan['corpus']['minutes']}-minute generated corpus, cut from `configs/full.yaml` (9 x 10) to fit a deadline.")
        add("")
    add(f"- Command: `{results['command']}`")
    add(f"- Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores shared with other jobs "
        f"(1-min load average during the run: min {results['load'].get('min')}, mean {results['load'].get('mean')}, "
        f"max {results['load'].get('max')}); every subprocess with OMP_NUM_THREADS=1; torch {results['machine']['torch']}; "
        f"GPU: {results['machine']['cuda'] or 'none'}")
    add(f"- Date: {results['date']}; wall time {results['wall_seconds'] / 60:.1f} min "
        f"(corpus {results['timings'].get('corpus', 0):.0f} s, HuBERT labels {results['timings'].get('hubert_labels', 0):.0f} s, "
        f"training {results['timings'].get('training', 0):.0f} s, scoring {results['timings'].get('scoring', 0):.0f} s, "
        f"probe_train/probe_test probes {results['timings'].get('split_probe', 0):.0f} s)")
    if results.get("reused"):
        add(f"- Stages reused from an earlier run in the same work directory (their time is not in the wall time): "
            f"{', '.join(results['reused'])}")
    corpus = plan["corpus"]
    add(f"- Corpus: `python -m ssl_mi_callback.corpus --minutes {corpus['minutes']} --seed {corpus['seed']} "
        f"--splits {corpus['splits']}` ({results.get('corpus', {}).get('log_tail', '')})")
    add(f"- Scoring: `ssl-mi score CKPT... --data corpus/heldout.tsv --labels corpus/heldout.phn --layers {plan['score']['layers']}"
        f"{' ' + ' '.join(map(str, plan['score'].get('extra', []))) if plan['score'].get('extra') else ''} --centering none`, "
        f"and again without labels with `--centering utterance` (each utterance's mean feature subtracted from both views "
        f"before k-means and the MI probe) -- every other setting is the estimator's default ({results['score_settings_text']}).")
    add(f"- **Ground truth** (\"phone-probe accuracy\"): the score command's supervised linear probe, fitted on a random half "
        f"of the *held-out* utterances and tested on the other half (estimator seed 0) -- not a probe trained on "
        f"probe_train and tested on probe_test. A constant guess of the most frequent phone (`sil`) scores "
        f"{fmt(results['majority_rate'])} on the held-out frames. Second ground truth, where shown: the same linear probe "
        f"(`benchmarks/selection/probe_split.py`) fitted on the unmasked features of probe_train and tested on probe_test "
        f"({results.get('split_probe_frames', '?')} frames).")
    add(f"- Regret = probe accuracy of the best checkpoint minus that of the picked one, in accuracy points. "
        f"Correlations are signed so that +1 means the metric orders checkpoints like the probe (lower-is-better metrics are negated). "
        f"\"Inverted pairs\": pairs of checkpoints whose probe accuracies differ by >= {ACCURACY_GAP * 100:.0f} points that the metric "
        f"orders the other way round.")
    add("")
    add("## Series")
    add("")
    add("| series | kind | set | recipe + overrides | checkpoints | train s | valid loss first -> last | probe acc l%d first -> best (step) -> last |" % last)
    add("|---|---|---|---|---|---|---|---|")
    for series in plan["series"]:
        name = series["name"]
        train = results["training"].get(name, {})
        rows = sorted([r for r in results["rows"] if r["series"] == name], key=lambda r: r["step"])
        acc = [(r["step"], r["metrics"].get(f"phone_accuracy_l{last}", math.nan)) for r in rows]
        best = max(acc, key=lambda a: a[1] if finite(a[1]) else -1) if acc else None
        vl = [r["valid_loss"] for r in rows]
        overrides = " ".join(f"`{o}`" for o in series.get("overrides", [])) or "(recipe)"
        status = "" if train.get("returncode") == 0 else f" **training exit {train.get('returncode')}**"
        add(f"| {name} | {series.get('kind')} | {series.get('split', 'dev')} | {series['recipe']}: {series.get('description', '')}; {overrides} "
            f"| {len(rows)}{status} | {fmt(train.get('seconds'), 0)} | {fmt(vl[0]) if vl else '-'} -> {fmt(vl[-1]) if vl else '-'} "
            f"| {fmt(acc[0][1]) if acc else '-'} -> {fmt(best[1]) if best else '-'} ({best[0] if best else '-'}) -> {fmt(acc[-1][1]) if acc else '-'} |")
    add("")
    lines.extend(decision_sections(results))
    add("## Targets of issue 8 that this run can check")
    add("")
    add("| target | measured | verdict |")
    add("|---|---|---|")
    for target, measured, ok in targets(summary):
        add(f"| {target} | {measured} | {check(ok)} |")
    add("")
    add("## Details: every metric, every scope")
    add("")
    for scope, entry in summary["scopes"].items():
        scope_title = ("all series" if scope == "all" else scope.replace("split:", "") + " series" if scope.startswith("split:")
                       else f"{scope.replace('recipe:', '')} series only")
        truth_keys = list(summary["truths"]) if scope == "all" else [k for k in summary["truths"] if k != "acc_best_layer"]
        for truth_key in truth_keys:
            truth_label, table = summary["truths"][truth_key], entry[truth_key]
            add(f"## Label-free metrics vs. {truth_label} -- {scope_title}")
            add("")
            add("| metric | Spearman pooled | Kendall pooled | inverted pairs | pooled pick (acc) | pooled regret | Spearman within series (mean) | Kendall within (mean) | regret within series: mean / worst |")
            add("|---|---|---|---|---|---|---|---|---|")
            for key, item in table.items():
                pooled = item["pooled"]
                picked = (f"{pooled['pick_series']}@{pooled['pick_step']} ({fmt(pooled['pick_accuracy'])})"
                          if pooled.get("pick_series") else "n/a (per series only)")
                add(f"| {item['label']} | {fmt(pooled['spearman'])} | {fmt(pooled['kendall'])} | "
                    f"{pooled['discordant_pairs']}/{pooled['clear_pairs']} | {picked} | {fmt(pooled['regret_points'], 2)} | "
                    f"{fmt(item['within_mean_spearman'])} | {fmt(item['within_mean_kendall'])} | "
                    f"{fmt(item['within_mean_regret_points'], 2)} / {fmt(item['within_max_regret_points'], 2)} |")
            oracle = table["mi_last"]["pooled"]
            if oracle.get("oracle_series"):
                add("")
                add(f"Oracle (best probe accuracy over all checkpoints): {oracle['oracle_series']}@{oracle['oracle_step']} "
                    f"({fmt(oracle['oracle_accuracy'])}).")
            add("")
            if truth_key == "acc_best_layer":
                continue
            add(f"### Picks per series ({scope_title}; {truth_label}; pick step / regret in points)")
            add("")
            keys = [k for k in ("mi_last", "mi_l1", "mi_mean", "mi_c_last", "mi_c_l1", "mi_c_mean", "rankme_last", "rankme_t_last",
                                "inertia_last", "valid_loss", "latest") if k in table]
            picks_table(add, table, keys)
            add("")
        if scope != "all":
            continue
        add(f"## Per layer ({scope_title})")
        add("")
        add("| layer | metric | Spearman vs acc same layer | Spearman vs acc l%d | inverted pairs (vs l%d) | pooled regret vs l%d | mean regret within series vs l%d |" % (last, last, last, last))
        add("|---|---|---|---|---|---|---|")
        for layer, metrics in entry["per_layer"].items():
            for key, item in metrics.items():
                same, vs_last = item["vs_same_layer"], item["vs_last_layer"]
                add(f"| {layer} | {item['label']} | {fmt(same['spearman'])} | {fmt(vs_last['spearman'])} | "
                    f"{vs_last['discordant_pairs']}/{vs_last['clear_pairs']} | {fmt(vs_last['regret_points'], 2)} | "
                    f"{fmt(item.get('within_mean_regret_vs_last', math.nan), 2)} |")
        agreement = entry["layer_agreement"]
        add("")
        add(f"Layer choice: the layer with the highest MI is the layer with the highest probe accuracy for "
            f"{agreement['agree']} of {agreement['checkpoints']} checkpoints (layer with the best probe accuracy, "
            f"count of checkpoints: {agreement['best_probe_layer_counts']}).")
        add("")
    add("## Every checkpoint")
    add("")
    head = ["series", "step", "valid loss"] + [f"MI l{k}" for k in layers] + [f"MI centred l{k}" for k in layers] \
        + [f"RankMe l{last}", f"RankMe-t l{last}", f"inertia l{last}"] \
        + [f"probe acc l{k}" for k in layers] + [f"probe_train->test acc l{last}", f"I(Z;Y) l{last}", "score s"]
    add("| " + " | ".join(head) + " |")
    add("|" + "---|" * len(head))
    for row in results["rows"]:
        m = row["metrics"]
        cells = [row["series"], str(row["step"]), fmt(row["valid_loss"])] + [fmt(m.get(f"mi_bits_l{k}"), 4) for k in layers] \
            + [fmt(m.get(f"mi_bits_centered_l{k}"), 4) for k in layers] \
            + [fmt(m.get(f"rankme_l{last}"), 2), fmt(m.get(f"rankme_t_l{last}"), 2), fmt(m.get(f"kmeans_inertia_eval_l{last}"), 3)] \
            + [fmt(m.get(f"phone_accuracy_l{k}")) for k in layers] + [fmt(m.get(f"split_probe_accuracy_l{last}")),
                                                                     fmt(m.get(f"phone_mi_bits_l{last}")), fmt(row.get("seconds"), 1)]
        add("| " + " | ".join(cells) + " |")
    failures = [f"- {name}: training exit {t.get('returncode')}" for name, t in results["training"].items() if t.get("returncode") != 0]
    failures += [f"- {name}: scoring exit {s.get('returncode')}" for name, s in results["scoring"].items() if s.get("returncode") not in (0, None)]
    if failures:
        add("")
        add("## Failures")
        add("")
        lines.extend(failures)
    notes = preserved_notes(path, lines[0])
    if notes:
        lines[2:2] = [notes, ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


NOTES_START, NOTES_END = "<!-- notes: kept when results.md is rewritten for the same configuration -->", "<!-- /notes -->"


def preserved_notes(path: Path, title: str) -> str:
    """The hand-written block between NOTES_START and NOTES_END of an existing report with the same title."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    if not text.startswith(title + "\n") or NOTES_START not in text or NOTES_END not in text:
        return ""
    return text[text.index(NOTES_START): text.index(NOTES_END) + len(NOTES_END)]


def jsonable(value: object) -> object:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def score_settings_text(scored: Dict[str, dict]) -> str:
    for item in scored.values():
        settings = item.get("settings")
        if settings:
            keys = ("clusters", "probe", "mask_prob", "mask_length", "mask_seed", "estimator_seed", "fit_fraction", "bootstrap", "selection")
            return ", ".join(f"{k} {settings.get(k)}" for k in keys)
    return "unknown"


# ----------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="work directory: corpus, runs, scores, a copy of the results")
    parser.add_argument("--quick", action="store_true", help="the quick configuration (configs/quick.yaml, about 16 min on 2 busy cores)")
    parser.add_argument("--config", type=Path, default=None, help="a plan YAML (default configs/full.yaml, or configs/quick.yaml with --quick)")
    parser.add_argument("--results-dir", type=Path, default=HERE, help="where results.md / results.json are written (default: next to this file)")
    parser.add_argument("--fresh", action="store_true", help="redo every stage even when DIR holds its outputs")
    parser.add_argument("--no-split-probe", action="store_true", help="skip the second ground truth (probe fitted on probe_train, tested on probe_test)")
    parser.add_argument("--report-only", action="store_true", help="recompute the tables from the per-checkpoint rows of DIR/results.json and rewrite results.json + results.md (no training or scoring)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
        recipes = {series["name"]: series["recipe"] for series in results["plan"]["series"]}
        for row in results["rows"]:  # results written before rows carried their recipe
            row.setdefault("recipe", recipes.get(row["series"]))
            row["valid_loss"] = math.nan if row.get("valid_loss") is None else row["valid_loss"]
        results["summary"] = jsonable(summarise(results["rows"], results["layers"], results.get("majority_rate") or math.nan))
        (out / "results.json").write_text(json.dumps(jsonable(results), indent=1) + "\n", encoding="utf-8")
        (args.results_dir / "results.json").write_text(json.dumps(jsonable(results), indent=1) + "\n", encoding="utf-8")
        write_report(results, args.results_dir / "results.md")
        write_report(results, out / "results.md")
        print(f"rewrote {args.results_dir / 'results.md'}")
        return
    plan_path = args.config or CONFIGS / ("quick.yaml" if args.quick else "full.yaml")
    plan = load_plan(plan_path)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python -m benchmarks.selection", *(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()
    load = LoadSampler()
    load.sample()
    timings: Dict[str, float] = {}
    log(f"plan {plan_path.name}: {len(plan['series'])} series, work directory {out}")

    stage = time.perf_counter()
    corpus = make_corpus(plan, out, args.fresh)
    timings["corpus"] = time.perf_counter() - stage
    load.sample()
    if any(series["recipe"] == "tiny_hubert" for series in plan["series"]):
        stage = time.perf_counter()
        make_hubert_labels(plan, out, reuse=bool(corpus.get("reused")))
        timings["hubert_labels"] = time.perf_counter() - stage
        load.sample()

    trained: Dict[str, dict] = {}
    stage = time.perf_counter()
    for series in plan["series"]:
        trained[series["name"]] = train_series(plan, series, out, args.fresh)
        load.sample()
    timings["training"] = time.perf_counter() - stage

    scored: Dict[str, dict] = {}
    stage = time.perf_counter()
    for series in plan["series"]:
        scored[series["name"]] = score_series(plan, series, trained[series["name"]], out, args.fresh)
        load.sample()
    timings["scoring"] = time.perf_counter() - stage

    split_probe: Dict[str, dict] = {}
    stage = time.perf_counter()
    if not args.no_split_probe:
        for series in plan["series"]:
            split_probe[series["name"]] = probe_split_series(plan, series, trained[series["name"]], out, args.fresh)
            load.sample()
    timings["split_probe"] = time.perf_counter() - stage

    rows, layers = collect_rows(plan, trained, scored, split_probe)
    if not rows or not layers:
        raise SystemExit("no checkpoint was scored successfully; see the logs under " + str(out / "series"))
    summary = summarise(rows, layers, majority_rate(out / "corpus" / "heldout.phn"))
    load.sample()
    results = {
        "command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
        "load": load.summary(), "plan": plan, "plan_file": str(plan_path.relative_to(ROOT)) if plan_path.is_relative_to(ROOT) else str(plan_path),
        "common_overrides": list(COMMON_OVERRIDES), "corpus": corpus, "layers": layers,
        "majority_rate": majority_rate(out / "corpus" / "heldout.phn"),
        "score_settings_text": score_settings_text(scored),
        "timings": {k: round(v, 1) for k, v in timings.items()}, "wall_seconds": round(time.perf_counter() - started, 1),
        "training": {name: {k: v for k, v in t.items() if k != "checkpoints"} for name, t in trained.items()},
        "scoring": {name: {"command": s.get("command"), "seconds": s.get("seconds"), "returncode": s.get("returncode"),
                           "settings": s.get("settings"),
                           "centered": {k: s.get("centered", {}).get(k) for k in ("command", "seconds", "returncode", "settings")}}
                    for name, s in scored.items()},
        "rows": rows, "summary": summary,
        "reused": sorted({f"{stage}:{name}" for stage, items in (("train", trained), ("score", scored), ("probe_split", split_probe))
                          for name, item in items.items() if item.get("reused")} | ({"corpus"} if corpus.get("reused") else set())),
        "split_probe_frames": next((c.get("frames") for item in split_probe.values() for c in item.get("checkpoints", [])
                                    if c.get("status") == "ok"), None),
        "split_probe": {name: {"command": item.get("command"), "seconds": item.get("seconds"), "returncode": item.get("returncode")}
                        for name, item in split_probe.items()},
    }
    results = jsonable(results)
    for directory in {out, args.results_dir.resolve()}:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        write_report(results, directory / "results.md")
    log(f"done in {results['wall_seconds'] / 60:.1f} min: {args.results_dir / 'results.md'}")
    mi = summary["scopes"]["all"]["acc_last"]["mi_last"]
    log(f"MI (last layer) vs probe accuracy: Spearman pooled {fmt(mi['pooled']['spearman'])}, "
        f"regret pooled {fmt(mi['pooled']['regret_points'], 2)} points, worst within-series regret "
        f"{fmt(mi['within_max_regret_points'], 2)} points")


if __name__ == "__main__":
    main()
