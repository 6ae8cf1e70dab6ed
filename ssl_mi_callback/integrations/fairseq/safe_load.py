"""Safe loading of fairseq checkpoints with torch's weights-only unpickler.

fairseq 0.12.2 checkpoints are plain dicts of tensors and built-ins, except for a few objects that are
allowlisted here by exact class with ``torch.serialization.add_safe_globals``; safe loading itself stays
on, so a checkpoint that carries any other pickled global (which could run code) is refused.

Measured on checkpoints written by fairseq 0.12.2 under torch 2.11 (globals in ``data.pkl``):

* ``audio_pretraining`` + ``wav2vec2``: only ``collections.OrderedDict`` and tensor rebuilds (allowed by
  torch already); nothing to allowlist.
* ``hubert_pretraining`` + ``hubert``: additionally ``fairseq.data.dictionary.Dictionary`` (the label
  dictionaries in ``task_state["dictionaries"]``; ``audio_finetuning`` stores its target dictionary the
  same way). Its state is plain lists/dicts/strings; it has no ``__setstate__``.

Read from fairseq's own loader, not measured (no legacy checkpoint can be downloaded here):

* ``argparse.Namespace``: checkpoints written before fairseq's hydra configs (late 2020, e.g. the
  first public wav2vec 2.0 releases) store ``state["args"]`` as a Namespace, which
  ``checkpoint_utils.load_checkpoint_to_cpu`` converts. A Namespace only gets attributes set.

Not allowlisted on purpose: numpy scalars/arrays. A metric logged as a numpy float makes fairseq store
``extra_state["best"]``/``["val_loss"]`` as ``numpy.float64``, and such a checkpoint is refused; log
Python floats instead.
"""
from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds a pickled object outside the allowlist; it was not loaded."""


def fairseq_checkpoint_classes() -> list[type]:
    """The exact non-tensor classes that fairseq 0.12.2 checkpoints contain (see module docstring)."""
    from fairseq.data.dictionary import Dictionary

    return [Dictionary, argparse.Namespace]


def allow_fairseq_checkpoint_classes() -> None:
    """Allow fairseq's checkpoint classes in torch's weights-only loader (idempotent)."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch >= 2.4
        add(fairseq_checkpoint_classes())


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_DETAIL_RE = re.compile(r"WeightsUnpickler error:(.*?)(?:Check the documentation|$)", re.S)


def _reason(error: BaseException) -> str:
    """The useful part of torch's multi-line weights-only error, on one line."""
    text = str(error)
    found = _GLOBAL_RE.search(text)
    if found:
        return f"unsupported global {found.group(1)}"
    detail = _DETAIL_RE.search(text)
    if detail and detail.group(1).strip():
        return " ".join(detail.group(1).split())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """Load a fairseq checkpoint with ``weights_only=True``; refuse anything outside the allowlist.

    ``mmap=True`` maps tensor storages instead of reading them (zip-format checkpoints only), which
    keeps a resume or a peek at ``task_state`` cheap for large checkpoints.
    """
    allow_fairseq_checkpoint_classes()
    # torch refuses mmap for legacy (non-zip) files; those are read whole, still weights-only.
    kwargs = {"mmap": True} if mmap and zipfile.is_zipfile(str(path)) else {}
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: torch's weights-only loader rejects it ({_reason(error)}). "
            f"Only load checkpoints you trust; if this is a genuine fairseq checkpoint with another "
            f"class, allow exactly that class with torch.serialization.add_safe_globals."
        ) from None
