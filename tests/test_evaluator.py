"""The evaluator and the framework-free callback on a real (tiny, randomly initialised) fairseq
wav2vec 2.0 model and real generated speech."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from conftest import require
from gloo_workers import run_in_gloo_processes

from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter

TINY_CONV = "[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2"


def tiny_wav2vec2(seed: int = 0, layers: int = 2) -> torch.nn.Module:
    require("fairseq")
    import ssl_mi_callback.integrations.fairseq  # noqa: F401  (compat before fairseq)
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        conv_feature_layers=TINY_CONV, encoder_layers=layers, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
        encoder_attention_heads=2, final_dim=32, conv_pos=16, conv_pos_groups=4, quantize_targets=False,
    )
    torch.manual_seed(seed)
    return Wav2Vec2Model(config)


def tiny_data2vec_audio(seed: int = 0, layers: int = 2) -> torch.nn.Module:
    """fairseq 0.12.2's data2vec audio (shipped under fairseq/examples/data2vec, model ``data2vec_audio``)."""
    require("fairseq")
    import ssl_mi_callback.integrations.fairseq  # noqa: F401  (compat before fairseq)
    from fairseq.examples.data2vec.models.data2vec_audio import Data2VecAudioConfig, Data2VecAudioModel

    config = Data2VecAudioConfig(
        conv_feature_layers=TINY_CONV, encoder_layers=layers, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
        encoder_attention_heads=2, conv_pos=16, conv_pos_groups=4,
    )
    torch.manual_seed(seed)
    return Data2VecAudioModel(config)


@pytest.fixture(scope="module")
def subset(tiny_corpus):
    from ssl_mi_callback.data import load_heldout

    return load_heldout(tiny_corpus / "heldout.tsv")


def make_evaluator(subset, adapter=None, **settings):
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter

    config = EvaluationConfig(**{"clusters": 8, "bootstrap": 50, "mask_length": 5, **settings})
    return Evaluator(config, subset, adapter if adapter is not None else FairseqMaskedPredictionAdapter())


def test_record_is_complete_deterministic_and_leaves_the_model_as_it_was(subset, one_torch_thread):
    model = tiny_wav2vec2().train()
    evaluator = make_evaluator(subset, layers=(1, -1))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected_next = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    first = evaluator.evaluate(model)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_next  # RNG state restored
    assert model.training  # mode restored
    second = evaluator.evaluate(model)
    assert first["metrics"] == second["metrics"]
    assert first["status"] == "ok" and set(first["layers"]) == {"1", "2"}
    metrics = first["metrics"]
    assert metrics["mi_bits"] == metrics["mi_given_position_bits_l2"]  # selection "last", position control (defaults)
    for key in ("h_c_bits_l1", "ce_bits_l2", "mi_ci95_low_l2", "mi_ci95_high_l2", "rankme_l2", "rankme_t_l1"):
        assert np.isfinite(metrics[key]), key
    assert first["subset"]["fingerprint"] == subset.fingerprint()
    assert first["subset"]["frames"] == first["layers"]["2"]["n_frames_fit"] + first["layers"]["2"]["n_frames_eval"]
    json.dumps(first)  # a record is JSON-serialisable as it is


def test_selection_mean_and_fixed_layer(subset, one_torch_thread):
    model = tiny_wav2vec2()
    mean_record = make_evaluator(subset, layers=(1, 2), selection="mean").evaluate(model)
    per_layer = [mean_record["layers"][k]["mi_given_position_bits"] for k in ("1", "2")]
    assert mean_record["metrics"]["mi_bits"] == pytest.approx(sum(per_layer) / 2, abs=1e-4)
    fixed = make_evaluator(subset, layers=(1, 2), selection="1").evaluate(model)
    assert fixed["metrics"]["mi_bits"] == fixed["metrics"]["mi_given_position_bits_l1"]
    plain = make_evaluator(subset, layers=(1, 2), selection="1", position_control=False).evaluate(model)
    assert plain["metrics"]["mi_bits"] == plain["metrics"]["mi_bits_l1"] == fixed["metrics"]["mi_bits_l1"]


