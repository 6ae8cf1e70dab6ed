"""Two views of the same audio: span masks over feature frames, fixed across evaluations.

Za = layer-l features of the *masked* input at the masked frames; Zb = layer-l features of the
*unmasked* input at the same frames (DESIGN.md section 2). The mask of an utterance depends only on
(seed, utterance id, frame count), never on batching, sharding or the model, so every evaluation of
every checkpoint sees the same views.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class MaskConfig:
    """Span masking in the style of wav2vec 2.0 / HuBERT pretraining."""

    mask_prob: float = field(default=0.5, metadata={"help": "span starts per frame x span length (wav2vec2's mask_prob)"})
    mask_length: int = field(default=10, metadata={"help": "frames per masked span"})
    seed: int = field(default=0, metadata={"help": "seed of the masks (fixed across evaluations)"})

    def validate(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.mask_length < 1:
            raise ValueError(f"mask_length must be >= 1, got {self.mask_length}")


def _utterance_seed(seed: int, uid: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def span_mask(num_frames: int, config: MaskConfig, uid: str) -> torch.Tensor:
    """Boolean mask [num_frames] with fairseq's span sampling.

    ``n_spans = floor(mask_prob * T / mask_length + u)``, u ~ U[0, 1), at least one span; span starts are
    drawn uniformly without replacement from ``[0, T - mask_length]``; spans may overlap (so, as in
    fairseq, fewer than ``mask_prob`` of the frames end up masked). Utterances shorter than one span
    are masked entirely except their first frame.
    """
    generator = torch.Generator().manual_seed(_utterance_seed(config.seed, uid))
    mask = torch.zeros(num_frames, dtype=torch.bool)
    if num_frames <= config.mask_length:
        mask[1:] = True
        return mask
    jitter = torch.rand((), generator=generator).item()
    n_spans = max(1, int(config.mask_prob * num_frames / config.mask_length + jitter))
    n_starts = num_frames - config.mask_length + 1
    starts = torch.randperm(n_starts, generator=generator)[: min(n_spans, n_starts)]
    offsets = torch.arange(config.mask_length)
    mask[(starts[:, None] + offsets[None, :]).reshape(-1)] = True
    return mask


def zero_masked_frames(waveforms: torch.Tensor, frame_mask: torch.Tensor, frame_hop: int, frame_length: int) -> torch.Tensor:
    """The masked view in the waveform domain (models without a mask embedding): a copy of
    ``waveforms`` [B, S] with every sample of a masked frame (``frame_mask`` [B, F]) set to zero.

    Frame t covers samples ``[t * frame_hop, t * frame_hop + frame_length)``; a sample is zeroed when
    any masked frame covers it (a transposed convolution of the frame mask with a box of length
    ``frame_length`` and stride ``frame_hop``).
    """
    batch, num_samples = waveforms.shape
    if frame_mask.shape[1] == 0:
        return waveforms.clone()
    mask = frame_mask.to(device=waveforms.device, dtype=torch.float32)[:, None, :]
    box = torch.ones(1, 1, frame_length, device=waveforms.device)
    covered = torch.nn.functional.conv_transpose1d(mask, box, stride=frame_hop)[:, 0, :num_samples] > 0.5
    zeroed = torch.zeros(batch, num_samples, dtype=torch.bool, device=waveforms.device)
    zeroed[:, : covered.shape[1]] = covered
    return waveforms.masked_fill(zeroed, 0.0)
