"""Run-time compatibility for fairseq 0.12.2 and hydra-core 1.0.7 on current Python/numpy/torch.

Nothing installed is edited; :func:`apply` patches the running interpreter and must run before the
first ``import fairseq`` / ``import hydra``. Each patch is narrow and idempotent:

* hydra 1.0.7 on Python >= 3.11 / 3.12 / 3.13 (dataclass defaults, ``FileFinder.find_module``, antlr4
  4.8's ``typing.io``):
  :mod:`ssl_mi_callback.legacy_hydra`, shared with the Lightning integration (Lightning's DDP launcher
  imports hydra too). (Switching fairseq's defaults to ``default_factory`` breaks fairseq's hydra_init.)
* numpy >= 1.24 removed the ``np.float``/``np.int`` aliases that fairseq's masking code uses.
* hydra 1.0.7 reports a failed job with ``traceback.print_exception(etype=...)``, a keyword Python
  >= 3.10 removed, so the real error is hidden behind a TypeError; hydra's own reference is replaced
  by a wrapper that accepts it.
* fairseq's ``distributed_utils.all_gather_list`` (used to sync logging outputs of criteria whose
  outputs cannot be summed, e.g. wav2vec and HuBERT) allocates a CUDA buffer, so multi-process
  training on CPU (gloo) fails; without CUDA it is replaced by ``torch.distributed.all_gather_object``.
* torch >= 2.6 loads checkpoints with ``weights_only=True``; fairseq checkpoints hold a few
  non-tensor objects. Those exact classes are allowlisted (:mod:`.safe_load`); safe loading stays on.
"""
from __future__ import annotations

import sys

from ... import legacy_hydra

_applied = False


def _numpy_aliases() -> None:
    import numpy as np

    for name, value in (("float", float), ("int", int), ("bool", bool), ("object", object)):
        if name not in np.__dict__:
            setattr(np, name, value)


def _hydra_error_reporting() -> None:
    import traceback

    import hydra._internal.utils as hydra_utils

    if getattr(hydra_utils.print_exception, "_ssl_mi_patched", False):
        return

    def print_exception(*args, etype=None, value=None, tb=None, **kwargs):
        if value is not None and not args:
            return traceback.print_exception(type(value), value, tb, **kwargs)
        return traceback.print_exception(*args, **kwargs)

    print_exception._ssl_mi_patched = True  # type: ignore[attr-defined]
    hydra_utils.print_exception = print_exception


def _cpu_all_gather_list() -> None:
    import torch
    from fairseq.distributed import utils as distributed_utils

    original = distributed_utils.all_gather_list
    if getattr(original, "_ssl_mi_patched", False):
        return

    def all_gather_list(data, group=None, max_size=16384):
        if torch.cuda.is_available():
            return original(data, group=group, max_size=max_size)
        from fairseq import utils

        if group is None:
            group = distributed_utils.get_global_group()
        gathered = [None] * distributed_utils.get_world_size(group=group)
        torch.distributed.all_gather_object(gathered, utils.move_to_cpu(data), group=group)
        return gathered

    all_gather_list._ssl_mi_patched = True  # type: ignore[attr-defined]
    distributed_utils.all_gather_list = all_gather_list


def apply() -> None:
    """Apply every patch once. Safe to call many times; must precede the first fairseq import."""
    global _applied
    if _applied:
        return
    legacy_hydra.apply()
    _numpy_aliases()
    if sys.version_info >= (3, 10):
        _hydra_error_reporting()
    _cpu_all_gather_list()
    from . import safe_load

    safe_load.allow_fairseq_checkpoint_classes()
    _applied = True
