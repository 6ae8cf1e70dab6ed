"""Render one utterance: synthesize, align phones to samples, resample to 16 kHz, add variety."""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Optional, Tuple

import numpy as np
from scipy.signal import resample_poly

from . import espeak, flite
from .phones import PHONE_ID, SILENCE, frame_labels, to_shared

SAMPLE_RATE = 16000

# A stretch of near-digital silence this long that ends exactly at a phone marker is that
# phone's pre-pause (stop closure): espeak emits DoPause(prepause) *before* the phone's marker.
_QUIET_LEVEL = 2  # |sample| <= 2 of 32767
_MIN_QUIET_SECONDS = 0.005
_MARKER_TOLERANCE = 12  # samples at 22050 Hz


@dataclass(frozen=True)
class UtteranceSpec:
    """Everything needed to render one utterance deterministically."""

    index: int
    uid: str
    split: str
    text: str
    engine: str  # "espeak" or "flite"
    voice: str  # engine voice, e.g. "en-us+m3" or "slt"
    speed: float  # 1.0 = the engine's default speaking rate
    pitch: float  # 1.0 = the voice's default pitch
    gain_db: float
    snr_db: Optional[float]  # None: no added noise
    noise_seed: int

    @property
    def voice_id(self) -> str:
        return f"{self.engine}:{self.voice}"


@dataclass
class Segment:
    start: int  # first sample at 16 kHz
    end: int  # one past the last sample
    phone: str  # shared inventory
    symbol: str  # the engine's own symbol


@dataclass
class Rendered:
    spec: UtteranceSpec
    audio: np.ndarray  # int16, 16 kHz
    segments: List[Segment]
    labels: np.ndarray  # one phone id per 20 ms frame

    @property
    def num_samples(self) -> int:
        return int(self.audio.shape[0])


def resample(audio: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Zero-phase polyphase resampling (scipy): times scale exactly by target/source."""
    if source_rate == target_rate:
        return audio.astype(np.float64)
    ratio = Fraction(target_rate, source_rate)
    return resample_poly(audio.astype(np.float64), ratio.numerator, ratio.denominator)


def quiet_runs(audio: np.ndarray, sample_rate: int) -> Tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of stretches of near-digital silence at least 5 ms long."""
    quiet = np.abs(audio.astype(np.int32)) <= _QUIET_LEVEL
    edges = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = ends - starts >= int(_MIN_QUIET_SECONDS * sample_rate)
    return starts[keep], ends[keep]


def attach_prepauses(audio: np.ndarray, sample_rate: int,
                     phones: List[Tuple[str, int]]) -> List[int]:
    """Phone start samples with each phone's pre-pause (stop closure) moved into the phone.

    espeak reports a phone's marker after the silence that precedes it (a stop's closure),
    which would otherwise be labelled as the previous phone. A silent stretch that ends at a
    marker is given to that marker's phone, never reaching back past the previous phone's start;
    silence after a pause phone stays with the pause.
    """
    starts = [sample for _, sample in phones]
    markers = np.asarray(starts, dtype=np.int64)
    if markers.size < 2:
        return starts
    for run_start, run_end in zip(*quiet_runs(audio, sample_rate)):
        k = int(np.argmin(np.abs(markers - run_end)))
        if k == 0 or abs(int(markers[k]) - int(run_end)) > _MARKER_TOLERANCE:
            continue
        if to_shared("espeak", phones[k][0]) == SILENCE:
            continue
        if to_shared("espeak", phones[k - 1][0]) == SILENCE:
            continue
        starts[k] = max(int(run_start), starts[k - 1])
    return starts


def _espeak_segments(spec: UtteranceSpec) -> Tuple[np.ndarray, List[Segment]]:
    engine = espeak.server()
    sample_rate = engine.sample_rate
    pitch_parameter = int(round(min(99, max(0, 50 + 50 * math.log2(spec.pitch)))))
    audio, phones = engine.synthesize(spec.text, spec.voice,
                                      words_per_minute=int(round(175 * spec.speed)),
                                      pitch=pitch_parameter)
    starts = attach_prepauses(audio, sample_rate, phones)
    audio16 = resample(audio, sample_rate)
    scale = SAMPLE_RATE / sample_rate
    starts16 = [min(int(round(start * scale)), audio16.shape[0]) for start in starts]
    ends16 = starts16[1:] + [audio16.shape[0]]
    segments = [Segment(start, end, to_shared("espeak", name), name)
                for (name, _), start, end in zip(phones, starts16, ends16) if end > start]
    first = segments[0].start if segments else audio16.shape[0]
    if first > 0:  # the audio before the first phone event
        segments.insert(0, Segment(0, first, SILENCE, "_"))
    return audio16, segments


def _flite_segments(spec: UtteranceSpec, work_dir: Optional[str]) -> Tuple[np.ndarray,
                                                                             List[Segment]]:
    audio, sample_rate, phones = flite.synthesize(spec.text, spec.voice, speed=spec.speed,
                                                  pitch=spec.pitch, work_dir=work_dir)
    audio16 = resample(audio, sample_rate)
    segments, start = [], 0
    for name, end_seconds in phones:
        end = min(int(round(end_seconds * SAMPLE_RATE)), audio16.shape[0])
        if end > start:
            segments.append(Segment(start, end, to_shared("flite", name), name))
            start = end
    if start < audio16.shape[0]:  # flite's audio can run a few ms past the last phone
        if segments and segments[-1].phone == SILENCE:
            segments[-1].end = audio16.shape[0]
        else:
            segments.append(Segment(start, audio16.shape[0], SILENCE, "pau"))
    return audio16, segments


def _add_variety(audio: np.ndarray, segments: List[Segment], spec: UtteranceSpec) -> np.ndarray:
    """Gain and optional white noise at the spec's SNR (relative to the speech, not pauses)."""
    signal = audio / 32768.0 * 10 ** (spec.gain_db / 20)
    if spec.snr_db is not None:
        speech = np.zeros(signal.shape[0], dtype=bool)
        for segment in segments:
            if segment.phone != SILENCE:
                speech[segment.start:segment.end] = True
        active = signal[speech] if speech.any() else signal
        speech_rms = float(np.sqrt(np.mean(active ** 2))) if active.size else 0.0
        noise = np.random.default_rng(spec.noise_seed).standard_normal(signal.shape[0])
        signal = signal + noise * speech_rms / 10 ** (spec.snr_db / 20)
    peak = float(np.max(np.abs(signal))) if signal.size else 0.0
    if peak > 0.99:
        signal *= 0.99 / peak
    return np.round(signal * 32767).astype(np.int16)


def render(spec: UtteranceSpec, work_dir: Optional[str] = None) -> Rendered:
    """Synthesize ``spec`` and return 16 kHz int16 audio with its phone segments and labels."""
    if spec.engine == "espeak":
        audio, segments = _espeak_segments(spec)
    elif spec.engine == "flite":
        audio, segments = _flite_segments(spec, work_dir)
    else:
        raise ValueError(f"unknown engine {spec.engine!r}")
    audio16 = _add_variety(audio, segments, spec)
    labels = frame_labels([s.start for s in segments], [PHONE_ID[s.phone] for s in segments],
                          audio16.shape[0])
    return Rendered(spec, audio16, segments, labels)
