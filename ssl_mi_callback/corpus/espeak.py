"""espeak-ng through its C library: audio plus the exact start sample of every phone.

Synthesis runs in a small helper process (``_espeak_server.py``, standard library only) that
calls libespeak-ng through ctypes and forks a fresh child per utterance, so every utterance is
rendered from the same pristine engine state, whatever was spoken before and whichever worker
speaks it. Phone boundaries come from the synthesizer's own phoneme events (``sample`` field),
not from a separate alignment.
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import os
import pickle
import struct
import subprocess
import sys
from typing import List, Optional, Tuple

import numpy as np

from .errors import EngineUnavailable

logger = logging.getLogger("ssl_mi_callback.corpus")

INSTALL_HINT = "install espeak-ng (Debian/Ubuntu: apt-get install espeak-ng libespeak-ng1)"
_SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_espeak_server.py")


def load_library() -> ctypes.CDLL:
    """The libespeak-ng shared library, or EngineUnavailable with an install hint."""
    for name in ("libespeak-ng.so.1", ctypes.util.find_library("espeak-ng"), "libespeak-ng.dylib"):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise EngineUnavailable(f"espeak-ng library (libespeak-ng) not found: {INSTALL_HINT}")


class EspeakServer:
    """Client of one ``_espeak_server.py`` process (one per worker process)."""

    def __init__(self) -> None:
        load_library()  # a missing library fails here, with the install hint
        self._process = subprocess.Popen([sys.executable, "-I", "-S", _SERVER_SCRIPT],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            self.info = self._receive()
        except RuntimeError as error:
            self.close()
            raise EngineUnavailable(f"espeak-ng does not initialise ({error}): {INSTALL_HINT}")
        self.sample_rate: int = self.info["sample_rate"]
        self.version: str = self.info["version"]
        self.data_path: str = self.info["data_path"]

    def _receive(self):
        header = self._process.stdout.read(4)
        if len(header) < 4:
            raise RuntimeError(f"espeak-ng helper exited (status {self._process.poll()})")
        (size,) = struct.unpack("<I", header)
        status, value = pickle.loads(self._process.stdout.read(size))
        if status != "ok":
            raise RuntimeError(value)
        return value

    def _request(self, *message):
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._process.stdin.write(struct.pack("<I", len(payload)) + payload)
        self._process.stdin.flush()
        return self._receive()

    def synthesize(self, text: str, voice: str, *, words_per_minute: int = 175, pitch: int = 50,
                   pitch_range: int = 50) -> Tuple[np.ndarray, List[Tuple[str, int]]]:
        """int16 audio at ``sample_rate`` and (phone mnemonic, start sample) pairs in order."""
        try:
            raw, phones = self._request("speak", text, voice, int(words_per_minute), int(pitch),
                                        int(pitch_range))
        except RuntimeError as error:
            raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {error}") from None
        return np.frombuffer(raw, dtype="<i2").astype(np.int16), [tuple(p) for p in phones]

    def check_voice(self, voice: str) -> Optional[str]:
        """None if espeak-ng can speak with ``voice``, else the problem in one line."""
        try:
            self._request("voice", voice)
        except RuntimeError as error:
            return str(error).split(": ", 1)[-1]
        variant = voice.partition("+")[2]
        if variant and variant_has_echo(self.data_path, variant):
            logger.warning("espeak-ng variant %r adds echo/breath: stop closures cannot be "
                           "detected and stay with the preceding phone", variant)
        return None

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait()
        self._process.stdout.close()


def variant_has_echo(data_path: str, variant: str) -> bool:
    """Whether a voice variant adds echo or breath noise (its pauses are then not silent)."""
    try:
        with open(os.path.join(data_path, "voices", "!v", variant), encoding="utf-8",
                  errors="replace") as handle:
            return any(line.split()[:1] in (["echo"], ["breath"]) for line in handle)
    except OSError:
        return False


_SERVER: Optional[EspeakServer] = None


def server() -> EspeakServer:
    """This process's espeak-ng helper, started on first use."""
    global _SERVER
    if _SERVER is None or _SERVER._process.poll() is not None:
        _SERVER = EspeakServer()
        atexit.register(_SERVER.close)
    return _SERVER
