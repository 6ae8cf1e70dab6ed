"""Public import path of checkpoint selection; the parts live in :mod:`ssl_mi_callback.selection`.

``selection.history`` (append-only JSON-lines history), ``selection.export`` (atomic file export with a
sidecar) and ``selection.selector`` (best-so-far, patience, state_dict for resume).
"""
from .selection import (
    OLDER_WINS_TIES,
    CheckpointSelector,
    Decision,
    HistoryCorruptError,
    HistoryFile,
    SelectionConfig,
    SidecarMismatchError,
    export_atomically,
    read_sidecar,
    sidecar_path,
    write_atomically,
)

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
