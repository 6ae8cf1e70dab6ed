"""Offline install for air-gapped nodes: ``scripts/build_wheelhouse.sh`` gathers every wheel (with
network: the package index, and a fairseq build), ``install_offline.sh`` installs them into a fresh
venv with no index and no network at all, and the package and fairseq import and run from there.

The install runs with PIP_NO_INDEX=1, every proxy variable pointing at a port where nothing listens,
and, where this user may create one (root, as in CI), inside a network namespace with no interface
up (``unshare -n``): a single attempt to reach the network fails the install.

Size and time on the 2-core development machine: the lock's CUDA torch and its NVIDIA libraries make
the wheelhouse 2.7 GB (build 45 s with the index at about 80 MB/s, offline install 75 s, 2.2 min in
all; the wheelhouse and the 5 GB venv are deleted at the end). SSL_MI_TEST_TORCH_WHEEL=path/to/torch.whl
(e.g. a CPU-only build) puts that wheel in the wheelhouse instead (``--wheel``): 280 MB, the same time.
On Python >= 3.13 the test first builds numpy 1.26.4's wheel from source (``pip wheel``; PyPI has none for
3.13; a compiler and the index needed, seconds from pip's cache) and passes it with ``--wheel``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "build_wheelhouse.sh"
INSTALL = ROOT / "scripts" / "install_offline.sh"
LOCAL_PYTHON = "%d.%d" % sys.version_info[:2]
TAG = "cp%d%d" % sys.version_info[:2]
UNREACHABLE_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def offline_environment() -> Dict[str, str]:
    """This environment without pip settings, with no index and unreachable proxies."""
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("PIP_") and k.lower() != "no_proxy"}
    environment.update({name: UNREACHABLE_PROXY for name in PROXY_VARIABLES}, PIP_NO_INDEX="1")
    return environment


def without_network() -> List[str]:
    """``["unshare", "-n"]`` where this user may create a network namespace, else ``[]``."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"]
    return []


