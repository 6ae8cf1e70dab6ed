"""MITrainerCallback in real Hugging Face Trainer runs on CPU: a tiny, randomly initialised
Wav2Vec2ForPreTraining trained with its own contrastive + diversity loss on generated speech; the
Trainer keeps and reloads the checkpoint of the best MI, a failed evaluation never becomes best, and
a resumed run continues the same history and best."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import require
from test_adapter_huggingface import tiny_model

STEPS, EVERY = 40, 10
SECONDS = 1.0


def _require_trainer() -> None:
    require("transformers", "accelerate")  # transformers' Trainer needs accelerate


def crops(manifest) -> list[dict]:
    """Every utterance of a manifest cut into 1 s pieces: the model inputs."""
    from ssl_mi_callback.data import load_heldout

    samples = int(16000 * SECONDS)
    pieces = []
    for utterance in load_heldout(manifest).utterances:
        for start in range(0, utterance.num_samples - samples + 1, samples):
            pieces.append({"input_values": torch.from_numpy(utterance.waveform[start : start + samples].copy())})
    return pieces


class PretrainingCollator:
    """Batches crops and draws wav2vec 2.0's pretraining masks and negatives (as transformers' example does)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, items: list[dict]) -> dict:
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        input_values = torch.stack([item["input_values"] for item in items])
        frames = int(self.model._get_feat_extract_output_lengths(input_values.shape[1]))
        shape = (input_values.shape[0], frames)
        mask = _compute_mask_indices(shape, mask_prob=0.5, mask_length=5, min_masks=2)
        negatives = _sample_negative_indices(shape, self.model.config.num_negatives, mask_time_indices=mask)
        return {"input_values": input_values, "mask_time_indices": torch.from_numpy(mask),
                "sampled_negative_indices": torch.from_numpy(negatives)}


def nan_mask_embedding_during_evaluation(step: int):
    """Fault injection: at ``step`` the mask embedding is NaN while the model is evaluated, then restored
    (listed after the MI callback, whose evaluation then fails on non-finite features)."""
    from transformers import TrainerCallback

    class NaNMaskEmbedding(TrainerCallback):
        saved = None

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == step:
                self.saved = model.wav2vec2.masked_spec_embed.detach().clone()
                with torch.no_grad():
                    model.wav2vec2.masked_spec_embed.fill_(float("nan"))

        def on_evaluate(self, args, state, control, model=None, **kwargs):
            if self.saved is not None:
                with torch.no_grad():
                    model.wav2vec2.masked_spec_embed.copy_(self.saved)
                self.saved = None

    return NaNMaskEmbedding()


def mi_callback(tiny_corpus, *, strict: bool = False, **settings):
    from ssl_mi_callback.evaluator import EvaluationConfig
    from ssl_mi_callback.integrations.huggingface import MITrainerCallback

    config = EvaluationConfig(**{"layers": (1, -1), "clusters": 8, "bootstrap": 50, "mask_length": 5, **settings})
    return MITrainerCallback(tiny_corpus / "heldout.tsv", config, strict=strict)


def make_trainer(tiny_corpus, output_dir, callbacks, **changes):
    from transformers import Trainer, TrainingArguments

    model = tiny_model("wav2vec2", "Wav2Vec2ForPreTraining", mask_time_prob=0.5, mask_time_length=5, num_negatives=10)
    settings = dict(
        output_dir=str(output_dir), max_steps=STEPS, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=2e-3, warmup_steps=0, eval_strategy="steps", eval_steps=EVERY, save_strategy="steps",
        save_steps=EVERY, logging_steps=EVERY, metric_for_best_model="mi_bits", greater_is_better=True,
        load_best_model_at_end=True, report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
        disable_tqdm=True, remove_unused_columns=False,
    )
    settings.update(changes)
    return Trainer(
        model=model, args=TrainingArguments(**settings), train_dataset=crops(tiny_corpus / "train.tsv"),
        eval_dataset=crops(tiny_corpus / "valid.tsv"), data_collator=PretrainingCollator(model), callbacks=callbacks,
    )


def expected_best_step(history: list[dict]) -> int:
    """The Trainer's rule: the first evaluation with the highest mi_bits (failed ones never count)."""
    scored = [(r["metrics"]["mi_bits"], -r["step"]) for r in history if r["status"] == "ok"]
    return -max(scored)[1]


