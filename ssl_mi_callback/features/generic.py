"""Any ``torch.nn.Module`` plus a function that returns its per-layer frame features.

This is how a model family without its own adapter is scored -- an APC / VQ-APC model (causal RNN or
transformer on log-mel frames), a DinoSR-style model in a custom codebase, anything that maps a
waveform batch to frame features. The user says how frames relate to samples (``frame_hop`` and
``frame_length`` in samples) and whether the model is causal.

Views:

* ``masked`` (default unless ``causal``): the model has no mask embedding we know of, so the masked
  view is made in the **waveform domain**: the samples under each masked frame,
  ``[t * frame_hop, t * frame_hop + frame_length)``, are set to zero before the model sees them.
* ``past_future`` (default when ``causal=True``): one unmasked forward; Za = frame t, Zb = frame
  t + k. Only meaningful when frame t is computed from the past, so :meth:`FunctionAdapter.check`
  verifies causality on a probe signal: changing the second half of the input must not change any
  feature of the first half.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..views import zero_masked_frames
from .base import UnsupportedModelError

FeaturesFn = Callable[[torch.nn.Module, torch.Tensor], Sequence[torch.Tensor]]
"""``features_fn(model, waveforms [B, S]) -> [layer_1, ..., layer_L]``, each ``[B, F, D]``."""


class FunctionAdapter:
    """Score any model through ``features_fn``; layers are the function's outputs, numbered 1..L."""

    name = "function"
    mask_placement = "waveform"

    def __init__(
        self,
        features_fn: FeaturesFn,
        *,
        num_layers: int,
        frame_hop: int,
        frame_length: Optional[int] = None,
        num_frames: Optional[Callable[[int], int]] = None,
        causal: bool = False,
        sample_rate: int = 16000,
    ) -> None:
        """``num_frames(num_samples)`` defaults to ``num_samples // frame_hop``; ``frame_length``
        (samples one frame sees, for waveform masking) defaults to ``frame_hop``."""
        if num_layers < 1 or frame_hop < 1:
            raise ValueError(f"num_layers and frame_hop must be >= 1, got {num_layers} and {frame_hop}")
        if frame_length is not None and frame_length < 1:
            raise ValueError(f"frame_length must be >= 1 sample, got {frame_length}")
        self.features_fn = features_fn
        self._num_layers = num_layers
        self.frame_hop = frame_hop
        self.frame_length = frame_length or frame_hop
        self._num_frames = num_frames or (lambda num_samples: num_samples // frame_hop)
        self.causal = causal
        self.default_views = "past_future" if causal else "masked"
        self.sample_rate = sample_rate
        self._verified_causal: set[int] = set()

    def check(self, model: torch.nn.Module) -> None:
        if not isinstance(model, torch.nn.Module):
            raise UnsupportedModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
        if self.causal and id(model) not in self._verified_causal:
            self._verify_causal(model)
            self._verified_causal.add(id(model))

    def num_layers(self, model: torch.nn.Module) -> int:
        return self._num_layers

    def num_frames(self, model: torch.nn.Module, num_samples: int) -> int:
        return int(self._num_frames(num_samples))

    def extract(self, model: torch.nn.Module, waveforms: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        parameter = next(model.parameters(), None)
        if parameter is not None:
            waveforms = waveforms.to(device=parameter.device, dtype=parameter.dtype)
        outputs = list(self.features_fn(model, waveforms))
        if len(outputs) != self._num_layers:
            raise ValueError(
                f"features_fn returned {len(outputs)} layers, the adapter was built with num_layers={self._num_layers}"
            )
        return {layer: outputs[layer - 1] for layer in layers}

    def extract_views(
        self, model: torch.nn.Module, waveforms: torch.Tensor, frame_mask: torch.Tensor, layers: Sequence[int]
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        masked_waveforms = zero_masked_frames(waveforms, frame_mask, self.frame_hop, self.frame_length)
        return self.extract(model, masked_waveforms, layers), self.extract(model, waveforms, layers)

    def _verify_causal(self, model: torch.nn.Module) -> None:
        """Raise if features of the first half of a probe signal depend on its second half."""
        generator = torch.Generator().manual_seed(0)
        num_samples = self.sample_rate
        probe = torch.randn(1, num_samples, generator=generator) * 0.1
        changed = probe.clone()
        changed[:, num_samples // 2 :] = torch.randn(1, num_samples - num_samples // 2, generator=generator) * 0.1
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                layers = list(range(1, self._num_layers + 1))
                before, after = self.extract(model, probe, layers), self.extract(model, changed, layers)
        finally:
            model.train(was_training)
        # frames whose whole receptive field ends before the change
        safe = max((num_samples // 2 - self.frame_length) // self.frame_hop, 0)
        for layer in layers:
            if safe and not torch.allclose(before[layer][:, :safe].float(), after[layer][:, :safe].float(), atol=1e-5):
                raise UnsupportedModelError(
                    f"the adapter was built with causal=True, but layer {layer}'s features at early frames change "
                    f"when only later audio changes; the model is not causal (use causal=False and views=masked)"
                )
