"""The evaluation history: an append-only JSON-lines file that survives kills at any moment.

A record is committed when its line, newline included, is on disk: ``append`` writes one line and
fsyncs before returning. A kill mid-append can leave a torn last line (bytes after the last newline);
``read`` and the next ``append`` cut it off (a warning gives the byte count). Damage anywhere else is
not something a kill produces, so it is refused with the line number rather than guessed around.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Mapping

from .export import PathLike, fsync_directory, write_atomically

logger = logging.getLogger(__name__)

Record = Dict[str, Any]


class HistoryCorruptError(ValueError):
    """A history line other than a torn last line cannot be read; the message names the line."""


def _json_default(value: Any) -> Any:
    """Numpy/torch scalars as Python numbers; anything else is not JSON-serialisable."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    raise TypeError(f"object of type {type(value).__name__} is not JSON-serialisable")


def to_json_line(record: Mapping[str, Any]) -> bytes:
    """``record`` as one UTF-8 JSON line with its newline (0-d numpy/torch scalars become numbers)."""
    try:
        text = json.dumps(record, default=_json_default)
    except (TypeError, ValueError) as error:
        raise ValueError(f"record is not JSON-serialisable ({error}); store plain numbers and strings") from None
    return text.encode("utf-8") + b"\n"


class HistoryFile:
    """Append-only JSON-lines history at ``path`` (created by the first ``append``). One writer only."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line, durable (flush + fsync) when this returns."""
        line = to_json_line(record)
        created = not self.path.exists()
        if created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            self._cut_torn_tail(handle)
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        if created:
            fsync_directory(self.path.parent)

    def read(self, repair: bool = True) -> List[Record]:
        """All committed records, oldest first; ``[]`` if the file does not exist.

        A torn last line is cut off the file (``repair=True``, for the writer) or only skipped
        (``repair=False``, for a reader beside a live writer, whose last line may be in progress).
        """
        if not self.path.exists():
            return []
        if repair:
            with open(self.path, "r+b") as handle:
                self._cut_torn_tail(handle)
        data = self.path.read_bytes()
        committed = data[: data.rfind(b"\n") + 1]
        return [self._parse(line, number) for number, line in enumerate(committed.split(b"\n")[:-1], start=1)]

    def truncate_after(self, step: int) -> int:
        """Keep only records with ``record["step"] <= step`` (atomic rewrite); return how many were dropped.

        ``step=-1`` keeps none. Nothing is rewritten when nothing is dropped.
        """
        records = self.read()
        for number, record in enumerate(records, start=1):
            if not is_integer(record.get("step")):
                raise HistoryCorruptError(f"{self.path} line {number} has no integer 'step'; cannot truncate by step")
        kept = [record for record in records if record["step"] <= step]
        dropped = len(records) - len(kept)
        if dropped:
            write_atomically(self.path, lambda handle: handle.writelines(to_json_line(r) for r in kept))
        return dropped

    def _cut_torn_tail(self, handle: BinaryIO) -> None:
        """Truncate ``handle``'s file after its last newline, if anything follows it."""
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        keep = handle.read().rfind(b"\n") + 1
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
        logger.warning(
            "history %s: removed a torn last line (%d bytes) left by an interrupted write", self.path, size - keep
        )

    def _parse(self, line: bytes, number: int) -> Record:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: absurd nesting
            raise HistoryCorruptError(
                f"{self.path} line {number} is not valid JSON ({error}); it is not a torn last line, so fix "
                "or delete that line by hand, or move the file aside to start a new history"
            ) from None
        if not isinstance(record, dict):
            raise HistoryCorruptError(
                f"{self.path} line {number} is a JSON {type(record).__name__}, not a record object; "
                "fix or delete that line by hand"
            )
        return record


def is_integer(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)
