"""The feature-adapter protocol: waveforms -> per-layer frame features, with an optional frame mask.

The evaluator knows this protocol, not any one adapter. An adapter translates one model family's
internals (where the mask embedding goes in, how per-layer outputs come out, how many frames a
waveform yields); it holds no estimator math.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch


class UnsupportedModelError(ValueError):
    """The model does not fit the adapter (the message says what is missing)."""


VIEW_PAIRS = ("masked", "past_future")
"""The two view pairs: ``masked`` -- Za from the masked input, Zb from the unmasked input at the same
(masked) frames (masked-prediction models); ``past_future`` -- Za at frame t and Zb at frame t + k of
one unmasked, causal forward (autoregressive models such as APC)."""

MASK_PLACEMENTS = ("feature", "waveform")
"""Where an adapter puts the mask of the masked view: ``feature`` -- the model's own mask embedding
replaces the masked frames' features before the context network; ``waveform`` -- the samples under the
masked frames are set to zero before the model sees them (models without a mask embedding)."""


@runtime_checkable
class FeatureAdapter(Protocol):
    """What the evaluator needs from a model family.

    ``default_views`` is the view pair used when the evaluation setting ``views`` is ``auto``
    (one of :data:`VIEW_PAIRS`); ``mask_placement`` documents how the masked view is made.
    """

    name: str
    default_views: str
    mask_placement: str

    def check(self, model: torch.nn.Module) -> None:
        """Raise :class:`UnsupportedModelError` with a one-line reason if ``model`` does not fit."""

    def num_layers(self, model: torch.nn.Module) -> int:
        """Number of layers whose outputs :meth:`extract` can return (numbered 1..L)."""

    def num_frames(self, model: torch.nn.Module, num_samples: int) -> int:
        """Frames the model yields for an unpadded waveform of ``num_samples`` samples."""

    def extract(
        self, model: torch.nn.Module, waveforms: torch.Tensor, layers: Sequence[int]
    ) -> dict[int, torch.Tensor]:
        """Unmasked features ``{layer: [B, F, D]}`` of equal-length ``waveforms`` [B, S], one forward."""

    def extract_views(
        self,
        model: torch.nn.Module,
        waveforms: torch.Tensor,
        frame_mask: torch.Tensor,
        layers: Sequence[int],
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """(masked, unmasked) features ``{layer: [B, F, D]}`` for equal-length ``waveforms`` [B, S].

        The masked view replaces the frames where ``frame_mask`` [B, F] is True by the model's mask
        embedding before the context network; the unmasked view sees every frame. Work the two views
        share (e.g. the convolutional feature encoder) is done once.
        """


def resolve_layers(requested: Sequence[int], num_layers: int) -> list[int]:
    """Map 1-based layer numbers (negative counts from the end: -1 = last) to 1..num_layers."""
    resolved = []
    for layer in requested:
        index = layer if layer > 0 else num_layers + 1 + layer
        if not 1 <= index <= num_layers:
            raise ValueError(
                f"layer {layer} does not exist: the model has layers 1..{num_layers} (or -1..-{num_layers})"
            )
        if index not in resolved:
            resolved.append(index)
    return resolved
