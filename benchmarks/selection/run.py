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
   --centering none --position-control false --json`` per series, and the same without labels with
   ``--centering utterance --position-control true`` (the estimator's defaults otherwise; ``utterance`` + position
   control + last layer is the product default since this benchmark, ``none`` was the default before round 1 and
   the plain bound before round 2); every MI setting comes from the product itself.
4. analysis: for every label-free metric (MI per layer and aggregates, RankMe, RankMe-t, k-means
   inertia, validation loss, the latest checkpoint) its Spearman and Kendall correlation with the
   phone-probe accuracy, pooled over all checkpoints and within each series, the checkpoint it picks
   and its regret (probe accuracy of the best checkpoint minus that of the picked one, in points).
   The MI setting (centering x layer rule) is chosen on the development series only by a pre-registered
   rule (:func:`choose_setting`) and reported on the test series, where the issue's targets are judged.

3b. robustness (``--robustness all``): the label-free score of the series of ``--robustness-splits`` (default
   test) re-run with one estimator setting changed at a time (seeds 1-4, K 25/100/200, MLP probe,
   evaluation mask probability 0.3/0.8; :data:`ROBUSTNESS_VARIANTS`), reported per variant against the
   same ground truth, with the spread over 5 seeds.

Writes ``results.json`` and ``results.md`` into DIR and (unless ``--results-dir`` says otherwise) next to
this file. Stages whose outputs already exist in DIR with the same settings are reused
(``--fresh`` redoes everything); a score is reused only when it was made by the same estimator code
(:func:`estimator_code`, a hash of ``ssl_mi_callback/estimators/*.py`` + ``evaluator.py``), so a change
of the estimator re-scores instead of reusing stale numbers. ``--rescore`` never trains: it reuses the
corpus, labels and checkpoints of DIR and redoes scoring and analysis with the current code:

    .venv/bin/python -m benchmarks.selection --out DIR --config benchmarks/selection/configs/reduced.yaml --rescore --robustness all

Ground truth: the score command's supervised probe (linear, like the MI probe) is fitted on a random
half of the held-out utterances (estimator seed 0) and its frame accuracy measured on the other half;
it is *not* trained on probe_train and tested on probe_test (the corpus has those splits, the score
command does not use them).
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import functools
import hashlib
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
from ssl_mi_callback.evaluator import EvaluationConfig

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
ESTIMATOR_CODE_FILES = ("ssl_mi_callback/estimators/*.py", "ssl_mi_callback/evaluator.py")


@functools.lru_cache(maxsize=1)
def estimator_code() -> str:
    """Version of the estimator the scores come from: the package version + a SHA-256 (16 hex digits) of
    ``ssl_mi_callback/estimators/*.py`` and ``evaluator.py``. Stored in every score stage's marker, so a
    change of the estimator code (committed or not) invalidates the stored scores instead of reusing them."""
    from ssl_mi_callback import __version__

    digest = hashlib.sha256()
    for pattern in ESTIMATOR_CODE_FILES:
        for path in sorted(ROOT.glob(pattern)):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{__version__}+{digest.hexdigest()[:16]}"


def stage_marker(command: Sequence[str]) -> str:
    """What a score stage's ``*_command.txt`` holds: its command line and :func:`estimator_code`."""
    return json.dumps({"command": shlex.join(command), "estimator_code": estimator_code()})


def marker_matches(marker: Path, json_path: Path, command: Sequence[str]) -> bool:
    """A stored score is reused only when its JSON exists and its marker names the same command *and* the
    same estimator code (markers of older runs, a bare command line, never match)."""
    return json_path.is_file() and marker.is_file() and marker.read_text() == stage_marker(command)


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


def train_series(plan: dict, series: dict, out: Path, fresh: bool, no_train: bool = False) -> dict:
    """Train one series (or reuse its checkpoints); ``no_train`` (``--rescore``): reuse or fail, never train."""
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
    if no_train:
        raise SystemExit(f"--rescore: series {series['name']} has no reusable training in {run_dir} (train.json missing, "
                         f"failed or made with another command); run without --rescore to train it")
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
POSITION_CONTROL_ARGS = ["--position-control", "true"]
"""The label-free (centering utterance) runs also estimate I(Za; c | position): one run gives the plain
centred bound (unchanged by the option) and the position-controlled candidates."""
GROUND_TRUTH_ARGS = ["--position-control", "false"]
"""The labelled (centering none) run needs only the plain bounds and the phone probe (round 2 ran it without the
flag, when false was the default: the same numbers)."""


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
    labels = ["--labels", str(out / "corpus" / "heldout.phn"), *GROUND_TRUTH_ARGS] if centering == "none" else POSITION_CONTROL_ARGS
    command = [PYTHON, "-m", "ssl_mi_callback.cli", "score", *paths, "--data", str(out / "corpus" / "heldout.tsv"),
               *labels, "--layers", str(score["layers"]), "--centering", centering,
               "--max-seconds", str(score.get("max_seconds", 300)), *map(str, score.get("extra", [])), "--json", str(json_path)]
    marker = run_dir / f"score{suffix}_command.txt"
    name = f"{series['name']} (centering {centering})"
    if not fresh and marker_matches(marker, json_path, command):
        log(f"score {name}: reusing {json_path}")
        return {"command": shlex.join(command), "seconds": None, "reused": True, **json.loads(json_path.read_text())}
    if not paths:
        return {"command": shlex.join(command), "seconds": 0.0, "checkpoints": [], "returncode": None}
    log(f"score {name}: {len(paths)} checkpoints (estimator {estimator_code()})")
    marker.unlink(missing_ok=True)
    code, seconds = run_logged(command, run_dir / f"score{suffix}.log", timeout=3 * 3600)
    if not json_path.is_file():
        log(f"score {name}: FAILED (exit {code}), no JSON; tail:\n{tail(run_dir / f'score{suffix}.log')}")
        return {"command": shlex.join(command), "seconds": round(seconds, 1), "checkpoints": [], "returncode": code,
                "error_tail": tail(run_dir / f"score{suffix}.log")}
    marker.write_text(stage_marker(command))
    scored = json.loads(json_path.read_text())
    failed = [r for r in scored["checkpoints"] if r.get("status") != "ok"]
    log(f"score {name}: {len(paths) - len(failed)} ok, {len(failed)} failed in {seconds:.0f} s")
    for record in failed:
        log(f"  failed {record['checkpoint']}: {record.get('error')}")
    return {"command": shlex.join(command), "seconds": round(seconds, 1), "returncode": code, "estimator_code": estimator_code(), **scored}


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
    if not fresh and marker_matches(marker, json_path, command):
        log(f"probe_train/probe_test {series['name']}: reusing {json_path}")
        return {"command": shlex.join(command), "seconds": None, "reused": True, **json.loads(json_path.read_text())}
    if not paths:
        return {"command": shlex.join(command), "seconds": 0.0, "checkpoints": []}
    log(f"probe_train/probe_test {series['name']}: {len(paths)} checkpoints (estimator {estimator_code()})")
    marker.unlink(missing_ok=True)
    code, seconds = run_logged(command, run_dir / "probe_split.log", timeout=3 * 3600)
    if not json_path.is_file():
        log(f"probe_split {series['name']}: FAILED (exit {code}); tail:\n{tail(run_dir / 'probe_split.log')}")
        return {"command": shlex.join(command), "seconds": round(seconds, 1), "checkpoints": [], "returncode": code}
    marker.write_text(stage_marker(command))
    return {"command": shlex.join(command), "seconds": round(seconds, 1), "returncode": code, **json.loads(json_path.read_text())}


# ----------------------------------------------------------------------------------- stage 3b: robustness
# Issue 8's robustness questions: the label-free score (centering utterance, the plan's layers) re-run with one
# estimator setting changed at a time from the defaults (K 50, mask_prob 0.5, linear probe, seeds 0). The
# defaults themselves are the main ``--centering utterance`` run (score_utterance.json = seed 0, K 50, ...).
# Order = priority when time is short: seeds, clusters, probe, evaluation mask probability.
ROBUSTNESS_VARIANTS = (
    *((f"seed{s}", "seeds", f"estimator seed {s}, mask seed {s}", ["--estimator-seed", str(s), "--mask-seed", str(s)])
      for s in (1, 2, 3, 4)),
    *((f"k{k}", "clusters", f"K = {k} clusters", ["--clusters", str(k)]) for k in (25, 100, 200)),
    ("mlp", "probe", "MLP probe", ["--probe", "mlp"]),
    *((f"mask{m}", "mask", f"evaluation mask probability {m}", ["--mask-prob", str(m)]) for m in ("0.3", "0.8")),
)
ROBUSTNESS_GROUPS = ("seeds", "clusters", "probe", "mask")
DEFAULT_VARIANT = ("default", "defaults", "defaults (seed 0, K = 50, linear probe, mask probability 0.5) = the main run", [])


def robustness_series(plan: dict, splits: Sequence[str]) -> List[dict]:
    return [series for series in plan["series"] if series.get("split", "dev") in splits]


def score_variant(plan: dict, series: dict, trained: dict, out: Path, fresh: bool, variant: tuple) -> dict:
    """``ssl-mi score`` (label-free, ``--centering utterance``) of a series' checkpoints with one setting changed."""
    name, _, _, args = variant
    run_dir = out / "series" / series["name"] / "robustness"
    run_dir.mkdir(parents=True, exist_ok=True)
    score = plan["score"]
    paths = [trained["checkpoints"][step] for step in sorted(trained["checkpoints"], key=int)]
    json_path = run_dir / f"{name}.json"
    command = [PYTHON, "-m", "ssl_mi_callback.cli", "score", *paths, "--data", str(out / "corpus" / "heldout.tsv"),
               "--layers", str(score["layers"]), "--centering", "utterance", *POSITION_CONTROL_ARGS,
               "--max-seconds", str(score.get("max_seconds", 300)), *map(str, score.get("extra", [])), *args, "--json", str(json_path)]
    marker = run_dir / f"{name}_command.txt"
    label = f"{series['name']} ({name})"
    if not fresh and marker_matches(marker, json_path, command):
        log(f"robustness {label}: reusing {json_path}")
        return {"command": shlex.join(command), "seconds": None, "reused": True, **json.loads(json_path.read_text())}
    log(f"robustness {label}: {len(paths)} checkpoints")
    marker.unlink(missing_ok=True)
    code, seconds = run_logged(command, run_dir / f"{name}.log", timeout=3 * 3600)
    if not json_path.is_file():
        log(f"robustness {label}: FAILED (exit {code}), no JSON; tail:\n{tail(run_dir / f'{name}.log')}")
        return {"command": shlex.join(command), "seconds": round(seconds, 1), "checkpoints": [], "returncode": code}
    marker.write_text(stage_marker(command))
    log(f"robustness {label}: done in {seconds:.0f} s")
    return {"command": shlex.join(command), "seconds": round(seconds, 1), "returncode": code, **json.loads(json_path.read_text())}


def run_robustness(plan: dict, trained: Dict[str, dict], out: Path, fresh: bool, groups: Sequence[str],
                   splits: Sequence[str], load: "LoadSampler") -> dict:
    """Every variant of ``groups`` (in :data:`ROBUSTNESS_VARIANTS` order) for every series of ``splits``;
    returns the per-checkpoint label-free metrics of each variant (for results.json and --report-only)."""
    result: dict = {"groups": list(groups), "splits": list(splits), "variants": {}}
    for variant in ROBUSTNESS_VARIANTS:
        name, group, label, args = variant
        if group not in groups:
            continue
        entry = {"group": group, "label": label, "args": args, "seconds": 0.0, "reused": True, "values": {}, "failed": []}
        for series in robustness_series(plan, splits):
            scored = score_variant(plan, series, trained[series["name"]], out, fresh, variant)
            load.sample()
            entry["seconds"] += scored.get("seconds") or 0.0
            entry["reused"] = entry["reused"] and bool(scored.get("reused"))
            entry["settings"] = scored.get("settings", entry.get("settings"))
            for record in scored.get("checkpoints", []):
                if record.get("status") == "ok":
                    entry["values"][record["checkpoint"]] = centered_metrics(record["metrics"])
                else:
                    entry["failed"].append(record.get("checkpoint"))
            if not scored.get("checkpoints"):
                entry["failed"].append(f"{series['name']}: exit {scored.get('returncode')}")
        entry["seconds"] = round(entry["seconds"], 1)
        result["variants"][name] = entry
    return result


def robustness_metrics(layers: Sequence[int], decision: dict) -> List[Metric]:
    """The centering-utterance candidates the robustness table reports: the chosen layer rule (its centering-
    utterance form when the development rule chose centering none), the product default (last layer) and the plain
    centred bound at the last layer (for comparison)."""
    candidates = {metric.key: metric for metric in candidate_metrics(layers)}
    chosen = decision.get("chosen", "mi_c_last")
    chosen = chosen if chosen.startswith(("mi_c_", "mi_cp_")) else "mi_c_" + chosen[len("mi_"):]
    return [candidates[key] for key in dict.fromkeys([chosen, PRODUCT_DEFAULT_METRIC, "mi_c_last"]) if key in candidates]


def variant_rows(rows: Sequence[dict], values: Optional[dict]) -> List[dict]:
    """The main rows (ground truth, series, step) with the centred label-free metrics of one variant;
    ``values`` None = the defaults (the main rows as they are); checkpoints the variant lacks are dropped."""
    if values is None:
        return list(rows)
    out = []
    for row in rows:
        if row["checkpoint"] in values:
            metrics = {k: v for k, v in row["metrics"].items() if "_centered" not in k}
            metrics.update(values[row["checkpoint"]])
            out.append({**row, "metrics": metrics})
    return out


def summarise_robustness(rows: Sequence[dict], layers: Sequence[int], chance: float, decision: dict, robustness: dict) -> dict:
    """Per variant and metric: pooled Spearman/Kendall with the last-layer probe accuracy, pooled pick and
    regret, worst within-series regret, degraded >= learned pairs; and the spread over the 5 seeds."""
    if not robustness or not robustness.get("variants"):
        return {}
    splits = robustness["splits"]
    scope_rows = [row for row in rows if row["split"] in splits]
    truth = metric_value(f"phone_accuracy_l{layers[-1]}")
    metrics = robustness_metrics(layers, decision)
    variants = {DEFAULT_VARIANT[0]: {"group": DEFAULT_VARIANT[1], "label": DEFAULT_VARIANT[2], "values": None}}
    variants.update(robustness["variants"])
    table = []
    per_variant_rows = {}
    for name, entry in variants.items():
        vrows = variant_rows(scope_rows, entry.get("values"))
        per_variant_rows[name] = vrows
        for metric in metrics:
            pooled = evaluate_metric(vrows, metric, truth)
            series_names = list(dict.fromkeys(r["series"] for r in vrows))
            within = [evaluate_metric([r for r in vrows if r["series"] == s], metric, truth)["regret_points"] for s in series_names]
            within = [w for w in within if finite(w)]
            table.append({"variant": name, "group": entry["group"], "label": entry["label"], "metric": metric.key,
                          "metric_label": metric.label, "checkpoints": len(vrows), "spearman": pooled["spearman"],
                          "kendall": pooled["kendall"], "pick": (f"{pooled['pick_series']}@{pooled['pick_step']}"
                                                                 if pooled.get("pick_series") else None),
                          "pick_accuracy": pooled.get("pick_accuracy"), "regret": pooled["regret_points"],
                          "worst_within_regret": max(within) if within else math.nan,
                          "degraded": degraded_vs_learned(vrows, metric, truth, chance),
                          "seconds": entry.get("seconds"), "failed": entry.get("failed", [])})
    seeds = [DEFAULT_VARIANT[0]] + [f"seed{s}" for s in (1, 2, 3, 4)]
    spread = {}
    if all(name in variants for name in seeds):
        for metric in metrics:
            by_seed = [{r["checkpoint"]: metric.value(r) for r in per_variant_rows[name]} for name in seeds]
            checkpoints = [r["checkpoint"] for r in scope_rows if all(finite(b.get(r["checkpoint"])) for b in by_seed)]
            sds, ranges, means = [], [], []
            for checkpoint in checkpoints:
                values = [b[checkpoint] for b in by_seed]
                mean = sum(values) / len(values)
                means.append(mean)
                sds.append(math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)))
                ranges.append(max(values) - min(values))
            if not checkpoints:
                continue
            span = max(means) - min(means)
            clipped_span = max(max(m, 0.0) for m in means) - max(min(means), 0.0)  # a negative bound = no information
            median = lambda xs: sorted(xs)[len(xs) // 2] if len(xs) % 2 else sum(sorted(xs)[len(xs) // 2 - 1: len(xs) // 2 + 1]) / 2
            worst = max(range(len(checkpoints)), key=lambda i: sds[i])
            row_of = {r["checkpoint"]: r for r in scope_rows}
            healthy = [i for i, c in enumerate(checkpoints)  # not degraded: probe accuracy >= chance + DEGRADED_MARGIN
                       if finite(truth(row_of[c])) and finite(chance) and truth(row_of[c]) >= chance + DEGRADED_MARGIN]
            worst_healthy = max(healthy, key=lambda i: sds[i]) if healthy else None
            worst_row = next(r for r in scope_rows if r["checkpoint"] == checkpoints[worst])
            mean_rows = [{**r, "metrics": {**r["metrics"], "_seed_mean": m}}
                         for r, m in zip([next(r for r in scope_rows if r["checkpoint"] == c) for c in checkpoints], means)]
            mean_metric = Metric(f"{metric.key}_seed_mean", f"{metric.label}, mean of 5 seeds", metric_value("_seed_mean"), +1)
            pooled = evaluate_metric(mean_rows, mean_metric, truth)
            spread[metric.key] = {
                "label": metric.label, "seeds": seeds, "checkpoints": len(checkpoints), "range_of_seed_mean": span,
                "sd_median": median(sds), "sd_max": max(sds), "maxmin_median": median(ranges), "maxmin_max": max(ranges),
                "sd_median_rel": median(sds) / span if span > 0 else math.nan, "sd_max_rel": max(sds) / span if span > 0 else math.nan,
                "maxmin_median_rel": median(ranges) / span if span > 0 else math.nan,
                "maxmin_max_rel": max(ranges) / span if span > 0 else math.nan,
                "sd_max_checkpoint": f"{worst_row['series']}@{worst_row['step']}",
                "range_of_seed_mean_clipped": clipped_span,
                "not_degraded_checkpoints": len(healthy),
                "sd_max_not_degraded": sds[worst_healthy] if healthy else math.nan,
                "sd_max_not_degraded_rel": sds[worst_healthy] / span if healthy and span > 0 else math.nan,
                "sd_max_not_degraded_checkpoint": (f"{row_of[checkpoints[worst_healthy]]['series']}@"
                                                   f"{row_of[checkpoints[worst_healthy]]['step']}" if healthy else None),
                "sd_median_rel_clipped": median(sds) / clipped_span if clipped_span > 0 else math.nan,
                "sd_max_rel_clipped": max(sds) / clipped_span if clipped_span > 0 else math.nan,
                "seed_mean": {"spearman": pooled["spearman"], "kendall": pooled["kendall"], "regret": pooled["regret_points"],
                              "pick": f"{pooled.get('pick_series')}@{pooled.get('pick_step')}",
                              "degraded": degraded_vs_learned(mean_rows, mean_metric, truth, chance)},
            }
    missing = [name for name, group, _, _ in ROBUSTNESS_VARIANTS if name not in variants]
    return {"splits": splits, "truth": f"phone-probe accuracy at the last layer (l{layers[-1]})", "table": table,
            "seed_spread": spread, "not_run": missing}


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
_PRODUCT = EvaluationConfig()  # the product defaults, last layer (centering "none" before round 1, no position control before round 2)
PRODUCT_CENTERING = _PRODUCT.centering
PRODUCT_POSITION_CONTROL = _PRODUCT.position_control
PRODUCT_DEFAULT_METRIC = ("mi_cp_last" if PRODUCT_POSITION_CONTROL else "mi_c_last") if PRODUCT_CENTERING == "utterance" else "mi_last"


def candidate_metrics(layers: Sequence[int]) -> List[Metric]:
    """The MI settings the development series choose from: centering (none / utterance) x layer rule
    (last layer, layer 1, mean over the scored layers, MI / H(C) at the last layer), then centering
    utterance with the position control, I(Za; c | position), x (last layer, layer 1, mean); tie-break order."""
    last = layers[-1]
    metrics = []
    position_rules = {
        "last": Metric("mi_cp_last", f"MI given position l{last}, centering utterance" + (" = product default" if PRODUCT_DEFAULT_METRIC == "mi_cp_last" else ""),
                       metric_value(f"mi_given_position_bits_centered_l{last}"), +1),
        "layer 1": Metric("mi_cp_l1", "MI given position l1, centering utterance", metric_value("mi_given_position_bits_centered_l1"), +1),
        "mean": Metric("mi_cp_mean", "MI given position mean over layers, centering utterance",
                       mean_of([f"mi_given_position_bits_centered_l{k}" for k in layers]), +1),
    }
    for centering, infix in CENTERING_SUFFIX.items():
        prefix = "mi" if centering == "none" else "mi_c"
        tag = "centering none" if centering == "none" else "centering utterance"
        rules = {
            "last": Metric(f"{prefix}_last", f"MI l{last}, {tag}" + (" = product default" if f"{prefix}_last" == PRODUCT_DEFAULT_METRIC else ""),
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
    for rule, metric in position_rules.items():
        if rule != "last" and len(layers) < 2:
            continue
        metric.setting = {"centering": "utterance + position control", "layer_rule": rule}
        metrics.append(metric)
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
    key = summary.get("decision", {}).get("chosen", PRODUCT_DEFAULT_METRIC)  # no dev/test split: the product default
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
    spread = (summary.get("robustness") or {}).get("seed_spread", {}).get(robustness_key(summary))
    if spread:
        rows.append((f"[5 estimator seeds, {where_robust(summary)}, {spread['label']}] seed spread of the MI < 5% of its range "
                     f"across checkpoints (per-checkpoint SD, every checkpoint)",
                     f"SD median {fmt(100 * spread['sd_median_rel'], 1)}%, max {fmt(100 * spread['sd_max_rel'], 1)}% "
                     f"({spread['sd_max_checkpoint']}); max-min median {fmt(100 * spread['maxmin_median_rel'], 1)}%, "
                     f"max {fmt(100 * spread['maxmin_max_rel'], 1)}% of the range {fmt(spread['range_of_seed_mean'], 3)} bits",
                     spread["sd_max_rel"] < 0.05 if finite(spread["sd_max_rel"]) else None))
    else:
        rows.append(("seed spread of the MI < 5% of its range across checkpoints", "not measured in this run", None))
    return rows


def robustness_key(summary: dict) -> Optional[str]:
    table = (summary.get("robustness") or {}).get("table") or []
    return table[0]["metric"] if table else None


def where_robust(summary: dict) -> str:
    splits = (summary.get("robustness") or {}).get("splits") or []
    return " + ".join(f"{s} series" for s in splits)


def robustness_section(results: dict) -> List[str]:
    """The generated robustness section of results.md (one estimator setting varied at a time)."""
    robust = results["summary"].get("robustness") or {}
    lines: List[str] = []
    add = lines.append
    if not robust.get("table"):
        return lines
    groups = (results.get("robustness") or {}).get("groups", [])
    add(f"## Robustness ({where_robust(results['summary'])}): one estimator setting varied at a time")
    add("")
    add(f"Every checkpoint of the {where_robust(results['summary'])} re-scored label-free (`ssl-mi score CKPT... --data corpus/heldout.tsv "
        f"--layers {results['plan']['score']['layers']} --centering utterance` plus the variant's flag), everything else at "
        f"the defaults; ground truth as in the main table ({robust['truth']}, from the main run), degraded / learned as "
        f"in the targets. The `defaults` rows are the main run's `--centering utterance` scores. Produced by "
        f"`--robustness {','.join(groups) or 'none'} --robustness-splits {','.join(robust['splits'])}` "
        f"(see the command above); score s = scoring time of the variant over all its series.")
    add("")
    add("| variant | metric | checkpoints | Spearman pooled | Kendall pooled | pooled pick (acc) | pooled regret | worst within-series regret | degraded >= learned pairs | score s |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for row in robust["table"]:
        d = row["degraded"]
        failed = f" ({len(row['failed'])} failed)" if row.get("failed") else ""
        add(f"| {row['label']} | {row['metric_label']} | {row['checkpoints']}{failed} | {fmt(row['spearman'])} | {fmt(row['kendall'])} | "
            f"{row['pick'] or '-'} ({fmt(row['pick_accuracy'])}) | {fmt(row['regret'], 2)} | {fmt(row['worst_within_regret'], 2)} | "
            f"{d.get('violations')}/{d.get('pairs')} | {fmt(row['seconds'], 0) if row['variant'] != 'default' else '-'} |")
    add("")
    spread = robust.get("seed_spread") or {}
    if spread:
        add("**Spread over 5 estimator seeds** (seed s = `--estimator-seed s --mask-seed s`, s = 0..4; per checkpoint the "
            "sample SD (ddof 1) and max - min of the 5 MI values; relative to the range (max - min) of the seed-mean MI across "
            "the checkpoints; issue target: spread < 5% of the range; last two columns: relative to the range of the seed-mean "
            "MI clipped at 0 bits, so that one hugely negative bound does not widen the range):")
        add("")
        add("| metric | checkpoints | range of seed-mean MI (bits) | SD median / max (bits) | SD median / max (% of range) | "
            "max-min median / max (bits) | max-min median / max (% of range) | largest SD at | seed-mean MI: Spearman / regret / degraded >= learned "
            "| range clipped at 0 (bits) | SD median / max (% of clipped range) | largest SD of a non-degraded checkpoint (% of range, where) |")
        add("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for item in spread.values():
            m = item["seed_mean"]
            add(f"| {item['label']} | {item['checkpoints']} | {fmt(item['range_of_seed_mean'], 3)} | {fmt(item['sd_median'], 4)} / "
                f"{fmt(item['sd_max'], 4)} | {fmt(100 * item['sd_median_rel'], 1)}% / {fmt(100 * item['sd_max_rel'], 1)}% | "
                f"{fmt(item['maxmin_median'], 4)} / {fmt(item['maxmin_max'], 4)} | {fmt(100 * item['maxmin_median_rel'], 1)}% / "
                f"{fmt(100 * item['maxmin_max_rel'], 1)}% | {item['sd_max_checkpoint']} | {fmt(m['spearman'])} / {fmt(m['regret'], 2)} / "
                f"{m['degraded'].get('violations')}/{m['degraded'].get('pairs')} | {fmt(item.get('range_of_seed_mean_clipped'), 3)} | "
                f"{fmt(100 * item.get('sd_median_rel_clipped', math.nan), 1)}% / {fmt(100 * item.get('sd_max_rel_clipped', math.nan), 1)}% | "
                f"{fmt(item.get('sd_max_not_degraded', math.nan), 4)} bits = {fmt(100 * item.get('sd_max_not_degraded_rel', math.nan), 1)}% "
                f"({item.get('sd_max_not_degraded_checkpoint')}, {item.get('not_degraded_checkpoints')} non-degraded checkpoints) |")
        add("")
    if robust.get("not_run"):
        add(f"Not run (no stored scores for these variants): {', '.join(robust['not_run'])}.")
        add("")
    return lines


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
    other_centering = {k: v for k, v in (("mi_cp_", "mi_c_"), ("mi_c_", "mi_"), ("mi_", "mi_c_"))}  # longest prefix first
    twin = next((chosen.replace(a, b, 1) for a, b in other_centering.items() if chosen.startswith(a)), None)
    keys = list(dict.fromkeys([chosen, *([twin] if twin else []), "mi_last", "mi_c_last", "mi_cp_last", "rankme_last", "rankme_t_last",
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
        f"and again without labels with `--centering utterance --position-control true` (each utterance's mean feature subtracted "
        f"from both views before k-means and the MI probe, and I(Za; c | position) estimated besides the plain bound; both the "
        f"product defaults since this benchmark) -- every other setting is the estimator's "
        f"default ({results['score_settings_text']}); estimator code {results.get('estimator_code', 'not recorded')} "
        f"(package version + hash of ssl_mi_callback/estimators/*.py and evaluator.py, stored with every score).")
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
    lines.extend(robustness_section(results))
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
            keys = [k for k in ("mi_last", "mi_l1", "mi_mean", "mi_c_last", "mi_c_l1", "mi_c_mean", "mi_cp_last", "mi_cp_l1", "mi_cp_mean",
                                "rankme_last", "rankme_t_last",
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
        + [f"MI centred given position l{k}" for k in layers] \
        + [f"RankMe l{last}", f"RankMe-t l{last}", f"inertia l{last}"] \
        + [f"probe acc l{k}" for k in layers] + [f"probe_train->test acc l{last}", f"I(Z;Y) l{last}", "score s"]
    add("| " + " | ".join(head) + " |")
    add("|" + "---|" * len(head))
    for row in results["rows"]:
        m = row["metrics"]
        cells = [row["series"], str(row["step"]), fmt(row["valid_loss"])] + [fmt(m.get(f"mi_bits_l{k}"), 4) for k in layers] \
            + [fmt(m.get(f"mi_bits_centered_l{k}"), 4) for k in layers] \
            + [fmt(m.get(f"mi_given_position_bits_centered_l{k}"), 4) for k in layers] \
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
    parser.add_argument("--rescore", action="store_true", help="never train: reuse the corpus, HuBERT labels and checkpoints of DIR "
                        "(error if a series has none) and redo every score stage whose stored result is not from the "
                        "current estimator code (estimator_code(): a hash of ssl_mi_callback/estimators/*.py + evaluator.py)")
    parser.add_argument("--robustness", default="none", help="robustness variants to score (label-free, centering utterance), "
                        f"comma-separated groups of {','.join(ROBUSTNESS_GROUPS)}, 'all' or 'none' (default none)")
    parser.add_argument("--robustness-splits", default="test", help="series splits the robustness variants are scored on (default test)")
    parser.add_argument("--series", default=None, help="comma-separated series names or fnmatch patterns (e.g. 't2_*'): run only "
                        "these and report on them alone; to run parts in parallel, then a run without it reuses their outputs")
    parser.add_argument("--report-only", action="store_true", help="recompute the tables from the per-checkpoint rows of DIR/results.json and rewrite results.json + results.md (no training or scoring)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    groups = list(ROBUSTNESS_GROUPS) if args.robustness == "all" else [g for g in args.robustness.split(",") if g and g != "none"]
    unknown = [g for g in groups if g not in ROBUSTNESS_GROUPS]
    if unknown:
        parser.error(f"--robustness: unknown group(s) {unknown}; use {','.join(ROBUSTNESS_GROUPS)}, all or none")
    robustness_splits = [s for s in args.robustness_splits.split(",") if s]
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
        recipes = {series["name"]: series["recipe"] for series in results["plan"]["series"]}
        for row in results["rows"]:  # results written before rows carried their recipe
            row.setdefault("recipe", recipes.get(row["series"]))
            row["valid_loss"] = math.nan if row.get("valid_loss") is None else row["valid_loss"]
        summary = summarise(results["rows"], results["layers"], results.get("majority_rate") or math.nan)
        summary["robustness"] = summarise_robustness(results["rows"], results["layers"], results.get("majority_rate") or math.nan,
                                                     summary["decision"], results.get("robustness") or {})
        results["summary"] = jsonable(summary)
        (out / "results.json").write_text(json.dumps(jsonable(results), indent=1) + "\n", encoding="utf-8")
        (args.results_dir / "results.json").write_text(json.dumps(jsonable(results), indent=1) + "\n", encoding="utf-8")
        write_report(results, args.results_dir / "results.md")
        write_report(results, out / "results.md")
        print(f"rewrote {args.results_dir / 'results.md'}")
        return
    plan_path = args.config or CONFIGS / ("quick.yaml" if args.quick else "full.yaml")
    plan = load_plan(plan_path)
    if args.series:
        patterns = [p for p in args.series.split(",") if p]
        plan["series"] = [s for s in plan["series"] if any(fnmatch.fnmatchcase(s["name"], p) for p in patterns)]
        if not plan["series"]:
            parser.error(f"--series {args.series}: no series of {plan_path.name} matches")
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
    log(f"estimator code {estimator_code()}" + (" (--rescore: no training)" if args.rescore else ""))
    for series in plan["series"]:
        trained[series["name"]] = train_series(plan, series, out, args.fresh and not args.rescore, no_train=args.rescore)
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

    stage = time.perf_counter()
    robustness = run_robustness(plan, trained, out, args.fresh, groups, robustness_splits, load) if groups else {}
    timings["robustness"] = time.perf_counter() - stage

    rows, layers = collect_rows(plan, trained, scored, split_probe)
    if not rows or not layers:
        raise SystemExit("no checkpoint was scored successfully; see the logs under " + str(out / "series"))
    summary = summarise(rows, layers, majority_rate(out / "corpus" / "heldout.phn"))
    summary["robustness"] = summarise_robustness(rows, layers, majority_rate(out / "corpus" / "heldout.phn"),
                                                 summary["decision"], robustness)
    load.sample()
    results = {
        "command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
        "load": load.summary(), "plan": plan, "plan_file": str(plan_path.relative_to(ROOT)) if plan_path.is_relative_to(ROOT) else str(plan_path),
        "common_overrides": list(COMMON_OVERRIDES), "corpus": corpus, "layers": layers, "estimator_code": estimator_code(),
        "robustness": robustness,
        "majority_rate": majority_rate(out / "corpus" / "heldout.phn"),
        "score_settings_text": score_settings_text(scored),
        "timings": {k: round(v, 1) for k, v in timings.items()}, "wall_seconds": round(time.perf_counter() - started, 1),
        "training": {name: {k: v for k, v in t.items() if k != "checkpoints"} for name, t in trained.items()},
        "scoring": {name: {"command": s.get("command"), "seconds": s.get("seconds"), "returncode": s.get("returncode"),
                           "settings": s.get("settings"),
                           "centered": {k: s.get("centered", {}).get(k) for k in ("command", "seconds", "returncode", "settings")}}
                    for name, s in scored.items()},
        "rows": rows, "summary": summary,
        "reused": sorted({f"{stage}:{name}" for stage, items in (("train", trained), ("score", scored), ("probe_split", split_probe),
                                                                 ("robustness", (robustness or {}).get("variants", {})))
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
    mi = summary["scopes"]["all"]["acc_last"][PRODUCT_DEFAULT_METRIC]
    log(f"MI (product default: last layer, centering {PRODUCT_CENTERING}, position control {PRODUCT_POSITION_CONTROL}) vs probe accuracy: Spearman pooled {fmt(mi['pooled']['spearman'])}, "
        f"regret pooled {fmt(mi['pooled']['regret_points'], 2)} points, worst within-series regret "
        f"{fmt(mi['within_max_regret_points'], 2)} points")


if __name__ == "__main__":
    main()
