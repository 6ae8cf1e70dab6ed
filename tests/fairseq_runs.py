"""Helpers for tests that run real fairseq training through ``ssl-mi-fairseq-hydra-train``."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "fairseq"
LAUNCHER = [sys.executable, "-m", "ssl_mi_callback.integrations.fairseq.launcher"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]

# Small, fast settings shared by the end-to-end tests (the recipe defaults are for the demo).
FAST = (
    "task.mi_max_seconds=60",
    "task.mi_clusters=16",
    "task.mi_bootstrap=50",
    "task.mi_layers=-1",
)


@dataclass
class Run:
    returncode: int
    output: str
    save_dir: Path

    def valid_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if "| valid on '" in line]

    def history(self) -> list[dict]:
        path = self.save_dir / "mi_history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train(
    recipe: str,
    data: Path,
    save_dir: Path,
    overrides: Sequence[str] = (),
    *,
    processes: int = 1,
    timeout: float = 600,
) -> Run:
    """Run the drop-in launcher (under torchrun for ``processes`` > 1); output is stdout+stderr."""
    args = [
        "--config-dir", str(RECIPES), "--config-name", recipe,
        f"task.data={data}", f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={save_dir / 'hydra'}",
        *FAST, *overrides,
    ]
    if processes > 1:
        command = [
            *TORCHRUN, "--nproc_per_node", str(processes), "--master_port", str(29500 + os.getpid() % 500),
            "-m", "ssl_mi_callback.integrations.fairseq.launcher", *args,
            f"distributed_training.distributed_world_size={processes}",
            "distributed_training.distributed_backend=gloo",
            "distributed_training.ddp_backend=legacy_ddp",
        ]
    else:
        command = [*LAUNCHER, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    return Run(completed.returncode, completed.stdout, save_dir)


def metric_in_line(line: str, name: str) -> float:
    match = re.search(rf"\| {re.escape(name)} (-?inf|-?[0-9.e+-]+)\b", line)
    if match is None:
        raise AssertionError(f"{name} missing from validation line: {line}")
    return float(match.group(1))
