"""Reading an MI history (JSON lines) back: a terminal table and the best record."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from .selection import HistoryFile

METRIC = "mi_bits"


def read_history(path: str) -> list[dict]:
    """Records of a history file, read without modifying it (a torn last line is skipped)."""
    return HistoryFile(path).read(repair=False)


def best_record(records: Sequence[dict], metric: str = METRIC) -> Optional[dict]:
    """The record with the highest ``metric`` among successful ones (ties: the later, as fairseq)."""
    best = None
    for record in records:
        value = record.get("metrics", {}).get(metric) if record.get("status") == "ok" else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            if best is None or value >= best["metrics"][metric]:
                best = record
    return best


def _selection_layer(record: dict) -> Optional[str]:
    layers = sorted(record.get("layers", {}), key=int)
    return layers[-1] if layers else None


def _number(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def format_table(records: Sequence[dict], metric: str = METRIC) -> str:
    """One row per evaluation: step, MI (selection), its interval, the plug-in H(c) of the clusters,
    the probe's CE, RankMe and the MI of every scored layer."""
    best = best_record(records, metric)
    layer_ids = sorted({layer for record in records for layer in record.get("layers", {})}, key=int)
    header = ["step", "epoch", metric, "ci95", "H(c)", "CE", "RankMe"] + [f"mi L{layer}" for layer in layer_ids] + [""]
    rows = [header]
    for record in records:
        metrics = record.get("metrics", {})
        if record.get("status") != "ok":
            rows.append([str(record.get("step")), str(record.get("epoch")), "failed", record.get("error", "")[:60]]
                        + [""] * (len(header) - 4))
            continue
        layer = _selection_layer(record)
        result = record["layers"].get(layer, {}) if layer else {}
        interval = result.get("ci95_bits")
        rows.append([
            str(record.get("step")), str(record.get("epoch")), _number(metrics.get(metric)),
            f"[{_number(interval[0])}, {_number(interval[1])}]" if interval else "-",
            _number(result.get("h_c_plugin_bits", result.get("h_c_bits"))), _number(result.get("ce_bits")),
            _number(result.get("rankme"), 1),
            *[_number(metrics.get(f"mi_bits_l{layer_id}")) for layer_id in layer_ids],
            "<- best" if record is best else "",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    if best is not None:
        lines.append(f"best: {metric} {best['metrics'][metric]:.4f} at step {best['step']} ({len(records)} evaluations)")
    else:
        lines.append(f"no successful evaluation among {len(records)}")
    return "\n".join(lines)
