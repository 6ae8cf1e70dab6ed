"""MILightningCallback in real Lightning training: a tiny torchaudio HuBERT (HuBERTPretrainModel) learns
to predict the generated corpus's 20 ms phone ids from masked speech (HuBERT's masked-prediction loss)
on CPU, with the MI evaluated at every validation; ModelCheckpoint and EarlyStopping monitor
``mi_bits`` unchanged, a resumed run continues the callback's best-so-far and history, and a failed
evaluation (NaN held-out audio through the real forward) costs neither the run nor the best checkpoint."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require

VAL_EVERY = 5
CONV = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2  # 20 ms frames, like the corpus's .phn labels
CHUNK_FRAMES = 49  # 1 s: (16000 - 400) // 320 + 1


def tiny_hubert(num_classes: int, seed: int = 0) -> torch.nn.Module:
    from torchaudio.models import hubert_pretrain_model

    torch.manual_seed(seed)
    return hubert_pretrain_model(
        extractor_mode="group_norm", extractor_conv_layer_config=CONV, extractor_conv_bias=False,
        encoder_embed_dim=32, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4,
        encoder_num_layers=2, encoder_num_heads=2, encoder_attention_dropout=0.0, encoder_ff_interm_features=64,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False, encoder_layer_drop=0.0,
        mask_prob=0.5, mask_selection="static", mask_other=0.0, mask_length=5, no_mask_overlap=False,
        mask_min_space=1, mask_channel_prob=0.0, mask_channel_selection="static", mask_channel_other=0.0,
        mask_channel_length=10, no_mask_channel_overlap=False, mask_channel_min_space=1, skip_masked=False,
        skip_nomask=True, num_classes=num_classes, final_dim=16, feature_grad_mult=None,
    )


def phone_chunks(corpus: Path, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """1-s chunks of a corpus split with their 20 ms phone ids (the .phn line of the same manifest entry)."""
    from ssl_mi_callback.data import load_heldout

    manifest = (corpus / f"{split}.tsv").read_text().splitlines()[1:]
    labels = {
        line.split("\t")[0]: [int(p) for p in phn.split()]
        for line, phn in zip(manifest, (corpus / f"{split}.phn").read_text().splitlines())
    }
    chunks = []
    for utterance in load_heldout(corpus / f"{split}.tsv").utterances:
        phones = labels[utterance.uid]
        for start in range(0, len(phones) - CHUNK_FRAMES + 1, CHUNK_FRAMES):
            samples = utterance.waveform[start * 320 : start * 320 + 16000]
            if samples.shape[0] == 16000:
                chunks.append((torch.from_numpy(samples), torch.tensor(phones[start : start + CHUNK_FRAMES])))
    return chunks


def make_module(corpus: Path):
    import lightning.pytorch as pl
    import torch.nn.functional as F

    class TinyHuBERT(pl.LightningModule):
        """HuBERT pretraining on phone-id targets: cross-entropy of the masked frames' logits."""

        def __init__(self) -> None:
            super().__init__()
            self.model = tiny_hubert(num_classes=len((corpus / "phones.txt").read_text().split()))

        def _loss(self, batch):
            waveforms, labels = batch
            logit_m, _, feature_penalty = self.model(waveforms, labels)
            positive_first = torch.zeros(logit_m.shape[0], dtype=torch.long)
            return F.cross_entropy(logit_m, positive_first) + 10.0 * feature_penalty

        def training_step(self, batch, batch_idx):
            loss = self._loss(batch)
            self.log("train_loss", loss, batch_size=batch[0].shape[0])
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self._loss(batch), batch_size=batch[0].shape[0])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

        def train_dataloader(self):
            generator = torch.Generator().manual_seed(0)
            return torch.utils.data.DataLoader(phone_chunks(corpus, "train"), batch_size=4, shuffle=True, generator=generator)

        def val_dataloader(self):
            return torch.utils.data.DataLoader(phone_chunks(corpus, "valid"), batch_size=4)

    return TinyHuBERT()


