"""Phone-probe accuracy on separate labelled splits: a linear probe fitted on the frames of
``probe_train`` and its frame accuracy measured on ``probe_test`` (a generated corpus's splits), per
layer, for every checkpoint given. The second ground truth of the selection benchmark; the first is
the ``ssl-mi score`` probe on two halves of the held-out set.

    python -m benchmarks.selection.probe_split CKPT... --corpus DIR --layers 1,2 --json OUT.json

Features are the unmasked ones of :meth:`FeatureAdapter.extract` (one utterance per forward, no
padding), labels are the corpus's ``<split>.phn`` (one per 20 ms frame); the probe is the product's
:class:`~ssl_mi_callback.estimators.probes.LinearProbe` (standardised inputs, L2 strength chosen by
cross-validation over utterances).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch


def split_features(model: torch.nn.Module, adapter, corpus: Path, split: str, layers: Sequence[int],
                   max_seconds: float) -> Tuple[Dict[int, torch.Tensor], torch.Tensor, torch.Tensor]:
    """({layer: [N, D]}, labels [N], utterance index [N]) over the labelled frames of one split."""
    from ssl_mi_callback.data import load_heldout
    from ssl_mi_callback.labels import align_labels, read_frame_labels

    manifest = corpus / f"{split}.tsv"
    subset = load_heldout(manifest, max_seconds=max_seconds, max_utterance_seconds=15.0)
    labels = read_frame_labels(corpus / f"{split}.phn", manifest)
    features: Dict[int, List[torch.Tensor]] = {layer: [] for layer in layers}
    frame_labels, groups = [], []
    with torch.no_grad():
        for utterance in subset.utterances:
            if utterance.uid not in labels:
                continue
            waveform = torch.from_numpy(np.asarray(utterance.waveform, dtype=np.float32))[None]
            num_frames = adapter.num_frames(model, waveform.shape[1])
            aligned = align_labels(labels[utterance.uid], adapter.num_frames(model, utterance.source_samples or waveform.shape[1]), num_frames)
            if aligned is None:
                continue
            extracted = adapter.extract(model, waveform, list(layers))
            for layer in layers:
                features[layer].append(extracted[layer][0, :num_frames].float().cpu())
            frame_labels.append(torch.from_numpy(np.asarray(aligned, dtype=np.int64)))
            groups.append(torch.full((num_frames,), utterance.index, dtype=torch.int64))
    if not frame_labels:
        raise ValueError(f"{split}: no utterance with usable labels")
    return {layer: torch.cat(parts) for layer, parts in features.items()}, torch.cat(frame_labels), torch.cat(groups)


def probe_accuracies(path: str, corpus: Path, layers_spec: Sequence[int], max_seconds: float, n_classes: int) -> dict:
    from ssl_mi_callback.estimators.probes import make_probe
    from ssl_mi_callback.features import resolve_layers
    from ssl_mi_callback.scoring import load_fairseq

    started = time.perf_counter()
    loaded = load_fairseq(path, "cpu")
    model, adapter = loaded.model.eval(), loaded.adapter
    layers = resolve_layers(tuple(layers_spec), adapter.num_layers(model))
    train_x, train_y, train_g = split_features(model, adapter, corpus, "probe_train", layers, max_seconds)
    test_x, test_y, _ = split_features(model, adapter, corpus, "probe_test", layers, max_seconds)
    result = {"checkpoint": path, "step": loaded.step, "frames": {"train": int(train_y.numel()), "test": int(test_y.numel())},
              "metrics": {}}
    for layer in layers:
        probe = make_probe("linear", n_classes, seed=0).fit(train_x[layer], train_y, train_g)
        accuracy = float((probe.predict(test_x[layer]).cpu() == test_y).double().mean())
        result["metrics"][f"split_probe_accuracy_l{layer}"] = round(accuracy, 6)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--corpus", type=Path, required=True, help="generated corpus with probe_train/probe_test .tsv + .phn")
    parser.add_argument("--layers", default="-1", help="comma-separated 1-based layers (negative from the end)")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="cap on the audio of each split")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n_classes = len((args.corpus / "phones.txt").read_text().split())
    layers = [int(part) for part in args.layers.split(",") if part.strip()]
    records = []
    for path in args.checkpoints:
        try:
            records.append({"status": "ok", **probe_accuracies(path, args.corpus, layers, args.max_seconds, n_classes)})
        except Exception as error:  # one bad checkpoint must not cost the others
            records.append({"status": "failed", "checkpoint": path, "error": f"{type(error).__name__}: {error}"[:500], "metrics": {}})
        shown = records[-1]["metrics"] if records[-1]["status"] == "ok" else records[-1]["error"]
        print(f"{Path(path).name}: {shown}", file=sys.stderr, flush=True)
    args.json.write_text(json.dumps({"corpus": str(args.corpus), "layers": layers, "checkpoints": records}, indent=1) + "\n")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
