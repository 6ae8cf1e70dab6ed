"""The ``ssl-mi`` command line.

Every subcommand is a :class:`Command`: a function that adds its arguments to a subparser and a
function that runs it and returns the exit code. Register new ones in :data:`COMMANDS`. User errors
(bad input, missing files) raise :class:`CommandError` or a ``ValueError``/``OSError``; ``main``
prints them as one line on stderr and returns 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from .plot import configure_plot, run_plot

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
    print(estimate_json(fields) if args.json else _summary(check_finite_estimate(fields)))
    return 0


def check_finite_estimate(fields: dict) -> dict:
    """``fields`` unchanged when every number in them is finite; else a one-line error naming them."""
    def finite(value: object) -> bool:
        if isinstance(value, dict):
            return all(finite(item) for item in value.values())
        if isinstance(value, (list, tuple)):
            return all(finite(item) for item in value)
        return not isinstance(value, float) or math.isfinite(value)

    bad = [f"{name}={value}" for name, value in fields.items() if not finite(value)]
    if bad:
        raise CommandError(f"the estimate is not finite ({', '.join(bad)}); the features probably hold extreme "
                           f"values: rescale them (e.g. standardise them) and run again")
    return fields


def estimate_json(fields: dict) -> str:
    """One strict JSON object (no NaN/Infinity, which JSON does not have): see :func:`check_finite_estimate`."""
    return json.dumps(check_finite_estimate(fields), allow_nan=False)


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
        f"{fields['n_utterances_eval']} utterances; dropped {fields['dropped_nonfinite']} frames with NaN/inf or too large values"
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


# ------------------------------------------------------------------------------ score
def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_layers(text: str) -> tuple:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"layers must be comma-separated integers (e.g. -1 or 4,8,12), got {text!r}") from None


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per :class:`EvaluationConfig` field, with its help text (default: None = unset)."""
    import dataclasses

    from .evaluator import EvaluationConfig

    group = parser.add_argument_group("evaluation settings (defaults: the training hook's; see README 'Settings')")
    for config_field in dataclasses.fields(EvaluationConfig):
        default = config_field.default
        kind = _parse_layers if config_field.name == "layers" else _parse_bool if isinstance(default, bool) else type(default)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        group.add_argument(f"--{config_field.name.replace('_', '-')}", dest=f"eval_{config_field.name}", type=kind, metavar=config_field.name.upper(),
                           default=None, help=f"{config_field.metadata.get('help', '')} (default {shown})".replace('%', '%%'))


def evaluation_config_from(args: argparse.Namespace, base: Optional[dict] = None):
    """EvaluationConfig: its defaults, then ``base`` settings (e.g. a history record's), then given flags."""
    import dataclasses

    from .evaluator import EvaluationConfig

    settings = dict(base or {})
    for config_field in dataclasses.fields(EvaluationConfig):
        value = getattr(args, f"eval_{config_field.name}", None)
        if value is not None:
            settings[config_field.name] = value
    config = EvaluationConfig.from_settings(settings)
    config.validate()
    return config


def _history_settings(path: str) -> tuple[dict, Optional[str]]:
    """(settings, subset fingerprint) of the last successful record of a history file."""
    from .report import read_history

    if not Path(path).is_file():
        raise CommandError(f"--settings-from: no such history file: {path}")
    ok = [record for record in read_history(path) if record.get("status") == "ok" and record.get("settings")]
    if not ok:
        raise CommandError(f"--settings-from: {path} holds no successful evaluation to take settings from")
    return ok[-1]["settings"], ok[-1].get("subset", {}).get("fingerprint")


