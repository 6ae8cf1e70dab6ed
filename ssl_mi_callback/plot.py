"""``ssl-mi plot``: an MI history (JSON lines written by the selector) as a figure.

Left panel: the MI lower bound of every scored layer over updates, with its bootstrap 95% interval
as a band; the best evaluation by the chosen metric is marked with a star (and a dotted line through
every panel). Right panels: the label-free baselines of the same evaluations (RankMe, RankMe-t,
k-means inertia on the held-out half). Failed evaluations are crosses on the x axis of every panel.

:func:`history_plot_data` turns records into plain numbers (no matplotlib); :func:`draw_history`
draws them on a matplotlib ``Figure`` (Agg canvas, no pyplot, so no global backend state changes);
:func:`plot_history` does both and writes PNG, PDF or SVG by the file extension. matplotlib is
imported only when drawing (``pip install 'ssl_mi_callback[plot]'``).
"""
from __future__ import annotations

import argparse
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

METRIC = "mi_bits"
IMAGE_FORMATS = (".png", ".pdf", ".svg")
FIGURE_INCHES = (12.0, 6.0)
FIGURE_DPI = 100
"""A PNG is FIGURE_INCHES * FIGURE_DPI pixels: 1200 x 600."""
BASELINES: Tuple[Tuple[str, str], ...] = (
    ("rankme", "RankMe"),
    ("rankme_t", "RankMe-t"),
    ("kmeans_inertia_eval", "k-means inertia (eval)"),
)
"""Label-free baselines drawn on the right: metric prefix (``{prefix}_l{layer}``) and panel title."""
BEST_MARKER_GID = "best"
FAILED_MARKER_GID = "failed"
_LAYER_KEY = re.compile(r"^mi_bits_l(\d+)$")
_PER_LAYER_KEY = re.compile(r"^(?P<prefix>.+)_l(?P<layer>\d+)$")
INSTALL_HINT = "pip install 'ssl_mi_callback[plot]'"


class MatplotlibMissingError(ImportError):
    """matplotlib is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Series:
    """One metric over updates: ``values[i]`` was measured at update ``steps[i]`` (finite values only)."""

    key: str
    steps: Tuple[int, ...]
    values: Tuple[float, ...]


@dataclass(frozen=True)
class Band:
    """The bootstrap 95% interval of one layer's MI over updates."""

    layer: int
    steps: Tuple[int, ...]
    low: Tuple[float, ...]
    high: Tuple[float, ...]


@dataclass(frozen=True)
class PlotData:
    """Everything the figure shows, as numbers: what a test (or another plotting tool) can check."""

    metric: str
    mode: str
    layers: Tuple[int, ...]
    mi: Dict[int, Series]
    bands: Dict[int, Band]
    baselines: Dict[str, Dict[int, Series]]
    selected: Series
    best_step: int
    best_value: float
    failed_steps: Tuple[int, ...]
    evaluations: int


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(records: Sequence[Mapping], key: str) -> Series:
    points = [(int(r["step"]), float(r["metrics"][key])) for r in records if _finite(r["metrics"].get(key))]
    return Series(key, tuple(step for step, _ in points), tuple(value for _, value in points))


def _band(records: Sequence[Mapping], layer: int) -> Band:
    low_key, high_key = f"mi_ci95_low_l{layer}", f"mi_ci95_high_l{layer}"
    points = [
        (int(r["step"]), float(r["metrics"][low_key]), float(r["metrics"][high_key]))
        for r in records
        if _finite(r["metrics"].get(low_key)) and _finite(r["metrics"].get(high_key))
    ]
    return Band(layer, *(tuple(column) for column in zip(*points))) if points else Band(layer, (), (), ())


