"""The fairseq plugin as users meet it, without training: the ``common.user_dir`` printed by
``ssl-mi fairseq-user-dir`` registers both MI tasks through fairseq's own loader, and the base-size
LibriSpeech recipes compose into fairseq configs that pass our start-up validation and set up."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require
from fairseq_runs import ROOT, run_child

# The run settings of tasks._RUN_SETTINGS; the evaluation settings are mi_ + every EvaluationConfig field.
RUN_SETTINGS = {"mi_heldout", "mi_max_seconds", "mi_max_utterance_seconds", "mi_select_checkpoint", "mi_history",
                "mi_export", "mi_strict"}


def _expected_mi_fields() -> set[str]:
    from ssl_mi_callback.evaluator import EvaluationConfig

    return RUN_SETTINGS | {f"mi_{f.name}" for f in dataclasses.fields(EvaluationConfig)}


def _user_dir() -> str:
    """What the ``ssl-mi fairseq-user-dir`` console command prints (the module form where it is not installed)."""
    script = Path(sys.executable).with_name("ssl-mi")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "ssl_mi_callback.cli"]
    done = subprocess.run([*command, "fairseq-user-dir"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_user_dir_registers_both_mi_tasks_with_their_settings():
    require("fairseq")
    user_dir = _user_dir()
    assert Path(user_dir).is_dir() and (Path(user_dir) / "__init__.py").is_file(), user_dir
    found = run_child("mi_tasks_after_import_user_module", user_dir)
    assert found["registered_before_import"] == [], "the tasks must come from the user dir, not an earlier import"
    expected = _expected_mi_fields()
    stock = {
        "audio_pretraining_mi": ("fairseq.tasks.audio_pretraining.AudioPretrainingTask", "audio_pretraining",
                                 {"data", "max_sample_size", "normalize"}),
        "hubert_pretraining_mi": ("fairseq.tasks.hubert_pretraining.HubertPretrainingTask", "hubert_pretraining",
                                  {"data", "label_dir", "labels", "label_rate"}),
    }
    for name, (stock_task, base_name, stock_fields) in stock.items():
        task = found["tasks"][name]
        assert stock_task in task["task_bases"], task["task_bases"]  # the stock task, extended
        assert task["base_task_name"] == base_name  # what the export names, so plain fairseq loads it
        fields = task["fields"]
        mi_fields = {key for key in fields if key.startswith("mi_")}
        assert mi_fields == expected, (sorted(mi_fields - expected), sorted(expected - mi_fields))
        assert stock_fields <= set(fields)  # the stock task's own settings stay
        for key in sorted(expected):
            assert fields[key]["help"].strip(), f"{name}.{key} has no help text"
        assert fields["mi_heldout"]["default"] == "heldout" and fields["mi_export"]["default"] == "checkpoint_mi_best.pt"


@pytest.fixture(scope="module")
def hubert_labels(tiny_corpus, tmp_path_factory):
    """MFCC k-means labels (dict.km.txt + <split>.km) for the HuBERT recipe's task set-up."""
    labels = tmp_path_factory.mktemp("hubert_labels")
    subprocess.run(
        [sys.executable, str(ROOT / "recipes/fairseq/prepare_hubert_labels.py"), str(tiny_corpus), "--out", str(labels),
         "--splits", "train", "valid", "--k", "20"],
        check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    return labels


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["wav2vec2_base_librispeech_mi", "hubert_base_librispeech_mi"])
def test_base_librispeech_recipe_composes_and_passes_start_up(recipe, tiny_corpus, tmp_path, request):
    """The GPU recipe, data paths pointed at the tiny corpus: composed like fairseq-hydra-train, it passes
    validate_run_config as an MI task, and the task (MI hook, held-out subset) and base model set up."""
    require("fairseq")
    overrides = [f"task.data={tiny_corpus}", f"checkpoint.save_dir={tmp_path / 'checkpoints'}"]
    if recipe.startswith("hubert"):
        labels = request.getfixturevalue("hubert_labels")
        overrides += [f"task.label_dir={labels}", "task.labels=[km]", "model.label_rate=50"]
    started = run_child("start_up_without_training", recipe, *overrides)
    base = "hubert_pretraining" if recipe.startswith("hubert") else "audio_pretraining"
    assert started["is_mi_task"], "validate_run_config only checks MI tasks; this one must be one"
    assert started["task"] == f"{base}_mi" and started["base_task_name"] == base
    assert set(started["mi_settings"]) == _expected_mi_fields()
    checkpoint, dataset = started["checkpoint"], started["dataset"]
    assert checkpoint["best_checkpoint_metric"] == "mi_bits" and checkpoint["maximize_best_checkpoint_metric"]
    assert checkpoint["keep_interval_updates"] == 1 and not checkpoint["no_save"]
    assert dataset["validate_interval_updates"] == checkpoint["save_interval_updates"] == 25000
    assert not dataset["disable_validation"]
    assert started["evaluation"]["layers"] == [-1] and started["evaluation"]["mask_length"] == 10
    assert started["evaluation"]["centering"] == started["mi_settings"]["mi_centering"]
    assert started["heldout_utterances"] == len((tiny_corpus / "heldout.tsv").read_text().splitlines()) - 1
    assert started["model_class"] == ("HubertModel" if base.startswith("hubert") else "Wav2Vec2Model")
    assert started["model_layers"] == 12  # base size
    assert started["export_path"] == str(tmp_path / "checkpoints" / "checkpoint_mi_best.pt")
    assert started["history_path"] == str(tmp_path / "checkpoints" / "mi_history.jsonl")


@pytest.mark.slow
def test_empty_mi_export_turns_the_export_off(tiny_corpus, tmp_path):
    """``task.mi_export=`` (empty): the tiny recipe starts with the hook on and no export path."""
    require("fairseq")
    common = ["tiny_wav2vec2", f"task.data={tiny_corpus}", f"checkpoint.save_dir={tmp_path / 'checkpoints'}"]
    assert run_child("start_up_without_training", *common)["export_path"] == str(tmp_path / "checkpoints" / "checkpoint_mi_best.pt")
    started = run_child("start_up_without_training", *common, "task.mi_export=")
    assert started["mi_settings"]["mi_export"] == "" and started["export_path"] is None
    assert started["history_path"] == str(tmp_path / "checkpoints" / "mi_history.jsonl")  # the MI is still logged
