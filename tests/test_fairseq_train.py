"""End to end: real fairseq pretraining (tiny models, CPU) on generated speech with the MI flag on."""
from __future__ import annotations

import json
import math
import os
import re
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


def _validations(run) -> dict[int, str]:
    """Validation log line by update (fairseq prints ``num_updates`` in each)."""
    return {int(metric_in_line(line, "num_updates")): line for line in run.valid_lines()}


# The recipe's own length (300 updates, validation + save every 50): the infoNCE loss falls to the end
# while the MI of the last layer peaks mid-run (update 200 when written: 0.75 bits, 0.68 at 300), so
# checkpoint_best by MI is neither the lowest-loss checkpoint nor the last one (which fairseq rotates).
W2V_UPDATES = 300
W2V_STEPS = list(range(50, W2V_UPDATES + 1, 50))


@pytest.fixture(scope="module")
def wav2vec2_run(corpus, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("w2v") / "checkpoints"
    tensorboard = save_dir.parent / "tensorboard"
    run = train("tiny_wav2vec2", corpus, save_dir,
                [f"optimization.max_update={W2V_UPDATES}", f"common.tensorboard_logdir={tensorboard}"])
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
    assert len(lines) == len(W2V_STEPS), "\n".join(lines)
    history = wav2vec2_run.history()
    for line, record in zip(lines, history):
        assert math.isclose(metric_in_line(line, "mi_bits"), record["metrics"]["mi_bits"], abs_tol=1e-4)
        for name in ("h_c_bits_l2", "ce_bits_l2", "mi_ci95_low_l2", "mi_ci95_high_l2", "rankme_l2"):
            metric_in_line(line, name)


def test_history_is_complete(wav2vec2_run):
    history = wav2vec2_run.history()
    assert [r["step"] for r in history] == W2V_STEPS
    for record in history:
        assert record["status"] == "ok"
        assert math.isfinite(record["metrics"]["mi_bits"])
        assert record["settings"]["clusters"] == 16 and record["settings"]["layers"] == [-1]
        assert record["subset"]["utterances"] > 2 and record["subset"]["fingerprint"]
        low, high = record["layers"]["2"]["ci95_bits"]
        assert low <= record["metrics"]["mi_bits"] <= high


def test_checkpoint_best_follows_mi_not_loss(wav2vec2_run):
    history = wav2vec2_run.history()
    validations = _validations(wav2vec2_run)
    assert sorted(validations) == [r["step"] for r in history]
    losses = {step: metric_in_line(line, "loss") for step, line in validations.items()}
    best_score, best_step = _best_step(history)
    lowest_loss_step = min(losses, key=lambda step: (losses[step], -step))
    assert lowest_loss_step != best_step, (
        f"the test needs a run where the validation loss and the MI disagree, to show that checkpoint_best "
        f"follows the MI; here both are best at update {best_step} (loss by update {losses}, MI by update "
        f"{ {r['step']: r['metrics']['mi_bits'] for r in history} }): change the run (updates, lr, layer) until they disagree"
    )
    state = _load(wav2vec2_run.save_dir / "checkpoint_best.pt")
    assert state["optimizer_history"][-1]["num_updates"] == best_step, "checkpoint_best.pt is not the MI-best update"
    assert math.isclose(state["extra_state"]["best"], best_score, abs_tol=1e-9)
    assert math.isclose(state["extra_state"]["val_loss"], best_score, abs_tol=1e-9)  # fairseq's "val_loss" is our MI
    # fairseq's best-so-far of the MI is in every validation line; at the end it is the history's maximum
    assert math.isclose(metric_in_line(validations[max(validations)], "best_mi_bits"), best_score, abs_tol=1e-4)


def test_export_loads_and_matches_the_best_update(wav2vec2_run):
    from fairseq import checkpoint_utils

    from ssl_mi_callback.selection import read_sidecar

    history = wav2vec2_run.history()
    best_score, best_step = _best_step(history)
    best_record = next(r for r in history if r["step"] == best_step)
    save_dir = wav2vec2_run.save_dir
    export = save_dir / "checkpoint_mi_best.pt"
    sidecar = read_sidecar(export, verify=True)
    assert sidecar["update"] == best_step and sidecar["metric"] == "mi_bits"
    assert sidecar["epoch"] == best_record["epoch"] and sidecar["score"] == best_score
    assert sidecar["layers"] == best_record["settings"]["layers"] == [-1]
    assert sidecar["selection"] == best_record["settings"]["selection"] == "last"
    assert sidecar["settings"] == best_record["settings"] and sidecar["subset"] == best_record["subset"]
    assert sidecar["source"]
    source = save_dir / f"checkpoint_{best_record['epoch']}_{best_step}.pt"
    assert sidecar["fairseq_checkpoint"] == str(source)
    exported = _load(export)
    written_by_export = ("file", "bytes", "sha256", "written_at")
    assert exported["extra_state"]["ssl_mi"] == {k: v for k, v in sidecar.items() if k not in written_by_export}
    assert exported["cfg"]["task"]["_name"] == "audio_pretraining"
    fairseq_best = _load(save_dir / "checkpoint_best.pt")
    for name, tensor in fairseq_best["model"].items():
        assert torch.equal(tensor, exported["model"][name]), name
    # slim: weights, cfg and task state; no optimizer state, no data iterator (checkpoint_best.pt has both)
    assert "last_optimizer_state" in fairseq_best and "last_optimizer_state" not in exported
    assert "train_iterator" in fairseq_best["extra_state"] and "train_iterator" not in exported["extra_state"]
    assert export.stat().st_size < 0.5 * (save_dir / "checkpoint_best.pt").stat().st_size
    # fairseq's rotation (keep_interval_updates: 1) deleted its checkpoint of the best update; the export stays
    last_step, last_epoch = history[-1]["step"], history[-1]["epoch"]
    assert best_step != last_step, f"the rotation check needs a run whose MI peaks before its last update ({last_step})"
    assert f"Saved checkpoint {source} " in wav2vec2_run.output, f"fairseq never saved {source.name}"
    assert not source.exists(), f"{source.name} should have been rotated away (keep_interval_updates: 1)"
    interval_checkpoints = [path.name for path in save_dir.iterdir() if re.fullmatch(r"checkpoint_\d+_\d+\.pt", path.name)]
    assert interval_checkpoints == [f"checkpoint_{last_epoch}_{last_step}.pt"]
    last = _load(save_dir / "checkpoint_last.pt")
    assert any(not torch.equal(tensor, exported["model"][name]) for name, tensor in last["model"].items())
    # loads with stock fairseq, no plugin needed, and holds the best update's weights
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(export)])
    assert type(task).__name__ == "AudioPretrainingTask"
    for name, tensor in models[0].state_dict().items():
        assert torch.equal(tensor, fairseq_best["model"][name]), name


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
    assert best["step"] == max(by_step, key=lambda step: (by_step[step], step)) and last["step"] == W2V_UPDATES
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
