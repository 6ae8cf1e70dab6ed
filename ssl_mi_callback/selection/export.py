"""Atomic file replacement: a reader, or a process resumed after a kill, never sees a partial file.

Protocol: write a temp file in the destination's directory (same filesystem), flush + fsync it,
``os.replace`` it onto the destination, fsync the directory. Temp files left by a killed writer carry a
recognisable name (``.<dest name>.<12 hex>.export-tmp``) and are removed by the next write to the same
destination.

An export stages both the file and its JSON sidecar, then renames them back to back. A kill between
the two renames (a window of one system call) leaves the new file beside the previous sidecar;
:func:`read_sidecar` detects that by size (always) and by SHA-256 (``verify=True``).
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Tuple, Union

logger = logging.getLogger(__name__)

WriteFn = Callable[[BinaryIO], None]
PathLike = Union[str, "os.PathLike[str]"]

_TEMP_SUFFIX = ".export-tmp"
_COPY_CHUNK_BYTES = 16 * 1024 * 1024
_SIDECAR_FIELDS = ("file", "bytes", "sha256", "written_at")


class SidecarMismatchError(ValueError):
    """A sidecar does not describe the file beside it (an export was interrupted between the two)."""


def _temp_pattern(dest: Path) -> "re.Pattern[str]":
    return re.compile(r"\." + re.escape(dest.name) + r"\.[0-9a-f]{12}" + re.escape(_TEMP_SUFFIX))


def fsync_directory(directory: Path) -> None:
    """Persist a rename or a new entry in ``directory`` (no-op where directories cannot be opened)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftover_temps(dest: Path) -> None:
    """Delete temp files a killed writer left for ``dest``; only names this module creates match."""
    pattern = _temp_pattern(dest)
    for candidate in dest.parent.glob("." + glob.escape(dest.name) + ".*" + _TEMP_SUFFIX):
        if pattern.fullmatch(candidate.name):
            candidate.unlink(missing_ok=True)
            logger.info("removed %s, left by an interrupted write of %s", candidate, dest.name)


def remove_leftover_temps(dest: PathLike) -> None:
    """Delete the temp files that a writer killed mid-export left for ``dest`` and its sidecar."""
    dest = Path(dest)
    for path in {dest, sidecar_path(dest)}:
        if path.parent.is_dir():
            _remove_leftover_temps(path)


def write_atomically(dest: PathLike, write_fn: WriteFn) -> Path:
    """Replace ``dest`` by what ``write_fn(binary_file)`` writes, with the temp + fsync + rename protocol.

    If ``write_fn`` raises, the temp file is removed, ``dest`` is untouched and the error propagates.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _publish([(_stage(dest, write_fn), dest)])
    return dest


def _stage(dest: Path, write_fn: WriteFn) -> Path:
    """Write a durable temp file beside ``dest`` and return its path (removed if ``write_fn`` raises)."""
    _remove_leftover_temps(dest)
    temp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write_fn(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _publish(staged: List[Tuple[Path, Path]]) -> None:
    """Rename each staged temp onto its destination, back to back, then fsync their directory."""
    try:
        for temp, dest in staged:
            os.replace(temp, dest)
    except BaseException:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
        raise
    fsync_directory(staged[0][1].parent)


def sidecar_path(dest: PathLike) -> Path:
    """Where the sidecar of ``dest`` lives: ``dest`` with its suffix replaced by ``.json``."""
    return Path(dest).with_suffix(".json")


def _file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_COPY_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_atomically(
    source: Union[PathLike, WriteFn],
    dest_path: PathLike,
    sidecar: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Atomically write ``dest_path`` and its sidecar ``dest_path.with_suffix(".json")``.

    ``source`` is a file to copy or a callable that writes to a binary file object
    (``lambda f: torch.save(obj, f)``). The sidecar holds ``sidecar``'s fields plus ``file`` (the
    destination's name), ``bytes``, ``sha256`` and ``written_at`` (UTC, ISO 8601). Returns the
    destination path.
    """
    dest = Path(dest_path)
    side = sidecar_path(dest)
    if side == dest:
        raise ValueError(f"cannot export to {dest}: its sidecar would be the same file; use a non-.json name")
    fields = dict(sidecar or {})
    reserved = sorted(set(fields) & set(_SIDECAR_FIELDS))
    if reserved:
        raise ValueError(f"sidecar fields {reserved} are filled in by export_atomically; rename yours")
    write_fn = source if callable(source) else _copier(Path(source), dest)

    dest.parent.mkdir(parents=True, exist_ok=True)
    staged_file = _stage(dest, write_fn)
    try:
        fields.update(
            file=dest.name,
            bytes=staged_file.stat().st_size,
            sha256=_file_sha256(staged_file),
            written_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        text = json.dumps(fields, indent=2, sort_keys=True) + "\n"
        staged_sidecar = _stage(side, lambda handle: handle.write(text.encode("utf-8")))
    except BaseException:
        staged_file.unlink(missing_ok=True)
        raise
    _publish([(staged_file, dest), (staged_sidecar, side)])
    return dest


def _copier(source: Path, dest: Path) -> WriteFn:
    if not source.is_file():
        raise FileNotFoundError(f"cannot export {source}: it is not an existing file")
    if dest.exists() and source.resolve() == dest.resolve():
        raise ValueError(f"cannot export {source} onto itself; choose another destination")

    def copy(handle: BinaryIO) -> None:
        with open(source, "rb") as reader:
            shutil.copyfileobj(reader, handle, _COPY_CHUNK_BYTES)

    return copy


def read_sidecar(dest_path: PathLike, verify: bool = False) -> Dict[str, Any]:
    """The sidecar of ``dest_path`` as a dict, checked against the file beside it.

    Raises :class:`SidecarMismatchError` when the sidecar names another file, or its size (always) or
    SHA-256 (``verify=True``, reads the whole file) differs from the file's.
    """
    dest = Path(dest_path)
    side = sidecar_path(dest)
    try:
        fields = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no sidecar {side}: {dest.name} was not written by export_atomically") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise SidecarMismatchError(f"sidecar {side} is not valid JSON ({reason}); re-export {dest.name}") from None
    if not isinstance(fields, dict) or fields.get("file") != dest.name:
        raise SidecarMismatchError(f"sidecar {side} does not describe {dest.name}; re-export it")
    hint = "an export was interrupted between the file and its sidecar; re-export it"
    size = dest.stat().st_size
    if fields.get("bytes") != size:
        raise SidecarMismatchError(f"sidecar {side} says {fields.get('bytes')!r} bytes but {dest.name} has {size}: {hint}")
    if verify and fields.get("sha256") != _file_sha256(dest):
        raise SidecarMismatchError(f"sidecar {side} has another SHA-256 than {dest.name}: {hint}")
    return fields
