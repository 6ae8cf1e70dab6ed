"""espeak-ng through its C library (ctypes): audio plus the exact start sample of every phone.

``espeak_Initialize`` in synchronous mode with phoneme events makes the library call our callback
with audio chunks and events; each ``espeakEVENT_PHONEME`` carries the phone mnemonic and
``sample``, the absolute index of the phone's first sample in the utterance's audio. Phone
boundaries therefore come from the synthesizer itself, not from a separate alignment.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import List, Optional, Tuple

import numpy as np

from .errors import EngineUnavailable
from .isolation import ChildFailed, run_in_fork

logger = logging.getLogger("ssl_mi_callback.corpus")

INSTALL_HINT = "install espeak-ng (Debian/Ubuntu: apt-get install espeak-ng libespeak-ng1)"

# espeak_AUDIO_OUTPUT / options / event types / parameters from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


def load_library() -> ctypes.CDLL:
    """The libespeak-ng shared library, or EngineUnavailable with an install hint."""
    candidates = ["libespeak-ng.so.1", ctypes.util.find_library("espeak-ng"), "libespeak-ng.dylib"]
    for name in candidates:
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise EngineUnavailable(f"espeak-ng library (libespeak-ng) not found: {INSTALL_HINT}")


class EspeakSynthesizer:
    """One initialised espeak-ng instance (the library is process-global: one per process)."""

    def __init__(self) -> None:
        lib = load_library()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        self._lib = lib
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise EngineUnavailable(f"espeak_Initialize failed ({self.sample_rate}): {INSTALL_HINT}")
        data_path = ctypes.c_char_p()
        self.version = lib.espeak_Info(ctypes.byref(data_path)).decode()
        self.data_path = (data_path.value or b"").decode()
        self._chunks: List[np.ndarray] = []
        self._phones: List[Tuple[str, int]] = []
        self._callback = _CALLBACK(self._on_synth)  # keep a reference: the library holds a pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_PHONEME:
                self._phones.append((event.id.string.decode("utf-8", "replace"), event.sample))
            index += 1
        return 0

    @staticmethod
    def probe() -> dict:
        """Version and data path, learnt in a forked child so this process stays uninitialised."""
        load_library()  # a missing library fails here, with the install hint

        def describe() -> dict:
            engine = EspeakSynthesizer()
            return {"version": engine.version, "data_path": engine.data_path,
                    "sample_rate": engine.sample_rate}

        try:
            return run_in_fork(describe)
        except ChildFailed as error:
            raise EngineUnavailable(f"espeak-ng does not initialise ({error}): {INSTALL_HINT}")

    def has_variant(self, variant: str) -> bool:
        """Whether espeak-ng-data has the voice variant file (unknown variants are ignored silently)."""
        return os.path.isfile(os.path.join(self.data_path, "voices", "!v", variant))

    def set_voice(self, voice: str) -> None:
        """Select a voice such as ``en-us``, ``en`` (British) or ``en-us+f2`` (dialect+variant)."""
        dialect, _, variant = voice.partition("+")
        if variant and not self.has_variant(variant):
            raise ValueError(f"espeak-ng voice variant {variant!r} not found in {self.data_path}")
        status = self._lib.espeak_SetVoiceByName(voice.encode())
        if status != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r} (error {status}); "
                             "see `espeak-ng --voices=en` and `--voices=variant`")

    def synthesize(self, text: str, voice: str, *, words_per_minute: int = 175, pitch: int = 50,
                   pitch_range: int = 50) -> Tuple[np.ndarray, List[Tuple[str, int]]]:
        """int16 audio at ``sample_rate`` and (phone, start sample) pairs in time order."""
        self.set_voice(voice)
        for parameter, value in ((_PARAM_RATE, words_per_minute), (_PARAM_PITCH, pitch),
                                 (_PARAM_RANGE, pitch_range), (_PARAM_VOLUME, 100)):
            self._lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks, self._phones = [], []
        encoded = text.encode("utf-8") + b"\0"
        status = self._lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                        None, None)
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        phones = sorted(self._phones, key=lambda item: item[1])
        return audio.astype(np.int16, copy=False), phones


def variant_has_echo(data_path: str, variant: str) -> bool:
    """Whether a voice variant adds echo or breath noise (its pauses are then not silent)."""
    try:
        with open(os.path.join(data_path, "voices", "!v", variant), encoding="utf-8",
                  errors="replace") as handle:
            return any(line.split()[:1] in (["echo"], ["breath"]) for line in handle)
    except OSError:
        return False


def check_voice(voice: str, data_path: str) -> Optional[str]:
    """None if espeak-ng can speak with ``voice`` (tried in a forked child), else the problem."""

    def select() -> None:
        EspeakSynthesizer().set_voice(voice)

    try:
        run_in_fork(select)
    except ChildFailed as error:
        return str(error).split(": ", 1)[-1]
    variant = voice.partition("+")[2]
    if variant and variant_has_echo(data_path, variant):
        logger.warning("espeak-ng variant %r adds echo/breath: stop closures cannot be detected "
                       "and stay with the preceding phone", variant)
    return None


_INSTANCE: Optional[EspeakSynthesizer] = None


def synthesizer() -> EspeakSynthesizer:
    """The process's espeak-ng instance, created on first use."""
    global _INSTANCE
    if _INSTANCE is None:
        _INSTANCE = EspeakSynthesizer()
    return _INSTANCE
