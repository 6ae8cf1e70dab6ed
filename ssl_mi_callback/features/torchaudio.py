"""torchaudio masked-prediction models: ``torchaudio.models.Wav2Vec2Model`` (wav2vec 2.0, HuBERT and
WavLM, from ``wav2vec2_model`` / ``hubert_model`` / ``wavlm_model`` or the pretrained bundles) and
``HuBERTPretrainModel`` (``hubert_pretrain_model``; its ``.wav2vec2`` is scored).

Layers are the transformer blocks 1..L, taken one by one from the encoder
(``Transformer.get_intermediate_outputs``, the code behind torchaudio's own ``extract_features``),
so one forward per view yields every requested layer; as there, block outputs are taken before the
final layer norm that pre-LN models apply after the last block.

Where the masked view is masked (:meth:`TorchaudioWav2Vec2Adapter.mask_placement_for` says which,
per model):

- ``"feature"``: when a mask embedding exists -- ``HuBERTPretrainModel.mask_generator.mask_embedding``,
  or a ``mask_embedding`` tensor given to the adapter (e.g. the ``mask_emb`` of a fairseq model
  converted with ``torchaudio.models.wav2vec2.utils.import_fairseq_model``, which drops it). It
  replaces the masked frames exactly where pretraining puts it: after the feature projection (layer
  norm, linear, dropout), before the transformer's convolutional positional embedding. The CNN
  feature extractor and the projection run once for both views.
- ``"waveform"``: a plain ``Wav2Vec2Model`` has no mask embedding, so the samples under the masked
  frames are set to zero. Frame t covers samples ``[t * hop, t * hop + receptive_field)``, with
  ``hop`` = the product of the conv strides and ``receptive_field`` = the conv stack's receptive
  field (320 and 400 samples for the standard wav2vec 2.0 extractor). Neighbouring frames'
  receptive fields overlap these samples, so the CNN features of up to ``ceil(receptive_field /
  hop) - 1`` unmasked frames on each side of a span change too, and an extractor that normalises
  over time (``extractor_mode="group_norm"``) changes every frame a little; each view then runs
  its own CNN forward. Bounds from the two placements are different quantities: compare
  checkpoints only under one placement (the result's ``settings`` name the adapter).

This module does not import torchaudio: it only touches the model object it is given.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..views import zero_masked_frames
from .base import UnsupportedModelError


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP wrappers
        model = model.module
    return model


def _is_wav2vec2(model: object) -> bool:
    encoder = getattr(model, "encoder", None)
    transformer = getattr(encoder, "transformer", None)
    return (
        hasattr(getattr(model, "feature_extractor", None), "conv_layers")
        and getattr(encoder, "feature_projection", None) is not None
        and hasattr(transformer, "layers")
        and hasattr(transformer, "get_intermediate_outputs")
    )


def _conv_layers(wav2vec2: torch.nn.Module) -> list[torch.nn.Conv1d]:
    return [m for m in wav2vec2.feature_extractor.modules() if isinstance(m, torch.nn.Conv1d)]


class TorchaudioWav2Vec2Adapter:
    """torchaudio wav2vec 2.0 / HuBERT / WavLM (``Wav2Vec2Model``) and ``HuBERTPretrainModel``.

    ``mask_embedding`` (optional, shape [encoder_embed_dim]): a mask embedding to use in feature
    space for models that have none of their own, e.g. the ``mask_emb`` of the fairseq model a
    ``Wav2Vec2Model`` was converted from; it takes precedence over a ``HuBERTPretrainModel``'s own.
    ``mask_placement`` is ``"feature"`` when one is given, else the class default ``"waveform"``
    (what a plain ``Wav2Vec2Model`` gets); :meth:`mask_placement_for` gives the placement per model.
    """

    name = "torchaudio"
    default_views = "masked"
    mask_placement = "waveform"

    def __init__(self, mask_embedding: Optional[torch.Tensor] = None) -> None:
        if mask_embedding is not None:
            if not isinstance(mask_embedding, torch.Tensor) or mask_embedding.dim() != 1:
                raise ValueError(
                    "mask_embedding must be a 1-d tensor [encoder_embed_dim] (e.g. a fairseq model's mask_emb), "
                    f"got {type(mask_embedding).__name__}"
                    + (f" of shape {tuple(mask_embedding.shape)}" if isinstance(mask_embedding, torch.Tensor) else "")
                )
            mask_embedding = mask_embedding.detach().clone()
            self.mask_placement = "feature"
        self.mask_embedding = mask_embedding

    # --- the model's parts ----------------------------------------------------------------------
    @staticmethod
    def _wav2vec2(model: torch.nn.Module) -> torch.nn.Module:
        model = _unwrap(model)
        inner = getattr(model, "wav2vec2", None)
        return inner if inner is not None and getattr(model, "mask_generator", None) is not None else model

    def _mask_embedding(self, model: torch.nn.Module) -> Optional[torch.Tensor]:
        if self.mask_embedding is not None:
            return self.mask_embedding
        mask_generator = getattr(_unwrap(model), "mask_generator", None)
        return getattr(mask_generator, "mask_embedding", None)

    def mask_placement_for(self, model: torch.nn.Module) -> str:
        """``"feature"`` if ``model`` is masked with a mask embedding (given or its own), else ``"waveform"``."""
        return "feature" if self._mask_embedding(model) is not None else "waveform"

    # --- the protocol ---------------------------------------------------------------------------
    def check(self, model: torch.nn.Module) -> None:
        wav2vec2 = self._wav2vec2(model)
        if not _is_wav2vec2(wav2vec2):
            raise UnsupportedModelError(
                f"{type(_unwrap(model)).__name__} is not a torchaudio Wav2Vec2Model or HuBERTPretrainModel "
                "(needs feature_extractor.conv_layers and encoder.feature_projection/transformer); "
                "use an adapter for its family"
            )
        if not _conv_layers(wav2vec2):
            raise UnsupportedModelError("the model's feature_extractor has no Conv1d layers; cannot map samples to frames")
        embedding = self._mask_embedding(model)
        if embedding is not None:
            width = wav2vec2.encoder.feature_projection.projection.out_features
            if embedding.shape != (width,):
                raise UnsupportedModelError(
                    f"mask_embedding has shape {tuple(embedding.shape)} but the model's encoder_embed_dim is {width}; "
                    "give the mask embedding of the model these weights came from"
                )

    def num_layers(self, model: torch.nn.Module) -> int:
        return len(self._wav2vec2(model).encoder.transformer.layers)

    def num_frames(self, model: torch.nn.Module, num_samples: int) -> int:
        frames = num_samples
        for conv in _conv_layers(self._wav2vec2(model)):
            frames = (frames - conv.kernel_size[0]) // conv.stride[0] + 1
        return max(frames, 0)

    def frame_geometry(self, model: torch.nn.Module) -> tuple[int, int]:
        """(hop, receptive_field) in samples: frame t covers ``[t * hop, t * hop + receptive_field)``.

        ``hop = prod(s_i)``, ``receptive_field = k_1 + sum_{i>1} (k_i - 1) * prod_{j<i} s_j`` over the
        conv layers (kernel k_i, stride s_i), e.g. 320 and 400 for wav2vec 2.0's extractor.
        """
        hop, receptive_field = 1, 1
        for conv in _conv_layers(self._wav2vec2(model)):
            receptive_field += (conv.kernel_size[0] - 1) * hop
            hop *= conv.stride[0]
        return hop, receptive_field

    def mask_waveforms(self, model: torch.nn.Module, waveforms: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """A copy of ``waveforms`` [B, S] with the samples of every masked frame (``frame_mask`` [B, F]) set to 0."""
        hop, receptive_field = self.frame_geometry(model)
        batch, num_samples = waveforms.shape
        if frame_mask.shape != (batch, self.num_frames(model, num_samples)):
            raise ValueError(
                f"frame_mask has shape {tuple(frame_mask.shape)}, expected {(batch, self.num_frames(model, num_samples))} "
                f"for waveforms of shape {tuple(waveforms.shape)}"
            )
        return zero_masked_frames(waveforms, frame_mask, hop, receptive_field)

    def extract(self, model: torch.nn.Module, waveforms: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        wav2vec2 = self._wav2vec2(model)
        return self._encode(wav2vec2, self._frontend(wav2vec2, waveforms), layers)

    def extract_views(
        self,
        model: torch.nn.Module,
        waveforms: torch.Tensor,
        frame_mask: torch.Tensor,
        layers: Sequence[int],
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        wav2vec2 = self._wav2vec2(model)
        embedding = self._mask_embedding(model)
        if embedding is None:  # waveform domain: each view runs its own CNN forward
            masked_waveforms = self.mask_waveforms(model, waveforms, frame_mask)
            unmasked = self._encode(wav2vec2, self._frontend(wav2vec2, waveforms), layers)
            masked = self._encode(wav2vec2, self._frontend(wav2vec2, masked_waveforms), layers)
            return masked, unmasked
        features = self._frontend(wav2vec2, waveforms)  # once for both views
        mask = frame_mask.to(features.device).unsqueeze(-1)
        masked_features = torch.where(mask, embedding.to(device=features.device, dtype=features.dtype), features)
        return self._encode(wav2vec2, masked_features, layers), self._encode(wav2vec2, features, layers)

    # --- internals ------------------------------------------------------------------------------
    @staticmethod
    def _frontend(wav2vec2: torch.nn.Module, waveforms: torch.Tensor) -> torch.Tensor:
        """CNN features -> feature projection (layer norm, linear, dropout): the transformer's input [B, F, D]."""
        parameter = next(wav2vec2.parameters())
        source = waveforms.to(device=parameter.device, dtype=parameter.dtype)  # fp16/bf16 weights
        features, _ = wav2vec2.feature_extractor(source, None)
        return wav2vec2.encoder.feature_projection(features)

    @staticmethod
    def _encode(wav2vec2: torch.nn.Module, features: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        outputs = wav2vec2.encoder.transformer.get_intermediate_outputs(features, attention_mask=None, num_layers=max(layers))
        return {layer: outputs[layer - 1] for layer in layers}
