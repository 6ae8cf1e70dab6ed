"""Hugging Face ``transformers`` masked-prediction speech models: ``Wav2Vec2Model``, ``HubertModel``,
``WavLMModel`` and ``Data2VecAudioModel``, bare or inside a task wrapper (``*ForPreTraining``,
``*ForCTC``, ``*ForSequenceClassification``, ...: the base model is found at ``.wav2vec2``,
``.hubert``, ``.wavlm`` or ``.data2vec_audio``).

The model's own ``forward`` is ``feature_extractor`` (CNN) -> ``feature_projection`` ->
``_mask_hidden_states`` (``masked_spec_embed`` at ``mask_time_indices``, plus SpecAugment when
training) -> ``encoder``. The adapter runs the same sub-modules in the same order, so the CNN runs
once for both views, and puts *our* fixed frame mask in with the model's ``masked_spec_embed``
exactly where ``_mask_hidden_states`` does (``hidden[mask] = masked_spec_embed``). It does not call
``_mask_hidden_states`` itself: that method ignores the given mask when
``config.apply_spec_augment`` is false and draws random SpecAugment time/feature masks when the
model is in training mode; the adapter never draws a random mask.

What "layer k" means: the output of transformer block k (1-based), taken with a forward hook on
``encoder.layers[k-1]``, the way ``transformers`` 5.x records ``output_hidden_states``
(``hidden_states[k]``; ``hidden_states[0]`` is the block input). In stable-layer-norm models
(``config.do_stable_layer_norm=True``: wav2vec 2.0 large / HuBERT large style, pre-norm blocks) the
encoder applies one more ``encoder.layer_norm`` after the last block: ``last_hidden_state`` is that
normed output, layer L is not (transformers 4.x returned the normed one as ``hidden_states[-1]``).
In post-norm models (base style) every block ends with its own layer norm and layer L equals
``last_hidden_state``. fairseq's ``layer_results`` (:mod:`.fairseq`) follow the same convention.

The encoder always runs all its blocks (a stop after the last requested one would have to abort a
forward, which sharded wrappers such as DeepSpeed ZeRO-3 do not survive). The waveforms are fed as
they are unless ``normalize=True``: then each is scaled to zero mean and unit variance first, as
``Wav2Vec2FeatureExtractor(do_normalize=True)`` does for the models trained that way. This module
imports ``transformers`` only to recognise the model classes.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .base import UnsupportedModelError

BASE_MODEL_ATTRIBUTES = ("wav2vec2", "hubert", "wavlm", "data2vec_audio")
"""Where a task wrapper keeps its base model (each family's ``base_model_prefix``)."""

SUPPORTED_MODELS = ("Wav2Vec2Model", "HubertModel", "WavLMModel", "Data2VecAudioModel")


def _supported_classes() -> tuple[type, ...]:
    try:
        import transformers
    except ImportError:
        raise UnsupportedModelError(
            "transformers is not installed, so this cannot be a Hugging Face model: "
            "pip install 'ssl_mi_callback[huggingface]' or use an adapter for the model's family"
        ) from None
    return tuple(getattr(transformers, name) for name in SUPPORTED_MODELS)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def find_base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The ``Wav2Vec2Model`` / ``HubertModel`` / ``WavLMModel`` / ``Data2VecAudioModel`` inside ``model``."""
    model = _unwrap(model)
    supported = _supported_classes()
    if isinstance(model, supported):
        return model
    for attribute in BASE_MODEL_ATTRIBUTES:
        inner = getattr(model, attribute, None)
        if isinstance(inner, supported):
            return inner
    raise UnsupportedModelError(
        f"{type(model).__name__} is not a Hugging Face {', '.join(SUPPORTED_MODELS)} (nor a wrapper holding one "
        f"at .{', .'.join(BASE_MODEL_ATTRIBUTES)}); use an adapter for its family"
    )


class HuggingFaceAdapter:
    """transformers wav2vec 2.0 / HuBERT / WavLM / data2vec audio; layers are transformer blocks 1..L."""

    name = "huggingface"
    default_views = "masked"
    mask_placement = "feature"

    def __init__(self, normalize: bool = False) -> None:
        self.normalize = bool(normalize)

    def check(self, model: torch.nn.Module) -> None:
        base = find_base_model(model)
        if getattr(base, "masked_spec_embed", None) is None:
            raise UnsupportedModelError(
                f"{type(base).__name__} has no masked_spec_embed (transformers creates it only when "
                f"config.mask_time_prob > 0 or config.mask_feature_prob > 0); build the model with mask_time_prob > 0"
            )
        if len(base.encoder.layers) == 0:
            raise UnsupportedModelError(f"{type(base).__name__} has no transformer layers (config.num_hidden_layers=0)")

    def num_layers(self, model: torch.nn.Module) -> int:
        return len(find_base_model(model).encoder.layers)

    def num_frames(self, model: torch.nn.Module, num_samples: int) -> int:
        """``F = floor((S - kernel) / stride) + 1`` per CNN layer of ``config.conv_kernel`` / ``conv_stride``."""
        config = find_base_model(model).config
        frames = num_samples
        for kernel, stride in zip(config.conv_kernel, config.conv_stride):
            frames = max((frames - kernel) // stride + 1, 0)
        return frames

    def extract(self, model: torch.nn.Module, waveforms: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        base = find_base_model(model)
        return self._encode(base, self._frontend(base, waveforms), layers)

    def extract_views(
        self,
        model: torch.nn.Module,
        waveforms: torch.Tensor,
        frame_mask: torch.Tensor,
        layers: Sequence[int],
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        base = find_base_model(model)
        hidden = self._frontend(base, waveforms)  # CNN + projection once for both views
        if tuple(frame_mask.shape) != tuple(hidden.shape[:2]):
            raise ValueError(
                f"frame_mask has shape {tuple(frame_mask.shape)} but the model yields {tuple(hidden.shape[:2])} "
                f"(batch, frames); build it with num_frames(model, {waveforms.shape[-1]})"
            )
        mask = frame_mask.to(device=hidden.device, dtype=torch.bool).unsqueeze(-1)
        masked = torch.where(mask, base.masked_spec_embed.to(hidden.dtype), hidden)
        return self._encode(base, masked, layers), self._encode(base, hidden, layers)

    def _frontend(self, base: torch.nn.Module, waveforms: torch.Tensor) -> torch.Tensor:
        """feature_extractor -> feature_projection: the encoder input [B, F, D] before any masking."""
        parameter = next(base.parameters())
        source = waveforms.to(device=parameter.device, dtype=torch.float32)
        if self.normalize:  # x' = (x - mean) / sqrt(var + 1e-7) per utterance, as the feature extractor
            variance = source.var(dim=1, unbiased=False, keepdim=True)
            source = (source - source.mean(dim=1, keepdim=True)) / torch.sqrt(variance + 1e-7)
        source = source.to(parameter.dtype)  # fp16/bf16 weights
        features = base.feature_extractor(source).transpose(1, 2)
        projected = base.feature_projection(features)
        # wav2vec2 / WavLM / data2vec return (hidden, normed CNN features); HuBERT returns hidden only
        return projected[0] if isinstance(projected, tuple) else projected

    @staticmethod
    def _encode(base: torch.nn.Module, hidden: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Run the encoder; capture the outputs of the requested blocks with forward hooks."""
        num_layers = len(base.encoder.layers)
        outside = [layer for layer in layers if not 1 <= layer <= num_layers]
        if outside:
            raise ValueError(f"layers {outside} do not exist: the model has transformer layers 1..{num_layers}")
        captured: dict[int, torch.Tensor] = {}

        def capture(layer: int):
            def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
                captured[layer] = output[0] if isinstance(output, tuple) else output  # WavLM: (hidden, position_bias)

            return hook

        handles = [base.encoder.layers[layer - 1].register_forward_hook(capture(layer)) for layer in set(layers)]
        try:
            base.encoder(hidden, attention_mask=None)
        finally:
            for handle in handles:
                handle.remove()
        skipped = sorted(set(layers) - set(captured))
        if skipped:
            raise RuntimeError(
                f"transformer layers {skipped} did not run (LayerDrop skips layers in training mode); call the "
                f"adapter with the model in eval mode (Evaluator.evaluate does)"
            )
        return {layer: captured[layer] for layer in layers}
