"""Failure isolation in real fairseq training: an evaluation that fails mid-run costs nothing else.

The held-out subset is loaded once at start-up and kept in memory, so a corrupted held-out file
reaches the model only that way: ``benchmarks/reliability/chaos_launcher.py`` replaces the first
held-out utterance by NaN samples, in memory, before the evaluation at one update (and restores it
afterwards). The NaN goes through the real forward pass; the evaluator refuses the non-finite features. The
same run deletes the held-out files from disk after the first evaluation.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require
from fairseq_runs import FAST, RECIPES, ROOT, Run

pytestmark = pytest.mark.slow

CHAOS = ROOT / "benchmarks" / "reliability" / "chaos_launcher.py"


@pytest.fixture(scope="module")
def corpus(speech_corpus):
    require("fairseq")
    return speech_corpus


def _heldout_copy(corpus, folder):
    """A private copy of the held-out manifest and its audio (the run deletes the audio)."""
    root, *rows = (corpus / "heldout.tsv").read_text().splitlines()
    (folder / "wav").mkdir(parents=True)
    entries = []
    for row in rows:
        relative, samples = row.split("\t")
        name = os.path.basename(relative)
        shutil.copy(Path(root) / relative, folder / "wav" / name)
        entries.append(f"wav/{name}\t{samples}")
    manifest = folder / "heldout.tsv"
    manifest.write_text("\n".join([str(folder), *entries]) + "\n")
    return manifest


def _chaos_train(corpus, save_dir, overrides, env):
    command = [
        sys.executable, str(CHAOS), "--config-dir", str(RECIPES), "--config-name", "tiny_wav2vec2",
        f"task.data={corpus}", f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={save_dir / 'hydra'}",
        *FAST, *overrides,
    ]
    completed = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )
    return Run(completed.returncode, completed.stdout, save_dir)


def metric_in_line(line, name):
    """The value of ``| name value`` in a fairseq log line (also -inf / nan)."""
    match = re.search(rf"\| {re.escape(name)} (\S+)", line)
    assert match, f"{name} missing from validation line: {line}"
    return float(match.group(1))


def _load(path):
    import ssl_mi_callback.integrations.fairseq  # noqa: F401
    from ssl_mi_callback.integrations.fairseq.safe_load import load_checkpoint

    return load_checkpoint(path)


def test_failed_evaluation_is_logged_recorded_and_training_goes_on(corpus, tmp_path):
    heldout = _heldout_copy(corpus, tmp_path / "heldout")
    save_dir = tmp_path / "checkpoints"
    run = _chaos_train(corpus, save_dir, ["optimization.max_update=150", f"task.mi_heldout={heldout}"],
                       {"CHAOS_NAN_AT": "100", "CHAOS_DELETE_HELDOUT_AFTER": "50"})
    assert run.returncode == 0, run.output[-4000:]
    assert "@@heldout-deleted 50" in run.output

    # logged with its reason, on one line
    failures = [line for line in run.output.splitlines() if "MI evaluation at step" in line]
    assert len(failures) == 1, failures
    assert re.search(r"MI evaluation at step 100 failed, training continues: \w+Error: .*non-finite features .*wav/utt", failures[0]), failures

    # recorded in the history as failed; the evaluations after it are fine (files gone from disk:
    # the subset is held in memory since start-up, same fingerprint)
    history = run.history()
    assert [(r["step"], r["status"]) for r in history] == [(50, "ok"), (100, "failed"), (150, "ok")]
    assert "non-finite features" in history[1]["error"] and history[1]["metrics"] == {}
    assert len({r["subset"]["fingerprint"] for r in history if r["status"] == "ok"}) == 1
    held_out_files = len((tmp_path / "heldout" / "heldout.tsv").read_text().splitlines()) - 1
    remaining = len(list((tmp_path / "heldout" / "wav").iterdir()))
    assert remaining == held_out_files - history[0]["subset"]["utterances"]  # the scored ones are gone

    # the validation line of update 100 logs -inf; the others log the recorded value
    lines = run.valid_lines()
    assert len(lines) == 3
    assert metric_in_line(lines[1], "mi_bits") == -math.inf
    assert metric_in_line(lines[1], "best_mi_bits") == history[0]["metrics"]["mi_bits"]  # fairseq kept its best
    for index in (0, 2):
        line, record = lines[index], history[index]
        assert math.isclose(metric_in_line(line, "mi_bits"), record["metrics"]["mi_bits"], abs_tol=1e-4)

    # fairseq's checkpoint_best.pt and the export are the best ok evaluation, never update 100
    ok = [(r["metrics"]["mi_bits"], r["step"]) for r in history if r["status"] == "ok"]
    best_score, best_step = max(ok, key=lambda item: (item[0], item[1]))
    best = _load(save_dir / "checkpoint_best.pt")
    assert best["optimizer_history"][-1]["num_updates"] == best_step != 100
    assert best["extra_state"]["best"] == best_score
    assert _load(save_dir / "checkpoint_mi_best.pt")["extra_state"]["ssl_mi"]["update"] == best_step
    # fairseq saw -inf as the score of update 100
    saved_100 = [line for line in run.output.splitlines() if "Saved checkpoint" in line and "@ 100 updates" in line]
    assert saved_100 and "score -inf" in saved_100[0]
    assert "done training" in run.output


def test_strict_stops_the_run_with_the_error_and_a_fresh_run_moves_its_files_aside(corpus, tmp_path):
    save_dir = tmp_path / "checkpoints"
    run = _chaos_train(corpus, save_dir, ["optimization.max_update=150", "task.mi_strict=true"], {"CHAOS_NAN_AT": "100"})
    assert run.returncode != 0
    assert "non-finite features (NaN/inf)" in run.output
    assert [(r["step"], r["status"]) for r in run.history()] == [(50, "ok")]
    assert _load(save_dir / "checkpoint_last.pt")["optimizer_history"][-1]["num_updates"] == 50
    assert "done training" not in run.output

    # A fresh run in the same directory (no checkpoint to resume) keeps the stopped run's history and
    # exported best, moved aside, instead of appending to the one and overwriting the other.
    old_export = (save_dir / "checkpoint_mi_best.pt").read_bytes()
    fresh = _chaos_train(corpus, save_dir, ["optimization.max_update=50", "checkpoint.restore_file=/nonexistent.pt"], {})
    assert fresh.returncode == 0, fresh.output[-4000:]
    moved = {path.name.split(".")[0] + path.suffixes[0]: path for path in save_dir.glob("*.old")}
    assert sorted(moved) == ["checkpoint_mi_best.json", "checkpoint_mi_best.pt", "mi_history.jsonl"], list(save_dir.iterdir())
    assert moved["checkpoint_mi_best.pt"].read_bytes() == old_export
    assert [json.loads(line)["step"] for line in moved["mi_history.jsonl"].read_text().splitlines()] == [50]
    assert [(r["step"], r["status"]) for r in fresh.history()] == [(50, "ok")]
    assert (save_dir / "checkpoint_mi_best.pt").read_bytes() != old_export
    assert sum("MI hook: fresh run; the earlier" in line for line in fresh.output.splitlines()) == 3
