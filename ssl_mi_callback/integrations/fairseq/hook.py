"""The MI hook of one fairseq training process: builds the evaluator and selector from ``task.mi_*``
and the run config, evaluates at every validation, exports the best model, and keeps its state in
the checkpoint (``task_state["ssl_mi"]``) so a resumed run continues the same history and best.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ...callback import MICallback, _one_line
from ...distributed import rank_and_world_size
from ...evaluator import EvaluationConfig, Evaluator
from ...features.fairseq import FairseqMaskedPredictionAdapter
from ...selection.export import remove_leftover_temps
from ...selector import CheckpointSelector, SelectionConfig, export_atomically, read_sidecar, sidecar_path
from .run_context import METRIC, MIConfigError

logger = logging.getLogger("ssl_mi_callback.fairseq")


def resolve_heldout(task_cfg: Any) -> Path:
    """``mi_heldout`` as a manifest/folder path, or a split name inside ``task.data``."""
    value = str(task_cfg.mi_heldout or "").strip()
    if not value:
        raise MIConfigError("task.mi_heldout is empty: set it to a split name in task.data (e.g. heldout) or a manifest path")
    for candidate in (Path(value), Path(str(task_cfg.data)) / value, Path(str(task_cfg.data)) / f"{value}.tsv"):
        if candidate.is_file() or candidate.is_dir():
            return candidate
    raise MIConfigError(
        f"task.mi_heldout={value}: no manifest {Path(str(task_cfg.data)) / (value + '.tsv')} and no such file or "
        f"folder; set task.mi_heldout to a held-out split of unlabeled audio"
    )


def evaluation_config(task_cfg: Any) -> EvaluationConfig:
    try:
        layers = tuple(int(part) for part in str(task_cfg.mi_layers).replace(" ", "").split(",") if part)
    except ValueError:
        raise MIConfigError(f"task.mi_layers={task_cfg.mi_layers}: give comma-separated integers, e.g. -1 or 4,8,12") from None
    values = {f.name: task_cfg[f"mi_{f.name}"] for f in dataclasses.fields(EvaluationConfig) if f.name != "layers"}
    config = EvaluationConfig(layers=layers, **values)
    try:
        config.validate()
    except ValueError as error:
        raise MIConfigError(f"task.mi_*: {error}") from None
    return config


def _inside(save_dir: str, value: str) -> Optional[Path]:
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else Path(save_dir) / path


def _resume_path(checkpoint_cfg: Any) -> Path:
    restore = checkpoint_cfg.restore_file
    if restore == "checkpoint_last.pt":
        return Path(checkpoint_cfg.save_dir) / f"checkpoint_last{checkpoint_cfg.checkpoint_suffix}.pt"
    return Path(restore)


def _load_resume_checkpoint(path: Path) -> dict:
    """The checkpoint being resumed (weights-only loader); an unsafe or unreadable one stops the run
    with one line (fairseq could not resume from an unreadable one either)."""
    from .safe_load import UnsafeCheckpointError, load_checkpoint

    try:
        return load_checkpoint(path, mmap=True)
    except UnsafeCheckpointError as error:  # one line and exit status 2 from the launcher, payload never run
        raise MIConfigError(" ".join(str(error).split())) from None
    except Exception as error:
        others = sorted(path.parent.glob("checkpoint_*_*.pt"), key=lambda p: p.stat().st_mtime)
        hint = f" (newest interval checkpoint: {others[-1].name})" if others else ""
        raise MIConfigError(
            f"cannot resume from {path}: it is unreadable ({type(error).__name__}: {' '.join(str(error).split())[:200]}); "
            f"it may have been cut short by a kill while fairseq copied it. Resume from another checkpoint with "
            f"checkpoint.restore_file=<path>{hint}, or move it aside to start afresh"
        ) from None


class FairseqMIHook:
    """Evaluation, selection, logging and export for one fairseq task instance."""

    def __init__(self, task_cfg: Any, run_cfg: Any, task: Any) -> None:
        self.task_cfg, self.run_cfg, self.task = task_cfg, run_cfg, task
        self.rank, self.world_size = rank_and_world_size()
        save_dir = str(run_cfg.checkpoint.save_dir)
        config = evaluation_config(task_cfg)
        evaluator = Evaluator.from_heldout(
            config, resolve_heldout(task_cfg), FairseqMaskedPredictionAdapter(),
            max_seconds=float(task_cfg.mi_max_seconds), max_utterance_seconds=float(task_cfg.mi_max_utterance_seconds),
            rank=self.rank, world_size=self.world_size,
        )
        self.history_path = _inside(save_dir, str(task_cfg.mi_history))
        selector = CheckpointSelector(
            SelectionConfig(monitor=METRIC, mode="max"),
            history_path=self.history_path,
            is_writer=self.rank == 0,
        )
        self.callback = MICallback(evaluator, selector, strict=bool(task_cfg.mi_strict))
        self.export_path = _inside(save_dir, str(task_cfg.mi_export))
        self._restore(_resume_path(run_cfg.checkpoint))

    def check_model(self, model: torch.nn.Module) -> None:
        """Fail at start-up if the model does not fit the adapter, lacks a layer, or the subset is too small."""
        try:
            self.callback.evaluator.check_model(model)
        except ValueError as error:
            raise MIConfigError(f"task.mi_*: {error}") from None

    # --- events -------------------------------------------------------------------------------
    def evaluate(self, model: torch.nn.Module, update: int, epoch: int) -> dict:
        record = self.callback.evaluate(model, step=update, epoch=epoch)
        if record["is_best"] and self.export_path is not None and self.rank == 0:
            try:
                self._export(model, record)
            except Exception as error:  # an export failure must not end the run
                if self.callback.strict:
                    raise
                record["export_error"] = _one_line(error)  # as MICallback records it
                logger.warning("MI export of update %d failed, training continues: %s", update, record["export_error"])
        return record

    def scalars(self) -> dict[str, float]:
        """What the validation line shows. A failed evaluation logs -inf, so fairseq keeps its best."""
        record = self.callback.last_record
        if record is None or record.get("status") != "ok":
            return {METRIC: -math.inf}
        metrics = dict(record["metrics"])
        if not math.isfinite(metrics.get(METRIC, math.nan)):  # NaN would poison fairseq's max() of best
            metrics[METRIC] = -math.inf
        return metrics

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self.callback.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.callback.load_state_dict(state)

    def _restore(self, resume_path: Path) -> None:
        if not resume_path.is_file() or self.run_cfg.checkpoint.reset_meters:
            self._archive_stale_files()
            return
        state = _load_resume_checkpoint(resume_path)
        own = (state.get("task_state") or {}).get("ssl_mi")
        if own is None:
            logger.info("MI hook: %s holds no MI state; starting a fresh history", resume_path)
            self._archive_stale_files()
        else:
            self.load_state_dict(own)
            self._sync_export(resume_path, state)
            best = self.callback.selector.best
            logger.info(
                "MI hook resumed from %s: best %s", resume_path,
                "none yet" if best is None else f"{best['metrics'][METRIC]:.4f} bits at update {best['step']}",
            )

    def _archive_stale_files(self) -> None:
        """A fresh run keeps an older run's history and exported best, renamed aside, instead of
        appending to the one and overwriting the other at its first evaluation."""
        if self.rank != 0:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        paths = [self.history_path]
        if self.export_path is not None:
            paths += [self.export_path, sidecar_path(self.export_path)]
            remove_leftover_temps(self.export_path)
        for path in paths:
            if path is None or not path.exists() or path.stat().st_size == 0:
                continue
            aside = path.with_name(f"{path.name}.{stamp}.old")
            os.replace(path, aside)
            logger.warning("MI hook: fresh run; the earlier %s was moved to %s", path.name, aside)

    def _sync_export(self, resume_path: Path, resume_state: dict) -> None:
        """After a resume, make the exported best the resumed best-so-far.

        A kill after an export but before fairseq saved the checkpoint of that update leaves an export
        (or, between its two renames, a file beside the previous sidecar) from training that the
        resumed run repeats; the history records of that stretch are dropped, and so is the export:
        the resumed best is re-exported from the fairseq checkpoint that holds its weights.
        """
        if self.rank != 0 or self.export_path is None:
            return
        export = self.export_path
        remove_leftover_temps(export)
        best = self.callback.selector.best
        try:
            sidecar: Optional[dict] = read_sidecar(export, verify=True) if export.exists() else None
            problem = "" if sidecar is not None else "missing"
        except (OSError, ValueError) as error:  # no sidecar, or one that does not describe the file
            sidecar, problem = None, " ".join(str(error).split())
        if best is None:
            if export.exists():
                logger.warning("MI hook: %s was written after %s, which holds no scored evaluation; it is "
                               "replaced at the first one", export, resume_path.name)
            return
        if sidecar is not None and sidecar.get("update") == best["step"] and sidecar.get("score") == best["metrics"][METRIC]:
            return
        found = sidecar.get("update") if sidecar is not None else problem
        source = self._checkpoint_holding(best, resume_path, resume_state)
        if source is None:
            logger.warning(
                "MI hook: %s (%s) is not the resumed best (update %d) and no checkpoint holding that update "
                "was found; it is replaced at the next new best", export, found, best["step"],
            )
            return
        path, state = source
        try:
            self._write_export(state["model"], state.get("task_state") or {}, best)
        except Exception as error:  # the resumed run goes on; the next new best exports again
            if self.callback.strict:
                raise
            logger.warning("MI hook: re-exporting the resumed best from %s failed: %s", path, error)
            return
        logger.warning(
            "MI hook: %s held %s, not the resumed best (written after %s was saved, or cut short by a kill); "
            "re-exported update %d (%.4f bits) from %s", export,
            f"update {found}" if isinstance(found, int) else f"an unusable export ({found})",
            resume_path.name, best["step"], best["metrics"][METRIC], path.name,
        )

    def _checkpoint_holding(self, best: dict, resume_path: Path, resume_state: dict) -> Optional[tuple]:
        """(path, state) of a fairseq checkpoint saved at the best's update with its score, if any."""
        from .safe_load import load_checkpoint

        checkpoint_cfg = self.run_cfg.checkpoint
        suffix = checkpoint_cfg.checkpoint_suffix
        save_dir = Path(checkpoint_cfg.save_dir)
        candidates = [save_dir / f"checkpoint_best{suffix}.pt", save_dir / f"checkpoint_{best['epoch']}_{best['step']}{suffix}.pt"]
        for path in [resume_path, *candidates]:
            try:
                state = resume_state if path == resume_path else load_checkpoint(path, mmap=True)
            except Exception:  # absent or unreadable: try the next one
                continue
            updates = state["optimizer_history"][-1]["num_updates"]
            score = (state.get("extra_state") or {}).get("val_loss")
            if updates == best["step"] and isinstance(score, (int, float)) and math.isclose(
                score, best["metrics"][METRIC], abs_tol=1e-9
            ):
                return path, state
        return None

    # --- export -------------------------------------------------------------------------------------
    def _export(self, model: torch.nn.Module, record: dict) -> None:
        """Atomically write the evaluated weights as a fairseq-loadable model checkpoint + JSON sidecar.

        The exported ``cfg.task`` names the stock task (``mi_*`` settings removed), so the file loads
        with plain fairseq, e.g. as ``w2v_path`` for fine-tuning, without this plugin.
        """
        self._write_export(model.state_dict(), self.task.state_dict(), record)

    def _write_export(self, model_state: dict, task_state: dict, record: dict) -> None:
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(self.run_cfg, resolve=True, enum_to_str=True)
        cfg["task"] = {k: v for k, v in cfg["task"].items() if not k.startswith("mi_")}
        cfg["task"]["_name"] = self.task.mi_base_task_name
        task_state = {k: v for k, v in task_state.items() if k != "ssl_mi"}
        update, epoch = record["step"], record["epoch"]
        sidecar = {
            "update": update,
            "epoch": epoch,
            "score": record["metrics"][METRIC],
            "metric": METRIC,
            "layers": record["settings"]["layers"],
            "selection": record["settings"]["selection"],
            "settings": record["settings"],
            "subset": record["subset"],
            "source": "model weights at the evaluation of this update (identical to fairseq's checkpoint of it)",
            "fairseq_checkpoint": str(Path(self.run_cfg.checkpoint.save_dir) / f"checkpoint_{epoch}_{update}.pt"),
        }
        state = {
            "args": None,
            "cfg": cfg,
            "model": {k: v.detach().cpu() for k, v in model_state.items()},
            "criterion": None,
            "optimizer_history": [{"criterion_name": None, "optimizer_name": None, "lr_scheduler_state": {}, "num_updates": update}],
            "task_state": task_state,
            "extra_state": {"ssl_mi": sidecar},
        }
        os.makedirs(self.export_path.parent, exist_ok=True)
        export_atomically(lambda f: torch.save(state, f), self.export_path, sidecar)
        logger.info("MI best (%.4f bits, update %d) exported to %s", sidecar["score"], update, self.export_path)
