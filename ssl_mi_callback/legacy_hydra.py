"""Run-time patches that hydra-core 1.0.x (fairseq 0.12.2's pin) needs just to be imported on current Python.

Kept apart from :mod:`ssl_mi_callback.integrations.fairseq.compat` (which applies them together with its
fairseq patches) because other code imports hydra too: Lightning's DDP launcher imports ``hydra`` whenever it
is installed, and hydra 1.0.x then fails on Python >= 3.11 ("mutable default ... for field override_dirname").
Nothing installed is edited; each patch is narrow and idempotent:

* Python >= 3.11 rejects a dataclass instance as a field default unless its class is hashable. fairseq's
  and hydra's config dataclasses use such defaults, so dataclasses *created in fairseq/hydra modules* (and
  ours, which extend them) get an identity ``__hash__``.
* Python >= 3.12 removed ``importlib.machinery.FileFinder.find_module``, which hydra 1.0.x's plugin scan
  calls; it is restored as a thin wrapper over ``find_spec``.
* Python >= 3.13 removed the ``typing.io`` alias module, which antlr4-python3-runtime 4.8 (hydra-core 1.0.x's
  override-grammar runtime) imports ``TextIO`` from; a module with the same three names is registered under it.
"""
from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.metadata
import sys
import types
import typing

_PATCHED_MODULE_ROOTS = ("fairseq", "fairseq_cli", "hydra", "ssl_mi_callback")


def _hashable_dataclasses() -> None:
    original = dataclasses._process_class  # type: ignore[attr-defined]
    if getattr(original, "_ssl_mi_patched", False):
        return

    def process_class(cls, *args, **kwargs):
        result = original(cls, *args, **kwargs)
        root = (getattr(result, "__module__", "") or "").split(".")[0]
        if root in _PATCHED_MODULE_ROOTS and result.__hash__ is None:
            result.__hash__ = object.__hash__
        return result

    process_class._ssl_mi_patched = True  # type: ignore[attr-defined]
    dataclasses._process_class = process_class  # type: ignore[attr-defined]


def _restore_find_module() -> None:
    finder = importlib.machinery.FileFinder
    if hasattr(finder, "find_module"):
        return

    def find_module(self, fullname, path=None):  # the pre-3.12 API, as hydra 1.0.x calls it
        spec = self.find_spec(fullname)
        return None if spec is None else spec.loader

    finder.find_module = find_module  # type: ignore[attr-defined]


def _restore_typing_io() -> None:
    if "typing.io" in sys.modules:
        return
    names = ["IO", "TextIO", "BinaryIO"]
    module = types.ModuleType("typing.io", f"Python < 3.13's typing.io alias module ({', '.join(names)}).")
    for name in names:
        setattr(module, name, getattr(typing, name))
    module.__all__ = names  # type: ignore[attr-defined]
    sys.modules["typing.io"] = module


def apply() -> None:
    """The patches hydra 1.0.x needs to import (idempotent; before the first ``import hydra``)."""
    if sys.version_info >= (3, 11):
        _hashable_dataclasses()
    if sys.version_info >= (3, 12):
        _restore_find_module()
    if sys.version_info >= (3, 13):
        _restore_typing_io()


def legacy_hydra_installed() -> bool:
    """Whether the installed hydra-core is a 1.0.x release (read from its metadata, without importing it)."""
    try:
        return importlib.metadata.version("hydra-core").startswith("1.0.")
    except importlib.metadata.PackageNotFoundError:
        return False


def apply_if_installed() -> None:
    """:func:`apply` when hydra-core 1.0.x is installed (so that another library's ``import hydra`` works)."""
    if legacy_hydra_installed():
        apply()
