"""Two-view features of fairseq checkpoints, extracted exactly as the product does, cached as .npz.

For one checkpoint and one held-out source this stores, at the last transformer layer:
  za, zb, groups, labels    the masked / unmasked view at the masked frames (the product's input to
                            ``unsupervised_mi``), their utterance ids and their 20 ms phone labels;
  z_all, groups_all, labels_all   the unmasked view at every frame (input of the supervised bound);
  seconds                   audio seconds per utterance (for the held-out size study).
The masks, batches and crops are the Evaluator's own (``Evaluator._local_features``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

SAMPLE_RATE = 16000


def checkpoint_paths(directory: Path) -> Dict[int, Path]:
    """{update: path} of the interval checkpoints ``checkpoint_<epoch>_<update>.pt``."""
    found = {}
    for path in Path(directory).glob("checkpoint_*_*.pt"):
        match = re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def random_init_model(path: Path, seed: int = 0) -> torch.nn.Module:
    """The architecture of the checkpoint at ``path`` with freshly initialised weights (update 0)."""
    from ssl_mi_callback.integrations.fairseq import offline  # noqa: F401  (applies the compat patches)
    from ssl_mi_callback.integrations.fairseq import tasks as _mi_tasks  # noqa: F401
    from ssl_mi_callback.integrations.fairseq.safe_load import load_checkpoint
    from fairseq import tasks
    from omegaconf import OmegaConf

    state = load_checkpoint(path)
    cfg = state["cfg"]
    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(cfg)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(seed)
    return task.build_model(cfg.model).eval()


def extract(model: torch.nn.Module, corpus: Path, split: str, max_seconds: float, mask_length: int,
            mask_prob: float = 0.5, mask_seed: int = 0) -> Dict[str, np.ndarray]:
    """The product's two-view features of ``model`` on ``corpus/<split>.tsv`` (last layer)."""
    from ssl_mi_callback.corpus import read_labels
    from ssl_mi_callback.data import load_heldout
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features import resolve_layers
    from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter

    corpus = Path(corpus)
    subset = load_heldout(corpus / f"{split}.tsv", max_seconds=max_seconds, max_utterance_seconds=15.0)
    manifest = (corpus / f"{split}.tsv").read_text().splitlines()[1:]
    uid_row = {line.split("\t")[0]: row for row, line in enumerate(manifest)}
    labels = read_labels(corpus, split)
    config = EvaluationConfig(layers=(-1,), mask_prob=mask_prob, mask_length=mask_length, mask_seed=mask_seed,
                              bootstrap=0, baselines=False)
    adapter = FairseqMaskedPredictionAdapter()
    evaluator = Evaluator(config, subset, adapter)
    layer = resolve_layers([-1], adapter.num_layers(model))[0]
    with torch.no_grad():
        parts = evaluator._local_features(model, [layer])
        out: Dict[str, List[np.ndarray]] = {k: [] for k in
                                            ("za", "zb", "groups", "labels", "z_all", "groups_all", "labels_all")}
        from ssl_mi_callback.views import span_mask

        for batch, (index, per_layer, groups) in zip(evaluator.batches, parts):
            assert batch.index == index
            za, zb = per_layer[layer]
            out["za"].append(za.numpy())
            out["zb"].append(zb.numpy())
            out["groups"].append(groups.numpy())
            waveforms = torch.stack([torch.from_numpy(u.waveform[: batch.num_samples]) for u in batch.utterances])
            num_frames = adapter.num_frames(model, batch.num_samples)
            unmasked = adapter.extract(model, waveforms, None, [layer])[layer]
            for row, utterance in enumerate(batch.utterances):
                frame_labels = labels[uid_row[utterance.uid]]
                frame_labels = np.concatenate([frame_labels, np.full(max(0, num_frames - len(frame_labels)),
                                                                     frame_labels[-1])])[:num_frames]
                mask = span_mask(num_frames, config.mask_config(), utterance.uid).numpy()
                out["labels"].append(frame_labels[mask])
                out["z_all"].append(unmasked[row].float().numpy())
                out["labels_all"].append(frame_labels)
                out["groups_all"].append(np.full(num_frames, utterance.index))
    arrays = {key: np.concatenate(value) for key, value in out.items()}
    assert len(arrays["labels"]) == len(arrays["za"])
    seconds = np.zeros(len(subset.utterances))
    for utterance in subset.utterances:
        seconds[utterance.index] = utterance.num_samples / SAMPLE_RATE
    arrays["seconds"] = seconds
    return arrays


def cached_features(cache: Path, name: str, model_fn, corpus: Path, split: str, max_seconds: float,
                    mask_length: int) -> Dict[str, np.ndarray]:
    path = Path(cache) / f"{name}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = extract(model_fn(), corpus, split, max_seconds, mask_length)
        np.savez(path, **arrays)
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def prefix_by_seconds(arrays: Dict[str, np.ndarray], max_seconds: Optional[float]) -> Dict[str, np.ndarray]:
    """The first utterances (manifest order) up to ``max_seconds`` of audio, as a smaller held-out set."""
    if max_seconds is None:
        return arrays
    keep = np.flatnonzero(np.cumsum(arrays["seconds"]) <= max_seconds + 1e-9)
    out = {}
    for key in ("za", "zb", "groups", "labels"):
        out[key] = arrays[key][np.isin(arrays["groups"], keep)]
    for key in ("z_all", "groups_all", "labels_all"):
        out[key] = arrays[key][np.isin(arrays["groups_all"], keep)]
    out["seconds"] = arrays["seconds"][keep]
    return out
