"""Checkpoint selection: evaluation history, best-so-far decisions, atomic export of the best."""
from .export import SidecarMismatchError, export_atomically, read_sidecar, sidecar_path, write_atomically
from .history import HistoryCorruptError, HistoryFile
from .selector import CheckpointSelector, Decision, SelectionConfig

__all__ = [
    "CheckpointSelector",
    "Decision",
    "HistoryCorruptError",
    "HistoryFile",
    "SelectionConfig",
    "SidecarMismatchError",
    "export_atomically",
    "read_sidecar",
    "sidecar_path",
    "write_atomically",
]
