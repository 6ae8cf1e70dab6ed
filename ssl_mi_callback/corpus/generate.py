"""Plan, render (in parallel) and write a synthetic speech corpus with frame-level phone labels."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import soundfile

from . import espeak, flite
from .phones import PHONES, write_phone_list
from .render import SAMPLE_RATE, Rendered, UtteranceSpec, render
from .text import SentenceGenerator

logger = logging.getLogger("ssl_mi_callback.corpus")

FORMAT_VERSION = 1
INCOMPLETE_MARKER = ".corpus-incomplete"  # present while a generation runs or after it failed
DEFAULT_SPLITS = (("train", 0.8), ("valid", 0.05), ("heldout", 0.05), ("probe_train", 0.05),
                  ("probe_test", 0.05))
# espeak-ng dialect+variant pairs. Only variants without echo/breath: their pauses are digital
# silence, which lets stop closures be attached to the right phone (see render.attach_prepauses).
DEFAULT_ESPEAK_VOICES = (
    "en-us+m1", "en-us+m3", "en-us+f1", "en-us+Annie", "en+m4", "en+m7", "en+belinda",
    "en-gb-x-rp+m6", "en-gb-x-rp+linda", "en-gb-scotland+m5", "en-029+Andrea", "en-us-nyc+Mike",
)
DEFAULT_FLITE_VOICES = ("kal16", "awb", "rms", "slt")
ENGINES = ("espeak", "flite")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that determines the corpus content (``jobs`` does not: output is identical)."""

    minutes: float = 10.0
    seed: int = 0
    splits: Tuple[Tuple[str, float], ...] = field(default=DEFAULT_SPLITS, metadata={
        "help": "(name, fraction) pairs; fractions are normalised to sum to 1"})
    engines: Tuple[str, ...] = ENGINES
    espeak_voices: Tuple[str, ...] = DEFAULT_ESPEAK_VOICES
    flite_voices: Tuple[str, ...] = DEFAULT_FLITE_VOICES
    heldout_voices: Tuple[str, ...] = field(default=(), metadata={
        "help": "voices (engine:voice) kept out of train/valid: they speak only in the other splits"})
    speed_range: Tuple[float, float] = (0.85, 1.2)
    pitch_range: Tuple[float, float] = (0.85, 1.18)
    gain_db_range: Tuple[float, float] = (-6.0, 0.0)
    noise_prob: float = 0.25
    snr_db_range: Tuple[float, float] = (10.0, 30.0)
    min_words: int = 4
    max_words: int = 16

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        if not self.splits:
            raise ValueError("at least one split is required")
        names = [name for name, _ in self.splits]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate split names in {names}")
        for name, fraction in self.splits:
            if not _SPLIT_NAME.match(name):
                raise ValueError(f"split name {name!r} must match [A-Za-z0-9_-]+")
            if not fraction > 0:
                raise ValueError(f"split {name!r} needs a fraction > 0, got {fraction}")
        unknown = set(self.engines) - set(ENGINES)
        if unknown or not self.engines:
            raise ValueError(f"engines must be a non-empty subset of {ENGINES}, got {self.engines}")
        if not self.voices():
            raise ValueError("no voices configured for the selected engines")
        unknown_heldout = set(self.heldout_voices) - set(self.voices())
        if unknown_heldout:
            raise ValueError(f"held-out voices {sorted(unknown_heldout)} are not in the voice list "
                             f"{list(self.voices())}")
        if set(self.heldout_voices) == set(self.voices()):
            raise ValueError("every voice is held out: train/valid would have no voice")
        for label, (low, high) in (("speed_range", self.speed_range),
                                   ("pitch_range", self.pitch_range)):
            if not 0 < low <= high:
                raise ValueError(f"{label} must satisfy 0 < low <= high, got {(low, high)}")
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {self.noise_prob}")
        if self.snr_db_range[0] > self.snr_db_range[1] or self.gain_db_range[0] > self.gain_db_range[1]:
            raise ValueError("snr_db_range and gain_db_range must be (low, high) with low <= high")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {self.min_words}, "
                             f"{self.max_words}")

    def voices(self) -> Tuple[str, ...]:
        """All voices as ``engine:voice`` ids, in a fixed order."""
        voices = []
        if "espeak" in self.engines:
            voices += [f"espeak:{voice}" for voice in self.espeak_voices]
        if "flite" in self.engines:
            voices += [f"flite:{voice}" for voice in self.flite_voices]
        return tuple(voices)

    def split_fractions(self) -> Dict[str, float]:
        total = sum(fraction for _, fraction in self.splits)
        return {name: fraction / total for name, fraction in self.splits}

    def to_settings(self) -> dict:
        """JSON-ready settings; equal settings mean an identical corpus."""
        settings = dataclasses.asdict(self)
        settings["splits"] = {name: round(value, 12) for name, value in self.split_fractions().items()}
        return json.loads(json.dumps(settings))


