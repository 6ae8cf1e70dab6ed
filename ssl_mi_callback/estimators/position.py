"""Frame-position features: a nuisance variable P that the views share without any audio.

A frame's position in its utterance is known to both views (the transformer's positional convolution
sees the utterance edges), so a model whose features carry nothing about the audio can still make
the unmasked view's clusters predictable from the masked view: the selection benchmark found destroyed
checkpoints (phone probe at chance, near rank-1 features) whose clusters position alone predicts
(0.09-0.15 bits at the last layer) about as well as or better than their masked-view features do. ``unsupervised_mi(control=P)`` removes it:
I(Za; c | P) = I(Za, P; c) - I(P; c), estimated as CE(c | P) - CE(c | Za, P).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .validation import EstimatorInputError, as_ids, check_same_length

EDGE_DISTANCES = (0, 1, 2, 4, 8, 16, 32, 64)
"""Thresholds of the edge indicators, in frames (20 ms each: up to 1.3 s from an edge)."""


def position_features(frame_index: Tensor, num_frames: Tensor) -> Tensor:
    """(N, 19) float32 features of frame ``frame_index`` (0-based) in an utterance of ``num_frames``
    frames: the relative position t / (T - 1), and for the distance d to the start (t) and to the end
    (T - 1 - t) the indicators d <= b for b in EDGE_DISTANCES and log(1 + d)."""
    t = as_ids(frame_index, "frame_index", None, nonnegative=True)
    total = as_ids(num_frames, "num_frames", t.device, nonnegative=True)
    check_same_length(frame_index=t, num_frames=total)
    if bool((t >= total).any()):
        raise EstimatorInputError("frame_index must be below num_frames for every frame")
    t, total = t.double(), total.double()
    columns = [t / (total - 1).clamp_min(1.0)]
    thresholds = torch.tensor(EDGE_DISTANCES, dtype=torch.float64, device=t.device)
    for distance in (t, total - 1 - t):
        columns.extend((distance[:, None] <= thresholds).double().unbind(1))
        columns.append(torch.log1p(distance))
    return torch.stack(columns, dim=1).float()
