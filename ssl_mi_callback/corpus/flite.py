"""flite through its command line: ``-psdur`` prints every phone with its end time in seconds."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from typing import List, Tuple

import numpy as np
import soundfile

from .errors import EngineUnavailable

INSTALL_HINT = "install flite (Debian/Ubuntu: apt-get install flite)"

# Typical mean F0 (Hz) of each voice; a pitch factor scales it (flite's int_f0_target_mean).
NOMINAL_F0 = {"kal": 100.0, "kal16": 100.0, "awb": 120.0, "rms": 105.0, "slt": 170.0,
              "awb_time": 120.0}


def executable() -> str:
    """Path of the flite program, or EngineUnavailable with an install hint."""
    path = shutil.which("flite")
    if path is None:
        raise EngineUnavailable(f"flite not found on PATH: {INSTALL_HINT}")
    return path


@functools.lru_cache(maxsize=None)
def available_voices() -> Tuple[str, ...]:
    """Voices compiled into this flite (``flite -lv``)."""
    output = subprocess.run([executable(), "-lv"], capture_output=True, text=True, check=False)
    text = output.stdout + output.stderr
    return tuple(text.split(":", 1)[1].split()) if ":" in text else ()


@functools.lru_cache(maxsize=None)
def version() -> str:
    output = subprocess.run([executable(), "--version"], capture_output=True, text=True,
                            check=False).stdout
    for token in output.split():
        if token.startswith("flite-"):
            return token[len("flite-"):]
    return "unknown"


def parse_segments(text: str) -> List[Tuple[str, float]]:
    """(phone, end time in seconds) pairs from ``-psdur`` output such as ``pau:0.164 hh:0.255``."""
    segments = []
    for token in text.split():
        name, separator, end = token.rpartition(":")
        if not separator:
            continue
        try:
            segments.append((name, float(end)))
        except ValueError:
            continue
    return segments


def synthesize(text: str, voice: str, *, speed: float = 1.0, pitch: float = 1.0,
               work_dir: str = None) -> Tuple[np.ndarray, int, List[Tuple[str, float]]]:
    """int16 audio, its sample rate, and (phone, end seconds) pairs."""
    handle, wav_path = tempfile.mkstemp(suffix=".wav", dir=work_dir)
    os.close(handle)
    try:
        command = [executable(), "-voice", voice, "-psdur",
                   "--setf", f"duration_stretch={1.0 / speed:.4f}",
                   "--setf", f"int_f0_target_mean={NOMINAL_F0.get(voice, 110.0) * pitch:.2f}",
                   "-t", text, "-o", wav_path]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"flite failed ({result.returncode}) for voice {voice}: "
                               f"{result.stderr.strip()[:200]}")
        audio, sample_rate = soundfile.read(wav_path, dtype="int16")
    finally:
        os.unlink(wav_path)
    return audio, sample_rate, parse_segments(result.stdout)