@dataclass
class CorpusInfo:
    """What ``generate_corpus`` produced (or found and reused)."""

    path: Path
    reused: bool
    split_seconds: Dict[str, float]
    split_utterances: Dict[str, int]
    total_seconds: float
    wall_seconds: float

    def summary(self) -> str:
        splits = ", ".join(f"{name} {self.split_seconds[name] / 60:.1f} min "
                           f"({self.split_utterances[name]} utt)" for name in self.split_seconds)
        verb = "reused existing corpus" if self.reused else "generated corpus"
        speed = "" if self.reused or self.wall_seconds <= 0 else (
            f" in {self.wall_seconds:.1f} s ({self.total_seconds / self.wall_seconds:.0f}x real time)")
        return (f"{verb} {self.path}: {self.total_seconds / 60:.1f} min{speed}; {splits}")


# ---------------------------------------------------------------------------------- planning

def _estimated_seconds(text: str, speed: float) -> float:
    return (0.3 + 0.33 * len(text.split())) / speed


def plan_utterances(config: CorpusConfig) -> Iterator[UtteranceSpec]:
    """The deterministic, endless stream of utterance specs for ``config``.

    Each utterance gets a sentence never used before (splits have disjoint text). The first ones
    go to each split in turn, then each goes to the split furthest below its share of the
    (estimated) duration so far, so every prefix of the stream keeps the requested proportions.
    """
    root = np.random.SeedSequence(config.seed)
    text_seed, attribute_seed, noise_seed = (int(s.generate_state(1)[0]) for s in root.spawn(3))
    sentences = SentenceGenerator(text_seed, config.min_words, config.max_words).unique()
    rng = np.random.default_rng(attribute_seed)
    fractions = config.split_fractions()
    assigned = {name: 0.0 for name in fractions}
    all_voices = config.voices()
    heldout = set(config.heldout_voices)
    training_voices = tuple(v for v in all_voices if v not in heldout)
    index = 0
    for text in sentences:
        empty = [name for name in fractions if assigned[name] == 0.0]
        if empty:  # every split gets an utterance first
            split = empty[0]
        else:
            total = sum(assigned.values())
            split = max(fractions, key=lambda name: fractions[name] * total - assigned[name])
        voices = training_voices if split in ("train", "valid") else all_voices
        voice_id = voices[int(rng.integers(len(voices)))]
        engine, voice = voice_id.split(":", 1)
        speed = float(rng.uniform(*config.speed_range))
        pitch = float(rng.uniform(*config.pitch_range))
        gain_db = float(rng.uniform(*config.gain_db_range))
        noisy = bool(rng.random() < config.noise_prob)
        snr_db = float(rng.uniform(*config.snr_db_range))
        yield UtteranceSpec(index=index, uid=f"utt{index:06d}", split=split, text=text,
                            engine=engine, voice=voice, speed=round(speed, 4),
                            pitch=round(pitch, 4), gain_db=round(gain_db, 3),
                            snr_db=round(snr_db, 2) if noisy else None,
                            noise_seed=(noise_seed + index) % 2 ** 32)
        assigned[split] += _estimated_seconds(text, speed)
        index += 1


# ---------------------------------------------------------------------------------- engines

def check_engines(config: CorpusConfig) -> Dict[str, str]:
    """Engine versions; EngineUnavailable (naming the package to install) or ValueError if not."""
    versions = {}
    if "espeak" in config.engines:
        espeak.load_library()  # names the package to install when missing
        engine = espeak.server()
        versions["espeak"] = engine.version
        for voice in config.espeak_voices:
            problem = engine.check_voice(voice)
            if problem:
                raise ValueError(problem)
    if "flite" in config.engines:
        flite.executable()
        versions["flite"] = flite.version()
        missing = [v for v in config.flite_voices if v not in flite.available_voices()]
        if missing:
            raise ValueError(f"flite has no voice(s) {missing}; available: "
                             f"{list(flite.available_voices())}")
    return versions


# ---------------------------------------------------------------------------------- workers

_WORK_DIR: Optional[str] = None


def _worker_init(out_dir: str) -> None:
    global _WORK_DIR
    _WORK_DIR = tempfile.mkdtemp(prefix="tmp-", dir=out_dir)


