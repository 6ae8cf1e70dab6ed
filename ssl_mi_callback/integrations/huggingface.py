"""Hugging Face ``Trainer`` integration: :class:`MITrainerCallback`, a ``transformers.TrainerCallback``
that scores the model at every evaluation of the Trainer and hands the MI to its best-model logic.

At every scheduled evaluation (``eval_strategy``) ``on_evaluate`` runs the evaluator (through
:class:`~ssl_mi_callback.callback.MICallback`, with :class:`~ssl_mi_callback.features.huggingface.
HuggingFaceAdapter`) and adds the record's metrics to the Trainer's evaluation metrics *in place*,
named with the Trainer's ``metric_key_prefix`` (``eval_mi_bits``, ``eval_mi_bits_l12``, ...). The
Trainer reads that same dict right afterwards to rank checkpoints, so
``TrainingArguments(metric_for_best_model="mi_bits", greater_is_better=True,
load_best_model_at_end=True)`` keeps and reloads the best checkpoint by MI. The numbers also go into
``trainer.state.log_history`` (``trainer_state.json``) and ``<output_dir>/mi_history.jsonl``.

Design decisions:

- **A failed evaluation** (bad audio, NaN features, out of memory, ...) never ends training (unless
  ``strict=True``): it is recorded in the history as failed and reported as ``eval_mi_bits = -inf``.
  Leaving the metric out would make the Trainer raise ``KeyError`` for ``metric_for_best_model``; NaN
  would be silently skipped but poisons averages; ``-inf`` is never ``greater`` than the best so far
  (the Trainer starts its best at ``-inf`` too), so the Trainer's best checkpoint stays correct.
- **Ties**: the Trainer keeps the older checkpoint on an exact tie (``np.greater``); the selector is
  given ``min_delta=1e-9`` (far below the metrics' 1e-4 rounding) so it decides the same way, and its
  ``is_best`` marks exactly the checkpoint the Trainer keeps.
- **Only scheduled evaluations are recorded**: the ones the Trainer ranks (``control.should_evaluate``
  set at a step or epoch end). ``eval_on_start`` and a manual ``trainer.evaluate()`` are scored and
  reported in the metrics but not recorded, so the history's best is always a saved checkpoint
  (after ``load_best_model_at_end``, ``trainer.evaluate()`` scores the reloaded best model).
- **Resume**: the selector's state is saved with every checkpoint in ``trainer_state.json``
  (``stateful_callbacks["MITrainerCallback"]["mi"]``; the class is an ``ExportableState``) and read
  back by ``on_train_begin`` of a resumed run, whatever ``restore_callback_states_from_checkpoint``
  says; history lines written after that checkpoint are dropped. The constructor takes only
  JSON-able settings, so the Trainer can also rebuild the callback from ``state()["args"]``.
  A fresh run (global step 0) moves an earlier history in the same place aside.
- **Several processes** (DDP): every rank evaluates its share of the held-out batches and gets the
  same record (see :mod:`ssl_mi_callback.distributed`), so every rank adds the same metric and the
  Trainer's ranks agree; only rank 0 writes the history.
- **Loggers**: the Trainer logs its evaluation metrics (console, TensorBoard, W&B: ``on_log``) just
  *before* ``on_evaluate``, so those reporters do not show the MI; it is in the metrics the Trainer
  returns and ranks, in ``log_history`` and in the history file, and logged by the
  ``ssl_mi_callback`` logger. Put this callback before ``EarlyStoppingCallback`` in ``callbacks=[...]``
  so that one sees ``eval_mi_bits``.
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as error:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "ssl_mi_callback.integrations.huggingface needs transformers: pip install 'ssl_mi_callback[huggingface]'"
    ) from error

from ..callback import MICallback, _one_line
from ..data import load_heldout
from ..distributed import rank_and_world_size
from ..evaluator import EvaluationConfig, Evaluator
from ..features import resolve_layers
from ..features.huggingface import HuggingFaceAdapter
from ..selector import OLDER_WINS_TIES, CheckpointSelector, SelectionConfig

logger = logging.getLogger("ssl_mi_callback.huggingface")

METRIC = "mi_bits"
_OWN_SELECTION_METRIC = re.compile(r"(?:^|_)(mi_bits(?:_l\d+)?|mi_given_position_bits_l\d+)$")


def selection_metric(metric_for_best_model: Optional[str]) -> Optional[str]:
    """Our metric that ``metric_for_best_model`` names (``eval_mi_bits`` -> ``mi_bits``), or None."""
    match = _OWN_SELECTION_METRIC.search(metric_for_best_model or "")
    return match.group(1) if match else None


def _renamed(old_name: str, old_value: Any, new_name: str, new_value: Any, default: Any) -> Any:
    """``new_value``, or ``old_value`` given under a constructor argument's former name (a FutureWarning)."""
    if old_value is None:
        return new_value
    if new_value != default:
        raise TypeError(f"MITrainerCallback got both {new_name}= and its former name {old_name}=; give only {new_name}=")
    warnings.warn(f"MITrainerCallback({old_name}=...) is now {new_name}=...", FutureWarning, stacklevel=3)
    return old_value