def _unknown_metric_message(metric: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(metric, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown metric {metric!r}{hint}; the history's metrics are: {', '.join(known)}"


def history_plot_data(
    records: Sequence[Mapping],
    metric: str = METRIC,
    layers: Optional[Sequence[int]] = None,
    mode: str = "max",
) -> PlotData:
    """The numbers of the figure for ``records`` (oldest first, as :func:`report.read_history` returns).

    The best evaluation is the successful one with the highest (``mode="max"``) or lowest ``metric``;
    ties go to the later one, as the selector and fairseq's ``checkpoint_best.pt`` do. ``layers``
    limits the per-layer curves (default: every layer with an ``mi_bits_l{k}`` metric).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if not records:
        raise ValueError("the history has no records: nothing to plot (was any evaluation run?)")
    ok = [r for r in records if r.get("status") == "ok" and isinstance(r.get("metrics"), dict)]
    failed_steps = tuple(int(r["step"]) for r in records if r.get("status") != "ok" and isinstance(r.get("step"), int))
    if not ok:
        raise ValueError(f"the history has no successful evaluation ({len(records)} failed): nothing to plot")
    known = {key for r in ok for key in r["metrics"]}
    if metric not in known:
        raise ValueError(_unknown_metric_message(metric, known))
    scored = sorted({int(m.group(1)) for key in known for m in [_LAYER_KEY.match(key)] if m})
    if layers is None:
        chosen = tuple(scored)
    else:
        missing = [layer for layer in layers if layer not in scored]
        if missing:
            raise ValueError(
                f"layer {missing[0]} is not in the history; its scored layers are "
                f"{', '.join(map(str, scored)) or 'none'}"
            )
        chosen = tuple(dict.fromkeys(int(layer) for layer in layers))
    selected = _series(ok, metric)
    if not selected.steps:
        raise ValueError(f"metric {metric!r} has no finite value in any successful evaluation: nothing to mark as best")
    best_index = 0
    for index, value in enumerate(selected.values):  # >= / <=: a tie goes to the later evaluation
        best_value = selected.values[best_index]
        if (value >= best_value) if mode == "max" else (value <= best_value):
            best_index = index
    baselines: Dict[str, Dict[int, Series]] = {}
    for prefix, _ in BASELINES:
        per_layer = {layer: _series(ok, f"{prefix}_l{layer}") for layer in chosen}
        per_layer = {layer: series for layer, series in per_layer.items() if series.steps}
        if per_layer:
            baselines[prefix] = per_layer
    return PlotData(
        metric=metric,
        mode=mode,
        layers=chosen,
        mi={layer: _series(ok, f"mi_bits_l{layer}") for layer in chosen},
        bands={layer: _band(ok, layer) for layer in chosen},
        baselines=baselines,
        selected=selected,
        best_step=selected.steps[best_index],
        best_value=selected.values[best_index],
        failed_steps=failed_steps,
        evaluations=len(records),
    )


# ------------------------------------------------------------------------------ drawing
def _matplotlib_figure_class():
    """matplotlib's ``Figure`` with the Agg canvas, or a one-line error that says how to install it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MatplotlibMissingError(f"drawing needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    return Figure, FigureCanvasAgg


def _layer_color(data: PlotData, layer: int) -> str:
    return f"C{data.layers.index(layer) % 10}" if layer in data.layers else "C9"


def _where_selected_is_drawn(data: PlotData) -> Tuple[str, Optional[int]]:
    """The panel that already shows the selected metric (``"mi"`` or a baseline prefix) and its layer,
    or ``("mi", None)`` when it is drawn as an extra curve on the MI panel."""
    match = _PER_LAYER_KEY.match(data.metric)
    if match and int(match.group("layer")) in data.layers:
        prefix, layer = match.group("prefix"), int(match.group("layer"))
        if prefix == "mi_bits":
            return "mi", layer
        if prefix in data.baselines and layer in data.baselines[prefix]:
            return prefix, layer
    for layer, series in data.mi.items():  # e.g. mi_bits, selection 'last', position_control off = the last layer's curve
        if (series.steps, series.values) == (data.selected.steps, data.selected.values):
            return "mi", layer
    return "mi", None


def draw_history(data: PlotData, title: str = "") -> "Figure":
    """The figure of ``data``: the MI panel on the left, one panel per label-free baseline on the right.

    The best marker is the line artist with gid ``"best"`` (x = best step), failed evaluations the
    one with gid ``"failed"`` on every panel (x = their steps, y on the x axis).
    """
    Figure, FigureCanvasAgg = _matplotlib_figure_class()
    figure = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    panels = [prefix for prefix, _ in BASELINES if prefix in data.baselines]
    grid = figure.add_gridspec(max(len(panels), 1), 2 if panels else 1, width_ratios=(3, 2) if panels else None)
    mi_axes = figure.add_subplot(grid[:, 0])
    axes_by_panel: Dict[str, "Axes"] = {"mi": mi_axes}
    titles = dict(BASELINES)
    for row, prefix in enumerate(panels):
        axes = figure.add_subplot(grid[row, 1], sharex=mi_axes)
        axes_by_panel[prefix] = axes
        for layer, series in data.baselines[prefix].items():
            axes.plot(series.steps, series.values, marker="o", markersize=3, color=_layer_color(data, layer),
                      label=f"layer {layer}")
        axes.set_ylabel(titles[prefix], fontsize=9)
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        if row < len(panels) - 1:
            axes.tick_params(labelbottom=False)
        else:
            axes.set_xlabel("update")

    for layer in data.layers:
        color, band, series = _layer_color(data, layer), data.bands[layer], data.mi[layer]
        if band.steps:
            mi_axes.fill_between(band.steps, band.low, band.high, color=color, alpha=0.2, linewidth=0)
        mi_axes.plot(series.steps, series.values, marker="o", markersize=4, color=color,
                     label=f"layer {layer}" + (" (95% interval)" if band.steps else ""))
    mi_axes.set_xlabel("update")
    mi_axes.set_ylabel("MI lower bound (bits)")
    mi_axes.grid(alpha=0.3)

    panel, layer_of_metric = _where_selected_is_drawn(data)
    best_axes = axes_by_panel[panel]
    if layer_of_metric is None:  # the metric is not one of the curves (e.g. mi_bits of selection 'mean'): draw it
        best_axes = mi_axes if data.metric.startswith("mi_bits") else mi_axes.twinx()
        label = f"{data.metric} (selection value)" if data.metric == METRIC else data.metric
        best_axes.plot(data.selected.steps, data.selected.values, linestyle="--", color="black", marker=".",
                       label=label)
        if best_axes is not mi_axes:
            best_axes.set_ylabel(data.metric)
    word = "highest" if data.mode == "max" else "lowest"
    best_axes.plot([data.best_step], [data.best_value], linestyle="none", marker="*", markersize=18,
                   markerfacecolor="gold", markeredgecolor="black", zorder=5, gid=BEST_MARKER_GID,
                   label=f"best ({word} {data.metric}): {data.best_value:.4g} at update {data.best_step}")
    for axes in axes_by_panel.values():
        axes.axvline(data.best_step, color="gray", linestyle=":", linewidth=1)
        if data.failed_steps:
            axes.plot(data.failed_steps, [0.0] * len(data.failed_steps), transform=axes.get_xaxis_transform(),
                      linestyle="none", marker="x", markersize=9, markeredgewidth=2, color="red", clip_on=False,
                      zorder=6, gid=FAILED_MARKER_GID,
                      label=f"failed evaluation ({len(data.failed_steps)})" if axes is mi_axes else None)
    handles, labels = [], []
    for axes in {id(a): a for a in (mi_axes, best_axes)}.values():
        more_handles, more_labels = axes.get_legend_handles_labels()
        handles += more_handles
        labels += more_labels
    mi_axes.legend(handles, labels, fontsize=8, loc="best")
    if len(data.layers) > 1 and panels:
        axes_by_panel[panels[0]].legend(fontsize=7, loc="best")
    failed = f", {len(data.failed_steps)} failed" if data.failed_steps else ""
    figure.suptitle(f"{title + ': ' if title else ''}{data.evaluations} evaluations{failed}", fontsize=11)
    return figure


def save_figure(figure: "Figure", path: Union[str, Path]) -> Path:
    """Write ``figure`` to ``path`` in the format of its extension (.png, .pdf or .svg)."""
    path = Path(path)
    _check_image_path(path)
    figure.savefig(path, dpi=FIGURE_DPI)
    return path


def _check_image_path(path: Path) -> None:
    if path.suffix.lower() not in IMAGE_FORMATS:
        raise ValueError(
            f"cannot tell the image format of {str(path)!r} from its extension: end it in "
            f"{', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]}"
        )
    if not path.parent.is_dir():
        raise ValueError(f"the output folder {str(path.parent)!r} does not exist: create it first")


def plot_history(
    history: Union[str, Path],
    output: Union[str, Path],
    metric: str = METRIC,
    layers: Optional[Sequence[int]] = None,
    mode: str = "max",
) -> PlotData:
    """Read ``history`` (JSON lines), draw it and write ``output``; returns what was drawn."""
    from .report import read_history

    history, output = Path(history), Path(output)
    _check_image_path(output)
    if not history.is_file():
        raise ValueError(f"no such history file: {history} (the selector writes <save_dir>/mi_history.jsonl)")
    data = history_plot_data(read_history(str(history)), metric=metric, layers=layers, mode=mode)
    title = f"{history.parent.name}/{history.name}" if history.parent.name else history.name
    save_figure(draw_history(data, title=title), output)
    return data


# ------------------------------------------------------------------------------ command line
def _layer_numbers(values: Optional[List[str]]) -> Optional[List[int]]:
    """``--layers 4 8`` or ``--layers 4,8`` as [4, 8]."""
    if values is None:
        return None
    layers = []
    for text in (part for value in values for part in value.split(",") if part.strip()):
        if not text.strip().isdigit() or int(text) < 1:
            raise ValueError(f"--layers: {text!r} is not a layer number (1-based, e.g. --layers 4 8 12)")
        layers.append(int(text))
    return layers


def configure_plot(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ssl-mi plot``."""
    parser.add_argument("history", metavar="HISTORY.jsonl", help="history written during training (mi_history.jsonl)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.png",
                        help="image to write; the extension picks the format: .png, .pdf or .svg")
    parser.add_argument("--metric", default=METRIC,
                        help="metric whose best evaluation is marked: any key of the records' metrics "
                        "(default mi_bits, the selection value)")
    parser.add_argument("--mode", choices=("max", "min"), default="max",
                        help="best = highest (max, default) or lowest (min) value of --metric")
    parser.add_argument("--layers", nargs="+", metavar="L",
                        help="layers to draw (default: every scored layer), e.g. --layers 4 8 12")


def run_plot(args: argparse.Namespace) -> int:
    """Run ``ssl-mi plot``; user errors become the CLI's one-line errors (exit 2)."""
    from .cli import CommandError

    try:
        data = plot_history(args.history, args.output, metric=args.metric, layers=_layer_numbers(args.layers),
                            mode=args.mode)
    except MatplotlibMissingError as error:
        raise CommandError(str(error)) from None
    failed = f", {len(data.failed_steps)} failed" if data.failed_steps else ""
    print(f"wrote {args.output}: {data.evaluations} evaluations{failed}; best {data.metric} "
          f"{data.best_value:.4f} at step {data.best_step}")
    return 0