def _write_atomic_wav(path: Path, audio: np.ndarray) -> None:
    temporary = path.with_name(path.name + ".part")
    soundfile.write(str(temporary), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(temporary, path)


def _render_and_write(task: Tuple[UtteranceSpec, str]) -> dict:
    """Worker: render one utterance, write its wav and alignment, return its metadata."""
    spec, out_dir = task
    rendered: Rendered = render(spec, _WORK_DIR)
    root = Path(out_dir)
    _write_atomic_wav(root / "wav" / f"{spec.uid}.wav", rendered.audio)
    lines = [f"{s.start}\t{s.end}\t{s.phone}\t{s.symbol}" for s in rendered.segments]
    (root / "align" / f"{spec.uid}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"spec": spec, "num_samples": rendered.num_samples,
            "labels": rendered.labels.astype(np.int16)}


# ---------------------------------------------------------------------------------- output

def _manifest_root_matches(out_dir: Path, split: str) -> bool:
    manifest = out_dir / f"{split}.tsv"
    try:
        with open(manifest, encoding="utf-8") as handle:
            return handle.readline().strip() == str(out_dir)
    except OSError:
        return False


def _load_previous(out_dir: Path, settings: dict) -> Optional[dict]:
    """The existing corpus.json if it is complete, has these settings and its files exist."""
    try:
        previous = json.loads((out_dir / "corpus.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if previous.get("format") != FORMAT_VERSION or previous.get("settings") != settings:
        return None
    for split in settings["splits"]:
        manifest, labels = out_dir / f"{split}.tsv", out_dir / f"{split}.phn"
        if not manifest.is_file() or not labels.is_file():
            return None
        rows = manifest.read_text(encoding="utf-8").splitlines()[1:]
        if not all((out_dir / row.split("\t")[0]).is_file() for row in rows):
            return None
    return previous


def _rewrite_manifest_roots(out_dir: Path, splits: Sequence[str]) -> None:
    """A moved corpus: point the manifests' root line at the directory's new location."""
    for split in splits:
        manifest = out_dir / f"{split}.tsv"
        lines = manifest.read_text(encoding="utf-8").splitlines()
        lines[0] = str(out_dir)
        manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _clear_generated(out_dir: Path, splits: Sequence[str]) -> None:
    """Remove what a previous generation wrote (its own split names included)."""
    try:
        previous = json.loads((out_dir / "corpus.json").read_text(encoding="utf-8"))
        splits = list(splits) + list(previous.get("splits", {}))
    except (OSError, ValueError, AttributeError):
        pass
    for name in ("wav", "align"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for path in out_dir.glob("tmp-*"):
        shutil.rmtree(path, ignore_errors=True)
    for name in ["corpus.json", "phones.txt", "utterances.tsv"] + [
            f"{s}.{ext}" for s in splits for ext in ("tsv", "phn")]:
        try:
            (out_dir / name).unlink()
        except FileNotFoundError:
            pass


def _write_outputs(out_dir: Path, config: CorpusConfig, results: List[dict],
                   versions: Dict[str, str], wall_seconds: float) -> CorpusInfo:
    fractions = config.split_fractions()
    by_split: Dict[str, List[dict]] = {name: [] for name in fractions}
    for result in results:
        by_split[result["spec"].split].append(result)
    for split, items in by_split.items():
        manifest = [str(out_dir)] + [f"wav/{r['spec'].uid}.wav\t{r['num_samples']}" for r in items]
        (out_dir / f"{split}.tsv").write_text("\n".join(manifest) + "\n", encoding="utf-8")
        labels = [" ".join(map(str, r["labels"].tolist())) for r in items]
        (out_dir / f"{split}.phn").write_text("".join(line + "\n" for line in labels),
                                              encoding="utf-8")
    header = "uid\tsplit\tengine\tvoice\tspeed\tpitch\tgain_db\tsnr_db\tnum_samples\ttext"
    rows = [header] + [
        "\t".join(str(value) for value in (
            r["spec"].uid, r["spec"].split, r["spec"].engine, r["spec"].voice, r["spec"].speed,
            r["spec"].pitch, r["spec"].gain_db, "" if r["spec"].snr_db is None else r["spec"].snr_db,
            r["num_samples"], r["spec"].text))
        for r in results]
    (out_dir / "utterances.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    write_phone_list(out_dir / "phones.txt")
    split_seconds = {s: sum(r["num_samples"] for r in items) / SAMPLE_RATE
                     for s, items in by_split.items()}
    split_utterances = {s: len(items) for s, items in by_split.items()}
    voice_seconds: Dict[str, float] = {}
    for r in results:
        voice_seconds[r["spec"].voice_id] = voice_seconds.get(r["spec"].voice_id, 0.0) + \
            r["num_samples"] / SAMPLE_RATE
    total = sum(split_seconds.values())
    record = {
        "format": FORMAT_VERSION,
        "settings": config.to_settings(),
        "seed": config.seed,
        "sample_rate": SAMPLE_RATE,
        "frame": {"window_samples": 400, "hop_samples": 320,
                  "num_frames": "(num_samples - 400) // 320 + 1",
                  "label": "phone active at sample 320*i + 200"},
        "phones": list(PHONES),
        "engines": versions,
        "voices": list(config.voices()),
        "voice_seconds": {k: round(v, 3) for k, v in sorted(voice_seconds.items())},
        "splits": {s: {"manifest": f"{s}.tsv", "labels": f"{s}.phn",
                       "utterances": split_utterances[s], "seconds": round(split_seconds[s], 3)}
                   for s in fractions},
        "total_seconds": round(total, 3),
        "generation_wall_seconds": round(wall_seconds, 2),
    }
    temporary = out_dir / "corpus.json.part"
    temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, out_dir / "corpus.json")  # written last: marks the corpus complete
    return CorpusInfo(out_dir, False, split_seconds, split_utterances, total, wall_seconds)


# ---------------------------------------------------------------------------------- main entry

def generate_corpus(config: CorpusConfig, out_dir, *, jobs: Optional[int] = None,
                    force: bool = False) -> CorpusInfo:
    """Generate the corpus ``config`` describes into ``out_dir`` (or reuse an identical one).

    Raises EngineUnavailable when an engine is missing, FileExistsError when ``out_dir`` holds a
    corpus with other settings and ``force`` is false.
    """
    out_dir = Path(out_dir).resolve()
    settings = config.to_settings()
    split_names = list(settings["splits"])
    previous = _load_previous(out_dir, settings)
    if previous is not None and not force:
        if not all(_manifest_root_matches(out_dir, s) for s in split_names):
            _rewrite_manifest_roots(out_dir, split_names)
        splits = previous["splits"]
        return CorpusInfo(out_dir, True, {s: splits[s]["seconds"] for s in split_names},
                          {s: splits[s]["utterances"] for s in split_names},
                          previous["total_seconds"], 0.0)
    if (out_dir / "corpus.json").exists() and not force:
        raise FileExistsError(f"{out_dir} holds a corpus with other settings (or missing files); "
                              "choose another directory or pass --force to replace it")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (
            (out_dir / "corpus.json").exists() or (out_dir / INCOMPLETE_MARKER).exists()):
        raise FileExistsError(f"{out_dir} is not empty and holds no corpus: choose a new or "
                              "empty directory")
    versions = check_engines(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INCOMPLETE_MARKER).touch()
    _clear_generated(out_dir, split_names)
    (out_dir / "wav").mkdir()
    (out_dir / "align").mkdir()

    jobs = max(1, jobs or os.cpu_count() or 1)
    target = config.minutes * 60.0
    started = time.monotonic()
    stream = plan_utterances(config)
    results: List[dict] = []
    total = 0.0
    pool = None
    last_report = started
    finished = False
    try:
        if jobs > 1:
            pool = multiprocessing.get_context("spawn").Pool(
                jobs, initializer=_worker_init, initargs=(str(out_dir),))
        else:
            _worker_init(str(out_dir))
        while total < target:
            average = total / len(results) if results else 4.0
            remaining = max(1, math.ceil((target - total) / average * 1.05))
            chunk = list(islice(stream, min(max(remaining, jobs), 256)))
            tasks = [(spec, str(out_dir)) for spec in chunk]
            if pool is not None:
                outputs = pool.map(_render_and_write, tasks, chunksize=1)
            else:
                outputs = [_render_and_write(task) for task in tasks]
            for output in outputs:  # accept the ordered prefix that reaches the target
                if total >= target:
                    break
                results.append(output)
                total += output["num_samples"] / SAMPLE_RATE
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                logger.info("generated %.1f / %.1f min (%d utterances)", total / 60, target / 60,
                            len(results))
        finished = True
    finally:
        if pool is not None:
            if finished:
                pool.close()
            else:  # an error or Ctrl-C: stop the workers now
                pool.terminate()
            pool.join()
        for path in out_dir.glob("tmp-*"):
            shutil.rmtree(path, ignore_errors=True)
    kept = {result["spec"].uid for result in results}
    for folder, suffix in (("wav", ".wav"), ("align", ".tsv")):
        for path in (out_dir / folder).iterdir():  # renders past the target, partial files
            if path.name[: -len(suffix)] not in kept or not path.name.endswith(suffix):
                path.unlink()
    info = _write_outputs(out_dir, config, results, versions, time.monotonic() - started)
    (out_dir / INCOMPLETE_MARKER).unlink()
    return info
