"""End to end: real fairseq pretraining (tiny models, CPU) on generated speech with the MI flag on."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import require
from fairseq_runs import metric_in_line, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(speech_corpus):
    require("fairseq")
    return speech_corpus


def _load(path):
    import ssl_mi_callback.integrations.fairseq  # noqa: F401  (compat + allowlist)
    from ssl_mi_callback.integrations.fairseq.safe_load import load_checkpoint

    return load_checkpoint(path)


def _best_step(history):
    """The step fairseq's checkpoint_best.pt must hold: max MI, ties to the newer evaluation."""
    best = None
    for record in history:
        score = record["metrics"].get("mi_bits") if record["status"] == "ok" else None
        if score is not None and (best is None or score >= best[0]):
            best = (score, record["step"])
    return best


@pytest.fixture(scope="module")
def wav2vec2_run(corpus, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("w2v") / "checkpoints"
    tensorboard = save_dir.parent / "tensorboard"
    run = train("tiny_wav2vec2", corpus, save_dir, ["optimization.max_update=150", f"common.tensorboard_logdir={tensorboard}"])
    assert run.returncode == 0, run.output[-4000:]
    return run


def test_mi_reaches_tensorboard(wav2vec2_run):
    events = list((wav2vec2_run.save_dir.parent / "tensorboard" / "valid").glob("events.out.tfevents.*"))
    assert events, "fairseq wrote no TensorBoard events for the valid subset"
    content = b"".join(path.read_bytes() for path in events)
    for tag in (b"mi_bits", b"h_c_bits_l2", b"mi_ci95_low_l2", b"rankme_l2"):
        assert tag in content, tag


def test_mi_is_in_every_validation_line(wav2vec2_run):
    lines = wav2vec2_run.valid_lines()
    assert len(lines) == 3, "\n".join(lines)
    history = wav2vec2_run.history()
    for line, record in zip(lines, history):
        assert math.isclose(metric_in_line(line, "mi_bits"), record["metrics"]["mi_bits"], abs_tol=1e-4)
        for name in ("h_c_bits_l2", "ce_bits_l2", "mi_ci95_low_l2", "mi_ci95_high_l2", "rankme_l2"):
            metric_in_line(line, name)


def test_history_is_complete(wav2vec2_run):
    history = wav2vec2_run.history()
    assert [r["step"] for r in history] == [50, 100, 150]
    for record in history:
        assert record["status"] == "ok"
        assert math.isfinite(record["metrics"]["mi_bits"])
        assert record["settings"]["clusters"] == 16 and record["settings"]["layers"] == [-1]
        assert record["subset"]["utterances"] > 2 and record["subset"]["fingerprint"]
        low, high = record["layers"]["2"]["ci95_bits"]
        assert low <= record["metrics"]["mi_bits"] <= high


def test_checkpoint_best_follows_mi_not_loss(wav2vec2_run):
    history = wav2vec2_run.history()
    best_score, best_step = _best_step(history)
    state = _load(wav2vec2_run.save_dir / "checkpoint_best.pt")
    assert state["optimizer_history"][-1]["num_updates"] == best_step
    assert math.isclose(state["extra_state"]["best"], best_score, abs_tol=1e-9)
    # fairseq's own best is the MI maximum, not the lowest validation loss
    assert state["extra_state"]["best"] == max(r["metrics"]["mi_bits"] for r in history)


def test_export_loads_and_matches_the_best_update(wav2vec2_run):
    from fairseq import checkpoint_utils

    from ssl_mi_callback.selection import read_sidecar

    history = wav2vec2_run.history()
    _, best_step = _best_step(history)
    export = wav2vec2_run.save_dir / "checkpoint_mi_best.pt"
    sidecar = read_sidecar(export, verify=True)
    assert sidecar["update"] == best_step and sidecar["metric"] == "mi_bits"
    exported = _load(export)
    fairseq_best = _load(wav2vec2_run.save_dir / "checkpoint_best.pt")
    assert exported["cfg"]["task"]["_name"] == "audio_pretraining"
    for name, tensor in fairseq_best["model"].items():
        assert torch.equal(tensor, exported["model"][name]), name
    # loads with stock fairseq, no plugin needed
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(export)])
    assert type(task).__name__ == "AudioPretrainingTask"