def test_position_control_adds_the_conditional_estimate_and_selects_by_it(subset, one_torch_thread):
    model = tiny_wav2vec2()
    plain = make_evaluator(subset, layers=(1, 2), selection="mean", position_control=False).evaluate(model)
    record = make_evaluator(subset, layers=(1, 2), selection="mean").evaluate(model)  # position_control: the default
    metrics = record["metrics"]
    for layer in ("1", "2"):
        assert metrics[f"mi_bits_l{layer}"] == plain["metrics"][f"mi_bits_l{layer}"]  # the plain bound is unchanged
        fields = record["layers"][layer]
        assert {"mi_given_position_bits", "ci95_given_position_bits", "mi_position_bits"} <= set(fields)
        assert "mi_given_position_bits" not in plain["layers"][layer]
        low, high = fields["ci95_given_position_bits"]
        assert low <= fields["mi_given_position_bits"] <= high
        assert metrics[f"mi_given_position_bits_l{layer}"] == pytest.approx(fields["mi_given_position_bits"], abs=1e-4)
    per_layer = [record["layers"][k]["mi_given_position_bits"] for k in ("1", "2")]
    assert metrics["mi_bits"] == pytest.approx(sum(per_layer) / 2, abs=1e-4)  # selection uses the controlled value
    assert record["settings"]["position_control"] is True
    json.dumps(record)


def test_frame_positions_follow_the_pairs(subset, one_torch_thread):
    """One (frame index, frame count) per frame pair, in the order of the pairs: the masked frames of each
    utterance's fixed span mask."""
    from ssl_mi_callback.views import span_mask

    model = tiny_wav2vec2()
    evaluator = make_evaluator(subset)
    with torch.no_grad():
        parts = evaluator._local_features(model, [2])
    for batch, part in zip(evaluator.batches, parts):
        num_frames = evaluator.adapter.num_frames(model, batch.num_samples)
        expected = torch.cat([torch.nonzero(span_mask(num_frames, evaluator.config.mask_config(), u.uid))[:, 0]
                              for u in batch.utterances])
        assert torch.equal(part.frame_index, expected) and bool((part.num_frames == num_frames).all())
        assert part.frame_index.shape[0] == part.groups.shape[0] == part.per_layer[2][0].shape[0]


def test_positions_travel_with_their_frames_through_the_gather(subset, one_torch_thread):
    """Features that are their own frame index and frame count: after the per-batch pairing and an
    out-of-order two-rank gather, every frame pair's position features are computed from its own
    (frame index, frame count), and both views agree on them."""
    from ssl_mi_callback.estimators import position_features
    from ssl_mi_callback.evaluator import Evaluator
    from ssl_mi_callback.features.generic import FunctionAdapter

    hop = 320

    def frame_coordinates(model, waveforms):
        batch, frames = waveforms.shape[0], waveforms.shape[1] // hop
        index = torch.arange(frames, dtype=torch.float32).expand(batch, frames)
        loudness = waveforms[:, : frames * hop].reshape(batch, frames, hop).abs().mean(-1)
        return [torch.stack([index, torch.full_like(index, float(frames)), loudness], dim=-1)]

    evaluator = make_evaluator(subset, FunctionAdapter(frame_coordinates, num_layers=1, frame_hop=hop), layers=(1,))
    parts = evaluator._local_features(torch.nn.Linear(1, 1), [1])
    assert len(parts) >= 2
    for part in parts:
        za, zb = part.per_layer[1]
        assert torch.equal(za[:, 0].long(), part.frame_index) and torch.equal(zb[:, 0].long(), part.frame_index)
        assert torch.equal(za[:, 1].long(), part.num_frames)
    features, groups, positions = Evaluator._assemble([parts[1::2], parts[0::2]], with_positions=True)
    za, zb = features[1]
    assert torch.equal(positions, position_features(za[:, 0].long(), za[:, 1].long()))
    assert torch.equal(zb[:, :2], za[:, :2]) and groups.shape[0] == za.shape[0]
    assert torch.equal(groups, torch.cat([part.groups for part in parts]))  # batch order restored


def test_masks_and_batches_do_not_depend_on_batch_size(subset, one_torch_thread):
    model = tiny_wav2vec2()
    small = make_evaluator(subset, batch_seconds=2.0).evaluate(model)
    large = make_evaluator(subset, batch_seconds=120.0).evaluate(model)
    assert small["subset"]["frames"] == large["subset"]["frames"]
    assert small["metrics"]["mi_bits"] == pytest.approx(large["metrics"]["mi_bits"], abs=2e-3)