def configure_score(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files (or model directories)")
    parser.add_argument("--data", required=True, metavar="HELDOUT.tsv", help="held-out audio: a fairseq manifest or a folder")
    parser.add_argument("--labels", metavar="LABELS", help="frame labels of --data (one line of class ids per manifest entry, "
                        "e.g. a generated corpus's heldout.phn): adds I(Z;Y) and phone-probe accuracy per layer")
    parser.add_argument("--family", default="fairseq", help="how to load the checkpoints: fairseq, torchaudio, huggingface, "
                        "or a loader package.module:function returning ssl_mi_callback.scoring.LoadedModel (default fairseq)")
    parser.add_argument("--json", dest="json_out", metavar="OUT.json", help="write every result and the ranking here")
    parser.add_argument("--settings-from", metavar="HISTORY.jsonl", help="take the evaluation settings of the last evaluation "
                        "in a training run's history (flags given here still win)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="cap on held-out audio (default 300, as the hook)")
    parser.add_argument("--max-utterance-seconds", type=float, default=15.0, help="crop each utterance (default 15, as the hook)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_evaluation_arguments(parser)


def run_score(args: argparse.Namespace) -> int:
    from .data import load_heldout
    from .labels import read_frame_labels
    from .scoring import Progress, ranking, resolve_loader, score_checkpoint

    missing = [path for path in args.checkpoints if not Path(path).exists()]
    if missing:
        raise CommandError(f"no such checkpoint: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    base, fingerprint = _history_settings(args.settings_from) if args.settings_from else ({}, None)
    config = evaluation_config_from(args, base)
    loader = resolve_loader(args.family)
    subset = load_heldout(args.data, max_seconds=args.max_seconds, max_utterance_seconds=args.max_utterance_seconds)
    print(f"held-out subset: {subset.describe()}", file=sys.stderr)
    if fingerprint is not None and fingerprint != subset.fingerprint():
        print(f"warning: this subset (fingerprint {subset.fingerprint()}) differs from the one the history was scored on "
              f"({fingerprint}); values are not comparable with the training log", file=sys.stderr)
    labels = read_frame_labels(args.labels, args.data) if args.labels else None
    progress = Progress(len(args.checkpoints))
    records = []
    for path in args.checkpoints:
        record = score_checkpoint(path, loader, subset, config, labels=labels, device=args.device)
        records.append(record)
        shown = f"mi_bits {record['metrics']['mi_bits']:.4f}" if record["status"] == "ok" else "failed"
        progress.update(f"{Path(path).name}: {shown}")
    ranked = ranking(records)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "settings": {**config.__dict__, "layers": list(config.layers)}, "family": args.family, "data": args.data,
            "labels": args.labels, "checkpoints": records, "ranking": [r["checkpoint"] for r in ranked],
        }, indent=1) + "\n", encoding="utf-8")
    print(format_ranking(records, ranked))
    return 0 if all(r["status"] == "ok" for r in records) else 1


def format_ranking(records: Sequence[dict], ranked: Sequence[dict]) -> str:
    """Ranking table: rank, checkpoint, step, mi_bits with its interval, and the phone probe when scored."""
    from .report import _number

    def selection_layer(record: dict) -> str:
        return max(record["layers"], key=int)

    supervised = any("supervised" in r for r in ranked)
    header = ["rank", "checkpoint", "step", "mi_bits", "ci95"] + (["I(Z;Y)", "phone acc"] if supervised else [])
    rows = [header]
    for position, record in enumerate(ranked, start=1):
        layer = selection_layer(record)
        low, high = record["layers"][layer].get("ci95_bits") or (None, None)
        row = [str(position), Path(record["checkpoint"]).name, str(record.get("step")),
               _number(record["metrics"]["mi_bits"]), f"[{_number(low)}, {_number(high)}]"]
        if supervised:
            row += [_number(record["metrics"].get(f"phone_mi_bits_l{layer}")), _number(record["metrics"].get(f"phone_accuracy_l{layer}"))]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines += [f"failed: {r['checkpoint']}: {r['error']}" for r in records if r["status"] != "ok"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ fairseq-user-dir
def run_fairseq_user_dir(args: argparse.Namespace) -> int:
    from .integrations.fairseq import USER_DIR

    print(USER_DIR)
    return 0


# ------------------------------------------------------------------------------ registry
COMMANDS: List[Command] = [
    Command("estimate", "MI lower bound from saved features (.npy)", configure_estimate, run_estimate),
    Command("report", "table of an MI history with the best evaluation marked", configure_report, run_report),
    Command("plot", "figure of an MI history: MI per layer, the best marked, label-free baselines", configure_plot, run_plot),
    Command("score", "score saved checkpoints offline with the hook's evaluation, rank them", configure_score, run_score),
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
