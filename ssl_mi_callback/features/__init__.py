"""Feature adapters: one per model family, all speaking :class:`~.base.FeatureAdapter`."""
from .base import MASK_PLACEMENTS, VIEW_PAIRS, FeatureAdapter, UnsupportedModelError, resolve_layers

__all__ = ["FeatureAdapter", "MASK_PLACEMENTS", "UnsupportedModelError", "VIEW_PAIRS", "resolve_layers"]
