"""Load saved fairseq checkpoints for offline scoring (see :mod:`ssl_mi_callback.scoring`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from . import compat

compat.apply()



def load_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """The model of a fairseq checkpoint (safe loading: torch weights-only + fairseq's allowlist)."""
    from fairseq import checkpoint_utils

    from . import tasks  # noqa: F401  (checkpoints trained with the *_mi tasks name them)
    from .run_context import scoring_checkpoints

    with scoring_checkpoints():
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    return models[0].to(device).eval()


def checkpoint_update(path: Union[str, Path]) -> Optional[int]:
    """The update number a fairseq checkpoint was saved at (read lazily with mmap)."""
    from .safe_load import load_checkpoint

    history = load_checkpoint(path, mmap=True).get("optimizer_history") or [{}]
    return history[-1].get("num_updates")