def _distributed_worker(rank, world_size, heldout, out):
    from ssl_mi_callback.data import load_heldout
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter

    config = EvaluationConfig(clusters=8, bootstrap=50, mask_length=5, batch_seconds=4.0, position_control=True)
    evaluator = Evaluator(config, load_heldout(heldout), FairseqMaskedPredictionAdapter(), rank=rank, world_size=world_size)
    record = evaluator.evaluate(tiny_wav2vec2())
    with open(f"{out}.{rank}", "w") as handle:
        json.dump(record["metrics"], handle)


def test_two_gloo_processes_give_the_one_process_value(tiny_corpus, subset, tmp_path):
    """Real torch.distributed: rank r runs batches r, r+2, ...; both ranks must return the value of one process."""
    require("fairseq")
    out = tmp_path / "metrics"
    run_in_gloo_processes(_distributed_worker, (str(tiny_corpus / "heldout.tsv"), str(out)))
    rank0, rank1 = (json.loads((tmp_path / f"metrics.{r}").read_text()) for r in (0, 1))
    assert rank0 == rank1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = make_evaluator(subset, batch_seconds=4.0, position_control=True).evaluate(tiny_wav2vec2())
    finally:
        torch.set_num_threads(threads)
    for key in ("mi_bits", "mi_bits_l2", "mi_given_position_bits_l2", "mi_position_bits_l2"):  # positions gathered in order
        assert single["metrics"][key] == pytest.approx(rank0[key], abs=1e-4), key


def test_failed_evaluation_is_recorded_and_never_best(subset, tmp_path, one_torch_thread):
    from ssl_mi_callback.callback import MICallback
    from ssl_mi_callback.selector import CheckpointSelector, SelectionConfig

    history = tmp_path / "history.jsonl"
    callback = MICallback(make_evaluator(subset), CheckpointSelector(SelectionConfig(), history_path=history))
    good = callback.evaluate(tiny_wav2vec2(), step=10)
    assert good["status"] == "ok" and good["is_best"]
    not_a_speech_model = torch.nn.Linear(4, 4)
    failed = callback.evaluate(not_a_speech_model, step=20)
    assert failed["status"] == "failed" and not failed["is_best"]
    assert "UnsupportedModelError" in failed["error"]
    assert callback.selector.best["step"] == 10
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert [(r["step"], r["status"]) for r in lines] == [(10, "ok"), (20, "failed")]
    strict = MICallback(make_evaluator(subset), CheckpointSelector(SelectionConfig()), strict=True)
    with pytest.raises(ValueError, match="not a fairseq masked-prediction model"):
        strict.evaluate(not_a_speech_model, step=1)


def test_on_step_evaluates_only_when_due(subset, one_torch_thread):
    from ssl_mi_callback.callback import MICallback
    from ssl_mi_callback.selector import CheckpointSelector, SelectionConfig

    callback = MICallback(make_evaluator(subset), CheckpointSelector(SelectionConfig()), every_n_steps=3)
    model = tiny_wav2vec2()
    results = [callback.on_step(model, step) for step in range(1, 7)]
    assert [r is not None for r in results] == [False, False, True, False, False, True]
    assert [r["step"] for r in callback.selector.history()] == [3, 6]


@pytest.mark.parametrize("build", [tiny_wav2vec2, tiny_data2vec_audio], ids=["wav2vec2", "data2vec_audio"])
def test_fairseq_adapter_matches_the_models_own_forward(subset, build):
    """Our two views equal the model's own forward (wav2vec 2.0, data2vec audio): unmasked =
    extract_features(mask=False), masked = forward(mask=True, mask_indices=M) (with mask_prob > 0,
    where fairseq honours given indices); ``extract`` is the unmasked view."""
    from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter

    model = build().eval()
    adapter = FairseqMaskedPredictionAdapter()
    waveform = torch.from_numpy(subset.utterances[0].waveform)[None]
    frames = adapter.num_frames(model, waveform.shape[1])
    mask = torch.zeros(1, frames, dtype=torch.bool)
    mask[0, 5:15] = True
    with torch.no_grad():
        masked, unmasked = adapter.extract_views(model, waveform, mask, [1, 2])
        reference = model.extract_features(waveform, None, mask=False)
        reference_masked = model(waveform, None, mask=True, features_only=True, mask_indices=mask)
    assert unmasked[2].shape == (1, frames, 64)
    assert torch.equal(unmasked[2], reference["x"])
    assert torch.equal(unmasked[1], reference["layer_results"][0][0].transpose(0, 1))
    assert torch.equal(masked[2], reference_masked["x"])
    assert torch.equal(adapter.extract(model, waveform, [2])[2], reference["x"])


