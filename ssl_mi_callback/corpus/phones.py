"""The shared phone inventory and the frame labelling (20 ms frames, wav2vec2/HuBERT geometry).

Both engines are mapped onto the 39 CMU/ARPAbet phones plus ``sil`` (40 classes), the same
reduction as the standard TIMIT 39-phone folding: schwa (ax) -> AH, r-coloured schwa (axr) -> ER,
pauses -> sil. ``phones.txt`` lists the classes, one per line; a label id is the line index.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

SILENCE = "sil"
ARPABET = (
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH",
    "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH",
    "UW", "V", "W", "Y", "Z", "ZH",
)
PHONES: Tuple[str, ...] = (SILENCE,) + ARPABET
PHONE_ID: Dict[str, int] = {name: index for index, name in enumerate(PHONES)}

FRAME_SAMPLES = 400  # 25 ms receptive field at 16 kHz
HOP_SAMPLES = 320  # 20 ms stride

# flite (CMU lexicon, lower case) -> shared set
FLITE_TO_SHARED: Dict[str, str] = {name.lower(): name for name in ARPABET}
FLITE_TO_SHARED.update({"ax": "AH", "axr": "ER", "pau": SILENCE, "h#": SILENCE, "brth": SILENCE})

# espeak-ng English phoneme mnemonics (phsource/ph_english*, all en dialects) -> shared set.
# Diphthongs followed by a schwa (aI@, aU@) keep their diphthong; centring diphthongs map to the
# nucleus (e@ -> EH, i@ -> IH/IY, U@ -> UH); flaps (t#, d#) and dental t[ fold to their stop.
ESPEAK_TO_SHARED: Dict[str, str] = {
    # pauses and boundaries
    "_": SILENCE, "_:": SILENCE, "_!": SILENCE, "_^_": SILENCE, "_|": SILENCE, "||": SILENCE,
    "_;_": SILENCE,
    # vowels
    "@": "AH", "@2": "AH", "@5": "AH", "@-": "AH", "a#": "AH", "V": "AH",
    "3": "ER", "3:": "ER", "3:r": "ER", "@r": "ER", "IR": "ER", "VR": "ER",  # Scottish /əɹ/, /ʌɹ/
    "a": "AE", "aa": "AE", "&": "AE", "a2": "AE",
    "A:": "AA", "A@": "AA", "A": "AA", "0": "AA", "0#": "AA", "A#": "AA",
    "O": "AO", "O:": "AO", "O@": "AO", "o@": "AO", "O2": "AO", "o:": "AO", "oU#": "OW",
    "E": "EH", "e": "EH", "e@": "EH", "E2": "EH", "E#": "EH",
    "eI": "EY", "aI": "AY", "aI@": "AY", "aI3": "AY", "aI2": "AY", "aU": "AW", "aU@": "AW",
    "OI": "OY", "oU": "OW", "o": "OW", "O@r": "AO",
    "I": "IH", "I2": "IH", "I#": "IH", "i@": "IY", "i@3": "IY", "i": "IY", "i:": "IY",
    "U": "UH", "U@": "UH", "u:": "UW", "u": "UW", "w#": "W",
    # consonants
    "b": "B", "d": "D", "d#": "D", "D": "DH", "dZ": "JH", "f": "F", "g": "G", "h": "HH",
    "j": "Y", ";": "Y", "k": "K", "l": "L", "@L": "L", "l/": "L", "L": "L", "m": "M", "m-": "M",
    "n": "N", "n-": "N", "N": "NG", "p": "P", "r": "R", "r-": "R", "*": "T", "s": "S", "S": "SH",
    "t": "T", "t#": "T", "t[": "T", "?": "T", "T": "TH", "tS": "CH", "v": "V", "w": "W",
    "W": "W", "x": "HH", "z": "Z", "Z": "ZH",
}
# ';' appears in espeak's "the" + vowel-initial word linking (D I2 ; V N ...): a short voiced
# glide, hence Y. '@L' is syllabic l (as in "uncle").


class UnknownPhone(KeyError):
    """An engine produced a phone symbol the shared inventory has no mapping for."""


def to_shared(engine: str, symbol: str) -> str:
    """Map an engine's phone symbol to the shared inventory (raises UnknownPhone)."""
    table = ESPEAK_TO_SHARED if engine == "espeak" else FLITE_TO_SHARED
    try:
        return table[symbol]
    except KeyError:
        raise UnknownPhone(f"{engine} phone {symbol!r} has no mapping in the shared phone set")


def num_frames(num_samples: int) -> int:
    """Frames of a wav2vec2/HuBERT feature encoder for ``num_samples`` at 16 kHz: (n-400)//320+1."""
    if num_samples < FRAME_SAMPLES:
        return 0
    return (num_samples - FRAME_SAMPLES) // HOP_SAMPLES + 1


def frame_labels(starts: Sequence[int], phone_ids: Sequence[int], num_samples: int) -> np.ndarray:
    """Label of each 20 ms frame: the phone active at the frame's centre sample.

    ``starts`` are phone start samples (ascending) at 16 kHz; before the first phone is silence.
    Frame ``i`` covers samples [320 i, 320 i + 400); its centre is 320 i + 200.
    """
    frames = num_frames(num_samples)
    centres = np.arange(frames, dtype=np.int64) * HOP_SAMPLES + FRAME_SAMPLES // 2
    starts_array = np.asarray(starts, dtype=np.int64)
    ids = np.asarray(phone_ids, dtype=np.int64)
    if starts_array.size and np.any(np.diff(starts_array) < 0):
        raise ValueError("phone starts must be non-decreasing")
    position = np.searchsorted(starts_array, centres, side="right") - 1
    labels = np.full(frames, PHONE_ID[SILENCE], dtype=np.int64)
    inside = position >= 0
    labels[inside] = ids[position[inside]]
    return labels


def write_phone_list(path) -> None:
    """phones.txt: one class name per line, line index = label id."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(PHONES) + "\n")


def read_phone_list(path) -> List[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]
