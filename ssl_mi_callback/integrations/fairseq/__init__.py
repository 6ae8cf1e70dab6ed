"""fairseq integration: MI checkpoint selection as a task flag.

Importing this package applies the run-time compatibility step (:mod:`.compat`), so it is also the
importable guard for library use: ``import ssl_mi_callback.integrations.fairseq`` before ``import fairseq``.
Training starts with ``ssl-mi-fairseq-hydra-train`` (a drop-in for ``fairseq-hydra-train``).
"""
from pathlib import Path

from . import compat

compat.apply()

USER_DIR = Path(__file__).resolve().parent / "user_dir" / "ssl_mi_fairseq_plugin"
"""Pass as ``common.user_dir`` where a tool imports fairseq user modules (e.g. to load checkpoints)."""


def with_mi_selection(task_class: type, config_class: type, name: str) -> type:
    """Register ``name`` = ``task_class`` with MI checkpoint selection (see :mod:`.tasks`)."""
    from .tasks import with_mi_selection as register

    return register(task_class, config_class, name)


__all__ = ["USER_DIR", "compat", "with_mi_selection"]