def model_weights(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


@pytest.fixture(scope="module")
def first_run(tiny_corpus, tmp_path_factory):
    """40 updates, an MI evaluation and a checkpoint every 10, eval_on_start, the evaluation at step 20 broken."""
    _require_trainer()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        output_dir = tmp_path_factory.mktemp("hf_run")
        callback = mi_callback(tiny_corpus)
        broken_at_20 = nan_mask_embedding_during_evaluation(step=20)
        trainer = make_trainer(tiny_corpus, output_dir, [callback, broken_at_20], eval_on_start=True)
        trainer.train()
        after_training = trainer.evaluate()
    finally:
        torch.set_num_threads(threads)
    return trainer, callback, output_dir, after_training


def test_trainer_keeps_and_reloads_the_best_mi_checkpoint(first_run):
    """ok -> failed -> ok -> ok: the Trainer's best (by eval_mi_bits) is the best scored evaluation; the
    failed one reports -inf, which is never greater than the Trainer's best (it starts at -inf too)."""
    trainer, callback, output_dir, after_training = first_run
    history = callback.history_records()
    assert [(r["step"], r["status"]) for r in history] == [(10, "ok"), (20, "failed"), (30, "ok"), (40, "ok")]
    assert "non-finite features" in history[1]["error"]
    best_step = expected_best_step(history)  # tiny random models often tie (e.g. at 0.0 bits): the older one wins
    assert callback.best["step"] == best_step == trainer.state.best_global_step != 20
    assert trainer.state.best_model_checkpoint == str(output_dir / f"checkpoint-{best_step}")
    assert trainer.state.best_metric == callback.best["metrics"]["mi_bits"]
    # the Trainer's own log has our metrics at every evaluation; -inf where ours failed; step 0 (eval_on_start) unrecorded
    logged = {}  # the first entry per step: trainer.evaluate() after training logs at step 40 again (the reloaded best)
    for entry in trainer.state.log_history:
        if "eval_mi_bits" in entry:
            logged.setdefault(entry["step"], entry["eval_mi_bits"])
    assert set(logged) == {0, 10, 20, 30, 40} and logged[20] == -math.inf
    assert all(logged[r["step"]] == r["metrics"]["mi_bits"] for r in history if r["status"] == "ok")
    scored_entries = [e for e in trainer.state.log_history if "eval_mi_bits" in e and e["step"] != 20]
    assert all(f"eval_mi_bits_l{k}" in e for e in scored_entries for k in (1, 2))
    # load_best_model_at_end loaded the best checkpoint's weights
    best_weights = model_weights(output_dir / f"checkpoint-{best_step}")
    loaded = trainer.model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in best_weights.items())
    if best_step != STEPS:
        last_weights = model_weights(output_dir / f"checkpoint-{STEPS}")
        assert not all(torch.equal(loaded[name], tensor) for name, tensor in last_weights.items())
    # trainer.evaluate() after training scores the reloaded best model again (same weights, same value), unrecorded
    for key in ("mi_bits", "mi_bits_l1", "mi_bits_l2"):
        assert after_training[f"eval_{key}"] == pytest.approx(callback.best["metrics"][key], abs=1e-4), key
    assert len(callback.history_records()) == 4
    # the selector's state travels in every checkpoint's trainer_state.json
    saved = json.loads((output_dir / "checkpoint-30" / "trainer_state.json").read_text())["stateful_callbacks"]
    assert saved["MITrainerCallback"]["mi"]["selector"]["last_step"] == 30
    assert saved["MITrainerCallback"]["args"]["config"]["clusters"] == 8