def _metric_prefix(metrics: Mapping[str, Any]) -> str:
    """The Trainer's ``metric_key_prefix`` of ``metrics`` (every evaluation reports ``{prefix}_runtime``)."""
    for key in metrics:
        if key.endswith("_runtime"):
            return key[: -len("_runtime")]
    return "eval"


class MITrainerCallback(TrainerCallback, ExportableState):
    """Scores the model at every Trainer evaluation; the Trainer can select checkpoints by ``mi_bits``.

    ``heldout``: a fairseq manifest (.tsv), a folder of audio or a list of paths of UNLABELED held-out
    speech kept out of training (16 kHz after loading). ``config``: the estimator settings
    (:class:`~ssl_mi_callback.evaluator.EvaluationConfig` or its dict). ``history_path``: the
    JSON-lines history (relative: inside ``args.output_dir``). ``max_seconds`` /
    ``max_utterance_seconds`` cap the held-out audio. ``normalize``: scale each utterance to zero mean
    and unit variance first (for models trained on ``do_normalize=True`` input). ``strict``: re-raise
    evaluation errors instead of recording them as failed. The names are those of
    :meth:`MICallback.create <ssl_mi_callback.callback.MICallback.create>` and
    :meth:`MILightningCallback.create <ssl_mi_callback.integrations.lightning.MILightningCallback.create>`;
    the former names ``evaluation`` and ``history`` are still accepted (with a ``FutureWarning``), so
    that the Trainer can rebuild the callback from a ``trainer_state.json`` saved before the rename.
    """

    def __init__(
        self,
        heldout: Union[str, os.PathLike, list],
        config: Union[EvaluationConfig, Mapping[str, Any], None] = None,
        *,
        history_path: Union[str, os.PathLike] = "mi_history.jsonl",
        max_seconds: Optional[float] = 300.0,
        max_utterance_seconds: Optional[float] = 15.0,
        normalize: bool = False,
        strict: bool = False,
        evaluation: Union[EvaluationConfig, Mapping[str, Any], None] = None,
        history: Optional[str] = None,
    ) -> None:
        config = _renamed("evaluation", evaluation, "config", config, None)
        history_path = _renamed("history", history, "history_path", history_path, "mi_history.jsonl")
        if config is None:
            config = EvaluationConfig()
        elif not isinstance(config, EvaluationConfig):
            unknown = sorted(set(config) - set(EvaluationConfig.__dataclass_fields__))
            if unknown:
                raise ValueError(
                    f"unknown evaluation settings {unknown}; known: {', '.join(EvaluationConfig.__dataclass_fields__)}"
                )
            config = EvaluationConfig.from_settings(dict(config))
        config.validate()
        if not str(history_path).strip():
            raise ValueError("history_path is empty: give a file name such as mi_history.jsonl")
        self.heldout = [str(path) for path in heldout] if isinstance(heldout, list) else str(heldout)
        self.config = config
        self.history_path = str(history_path)
        self.max_seconds = max_seconds
        self.max_utterance_seconds = max_utterance_seconds
        self.normalize = bool(normalize)
        self.strict = bool(strict)
        self.subset = load_heldout(self.heldout, max_seconds=max_seconds, max_utterance_seconds=max_utterance_seconds)
        logger.info("MI held-out subset: %s", self.subset.describe())
        self.mi: Optional[MICallback] = None
        self.history_file: Optional[Path] = None  # history_path resolved against args.output_dir
        self._scheduled_step: Optional[int] = None

    # --- ExportableState ---------------------------------------------------------------------------
    def state(self) -> dict:
        """What ``trainer_state.json`` keeps: the constructor's settings and the selector's state."""
        return {
            "args": {
                "heldout": self.heldout,
                "config": {**asdict(self.config), "layers": list(self.config.layers)},
                "history_path": self.history_path,
                "max_seconds": self.max_seconds,
                "max_utterance_seconds": self.max_utterance_seconds,
                "normalize": self.normalize,
                "strict": self.strict,
            },
            "attributes": {},
            "mi": None if self.mi is None else self.mi.state_dict(),
        }

    # --- results -----------------------------------------------------------------------------------
    def history_records(self) -> list[dict]:
        """Every recorded evaluation, oldest first (the history file on rank 0)."""
        return [] if self.mi is None else self.mi.selector.history()

    @property
    def best(self) -> Optional[dict]:
        """The best recorded evaluation so far (the one the Trainer keeps as its best checkpoint)."""
        return None if self.mi is None else self.mi.selector.best

    # --- Trainer events ----------------------------------------------------------------------------
    def on_init_end(self, args, state, control, **kwargs):
        if isinstance(state.stateful_callbacks.get(type(self).__name__), list):
            raise ValueError("the Trainer holds more than one MITrainerCallback; give it exactly one")
        metric = selection_metric(args.metric_for_best_model)
        if metric is not None and args.greater_is_better is False:
            raise ValueError(
                f"metric_for_best_model={args.metric_for_best_model} is a mutual information (higher is better): "
                f"set greater_is_better=True"
            )
        if str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "no":
            logger.warning("eval_strategy='no': the MI is computed only by trainer.evaluate(), and not recorded")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._build(args)
        assert self.mi is not None
        try:
            self.mi.evaluator.check_model(model)
        except ValueError as error:
            raise ValueError(f"MITrainerCallback: {error}") from None
        monitor = self.mi.selector.config.monitor
        if monitor != METRIC:  # mi_bits_l{k}: layer k must be scored
            scored = resolve_layers(self.config.layers, self.mi.evaluator.adapter.num_layers(model))
            if int(monitor.rsplit("_l", 1)[1]) not in scored:
                raise ValueError(
                    f"MITrainerCallback: metric_for_best_model={args.metric_for_best_model} but layer "
                    f"{monitor.rsplit('_l', 1)[1]} is not scored (layers {scored}); add it to EvaluationConfig.layers"
                )
        saved = state.stateful_callbacks.get(type(self).__name__)
        saved_mi = saved.get("mi") if isinstance(saved, dict) else None
        if state.global_step > 0 and saved_mi is not None:
            try:
                self.mi.load_state_dict(saved_mi)
            except ValueError as error:
                raise ValueError(
                    f"MITrainerCallback cannot resume (its monitor follows metric_for_best_model): {error}"
                ) from None
            best = self.mi.selector.best
            monitor = self.mi.selector.config.monitor
            logger.info(
                "MI selection resumed at step %d: best %s", state.global_step,
                "none yet" if best is None else f"{best['metrics'][monitor]:.4f} bits at step {best['step']}",
            )
        else:
            if state.global_step > 0:
                logger.warning("the checkpoint being resumed holds no MI state; starting a fresh MI history")
            self._move_old_history_aside()

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_evaluate:  # set by DefaultFlowCallback (always first): the Trainer will rank it
            self._scheduled_step = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_evaluate:
            self._scheduled_step = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        self._scheduled_step = None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if metrics is None or model is None:
            return
        if self.mi is None:
            self._build(args)
        assert self.mi is not None
        step = state.global_step
        if self._scheduled_step == step:
            last = self.mi.last_record  # several eval datasets: one evaluation per step, reported under each prefix
            if last is not None and last.get("step") == step:
                record = last
            else:
                record = self.mi.evaluate(model, step, None if state.epoch is None else int(state.epoch))
        else:
            record = self._score_only(model, step)
        prefix = _metric_prefix(metrics)
        reported = {f"{prefix}_{key}": value for key, value in self.scalars(record).items()}
        metrics.update(reported)
        if state.log_history:  # the Trainer logged this evaluation just before on_evaluate
            entry = state.log_history[-1]
            if entry.get("step") == step and f"{prefix}_runtime" in entry:
                entry.update(reported)

    # --- helpers -----------------------------------------------------------------------------------
    def scalars(self, record: Mapping[str, Any]) -> dict[str, float]:
        """The metrics reported to the Trainer; the selection metric is ``-inf`` unless finite and ok."""
        monitor = self.mi.selector.config.monitor if self.mi is not None else METRIC
        metrics = dict(record.get("metrics") or {}) if record.get("status") == "ok" else {}
        for key in {METRIC, monitor}:
            value = metrics.get(key)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                metrics[key] = -math.inf
        return metrics

    def _build(self, args) -> None:
        rank, world_size = rank_and_world_size()
        adapter = HuggingFaceAdapter(normalize=self.normalize)
        evaluator = Evaluator(self.config, self.subset, adapter, rank=rank, world_size=world_size)
        path = Path(self.history_path)
        self.history_file = path if path.is_absolute() else Path(args.output_dir) / path
        monitor = selection_metric(args.metric_for_best_model) or METRIC
        selector = CheckpointSelector(
            SelectionConfig(monitor=monitor, mode="max", min_delta=OLDER_WINS_TIES),
            history_path=self.history_file,
            is_writer=rank == 0,
        )
        self.mi = MICallback(evaluator, selector, strict=self.strict)

    def _move_old_history_aside(self) -> None:
        if rank_and_world_size()[0] != 0 or self.history_file is None:
            return
        path = self.history_file
        if path.exists() and path.stat().st_size > 0:
            aside = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.old")
            os.replace(path, aside)
            logger.warning("fresh training run: the earlier MI history %s was moved to %s", path, aside)

    def _score_only(self, model: torch.nn.Module, step: int) -> dict:
        """Score without recording (an evaluation the Trainer does not rank)."""
        assert self.mi is not None
        try:
            record = self.mi.evaluator.evaluate(model)
        except Exception as error:
            if self.strict:
                raise
            logger.warning("MI evaluation at step %d (not recorded) failed: %s", step, _one_line(error))
            return {"status": "failed", "error": _one_line(error), "metrics": {}}
        logger.info("MI at step %d (not scheduled, not recorded): %.4f bits", step, record["metrics"][METRIC])
        return record