def mi_config():
    from ssl_mi_callback.evaluator import EvaluationConfig

    return EvaluationConfig(clusters=8, bootstrap=20, mask_length=2, mask_prob=0.3, layers=(1, 2), baselines=False)


def make_mi_callback(subset, history: str = "mi_history.jsonl", **kwargs):
    """History relative to the trainer's default_root_dir (the default, and what keeps resume portable)."""
    from ssl_mi_callback.evaluator import Evaluator
    from ssl_mi_callback.features.torchaudio import TorchaudioWav2Vec2Adapter
    from ssl_mi_callback.integrations.lightning import MILightningCallback

    return MILightningCallback(Evaluator(mi_config(), subset, TorchaudioWav2Vec2Adapter()), history_path=history, **kwargs)


def make_trainer(tmp_path: Path, max_steps: int, callbacks: list, logger=False):
    import lightning.pytorch as pl

    return pl.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, callbacks=callbacks, logger=logger,
        val_check_interval=VAL_EVERY, check_val_every_n_epoch=None, limit_val_batches=1, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )


def read_history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def history_best(records: list[dict]) -> dict:
    """The callback's rule (ModelCheckpoint's): highest mi_bits, a tie keeping the older evaluation."""
    scored = [r for r in records if r["status"] == "ok"]
    return max(scored, key=lambda r: r["metrics"]["mi_bits"])


def heldout_paths(corpus: Path) -> list[Path]:
    """Every utterance the model does not train on (heldout, probe_train, probe_test; about 45 s): with
    less, the tiny model's bound is mostly 0 and ties would decide the checkpoint tests."""
    return [
        corpus / line.split("\t")[0]
        for split in ("heldout", "probe_train", "probe_test")
        for line in (corpus / f"{split}.tsv").read_text().splitlines()[1:]
    ]


@pytest.fixture(scope="module")
def subset(tiny_corpus):
    require("lightning", "torchaudio")
    from ssl_mi_callback.data import load_heldout

    return load_heldout(heldout_paths(tiny_corpus))


