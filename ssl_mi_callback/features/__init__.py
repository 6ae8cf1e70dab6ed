"""Feature adapters: one per model family, all speaking :class:`~.base.FeatureAdapter`."""
from .base import FeatureAdapter, UnsupportedModelError, resolve_layers

__all__ = ["FeatureAdapter", "UnsupportedModelError", "resolve_layers", "adapter_for"]


def adapter_for(name: str) -> FeatureAdapter:
    """The adapter registered under ``name`` ("fairseq")."""
    if name == "fairseq":
        from .fairseq import FairseqMaskedPredictionAdapter

        return FairseqMaskedPredictionAdapter()
    raise ValueError(f"unknown feature adapter {name!r}; available: fairseq")
