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
import contextlib
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

# The generic weights-only pieces live in the fairseq-free ssl_mi_callback.safe_loading.
from ...safe_loading import UnsafeCheckpointError, load_weights_only
from ...safe_loading import weights_only_refusal as refusal

__all__ = ["UnsafeCheckpointError", "allow_fairseq_checkpoint_classes", "fairseq_checkpoint_classes",
           "load_checkpoint", "refusal", "weights_only_torch_load"]


def fairseq_checkpoint_classes() -> list[type]:
    """The exact non-tensor classes that fairseq 0.12.2 checkpoints contain (see module docstring)."""
    from fairseq.data.dictionary import Dictionary

    return [Dictionary, argparse.Namespace]


def allow_fairseq_checkpoint_classes() -> None:
    """Allow fairseq's checkpoint classes in torch's weights-only loader (idempotent)."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch >= 2.4
        add(fairseq_checkpoint_classes())


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """Load a fairseq checkpoint with ``weights_only=True``; refuse anything outside the allowlist.

    ``mmap=True`` maps tensor storages instead of reading them (zip-format checkpoints only), which
    keeps a resume or a peek at ``task_state`` cheap for large checkpoints. ``weights_only=True`` is
    passed explicitly, so torch's environment override of its default cannot turn it off.
    """
    allow_fairseq_checkpoint_classes()
    # torch refuses mmap for legacy (non-zip) files; those are read whole, still weights-only.
    kwargs = {"mmap": True} if mmap and zipfile.is_zipfile(str(path)) else {}
    return load_weights_only(path, map_location, **kwargs)


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Within this block every ``torch.load`` is weights-only (fairseq's allowlist), whatever its caller
    passes or the environment says; a call asking for ``weights_only=False`` is refused.

    For code that calls ``torch.load`` without ``weights_only`` (fairseq 0.12.2's
    ``load_checkpoint_to_cpu``, and the models that load a second file named in a checkpoint's config,
    e.g. ``w2v_path`` of a fine-tuned wav2vec 2.0): on torch < 2.6, or where the environment overrides
    torch's weights-only default, those calls would unpickle anything. It replaces
    ``torch.load`` for the duration of the block, so use it only around single-threaded loading code
    (offline scoring); it never makes loading less safe.
    """
    allow_fairseq_checkpoint_classes()
    original = torch.load

    def load(f: Any, map_location: Any = None, pickle_module: Any = None, *, weights_only: Optional[bool] = None,
             **kwargs: Any) -> Any:
        name = getattr(f, "name", f)
        if weights_only is False:
            raise UnsafeCheckpointError(
                f"refusing to load {name}: the loading code asks for weights_only=False (full unpickling), which "
                f"offline scoring never allows"
            )
        if pickle_module is not None:
            kwargs["pickle_module"] = pickle_module
        try:
            return original(f, map_location=map_location, weights_only=True, **kwargs)
        except pickle.UnpicklingError as error:
            raise refusal(name, error) from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = original
