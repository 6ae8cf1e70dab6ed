"""Command line: ``python -m ssl_mi_callback.corpus --out DIR --minutes 10`` (later ``ssl-mi corpus``)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence, Tuple

from .errors import EngineUnavailable
from .generate import (DEFAULT_ESPEAK_VOICES, DEFAULT_FLITE_VOICES, DEFAULT_SPLITS, CorpusConfig,
                       generate_corpus)


def parse_splits(text: str) -> Tuple[Tuple[str, float], ...]:
    """``train=0.8,valid=0.2`` -> (("train", 0.8), ("valid", 0.2))."""
    pairs = []
    for item in text.split(","):
        name, separator, value = item.strip().partition("=")
        if not separator or not name.strip():
            raise argparse.ArgumentTypeError(f"split {item!r} is not NAME=FRACTION")
        try:
            pairs.append((name.strip(), float(value)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"split {item!r}: {value!r} is not a number")
    return tuple(pairs)


def _names(text: str) -> Tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _range(text: str) -> Tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH")
    return low, high


DESCRIPTION = ("Generate a synthetic English speech corpus (espeak-ng, flite) with 20 ms "
               "frame-level phone labels aligned by construction.")


def build_parser(subparsers_or_parser=None) -> argparse.ArgumentParser:
    """The corpus options on a new parser, on a given parser, or on a new ``corpus`` subcommand.

    Pass nothing (standalone), an ``ArgumentParser`` (options are added to it), or the object
    ``add_subparsers()`` returned (a ``corpus`` subcommand is added). Returns the parser used;
    call ``run(args)`` with what it parses.
    """
    if subparsers_or_parser is None:
        parser = argparse.ArgumentParser(prog="python -m ssl_mi_callback.corpus",
                                         description=DESCRIPTION)
    elif hasattr(subparsers_or_parser, "add_parser"):
        parser = subparsers_or_parser.add_parser("corpus", help=DESCRIPTION.split(" with ")[0],
                                                 description=DESCRIPTION)
    else:
        parser = subparsers_or_parser
    defaults = CorpusConfig()
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--minutes", type=float, default=defaults.minutes,
                        help="total audio to generate, in minutes (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed (default 0)")
    parser.add_argument("--splits", type=parse_splits, default=DEFAULT_SPLITS,
                        help="NAME=FRACTION,... (default train=0.8,valid=0.05,heldout=0.05,"
                             "probe_train=0.05,probe_test=0.05)")
    parser.add_argument("--engines", type=_names, default=defaults.engines,
                        help="comma-separated subset of espeak,flite (default both)")
    parser.add_argument("--espeak-voices", type=_names, default=DEFAULT_ESPEAK_VOICES,
                        help="espeak-ng DIALECT+VARIANT voices, comma-separated")
    parser.add_argument("--flite-voices", type=_names, default=DEFAULT_FLITE_VOICES,
                        help="flite voices, comma-separated (default kal16,awb,rms,slt)")
    parser.add_argument("--heldout-voices", type=_names, default=(),
                        help="engine:voice ids that never speak in train/valid")
    parser.add_argument("--speed-range", type=_range, default=defaults.speed_range,
                        help="LOW,HIGH speaking-rate factor (default 0.85,1.2)")
    parser.add_argument("--pitch-range", type=_range, default=defaults.pitch_range,
                        help="LOW,HIGH pitch factor (default 0.85,1.18)")
    parser.add_argument("--gain-db-range", type=_range, default=defaults.gain_db_range,
                        help="LOW,HIGH gain in dB (default -6,0)")
    parser.add_argument("--noise-prob", type=float, default=defaults.noise_prob,
                        help="fraction of utterances with added white noise (default 0.25)")
    parser.add_argument("--snr-db-range", type=_range, default=defaults.snr_db_range,
                        help="LOW,HIGH SNR in dB of the added noise (default 10,30)")
    parser.add_argument("--min-words", type=int, default=defaults.min_words,
                        help="shortest sentence in words (default %(default)s)")
    parser.add_argument("--max-words", type=int, default=defaults.max_words,
                        help="longest sentence in words (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes (default: all cores); output does not depend on it")
    parser.add_argument("--force", action="store_true",
                        help="replace a corpus with other settings in --out")
    return parser


def config_from_args(args: argparse.Namespace) -> CorpusConfig:
    return CorpusConfig(
        minutes=args.minutes, seed=args.seed, splits=tuple(args.splits),
        engines=tuple(args.engines), espeak_voices=tuple(args.espeak_voices),
        flite_voices=tuple(args.flite_voices), heldout_voices=tuple(args.heldout_voices),
        speed_range=tuple(args.speed_range), pitch_range=tuple(args.pitch_range),
        gain_db_range=tuple(args.gain_db_range), noise_prob=args.noise_prob,
        snr_db_range=tuple(args.snr_db_range), min_words=args.min_words,
        max_words=args.max_words)


def run(args: argparse.Namespace) -> int:
    """Generate (or reuse) the corpus the parsed ``args`` describe; 0 on success, 2 on error."""
    try:
        config = config_from_args(args)
        info = generate_corpus(config, args.out, jobs=args.jobs, force=args.force)
    except (EngineUnavailable, ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(info.summary())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    return run(parser.parse_args(argv))
