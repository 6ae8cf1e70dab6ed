"""Load saved fairseq checkpoints for offline scoring (see :mod:`ssl_mi_callback.scoring`).

fairseq's own loader calls ``torch.load`` without ``weights_only``, which unpickles anything on
torch < 2.6 or where the environment overrides torch's weights-only default. Here the file is read once, inside
:func:`.safe_load.weights_only_torch_load` (weights-only, fairseq's allowlist, one-line refusal), and
fairseq builds the model from that state; any further file its model code loads is weights-only too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from . import compat

compat.apply()


def load_checkpoint_model(
    path: Union[str, Path], device: Union[str, torch.device] = "cpu"
) -> Tuple[torch.nn.Module, Optional[int]]:
    """(model in eval mode on ``device``, the update it was saved at) of a fairseq checkpoint.

    Raises :class:`~.safe_load.UnsafeCheckpointError` (one line, nothing unpickled beyond the
    allowlist) for a file carrying any other pickled global, and ``ValueError`` for a file that is
    not a fairseq checkpoint.
    """
    from fairseq import checkpoint_utils

    from . import tasks  # noqa: F401  (checkpoints trained with the *_mi tasks name them)
    from .run_context import scoring_checkpoints
    from .safe_load import weights_only_torch_load

    with scoring_checkpoints(), weights_only_torch_load():
        try:  # fairseq's reading (config conversion, upgrades of old layouts), on the weights-only loader
            state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
        except (KeyError, TypeError, AttributeError, IndexError) as error:
            raise ValueError(
                f"{path} is not a fairseq checkpoint ({type(error).__name__}: {error}); "
                "pass --family for the kind of model it holds"
            ) from None
        history = state.get("optimizer_history") or [{}]
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([str(path)], state=state)
    return models[0].to(device).eval(), history[-1].get("num_updates")


def load_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """The model of a fairseq checkpoint (see :func:`load_checkpoint_model`)."""
    return load_checkpoint_model(path, device)[0]