def runs_as_this_python(command: str) -> bool:
    """Whether ``command`` on PATH is an interpreter of this Python version (a pyenv shim may not be)."""
    try:
        result = subprocess.run([command, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    return result.stdout.strip() == LOCAL_PYTHON


def local_torch_wheel() -> Optional[Path]:
    """A torch wheel to reuse instead of downloading one (SSL_MI_TEST_TORCH_WHEEL), or None."""
    given = os.environ.get("SSL_MI_TEST_TORCH_WHEEL")
    return Path(given) if given else None


def source_built_wheels(folder: Path) -> List[Path]:
    """Wheels the index lacks for this Python, built here from source (as pip did for the dev set): the
    lock's numpy 1.26 (fairseq's) has none for CPython >= 3.13, so its wheelhouse needs ``--wheel``."""
    if sys.version_info < (3, 13):
        return []
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", folder, f"numpy=={lock_pins()['numpy']}"], timeout=1800)
    return sorted(folder.glob("numpy-*.whl"))


def run(command: List[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{command[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def lock_pins() -> Dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "dev-lock.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "_", name).lower()] = version.strip()
    return pins


@pytest.mark.slow
def test_wheelhouse_installs_into_a_fresh_venv_without_network(tmp_path):
    wheelhouse, venv = tmp_path / "wheelhouse", tmp_path / "venv"
    torch_wheel = local_torch_wheel()
    seed = ["--wheel", torch_wheel] if torch_wheel else []
    for wheel in source_built_wheels(tmp_path / "built"):
        seed += ["--wheel", wheel]
    started = time.perf_counter()
    try:
        patient_pip = {"PIP_RETRIES": "10", "PIP_DEFAULT_TIMEOUT": "60"}  # a slow index, not a failure (yours win)
        run([BUILD, wheelhouse, "--extras", "fairseq", *seed], timeout=1200,
            env={**patient_pip, **os.environ, "PYTHON": sys.executable})
        built = time.perf_counter()

        manifest = json.loads((wheelhouse / "wheelhouse.json").read_text())
        assert manifest["python_version"] == LOCAL_PYTHON and manifest["extras"] == ["fairseq"]
        assert re.fullmatch(rf"fairseq-0\.12\.2-{TAG}-{TAG}-linux_x86_64\.whl", manifest["fairseq"])
        pinned = dict(line.split("==") for line in (wheelhouse / "requirements.txt").read_text().split())
        pinned = {re.sub(r"[-_.]+", "_", name).lower(): version for name, version in pinned.items()}
        wheel_names = {re.sub(r"[-_.]+", "_", p.name.split("-")[0]).lower() for p in wheelhouse.glob("*.whl")}
        assert set(pinned) | {"fairseq", "ssl_mi_callback"} == wheel_names  # exactly the wheels that are there
        lock = lock_pins()
        for name in ("hydra_core", "omegaconf", "antlr4_python3_runtime", "numpy", "scikit_learn", "sacrebleu"):
            assert pinned[name] == lock[name], name  # the lock's pins apply
        assert pinned["torch"] == (torch_wheel.name.split("-")[1] if torch_wheel else lock["torch"])
        assert (wheelhouse / "antlr4_python3_runtime-4.8-py3-none-any.whl").is_file()  # built: the index has no wheel
        assert int(pinned["pip"].split(".")[0]) < 24 or pinned["pip"].startswith("24.0")

        isolation = without_network()
        install_environment = offline_environment()
        if not runs_as_this_python(f"python{LOCAL_PYTHON}"):  # e.g. pyenv's: name it, as the script asks
            install_environment["PYTHON"] = os.path.realpath(sys.executable)
        run([*isolation, wheelhouse / "install_offline.sh", wheelhouse, venv], timeout=900,
            env=install_environment, cwd=tmp_path)
        installed = time.perf_counter()

        check = run([*isolation, venv / "bin" / "python", "-c",
                     "import ssl_mi_callback, ssl_mi_callback.integrations.fairseq, fairseq, torch, sklearn\n"
                     "from ssl_mi_callback.evaluator import Evaluator\n"
                     "from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model\n"
                     "print(ssl_mi_callback.__file__, fairseq.__version__, torch.__version__)"],
                    timeout=300, env=offline_environment(), cwd=tmp_path)
        print(f"\nwheelhouse {sum(p.stat().st_size for p in wheelhouse.iterdir()) / 2**20:.0f} MiB "
              f"({'torch from ' + str(torch_wheel) if torch_wheel else 'torch from the index'}); "
              f"build {built - started:.0f} s, offline install {installed - built:.0f} s, "
              f"network namespace: {'yes' if isolation else 'no'}")
        module_file, fairseq_version, torch_version = check.stdout.split()[-3:]
        assert Path(module_file).is_relative_to(venv)  # the installed copy, not this source tree
        assert fairseq_version == "0.12.2" and torch_version.startswith(pinned["torch"].split("+")[0])
        help_text = run([*isolation, venv / "bin" / "ssl-mi", "--help"], timeout=120, env=offline_environment(),
                        cwd=tmp_path).stdout
        assert "plot" in help_text and "report" in help_text
        user_dir = run([venv / "bin" / "ssl-mi", "fairseq-user-dir"], timeout=120, cwd=tmp_path).stdout.strip()
        assert Path(user_dir).is_relative_to(venv)
        assert (Path(user_dir) / "__init__.py").is_file(), f"the wheel lacks the fairseq user-dir plugin {user_dir}"
    finally:  # gigabytes: do not leave them to pytest's tmp_path retention
        shutil.rmtree(wheelhouse, ignore_errors=True)
        shutil.rmtree(venv, ignore_errors=True)


def test_build_names_the_missing_target_interpreter(tmp_path):
    """A wheelhouse for another Python needs that Python to build fairseq: a clear line, before any work."""
    result = subprocess.run([str(BUILD), str(tmp_path / "wh"), "--python-version", "3.99"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("build_wheelhouse.sh: error: building fairseq's wheel for "
                                                   "Python 3.99 needs a python3.99 interpreter"), result.stderr
    assert "TARGET_PYTHON" in lines[0] and not (tmp_path / "wh").exists()


def test_bad_build_arguments_are_one_line_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("not a wheelhouse")
    for arguments, expected in (
        ([], "usage: scripts/build_wheelhouse.sh OUT_DIR"),
        ([tmp_path / "wh", "--glibc", "228"], "--glibc must look like 2.28"),
        ([tmp_path / "wh", "--wheel", tmp_path / "none.whl"], "--wheel: no such wheel file"),
        ([tmp_path / "wh", "--python-version", "twelve"], "--python-version must look like 3.12"),
        ([tmp_path / "full"], "is not empty and not a wheelhouse"),
    ):
        result = subprocess.run([str(BUILD), *map(str, arguments)], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHON": sys.executable})
        assert result.returncode == 2, (arguments, result.stderr)
        assert result.stderr.strip().count("\n") == 0 and expected in result.stderr, (arguments, result.stderr)


def test_install_refuses_a_folder_that_is_not_a_wheelhouse(tmp_path):
    result = subprocess.run([str(INSTALL), str(tmp_path), str(tmp_path / "venv")], capture_output=True, text=True,
                            timeout=60, env=offline_environment())
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"install_offline.sh: error: {tmp_path} is not a wheelhouse (no wheelhouse.json/requirements.txt): "
        "make one with scripts/build_wheelhouse.sh"
    )
    assert not (tmp_path / "venv").exists()