@pytest.mark.parametrize("restore_callback_states", [False, True])
def test_resume_continues_the_history_and_the_best(first_run, tiny_corpus, tmp_path, restore_callback_states):
    """Resume from checkpoint-30 in a copy of the run: step 40 is evaluated again, its old record is
    replaced (no duplicate), and the best-so-far carries over; also when the Trainer rebuilds the
    callback from trainer_state.json (restore_callback_states_from_checkpoint=True)."""
    _, first_callback, first_dir, _ = first_run
    output_dir = tmp_path / "run"
    shutil.copytree(first_dir, output_dir)
    before = [r for r in first_callback.history_records() if r["step"] <= 30]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        callback = mi_callback(tiny_corpus)
        trainer = make_trainer(
            tiny_corpus, output_dir, [callback], restore_callback_states_from_checkpoint=restore_callback_states,
        )
        trainer.train(resume_from_checkpoint=str(output_dir / "checkpoint-30"))
    finally:
        torch.set_num_threads(threads)
    from ssl_mi_callback.integrations.huggingface import MITrainerCallback

    live = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, MITrainerCallback)]
    assert len(live) == 1 and (live[0] is not callback) == restore_callback_states  # the Trainer rebuilt it
    history = live[0].history_records()
    assert [r["step"] for r in history] == [10, 20, 30, 40]
    assert [{k: r[k] for k in ("step", "status", "metrics")} for r in history[:3]] == \
        [{k: r[k] for k in ("step", "status", "metrics")} for r in before]
    best_step = expected_best_step(history)
    assert live[0].best["step"] == best_step == trainer.state.best_global_step
    assert trainer.state.best_model_checkpoint == str(output_dir / f"checkpoint-{best_step}")


def test_strict_reraises_the_evaluation_error(tiny_corpus, tmp_path, one_torch_thread):
    """strict=True: the first scheduled evaluation fails (NaN mask embedding) and train() ends with the
    evaluation's error; nothing is recorded and the Trainer has no best checkpoint."""
    _require_trainer()
    from ssl_mi_callback.evaluator import EvaluationError

    callback = mi_callback(tiny_corpus, strict=True)
    trainer = make_trainer(tiny_corpus, tmp_path, [callback, nan_mask_embedding_during_evaluation(step=EVERY)],
                           max_steps=2 * EVERY)
    with pytest.raises(EvaluationError, match=r"rank 0: ValueError: non-finite features \(NaN/inf\)"):
        trainer.train()
    assert trainer.state.global_step == EVERY
    assert callback.history_records() == [] and callback.best is None
    assert trainer.state.best_metric is None and trainer.state.best_model_checkpoint is None


def test_a_run_whose_evaluations_all_failed_has_no_best(tiny_corpus, tmp_path, one_torch_thread):
    """The only evaluation fails: it reports -inf, which never beats the Trainer's starting best (-inf),
    so the Trainer has no best step or checkpoint and no invented finite best."""
    _require_trainer()
    callback = mi_callback(tiny_corpus)
    trainer = make_trainer(tiny_corpus, tmp_path, [callback, nan_mask_embedding_during_evaluation(step=EVERY)],
                           max_steps=EVERY)
    trainer.train()
    assert [(r["step"], r["status"]) for r in callback.history_records()] == [(EVERY, "failed")]
    assert callback.best is None
    assert trainer.state.best_metric == -math.inf
    assert trainer.state.best_global_step is None and trainer.state.best_model_checkpoint is None


def test_misconfiguration_is_refused_at_construction(tiny_corpus, tmp_path):
    _require_trainer()
    from ssl_mi_callback.data import HeldOutDataError
    from ssl_mi_callback.integrations.huggingface import MITrainerCallback, selection_metric

    callback = mi_callback(tiny_corpus)
    with pytest.raises(ValueError, match="mi_bits is a mutual information .* set greater_is_better=True"):
        make_trainer(tiny_corpus, tmp_path, [callback], greater_is_better=False)
    with pytest.raises(ValueError, match="more than one MITrainerCallback"):
        make_trainer(tiny_corpus, tmp_path, [callback, mi_callback(tiny_corpus)])
    with pytest.raises(HeldOutDataError):
        MITrainerCallback(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="clusters must be >= 2"):
        MITrainerCallback(tiny_corpus / "heldout.tsv", {"clusters": 1})
    with pytest.raises(ValueError, match=r"unknown evaluation settings \['cluster'\]"):
        MITrainerCallback(tiny_corpus / "heldout.tsv", {"cluster": 8})
    assert [selection_metric(m) for m in ("mi_bits", "eval_mi_bits", "eval_valid_mi_bits_l4", "eval_mi_given_position_bits_l2",
                                          "eval_loss", None)] == ["mi_bits", "mi_bits", "mi_bits_l4", "mi_given_position_bits_l2", None, None]
    rebuilt = MITrainerCallback(**json.loads(json.dumps(callback.state()["args"])))  # how the Trainer restores it
    assert rebuilt.config == callback.config and rebuilt.subset.fingerprint() == callback.subset.fingerprint()
    # a trainer_state.json saved before the rename holds the former argument names: still rebuilt
    former = {("evaluation" if key == "config" else "history" if key == "history_path" else key): value
              for key, value in json.loads(json.dumps(callback.state()["args"])).items()}
    with pytest.warns(FutureWarning) as caught:
        rebuilt = MITrainerCallback(**former)
    assert sorted(str(warning.message) for warning in caught) == [
        "MITrainerCallback(evaluation=...) is now config=...", "MITrainerCallback(history=...) is now history_path=..."]
    assert rebuilt.config == callback.config and rebuilt.history_path == callback.history_path == "mi_history.jsonl"
    with pytest.raises(TypeError, match="both history_path= and its former name history="):
        MITrainerCallback(tiny_corpus / "heldout.tsv", history_path="a.jsonl", history="b.jsonl")


