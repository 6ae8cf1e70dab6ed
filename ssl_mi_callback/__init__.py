"""ssl_mi_callback: pick the best self-supervised speech checkpoint by mutual information.

The names most users need are importable from here (loaded on first use, so ``import
ssl_mi_callback`` stays light)::

    from ssl_mi_callback import EvaluationConfig, MICallback, SelectionConfig, load_heldout
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MICallback": "callback",
    "EvaluationConfig": "evaluator",
    "Evaluator": "evaluator",
    "SelectionConfig": "selector",
    "CheckpointSelector": "selector",
    "load_heldout": "data",
    "FunctionAdapter": "features.generic",
    "FairseqMaskedPredictionAdapter": "features.fairseq",
    "TorchaudioWav2Vec2Adapter": "features.torchaudio",
    "HuggingFaceAdapter": "features.huggingface",
    "MILightningCallback": "integrations.lightning",
    "MITrainerCallback": "integrations.huggingface",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ssl_mi_callback' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
