"""Checkpoint selection: evaluation history, best-so-far decisions, atomic export of the best."""
from .export import SidecarMismatchError, export_atomically, read_sidecar, sidecar_path, write_atomically
from .history import HistoryCorruptError, HistoryFile
from .selector import OLDER_WINS_TIES, CheckpointSelector, Decision, SelectionConfig

__all__ = [
    "OLDER_WINS_TIES",
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
