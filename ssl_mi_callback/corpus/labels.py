"""Readers for a generated corpus's labels (for probes and checks)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np

from ..labels import parse_label_lines


def read_labels(corpus_dir, split: str) -> List[np.ndarray]:
    """Frame labels of ``split``: one int64 array per utterance, in manifest order."""
    path = Path(corpus_dir) / f"{split}.phn"
    return parse_label_lines(path.read_text(encoding="utf-8"), str(path))


def read_alignment(corpus_dir, uid: str) -> List[Tuple[int, int, str, str]]:
    """Phone segments of one utterance: (start, end) samples at 16 kHz, shared phone, engine symbol."""
    path = Path(corpus_dir) / "align" / f"{uid}.tsv"
    segments = []
    for line in path.read_text(encoding="utf-8").splitlines():
        start, end, phone, symbol = line.split("\t")
        segments.append((int(start), int(end), phone, symbol))
    return segments
