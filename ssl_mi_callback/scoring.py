"""Offline scoring of saved checkpoints with exactly the evaluation the training hook runs.

``score_checkpoint`` = :class:`~.evaluator.Evaluator` on one loaded checkpoint, plus -- when frame
labels are given -- the supervised bound I(Z; Y) and the frame-level probe accuracy per layer on the
unmasked features of the same held-out audio. Checkpoints are loaded by a *loader* per model family
(:data:`LOADERS`), or by a user function ``package.module:function`` for any other kind.
"""
from __future__ import annotations

import importlib
import math
import pickle
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO

import numpy as np
import torch

from . import estimators
from .data import HeldOutSubset
from .evaluator import METRIC_DECIMALS, EvaluationConfig, Evaluator, _evaluation_mode
from .features import FeatureAdapter, resolve_layers
from .labels import align_labels
from .safe_loading import UnsafeCheckpointError, load_weights_only, weights_only_refusal  # noqa: F401  (re-exported)

@dataclass
class LoadedModel:
    """A checkpoint ready to score: the model (eval mode, on its device), its adapter, and the
    training step it was saved at when the file says so."""

    model: torch.nn.Module
    adapter: FeatureAdapter
    step: Optional[int] = None


Loader = Callable[[str, str], LoadedModel]
"""``loader(path, device) -> LoadedModel``."""


# ------------------------------------------------------------------------------ loaders
def load_fairseq(path: str, device: str) -> LoadedModel:
    """A fairseq wav2vec 2.0 / HuBERT / data2vec audio checkpoint, read once with the weights-only loader
    and fairseq's allowlist (:func:`~.integrations.fairseq.offline.load_checkpoint_model`)."""
    from .features.fairseq import FairseqMaskedPredictionAdapter
    from .integrations.fairseq.offline import load_checkpoint_model

    model, update = load_checkpoint_model(path, device)
    return LoadedModel(model, FairseqMaskedPredictionAdapter(), update)


TORCHAUDIO_BUILDERS = ("wav2vec2_model", "hubert_pretrain_model", "wavlm_model")


def save_torchaudio_checkpoint(
    path: str, model: torch.nn.Module, builder: str, builder_kwargs: dict, step: Optional[int] = None
) -> None:
    """Save a ``torchaudio.models`` model so that ``ssl-mi score --family torchaudio`` can rebuild it:
    the builder's name and keyword arguments (plain values), the weights and the step. Loading needs
    no pickled classes (torch's weights-only loader)."""
    if builder not in TORCHAUDIO_BUILDERS:
        raise ValueError(f"builder must be one of {', '.join(TORCHAUDIO_BUILDERS)}, got {builder!r}")
    torch.save({"torchaudio_builder": builder, "builder_kwargs": dict(builder_kwargs), "step": step,
                "model": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}}, path)


def load_torchaudio(path: str, device: str) -> LoadedModel:
    """A torchaudio model saved by :func:`save_torchaudio_checkpoint`."""
    import torchaudio

    from .features.torchaudio import TorchaudioWav2Vec2Adapter

    state = load_weights_only(path)
    if not isinstance(state, dict) or state.get("torchaudio_builder") not in TORCHAUDIO_BUILDERS:
        raise ValueError(f"{path} is not a checkpoint written by ssl_mi_callback.scoring.save_torchaudio_checkpoint")
    model = getattr(torchaudio.models, state["torchaudio_builder"])(**state["builder_kwargs"])
    model.load_state_dict(state["model"])
    return LoadedModel(model.to(device).eval(), TorchaudioWav2Vec2Adapter(), state.get("step"))


