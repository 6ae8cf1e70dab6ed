"""Deterministic random streams: one CPU ``torch.Generator`` per (seed, purpose), no global RNG.

Randomness is always drawn on the CPU and moved to the compute device, so a seed gives the same
draws on CPU and CUDA.
"""
from __future__ import annotations

import zlib

import torch


def make_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and the name of its purpose (independent streams)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed((int(seed) * 1_000_003 + zlib.crc32(stream.encode())) % (2**63 - 1))
    return generator
