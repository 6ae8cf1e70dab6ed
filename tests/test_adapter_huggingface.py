"""The Hugging Face adapter on tiny, randomly initialised transformers models (wav2vec 2.0, HuBERT,
WavLM, data2vec audio; post-norm and stable-layer-norm) and real generated speech: its features are
the model's own ``output_hidden_states``, its masked view is the model's own forward with
``mask_time_indices``, and the real evaluator scores every family."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import require

FAMILIES = ("wav2vec2", "wav2vec2_stable", "hubert", "hubert_stable", "wavlm", "wavlm_stable", "data2vec_audio")

TINY = dict(
    conv_dim=(32,) * 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    codevector_dim=32, proj_codevector_dim=32, num_codevectors_per_group=16, vocab_size=32,
)


def tiny_config(family: str, **changes):
    """A tiny config (7 CNN layers of 32 channels, 2 transformer layers of dim 32) of ``family``."""
    require("transformers")
    import transformers

    settings = dict(TINY)
    if family.endswith("_stable"):  # large-model style: pre-norm blocks + a final encoder layer norm
        settings.update(do_stable_layer_norm=True, feat_extract_norm="layer")
    name = family.removesuffix("_stable")
    if name == "wavlm":
        settings.update(num_buckets=16, max_bucket_distance=64)
    if name == "data2vec_audio":  # here num_conv_pos_embeddings counts positional conv layers
        settings.update(num_conv_pos_embeddings=2, conv_pos_kernel_size=16)
    settings.update(changes)
    config_class = {"wav2vec2": transformers.Wav2Vec2Config, "hubert": transformers.HubertConfig,
                    "wavlm": transformers.WavLMConfig, "data2vec_audio": transformers.Data2VecAudioConfig}[name]
    known = config_class().to_dict()
    return config_class(**{key: value for key, value in settings.items() if key in known or key in changes})


def tiny_model(family: str = "wav2vec2", model_class: str | None = None, seed: int = 0, **changes) -> torch.nn.Module:
    """A randomly initialised tiny model; ``model_class`` picks a wrapper (default: the bare base model)."""
    import transformers

    default = {"wav2vec2": "Wav2Vec2Model", "hubert": "HubertModel", "wavlm": "WavLMModel",
               "data2vec_audio": "Data2VecAudioModel"}[family.removesuffix("_stable")]
    torch.manual_seed(seed)
    return getattr(transformers, model_class or default)(tiny_config(family, **changes))


@pytest.fixture(scope="module")
def subset(tiny_corpus):
    from ssl_mi_callback.data import load_heldout

    return load_heldout(tiny_corpus / "heldout.tsv")


@pytest.fixture(scope="module")
def two_waveforms(subset) -> torch.Tensor:
    """Two held-out utterances cropped to a common length: a real batch [2, S]."""
    first, second = subset.utterances[:2]
    length = min(len(first.waveform), len(second.waveform), 32000)
    return torch.stack([torch.from_numpy(u.waveform[:length]) for u in (first, second)])


def frame_masks(adapter, model, waveforms: torch.Tensor) -> torch.Tensor:
    from ssl_mi_callback.views import MaskConfig, span_mask

    frames = adapter.num_frames(model, waveforms.shape[1])
    config = MaskConfig(mask_prob=0.5, mask_length=5, seed=0)
    return torch.stack([span_mask(frames, config, f"utt{i}") for i in range(waveforms.shape[0])])


@pytest.mark.parametrize("family", FAMILIES)
def test_views_equal_the_models_own_forward(family, two_waveforms, one_torch_thread):
    """SpecAugment on (time and feature masking); in eval mode the model draws no random mask, our unmasked
    view is its output_hidden_states and our masked view is its forward with mask_time_indices=our mask."""
    from ssl_mi_callback.features.huggingface import HuggingFaceAdapter

    model = tiny_model(family, mask_time_prob=0.5, mask_time_length=5, mask_feature_prob=0.3).eval()
    adapter = HuggingFaceAdapter()
    adapter.check(model)
    assert adapter.num_layers(model) == 2
    mask = frame_masks(adapter, model, two_waveforms)
    _, numpy_keys, numpy_position, *_ = np.random.get_state()
    with torch.no_grad():
        reference = model(two_waveforms, output_hidden_states=True)
        again = model(two_waveforms, output_hidden_states=True)
        reference_masked = model(two_waveforms, mask_time_indices=mask, output_hidden_states=True)
        extracted = adapter.extract(model, two_waveforms, [1, 2])
        masked, unmasked = adapter.extract_views(model, two_waveforms, mask, [2, 1])
    _, keys_after, position_after, *_ = np.random.get_state()
    assert position_after == numpy_position and np.array_equal(keys_after, numpy_keys)  # no random mask drawn in eval
    assert torch.equal(reference.last_hidden_state, again.last_hidden_state)
    hidden_states = reference.hidden_states
    assert len(hidden_states) == 3  # block input, then the output of each block
    for layer in (1, 2):
        assert extracted[layer].shape == (2, mask.shape[1], 32)
        torch.testing.assert_close(extracted[layer], hidden_states[layer], atol=1e-5, rtol=0)
        torch.testing.assert_close(unmasked[layer], hidden_states[layer], atol=1e-5, rtol=0)
        torch.testing.assert_close(masked[layer], reference_masked.hidden_states[layer], atol=1e-5, rtol=0)
    assert not torch.allclose(masked[2][mask], unmasked[2][mask])  # the mask embedding went in
    encoder = model.encoder
    if family.endswith("_stable"):  # layer L is the last block's output; last_hidden_state adds the final norm
        assert not torch.allclose(reference.last_hidden_state, extracted[2])
        torch.testing.assert_close(reference.last_hidden_state, encoder.layer_norm(extracted[2]), atol=1e-5, rtol=0)
    else:  # post-norm: every block ends with its own layer norm, layer L is last_hidden_state
        torch.testing.assert_close(reference.last_hidden_state, extracted[2], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "family, model_class, attribute",
    [("wav2vec2", "Wav2Vec2ForPreTraining", "wav2vec2"), ("wav2vec2", "Wav2Vec2ForCTC", "wav2vec2"),
     ("hubert", "HubertForCTC", "hubert"), ("wavlm", "WavLMForCTC", "wavlm"),
     ("data2vec_audio", "Data2VecAudioForCTC", "data2vec_audio")],
)
def test_wrappers_are_scored_through_their_base_model(family, model_class, attribute, two_waveforms, one_torch_thread):
    from ssl_mi_callback.features.huggingface import HuggingFaceAdapter, find_base_model

    wrapper = tiny_model(family, model_class).eval()
    adapter = HuggingFaceAdapter()
    adapter.check(wrapper)
    assert find_base_model(wrapper) is getattr(wrapper, attribute)
    with torch.no_grad():
        reference = getattr(wrapper, attribute)(two_waveforms, output_hidden_states=True).hidden_states
        extracted = adapter.extract(wrapper, two_waveforms, [2, 1])
    for layer in (1, 2):
        torch.testing.assert_close(extracted[layer], reference[layer], atol=1e-5, rtol=0)


def test_num_frames_is_the_models_frame_count(one_torch_thread):
    from ssl_mi_callback.features.huggingface import HuggingFaceAdapter

    adapter = HuggingFaceAdapter()
    standard = tiny_model("wav2vec2").eval()
    short_cnn = tiny_model("hubert", conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2)).eval()
    for model in (standard, short_cnn):
        for num_samples in (400, 401, 1999, 16000, 16123):
            with torch.no_grad():
                frames = model(torch.zeros(1, num_samples)).last_hidden_state.shape[1]
            assert adapter.num_frames(model, num_samples) == frames, (type(model).__name__, num_samples)
            assert frames == int(model._get_feat_extract_output_lengths(num_samples))
        assert adapter.num_frames(model, 30) == 0  # shorter than the receptive field


def test_mask_goes_in_even_when_spec_augment_is_off(two_waveforms, one_torch_thread):
    """With config.apply_spec_augment=False the model's forward ignores mask_time_indices; the adapter
    still replaces the masked frames by masked_spec_embed at the same place."""
    from ssl_mi_callback.features.huggingface import HuggingFaceAdapter

    model = tiny_model("wav2vec2", apply_spec_augment=False).eval()
    adapter = HuggingFaceAdapter()
    mask = frame_masks(adapter, model, two_waveforms)
    with torch.no_grad():
        ignored = model(two_waveforms, mask_time_indices=mask).last_hidden_state
        masked, unmasked = adapter.extract_views(model, two_waveforms, mask, [2])
        model.config.apply_spec_augment = True
        honoured = model(two_waveforms, mask_time_indices=mask).last_hidden_state
    torch.testing.assert_close(ignored, unmasked[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(honoured, masked[2], atol=1e-5, rtol=0)


def test_normalize_feeds_what_the_feature_extractor_gives_the_model(two_waveforms, one_torch_thread):
    """normalize=True: each utterance at zero mean and unit variance, as Wav2Vec2FeatureExtractor(do_normalize=True)."""
    import transformers

    from ssl_mi_callback.features.huggingface import HuggingFaceAdapter

    model = tiny_model("wav2vec2").eval()
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
    prepared = extractor(list(two_waveforms.numpy()), sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():
        reference = model(prepared, output_hidden_states=True).hidden_states
        normalized = HuggingFaceAdapter(normalize=True).extract(model, two_waveforms * 0.3, [1, 2])
        raw = HuggingFaceAdapter().extract(model, two_waveforms, [2])
    for layer in (1, 2):
        torch.testing.assert_close(normalized[layer], reference[layer], atol=1e-4, rtol=0)
    assert not torch.allclose(raw[2], reference[2], atol=1e-3)


@pytest.mark.parametrize("family", ("wav2vec2", "hubert", "wavlm", "data2vec_audio"))
def test_evaluator_scores_every_family(family, subset, one_torch_thread):
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features.huggingface import HuggingFaceAdapter

    model = tiny_model(family).train()
    evaluator = Evaluator(EvaluationConfig(layers=(1, -1), clusters=8, bootstrap=50, mask_length=5), subset, HuggingFaceAdapter())
    evaluator.check_model(model)
    record = evaluator.evaluate(model)
    assert record["status"] == "ok" and record["settings"]["adapter"] == "huggingface"
    assert set(record["layers"]) == {"1", "2"}
    for key in ("mi_bits", "mi_bits_l1", "mi_bits_l2", "h_c_bits_l2", "ce_bits_l2"):
        assert math.isfinite(record["metrics"][key]), key
    assert record["metrics"]["mi_bits"] == record["metrics"]["mi_given_position_bits_l2"]
    assert model.training  # the evaluator restored the mode


def test_unsupported_models_get_one_line_reasons(two_waveforms):
    require("transformers")
    import transformers

    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features import UnsupportedModelError
    from ssl_mi_callback.features.huggingface import HuggingFaceAdapter

    adapter = HuggingFaceAdapter()
    with pytest.raises(UnsupportedModelError, match="Linear is not a Hugging Face Wav2Vec2Model"):
        adapter.check(torch.nn.Linear(4, 4))
    conformer = transformers.Wav2Vec2ConformerModel(transformers.Wav2Vec2ConformerConfig(
        conv_dim=(32,) * 7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    ))
    with pytest.raises(UnsupportedModelError, match="Wav2Vec2ConformerModel is not a Hugging Face"):
        adapter.check(conformer)
    without_mask_embedding = tiny_model("wav2vec2", mask_time_prob=0.0, mask_feature_prob=0.0)
    with pytest.raises(UnsupportedModelError, match="no masked_spec_embed .* build the model with mask_time_prob > 0"):
        adapter.check(without_mask_embedding)
    model = tiny_model("hubert").eval()
    with pytest.raises(ValueError, match="frame_mask has shape"):
        adapter.extract_views(model, two_waveforms, torch.zeros(2, 3, dtype=torch.bool), [1])
    with pytest.raises(ValueError, match=r"layers \[3\] do not exist"):
        adapter.extract(model, two_waveforms, [3])


def test_layerdrop_in_training_mode_is_refused(two_waveforms, one_torch_thread):
    from ssl_mi_callback.features.huggingface import HuggingFaceAdapter

    model = tiny_model("wav2vec2", layerdrop=1.0).train()
    with pytest.raises(RuntimeError, match=r"layers \[1, 2\] did not run .* eval mode"):
        HuggingFaceAdapter().extract(model, two_waveforms, [1, 2])
    with torch.no_grad():
        assert HuggingFaceAdapter().extract(model.eval(), two_waveforms, [1, 2])[2].shape[0] == 2
