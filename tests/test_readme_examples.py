"""The README's examples run as written: every block marked ``<!-- readme-test -->`` is executed in
README order in a fresh folder holding a generated corpus at ``data/`` -- the Python blocks as one
script (later blocks continue earlier ones, as a reader does), then the shell blocks with the
package's console scripts on PATH."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

ROOT = Path(__file__).resolve().parents[1]
MARKED_BLOCK = re.compile(r"<!-- readme-test -->\n```(python|bash)\n(.*?)```", re.DOTALL)

pytestmark = pytest.mark.slow


def readme_blocks() -> list[tuple[str, str]]:
    return MARKED_BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_marks_its_examples():
    kinds = [kind for kind, _ in readme_blocks()]
    assert kinds.count("python") >= 4 and kinds.count("bash") >= 1
    unmarked = re.findall(r"(?<!-->\n)```python\n", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(unmarked) <= 2, "a new README python example must be marked <!-- readme-test --> (or be a fragment)"


def test_readme_examples_run_as_written(tiny_corpus, tmp_path):
    require("transformers", "accelerate", "lightning", "torchaudio", "matplotlib")
    (tmp_path / "data").symlink_to(tiny_corpus)
    python = "\n\n".join(code for kind, code in readme_blocks() if kind == "python")
    shell = "\n".join(code for kind, code in readme_blocks() if kind == "bash")
    (tmp_path / "readme_examples.py").write_text(python)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "readme_examples.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert re.search(r"best: step \d+, -?\d+\.\d+ bits", done.stdout)
    assert "best checkpoint by MI: " in done.stdout and "'pair': 'past_future'" in done.stdout
    history = [json.loads(line) for line in (tmp_path / "mi_history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == [20, 40, 60, 80, 100]
    assert json.loads((tmp_path / "mi_best.json").read_text())["step"] == max(
        (r for r in history if r["status"] == "ok"), key=lambda r: (r["metrics"]["mi_bits"], r["step"]))["step"]

    done = subprocess.run(["bash", "-euo", "pipefail", "-c", shell], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert [r["status"] for r in scores["checkpoints"]] == ["ok"] * 3
    assert "<- best" in done.stdout and (tmp_path / "mi.png").stat().st_size > 10_000
