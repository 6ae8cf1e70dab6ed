"""The ``ssl-mi`` command line.

Every subcommand is a :class:`Command`: a function that adds its arguments to a subparser and a
function that runs it and returns the exit code. Register new ones in :data:`COMMANDS`. User errors
(bad input, missing files) raise :class:`CommandError` or a ``ValueError``/``OSError``; ``main``
prints them as one line on stderr and returns 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

EXIT_USAGE = 2


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def load_array(path: str, option: str) -> np.ndarray:
    """A ``.npy`` array from ``path``; ``option`` names the flag in error messages."""
    if not Path(path).is_file():
        raise CommandError(f"{option}: no such file: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CommandError(f"{option}: cannot read {path} as a .npy array ({error})") from None
    if not isinstance(array, np.ndarray):
        raise CommandError(f"{option}: {path} is not a single .npy array")
    return array


# ------------------------------------------------------------------------------ estimate
def configure_estimate(parser: argparse.ArgumentParser) -> None:
    unsupervised = parser.add_argument_group("unsupervised bound I(Za; c(Zb))")
    unsupervised.add_argument("--za", metavar="ZA.npy", help="features of view a, (frames, dims) float")
    unsupervised.add_argument("--zb", metavar="ZB.npy", help="features of view b, (frames, dims) float, same frames")
    unsupervised.add_argument("--clusters", type=int, default=None, help="k-means clusters K (default 50)")
    supervised = parser.add_argument_group("supervised bound I(Z; Y)")
    supervised.add_argument("--z", metavar="Z.npy", help="features, (frames, dims) float")
    supervised.add_argument("--labels", metavar="Y.npy", help="frame labels, (frames,) non-negative int")
    parser.add_argument("--groups", metavar="G.npy", required=True, help="utterance id per frame, (frames,) int")
    parser.add_argument("--probe", choices=("linear", "mlp"), default="linear", help="probe (default linear)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, k-means, probe, bootstrap (default 0)")
    parser.add_argument("--fit-fraction", type=float, default=0.5, help="utterance share to fit on (default 0.5)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples, 0 = no interval (default 1000)")
    parser.add_argument("--device", default=None, help="torch device to compute on (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")


def run_estimate(args: argparse.Namespace) -> int:
    unsupervised = args.za is not None or args.zb is not None
    supervised = args.z is not None or args.labels is not None
    if unsupervised == supervised:
        raise CommandError("give either --za and --zb (unsupervised) or --z and --labels (supervised)")
    settings = dict(
        probe=args.probe, seed=args.seed, fit_fraction=args.fit_fraction, bootstrap=args.bootstrap, device=args.device
    )
    groups = load_array(args.groups, "--groups")
    from .estimators import supervised_mi, unsupervised_mi  # torch loads only once the input is there

    if unsupervised:
        if args.za is None or args.zb is None:
            raise CommandError("the unsupervised bound needs both --za and --zb")
        za, zb = load_array(args.za, "--za"), load_array(args.zb, "--zb")
        clusters = 50 if args.clusters is None else args.clusters
        result = unsupervised_mi(za, zb, groups, clusters=clusters, **settings)
    else:
        if args.z is None or args.labels is None:
            raise CommandError("the supervised bound needs both --z and --labels")
        if args.clusters is not None:
            raise CommandError("--clusters applies only to the unsupervised bound (--za/--zb)")
        result = supervised_mi(load_array(args.z, "--z"), load_array(args.labels, "--labels"), groups, **settings)
    fields = result.to_dict()
    print(json.dumps(fields) if args.json else _summary(fields))
    return 0


def _summary(fields: dict) -> str:
    interval = fields["ci95_bits"]
    ci = f"  [95% CI {interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""
    normalized = "n/a" if fields["mi_normalized"] is None else f"{fields['mi_normalized']:.4f}"
    if fields["estimator"] == "unsupervised":
        lines = [
            f"I(Za; c(Zb)) >= {fields['mi_bits']:.4f} bits{ci}",
            f"  reference -log2 qbar(c) = {fields['h_c_bits']:.4f} bits (plug-in H(c) {fields['h_c_plugin_bits']:.4f}), "
            f"CE = {fields['ce_bits']:.4f} bits, normalised {normalized}",
            f"  clusters {fields['clusters']}, k-means inertia (eval) {fields['kmeans_inertia_eval']:.6g}",
        ]
    else:
        lines = [
            f"I(Z; Y) >= {fields['mi_bits']:.4f} bits{ci}",
            f"  reference -log2 qbar(y) = {fields['h_y_bits']:.4f} bits (plug-in H(Y) {fields['h_y_plugin_bits']:.4f}), "
            f"CE = {fields['ce_bits']:.4f} bits, normalised {normalized}",
            f"  accuracy {fields['accuracy']:.4f} over {fields['n_classes']} classes",
        ]
    lines.append(
        f"  probe {fields['probe']}, seed {fields['seed']}; fit {fields['n_frames_fit']} frames / "
        f"{fields['n_utterances_fit']} utterances, eval {fields['n_frames_eval']} frames / "
        f"{fields['n_utterances_eval']} utterances; dropped {fields['dropped_nonfinite']} non-finite frames"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ report
def configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("history", metavar="HISTORY.jsonl", help="history written during training (mi_history.jsonl)")
    parser.add_argument("--json", action="store_true", help="print the best record as JSON instead of the table")


def run_report(args: argparse.Namespace) -> int:
    from .report import best_record, format_table, read_history

    if not Path(args.history).is_file():
        raise CommandError(f"no such history file: {args.history}")
    records = read_history(args.history)
    print(json.dumps(best_record(records)) if args.json else format_table(records))
    return 0


# ------------------------------------------------------------------------------ fairseq-user-dir
def run_fairseq_user_dir(args: argparse.Namespace) -> int:
    from .integrations.fairseq import USER_DIR

    print(USER_DIR)
    return 0


# ------------------------------------------------------------------------------ registry
COMMANDS: List[Command] = [
    Command("estimate", "MI lower bound from saved features (.npy)", configure_estimate, run_estimate),
    Command("report", "table of an MI history with the best evaluation marked", configure_report, run_report),
    Command("fairseq-user-dir", "print the fairseq common.user_dir of the MI plugin", lambda parser: None, run_fairseq_user_dir),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-mi", description="Checkpoint selection by mutual information.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        subparser = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(subparser)
        subparser.set_defaults(run=command.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``ssl-mi``; returns the exit code (2 for usage errors and bad input)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_request:  # argparse's --help (0) or usage error (2)
        return int(exit_request.code or 0) if not isinstance(exit_request.code, str) else EXIT_USAGE
    try:
        return args.run(args)
    except (CommandError, ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"ssl-mi {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
