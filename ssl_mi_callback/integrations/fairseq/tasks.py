"""MI checkpoint selection as fairseq tasks: ``audio_pretraining_mi`` and ``hubert_pretraining_mi``.

Each is the stock task plus :class:`MISelectionFields` (``task.mi_*`` settings) and
:class:`MISelectionTaskMixin`, which only translates fairseq's events into the hook:

* ``train_step``: remembers the update number;
* ``begin_valid_epoch`` (once per validation, on every rank): runs the evaluation;
* ``reduce_metrics`` during validation: logs ``mi_bits`` & co. into the validation line (weight 0, so
  the value is exact), which lets ``checkpoint.best_checkpoint_metric=mi_bits`` keep checkpoint_best.pt;
* ``state_dict``: stores the selector state in the checkpoint (restored by the hook at start-up).

Any other task class gets the same in three lines::

    from ssl_mi_callback.integrations.fairseq import with_mi_selection
    from my_package.tasks import MyTask, MyTaskConfig
    with_mi_selection(MyTask, MyTaskConfig, name="my_task_mi")
"""
# no `from __future__ import annotations` here: omegaconf 2.0 needs real field types, not strings

import logging
import dataclasses
from dataclasses import field, make_dataclass
from typing import Any, Optional

from . import compat

compat.apply()

from fairseq.dataclass import FairseqDataclass  # noqa: E402
from fairseq.logging import metrics  # noqa: E402
from fairseq.tasks import register_task  # noqa: E402
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig, AudioPretrainingTask  # noqa: E402
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask  # noqa: E402

from ...evaluator import METRIC_DECIMALS, EvaluationConfig  # noqa: E402

logger = logging.getLogger("ssl_mi_callback.fairseq")


_RUN_SETTINGS = [
    ("mi_heldout", str, field(default="heldout", metadata={"help": "held-out UNLABELED subset scored at every validation: a split name in task.data (heldout -> DATA/heldout.tsv), a fairseq manifest path, or a folder of audio"})),
    ("mi_max_seconds", float, field(default=300.0, metadata={"help": "cap on held-out audio (seconds, taken in manifest order); bounds time and memory"})),
    ("mi_max_utterance_seconds", float, field(default=15.0, metadata={"help": "crop each held-out utterance to this many seconds"})),
    ("mi_select_checkpoint", bool, field(default=True, metadata={"help": "require checkpoint.best_checkpoint_metric=mi_bits (false: only log the MI)"})),
    ("mi_history", str, field(default="mi_history.jsonl", metadata={"help": "JSON-lines history of every evaluation (relative paths: inside checkpoint.save_dir)"})),
    ("mi_export", str, field(default="checkpoint_mi_best.pt", metadata={"help": "where the best checkpoint by MI is exported, with a .json sidecar (relative: inside checkpoint.save_dir; empty: no export)"})),
    ("mi_strict", bool, field(default=False, metadata={"help": "re-raise evaluation errors instead of logging them and continuing"})),
]


def _evaluation_settings() -> list:
    """``mi_<name>`` for every :class:`EvaluationConfig` field, with its default and help text
    (the evaluator's config is the one source of truth; layers become a comma-separated string)."""
    settings = []
    for evaluation_field in dataclasses.fields(EvaluationConfig):
        default = evaluation_field.default
        if evaluation_field.name == "layers":
            default = ",".join(str(layer) for layer in default)
        settings.append((f"mi_{evaluation_field.name}", type(default), field(default=default, metadata=dict(evaluation_field.metadata))))
    return settings


MISelectionFields = make_dataclass("MISelectionFields", _RUN_SETTINGS + _evaluation_settings(), bases=(FairseqDataclass,))
MISelectionFields.__module__ = __name__
MISelectionFields.__doc__ = "The ``task.mi_*`` settings: run settings plus every EvaluationConfig field."


class MISelectionTaskMixin:
    """Event translation only: all logic lives in :class:`~.hook.FairseqMIHook`."""

    is_mi_selection_task = True

    def __init__(self, cfg: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg, *args, **kwargs)
        from . import run_context
        from .hook import FairseqMIHook

        self._mi_update = 0
        self._mi_in_validation = False
        run_cfg = run_context.current()
        if run_cfg is None and not run_context.loading_for_scoring():
            logger.warning(
                "MI hook inactive: task %s was set up outside ssl-mi-fairseq-hydra-train (e.g. to load a "
                "checkpoint); to select checkpoints by MI, train with ssl-mi-fairseq-hydra-train; to score saved "
                "checkpoints, use ssl-mi score", cfg._name,
            )
        if run_cfg is None:
            self.mi_hook: Optional[FairseqMIHook] = None
        else:
            self.mi_hook = FairseqMIHook(cfg, run_cfg, task=self)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if self.mi_hook is not None:
            self.mi_hook.check_model(model)  # unsupported family or layer: fail before training
        return model

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        self._mi_update = update_num + 1
        self._mi_in_validation = False
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def begin_valid_epoch(self, epoch, model):
        super().begin_valid_epoch(epoch, model)
        self._mi_in_validation = True
        if self.mi_hook is not None:
            self.mi_hook.evaluate(model, update=self._mi_update, epoch=epoch)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if self._mi_in_validation and self.mi_hook is not None:
            for key, value in self.mi_hook.scalars().items():
                metrics.log_scalar(key, value, weight=0, round=METRIC_DECIMALS)

    def state_dict(self):
        state = dict(super().state_dict())
        if self.mi_hook is not None:
            state["ssl_mi"] = self.mi_hook.state_dict()
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        own = state_dict.pop("ssl_mi", None)
        super().load_state_dict(state_dict)
        if own is not None and self.mi_hook is not None:
            self.mi_hook.load_state_dict(own)


def with_mi_selection(task_class: type, config_class: type, name: str) -> type:
    """Register ``name``: ``task_class`` with MI checkpoint selection and ``config_class`` + mi_* settings."""
    config = make_dataclass(f"{config_class.__name__}MI", [], bases=(config_class, MISelectionFields))
    config.__module__ = __name__
    task = type(
        f"{task_class.__name__}MI",
        (MISelectionTaskMixin, task_class),
        {"__module__": __name__, "mi_base_task_name": _registered_name(task_class)},
    )
    return register_task(name, dataclass=config)(task)


def _registered_name(task_class: type) -> Optional[str]:
    from fairseq.tasks import TASK_REGISTRY

    return next((key for key, value in TASK_REGISTRY.items() if value is task_class), None)


AudioPretrainingMITask = with_mi_selection(AudioPretrainingTask, AudioPretrainingConfig, "audio_pretraining_mi")
HubertPretrainingMITask = with_mi_selection(HubertPretrainingTask, HubertPretrainingConfig, "hubert_pretraining_mi")