@pytest.fixture(scope="module")
def first_run(tiny_corpus, subset, tmp_path_factory):
    """30 steps, MI at every validation (every 5 steps), the best checkpoint by mi_bits, every validation's
    checkpoint and a CSV log."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    tmp_path = tmp_path_factory.mktemp("lightning_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pl.seed_everything(0, verbose=False)
        mi = make_mi_callback(subset)
        best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="mi_bits", mode="max", save_top_k=1)
        every = ModelCheckpoint(dirpath=tmp_path / "every", filename="{step}", save_top_k=-1)
        trainer = make_trainer(tmp_path, 30, [mi, best, every], logger=CSVLogger(tmp_path, name="csv"))
        trainer.fit(make_module(tiny_corpus))
    finally:
        torch.set_num_threads(threads)
    return dict(tmp_path=tmp_path, mi=mi, best=best, trainer=trainer)


def test_model_checkpoint_keeps_the_best_mi_evaluation(first_run):
    tmp_path, mi, best = first_run["tmp_path"], first_run["mi"], first_run["best"]
    records = read_history(tmp_path / "mi_history.jsonl")
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    assert all(r["status"] == "ok" and r["settings"]["adapter"] == "torchaudio" for r in records)
    scores = [r["metrics"]["mi_bits"] for r in records]
    assert scores.count(max(scores)) == 1 and max(scores) > 0.05  # the MI moved; no tie decides the test
    best_record = history_best(records)
    assert mi.best["step"] == best_record["step"]
    checkpoint = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == best_record["step"]
    assert best.best_model_score.item() == pytest.approx(best_record["metrics"]["mi_bits"], abs=1e-6)
    # the callback's state travels in the checkpoint: its best at that step is that evaluation
    (state,) = [s for key, s in checkpoint["callbacks"].items() if key.startswith("MILightningCallback")]
    assert state["selector"]["best"]["step"] == best_record["step"]


def test_mi_and_per_layer_metrics_reach_lightnings_logger(first_run):
    tmp_path, trainer = first_run["tmp_path"], first_run["trainer"]
    records = {r["step"]: r["metrics"] for r in read_history(tmp_path / "mi_history.jsonl")}
    assert trainer.callback_metrics["mi_bits"].item() == pytest.approx(records[30]["mi_bits"], abs=1e-6)
    (metrics_csv,) = (tmp_path / "csv").rglob("metrics.csv")
    logged = {}
    for row in csv.DictReader(metrics_csv.open()):
        if row.get("mi_bits"):
            logged[int(row["step"]) + 1] = row  # Lightning logs validation-end values at global_step - 1
    assert sorted(logged) == sorted(records)
    for step, metrics in records.items():
        for key in ("mi_bits", "mi_bits_l1", "mi_bits_l2", "h_c_bits_l2", "ce_bits_l1"):
            assert float(logged[step][key]) == pytest.approx(metrics[key], abs=1e-6), (step, key)


def test_resume_restores_the_best_so_far_and_continues_the_history(first_run, tiny_corpus, subset, tmp_path,
                                                                  one_torch_thread, caplog):
    """Resume from the step-15 checkpoint of a run that went on to step 30 (as after a crash): the callback
    starts with the best of steps 5-15, the history drops steps 20-30 and continues without gaps."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    first_records = read_history(first_run["tmp_path"] / "mi_history.jsonl")
    shutil.copy(first_run["tmp_path"] / "mi_history.jsonl", tmp_path / "mi_history.jsonl")
    expected_start = history_best([r for r in first_records if r["step"] <= 15])

    class BestAtStart(Callback):
        def on_train_start(self, trainer, pl_module):
            self.best = mi.best

    pl.seed_everything(0, verbose=False)
    mi = make_mi_callback(subset)
    spy = BestAtStart()
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="mi_bits", mode="max")
    trainer = make_trainer(tmp_path, 40, [mi, spy, best])
    with caplog.at_level("WARNING", logger="ssl_mi_callback"):
        trainer.fit(make_module(tiny_corpus), ckpt_path=first_run["tmp_path"] / "every" / "step=15.ckpt")
    assert spy.best["step"] == expected_start["step"]
    assert spy.best["metrics"] == expected_start["metrics"]
    records = read_history(tmp_path / "mi_history.jsonl")
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert records[:3] == first_records[:3]
    assert mi.best["step"] == history_best(records)["step"]
    assert not [r for r in caplog.records if r.name.startswith("ssl_mi_callback")]  # e.g. "not recorded"
    # the resumed run's checkpoints compete only among its own evaluations (steps 20-40)
    checkpoint = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == history_best(records[3:])["step"]


def test_every_n_train_steps_with_a_step_checkpoint(first_run, tiny_corpus, subset, tmp_path, one_torch_thread):
    """every_n_train_steps=10 (validation still runs every 5 steps, without evaluating): ModelCheckpoint
    (every_n_train_steps=10, monitor='mi_bits') keeps the best; the values equal the first run's at the
    same steps, because an evaluation changes neither the weights nor any random state of training.
    The callback comes from ``create`` (held-out files loaded by it), which builds the same evaluator."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from ssl_mi_callback.features.torchaudio import TorchaudioWav2Vec2Adapter
    from ssl_mi_callback.integrations.lightning import MILightningCallback

    pl.seed_everything(0, verbose=False)
    mi = MILightningCallback.create(TorchaudioWav2Vec2Adapter(), heldout_paths(tiny_corpus), config=mi_config(),
                                    evaluate_on_validation=False, every_n_train_steps=10)
    assert mi.evaluator.subset.fingerprint() == subset.fingerprint()
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="mi_bits", mode="max", every_n_train_steps=10)
    make_trainer(tmp_path, 30, [mi, best]).fit(make_module(tiny_corpus))
    records = read_history(tmp_path / "mi_history.jsonl")
    assert [r["step"] for r in records] == [10, 20, 30]
    first = {r["step"]: r["metrics"]["mi_bits"] for r in read_history(first_run["tmp_path"] / "mi_history.jsonl")}
    for record in records:
        assert record["metrics"]["mi_bits"] == pytest.approx(first[record["step"]], abs=1e-4)
    checkpoint = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == history_best(records)["step"] == mi.best["step"]


def test_early_stopping_on_mi_bits(tiny_corpus, subset, tmp_path, one_torch_thread):
    """EarlyStopping(monitor='mi_bits', mode='max', patience=1) stops at the first evaluation that does
    not beat the best, exactly where the history says."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping

    pl.seed_everything(0, verbose=False)
    mi = make_mi_callback(subset, model="model")
    stopper = EarlyStopping(monitor="mi_bits", mode="max", patience=1, check_finite=False)
    trainer = make_trainer(tmp_path, 60, [mi, stopper])
    trainer.fit(make_module(tiny_corpus))
    records = read_history(tmp_path / "mi_history.jsonl")
    best, expected_stop = -math.inf, None
    for record in records:
        if record["metrics"]["mi_bits"] > best:
            best = record["metrics"]["mi_bits"]
        else:
            expected_stop = record["step"]
            break
    assert expected_stop is not None and expected_stop < 60, [r["metrics"]["mi_bits"] for r in records]
    assert trainer.global_step == expected_stop == records[-1]["step"]
    assert stopper.best_score.item() == pytest.approx(best, abs=1e-6)


