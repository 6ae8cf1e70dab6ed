"""The torchaudio adapter on real (tiny, randomly initialised) torchaudio wav2vec 2.0, WavLM and HuBERT
models and real generated speech: its features equal torchaudio's own, its masked views are made where
they should be, the evaluator scores them, and a fairseq model converted to torchaudio scores the same
as the fairseq original."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import require

CONV = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2  # hop 320, receptive field 400 (wav2vec 2.0's)
COMMON = dict(
    extractor_conv_layer_config=CONV, extractor_conv_bias=False, encoder_embed_dim=32,
    encoder_projection_dropout=0.1, encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2,
    encoder_num_heads=2, encoder_attention_dropout=0.1, encoder_ff_interm_features=64,
    encoder_ff_interm_dropout=0.1, encoder_dropout=0.1, encoder_layer_norm_first=False, encoder_layer_drop=0.0,
)


def tiny_torchaudio(kind: str, seed: int = 0, extractor_mode: str = "group_norm") -> torch.nn.Module:
    """A tiny torchaudio model: 'wav2vec2', 'wavlm' (both Wav2Vec2Model) or 'hubert' (HuBERTPretrainModel)."""
    require("torchaudio")
    from torchaudio.models import hubert_pretrain_model, wav2vec2_model, wavlm_model

    torch.manual_seed(seed)
    if kind == "wav2vec2":
        return wav2vec2_model(extractor_mode=extractor_mode, aux_num_out=None, **COMMON)
    if kind == "wavlm":
        return wavlm_model(extractor_mode=extractor_mode, encoder_num_buckets=16, encoder_max_distance=64,
                           aux_num_out=None, **COMMON)
    if kind == "hubert":
        return hubert_pretrain_model(
            extractor_mode=extractor_mode, mask_prob=0.5, mask_selection="static", mask_other=0.0, mask_length=5,
            no_mask_overlap=False, mask_min_space=1, mask_channel_prob=0.0, mask_channel_selection="static",
            mask_channel_other=0.0, mask_channel_length=10, no_mask_channel_overlap=False, mask_channel_min_space=1,
            skip_masked=False, skip_nomask=False, num_classes=20, final_dim=16, feature_grad_mult=None, **COMMON,
        )
    raise ValueError(kind)


def adapter(**kwargs):
    from ssl_mi_callback.features.torchaudio import TorchaudioWav2Vec2Adapter

    return TorchaudioWav2Vec2Adapter(**kwargs)


@pytest.fixture(scope="module")
def subset(tiny_corpus):
    from ssl_mi_callback.data import load_heldout

    return load_heldout(tiny_corpus / "heldout.tsv")


def speech_batch(subset, count: int = 3, seconds: float = 1.5) -> torch.Tensor:
    """[count, seconds * 16000] real held-out speech (each utterance's start)."""
    length = int(seconds * 16000)
    usable = [u for u in subset.utterances if u.num_samples >= length][:count]
    assert len(usable) == count, "the tiny corpus has too few long utterances"
    return torch.stack([torch.from_numpy(u.waveform[:length]) for u in usable])


def span_masks(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    from ssl_mi_callback.views import MaskConfig, span_mask

    config = MaskConfig(mask_prob=0.4, mask_length=5, seed=seed)
    return torch.stack([span_mask(frames, config, f"utterance-{i}") for i in range(batch)])


def make_evaluator(subset, feature_adapter, **settings):
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator

    config = EvaluationConfig(**{"clusters": 8, "bootstrap": 50, "mask_length": 5, "layers": (1, 2), **settings})
    return Evaluator(config, subset, feature_adapter)


@pytest.mark.parametrize("kind", ["wav2vec2", "wavlm", "hubert"])
def test_layers_equal_torchaudio_extract_features_one_forward_per_view(kind, subset, one_torch_thread):
    model = tiny_torchaudio(kind).eval()
    wav2vec2 = model.wav2vec2 if kind == "hubert" else model
    ta = adapter()
    waveforms = speech_batch(subset)
    frames = ta.num_frames(model, waveforms.shape[1])
    calls = {"cnn": 0, "layers": [0, 0]}
    handles = [wav2vec2.feature_extractor.register_forward_hook(lambda *_: calls.__setitem__("cnn", calls["cnn"] + 1))]
    for index, layer in enumerate(wav2vec2.encoder.transformer.layers):
        handles.append(layer.register_forward_hook(lambda *_, i=index: calls["layers"].__setitem__(i, calls["layers"][i] + 1)))
    with torch.no_grad():
        reference, _ = wav2vec2.extract_features(waveforms)
        calls.update(cnn=0, layers=[0, 0])
        unmasked = ta.extract(model, waveforms, [1, 2])
        assert calls == {"cnn": 1, "layers": [1, 1]}
        calls.update(cnn=0, layers=[0, 0])
        masked_view, unmasked_view = ta.extract_views(model, waveforms, span_masks(3, frames), [1, 2])
    for handle in handles:
        handle.remove()
    feature_space = kind == "hubert"  # the only one with a mask embedding of its own
    assert ta.mask_placement_for(model) == ("feature" if feature_space else "waveform")
    # one forward per view for every layer; the CNN once for both views in feature space
    assert calls == {"cnn": 1 if feature_space else 2, "layers": [2, 2]}
    assert ta.num_layers(model) == 2 and frames == reference[0].shape[1] == 74
    for layer in (1, 2):
        assert unmasked[layer].shape == (3, frames, 32)
        torch.testing.assert_close(unmasked[layer], reference[layer - 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(unmasked_view[layer], reference[layer - 1], atol=1e-5, rtol=0)
        assert (masked_view[layer] - unmasked_view[layer]).abs().amax() > 1e-3  # the mask changed something


def test_num_frames_and_frame_geometry_follow_the_conv_layers(one_torch_thread):
    model = tiny_torchaudio("wav2vec2").eval()
    ta = adapter()
    assert ta.frame_geometry(model) == (320, 400)
    for num_samples in (399, 400, 719, 720, 8000, 16399):
        expected = 0 if num_samples < 400 else (num_samples - 400) // 320 + 1
        assert ta.num_frames(model, num_samples) == expected
        if expected:
            with torch.no_grad():
                features, _ = model.feature_extractor(torch.zeros(1, num_samples), None)
            assert features.shape[1] == expected


def test_waveform_masking_zeroes_exactly_the_masked_frames_samples(subset, one_torch_thread):
    """No mask embedding: the masked view is the model's own forward on audio whose masked frames'
    samples [t*320, t*320+400) are zero; with a time-local extractor (layer_norm mode), CNN frames
    whose samples were not touched are unchanged and frames inside a masked span changed."""
    model = tiny_torchaudio("wav2vec2", extractor_mode="layer_norm").eval()
    ta = adapter()
    assert ta.mask_placement == "waveform" and ta.mask_placement_for(model) == "waveform"
    waveforms = speech_batch(subset, count=2)
    frames = ta.num_frames(model, waveforms.shape[1])
    mask = span_masks(2, frames, seed=3)
    expected_zero = torch.zeros_like(waveforms, dtype=torch.bool)
    for b in range(2):
        for t in mask[b].nonzero().flatten().tolist():
            expected_zero[b, t * 320 : t * 320 + 400] = True
    masked_audio = ta.mask_waveforms(model, waveforms, mask)
    assert torch.equal(masked_audio == 0, expected_zero | (waveforms == 0))
    assert torch.equal(masked_audio[~expected_zero], waveforms[~expected_zero])
    with torch.no_grad():
        masked_view, unmasked_view = ta.extract_views(model, waveforms, mask, [1, 2])
        reference_masked, _ = model.extract_features(masked_audio)
        cnn_masked, _ = model.feature_extractor(masked_audio, None)
        cnn_clean, _ = model.feature_extractor(waveforms, None)
    for layer in (1, 2):
        torch.testing.assert_close(masked_view[layer], reference_masked[layer - 1], atol=1e-5, rtol=0)
    untouched = torch.stack([
        torch.tensor([not expected_zero[b, t * 320 : t * 320 + 400].any() for t in range(frames)]) for b in range(2)
    ])
    assert untouched.any() and (~untouched).any()
    torch.testing.assert_close(cnn_masked[untouched], cnn_clean[untouched], atol=1e-5, rtol=0)
    silent = torch.stack([  # generated speech has stretches of digital silence, which zeroing cannot change
        torch.tensor([not waveforms[b, t * 320 : t * 320 + 400].any() for t in range(frames)]) for b in range(2)
    ])
    changed = mask & ~silent
    assert changed.sum() > 10
    assert ((cnn_masked[changed] - cnn_clean[changed]).abs().amax(dim=-1) > 1e-4).all()


def test_hubert_masked_view_is_the_pretraining_forward_with_the_same_mask(subset, one_torch_thread):
    """HuBERTPretrainModel's own forward (mask embedding after the feature projection, before the
    positional conv) with its own random mask gives our masked view under that mask."""
    model = tiny_torchaudio("hubert").eval()
    ta = adapter()
    waveforms = speech_batch(subset, count=2)
    frames = ta.num_frames(model, waveforms.shape[1])
    captured = {}
    handles = [
        model.mask_generator.register_forward_hook(lambda _m, _i, out: captured.__setitem__("mask", out[1].clone())),
        model.wav2vec2.encoder.transformer.register_forward_hook(lambda _m, _i, out: captured.__setitem__("x", out)),
    ]
    with torch.no_grad():
        model(waveforms, torch.zeros(2, frames, dtype=torch.long))
        masked_view, unmasked_view = ta.extract_views(model, waveforms, captured["mask"], [1, 2])
    for handle in handles:
        handle.remove()
    assert captured["mask"].any() and (~captured["mask"]).any()
    # post-LN encoder: the transformer's output is the last block's output
    torch.testing.assert_close(masked_view[2], captured["x"], atol=1e-5, rtol=0)
    assert (masked_view[2] - unmasked_view[2]).abs().amax() > 1e-3


@pytest.mark.parametrize("kind", ["wav2vec2", "wavlm", "hubert"])
def test_evaluator_gives_a_finite_bound(kind, subset, one_torch_thread):
    model = tiny_torchaudio(kind)
    evaluator = make_evaluator(subset, adapter())
    evaluator.check_model(model)
    record = evaluator.evaluate(model)
    assert record["status"] == "ok" and record["settings"]["adapter"] == "torchaudio"
    for key in ("mi_bits", "mi_bits_l1", "mi_bits_l2", "h_c_bits_l2", "ce_bits_l2", "mi_ci95_low_l2"):
        assert math.isfinite(record["metrics"][key]), key
    assert record["metrics"]["mi_bits"] == record["metrics"]["mi_given_position_bits_l2"]
    assert record["metrics"]["h_c_bits_l2"] > 1.0  # 8 clusters actually used


def test_bad_models_and_mask_embeddings_get_one_line_errors(one_torch_thread):
    from ssl_mi_callback.features import UnsupportedModelError
    from ssl_mi_callback.features.base import FeatureAdapter

    model = tiny_torchaudio("wav2vec2")
    assert isinstance(adapter(), FeatureAdapter)
    with pytest.raises(UnsupportedModelError, match="not a torchaudio Wav2Vec2Model or HuBERTPretrainModel"):
        adapter().check(torch.nn.Linear(4, 4))
    with pytest.raises(UnsupportedModelError, match="encoder_embed_dim is 32"):
        adapter(mask_embedding=torch.zeros(64)).check(model)
    with pytest.raises(ValueError, match="mask_embedding must be a 1-d tensor"):
        adapter(mask_embedding=torch.zeros(1, 32))
    given = adapter(mask_embedding=torch.zeros(32))
    given.check(model)
    assert given.mask_placement == "feature" and given.mask_placement_for(model) == "feature"
    assert type(given).mask_placement == "waveform"  # the class default: a plain Wav2Vec2Model


def tiny_fairseq_wav2vec2(seed: int = 0) -> torch.nn.Module:
    """tests/test_evaluator.py::tiny_wav2vec2, but with 32 conv channels: fairseq only builds the feature
    projection (which torchaudio's converter reads) when the conv width differs from encoder_embed_dim."""
    require("fairseq", "torchaudio")
    import ssl_mi_callback.integrations.fairseq  # noqa: F401  (compat before fairseq)
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2", encoder_layers=2,
        encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=2, final_dim=32, conv_pos=16,
        conv_pos_groups=4, quantize_targets=False,
    )
    torch.manual_seed(seed)
    return Wav2Vec2Model(config)


@pytest.mark.fairseq
def test_fairseq_model_converted_to_torchaudio_gives_the_same_features_and_bound(subset, one_torch_thread):
    """import_fairseq_model drops mask_emb: unmasked features must match as they are; with the fairseq
    mask_emb given to the adapter, the masked views and the evaluator's bound must match too."""
    from torchaudio.models.wav2vec2.utils import import_fairseq_model

    from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter

    fairseq_model = tiny_fairseq_wav2vec2().eval()
    converted = import_fairseq_model(fairseq_model).eval()
    fairseq_adapter = FairseqMaskedPredictionAdapter()
    plain = adapter()
    with_mask_emb = adapter(mask_embedding=fairseq_model.mask_emb)
    assert plain.mask_placement_for(converted) == "waveform"
    assert with_mask_emb.mask_placement_for(converted) == "feature" == fairseq_adapter.mask_placement

    waveforms = speech_batch(subset)
    frames = plain.num_frames(converted, waveforms.shape[1])
    assert frames == fairseq_adapter.num_frames(fairseq_model, waveforms.shape[1])
    mask = span_masks(3, frames)
    with torch.no_grad():
        expected = fairseq_adapter.extract(fairseq_model, waveforms, [1, 2])
        got = plain.extract(converted, waveforms, [1, 2])
        expected_views = fairseq_adapter.extract_views(fairseq_model, waveforms, mask, [1, 2])
        got_views = with_mask_emb.extract_views(converted, waveforms, mask, [1, 2])
    for layer in (1, 2):
        torch.testing.assert_close(got[layer], expected[layer], atol=1e-4, rtol=0)
        for view in (0, 1):
            torch.testing.assert_close(got_views[view][layer], expected_views[view][layer], atol=1e-4, rtol=0)

    # short spans (2 frames, 30%) on raw features: a random-init model then gives a clearly positive
    # bound (with 5-frame spans, or centred per utterance, it is 0 for both, which would make the
    # comparison empty)
    settings = dict(mask_length=2, mask_prob=0.3, centering="none")
    fairseq_record = make_evaluator(subset, fairseq_adapter, **settings).evaluate(fairseq_model)
    torchaudio_record = make_evaluator(subset, with_mask_emb, **settings).evaluate(converted)
    assert fairseq_record["metrics"]["mi_bits_l1"] > 0.01 and fairseq_record["metrics"]["mi_bits_l2"] > 0.01
    for key in ("mi_bits", "mi_bits_l1", "mi_bits_l2", "h_c_bits_l2", "ce_bits_l1", "ce_bits_l2"):
        assert torchaudio_record["metrics"][key] == pytest.approx(fairseq_record["metrics"][key], abs=1e-3), key
    assert torchaudio_record["subset"]["frames"] == fairseq_record["subset"]["frames"]
