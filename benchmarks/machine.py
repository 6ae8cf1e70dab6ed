"""What machine a benchmark ran on (shared by the benchmarks' result headers)."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional


def _cpuinfo(field: str) -> Optional[str]:
    """The first value of ``field`` in /proc/cpuinfo (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


OPENBLAS_FALLBACK_CORES = frozenset({"Unknown", "Katmai", "Coppermine", "Northwood", "Banias", "Prescott", "Core2",
                                     "Penryn", "Dunnington", "Nehalem", "Atom", "Sandybridge"})
"""OpenBLAS kernel families older than AVX2: what its DYNAMIC_ARCH build picks for a CPU model it does not know."""


def cpu_flags() -> frozenset:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    return frozenset((_cpuinfo("flags") or "").split())


def _bundled_openblas(package: str, libraries_folder: str) -> Optional[Path]:
    """The OpenBLAS a wheel bundles beside its package (``site-packages/<libraries_folder>/libopenblas*.so``),
    found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    libraries = sorted((Path(spec.origin).parent.parent / libraries_folder).glob("libopenblas*.so*"))
    return libraries[0] if libraries else None


def faiss_openblas() -> Optional[Path]:
    """The OpenBLAS that the faiss-cpu wheel bundles (``faiss_cpu.libs/libopenblas*.so``), if any."""
    return _bundled_openblas("faiss", "faiss_cpu.libs")


def openblas_kernels(library: Path) -> str:
    """The kernel family (``openblas_get_corename``) ``library`` picks under this environment, read in a
    fresh interpreter, since OpenBLAS reads OPENBLAS_CORETYPE once, when it is loaded."""
    probe = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "  # numpy's 64-bit-integer build suffixes its symbols
             "corename = getattr(lib, 'openblas_get_corename', None) or lib.openblas_get_corename64_; "
             "corename.restype = ctypes.c_char_p; print(corename().decode())")
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(library.parent), os.environ.get("LD_LIBRARY_PATH")])))
    run = subprocess.run([sys.executable, "-c", probe, str(library)], capture_output=True, text=True, env=env, timeout=60)
    if run.returncode != 0:  # the benchmark goes on; its report says the kernels are unknown
        return "unknown: " + (run.stderr.strip().splitlines() or ["no output"])[-1]
    return run.stdout.strip()


def numpy_openblas() -> Optional[Path]:
    """The OpenBLAS that the numpy wheel bundles (``numpy.libs/libopenblas*.so``), if any."""
    return _bundled_openblas("numpy", "numpy.libs")


def pin_openblas_kernels(library: Optional[Path]) -> Optional[str]:
    """Give an OpenBLAS the fastest kernels this CPU runs; call before ``library`` is loaded. Returns what it
    uses, for the report (None without the library).

    An OpenBLAS falls back to its SSE3 ``Prescott`` kernels on a CPU model it does not know. faiss-cpu 1.15.1
    bundles OpenBLAS 0.3.15: on an AVX-512 Xeon of 2026, faiss's cheapest k-means setting at N = 1e6,
    D = 768, K = 500 took 51.9 s against 8.97 s with ``SkylakeX`` (benchmarks/speed/kmeans_fit_sample,
    and the same command under OPENBLAS_CORETYPE=Prescott). numpy 1.26's OpenBLAS 0.3.23 does the same
    there, and scikit-learn's LogisticRegression computes its loss with numpy's BLAS
    (benchmarks/speed/probe_folds/notes.md). Then, unless the user chose kernels, OPENBLAS_CORETYPE is
    set to the newest family the CPU's flags allow (``SkylakeX`` with AVX-512, ``Haswell`` with AVX2), so
    that a comparison is with the library at its best on this machine, not with a detection gap. The
    variable is process-wide: every OpenBLAS loaded after this call and every child process gets the same
    kernels, which this CPU runs; one loaded earlier keeps its own choice.
    """
    if library is None:
        return None
    chosen = openblas_kernels(library)
    if "OPENBLAS_CORETYPE" in os.environ:
        return f"{chosen} (OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} given)"
    if chosen not in OPENBLAS_FALLBACK_CORES:
        return f"{chosen} (detected by OpenBLAS)"
    flags = cpu_flags()
    better = "SkylakeX" if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags else "Haswell" if "avx2" in flags else None
    if better is None:
        return f"{chosen} (detected by OpenBLAS; the CPU has no AVX2)"
    os.environ["OPENBLAS_CORETYPE"] = better
    return f"{openblas_kernels(library)} (OPENBLAS_CORETYPE={better} set by the benchmark: OpenBLAS detected {chosen}, its fallback for a CPU it does not know)"


@contextlib.contextmanager
def openblas_kernels_pinned(library: Optional[Path]) -> Iterator[Optional[str]]:
    """:func:`pin_openblas_kernels` for the ``with`` block only (load the library inside it): OPENBLAS_CORETYPE
    is restored afterwards, so processes started later (the benchmark's training runs) pick their own kernels."""
    before = os.environ.get("OPENBLAS_CORETYPE")
    try:
        yield pin_openblas_kernels(library)
    finally:
        if before is None:
            os.environ.pop("OPENBLAS_CORETYPE", None)
        else:
            os.environ["OPENBLAS_CORETYPE"] = before
