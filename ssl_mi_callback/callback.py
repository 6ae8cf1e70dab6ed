"""Framework-free hook: every N steps, run the evaluator, feed the selector, log the result.

Integrations (fairseq, Lightning, Hugging Face, a plain loop) only translate their loop's events into
:meth:`MICallback.on_step` / :meth:`MICallback.evaluate` calls. An evaluation that fails (bad audio,
out of memory, a numerical failure, a bug) is logged, recorded in the history as a failed evaluation
and never becomes the best; training goes on. ``strict=True`` re-raises instead.
"""
from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path
from typing import Optional, Union

import torch

from .data import Source
from .distributed import rank_and_world_size
from .evaluator import EvaluationConfig, Evaluator
from .features import FeatureAdapter
from .selector import CheckpointSelector, SelectionConfig, export_atomically

logger = logging.getLogger("ssl_mi_callback")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:500]}" if text else type(error).__name__


class MICallback:
    """Evaluate every ``every_n_steps`` steps (0: only when :meth:`evaluate` is called).

    With ``export_best`` set, the writer rank saves ``model.state_dict()`` there atomically (with a
    JSON sidecar: step, score, settings) whenever an evaluation is a new best. A failed export is
    logged and returned as the record's ``export_error`` (the history line, already written, still says
    the evaluation was the best; the file keeps the previous best); ``strict`` re-raises it.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        selector: CheckpointSelector,
        *,
        every_n_steps: int = 0,
        strict: bool = False,
        export_best: Union[str, Path, None] = None,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        self.evaluator = evaluator
        self.selector = selector
        self.every_n_steps = every_n_steps
        self.strict = strict
        self.export_best = None if export_best is None else Path(export_best)
        self.last_record: Optional[dict] = None

    @classmethod
    def create(
        cls,
        adapter: FeatureAdapter,
        heldout: Source,
        *,
        every_n_steps: int,
        history_path: Union[str, Path, None] = "mi_history.jsonl",
        export_best: Union[str, Path, None] = None,
        config: Optional[EvaluationConfig] = None,
        selection: Optional[SelectionConfig] = None,
        max_seconds: float = 300.0,
        max_utterance_seconds: float = 15.0,
        strict: bool = False,
    ) -> "MICallback":
        """The hook for a plain PyTorch loop: held-out audio (manifest, folder or list of files) loaded
        once, ranks from ``torch.distributed`` when it is initialised (only rank 0 writes)."""
        rank, world_size = rank_and_world_size()
        evaluator = Evaluator.from_heldout(config, heldout, adapter, max_seconds=max_seconds,
                                           max_utterance_seconds=max_utterance_seconds, rank=rank, world_size=world_size)
        selector = CheckpointSelector(selection or SelectionConfig(), history_path=history_path, is_writer=rank == 0)
        return cls(evaluator, selector, every_n_steps=every_n_steps, strict=strict,
                   export_best=export_best if rank == 0 else None)

    def due(self, step: int) -> bool:
        return self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0

    def on_step(self, model: torch.nn.Module, step: int, epoch: Optional[int] = None) -> Optional[dict]:
        """Call after every optimizer step; evaluates when due and returns the record, else None."""
        return self.evaluate(model, step, epoch) if self.due(step) else None

    def evaluate(self, model: torch.nn.Module, step: int, epoch: Optional[int] = None) -> dict:
        """Evaluate now; the record (ok or failed) goes to the selector and the log."""
        started = time.perf_counter()
        try:
            record = self.evaluator.evaluate(model)
        except Exception as error:
            if self.strict:
                raise
            if isinstance(error, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            logger.warning("MI evaluation at step %d failed, training continues: %s", step, _one_line(error))
            record = {"status": "failed", "error": _one_line(error), "metrics": {}, "settings": self.evaluator.settings()}
        record.update(
            step=int(step),
            epoch=None if epoch is None else int(epoch),
            time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        record.setdefault("seconds", {})["wall"] = round(time.perf_counter() - started, 4)
        try:
            decision = self.selector.observe(record)
        except (OSError, ValueError) as error:  # e.g. a full disk, or the same step evaluated twice
            if self.strict:
                raise
            logger.warning("MI result at step %d not recorded: %s", step, _one_line(error))
            record.update(status="failed", error=f"not recorded: {_one_line(error)}")
            record["is_best"] = False
            self.last_record = record
            return record
        record["is_best"] = bool(decision.is_best)
        if decision.is_best and self.export_best is not None:
            self._export(model, record)
        if record["status"] == "ok":
            logger.info(
                "MI at step %d: %.4f bits%s (best %.4f at step %s)",
                step, record["metrics"]["mi_bits"], " [new best]" if decision.is_best else "",
                decision.best_score, decision.best_step,
            )
        self.last_record = record
        return record

    def _export(self, model: torch.nn.Module, record: dict) -> None:
        """Write the new best weights atomically (the previous export stays whole if this fails).

        Any failure (a full disk, a path that cannot be written, a model whose ``state_dict`` raises,
        a tensor that cannot be saved) is logged with its reason and kept in the record as
        ``export_error``; the run goes on and the next new best exports again. ``strict`` re-raises.
        """
        try:
            sidecar = {"step": record["step"], "epoch": record["epoch"], "metric": self.selector.config.monitor,
                       "score": record["metrics"].get(self.selector.config.monitor), "settings": record.get("settings")}
            # tensors to the CPU; other entries (a module's get_extra_state()) are saved as they are
            state = {name: value.detach().cpu() if isinstance(value, torch.Tensor) else value
                     for name, value in model.state_dict().items()}
            export_atomically(lambda handle: torch.save(state, handle), self.export_best, sidecar)
        except Exception as error:
            if self.strict:
                raise
            record["export_error"] = _one_line(error)
            logger.warning("MI export of the best weights (step %d) to %s failed, training continues: %s",
                           record["step"], self.export_best, record["export_error"])

    def state_dict(self) -> dict:
        return {"selector": self.selector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.selector.load_state_dict(state["selector"])
