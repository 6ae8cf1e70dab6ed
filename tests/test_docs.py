"""README and recipes document every fairseq setting exactly as the code defines it
(regenerate both with: .venv/bin/python scripts/sync_mi_settings.py)."""
import importlib.util
from pathlib import Path

from conftest import require

ROOT = Path(__file__).resolve().parents[1]


def _sync_module():
    require("fairseq")
    spec = importlib.util.spec_from_file_location("sync_mi_settings", ROOT / "scripts" / "sync_mi_settings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_settings_table_matches_the_code():
    table = _sync_module().readme_table()
    assert table in (ROOT / "README.md").read_text(), "run scripts/sync_mi_settings.py"


def test_recipes_spell_out_every_task_setting():
    """Keys absent from a recipe's YAML cannot be overridden on the command line without '+'."""
    names = [f.name for f in _sync_module().settings()]
    for recipe in sorted((ROOT / "recipes" / "fairseq").glob("*.yaml")):
        text = recipe.read_text()
        missing = [name for name in names if f"\n  {name}:" not in text]
        assert not missing, f"{recipe.name} lacks {missing}; run scripts/sync_mi_settings.py"
