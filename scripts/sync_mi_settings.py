"""Rewrite the ``task.mi_*`` block of every recipe in recipes/fairseq and the README settings table
from the code (ssl_mi_callback.integrations.fairseq.tasks.MISelectionFields), keeping each recipe's
own values. Run after adding or changing a setting: .venv/bin/python scripts/sync_mi_settings.py
(tests/test_docs.py fails while they are out of sync)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import ssl_mi_callback.integrations.fairseq  # noqa: F401  (compat before fairseq)
from ssl_mi_callback.integrations.fairseq.tasks import MISelectionFields

ROOT = Path(__file__).resolve().parents[1]
HEADER = '  # MI checkpoint selection (ssl_mi_callback): every task.mi_* key, explained in README "Settings"'
TABLE_START, TABLE_END = "| key | default | meaning |\n|---|---|---|\n", "\n\n## "


def yaml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and (value == "" or re.fullmatch(r"[-\d,. ]+", value)):
        return f'"{value}"'
    return str(value)


def settings() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(MISelectionFields) if f.name.startswith("mi_")]


def sync_recipe(path: Path) -> None:
    lines = path.read_text().split("\n")
    own = {}
    for line in lines:
        match = re.match(r"  (mi_\w+): (.*?)\s*(#.*)?$", line)
        if match:
            own[match.group(1)] = match.group(2)
    kept = [line for line in lines if not re.match(r"  mi_\w+:", line) and line != HEADER]
    task_end = next(i for i in range(kept.index("task:") + 1, len(kept)) if not kept[i].startswith("  "))
    block = [HEADER] + [f"  {f.name}: {own.get(f.name, yaml_value(f.default))}" for f in settings()]
    path.write_text("\n".join(kept[:task_end] + block + kept[task_end:]))


def readme_table() -> str:
    rows = []
    for f in settings():
        default = str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
        rows.append(f"| `task.{f.name}` | `{default}` | " + f.metadata["help"].replace("|", "\\|") + " |")
    return "\n".join(rows)


def sync_readme(path: Path) -> None:
    text = path.read_text()
    start = text.index(TABLE_START) + len(TABLE_START)
    end = text.index(TABLE_END, start)
    path.write_text(text[:start] + readme_table() + text[end:])


if __name__ == "__main__":
    for recipe in sorted((ROOT / "recipes" / "fairseq").glob("*.yaml")):
        sync_recipe(recipe)
    sync_readme(ROOT / "README.md")
    print("recipes and README settings table are in sync with MISelectionFields")
