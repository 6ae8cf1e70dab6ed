"""The run's full fairseq config, handed to the MI hook by the launcher, and start-up checks.

A fairseq task only sees ``cfg.task``; the hook also needs the checkpoint directory and the
selection settings, and a misconfiguration must fail before any training. The launcher calls
:func:`start_run` in every training process before fairseq's ``main`` runs.
"""
from __future__ import annotations

import contextlib
import difflib
from typing import Any, Iterator, Optional

METRIC = "mi_bits"
_current: Optional[Any] = None
_loading_for_scoring = False


class MIConfigError(ValueError):
    """A setting that would make MI checkpoint selection fail or never take effect."""


def current() -> Optional[Any]:
    """The full config of the run in this process, or None outside the launcher."""
    return _current


def loading_for_scoring() -> bool:
    """True while :func:`scoring_checkpoints` is active (offline scoring loads MI-task checkpoints)."""
    return _loading_for_scoring


@contextlib.contextmanager
def scoring_checkpoints() -> Iterator[None]:
    """Checkpoints of an MI task are being loaded to be scored offline: the task's hook is meant to
    stay inactive, so it says nothing."""
    global _loading_for_scoring
    previous, _loading_for_scoring = _loading_for_scoring, True
    try:
        yield
    finally:
        _loading_for_scoring = previous


def start_run(cfg: Any) -> None:
    global _current
    validate_run_config(cfg)
    _current = cfg


def finish_run() -> None:
    global _current
    _current = None


def _is_mi_task(task_cfg: Any) -> bool:
    from fairseq.tasks import TASK_REGISTRY

    task_class = TASK_REGISTRY.get(task_cfg._name)
    return task_class is not None and getattr(task_class, "is_mi_selection_task", False)


def validate_run_config(cfg: Any) -> None:
    """Fail early, in one line naming the key to set, when MI selection could not work as asked."""
    if not _is_mi_task(cfg.task):
        return
    checkpoint, dataset = cfg.checkpoint, cfg.dataset
    if not cfg.task.get("mi_select_checkpoint", True):
        return
    metric = checkpoint.best_checkpoint_metric
    if metric != METRIC:
        close = difflib.get_close_matches(metric, [METRIC], n=1, cutoff=0.6)
        hint = f" (did you mean {METRIC}?)" if close else ""
        raise MIConfigError(
            f"checkpoint.best_checkpoint_metric={metric}{hint}: set checkpoint.best_checkpoint_metric={METRIC} "
            f"to keep the best checkpoint by MI, or task.mi_select_checkpoint=false to only log it"
        )
    if not checkpoint.maximize_best_checkpoint_metric:
        raise MIConfigError(
            "checkpoint.maximize_best_checkpoint_metric=false: set it to true (a higher MI bound is better)"
        )
    if dataset.disable_validation:
        raise MIConfigError("dataset.disable_validation=true: MI is computed at validation; set it to false")
    if checkpoint.no_save:
        raise MIConfigError("checkpoint.no_save=true: checkpoint_best.pt would never follow the MI; set it to false")
    validate_every, save_every = dataset.validate_interval_updates, checkpoint.save_interval_updates
    if validate_every > 0 and (save_every <= 0 or validate_every % save_every != 0):
        raise MIConfigError(
            f"dataset.validate_interval_updates={validate_every} is not a multiple of checkpoint.save_interval_updates="
            f"{save_every}: a validation that is not also a save never updates checkpoint_best.pt; set both equal"
        )
    if dataset.validate_interval % checkpoint.save_interval != 0:
        raise MIConfigError(
            f"dataset.validate_interval={dataset.validate_interval} is not a multiple of checkpoint.save_interval="
            f"{checkpoint.save_interval}: epoch-end validations must also save; set both equal"
        )
