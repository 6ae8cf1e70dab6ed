"""Readers for a generated corpus's labels (for probes and checks)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np


def read_labels(corpus_dir, split: str) -> List[np.ndarray]:
    """Frame labels of ``split``: one int64 array per utterance, in manifest order."""
    path = Path(corpus_dir) / f"{split}.phn"
    with open(path, encoding="utf-8") as handle:
        return [np.array(line.split(), dtype=np.int64) for line in handle.read().splitlines()]


def read_alignment(corpus_dir, uid: str) -> List[Tuple[int, int, str, str]]:
    """Phone segments of one utterance: (start, end) samples at 16 kHz, shared phone, engine symbol."""
    path = Path(corpus_dir) / "align" / f"{uid}.tsv"
    segments = []
    for line in path.read_text(encoding="utf-8").splitlines():
        start, end, phone, symbol = line.split("\t")
        segments.append((int(start), int(end), phone, symbol))
    return segments