def with_nan_audio(subset):
    """The held-out subset with its first utterance replaced by NaN samples (a copy: the fixture's
    audio is untouched): the real forward turns it into NaN features and the evaluation fails."""
    from ssl_mi_callback.data import Utterance

    broken = list(subset.utterances)
    first = broken[0]
    broken[0] = Utterance(first.index, first.uid, np.full_like(first.waveform, np.nan), first.path)
    return dataclasses.replace(subset, utterances=broken)


def nan_audio_at(mi, step: int):
    """Fault injection (listed before ``mi``): at the validation of ``step`` the first held-out
    utterance's samples are NaN while ``mi`` evaluates; restored before the checkpoint callbacks run
    (Lightning always runs them last), so only that evaluation fails."""
    from lightning.pytorch.callbacks import Callback

    class NaNAudio(Callback):
        saved = None

        def on_validation_epoch_end(self, trainer, pl_module):
            if trainer.global_step == step and not trainer.sanity_checking:
                waveform = mi.evaluator.batches[0].utterances[0].waveform
                self.saved = waveform.copy()
                waveform[:] = np.nan

        def on_validation_end(self, trainer, pl_module):
            if self.saved is not None:
                mi.evaluator.batches[0].utterances[0].waveform[:] = self.saved
                self.saved = None

    return NaNAudio()


