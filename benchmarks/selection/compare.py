"""Compare two runs of the selection benchmark on the same checkpoints (e.g. before and after an estimator
change that should not move its numbers beyond rounding):

    .venv/bin/python -m benchmarks.selection.compare OLD/results.json NEW/results.json

Prints, per metric family (the layer suffix dropped), the largest and mean |new - old| over every checkpoint
and layer, then the product default's selection summary (Spearman with probe accuracy, pooled regret, worst
within-series regret) of both runs. Exits with an error when the runs do not score the same checkpoints.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

from .run import PRODUCT_DEFAULT_METRIC

FAMILIES = re.compile(r"mi_|ce_bits|h_c_bits|phone_|split_probe")
"""The estimator's outputs and the label-based ground truths (the rest, e.g. RankMe, has no probe in it)."""


def metric_differences(old: dict, new: dict) -> Dict[str, List[float]]:
    """|new - old| of every numeric metric per family, over the checkpoints both runs scored."""
    def by_checkpoint(results: dict) -> Dict[tuple, dict]:
        return {(row["series"], row["step"]): row["metrics"] for row in results["rows"]}

    before, after = by_checkpoint(old), by_checkpoint(new)
    if before.keys() != after.keys():
        raise SystemExit(f"the runs scored different checkpoints ({len(before)} vs {len(after)}): compare runs of one work directory")
    families: Dict[str, List[float]] = {}
    for checkpoint, metrics in before.items():
        for name, value in metrics.items():
            other = after[checkpoint].get(name)
            if isinstance(value, (int, float)) and isinstance(other, (int, float)) and FAMILIES.search(name):
                families.setdefault(re.sub(r"_l\d+$", "", name), []).append(abs(other - value))
    return families


def product_summary(results: dict) -> str:
    """The product default's selection scores of a run, or a line saying the run did not score it (runs made
    before the product default existed, e.g. round 1)."""
    scores = results["summary"]["scopes"]["all"]["acc_last"].get(PRODUCT_DEFAULT_METRIC)
    if scores is None:
        return f"not scored in this run ({PRODUCT_DEFAULT_METRIC} missing)"
    return (f"Spearman pooled {scores['pooled']['spearman']:.3f}, regret pooled {scores['pooled']['regret_points']:.2f} points, "
            f"worst within-series regret {scores['within_max_regret_points']:.2f} points")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path, help="results.json of the reference run")
    parser.add_argument("new", type=Path, help="results.json of the run to compare")
    args = parser.parse_args(argv)
    old, new = (json.loads(path.read_text()) for path in (args.old, args.new))
    print(f"old: {args.old} (estimator {old.get('estimator_code')}); new: {args.new} (estimator {new.get('estimator_code')})")
    for family, differences in sorted(metric_differences(old, new).items()):
        print(f"{family:40s} {len(differences):4d} values  max |new - old| {max(differences):.4f}  mean {sum(differences) / len(differences):.5f}")
    print(f"product default ({PRODUCT_DEFAULT_METRIC}) vs probe accuracy, old: {product_summary(old)}")
    print(f"product default ({PRODUCT_DEFAULT_METRIC}) vs probe accuracy, new: {product_summary(new)}")


if __name__ == "__main__":
    sys.exit(main())