def test_resume_continues_history_and_best(corpus, tmp_path):
    save_dir = tmp_path / "checkpoints"
    first = train("tiny_wav2vec2", corpus, save_dir, ["optimization.max_update=100"])
    assert first.returncode == 0, first.output[-4000:]
    first_history = first.history()
    assert [r["step"] for r in first_history] == [50, 100]
    second = train("tiny_wav2vec2", corpus, save_dir, ["optimization.max_update=150"])
    assert second.returncode == 0, second.output[-4000:]
    history = second.history()
    assert [r["step"] for r in history] == [50, 100, 150]
    assert history[:2] == first_history
    assert "resumed from" in second.output
    best_score, best_step = _best_step(history)
    state = _load(save_dir / "checkpoint_best.pt")
    assert state["optimizer_history"][-1]["num_updates"] == best_step
    assert state["task_state"]["ssl_mi"]["selector"]["best"]["step"] == best_step


def test_hubert_selects_and_exports_by_mi(corpus, tmp_path):
    import subprocess
    import sys

    from fairseq_runs import ROOT

    labels = tmp_path / "labels"
    subprocess.run(
        [sys.executable, str(ROOT / "recipes/fairseq/prepare_hubert_labels.py"), str(corpus), "--out", str(labels),
         "--splits", "train", "valid", "--k", "20"],
        check=True, stdout=subprocess.DEVNULL,
    )
    save_dir = tmp_path / "checkpoints"
    run = train("tiny_hubert", corpus, save_dir, ["optimization.max_update=100", f"task.label_dir={labels}"])
    assert run.returncode == 0, run.output[-4000:]
    lines, history = run.valid_lines(), run.history()
    assert [r["step"] for r in history] == [50, 100] and len(lines) == 2
    for line, record in zip(lines, history):
        assert record["status"] == "ok"
        assert math.isclose(metric_in_line(line, "mi_bits"), record["metrics"]["mi_bits"], abs_tol=1e-4)
    best_score, best_step = _best_step(history)
    assert _load(save_dir / "checkpoint_best.pt")["optimizer_history"][-1]["num_updates"] == best_step
    exported = _load(save_dir / "checkpoint_mi_best.pt")
    assert exported["cfg"]["task"]["_name"] == "hubert_pretraining"
    assert exported["extra_state"]["ssl_mi"]["update"] == best_step
    assert "dictionaries" in exported["task_state"]  # HuBERT's label dictionary travels with the weights


def test_score_command_reproduces_the_hook_and_adds_the_phone_probe(wav2vec2_run, corpus, tmp_path):
    """`ssl-mi score` on the run's checkpoints, with the run's settings, gives the values the hook logged
    at those updates; labels add I(Z;Y) and phone accuracy per layer; a broken file is a failed row."""
    history = wav2vec2_run.history()
    by_step = {r["step"]: r["metrics"]["mi_bits"] for r in history}
    broken = tmp_path / "broken.pt"
    broken.write_text("not a checkpoint")
    checkpoints = [wav2vec2_run.save_dir / "checkpoint_mi_best.pt", wav2vec2_run.save_dir / "checkpoint_last.pt", broken]
    out = tmp_path / "scores.json"
    command = [sys.executable, "-m", "ssl_mi_callback.cli", "score", *map(str, checkpoints),
               "--data", str(corpus / "heldout.tsv"), "--labels", str(corpus / "heldout.phn"), "--max-seconds", "60",
               "--settings-from", str(wav2vec2_run.save_dir / "mi_history.jsonl"), "--layers", "1,2", "--json", str(out)]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr[-3000:]  # one checkpoint failed, the others are scored
    scores = json.loads(out.read_text())
    best, last, failed = scores["checkpoints"]
    assert failed["status"] == "failed" and failed["error"] and failed["checkpoint"] == str(broken)
    assert best["step"] == max(by_step, key=lambda step: (by_step[step], step)) and last["step"] == 150
    for record in (best, last):
        assert record["status"] == "ok" and record["settings"]["clusters"] == 16
        assert math.isclose(record["metrics"]["mi_bits"], by_step[record["step"]], abs_tol=1e-4)
        for layer in ("1", "2"):
            supervised = record["supervised"]["layers"][layer]
            assert 0.0 < supervised["accuracy"] <= 1.0 and supervised["n_classes"] <= 40
            assert record["metrics"][f"phone_accuracy_l{layer}"] == round(supervised["accuracy"], 4)
        assert record["supervised"]["skipped"] == {"no_labels": 0, "frame_mismatch": 0}
    assert scores["ranking"][0] == max((best, last), key=lambda r: (r["metrics"]["mi_bits"], r["step"]))["checkpoint"]
    assert "rank  checkpoint" in done.stdout and "phone acc" in done.stdout and "failed: " in done.stdout
    assert "MI hook inactive" not in done.stderr  # loading MI-task checkpoints to score them is expected
