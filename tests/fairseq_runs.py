"""Helpers for tests that run real fairseq training through ``ssl-mi-fairseq-hydra-train``."""
from __future__ import annotations

import dataclasses
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


def run_child(function: str, *args: str, timeout: float = 300) -> dict:
    """Run ``fairseq_runs.<function>(*args)`` in a fresh interpreter (fairseq's task registry, hydra's
    config store and the compat patches stay out of the test process); returns the JSON it prints last."""
    code = f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import fairseq_runs; " \
           f"print(json.dumps(fairseq_runs.{function}(*sys.argv[1:])))"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{function}{args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def mi_tasks_after_import_user_module(user_dir: str) -> dict:
    """(child) Load ``user_dir`` through fairseq's own ``utils.import_user_module``, as fairseq does for
    ``common.user_dir``, and describe the *_mi tasks it registered: class, bases, config fields + help."""
    import ssl_mi_callback.integrations.fairseq  # noqa: F401  (the importable guard: compat before fairseq)
    from argparse import Namespace

    from fairseq import utils
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY

    names = ("audio_pretraining_mi", "hubert_pretraining_mi")
    before = sorted(name for name in names if name in TASK_REGISTRY)
    utils.import_user_module(Namespace(user_dir=user_dir))
    described = {}
    for name in names:
        task, config = TASK_REGISTRY[name], TASK_DATACLASS_REGISTRY[name]
        fields = {f.name: {"default": f.default if isinstance(f.default, (str, int, float, bool)) else None,
                           "help": f.metadata.get("help", "")} for f in dataclasses.fields(config)}
        described[name] = {
            "task_bases": [f"{cls.__module__}.{cls.__name__}" for cls in task.__mro__],
            "config_bases": [cls.__name__ for cls in config.__mro__],
            "base_task_name": getattr(task, "mi_base_task_name", None),
            "fields": fields,
        }
    return {"registered_before_import": before, "tasks": described}


def start_up_without_training(recipe: str, *overrides: str) -> dict:
    """(child) Everything ``ssl-mi-fairseq-hydra-train`` does before the first update, minus training:
    compose ``recipe`` the way fairseq's hydra_train does (``hydra_init`` + the recipe as primary config,
    ``add_defaults``, the resolved round trip), run our start-up validation, set the task up with the MI
    hook (held-out subset, evaluation settings) and build the model (the hook checks its layers)."""
    import ssl_mi_callback.integrations.fairseq  # noqa: F401  (compat before fairseq and hydra)
    from ssl_mi_callback.integrations.fairseq import run_context, tasks  # noqa: F401  (registers *_mi)

    from fairseq import tasks as fairseq_tasks
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra.experimental import compose, initialize_config_dir
    from omegaconf import OmegaConf

    hydra_init(recipe)
    with initialize_config_dir(config_dir=str(RECIPES)):
        cfg = compose(config_name=recipe, overrides=list(overrides))
    add_defaults(cfg)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    run_context.start_run(cfg)  # validate_run_config: raises MIConfigError on a bad setting
    try:
        task = fairseq_tasks.setup_task(cfg.task)
        model = task.build_model(cfg.model)
    finally:
        run_context.finish_run()
    hook = task.mi_hook
    evaluator = hook.callback.evaluator
    return {
        "is_mi_task": run_context._is_mi_task(cfg.task),
        "task": cfg.task._name,
        "task_class": type(task).__name__,
        "base_task_name": task.mi_base_task_name,
        "mi_settings": {key: cfg.task[key] for key in cfg.task if key.startswith("mi_")},
        "checkpoint": OmegaConf.to_container(cfg.checkpoint),
        "dataset": {key: cfg.dataset[key] for key in ("validate_interval", "validate_interval_updates", "disable_validation")},
        "evaluation": dataclasses.asdict(evaluator.config),
        "heldout_utterances": len(evaluator.subset.utterances),
        "model_class": type(model).__name__,
        "model_layers": evaluator.adapter.num_layers(model),
        "history_path": str(hook.history_path),
        "export_path": None if hook.export_path is None else str(hook.export_path),
    }
