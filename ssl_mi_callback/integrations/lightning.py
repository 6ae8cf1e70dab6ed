"""Lightning integration: :class:`MILightningCallback`, a ``lightning.pytorch.Callback`` around
:class:`~ssl_mi_callback.callback.MICallback`.

When it evaluates (both can be on):

- ``evaluate_on_validation=True`` (default, what ``ModelCheckpoint(monitor=...)`` users expect): at the
  end of every validation loop of ``fit`` (``on_validation_epoch_end``; never in the sanity check),
  so the value is in ``trainer.callback_metrics`` before ``ModelCheckpoint`` and ``EarlyStopping``
  read it in ``on_validation_end``. Set how often with the Trainer's ``val_check_interval`` /
  ``check_val_every_n_epoch``.
- ``every_n_train_steps=N``: after every N-th optimizer step (``on_train_batch_end``), logged on the
  step; pair it with ``ModelCheckpoint(every_n_train_steps=N, monitor="mi_bits")`` (checkpoint
  callbacks run after this one). ``EarlyStopping`` only checks at validation or epoch end and then
  sees the latest value.

What it logs (``pl_module.log``): ``mi_bits`` (the selection value) and, with ``log_layer_metrics``,
every per-layer metric of the record (``mi_bits_l{k}``, ``h_c_bits_l{k}``, ...; see the README). Ties:
with the default ``selection`` the history's best keeps the older evaluation, as ``ModelCheckpoint``
and ``EarlyStopping`` do.

A failed evaluation (bad audio, out of memory, a numerical failure, a bug) is logged with its reason,
recorded as failed in the history, and training goes on; ``strict=True`` re-raises instead. It logs
``mi_bits =`` :data:`FAILED_MI_BITS` ``= -inf`` (and ``-inf`` for every ``mi_bits_l{k}``): "no score",
never an invented number. Why -inf (Lightning 2.6): the monitored key must be in
``trainer.callback_metrics`` at every validation end (``ModelCheckpoint`` raises
``MisconfigurationException`` and ``EarlyStopping(strict=True)`` raises if it is missing, and leaving
the last value there would score the failed weights with it); any finite stand-in becomes
``ModelCheckpoint``'s ``best_model_score`` when every evaluation fails. ``-inf`` is the value
``ModelCheckpoint`` itself uses for "no score" (its empty ``kth_value``; it stores a NaN score as -inf):
it is never greater than a real score, so ``best_model_path``/``best_model_score`` keep the best scored
evaluation, and a run in which every evaluation failed ends with ``best_model_score = -inf`` (its
``best_model_path`` is then a checkpoint scored -inf: ``ModelCheckpoint`` saves whatever the score
while it holds fewer than ``save_top_k``; the first scored evaluation takes its place). The cost:
``EarlyStopping``'s ``check_finite=True`` (its default) would end training at the first failure, so
:meth:`MILightningCallback.setup` refuses an ``EarlyStopping`` on an MI metric with ``check_finite=True``
(unless ``strict=True``) and any ``ModelCheckpoint``/``EarlyStopping`` on one with ``mode="min"`` before
training starts. With ``check_finite=False`` a failed evaluation counts as one without improvement.

Every rank evaluates its shard of the held-out batches (the evaluator's rank and world size are set
from the trainer) and logs the same value; only global rank 0 writes the history file. The
best-so-far travels in the trainer checkpoint (``state_dict``/``load_state_dict``); on resume the
history records written after that checkpoint are dropped.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from .. import legacy_hydra
from ..callback import MICallback
from ..data import Source
from ..evaluator import EvaluationConfig, Evaluator
from ..features import FeatureAdapter, resolve_layers
from ..selector import OLDER_WINS_TIES, CheckpointSelector, SelectionConfig

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError(
        "ssl_mi_callback.integrations.lightning needs Lightning: pip install 'ssl_mi_callback[lightning]'"
    ) from error

FAILED_MI_BITS = -math.inf
"""What a failed evaluation logs as ``mi_bits`` (and ``mi_bits_l{k}``, ``mi_given_position_bits_l{k}``): no
score, below every real one."""
_SELECTION_METRIC = re.compile(r"mi_bits(?:_l\d+)?|mi_given_position_bits_l\d+")

ModelGetter = Union[None, str, Callable[[LightningModule], torch.nn.Module]]
_AUTO_ATTRIBUTES = ("model",)


def _get_attribute(module: object, dotted: str) -> Any:
    value = module
    for part in dotted.split("."):
        if not hasattr(value, part):
            raise ValueError(
                f"MILightningCallback(model={dotted!r}): {type(module).__name__} has no attribute {dotted!r}; "
                "give the attribute that holds the speech model, or a function LightningModule -> model"
            )
        value = getattr(value, part)
    return value


class MILightningCallback(Callback):
    """Scores the model by the two-view MI bound during ``Trainer.fit`` and logs ``mi_bits``.

    Args:
        evaluator: the :class:`~ssl_mi_callback.evaluator.Evaluator` (held-out subset, settings, adapter).
        history_path: JSON-lines history written by global rank 0; a relative path is taken inside
            ``trainer.default_root_dir``; None: no file (the history is kept in memory).
        selection: how the history's best is ranked (monitor ``mi_bits``, mode ``max``); with its
            ``patience`` set, the callback also stops training itself (``trainer.should_stop``).
        evaluate_on_validation: evaluate at the end of every validation loop of ``fit``.
        every_n_train_steps: also evaluate after every N-th optimizer step (0: never).
        model: how to get the speech model out of the LightningModule: an attribute name (dotted
            names allowed, e.g. ``"net.encoder"``), a function ``LightningModule -> nn.Module``, or
            None: the LightningModule itself if the adapter accepts it, else its ``model`` attribute.
        log_layer_metrics: also log every per-layer metric of the record, not only ``mi_bits``.
        strict: re-raise evaluation errors instead of recording them and training on (then an
            ``EarlyStopping`` on ``mi_bits`` may keep ``check_finite=True``).
    """

    def __init__(
        self,
        evaluator: Evaluator,
        *,
        history_path: Optional[Union[str, os.PathLike]] = "mi_history.jsonl",
        selection: Optional[SelectionConfig] = None,
        evaluate_on_validation: bool = True,
        every_n_train_steps: int = 0,
        model: ModelGetter = None,
        log_layer_metrics: bool = True,
        strict: bool = False,
    ) -> None:
        super().__init__()
        legacy_hydra.apply_if_installed()  # Lightning's DDP launcher imports hydra; fairseq's 1.0.x pin needs it
        if not isinstance(every_n_train_steps, int) or every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be an integer >= 0, got {every_n_train_steps!r}")
        if not evaluate_on_validation and every_n_train_steps == 0:
            raise ValueError(
                "MILightningCallback would never evaluate: set evaluate_on_validation=True or every_n_train_steps > 0"
            )
        if model is not None and not (isinstance(model, str) and model) and not callable(model):
            raise ValueError(f"model must be None, an attribute name or a function LightningModule -> model, got {model!r}")
        selection = selection if selection is not None else SelectionConfig(min_delta=OLDER_WINS_TIES)  # as ModelCheckpoint
        selection.validate()
        self.evaluator = evaluator
        self.history_path = history_path
        self.selection = selection
        self.evaluate_on_validation = evaluate_on_validation
        self.every_n_train_steps = every_n_train_steps
        self.model = model
        self.log_layer_metrics = log_layer_metrics
        self.strict = strict
        self.mi_callback: Optional[MICallback] = None
        self._pending_state: Optional[dict] = None
        self._resolved_attribute: Optional[str] = None  # "" = the LightningModule itself
        self._scored_layers: list[int] = []

    @classmethod
    def create(
        cls,
        adapter: FeatureAdapter,
        heldout: Source,
        *,
        config: Optional[EvaluationConfig] = None,
        max_seconds: Optional[float] = 300.0,
        max_utterance_seconds: Optional[float] = 15.0,
        **options: Any,
    ) -> "MILightningCallback":
        """As :meth:`MICallback.create <ssl_mi_callback.callback.MICallback.create>`: load the held-out audio
        (manifest, folder or list of files) and build the evaluator; ``options`` are the constructor's
        keyword arguments (``history_path``, ``selection``, ``every_n_train_steps``, ``model``, ...).
        Ranks come from the trainer at ``setup``."""
        evaluator = Evaluator.from_heldout(
            config, heldout, adapter, max_seconds=max_seconds, max_utterance_seconds=max_utterance_seconds
        )
        return cls(evaluator, **options)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(history_path=str(self.history_path))

    # --- results ---------------------------------------------------------------------------------
    @property
    def best(self) -> Optional[dict]:
        """The best evaluation record so far (a copy), or None."""
        return self.mi_callback.selector.best if self.mi_callback is not None else None

    def history(self) -> list[dict]:
        """Every evaluation record, oldest first (rank 0: from the history file)."""
        return self.mi_callback.selector.history() if self.mi_callback is not None else []

    # --- the speech model inside the LightningModule ---------------------------------------------
    def speech_model(self, pl_module: LightningModule) -> torch.nn.Module:
        """The model the evaluator scores (see the ``model`` argument)."""
        if callable(self.model):
            found = self.model(pl_module)
        elif isinstance(self.model, str):
            found = _get_attribute(pl_module, self.model)
        else:
            found = self._auto_model(pl_module)
        if not isinstance(found, torch.nn.Module):
            raise ValueError(f"MILightningCallback(model={self.model!r}) gave a {type(found).__name__}, not a torch.nn.Module")
        return found

    def _auto_model(self, pl_module: LightningModule) -> torch.nn.Module:
        if self._resolved_attribute is not None:
            return _get_attribute(pl_module, self._resolved_attribute) if self._resolved_attribute else pl_module
        reasons = []
        candidates = [("", pl_module)] + [
            (name, getattr(pl_module, name)) for name in _AUTO_ATTRIBUTES
            if isinstance(getattr(pl_module, name, None), torch.nn.Module)
        ]
        for name, candidate in candidates:
            try:
                self.evaluator.adapter.check(candidate)
            except ValueError as error:
                reasons.append(f"{'.' + name if name else 'the LightningModule'}: {error}")
                continue
            self._resolved_attribute = name
            return candidate
        raise ValueError(
            f"MILightningCallback: no model the {self.evaluator.adapter.name} adapter accepts in "
            f"{type(pl_module).__name__} ({'; '.join(reasons)}); pass model='<attribute>' or a function"
        )

    # --- Lightning hooks -------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._resolved_attribute = None
        self.evaluator.rank, self.evaluator.world_size = trainer.global_rank, trainer.world_size
        model = self.speech_model(pl_module)
        self.evaluator.check_model(model)  # a misconfiguration stops before training
        self._check_monitors(trainer)
        self._scored_layers = resolve_layers(self.evaluator.config.layers, self.evaluator.adapter.num_layers(model))
        history_path = self.history_path
        if history_path is not None and not Path(history_path).is_absolute():
            history_path = Path(trainer.default_root_dir) / history_path
        selector = CheckpointSelector(self.selection, history_path=history_path, is_writer=trainer.is_global_zero)
        self.mi_callback = MICallback(self.evaluator, selector, strict=self.strict)
        if self._pending_state is not None:
            self.mi_callback.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.mi_callback is None:
            return
        if self.every_n_train_steps and step > 0 and step % self.every_n_train_steps == 0 and not self._evaluated(step):
            self._evaluate_and_log(trainer, pl_module, on_step=True)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.evaluate_on_validation or trainer.sanity_checking or self.mi_callback is None:
            return
        if trainer.state.fn != "fit":  # trainer.validate(): no selection
            return
        if self._evaluated(trainer.global_step):  # already scored at this step (every_n_train_steps)
            last = self.mi_callback.last_record
            if last is not None and last.get("step") == trainer.global_step:
                self._log(pl_module, last, on_step=False)
            return
        self._evaluate_and_log(trainer, pl_module, on_step=False)

    def state_dict(self) -> dict[str, Any]:
        if self.mi_callback is None:
            return dict(self._pending_state) if self._pending_state is not None else {}
        return self.mi_callback.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.mi_callback is None:  # restored before setup: applied in setup
            self._pending_state = dict(state_dict)
        else:
            self.mi_callback.load_state_dict(state_dict)

    # --- internals -------------------------------------------------------------------------------
    def _evaluated(self, step: int) -> bool:
        """True if ``step`` was scored already (in this process, or before the checkpoint resumed from)."""
        assert self.mi_callback is not None
        last = self.mi_callback.last_record
        if last is not None and last.get("step") == step:
            return True
        last_step = self.mi_callback.selector.state_dict()["last_step"]
        return last_step is not None and step <= last_step

    def _check_monitors(self, trainer: Trainer) -> None:
        """Refuse, before training, a ``ModelCheckpoint``/``EarlyStopping`` on an MI metric that would
        keep the worst checkpoint (``mode="min"``), or end the run at a failed evaluation (``-inf``
        with ``EarlyStopping(check_finite=True)``, unless ``strict`` makes failures raise anyway)."""
        for callback in trainer.callbacks:
            if not isinstance(callback, (ModelCheckpoint, EarlyStopping)):
                continue
            monitor = callback.monitor
            if not isinstance(monitor, str) or not _SELECTION_METRIC.fullmatch(monitor):
                continue
            name = f"{type(callback).__name__}(monitor={monitor!r})"
            if callback.mode != "max":
                raise ValueError(
                    f"{name} has mode={callback.mode!r}, but {monitor} is a mutual information (higher is "
                    "better): set mode='max'"
                )
            if isinstance(callback, EarlyStopping) and callback.check_finite and not self.strict:
                raise ValueError(
                    f"{name} has check_finite=True, so the first failed MI evaluation (logged as -inf) would end "
                    "training: pass check_finite=False (a failed evaluation then counts as one without "
                    "improvement), or MILightningCallback(strict=True) to stop at a failed evaluation"
                )

    def _evaluate_and_log(self, trainer: Trainer, pl_module: LightningModule, *, on_step: bool) -> None:
        assert self.mi_callback is not None, "setup() was not called"
        model = self.speech_model(pl_module)
        # validation runs under torch.inference_mode; the estimator's probes need autograd
        with torch.inference_mode(False), torch.enable_grad():
            record = self.mi_callback.evaluate(model, trainer.global_step, trainer.current_epoch)
        self._log(pl_module, record, on_step=on_step)
        if self.mi_callback.selector.should_stop:
            trainer.should_stop = True

    def _log(self, pl_module: LightningModule, record: Optional[dict], *, on_step: bool) -> None:
        if record is None:
            return
        metrics = record.get("metrics") or {}
        value = metrics.get("mi_bits") if record.get("status") == "ok" else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            values = {"mi_bits": float(value)}
            if self.log_layer_metrics:
                values.update({key: float(v) for key, v in metrics.items() if key != "mi_bits" and isinstance(v, (int, float))})
        else:  # failed: no score for every metric a checkpoint or stopper may select on (see the module docs)
            values = {"mi_bits": FAILED_MI_BITS}
            if self.log_layer_metrics:
                per_layer = ("mi_bits", "mi_given_position_bits") if self.evaluator.config.position_control else ("mi_bits",)
                values.update({f"{name}_l{layer}": FAILED_MI_BITS for layer in self._scored_layers for name in per_layer})
        for key, number in values.items():  # every rank holds the same values: sync_dist averages equal numbers
            pl_module.log(key, number, on_step=on_step, on_epoch=not on_step, prog_bar=key == "mi_bits",
                          batch_size=1, sync_dist=True)
