"""Misconfiguration stops ssl-mi-fairseq-hydra-train before training, with one line naming the key."""
from __future__ import annotations

import pytest

from conftest import require
from fairseq_runs import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(speech_corpus):
    require("fairseq")
    return speech_corpus


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["checkpoint.best_checkpoint_metric=mi_bit"], "did you mean mi_bits?"),
        (["checkpoint.maximize_best_checkpoint_metric=false"], "maximize_best_checkpoint_metric"),
        (["task.mi_heldout=no_such_split"], "task.mi_heldout=no_such_split"),
        (["dataset.validate_interval_updates=30"], "not a multiple of checkpoint.save_interval_updates"),
        (["task.mi_layers=last"], "task.mi_layers=last"),
        (["task.mi_layers=-9"], "layer -9 does not exist"),
        (["checkpoint.no_save=true"], "checkpoint.no_save=true: checkpoint_best.pt would never follow the MI"),
        (["dataset.disable_validation=true"], "dataset.disable_validation=true: MI is computed at validation"),
    ],
    ids=["metric-typo", "minimize", "missing-heldout", "intervals", "layers-syntax", "layer-range", "no-save",
         "no-validation"],
)
def test_misconfiguration_fails_early_with_one_line(corpus, tmp_path, overrides, expected):
    run = train("tiny_wav2vec2", corpus, tmp_path / "checkpoints", ["optimization.max_update=100", *overrides])
    assert run.returncode != 0
    errors = [line for line in run.output.splitlines() if line.startswith("ssl-mi-fairseq-hydra-train: error:")]
    assert len(errors) >= 1, run.output[-3000:]
    assert expected in errors[0]
    assert "num_updates" not in run.output  # no training step ran


def test_empty_heldout_subset_fails_early(corpus, tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text(f"{corpus}\n")
    run = train("tiny_wav2vec2", corpus, tmp_path / "checkpoints", [f"task.mi_heldout={empty}"])
    assert run.returncode != 0
    assert any(line.startswith("ssl-mi-fairseq-hydra-train: error:") and "held-out" in line
               for line in run.output.splitlines()), run.output[-3000:]


def test_too_small_heldout_subset_fails_early(corpus, tmp_path):
    lines = (corpus / "heldout.tsv").read_text().splitlines()
    small = tmp_path / "small.tsv"
    small.write_text("\n".join(lines[:4]) + "\n")  # root + 3 utterances
    run = train("tiny_wav2vec2", corpus, tmp_path / "checkpoints", [f"task.mi_heldout={small}"])
    assert run.returncode != 0
    errors = [line for line in run.output.splitlines() if line.startswith("ssl-mi-fairseq-hydra-train: error:")]
    assert errors and "too small for the estimate" in errors[0], run.output[-3000:]