def load_huggingface(path: str, device: str) -> LoadedModel:
    """A Hugging Face model directory (``save_pretrained``, or a Trainer ``checkpoint-N`` folder, whose
    ``trainer_state.json`` gives the step); local files only, never a download, never remote code.

    ``from_pretrained`` reads ``model.safetensors`` (no pickle at all) when present, else
    ``pytorch_model.bin`` with ``torch.load(weights_only=True)`` passed explicitly (so
    torch's environment override of its default cannot turn it off; transformers refuses ``.bin`` files on
    torch < 2.6). A ``.bin`` that carries another pickled global is refused here in one line.
    """
    import json
    from pathlib import Path

    import transformers

    from .features.huggingface import HuggingFaceAdapter

    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise ValueError(f"{path} is not a Hugging Face model directory (no config.json)")
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    architecture = (config.architectures or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        model_class = transformers.AutoModel  # config.architectures names no transformers model class
    try:
        model = model_class.from_pretrained(directory, local_files_only=True)
    except pickle.UnpicklingError as error:
        raise weights_only_refusal(path, error) from None
    state_file = directory / "trainer_state.json"
    step = json.loads(state_file.read_text())["global_step"] if state_file.is_file() else None
    return LoadedModel(model.to(device).eval(), HuggingFaceAdapter(), step)


LOADERS: Dict[str, Loader] = {"fairseq": load_fairseq, "torchaudio": load_torchaudio, "huggingface": load_huggingface}


def resolve_loader(family: str) -> Loader:
    """A loader by family name, or a user function given as ``package.module:function``."""
    if family in LOADERS:
        return LOADERS[family]
    if ":" not in family:
        raise ValueError(
            f"unknown model family {family!r}: use one of {', '.join(LOADERS)} or a loader 'package.module:function' "
            "returning ssl_mi_callback.scoring.LoadedModel"
        )
    module_name, _, function_name = family.partition(":")
    try:
        loader = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import the loader {family!r}: {error}") from None
    if not callable(loader):
        raise ValueError(f"the loader {family!r} is not callable")
    return loader


def supervised_by_layer(
    evaluator: Evaluator, model: torch.nn.Module, labels: Dict[str, np.ndarray], layers: Sequence[int],
    unmasked: Optional[Dict[int, Dict[int, torch.Tensor]]] = None,
) -> dict:
    """I(Z; Y) lower bound and probe accuracy per layer, from the unmasked features of every frame of the
    evaluator's held-out batches (utterances cropped as the evaluator crops them). ``unmasked``: the
    features {batch index: {layer: [B, F, D]}} an evaluation already computed (its ``unmasked_sink``);
    batches missing there are run through the model."""
    features: Dict[int, List[torch.Tensor]] = {layer: [] for layer in layers}
    frame_labels, groups = [], []
    missing = mismatched = 0
    adapter = evaluator.adapter
    with _evaluation_mode(model):
        for batch in evaluator.batches:
            num_frames = adapter.num_frames(model, batch.num_samples)
            rows = []
            for row, utterance in enumerate(batch.utterances):
                if utterance.uid not in labels:
                    missing += 1
                    continue
                utterance_frames = adapter.num_frames(model, utterance.source_samples or utterance.num_samples)
                aligned = align_labels(labels[utterance.uid], utterance_frames, num_frames)
                if aligned is None:
                    mismatched += 1
                    continue
                rows.append(row)
                frame_labels.append(aligned)
                groups.append(np.full(num_frames, utterance.index))
            if not rows:
                continue
            if unmasked is not None and batch.index in unmasked:  # consumed: the copy below is all that stays
                extracted = {layer: value[rows] for layer, value in unmasked.pop(batch.index).items() if layer in layers}
            else:
                extracted = adapter.extract(model, batch.waveforms()[rows], layers)
            for layer in layers:
                features[layer].append(extracted[layer].float().reshape(-1, extracted[layer].shape[-1]).cpu())
    if not frame_labels:
        raise ValueError(
            f"no held-out utterance has usable labels ({missing} without labels, {mismatched} with a frame count "
            "that does not match the audio)"
        )
    y, g = torch.from_numpy(np.concatenate(frame_labels)), torch.from_numpy(np.concatenate(groups))
    config = evaluator.config
    result: dict = {"skipped": {"no_labels": missing, "frame_mismatch": mismatched}, "layers": {}}
    for layer in layers:
        fields = estimators.supervised_mi(
            torch.cat(features[layer]), y, g, probe=config.probe, seed=config.estimator_seed,
            fit_fraction=config.fit_fraction, bootstrap=config.bootstrap,
        ).to_dict()
        result["layers"][str(layer)] = fields
    return result


# ------------------------------------------------------------------------------ scoring
def score_checkpoint(
    path: str,
    loader: Loader,
    subset: HeldOutSubset,
    config: EvaluationConfig,
    *,
    labels: Optional[Dict[str, np.ndarray]] = None,
    device: str = "cpu",
) -> dict:
    """The hook's evaluation record for one checkpoint (+ ``supervised`` when ``labels`` are given).

    Never raises for a bad checkpoint: the record then has ``status: failed`` and a one-line ``error``.
    """
    started = time.perf_counter()
    try:
        loaded = loader(path, device)
        evaluator = Evaluator(config, subset, loaded.adapter)
        evaluator.check_model(loaded.model)
        unmasked: Dict[int, Dict[int, torch.Tensor]] = {}

        def keep_unmasked(batch, features: Dict[int, torch.Tensor]) -> None:  # one forward serves both
            unmasked[batch.index] = {layer: value.detach().float().cpu() for layer, value in features.items()}

        record = evaluator.evaluate(loaded.model, unmasked_sink=keep_unmasked if labels is not None else None)
        if labels is not None:
            layers = resolve_layers(config.layers, loaded.adapter.num_layers(loaded.model))
            supervised = supervised_by_layer(evaluator, loaded.model, labels, layers, unmasked)
            record["supervised"] = supervised
            for layer, fields in supervised["layers"].items():
                record["metrics"][f"phone_mi_bits_l{layer}"] = round(fields["mi_bits"], METRIC_DECIMALS)
                record["metrics"][f"phone_accuracy_l{layer}"] = round(fields["accuracy"], METRIC_DECIMALS)
        record["step"] = loaded.step
    except Exception as error:  # one bad checkpoint must not cost the others
        text = " ".join(str(error).split())[:500]
        record = {"status": "failed", "error": f"{type(error).__name__}: {text}", "metrics": {}, "step": None}
    record["checkpoint"] = str(path)
    record.setdefault("seconds", {})["wall"] = round(time.perf_counter() - started, 3)
    return record


def ranking(records: Sequence[dict], metric: str = "mi_bits") -> List[dict]:
    """Successful records, best ``metric`` first (ties: the later step first, as fairseq's best)."""
    ok = [r for r in records if r.get("status") == "ok" and math.isfinite(r["metrics"].get(metric, math.nan))]
    return sorted(ok, key=lambda r: (r["metrics"][metric], r.get("step") or -1), reverse=True)


class Progress:
    """A one-line progress bar on a terminal, one line per item elsewhere (logs stay readable)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total, self.stream, self.width, self.done = total, stream, width, 0
        self.started = time.perf_counter()
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())

    def update(self, label: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        remaining = elapsed / self.done * (self.total - self.done)
        filled = int(self.width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{bar}] {self.done}/{self.total} {label} ({elapsed:.0f} s, ~{remaining:.0f} s left)"
        self.stream.write(("\r" + line + ("\n" if self.done == self.total else "")) if self.interactive else line + "\n")
        self.stream.flush()