def test_a_failed_evaluation_between_scored_ones_keeps_the_best_checkpoint(first_run, tiny_corpus, subset, tmp_path,
                                                                           one_torch_thread, caplog):
    """ok -> failed -> ok, the failure at the evaluation that is the best in the first run (same seed,
    same values): ModelCheckpoint's best_model_path/best_model_score come from the best *scored*
    evaluation, never the failed one, whose checkpoint (save_top_k=-1 keeps every one) is scored -inf;
    EarlyStopping (check_finite=False) trains on; the other evaluations keep the first run's values."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    first_scores = {r["step"]: r["metrics"]["mi_bits"] for r in read_history(first_run["tmp_path"] / "mi_history.jsonl")}
    inner = {step: score for step, score in first_scores.items() if VAL_EVERY < step < 30}
    failing_step = max(inner, key=inner.get)
    assert inner[failing_step] > first_scores[VAL_EVERY]  # the failure hides a real best-so-far
    steps = list(range(VAL_EVERY, failing_step + 2 * VAL_EVERY, VAL_EVERY))

    own = dataclasses.replace(subset, utterances=list(subset.utterances))  # the injection touches a copy only
    own.utterances[0] = dataclasses.replace(own.utterances[0], waveform=own.utterances[0].waveform.copy())
    pl.seed_everything(0, verbose=False)
    mi = make_mi_callback(own)
    every = ModelCheckpoint(dirpath=tmp_path / "every", filename="{step}", monitor="mi_bits", mode="max", save_top_k=-1)
    stopper = EarlyStopping(monitor="mi_bits", mode="max", patience=10, check_finite=False)
    trainer = make_trainer(tmp_path, steps[-1], [nan_audio_at(mi, failing_step), mi, every, stopper])
    with caplog.at_level("WARNING", logger="ssl_mi_callback"):
        trainer.fit(make_module(tiny_corpus))
    assert trainer.global_step == steps[-1]

    records = read_history(tmp_path / "mi_history.jsonl")
    assert [(r["step"], r["status"]) for r in records] == [(s, "failed" if s == failing_step else "ok") for s in steps]
    failed = records[steps.index(failing_step)]
    assert "non-finite features" in failed["error"] and failed["metrics"] == {}
    assert any(f"MI evaluation at step {failing_step} failed, training continues" in r.getMessage() for r in caplog.records)
    scored = [r for r in records if r["status"] == "ok"]
    for record in scored:  # the failure changed nothing else
        assert record["metrics"]["mi_bits"] == pytest.approx(first_scores[record["step"]], abs=1e-4)

    expected = history_best(records)
    assert expected["step"] != failing_step and mi.best["step"] == expected["step"]
    assert every.best_model_score.item() == pytest.approx(expected["metrics"]["mi_bits"], abs=1e-6)
    assert every.best_model_path == str(tmp_path / "every" / f"step={expected['step']}.ckpt")
    assert torch.load(every.best_model_path, map_location="cpu", weights_only=True)["global_step"] == expected["step"]
    scores = {Path(path).name: score.item() for path, score in every.best_k_models.items()}
    assert scores == pytest.approx({f"step={r['step']}.ckpt": r["metrics"].get("mi_bits", -math.inf) for r in records},
                                   abs=1e-6)  # (float32 tensors)
    assert stopper.best_score.item() == pytest.approx(max(r["metrics"]["mi_bits"] for r in scored), abs=1e-6)


def test_failed_evaluations_never_end_the_run(tiny_corpus, subset, tmp_path, one_torch_thread):
    """Every evaluation fails (NaN held-out audio): each is recorded as failed and logs mi_bits = -inf, no
    invented score; ModelCheckpoint is left with no finite best (best_model_score -inf) and EarlyStopping
    (check_finite=False) trains on."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from ssl_mi_callback.integrations.lightning import FAILED_MI_BITS

    mi = make_mi_callback(with_nan_audio(subset), "h.jsonl", model=lambda m: m.model)
    pl.seed_everything(0, verbose=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="mi_bits", mode="max")
    stopper = EarlyStopping(monitor="mi_bits", mode="max", patience=3, check_finite=False)
    trainer = make_trainer(tmp_path, 10, [mi, checkpoint, stopper])
    trainer.fit(make_module(tiny_corpus))
    assert trainer.global_step == 10
    records = read_history(tmp_path / "h.jsonl")
    assert [(r["step"], r["status"]) for r in records] == [(5, "failed"), (10, "failed")]
    assert "non-finite features" in records[0]["error"]
    assert FAILED_MI_BITS == -math.inf
    for key in ("mi_bits", "mi_bits_l1", "mi_bits_l2", "mi_given_position_bits_l1", "mi_given_position_bits_l2"):
        assert trainer.callback_metrics[key].item() == -math.inf, key  # every metric a checkpoint may select on
    assert "h_c_bits_l2" not in trainer.callback_metrics
    assert not math.isfinite(checkpoint.best_model_score.item())
    assert all(score.item() == -math.inf for score in checkpoint.best_k_models.values())
    assert mi.best is None