def test_data2vec_audio_is_scored_with_masked_views(subset, one_torch_thread):
    record = make_evaluator(subset, layers=(1, 2)).evaluate(tiny_data2vec_audio())
    assert record["views"] == {"pair": "masked", "future_offset": None, "mask_placement": "feature"}
    for layer in ("1", "2"):  # random weights: a bound near 0, finite, within its entropy term
        result = record["layers"][layer]
        assert -0.1 < result["mi_bits"] <= result["h_c_bits"] and result["ci95_bits"][0] <= result["mi_bits"]


def _training_state(model: torch.nn.Module) -> dict:
    """What an evaluation must leave as it was: weights, gradients, dtypes, modes and every RNG."""
    return {
        "weights": {name: value.detach().clone() for name, value in model.state_dict().items()},
        "grads": {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None},
        "dtypes": {name: p.dtype for name, p in model.named_parameters()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "training": {name: module.training for name, module in model.named_modules()},
        "grad_enabled": torch.is_grad_enabled(),
        "rng": (random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state()),
    }


def _assert_same_training_state(before: dict, after: dict) -> None:
    for key in ("dtypes", "requires_grad", "training", "grad_enabled"):
        assert after[key] == before[key], key
    for key in ("weights", "grads"):
        assert after[key].keys() == before[key].keys(), key
        assert all(torch.equal(after[key][name], value) for name, value in before[key].items()), key
    assert after["rng"][0] == before["rng"][0]
    assert np.array_equal(after["rng"][1], before["rng"][1]) and torch.equal(after["rng"][2], before["rng"][2])


def _one_training_step(model: torch.nn.Module, subset) -> None:
    """A real update of the model, so it holds gradients as in training (plain SGD: Adam's eps
    underflows in pure fp16; real fp16 training keeps float32 master weights)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    waveform = torch.from_numpy(subset.utterances[0].waveform[:16000])[None].to(next(model.parameters()).dtype)
    result = model(waveform, None, mask=True, features_only=True)
    loss = result["x"].float().pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_model_is_scored_and_left_as_it_was(subset, dtype, one_torch_thread):
    """fp16/bf16 training (issue 3): a model converted with .to(dtype) (CPU; both run here with torch
    2.11) is scored from its half-precision features (cast to float32 for the estimators), with values
    close to the float32 model's, and keeps its dtype, mode, weights, gradients and RNG state."""
    reference = make_evaluator(subset, layers=(1, 2)).evaluate(tiny_wav2vec2())["metrics"]
    model = tiny_wav2vec2().to(dtype).train()
    _one_training_step(model, subset)
    before = _training_state(model)
    record = make_evaluator(subset, layers=(1, 2)).evaluate(model)
    _assert_same_training_state(before, _training_state(model))
    assert all(p.dtype == dtype for p in model.parameters()) and model.training
    assert record["status"] == "ok" and math.isfinite(record["metrics"]["mi_bits"])
    # one SGD step at lr 1e-3 barely moves the weights: the half-precision features are the float32
    # features up to rounding (the effective rank of 64-dim features agrees within 1 %)
    for layer in (1, 2):
        assert record["metrics"][f"rankme_l{layer}"] == pytest.approx(reference[f"rankme_l{layer}"], rel=0.01)
        assert record["metrics"][f"h_c_bits_l{layer}"] == pytest.approx(reference[f"h_c_bits_l{layer}"], abs=0.15)
        assert record["metrics"][f"mi_bits_l{layer}"] == pytest.approx(reference[f"mi_bits_l{layer}"], abs=0.05)


class OutOfMemoryOnDemand(FairseqMaskedPredictionAdapter):
    """The real fairseq adapter, except that once armed it raises what torch raises when a GPU runs
    out of memory (``torch.cuda.OutOfMemoryError`` can be built without a GPU) from the forward of
    the ``at_batch``-th batch, after the batches before it ran for real."""

    def __init__(self) -> None:
        self.armed_at_batch: int | None = None
        self.calls = 0

    def arm(self, at_batch: int) -> None:
        self.armed_at_batch, self.calls = at_batch, 0

    def extract_views(self, model, waveforms, frame_mask, layers):
        self.calls += 1
        if self.armed_at_batch is not None and self.calls == self.armed_at_batch:
            self.armed_at_batch = None
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB")
        return super().extract_views(model, waveforms, frame_mask, layers)


def test_out_of_memory_in_an_evaluation_is_recorded_and_costs_nothing(subset, tmp_path, one_torch_thread, caplog):
    """ok -> out of memory in the forward of the second batch -> ok: the failure is logged and recorded
    with its reason, the best stays the first evaluation, the model's training state is untouched, and
    the next evaluation gives exactly the first one's value (nothing of the failed one lingers)."""
    from ssl_mi_callback.callback import MICallback
    from ssl_mi_callback.selector import CheckpointSelector, SelectionConfig

    adapter = OutOfMemoryOnDemand()
    evaluator = make_evaluator(subset, adapter, batch_seconds=4.0)
    assert len(evaluator.batches) >= 3
    history = tmp_path / "history.jsonl"
    callback = MICallback(evaluator, CheckpointSelector(SelectionConfig(min_delta=1e-9), history_path=history))
    model = tiny_wav2vec2().train()
    _one_training_step(model, subset)
    first = callback.evaluate(model, step=10)
    assert first["status"] == "ok" and first["is_best"]

    adapter.arm(at_batch=2)
    before = _training_state(model)
    with caplog.at_level("WARNING", logger="ssl_mi_callback"):
        failed = callback.evaluate(model, step=20)
    _assert_same_training_state(before, _training_state(model))
    assert adapter.calls == 2  # the first batch ran, the second raised, the evaluation stopped there
    assert failed["status"] == "failed" and not failed["is_best"] and failed["metrics"] == {}
    assert failed["error"].startswith("EvaluationError: rank 0: OutOfMemoryError: CUDA out of memory. Tried to allocate")
    assert any("MI evaluation at step 20 failed, training continues: EvaluationError: rank 0: OutOfMemoryError"
               in r.getMessage() for r in caplog.records)
    assert callback.selector.best["step"] == 10 and callback.selector.best["metrics"] == first["metrics"]

    again = callback.evaluate(model, step=30)
    assert again["status"] == "ok" and again["metrics"] == first["metrics"] and not again["is_best"]  # a tie: older wins
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert [(r["step"], r["status"]) for r in lines] == [(10, "ok"), (20, "failed"), (30, "ok")]
    assert lines[1]["error"] == failed["error"]
    assert callback.selector.best["step"] == 10


def test_scoring_reuses_the_evaluations_unmasked_forward_for_the_phone_probe(subset, tiny_corpus, one_torch_thread):
    """`ssl-mi score --labels`: the supervised probe reads the unmasked features the evaluation computed
    (no third forward) and gets exactly what a fresh forward gives."""
    from ssl_mi_callback.labels import read_frame_labels
    from ssl_mi_callback.scoring import supervised_by_layer

    model = tiny_wav2vec2()
    labels = read_frame_labels(tiny_corpus / "heldout.phn", tiny_corpus / "heldout.tsv")
    evaluator = make_evaluator(subset, layers=(1, 2), bootstrap=0)
    multi = next(b for b in evaluator.batches if len(b.utterances) > 1)
    del labels[multi.utterances[0].uid]  # rows of a batch are selected from the reused features too
    encoder_runs = []
    handle = model.encoder.register_forward_hook(lambda *_: encoder_runs.append(1))
    try:
        kept = {}
        evaluator.evaluate(model, unmasked_sink=lambda batch, features: kept.__setitem__(
            batch.index, {layer: value.float().cpu() for layer, value in features.items()}))
        assert len(encoder_runs) == 2 * len(evaluator.batches) and set(kept) == {b.index for b in evaluator.batches}
        reused = supervised_by_layer(evaluator, model, labels, [1, 2], kept)
        assert len(encoder_runs) == 2 * len(evaluator.batches)  # no forward beyond the two views
        fresh = supervised_by_layer(evaluator, model, labels, [1, 2])
        assert len(encoder_runs) == 3 * len(evaluator.batches)
    finally:
        handle.remove()
    assert reused["skipped"] == fresh["skipped"] == {"no_labels": 1, "frame_mismatch": 0}
    for layer in ("1", "2"):  # a sub-batch forward differs from the full batch's rows only by float rounding
        for key in ("mi_bits", "accuracy", "n_frames_fit", "n_frames_eval"):
            assert reused["layers"][layer][key] == pytest.approx(fresh["layers"][layer][key], abs=1e-5), (layer, key)
