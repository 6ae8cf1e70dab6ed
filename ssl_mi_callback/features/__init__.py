"""Feature adapters: one per model family, all speaking :class:`~.base.FeatureAdapter`."""
from .base import FeatureAdapter, UnsupportedModelError, resolve_layers

__all__ = ["FeatureAdapter", "UnsupportedModelError", "resolve_layers"]