def test_an_evaluation_that_cannot_work_stops_training_before_the_first_step(tiny_corpus, tmp_path):
    _require_trainer()
    trainer = make_trainer(tiny_corpus, tmp_path, [mi_callback(tiny_corpus, clusters=500)])
    with pytest.raises(ValueError, match="MITrainerCallback: the held-out subset is too small .* for 500 clusters"):
        trainer.train()
    assert trainer.state.global_step == 0
    trainer = make_trainer(tiny_corpus, tmp_path, [mi_callback(tiny_corpus)], metric_for_best_model="mi_bits_l3")
    with pytest.raises(ValueError, match=r"metric_for_best_model=mi_bits_l3 but layer 3 is not scored \(layers \[1, 2\]\)"):
        trainer.train()


def test_several_eval_datasets_share_one_evaluation_per_step(tiny_corpus, tmp_path, one_torch_thread):
    """eval_dataset as a dict: the Trainer evaluates each under its own prefix; the MI is computed once
    per step, recorded once, and reported under every prefix."""
    _require_trainer()
    callback = mi_callback(tiny_corpus)
    trainer = make_trainer(tiny_corpus, tmp_path, [callback], max_steps=EVERY, metric_for_best_model="eval_clean_mi_bits")
    valid = crops(tiny_corpus / "valid.tsv")
    trainer.eval_dataset = {"clean": valid, "again": valid[:2]}
    trainer.train()
    history = callback.history_records()
    assert [(r["step"], r["status"]) for r in history] == [(EVERY, "ok")]
    entries = [e for e in trainer.state.log_history if e.get("step") == EVERY and any(k.endswith("_mi_bits") for k in e)]
    assert [e.get("eval_clean_mi_bits", e.get("eval_again_mi_bits")) for e in entries] == [history[0]["metrics"]["mi_bits"]] * 2
    assert trainer.state.best_global_step == EVERY and trainer.state.best_metric == history[0]["metrics"]["mi_bits"]


@pytest.mark.slow
def test_two_process_ddp_logs_the_one_process_value_and_writes_one_history(tiny_corpus, tmp_path):
    """Real DDP (torch.distributed.run, 2 CPU processes, gloo): each rank evaluates its share of the held-out
    batches, both report the same eval_mi_bits, equal to one process scoring the final weights; only rank 0
    writes the history."""
    import os
    import socket
    import subprocess
    import sys

    _require_trainer()
    from transformers import Wav2Vec2ForPreTraining

    from ssl_mi_callback.data import load_heldout
    from ssl_mi_callback.evaluator import Evaluator
    from ssl_mi_callback.features.huggingface import HuggingFaceAdapter

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    child = Path(__file__).resolve().parent / "huggingface_ddp_child.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), str(child), str(tiny_corpus), str(tmp_path)]
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["logged"] == ranks[1]["logged"] and sorted(ranks[0]["logged"]) == ["10", "5"]
    history = [json.loads(line) for line in (tmp_path / "mi_history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [5, 10] and all(r["status"] == "ok" for r in history)  # one writer
    assert history[-1]["metrics"]["mi_bits"] == pytest.approx(ranks[0]["logged"]["10"]["eval_mi_bits"], abs=1e-6)

    model = Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "final").eval()
    config = mi_callback(tiny_corpus).config
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Evaluator(config, load_heldout(tiny_corpus / "heldout.tsv"), HuggingFaceAdapter()).evaluate(model)
    finally:
        torch.set_num_threads(threads)
    for key in ("mi_bits", "mi_bits_l1", "mi_bits_l2"):
        assert single["metrics"][key] == pytest.approx(ranks[0]["logged"]["10"][f"eval_{key}"], abs=1e-4), key
