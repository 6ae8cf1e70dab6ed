"""fairseq masked-prediction models: wav2vec 2.0, HuBERT and data2vec audio (and any user-dir model
built the same way: ``feature_extractor`` -> ``layer_norm`` -> ``post_extract_proj`` -> ``mask_emb`` ->
``encoder`` returning per-layer results).

The views are made in feature space with the model's own mask embedding, exactly where pretraining
puts it, but with *our* fixed masks: wav2vec 2.0's ``forward`` ignores given mask indices when its
``mask_prob`` is 0 and draws random channel masks, and HuBERT's ``forward`` takes no mask indices, so
the adapter runs the model's own sub-modules in the order of their ``forward``. This module does not
import fairseq: it only touches the model object it is given.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .base import UnsupportedModelError

_REQUIRED = ("feature_extractor", "layer_norm", "mask_emb", "encoder")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP wrappers
        model = model.module
    return model


class FairseqMaskedPredictionAdapter:
    """wav2vec 2.0 / HuBERT / data2vec audio from fairseq 0.12.2; layers are transformer blocks 1..L."""

    name = "fairseq"
    default_views = "masked"
    mask_placement = "feature"

    def check(self, model: torch.nn.Module) -> None:
        model = _unwrap(model)
        missing = [attr for attr in _REQUIRED if getattr(model, attr, None) is None]
        if missing or not hasattr(model.encoder, "layers"):
            raise UnsupportedModelError(
                f"{type(model).__name__} is not a fairseq masked-prediction model "
                f"(missing {', '.join(missing) or 'encoder.layers'}); use an adapter for its family"
            )
        if getattr(model, "input_quantizer", None) is not None:
            raise UnsupportedModelError(
                "wav2vec 2.0 with quantize_input=true is not supported (its encoder input is quantized codes)"
            )

    def num_layers(self, model: torch.nn.Module) -> int:
        return len(_unwrap(model).encoder.layers)

    def num_frames(self, model: torch.nn.Module, num_samples: int) -> int:
        frames = num_samples
        for module in _unwrap(model).feature_extractor.modules():
            if isinstance(module, torch.nn.Conv1d):
                frames = (frames - module.kernel_size[0]) // module.stride[0] + 1
        return max(frames, 0)

    def _frontend(self, model: torch.nn.Module, waveforms: torch.Tensor) -> torch.Tensor:
        """CNN features -> layer norm -> projection: the context network's input [B, F, C]."""
        parameter = next(model.parameters())
        source = waveforms.to(device=parameter.device, dtype=parameter.dtype)  # fp16/bf16 weights
        features = model.layer_norm(model.feature_extractor(source).transpose(1, 2))
        if getattr(model, "post_extract_proj", None) is not None:
            features = model.post_extract_proj(features)
        return features

    def extract(self, model: torch.nn.Module, waveforms: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        model = _unwrap(model)
        return self._encode(model, self._frontend(model, waveforms), layers)

    def extract_views(
        self,
        model: torch.nn.Module,
        waveforms: torch.Tensor,
        frame_mask: torch.Tensor,
        layers: Sequence[int],
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        model = _unwrap(model)
        features = self._frontend(model, waveforms)  # once for both views
        mask = frame_mask.to(features.device).unsqueeze(-1)
        masked = torch.where(mask, model.mask_emb.to(features.dtype), features)
        return self._encode(model, masked, layers), self._encode(model, features, layers)

    @staticmethod
    def _encode(model: torch.nn.Module, features: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        _, layer_results = model.encoder(features, padding_mask=None, layer=max(layers) - 1)
        # layer_results[i][0]: output of transformer block i+1, time-major [F, B, D]
        return {layer: layer_results[layer - 1][0].transpose(0, 1) for layer in layers}
