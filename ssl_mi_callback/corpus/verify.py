"""Checks that a generated corpus's phone labels line up with its audio.

The check is acoustic and independent of the engines: silence must be quiet, vowels loud, and
sibilants (s, z, sh, zh, ch, jh) dominated by high frequencies. For each time shift of the labels
against the audio we measure how well the labels predict those three cues (summed point-biserial
correlations); a correctly aligned corpus agrees best at (or within a few ms of) zero shift.

    python -m ssl_mi_callback.corpus.verify DIR [--split heldout]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import soundfile

from .labels import read_alignment, read_labels
from .phones import HOP_SAMPLES, PHONE_ID, SILENCE, frame_labels

SIBILANTS = ("S", "Z", "SH", "ZH", "CH", "JH")
VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
STEP_SAMPLES = 80  # 5 ms analysis hop
WINDOW_SAMPLES = 320  # 20 ms analysis window


@dataclass
class LagProfile:
    """Agreement between labels and acoustic cues for label shifts (ms, positive = labels late)."""

    lags_ms: List[float]
    agreement: List[float]
    utterances: int

    @property
    def best_lag_ms(self) -> float:
        return self.lags_ms[int(np.argmax(self.agreement))]


def _cues(audio: np.ndarray) -> tuple:
    """Per 5 ms step: log energy and high-frequency share (> 3.5 kHz) of a 20 ms window."""
    steps = max(0, (audio.shape[0] - WINDOW_SAMPLES) // STEP_SAMPLES + 1)
    index = np.arange(steps)[:, None] * STEP_SAMPLES + np.arange(WINDOW_SAMPLES)[None, :]
    frames = audio[index] * np.hanning(WINDOW_SAMPLES)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    total = power.sum(axis=1) + 1e-10
    high = power[:, int(3500 / 16000 * WINDOW_SAMPLES):].sum(axis=1)
    return np.log(total), high / total


def _point_biserial(flags: np.ndarray, values: np.ndarray) -> float:
    if flags.all() or not flags.any():
        return 0.0
    return float(np.corrcoef(flags.astype(np.float64), values)[0, 1])


def lag_profile(corpus_dir, split: Optional[str] = None, *, engine: Optional[str] = None,
                max_lag_ms: float = 40, max_utterances: int = 200) -> LagProfile:
    """Label/audio agreement for label shifts in 5 ms steps up to ``max_lag_ms``.

    Uses ``split`` (default: every split), only ``engine``'s utterances if given.
    """
    corpus_dir = Path(corpus_dir)
    rows = _utterance_rows(corpus_dir)
    if split is None:
        record = json.loads((corpus_dir / "corpus.json").read_text(encoding="utf-8"))
        splits = list(record["splits"])
    else:
        splits = [split]
    manifest = [line for name in splits for line in
                (corpus_dir / f"{name}.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    max_steps = int(round(max_lag_ms / 5))
    lags = list(range(-max_steps, max_steps + 1))
    silence_scores = np.zeros(len(lags))
    sibilant_scores = np.zeros(len(lags))
    vowel_scores = np.zeros(len(lags))
    used = 0
    for line in manifest:
        relative = line.split("\t")[0]
        uid = Path(relative).stem
        if engine is not None and rows[uid]["engine"] != engine:
            continue
        audio, _ = soundfile.read(str(corpus_dir / relative), dtype="float64")
        log_energy, high_share = _cues(audio)
        centres = np.arange(log_energy.shape[0]) * STEP_SAMPLES + WINDOW_SAMPLES // 2
        segments = read_alignment(corpus_dir, uid)
        starts = np.array([s[0] for s in segments])
        phones = [s[2] for s in segments]
        for column, lag in enumerate(lags):
            shifted = centres + lag * STEP_SAMPLES  # labels late by lag: look further ahead
            position = np.clip(np.searchsorted(starts, shifted, side="right") - 1, 0, None)
            names = np.array(phones, dtype=object)[position]
            silence_scores[column] += _point_biserial(names == SILENCE, -log_energy)
            sibilant_scores[column] += _point_biserial(np.isin(names, SIBILANTS), high_share)
            vowel_scores[column] += _point_biserial(np.isin(names, VOWELS), log_energy)
        used += 1
        if used >= max_utterances:
            break
    agreement = (silence_scores + sibilant_scores + vowel_scores) / max(used, 1)
    return LagProfile([lag * 5.0 for lag in lags], agreement.tolist(), used)


def check_label_files(corpus_dir, split: str) -> int:
    """Assert ``<split>.phn`` matches the manifest lengths and the alignments; return #utterances."""
    corpus_dir = Path(corpus_dir)
    manifest = (corpus_dir / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    labels = read_labels(corpus_dir, split)
    if len(labels) != len(manifest):
        raise AssertionError(f"{split}: {len(manifest)} manifest lines but {len(labels)} label lines")
    for line, frame_ids in zip(manifest, labels):
        relative, num_samples = line.split("\t")
        num_samples = int(num_samples)
        info = soundfile.info(str(corpus_dir / relative))
        if info.frames != num_samples or info.samplerate != 16000 or info.channels != 1:
            raise AssertionError(f"{relative}: manifest says {num_samples} samples, file has "
                                 f"{info.frames} at {info.samplerate} Hz x{info.channels}")
        expected_frames = (num_samples - 400) // HOP_SAMPLES + 1
        if frame_ids.shape[0] != expected_frames:
            raise AssertionError(f"{relative}: {frame_ids.shape[0]} labels, expected "
                                 f"{expected_frames}")
        segments = read_alignment(corpus_dir, Path(relative).stem)
        rebuilt = frame_labels([s[0] for s in segments], [PHONE_ID[s[2]] for s in segments],
                               num_samples)
        if not np.array_equal(rebuilt, frame_ids):
            raise AssertionError(f"{relative}: frame labels disagree with its alignment")
    return len(labels)


def _utterance_rows(corpus_dir: Path) -> Dict[str, dict]:
    lines = (corpus_dir / "utterances.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return {row[0]: dict(zip(header, row)) for row in (line.split("\t") for line in lines[1:])}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssl_mi_callback.corpus.verify",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus_dir")
    parser.add_argument("--split", default=None, help="default: every split")
    args = parser.parse_args(argv)
    record = json.loads((Path(args.corpus_dir) / "corpus.json").read_text(encoding="utf-8"))
    splits = [args.split] if args.split else list(record["splits"])
    for split in splits:
        count = check_label_files(args.corpus_dir, split)
        print(f"{split}: {count} utterances, label files consistent")
    for engine in record["engines"]:
        profile = lag_profile(args.corpus_dir, args.split, engine=engine)
        if profile.utterances == 0:
            print(f"{engine}: no utterances in {args.split or 'the corpus'}")
            continue
        curve = " ".join(f"{lag:+.0f}:{value:.3f}" for lag, value in
                         zip(profile.lags_ms, profile.agreement))
        print(f"{engine}: best label shift {profile.best_lag_ms:+.0f} ms over "
              f"{profile.utterances} utterances [{curve}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
