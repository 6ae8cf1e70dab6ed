"""Synthetic English speech with frame-level phone labels aligned by construction.

espeak-ng (through its C library: the synthesizer reports each phone's first sample) and flite
(``-psdur`` phone end times) speak sentences from a built-in grammar; audio is resampled to
16 kHz mono and labelled every 20 ms with one of 40 shared phone classes (39 ARPAbet + sil).

    python -m ssl_mi_callback.corpus --out data/corpus --minutes 60
"""
from .cli import build_parser, run
from .errors import EngineUnavailable
from .generate import CorpusConfig, CorpusInfo, generate_corpus, plan_utterances
from .labels import read_alignment, read_labels
from .phones import PHONES, SILENCE, frame_labels, num_frames

__all__ = [
    "CorpusConfig", "CorpusInfo", "EngineUnavailable", "PHONES", "SILENCE", "build_parser",
    "frame_labels", "generate_corpus", "num_frames", "plan_utterances", "read_alignment",
    "read_labels", "run",
]
