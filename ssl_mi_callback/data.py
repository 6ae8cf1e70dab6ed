"""Held-out subsets: manifests, audio loading, resampling, cropping and batching.

The evaluator loads the same held-out subset at every evaluation, so loading is deterministic
(manifest order, or sorted paths for a folder) and never raises on a bad file: every unusable
entry becomes a counted skip with a one-line reason. Only a subset with no usable audio at all
(or a missing manifest) raises ``HeldOutDataError``.

    subset = load_heldout("data/corpus/heldout.tsv", max_seconds=300)
    print(subset.describe())
    for batch in plan_batches(subset.utterances, batch_seconds=64)[rank::world_size]:
        waveforms = batch.waveforms()          # [B, batch.num_samples], no padding
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import (TYPE_CHECKING, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple,
                    Union)

import numpy as np
import soundfile

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger("ssl_mi_callback.data")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aif", ".aiff", ".au")

# skip kinds (the keys of HeldOutSubset.skip_counts)
MISSING = "missing"
EMPTY = "empty"
TOO_SHORT = "too short"
CORRUPT = "corrupt"
NOT_AUDIO = "not audio"
NON_FINITE = "non-finite"
SAMPLE_RATE = "sample rate"
BAD_LINE = "bad manifest line"

_AUDIO_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"ID3", b"FORM", b".snd",
                b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xfa")
_LOGGED_SKIPS = 20  # individual skip warnings per load; the rest are summarised

Source = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


class HeldOutDataError(ValueError):
    """The held-out subset cannot be used at all (missing manifest, no usable audio)."""


@dataclass(frozen=True, eq=False)
class Utterance:
    """One held-out utterance: mono float32 audio in [-1, 1] at the subset's sample rate."""

    index: int  # position in the subset (0, 1, ...); sharding is round-robin on it
    uid: str  # path as written in the manifest / relative to the folder
    waveform: np.ndarray
    path: str = ""
    source_samples: int = 0  # length of the file before cropping (0: not cropped / unknown)

    @property
    def num_samples(self) -> int:
        return int(self.waveform.shape[0])


@dataclass
class HeldOutSubset:
    """The usable utterances of a held-out source, and what was skipped and why."""

    source: str
    sample_rate: int
    utterances: List[Utterance]
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (path or manifest:line, reason)
    skip_counts: Dict[str, int] = field(default_factory=dict)  # kind -> count
    downmixed: int = 0
    resampled: int = 0
    clipped: int = 0
    cropped: int = 0
    budget_reached: bool = False  # stopped adding utterances at max_seconds

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    @property
    def num_samples(self) -> int:
        return sum(u.num_samples for u in self.utterances)

    @property
    def total_seconds(self) -> float:
        return self.num_samples / self.sample_rate

    def describe(self) -> str:
        """One line: size, skips by kind, conversions and the fingerprint."""
        parts = [f"held-out '{self.source}': {len(self.utterances)} utterances, "
                 f"{self.total_seconds:.1f} s at {self.sample_rate} Hz",
                 f"{len(self.skipped)} skipped{_breakdown(self.skip_counts)}"]
        for count, label in ((self.downmixed, "downmixed to mono"), (self.resampled, "resampled"),
                             (self.clipped, "clipped to [-1, 1]"), (self.cropped, "cropped")):
            if count:
                parts.append(f"{count} {label}")
        if self.budget_reached:
            parts.append("capped at max_seconds")
        parts.append(f"fingerprint {self.fingerprint()}")
        return ", ".join(parts)

    def fingerprint(self) -> str:
        """Short hash of the uids and lengths: equal fingerprints mean the same subset."""
        digest = hashlib.sha256()
        for utterance in self.utterances:
            digest.update(f"{utterance.uid}\t{utterance.num_samples}\n".encode("utf-8",
                                                                             "surrogatepass"))
        return digest.hexdigest()[:16]


def _breakdown(counts: Dict[str, int]) -> str:
    if not counts:
        return ""
    return " (" + ", ".join(f"{count} {kind}" for kind, count in sorted(
        counts.items(), key=lambda item: (-item[1], item[0]))) + ")"


# ------------------------------------------------------------------------------ manifests

