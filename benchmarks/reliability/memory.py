"""Peak memory of one MI evaluation at several held-out sizes, against the bound the settings imply.

Each measurement runs in a fresh process: build a randomly initialised fairseq wav2vec 2.0 (conv
feature encoder with 128 channels, 4 transformer layers of dimension D=768), load the held-out
subset (``max_seconds`` of generated speech), then run ``Evaluator.evaluate`` once and read the
process's peak resident memory (``ru_maxrss``) before and after. What the held-out features take is
exact: every scored layer keeps Za and Zb (float32) at the masked frames only, so

    features bytes = masked frames x D x layers x 2 views x 4
                  <= max_seconds x 50 frames/s x D x layers x 2 x 4      (the bound: every frame masked)

The audio itself is max_seconds x 16000 x 4 bytes; one forward pass works on at most
``batch_seconds`` of audio, so its memory does not grow with the subset.

    .venv/bin/python benchmarks/reliability/memory.py --seconds 60 240 [--corpus DIR] [--out memory.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRAMES_PER_SECOND = 50  # wav2vec 2.0 / HuBERT: 20 ms frames
DIM, LAYERS_TOTAL, SCORED = 768, 4, (2, 3, 4)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(corpus: Path, seconds: float, batch_seconds: float) -> dict:
    """One evaluation in this process (call in a fresh process)."""
    import torch

    torch.set_num_threads(1)
    import ssl_mi_callback.integrations.fairseq  # noqa: F401  (compat before fairseq)
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    from ssl_mi_callback.data import load_heldout
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter

    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config(
        conv_feature_layers="[(128, 10, 5)] + [(128, 3, 2)] * 4 + [(128, 2, 2)] * 2",
        encoder_layers=LAYERS_TOTAL, encoder_embed_dim=DIM, encoder_ffn_embed_dim=2 * DIM,
        encoder_attention_heads=12, final_dim=256, quantize_targets=False,
    ))
    subset = load_heldout(sorted((corpus / "wav").glob("*.wav")), max_seconds=seconds, max_utterance_seconds=15.0)
    config = EvaluationConfig(layers=SCORED, batch_seconds=batch_seconds, bootstrap=50)
    evaluator = Evaluator(config, subset, FairseqMaskedPredictionAdapter())
    rss_before = _rss_mib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.no_grad():  # the forward passes alone first (the same ones evaluate() runs)
        model.eval()
        evaluator._local_features(model, list(SCORED))
    peak_forward = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record = evaluator.evaluate(model)
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    frames = record["subset"]["frames"]
    mib = 1024 * 1024
    return {
        "held_out_seconds": round(subset.total_seconds, 1),
        "max_seconds": seconds,
        "batch_seconds": batch_seconds,
        "utterances": len(subset.utterances),
        "masked_frames": frames,
        "all_frames_bound": int(seconds * FRAMES_PER_SECOND),
        "features_mib": round(frames * DIM * len(SCORED) * 2 * 4 / mib, 1),
        "features_bound_mib": round(seconds * FRAMES_PER_SECOND * DIM * len(SCORED) * 2 * 4 / mib, 1),
        "audio_mib": round(subset.num_samples * 4 / mib, 1),
        "rss_before_mib": round(rss_before, 1),
        "peak_rss_mib": round(peak_after, 1),
        "peak_before_evaluation_mib": round(peak_before, 1),
        "forward_peak_increase_mib": round(peak_forward - rss_before, 1),
        "evaluation_peak_increase_mib": round(peak_after - rss_before, 1),
        "seconds": record["seconds"]["total"],
        "mi_bits": record["metrics"]["mi_bits"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[60.0, 240.0])
    parser.add_argument("--batch-seconds", type=float, nargs="+", default=[16.0])
    parser.add_argument("--corpus", type=Path, help="a generated corpus with >= max(--seconds) of audio in wav/")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", nargs=3, metavar=("CORPUS", "SECONDS", "BATCH_SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(Path(args.one[0]), float(args.one[1]), float(args.one[2]))))
        return
    corpus = args.corpus
    if corpus is None:
        from ssl_mi_callback.corpus import CorpusConfig, generate_corpus

        corpus = Path(tempfile.mkdtemp(prefix="memory_corpus_"))
        minutes = max(args.seconds) / 60 * 1.1
        generate_corpus(CorpusConfig(minutes=minutes, seed=0), corpus, jobs=2)
    rows = []
    for batch_seconds in args.batch_seconds:
        for seconds in args.seconds:
            output = subprocess.run([sys.executable, __file__, "--one", str(corpus), str(seconds), str(batch_seconds)],
                                    check=True, capture_output=True, text=True, cwd=ROOT).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    header = ("held-out s", "batch s", "masked frames", "features MiB (bound)", "audio MiB", "RSS before",
              "peak RSS", "increase: forward only", "increase: evaluation")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(v) for v in (
            row["held_out_seconds"], row["batch_seconds"], row["masked_frames"],
            f"{row['features_mib']} ({row['features_bound_mib']})", row["audio_mib"], row["rss_before_mib"],
            row["peak_rss_mib"], row["forward_peak_increase_mib"], row["evaluation_peak_increase_mib"])))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
