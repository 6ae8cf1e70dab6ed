"""Loading checkpoints without running pickled code: torch's weights-only loader, refused in one line.

Free of fairseq, so the torchaudio and Hugging Face families of ``ssl-mi score`` need no fairseq install;
:mod:`ssl_mi_callback.integrations.fairseq.safe_load` adds fairseq's allowlist on top of it.
"""
from __future__ import annotations

import pickle
import re
from typing import Any

import torch

__all__ = ["UnsafeCheckpointError", "load_weights_only", "weights_only_reason", "weights_only_refusal"]


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds a pickled object outside the allowlist; it was not loaded."""


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_DETAIL_RE = re.compile(r"WeightsUnpickler error:(.*?)(?:Check the documentation|$)", re.S)


def weights_only_reason(error: BaseException) -> str:
    """The useful part of torch's multi-line weights-only error, on one line."""
    text = str(error)
    found = _GLOBAL_RE.search(text)
    if found:
        return f"unsupported global {found.group(1)}"
    detail = _DETAIL_RE.search(text)
    if detail and detail.group(1).strip():
        return " ".join(detail.group(1).split())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def weights_only_refusal(path: Any, error: BaseException) -> UnsafeCheckpointError:
    """The one-line error for a file that torch's weights-only loader rejected with ``error``."""
    return UnsafeCheckpointError(
        f"refusing to load {path}: torch's weights-only loader rejects it ({weights_only_reason(error)}). "
        f"Only load checkpoints you trust; if this is a genuine checkpoint with another "
        f"class, allow exactly that class with torch.serialization.add_safe_globals."
    )


def load_weights_only(path: Any, map_location: Any = "cpu", **kwargs: Any) -> Any:
    """``torch.load(path, map_location, weights_only=True, **kwargs)``, refused in one line
    (:class:`UnsafeCheckpointError`) when the file holds a pickled global outside torch's allowlist.
    ``weights_only=True`` is passed explicitly, so torch's default does not matter."""
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as error:
        raise weights_only_refusal(path, error) from None