@dataclass(frozen=True)
class ManifestEntry:
    line_number: int  # 1-based, as an editor shows it (the root is line 1)
    path: str
    num_samples: int


@dataclass
class Manifest:
    """A parsed fairseq manifest: root line, then ``relative/path<TAB>num_samples`` lines."""

    root: str
    entries: List[ManifestEntry]
    bad_lines: List[Tuple[int, str]]  # (line number, reason)
    blank_lines: int


def parse_manifest(text: str) -> Manifest:
    """Parse manifest text; never raises: each malformed line becomes a ``bad_lines`` entry.

    Every line after the root is exactly one of: an entry, a bad line, or a blank line.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    root = lines[0].rstrip("\r").strip() if lines else ""
    entries: List[ManifestEntry] = []
    bad_lines: List[Tuple[int, str]] = []
    blank = 0
    for line_number, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line:
            blank += 1
            continue
        columns = line.split("\t")
        if len(columns) != 2:
            bad_lines.append((line_number, f"expected 2 tab-separated columns (path, num_samples), "
                                           f"got {len(columns)}"))
            continue
        path, count = columns[0].strip(), columns[1].strip()
        if not path:
            bad_lines.append((line_number, "empty path"))
            continue
        if not (count.isascii() and count.isdigit()):
            bad_lines.append((line_number, f"num_samples {count[:40]!r} is not a non-negative "
                                           "integer"))
            continue
        entries.append(ManifestEntry(line_number, path, int(count)))
    return Manifest(root, entries, bad_lines, blank)


# ------------------------------------------------------------------------------ audio reading

class _Skip(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def _check_wav_structure(path: str, header: bytes, file_size: int) -> None:
    """Catch truncated RIFF/WAVE files, which libsndfile would read silently shortened."""
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return
    with open(path, "rb") as handle:
        handle.seek(12)
        position = 12
        found_format = False
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                what = "data chunk" if found_format else "fmt chunk"
                raise _Skip(CORRUPT, f"truncated wav: no {what} before end of file")
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            position += 8
            if chunk_id == b"fmt ":
                found_format = True
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):  # streaming writers leave the size open
                    return
                available = file_size - position
                if chunk_size > available:
                    raise _Skip(CORRUPT, f"truncated wav: header declares {chunk_size} bytes of "
                                         f"audio, file holds {available}")
                return
            position += chunk_size + (chunk_size & 1)
            if position > file_size:
                raise _Skip(CORRUPT, f"truncated wav: chunk {chunk_id!r} runs past end of file")
            handle.seek(position)


_RESAMPLER = None  # cached torchaudio.functional.resample, or the import error text


def _torchaudio_resample():
    global _RESAMPLER
    if _RESAMPLER is None:
        try:
            from torchaudio.functional import resample
            _RESAMPLER = resample
        except Exception as error:  # ImportError, or an OSError from a mismatched build
            _RESAMPLER = _first_line(error)
    return _RESAMPLER


def _resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    resample = _torchaudio_resample()
    if isinstance(resample, str):
        raise _Skip(SAMPLE_RATE, f"{source_rate} Hz audio needs resampling to {target_rate} Hz: "
                                 f"install torchaudio (pip install torchaudio; {resample})")
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
    return resample(tensor, source_rate, target_rate).numpy().astype(np.float32, copy=False)


def _frames_to_read(max_samples: Optional[int], source_rate: int, sample_rate: int) -> int:
    """Frames of a ``source_rate`` file that give its first ``max_samples`` samples at ``sample_rate``
    exactly as a read of the whole file would (-1: the whole file).

    torchaudio's sinc resampler (defaults: ``lowpass_filter_width`` 6, ``rolloff`` 0.99) turns each
    block of ``orig = source_rate / g`` input samples into ``new = sample_rate / g`` output samples
    (g = gcd of the rates) and looks ``width = ceil(6 orig / (0.99 min(orig, new)))`` input samples
    on either side of the block, so output ``j`` needs input below ``ceil((j + 1) / new) orig + width``.
    Reading ``ceil(max_samples / new) orig + 2 width`` frames (one filter width to spare) exceeds
    ``max_samples`` at the source rate by less than ``orig + 2 width``: under 500 samples at 44.1 kHz,
    about one second for rates whose ratio does not reduce.
    """
    if max_samples is None:
        return -1
    if source_rate == sample_rate:
        return max_samples
    common = math.gcd(source_rate, sample_rate)
    orig, new = source_rate // common, sample_rate // common
    width = math.ceil(6 * orig / (0.99 * min(orig, new)))
    return -(-max_samples // new) * orig + 2 * width


def _resampled_length(num_frames: int, source_rate: int, sample_rate: int) -> int:
    """Samples that resampling ``num_frames`` frames gives (torchaudio's ``ceil(new * length / orig)``)."""
    if source_rate == sample_rate:
        return num_frames
    common = math.gcd(source_rate, sample_rate)
    return math.ceil((sample_rate // common) * num_frames / (source_rate // common))


@dataclass
class _Loaded:
    waveform: np.ndarray  # the file's first samples: at least max_samples when the file is that long
    source_samples: int  # length of the whole file at the target rate
    downmixed: bool
    resampled: bool
    clipped: bool


def _read_audio(path: str, sample_rate: int, max_samples: Optional[int] = None) -> _Loaded:
    """Mono float32 audio at ``sample_rate``, or _Skip with the kind and a one-line reason.

    With ``max_samples`` only about that much of the file is read (and checked, and resampled):
    memory at start-up is bounded by ``max_utterance_seconds``, not by the longest file.
    """
    try:
        if not os.path.exists(path):
            raise _Skip(MISSING, "missing file")
        if os.path.isdir(path):
            raise _Skip(NOT_AUDIO, "is a directory, not an audio file")
        file_size = os.path.getsize(path)
        if file_size == 0:
            raise _Skip(EMPTY, "empty file (0 bytes)")
        with open(path, "rb") as handle:
            header = handle.read(12)
    except (OSError, ValueError) as error:  # unreadable, or a NUL byte in the path
        raise _Skip(MISSING, f"cannot open: {_first_line(error)}")
    _check_wav_structure(path, header, file_size)
    try:
        with soundfile.SoundFile(path) as audio_file:
            source_rate, declared_frames = audio_file.samplerate, audio_file.frames
            wanted = _frames_to_read(max_samples, source_rate, sample_rate)
            data = audio_file.read(frames=wanted, dtype="float32", always_2d=True)
    except Exception as error:
        if header.startswith(_AUDIO_MAGIC):
            raise _Skip(CORRUPT, f"corrupt audio: {_first_line(error)}")
        raise _Skip(NOT_AUDIO, f"not an audio file ({_first_line(error)})")
    if data.shape[0] == 0:
        raise _Skip(EMPTY, "no audio samples")
    if not np.isfinite(data).all():
        raise _Skip(NON_FINITE, "NaN or infinite samples")
    # a short read is the whole file; a full one stops at `wanted`, and the header gives the rest
    total_frames = data.shape[0] if wanted < 0 or data.shape[0] < wanted else max(declared_frames, data.shape[0])
    downmixed = data.shape[1] > 1
    waveform = data.mean(axis=1, dtype=np.float32) if downmixed else data[:, 0]
    del data
    resampled = source_rate != sample_rate
    if resampled:
        waveform = _resample(waveform, source_rate, sample_rate)
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    clipped = peak > 1.0
    if clipped:
        waveform = np.clip(waveform, -1.0, 1.0)
    return _Loaded(np.ascontiguousarray(waveform, dtype=np.float32),
                   _resampled_length(total_frames, source_rate, sample_rate), downmixed, resampled, clipped)


# ------------------------------------------------------------------------------ sources

def _list_directory(directory: Path) -> List[Tuple[str, str]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(AUDIO_EXTENSIONS):
                full = Path(dirpath) / name
                found.append((full.relative_to(directory).as_posix(), str(full)))
    return sorted(found)


def _resolve_root(root: str, manifest_path: Path) -> Path:
    """Absolute root as is; a relative one against the manifest's folder, else the cwd."""
    root_path = Path(root)
    if root_path.is_absolute():
        return root_path
    beside_manifest = manifest_path.parent / root_path
    return beside_manifest if beside_manifest.exists() else Path.cwd() / root_path


@dataclass
class _Candidates:
    name: str  # how messages refer to the source
    files: List[Tuple[str, str]]  # (uid, path) in load order
    bad_lines: List[Tuple[str, str]] = field(default_factory=list)  # (manifest:line, reason)
    root: Optional[Path] = None  # a manifest's resolved root


def _read_manifest(path: Path, name: str) -> _Candidates:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise HeldOutDataError(f"cannot read held-out manifest {name}: {_first_line(error)}") \
            from None
    manifest = parse_manifest(text)
    if not manifest.root or "\t" in manifest.root:
        raise HeldOutDataError(f"held-out manifest {name} must start with its root directory on "
                               f"line 1 (fairseq format), got {manifest.root[:80]!r}")
    root = _resolve_root(manifest.root, path)
    files = [(entry.path, str(root / entry.path)) for entry in manifest.entries]
    bad = [(f"{name}:{line}", f"line {line}: {reason}") for line, reason in manifest.bad_lines]
    return _Candidates(name, files, bad, root)


def _candidates(source: Source) -> _Candidates:
    """What to load, in order, for a manifest, a folder, one audio file or a list of paths."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(source)
        if path.is_dir():
            return _Candidates(name, _list_directory(path))
        if path.suffix.lower() in AUDIO_EXTENSIONS:
            return _Candidates(name, [(path.name, name)])
        if path.is_file():
            return _read_manifest(path, name)
        if path.suffix.lower() == ".tsv":
            raise HeldOutDataError(f"held-out manifest not found: {name}")
        raise HeldOutDataError(f"held-out source not found: {name} (expected a fairseq .tsv "
                               "manifest, a folder of audio files, or a list of files)")
    paths = [str(item) for item in source]
    return _Candidates(f"{len(paths)} files", [(p, p) for p in paths])


# ------------------------------------------------------------------------------ loading

def load_heldout(source: Source, *, sample_rate: int = 16000, max_seconds: Optional[float] = None,
                 max_utterance_seconds: Optional[float] = None,
                 min_seconds: float = 0.5) -> HeldOutSubset:
    """Load a held-out subset from a fairseq manifest (.tsv), a folder, or a list of paths.

    Order is deterministic: manifest order, sorted relative paths for a folder (recursive), the
    given order for a list. Each utterance is cropped to ``max_utterance_seconds`` from its start;
    utterances are added until ``max_seconds`` in total (the last one is cropped to fit, or left
    out if that would leave it shorter than ``min_seconds``). Unusable entries are skipped and
    counted; ``HeldOutDataError`` only when nothing usable remains.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    for label, value in (("max_seconds", max_seconds),
                         ("max_utterance_seconds", max_utterance_seconds)):
        if value is not None and not value > 0:
            raise ValueError(f"{label} must be > 0 or None, got {value}")
    if not min_seconds >= 0:
        raise ValueError(f"min_seconds must be >= 0, got {min_seconds}")
    candidates = _candidates(source)
    name = candidates.name
    subset = HeldOutSubset(source=name, sample_rate=sample_rate, utterances=[])
    counts: Counter = Counter()

    def skip(where: str, kind: str, reason: str) -> None:
        subset.skipped.append((where, reason))
        counts[kind] += 1
        if len(subset.skipped) <= _LOGGED_SKIPS:
            logger.warning("held-out '%s': skipping %s: %s", name, where, reason)

    for where, reason in candidates.bad_lines:
        skip(where, BAD_LINE, reason)
    min_samples = int(round(min_seconds * sample_rate))
    crop_samples = None if max_utterance_seconds is None else max(
        1, int(round(max_utterance_seconds * sample_rate)))
    budget = None if max_seconds is None else int(round(max_seconds * sample_rate))
    total = 0
    for uid, path in candidates.files:
        if budget is not None and total >= budget:
            subset.budget_reached = True
            break
        try:
            loaded = _read_audio(path, sample_rate, max_samples=crop_samples)
        except _Skip as problem:
            skip(path, problem.kind, problem.reason)
            continue
        except Exception as error:  # never let one file stop an evaluation
            skip(path, CORRUPT, f"unreadable: {type(error).__name__}: {_first_line(error)}")
            continue
        waveform, source_samples = loaded.waveform, loaded.source_samples
        if source_samples < min_samples:
            skip(path, TOO_SHORT, f"too short: {source_samples / sample_rate:.2f} s < "
                                  f"min_seconds {min_seconds:g}")
            continue
        keep = source_samples if crop_samples is None else min(source_samples, crop_samples)
        keep = min(keep, waveform.shape[0])  # the part read (all of it unless the header overstates)
        if budget is not None and total + keep > budget:
            subset.budget_reached = True
            if budget - total < max(min_samples, 1):
                break
            keep = budget - total
        if keep < source_samples:
            subset.cropped += 1
        if keep < waveform.shape[0]:
            waveform = waveform[:keep].copy()  # a copy frees the rest of what was read
        if loaded.downmixed:
            if subset.downmixed == 0:
                logger.info("held-out '%s': downmixing multi-channel audio to mono (first: %s)",
                            name, path)
            subset.downmixed += 1
        subset.resampled += loaded.resampled
        subset.clipped += loaded.clipped
        subset.utterances.append(Utterance(index=len(subset.utterances), uid=uid,
                                           waveform=np.ascontiguousarray(waveform), path=path,
                                           source_samples=source_samples))
        total += waveform.shape[0]
    subset.skip_counts = dict(counts)
    if len(subset.skipped) > _LOGGED_SKIPS:
        logger.warning("held-out '%s': %d more skipped (see HeldOutSubset.skipped)", name,
                       len(subset.skipped) - _LOGGED_SKIPS)
    if not subset.utterances:
        if not candidates.files and not candidates.bad_lines:
            raise HeldOutDataError(f"held-out subset '{name}' lists no audio files")
        hint = ""
        if candidates.root is not None and not candidates.root.is_dir():
            hint = f"; its root directory {candidates.root} does not exist"
        raise HeldOutDataError(f"held-out subset '{name}' has no usable audio: "
                               f"{len(subset.skipped)} skipped{_breakdown(subset.skip_counts)}"
                               f"{hint}")
    return subset


# ------------------------------------------------------------------------------ batching

@dataclass(frozen=True, eq=False)
class Batch:
    """Utterances of one forward pass, all cropped to the same ``num_samples`` (no padding)."""

    index: int
    utterances: Tuple[Utterance, ...]
    num_samples: int

    def waveforms(self) -> "torch.Tensor":
        """float32 [B, num_samples]."""
        import torch

        return torch.stack([torch.from_numpy(u.waveform[: self.num_samples]) for u in self.utterances])


def plan_batches(utterances: Sequence[Utterance], *, batch_seconds: float, length_quantum_seconds: float = 0.5,
                 sample_rate: int = 16000) -> List[Batch]:
    """Deterministic batches of equal-length utterances, independent of how they are later sharded.

    Each utterance is cropped (from the start) to a multiple of ``length_quantum_seconds`` (0: no
    cropping), so equal lengths batch without padding: padding would change the features of models
    whose first convolution normalises over time (wav2vec 2.0 / HuBERT base). Batches hold at most
    ``batch_seconds`` of audio (at least one utterance), shortest lengths first. Ranks take
    ``batches[rank::world_size]``, so every batch is computed identically at any world size.
    """
    if batch_seconds <= 0 or length_quantum_seconds < 0:
        raise ValueError("batch_seconds must be > 0 and length_quantum_seconds >= 0")
    quantum = int(round(length_quantum_seconds * sample_rate))
    by_length: Dict[int, List[Utterance]] = {}
    for utterance in utterances:
        length = utterance.num_samples
        if quantum > 0 and length >= quantum:
            length = (length // quantum) * quantum
        by_length.setdefault(length, []).append(utterance)
    budget = int(batch_seconds * sample_rate)
    batches: List[Batch] = []
    for length in sorted(by_length):
        group = by_length[length]
        per_batch = max(1, budget // max(length, 1))
        for start in range(0, len(group), per_batch):
            batches.append(Batch(len(batches), tuple(group[start:start + per_batch]), length))
    return batches