def test_strict_reraises_the_evaluation_error(tiny_corpus, subset, tmp_path, one_torch_thread):
    """strict=True: the first failed evaluation ends fit with its error, nothing is recorded as best,
    and an EarlyStopping with check_finite=True (its default) is allowed since -inf is never logged."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from ssl_mi_callback.evaluator import EvaluationError

    mi = make_mi_callback(with_nan_audio(subset), "strict.jsonl", strict=True)
    pl.seed_everything(0, verbose=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="mi_bits", mode="max")
    trainer = make_trainer(tmp_path, 10, [mi, checkpoint, EarlyStopping(monitor="mi_bits", mode="max")])
    with pytest.raises(EvaluationError, match=r"rank 0: ValueError: non-finite features \(NaN/inf\)"):
        trainer.fit(make_module(tiny_corpus))
    assert trainer.global_step == VAL_EVERY
    assert mi.best is None and mi.history() == []
    assert checkpoint.best_model_path == "" and checkpoint.best_model_score is None


def test_misconfiguration_stops_before_training(tiny_corpus, subset, tmp_path, one_torch_thread):
    module = make_module(tiny_corpus)
    with pytest.raises(ValueError, match="has no attribute 'encoder'"):
        make_trainer(tmp_path, 5, [make_mi_callback(subset, "a.jsonl", model="encoder")]).fit(module)
    module.net = module.model
    del module.model
    with pytest.raises(ValueError, match="no model the torchaudio adapter accepts in TinyHuBERT"):
        make_trainer(tmp_path, 5, [make_mi_callback(subset, "b.jsonl")]).fit(module)
    with pytest.raises(ValueError, match="would never evaluate"):
        make_mi_callback(subset, evaluate_on_validation=False)
    module = make_module(tiny_corpus)
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    stopper = EarlyStopping(monitor="mi_bits", mode="max")  # check_finite=True: a failure would end the run
    with pytest.raises(ValueError, match=r"EarlyStopping\(monitor='mi_bits'\) has check_finite=True, so the first "
                                         r"failed MI evaluation \(logged as -inf\) would end training: pass check_finite=False"):
        make_trainer(tmp_path, 5, [make_mi_callback(subset, "c.jsonl"), stopper]).fit(module)
    worst = ModelCheckpoint(monitor="mi_bits_l1")  # mode="min" (ModelCheckpoint's default) keeps the worst
    with pytest.raises(ValueError, match=r"ModelCheckpoint\(monitor='mi_bits_l1'\) has mode='min', .* set mode='max'"):
        make_trainer(tmp_path, 5, [make_mi_callback(subset, "d.jsonl"), worst]).fit(module)
    assert module.global_step == 0
    assert not any(tmp_path.glob("*.jsonl"))


@pytest.mark.slow
def test_two_process_ddp_logs_the_one_process_value_and_writes_one_history(tiny_corpus, subset, tmp_path):
    """Real DDP (Lightning strategy="ddp", 2 CPU processes, gloo): each rank evaluates its share of the held-out
    batches, both log the same mi_bits, equal to one process scoring the final weights; only rank 0 writes."""
    import os
    import subprocess
    import sys

    child = Path(__file__).resolve().parent / "lightning_ddp_child.py"
    done = subprocess.run([sys.executable, str(child), str(tiny_corpus), str(tmp_path)], cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["logged"] == ranks[1]["logged"] and ranks[0]["best_step"] == ranks[1]["best_step"]
    records = read_history(tmp_path / "mi_history.jsonl")
    assert [r["step"] for r in records] == [5, 10] and all(r["status"] == "ok" for r in records)  # one writer
    assert records[-1]["metrics"]["mi_bits"] == pytest.approx(ranks[0]["logged"]["mi_bits"], abs=1e-6)
    for record in records:  # each rank's own value (what it logged is averaged by sync_dist, so compare these)
        assert record["distributed"]["world_size"] == 2
        values = record["distributed"]["rank_mi_bits"]
        assert len(values) == 2 and values[0] == values[1]

    module = make_module(tiny_corpus)
    state = torch.load(tmp_path / "final.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = make_mi_callback(subset).evaluator.evaluate(module.model)
    finally:
        torch.set_num_threads(threads)
    for key in ("mi_bits", "mi_bits_l1", "mi_bits_l2"):
        assert single["metrics"][key] == pytest.approx(ranks[0]["logged"][key], abs=1e-4), key
