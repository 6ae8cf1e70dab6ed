"""Best-so-far selection over evaluation records, resumable like Lightning's ``ModelCheckpoint``.

Every rank may hold a selector and feed it the same records, so all ranks reach the same decisions;
only the writer rank (``is_writer=True``) touches the history file.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple

from .export import PathLike
from .history import HistoryFile, Record, is_integer, to_json_line

logger = logging.getLogger(__name__)

_STATE_FORMAT = 1
_STATE_KEYS = ("format", "config", "best", "last_step", "evaluations", "evaluations_since_best")


OLDER_WINS_TIES = 1e-9
"""A ``min_delta`` that makes a tie keep the older evaluation -- the rule of Lightning's
``ModelCheckpoint`` and the Hugging Face ``Trainer`` -- while any real difference (metrics are
rounded to 1e-4) still counts."""


@dataclass
class SelectionConfig:
    """How evaluations are ranked and when training should stop."""

    monitor: str = field(
        default="mi_bits", metadata={"help": "metric in record['metrics'] that ranks evaluations"}
    )
    mode: Literal["max", "min"] = field(
        default="max", metadata={"help": "'max': a higher metric is better; 'min': a lower one is"}
    )
    min_delta: float = field(
        default=0.0,
        metadata={
            "help": "a new best must beat the best by more than this; with 0 a tie goes to the newer "
            "evaluation (as fairseq's checkpoint_best.pt)"
        },
    )
    patience: Optional[int] = field(
        default=None,
        metadata={
            "help": "should_stop becomes true after this many scored evaluations without a new best "
            "(failed evaluations do not count); None never stops"
        },
    )

    def validate(self) -> None:
        """Raise a one-line ValueError naming the first invalid field."""
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ValueError(f"monitor must name a metric in record['metrics'], got {self.monitor!r}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if not _is_number(self.min_delta) or not math.isfinite(self.min_delta) or self.min_delta < 0:
            raise ValueError(f"min_delta must be a finite number >= 0, got {self.min_delta!r}")
        if self.patience is not None and not (is_integer(self.patience) and self.patience >= 1):
            raise ValueError(f"patience must be None (never stop) or an integer >= 1, got {self.patience!r}")


@dataclass(frozen=True)
class Decision:
    """What one observed evaluation changed."""

    is_best: bool
    score: Optional[float]
    best_score: Optional[float]
    best_step: Optional[int]
    previous_best_score: Optional[float]
    evaluations_since_best: int


class CheckpointSelector:
    """Keeps the evaluation history and the best record by ``config.monitor``.

    Records are dicts with an integer ``step`` (increasing), ``status`` ``"ok"`` or ``"failed"`` and
    ``metrics``. A failed record, or one whose monitored metric is missing or not finite, is kept in
    the history but never becomes best. With ``history_path`` the writer appends every record to a
    :class:`HistoryFile`; otherwise (and on other ranks) the history is kept in memory for this process.
    """

    def __init__(self, config: SelectionConfig, history_path: Optional[PathLike] = None, is_writer: bool = True):
        config.validate()
        self.config = config
        self._history_file = HistoryFile(history_path) if history_path is not None and is_writer else None
        self._records_in_memory: List[Record] = []
        self._history_file_checked = False
        self._best: Optional[Record] = None
        self._best_score: Optional[float] = None
        self._last_step: Optional[int] = None
        self._evaluations = 0
        self._evaluations_since_best = 0

    @property
    def best(self) -> Optional[Record]:
        """A copy of the best record so far, or None."""
        return _json_copy(self._best) if self._best is not None else None

    @property
    def best_score(self) -> Optional[float]:
        return self._best_score

    @property
    def should_stop(self) -> bool:
        """True once ``config.patience`` scored evaluations in a row brought no new best."""
        return self.config.patience is not None and self._evaluations_since_best >= self.config.patience

    def observe(self, record: Mapping[str, Any]) -> Decision:
        """Add one evaluation record to the history and update the best; return the decision."""
        record = _json_copy(record)
        step = self._check_record(record)
        self._append(record, step)
        score, not_scored_reason = self._score(record)
        previous_best_score = self._best_score
        is_best = score is not None and self._improves(score)
        if is_best:
            self._best, self._best_score, self._evaluations_since_best = record, score, 0
        elif score is not None:
            self._evaluations_since_best += 1
        else:
            logger.warning("evaluation at step %d cannot become best: %s", step, not_scored_reason)
        self._evaluations += 1
        self._last_step = step
        return Decision(
            is_best=is_best,
            score=score,
            best_score=self._best_score,
            best_step=self._best["step"] if self._best is not None else None,
            previous_best_score=previous_best_score,
            evaluations_since_best=self._evaluations_since_best,
        )

    def history(self) -> List[Record]:
        """All records, oldest first: the history file's (writer with a file) or this process's."""
        if self._history_file is not None:
            return self._history_file.read()
        return [_json_copy(record) for record in self._records_in_memory]

    def state_dict(self) -> Dict[str, Any]:
        """A small JSON-able dict to store in the training checkpoint."""
        return {
            "format": _STATE_FORMAT,
            "config": asdict(self.config),
            "best": self.best,
            "last_step": self._last_step,
            "evaluations": self._evaluations,
            "evaluations_since_best": self._evaluations_since_best,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the writer cuts history records the checkpoint never saw."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"selector state lacks {missing}; pass the dict that CheckpointSelector.state_dict() returned")
        if state["format"] != _STATE_FORMAT:
            raise ValueError(f"selector state has format {state['format']!r}; this version reads format {_STATE_FORMAT}")
        for name in ("monitor", "mode"):
            saved, current = state["config"].get(name), getattr(self.config, name)
            if saved != current:
                raise ValueError(
                    f"the checkpoint's selector used {name}={saved!r} but this run has {name}={current!r}; "
                    f"set {name}={saved!r} to resume, or start a new history with a fresh selector"
                )
        best = _json_copy(state["best"]) if state["best"] is not None else None
        best_score = None
        if best is not None:
            best_score, reason = self._score(best)
            if best_score is None:
                raise ValueError(f"selector state's best record is unusable ({reason}); the state is damaged")
        self._best, self._best_score = best, best_score
        self._last_step = state["last_step"]
        self._evaluations = state["evaluations"]
        self._evaluations_since_best = state["evaluations_since_best"]
        self._records_in_memory = []
        if self._history_file is not None:
            self._cut_history_to_last_step()

    def _cut_history_to_last_step(self) -> None:
        """Drop records written after the checkpoint (a later run that was killed), warn about gaps."""
        assert self._history_file is not None
        last_step = self._last_step
        dropped = self._history_file.truncate_after(-1 if last_step is None else last_step)
        if dropped and last_step is None:
            logger.info("dropped %d history records (the checkpoint being resumed predates every evaluation)", dropped)
        elif dropped:
            logger.info(
                "dropped %d history records after step %d (written after the checkpoint being resumed)", dropped, last_step
            )
        records = self._history_file.read()
        last_in_file = records[-1]["step"] if records else None
        if last_step is not None and (last_in_file is None or last_in_file < last_step):
            where = "is empty" if last_in_file is None else f"ends at step {last_in_file}"
            logger.warning(
                "history %s %s but the checkpoint saw evaluations through step %d; those records are missing",
                self._history_file.path, where, last_step,
            )
        self._history_file_checked = True

    def _check_record(self, record: Any) -> int:
        if not isinstance(record, dict):
            raise ValueError(f"record must be a dict, got {type(record).__name__}")
        step = record.get("step")
        if not is_integer(step) or step < 0:
            raise ValueError(f"record needs an integer 'step' >= 0, got {step!r}")
        if record.get("status") not in ("ok", "failed"):
            raise ValueError(f"record 'status' must be 'ok' or 'failed', got {record.get('status')!r}")
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(
                f"step {step} is not after the last observed step {self._last_step}; steps must increase "
                "(when resuming, call load_state_dict with the checkpoint's selector state first)"
            )
        return step

    def _append(self, record: Record, step: int) -> None:
        if self._history_file is None:
            self._records_in_memory.append(record)
            return
        if not self._history_file_checked:
            self._refuse_overlapping_history(step)
        self._history_file.append(record)

    def _refuse_overlapping_history(self, step: int) -> None:
        """A fresh selector (no state loaded) must not write into a history that already reaches ``step``."""
        assert self._history_file is not None
        records = self._history_file.read()
        if records:
            last_in_file = records[-1].get("step")
            if is_integer(last_in_file) and last_in_file >= step:
                raise ValueError(
                    f"history {self._history_file.path} already holds step {last_in_file} >= {step}: resume with "
                    "load_state_dict(<the checkpoint's selector state>) or give a new history_path"
                )
            logger.warning(
                "history %s already holds %d records but no selector state was loaded; best-so-far starts afresh",
                self._history_file.path, len(records),
            )
        self._history_file_checked = True

    def _score(self, record: Record) -> Tuple[Optional[float], str]:
        """The monitored score, or None and the reason the record cannot be ranked."""
        if record.get("status") != "ok":
            return None, f"status {record.get('status')!r} ({record.get('error') or 'no reason given'})"
        metrics = record.get("metrics")
        value = metrics.get(self.config.monitor) if isinstance(metrics, dict) else None
        if value is None:
            return None, f"metric {self.config.monitor!r} is missing"
        if not _is_number(value) or not math.isfinite(value):
            return None, f"metric {self.config.monitor!r} is {value!r}, not a finite number"
        return float(value), ""

    def _improves(self, score: float) -> bool:
        if self._best_score is None:
            return True
        gain = score - self._best_score if self.config.mode == "max" else self._best_score - score
        return gain > self.config.min_delta if self.config.min_delta > 0 else gain >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_copy(value: Any) -> Any:
    """A detached copy of a record as the history file would hold it."""
    return json.loads(to_json_line(value))
