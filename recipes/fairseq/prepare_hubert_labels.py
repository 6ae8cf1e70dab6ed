#!/usr/bin/env python
"""MFCC k-means frame labels for fairseq's ``hubert_pretraining`` task (HuBERT iteration 1).

Given a fairseq audio manifest directory (``train.tsv``, ``valid.tsv``, ... : first line the audio root,
then ``relative/path<TAB>num_samples``), this script

1. computes 39-dim MFCC features (13 Kaldi MFCCs + deltas + delta-deltas, torchaudio) with a 25 ms
   window and a **20 ms hop** (320 samples at 16 kHz, ``snip_edges``), so an utterance of ``n``
   samples gets ``(n - 400) // 320 + 1`` label frames: exactly the frames of the wav2vec 2.0 / HuBERT
   convolutional feature encoder (receptive field 400 samples, stride 320). Run HuBERT with
   ``task.label_rate=50``;
2. fits k-means (scikit-learn ``MiniBatchKMeans``, ``--k`` clusters, seeded) on the features of the
   ``--fit-split`` split (default ``train``; at most ``--max-fit-frames`` frames, drawn by seed);
3. writes ``<split>.km`` for every split (one line per manifest entry, in manifest order,
   space-separated cluster ids) and ``dict.km.txt`` (``<id> 1`` per cluster), which is what
   ``task.labels=[km]`` + ``task.label_dir=<out>`` expect, plus ``km_info.json`` describing the run.

It is deterministic (no dither, seeded k-means, seeded subsampling) and idempotent: when
``km_info.json`` records the same settings and manifest contents and every label file has the
expected number of lines and frames, nothing is recomputed. Errors are reported as one line.

Usage::

    python recipes/fairseq/prepare_hubert_labels.py MANIFEST_DIR [--out LABEL_DIR] [--k 50] [--seed 0]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

WINDOW = 400  # 25 ms at 16 kHz
HOP = 320  # 20 ms at 16 kHz: the 50 Hz frame rate of wav2vec 2.0 / HuBERT
LABEL_RATE = 50
INFO_NAME = "km_info.json"
INFO_VERSION = 1


class LabelError(RuntimeError):
    """A problem with the inputs or outputs; its message is one line."""


def num_frames(num_samples: int) -> int:
    """Label frames for an utterance of ``num_samples`` samples (the conv encoder's frame count)."""
    return 0 if num_samples < WINDOW else (num_samples - WINDOW) // HOP + 1


def read_manifest(path: Path) -> Tuple[Path, List[Tuple[str, int]]]:
    """The audio root and the (relative path, num_samples) entries of a fairseq manifest."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise LabelError(f"cannot read manifest {path}: {error.strerror or error}") from None
    if not lines:
        raise LabelError(f"manifest {path} is empty (expected the audio root on its first line)")
    root = Path(lines[0].strip())
    entries = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            raise LabelError(f"{path}:{number}: empty line (fairseq counts it as an utterance)")
        items = line.rstrip("\n").split("\t")
        if len(items) != 2 or not items[1].strip().isdigit():
            raise LabelError(f"{path}:{number}: expected 'relative_path<TAB>num_samples', got {line!r}")
        entries.append((items[0], int(items[1])))
    return root, entries


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mfcc_features(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """(frames, 39) float32: 13 Kaldi MFCCs (no energy, no dither) + deltas + delta-deltas."""
    import torch
    from torchaudio.compliance import kaldi
    from torchaudio.functional import compute_deltas

    if len(wav) < WINDOW:
        return np.zeros((0, 39), dtype=np.float32)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).view(1, -1)
        mfcc = kaldi.mfcc(
            waveform=x,
            sample_frequency=sample_rate,
            frame_length=1000.0 * WINDOW / sample_rate,
            frame_shift=1000.0 * HOP / sample_rate,
            use_energy=False,
            dither=0.0,
            snip_edges=True,
        ).transpose(0, 1)  # (13, T)
        deltas = compute_deltas(mfcc)
        ddeltas = compute_deltas(deltas)
        feats = torch.cat([mfcc, deltas, ddeltas], dim=0).transpose(0, 1).contiguous()
    return feats.numpy().astype(np.float32, copy=False)


def split_features(manifest: Path, sample_rate: int) -> List[np.ndarray]:
    """MFCC features of every utterance of a manifest, in manifest order."""
    import soundfile as sf

    root, entries = read_manifest(manifest)
    feats = []
    for rel, size in entries:
        path = root / rel
        try:
            wav, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as error:  # soundfile raises several types
            raise LabelError(f"cannot read audio {path} (listed in {manifest}): {error}") from None
        if rate != sample_rate:
            raise LabelError(f"{path} has sample rate {rate}, expected {sample_rate} (resample it first)")
        wav = wav.mean(axis=1)  # fairseq averages channels the same way
        if len(wav) != size:
            raise LabelError(f"{path} has {len(wav)} samples but {manifest} says {size}")
        utt = mfcc_features(wav, sample_rate)
        if len(utt) != num_frames(size):  # guards the alignment contract
            raise LabelError(f"{path}: {len(utt)} MFCC frames, expected {num_frames(size)}")
        feats.append(utt)
    return feats


def fit_kmeans(feats: Sequence[np.ndarray], k: int, seed: int, max_fit_frames: int, n_init: int):
    from sklearn.cluster import MiniBatchKMeans

    data = np.concatenate([f for f in feats if len(f)], axis=0) if any(len(f) for f in feats) else None
    if data is None or len(data) < k:
        got = 0 if data is None else len(data)
        raise LabelError(f"the fit split has {got} frames, fewer than k={k} clusters")
    if len(data) > max_fit_frames:
        rows = np.sort(np.random.default_rng(seed).choice(len(data), max_fit_frames, replace=False))
        data = data[rows]
    # HuBERT's simple_kmeans/learn_kmeans.py settings, plus a seed.
    km = MiniBatchKMeans(
        n_clusters=k,
        init="k-means++",
        max_iter=100,
        batch_size=10000,
        tol=0.0,
        max_no_improvement=100,
        n_init=n_init,
        reassignment_ratio=0.0,
        compute_labels=False,
        random_state=seed,
    )
    km.fit(data.astype(np.float64))
    return km, len(data)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _expected_info(manifest_dir: Path, splits: Sequence[str], args) -> Dict:
    return {
        "version": INFO_VERSION,
        "k": args.k,
        "seed": args.seed,
        "fit_split": args.fit_split,
        "max_fit_frames": args.max_fit_frames,
        "n_init": args.n_init,
        "sample_rate": args.sample_rate,
        "label_rate": LABEL_RATE,
        "window": WINDOW,
        "hop": HOP,
        "features": "kaldi mfcc 13 (use_energy=False, dither=0) + deltas + delta-deltas",
        "manifests": {s: _file_digest(manifest_dir / f"{s}.tsv") for s in splits},
    }


def _outputs_match(out: Path, manifest_dir: Path, splits: Sequence[str], expected: Dict) -> bool:
    """True when a previous run with the same settings and manifests left complete outputs."""
    try:
        info = json.loads((out / INFO_NAME).read_text())
    except (OSError, ValueError):
        return False
    recorded = {key: info.get(key) for key in expected}
    if recorded != expected:
        return False
    try:
        dict_lines = (out / "dict.km.txt").read_text().splitlines()
    except OSError:
        return False
    if dict_lines != [f"{i} 1" for i in range(expected["k"])]:
        return False
    for split in splits:
        _, entries = read_manifest(manifest_dir / f"{split}.tsv")
        try:
            lines = (out / f"{split}.km").read_text().split("\n")
        except OSError:
            return False
        if lines[-1] != "" or len(lines) - 1 != len(entries):
            return False
        if any(len(line.split()) != num_frames(size) for line, (_, size) in zip(lines, entries)):
            return False
    return True


def prepare(manifest_dir: Path, out: Optional[Path] = None, splits: Optional[Sequence[str]] = None,
            k: int = 50, seed: int = 0, fit_split: str = "train", max_fit_frames: int = 500_000,
            n_init: int = 5, sample_rate: int = 16_000, force: bool = False, log=print) -> bool:
    """Write the label files; return False when they were already up to date (nothing done)."""
    args = argparse.Namespace(k=k, seed=seed, fit_split=fit_split, max_fit_frames=max_fit_frames,
                              n_init=n_init, sample_rate=sample_rate)
    manifest_dir = Path(manifest_dir)
    out = manifest_dir if out is None else Path(out)
    if k < 1 or max_fit_frames < k or n_init < 1:
        raise LabelError(f"need k >= 1, max_fit_frames >= k and n_init >= 1 "
                         f"(got k={k}, max_fit_frames={max_fit_frames}, n_init={n_init})")
    if not manifest_dir.is_dir():
        raise LabelError(f"manifest directory {manifest_dir} does not exist")
    if splits is None:
        splits = sorted(p.stem for p in manifest_dir.glob("*.tsv"))
    splits = list(dict.fromkeys(splits))
    for split in splits:
        if not (manifest_dir / f"{split}.tsv").is_file():
            raise LabelError(f"no manifest {manifest_dir / (split + '.tsv')}")
    if fit_split not in splits:
        if not (manifest_dir / f"{fit_split}.tsv").is_file():
            raise LabelError(f"no manifest for the fit split: {manifest_dir / (fit_split + '.tsv')}")
        splits.append(fit_split)
    expected = _expected_info(manifest_dir, splits, args)
    if not force and _outputs_match(out, manifest_dir, splits, expected):
        log(f"labels in {out} are up to date for {', '.join(splits)} (k={k}); nothing to do")
        return False

    try:
        import torchaudio  # noqa: F401
    except Exception as error:  # ImportError, or an OSError from a mismatched wheel
        raise LabelError(f"torchaudio is needed for MFCC features and does not import ({error}); "
                         f"install torchaudio matching your torch version") from None
    out.mkdir(parents=True, exist_ok=True)
    features = {split: split_features(manifest_dir / f"{split}.tsv", sample_rate) for split in splits}
    km, used = fit_kmeans(features[fit_split], k, seed, max_fit_frames, n_init)
    log(f"k-means: k={k} fitted on {used} frames of '{fit_split}' (inertia {km.inertia_:.4g})")
    (out / INFO_NAME).unlink(missing_ok=True)  # an interrupted run must not look complete
    for split in splits:
        lines = []
        for utt in features[split]:
            ids = km.predict(utt.astype(np.float64)) if len(utt) else []
            lines.append(" ".join(str(int(i)) for i in ids))
        _atomic_write(out / f"{split}.km", "".join(line + "\n" for line in lines))
        log(f"wrote {out / (split + '.km')} ({len(lines)} utterances, "
            f"{sum(len(f) for f in features[split])} frames)")
    _atomic_write(out / "dict.km.txt", "".join(f"{i} 1\n" for i in range(k)))
    info = dict(expected, fit_frames=used, inertia=float(f"{km.inertia_:.6g}"))  # stable across BLAS threads
    _atomic_write(out / INFO_NAME, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest_dir", type=Path, help="directory with fairseq <split>.tsv manifests")
    parser.add_argument("--out", type=Path, default=None,
                        help="label directory (task.label_dir); default: the manifest directory")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="splits to label (default: every *.tsv in the manifest directory)")
    parser.add_argument("--fit-split", default="train", help="split k-means is fitted on (default train)")
    parser.add_argument("--k", type=int, default=50, help="number of clusters (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="k-means / subsampling seed (default 0)")
    parser.add_argument("--max-fit-frames", type=int, default=500_000,
                        help="fit k-means on at most this many frames (default 500000)")
    parser.add_argument("--n-init", type=int, default=5, help="k-means restarts (default 5)")
    parser.add_argument("--sample-rate", type=int, default=16_000, help="expected audio rate (16000)")
    parser.add_argument("--force", action="store_true", help="recompute even if outputs are up to date")
    args = parser.parse_args(argv)
    try:
        prepare(args.manifest_dir, out=args.out, splits=args.splits, k=args.k, seed=args.seed,
                fit_split=args.fit_split, max_fit_frames=args.max_fit_frames, n_init=args.n_init,
                sample_rate=args.sample_rate, force=args.force)
    except LabelError as error:
        print(f"prepare_hubert_labels: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prepare_hubert_labels: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
