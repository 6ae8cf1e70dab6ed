"""The run-time patches hydra-core 1.0.x and its antlr4 4.8 runtime need on current Python
(:mod:`ssl_mi_callback.legacy_hydra`), in fresh interpreters: the typing.io shim is forced on every Python
(antlr4 then imports through it); hydra 1.0.x, its override grammar (antlr4) included, fails to import
unpatched and imports after ``apply()`` on Python >= 3.11."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

ROOT = Path(__file__).resolve().parents[1]


def run_fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_typing_io_shim_lets_antlr4_import_as_on_python_313():
    require("antlr4")  # antlr4-python3-runtime 4.8, hydra 1.0.x's override-grammar runtime (found, not imported)
    done = run_fresh(
        "import sys, typing\n"
        "sys.modules.pop('typing.io', None)  # as on Python >= 3.13, which removed it\n"
        "from ssl_mi_callback.legacy_hydra import _restore_typing_io\n"
        "_restore_typing_io()\n"
        "_restore_typing_io()  # idempotent\n"
        "from typing.io import IO, BinaryIO, TextIO\n"
        "assert (IO, BinaryIO, TextIO) == (typing.IO, typing.BinaryIO, typing.TextIO)\n"
        "import antlr4.Lexer, antlr4.Parser  # the modules that import typing.io\n"
        "print('imported')\n"
    )
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-2000:]


IMPORT_HYDRA = ("import hydra, omegaconf\nfrom hydra.core.config_store import ConfigStore\n"
                "from hydra.core.override_parser.overrides_parser import OverridesParser  # loads antlr4\n"
                "print(hydra.__version__)\n")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="hydra 1.0.x imports unpatched before Python 3.11")
def test_apply_is_what_lets_hydra_10_import():
    from ssl_mi_callback.legacy_hydra import legacy_hydra_installed

    require("hydra")
    if not legacy_hydra_installed():
        pytest.skip("hydra-core 1.0.x (fairseq's pin) is not installed")
    unpatched = run_fresh(IMPORT_HYDRA)
    assert unpatched.returncode != 0, "hydra 1.0.x imported without the patches: drop the ones no longer needed"
    patched = run_fresh("from ssl_mi_callback import legacy_hydra\nlegacy_hydra.apply()\nlegacy_hydra.apply()\n"
                        + IMPORT_HYDRA)
    assert patched.returncode == 0, patched.stderr[-2000:]
    assert patched.stdout.strip().startswith("1.0.")
