"""Frame labels for probing: one line of space-separated class ids per utterance, matched to a manifest.

This is the layout of a generated corpus's ``<split>.phn`` beside ``<split>.tsv`` (20 ms frames,
DESIGN.md section 5) and of any frame-level labels a user brings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from .data import parse_manifest

LABEL_FRAME_TOLERANCE = 2
"""Label and feature frame counts of an utterance may differ by this many frames (the conv front end
drops a partial last frame); the labels are cut or their last label repeated. A larger difference is
a counted skip: the labels do not belong to that audio."""


def parse_label_lines(text: str, source: str = "labels") -> List[np.ndarray]:
    """Frame labels, one utterance per line of space-separated non-negative integer class ids.

    Raises ValueError naming the line of the first bad token (not an integer, negative, or 1e9 and above).
    """
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        for token in tokens:
            if not (token.isascii() and token.isdigit()) or len(token.lstrip("0")) > 9:
                raise ValueError(
                    f"{source} line {line_number}: {token[:20]!r} is not a class id (non-negative integer below 1e9)"
                )
        rows.append(np.array([int(token) for token in tokens], dtype=np.int64))
    return rows


def read_frame_labels(labels_path: Union[str, Path], manifest_path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """Frame labels by utterance id: line i of ``labels_path`` belongs to entry i of the manifest
    (the layout of a generated corpus's ``<split>.phn`` beside ``<split>.tsv``)."""
    labels = parse_label_lines(Path(labels_path).read_text(encoding="utf-8"), str(labels_path))
    manifest = parse_manifest(Path(manifest_path).read_text(encoding="utf-8"))
    if manifest.bad_lines:
        line, reason = manifest.bad_lines[0]
        raise ValueError(f"{manifest_path} line {line}: {reason}; labels cannot be matched to a broken manifest")
    if len(labels) != len(manifest.entries):
        raise ValueError(
            f"{labels_path} has {len(labels)} label lines but {manifest_path} has {len(manifest.entries)} entries; "
            "give the labels of that manifest (one line per entry, same order)"
        )
    return {entry.path: row for entry, row in zip(manifest.entries, labels)}


def align_labels(labels: np.ndarray, utterance_frames: int, num_frames: int) -> Optional[np.ndarray]:
    """``labels`` of a whole utterance (``utterance_frames`` feature frames) for its first ``num_frames``
    frames (the evaluator crops from the start): cut, or padded with the last label; None when the label
    count differs from ``utterance_frames`` by more than :data:`LABEL_FRAME_TOLERANCE`."""
    if len(labels) == 0 or abs(len(labels) - utterance_frames) > LABEL_FRAME_TOLERANCE:
        return None
    if len(labels) >= num_frames:
        return labels[:num_frames]
    return np.concatenate([labels, np.full(num_frames - len(labels), labels[-1])])
