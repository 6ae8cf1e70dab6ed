"""GPU rows of the speed benchmark (issue 4): one command for a machine with a CUDA GPU.

    python -m benchmarks.speed.gpu --corpus CORPUS --out DIR [--device cuda] [--quick] [--budget-s 420]

``CORPUS`` is a generated-speech corpus (``python -m ssl_mi_callback.corpus``; the speed benchmark's
``runs/bench_speed/corpus``). Sections, in this order, each guarded (a failure is recorded, the
others still run) and written to ``DIR/results_gpu.json`` as it finishes, so a run cut short keeps
what it measured; ``DIR/results_gpu.md`` is the table:

1. ``evaluation``: ``Evaluator.evaluate`` (EvaluationConfig defaults, mask_length 10) of a wav2vec 2.0
   base model (95 M parameters, random init) on ``--eval-seconds`` (3600) of held-out audio, with
   float32 and with bfloat16 weights: time split into loading, two-view forward, k-means, probe,
   baselines, and the ratio of the whole to the forward (target <= 1.25x); the bfloat16 selection
   value against the float32 one and its 95% interval (mixed precision may be used where it does not
   move the result beyond its interval).
2. ``base_overhead``: the hook's training overhead at the base recipes' defaults, from one training
   update of the base model on the recipe's per-GPU batch (float32 weights, and bfloat16 weights with
   AdamW on them: fairseq's ``common.bf16`` also keeps float32 master weights, so this update is a
   little cheaper and the overhead errs high) and one evaluation of the recipe's ``mi_max_seconds`` of
   audio in the same precision: evaluation / (validate_interval_updates x update) (target <= 2%).
3. ``kmeans``: ``OnlineKMeans.fit`` on the GPU (time and inertia per ``max_iter``) next to a plain
   torch Lloyd loop (random initial centres, 20 iterations) on the same data, the issue's reference.
4. ``hook``: the tiny fairseq recipe on the GPU with ``common.fp16=true``, with and without the hook
   (the fp16 training path end to end: the history must hold finite values).

The hour of held-out audio is made from the corpus: every utterance of every split, then variants of
each (mixed with another utterance at 0.3 of its amplitude) until ``--eval-seconds`` are reached (a
12-minute corpus: the originals and 4 variants, the last one partly); the forward's cost depends on
the audio's length, not its content.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from benchmarks.speed import run as cpu_bench

HERE = cpu_bench.HERE
SPLITS = ("train", "valid", "heldout", "probe_train", "probe_test")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds of one call (a GPU synchronised before and after) and its result."""
    sync = cpu_bench.synchronizer(device)
    sync()
    started = time.perf_counter()
    value = fn()
    sync()
    return time.perf_counter() - started, value


# ----------------------------------------------------------------------------------- held-out audio
def heldout_of(corpus: Path, out_dir: Path, seconds: float, sample_rate: int = 16000) -> tuple[Path, str]:
    """A manifest of at least ``seconds`` of speech made from ``corpus`` (module docstring); reused
    when it already exists with enough audio."""
    import soundfile

    from ssl_mi_callback.data import load_heldout

    manifest = out_dir / f"heldout_{int(seconds)}s.tsv"
    note_file = manifest.with_suffix(".note")
    if manifest.exists() and note_file.exists():
        return manifest, note_file.read_text()
    waveforms: List[np.ndarray] = []
    for split in SPLITS:
        if (corpus / f"{split}.tsv").exists():
            waveforms += [u.waveform.astype(np.float32) for u in load_heldout(corpus / f"{split}.tsv").utterances]
    if not waveforms:
        raise ValueError(f"{corpus} has no audio in {', '.join(s + '.tsv' for s in SPLITS)}")
    corpus_seconds = sum(len(w) for w in waveforms) / sample_rate
    out_dir.mkdir(parents=True, exist_ok=True)
    lines, total, variant = [str(out_dir.resolve())], 0, 0
    while total < seconds * sample_rate:
        for index, waveform in enumerate(waveforms):
            if variant:
                other = waveforms[(index + variant) % len(waveforms)]
                other = np.resize(other, len(waveform))  # tiled or cut to this utterance's length
                waveform = waveform + 0.3 * other
                waveform = waveform / max(1.0, float(np.abs(waveform).max()) / 0.99)
            name = f"v{variant}_{index:05d}.wav"
            soundfile.write(out_dir / name, waveform, sample_rate, subtype="PCM_16")
            lines.append(f"{name}\t{len(waveform)}")
            total += len(waveform)
            if total >= seconds * sample_rate:
                break
        variant += 1
    manifest.write_text("\n".join(lines) + "\n")
    note = (f"{total / sample_rate:.0f} s: the {len(waveforms)} utterances of {corpus.name} ({corpus_seconds:.0f} s, "
            f"splits {', '.join(SPLITS)}) and up to {variant - 1} variant(s) of each (the last one partly), mixed with "
            "another utterance at 0.3 amplitude")
    note_file.write_text(note)
    return manifest, note


# ----------------------------------------------------------------------------------- 1. evaluation
def precision_agreement(rows: List[dict]) -> Optional[dict]:
    """bfloat16's selection value against float32's and its 95% interval (same audio, masks, seeds)."""
    by_dtype = {row["dtype"]: row for row in rows if "mi_bits" in row and len(row.get("ci95") or []) == 2}
    if not {"float32", "bfloat16"} <= set(by_dtype):
        return None
    reference, low_precision = by_dtype["float32"], by_dtype["bfloat16"]
    high, low = max(reference["ci95"]), min(reference["ci95"])
    difference = low_precision["mi_bits"] - reference["mi_bits"]
    return {"float32": reference["mi_bits"], "bfloat16": low_precision["mi_bits"], "difference": difference,
            "float32_interval": [low, high], "half_width": (high - low) / 2,
            "within_interval": low <= low_precision["mi_bits"] <= high}


# ----------------------------------------------------------------------------------- 2. base overhead
def bench_base_overhead(corpus: Path, heldout: Path, device: torch.device, repeats: int, quick: bool) -> List[dict]:
    """Per precision: one update of wav2vec 2.0 base on the recipe's per-GPU batch and one evaluation of
    the recipe's mi_max_seconds; overhead = evaluation / (validate_interval_updates x update). Lower
    precision as fairseq's ``common.bf16`` runs it: the model's weights in that type (no autocast: the
    model writes its float mask embedding into the features). ``quick``: the tiny model, small sizes."""
    import yaml

    recipe = yaml.safe_load((cpu_bench.ROOT / "recipes/fairseq" / f"{cpu_bench.BASE_RECIPES[0]}.yaml").read_text())
    max_sample = int(recipe["task"]["max_sample_size"])
    utterances = 1 if quick else int(recipe["dataset"]["max_tokens"]) // max_sample
    samples = 32000 if quick else max_sample
    interval = int(recipe["dataset"]["validate_interval_updates"])
    mi_seconds = 20.0 if quick else float(recipe["task"]["mi_max_seconds"])
    source, source_note = cpu_bench._speech_batch(corpus, utterances, samples)
    source = source.to(device)
    rows = []
    kind = "tiny" if quick else "base"
    for name, dtype in DTYPES.items():
        model = cpu_bench.build_wav2vec2(kind).to(device=device, dtype=dtype)
        optimizer, weights, clip_norm = cpu_bench.recipe_training(recipe, model)
        batch = source.to(dtype)

        def update(audio: torch.Tensor) -> float:
            return cpu_bench._wav2vec2_update(model, optimizer, audio, weights, clip_norm)[0]

        timed(lambda: update(batch), device)  # warm-up at the timed shape (kernels, allocator growth)
        times = [timed(lambda: update(batch), device)[0] for _ in range(repeats)]
        del model, optimizer, batch
        if device.type == "cuda":
            torch.cuda.empty_cache()
        evaluation = cpu_bench.bench_evaluation(heldout, kind, mi_seconds, 1, device, dtype, warmup=True)
        update_s = statistics.median(times)
        eval_s = evaluation["seconds"]["total"]
        rows.append({"model": f"wav2vec2 {kind}", "precision": f"{name} weights",
                     "batch": f"{utterances} x {samples} samples = {utterances * samples / 16000:.1f} s",
                     "update_s": update_s, "update_seconds": times, "evaluation_s": eval_s,
                     "evaluation_audio_s": evaluation["audio_seconds"], "validate_interval_updates": interval,
                     "overhead_percent": 100.0 * eval_s / (interval * update_s), "source": source_note})
    return rows


# ----------------------------------------------------------------------------------- 3. k-means
def plain_lloyd(x: torch.Tensor, k: int, iterations: int, seed: int) -> torch.Tensor:
    """The issue's reference: random initial centres, ``iterations`` Lloyd steps, nothing else."""
    generator = torch.Generator().manual_seed(seed)
    centers = x[torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)].clone()
    for _ in range(iterations):
        labels = torch.argmin((centers * centers).sum(1) - 2.0 * x @ centers.T, dim=1)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
    return centers


def gaussian_mixture_on(device: torch.device, n: int, d: int, components: int, seed: int, rank: int = 16) -> torch.Tensor:
    """The mixture model of the CPU table's data (``run.gaussian_mixture``: x = mu_c + 1.5 A_c z + 0.5 noise,
    Dirichlet(2) weights), drawn by torch on ``device``: the same distribution, other draws. numpy would
    spend ~1 min of the device's CPU time on the 1e6-row points while the GPU waits."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device)

    means = normal(components, d) * 2.0
    factors = normal(components, d, rank) / rank ** 0.5
    weights = torch.from_numpy(np.random.default_rng(seed).dirichlet(np.full(components, 2.0))).float().to(device)
    labels = torch.multinomial(weights, n, replacement=True, generator=generator)
    x = normal(n, d) * 0.5
    for c in range(components):
        rows = torch.nonzero(labels == c).squeeze(1)
        x[rows] += means[c] + normal(len(rows), rank) @ factors[c].T * 1.5
    return x


def bench_kmeans(grid: List[tuple], device: torch.device, levels: List[int]) -> List[dict]:
    from ssl_mi_callback.estimators import OnlineKMeans

    rows = []
    for n, d, k in grid:
        x = gaussian_mixture_on(device, n, d, components=k, seed=0)
        OnlineKMeans(k, seed=0, max_iter=1).fit(x[: max(4 * k, 2000)])  # warm-up
        reference_s, centers = timed(lambda: plain_lloyd(x, k, 20, seed=0), device)
        reference_s = min(reference_s, timed(lambda: plain_lloyd(x, k, 20, seed=0), device)[0])
        reference = cpu_bench.inertia_of(x, centers)
        curve = []
        for level in levels:
            seconds, model = timed(lambda: OnlineKMeans(k, seed=0, max_iter=level).fit(x), device)
            curve.append({"max_iter": level, "seconds": seconds, "inertia": cpu_bench.inertia_of(x, model.cluster_centers_),
                          "n_iter": model.n_iter_})
        reached = next((p for p in curve if p["inertia"] <= reference * 1.01), None)
        rows.append({"N": n, "D": d, "K": k, "plain_lloyd_20_s": reference_s, "plain_lloyd_inertia": reference,
                     "curve": curve, "ours_to_plain_inertia_s": reached["seconds"] if reached else None,
                     "ours_level": reached["max_iter"] if reached else None,
                     "ours_best_inertia_vs_plain": min(p["inertia"] for p in curve) / reference})
        del x
    return rows


# ----------------------------------------------------------------------------------- report
def target_rows(results: dict, link: str = "results_gpu.md") -> List[str]:
    """The GPU rows of the main report's target table (run.py), from a results_gpu.json (its table at
    ``link``, relative to the report): the evaluation's ratio to its forward (<= 1.25x), the hook's overhead
    at the base recipes' defaults and in the tiny recipe (<= 2%)."""
    where = f"GPU ({results['machine']['cuda'] or results['device']}, {results['started']} UTC)"
    rows = []
    for row in results.get("evaluation") or []:
        if "skipped" not in row:
            ratio = row["ratio_evaluate_to_forward"]
            rows.append(f"| full evaluation <= 1.25x two-view forward | {where}, {row['model'].split(' (')[0]}, "
                        f"{row['audio_seconds']:.0f} s of audio, {row['dtype']} weights{_graphs_note(row)} | {'met' if ratio <= 1.25 else 'missed'} "
                        f"({ratio:.2f}x; [{link}]({link})) |")
    for row in results.get("base_overhead") or []:
        if "skipped" not in row:
            rows.append(cpu_bench.base_recipes_target_row(f"{where}, {row['model']}, {row['precision']}", row["overhead_percent"],
                                                          row["validate_interval_updates"]))
    hook = results.get("hook")
    if hook and "skipped" not in hook:
        rows.append(cpu_bench.hook_target_row(f"{where}, tiny_wav2vec2 with common.fp16", hook["overhead_percent_eval_of_stock_train"]))
    return rows


def _graphs_note(row: dict) -> str:
    """', probe CUDA graphs on/off' for rows that recorded it (runs before the graphs had none)."""
    return "" if "probe_cuda_graphs" not in row else f", probe CUDA graphs {'on' if row['probe_cuda_graphs'] else 'off'}"


def _f(value, digits: int = 2) -> str:
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def write_report(results: dict, out: Path) -> None:
    m = results["machine"]
    lines = ["# Speed benchmark, GPU rows (issue 4)", "",
             f"Command: `{results['command']}`, {results['started']} to {results.get('finished', '(cut short)')} UTC.", "",
             f"Machine: {m['cuda'] or 'no GPU'} ({results['device']}), {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
             f"Python {m['python']}. Held-out audio: {results.get('heldout_note', '-')}.", ""]
    def table(title: str, intro: str, header: List[str], rows: List[dict], render: Callable[[dict], str]) -> None:
        lines.extend([title, "", intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)])
        lines.extend(f"| failed: {row['skipped'].replace('|', '/')} |" + " |" * (len(header) - 1) if "skipped" in row
                     else render(row) for row in rows)
        lines.append("")

    def evaluation_row(row: dict) -> str:
        s, ratio = row["seconds"], row["ratio_evaluate_to_forward"]
        graphs = "-" if "probe_cuda_graphs" not in row else ("on" if row["probe_cuda_graphs"] else "off")
        return (f"| {row['model'].split(' (')[0]} | {row['dtype']} | {graphs} | {row['audio_seconds']} | {row['frames_masked']} | {_f(s['load_heldout'])} | "
                f"{_f(s['forward'])} | {_f(s['kmeans'])} | {_f(s['probe'])} | {_f(s['estimators_other'])} | {_f(s['baselines'])} | "
                f"{_f(s['total'])} | **{ratio:.2f}** | {_f(row['first_call']['total'])} | {_f(row['peak_gpu_memory_mb'], 0)} | "
                f"{'met' if ratio <= 1.25 else 'missed'} |")

    if results.get("evaluation") is not None:
        table("## 1. One full evaluation, wav2vec 2.0 (random init; base size unless --quick)",
              "EvaluationConfig defaults, mask_length 10; median of the timed calls after a first (warm-up) call; seconds.",
              ["model", "weights", "probe CUDA graphs", "audio (s)", "masked frames", "load", "forward (2 views)", "k-means", "probe", "other", "baselines",
               "total", "total / forward", "first call total", "peak GPU memory (MB)", "target <= 1.25x"],
              results["evaluation"], evaluation_row)
        agreement = results.get("precision_agreement")
        if agreement:
            lines.extend([f"Selection value: float32 {agreement['float32']:.4f} bits (95% interval {agreement['float32_interval'][0]:.4f} "
                          f"to {agreement['float32_interval'][1]:.4f}), bfloat16 {agreement['bfloat16']:.4f} bits: difference "
                          f"{agreement['difference']:+.4f}, {'within' if agreement['within_interval'] else 'outside'} the float32 interval.", ""])
    if results.get("base_overhead") is not None:
        table("## 2. Hook overhead at the base recipes' defaults",
              "One update of wav2vec 2.0 base (Wav2Vec2Config defaults, random init; contrastive loss, backward, AdamW; the weights in "
              "the row's precision, as fairseq's common.bf16) on the recipe's per-GPU batch, median of the timed updates after a "
              "warm-up; one evaluation of the recipe's mi_max_seconds in the same precision; overhead = evaluation / "
              "(validate_interval_updates x update).",
              ["model", "precision", "batch", "update (s)", "evaluation (s)", "audio (s)", "validate_interval_updates", "overhead",
               "target <= 2%"],
              results["base_overhead"],
              lambda row: (f"| {row['model']} | {row['precision']} | {row['batch']} | {_f(row['update_s'], 3)} | {_f(row['evaluation_s'])} | "
                           f"{row['evaluation_audio_s']} | {row['validate_interval_updates']} | **{row['overhead_percent']:.4f}%** | "
                           f"{'met' if row['overhead_percent'] <= 2.0 else 'missed'} |"))

    def kmeans_row(row: dict) -> str:
        curve = "; ".join(f"{p['max_iter']}: {p['seconds']:.3f}, {p['inertia'] / row['plain_lloyd_inertia']:.3f}" for p in row["curve"])
        return (f"| {row['N']} | {row['D']} | {row['K']} | {_f(row['plain_lloyd_20_s'], 3)} | {_f(row['ours_to_plain_inertia_s'], 3)} | "
                f"{_f(row['ours_level'])} | {row['ours_best_inertia_vs_plain']:.3f} | {curve} |")

    if results.get("kmeans") is not None:
        table("## 3. k-means on the GPU",
              "Gaussian-mixture data of the CPU table's model, drawn by torch on the device. `plain Lloyd` = 20 iterations from random centres (the issue's reference); "
              "ours = `OnlineKMeans.fit` (k-means++ seeding on 10 000 rows, best of 3, then Lloyd) per `max_iter`; "
              "`ours to plain's inertia` = first max_iter within 1% of plain Lloyd's inertia.",
              ["N", "D", "K", "plain Lloyd, 20 it. (s)", "ours to plain's inertia (s)", "at max_iter", "ours: best inertia / plain's",
               "ours per max_iter (s, inertia / plain's)"],
              results["kmeans"], kmeans_row)
    hook = results.get("hook")
    if hook is not None:
        lines += ["## 4. The tiny fairseq recipe on the GPU with fp16 (common.fp16=true)", ""]
        if "skipped" in hook:
            lines.append(f"Failed: {hook['skipped']}")
        else:
            finite = all(math.isfinite(v) for v in hook["mi_bits"])
            lines += [f"{hook['evaluations_per_run']} evaluations in {hook['max_update']} updates; mi_bits of the history: "
                      f"{', '.join(f'{v:.4f}' for v in hook['mi_bits'])} ({'all finite' if finite else 'NOT all finite'}).", "",
                      "| run | fairseq 'done training in' (s) | process wall (s) | hook evaluation time (s) |", "|---|---|---|---|",
                      f"| stock | {_f(hook['train_stock_s'])} | {_f(hook['wall_stock_s'])} | - |",
                      f"| with hook | {_f(hook['train_with_hook_s'])} | {_f(hook['wall_with_hook_s'])} | {_f(hook['evaluation_seconds_per_run'])} |",
                      "", f"Overhead: {hook['overhead_percent_eval_of_stock_train']:.1f}% of the stock training time (the hook's own "
                      "evaluation time; the tiny recipe evaluates every 50 updates)."]
        lines.append("")
    failures = results.get("failures")
    if failures:
        lines += ["## Failures", ""] + [f"- {name}: {text}" for name, text in failures.items()] + [""]
    skipped = results.get("skipped_sections")
    if skipped:
        lines += [f"Not run (time budget): {', '.join(skipped)}.", ""]
    (out / "results_gpu.md").write_text("\n".join(lines))


# ----------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="generated-speech corpus folder (its *.tsv manifests)")
    parser.add_argument("--out", type=Path, required=True, help="where results_gpu.json / results_gpu.md go")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ssl_mi_gpu_bench"), help="held-out audio and training runs")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda; cpu runs the same code for a smoke test)")
    parser.add_argument("--eval-seconds", type=float, default=3600.0, help="held-out audio of section 1 (default 3600)")
    parser.add_argument("--repeats", type=int, default=2, help="timed evaluations and updates after the warm-up (default 2)")
    parser.add_argument("--sections", default="evaluation,base_overhead,kmeans,hook", help="comma-separated sections to run, in this order")
    parser.add_argument("--budget-s", type=float, default=420.0, help="a section is not started after this many seconds (default 420)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes (any device, about 2 min on a CPU)")
    parser.add_argument("--cuda-graphs", choices=tuple(cpu_bench.CUDA_GRAPH_SETTINGS), default="on",
                        help="the probe's CUDA graphs in section 1: on (the default, as the product runs), off, or both "
                             "(each precision without, then with them: the same-call comparison)")
    args = parser.parse_args(argv)

    from ssl_mi_callback.integrations.fairseq import compat

    compat.apply()
    # fairseq's hydra changes into its run folder: the paths the hook runs get must not be relative
    args.corpus, args.work, args.out = args.corpus.resolve(), args.work.resolve(), args.out.resolve()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU (use --device cpu for a smoke run)")
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": cpu_bench.machine(), "device": str(device), "quick": args.quick,
                     "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                     "command": "python -m benchmarks.speed.gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "failures": {}, "skipped_sections": []}

    def save() -> None:
        (args.out / "results_gpu.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        write_report(results, args.out)

    eval_seconds = 30.0 if args.quick else args.eval_seconds
    sections: Dict[str, Callable[[], object]] = {}

    def heldout() -> Path:
        if "heldout" not in results:
            manifest, results["heldout_note"] = heldout_of(args.corpus, args.work / "heldout", eval_seconds)
            results["heldout"] = str(manifest)
        return Path(results["heldout"])

    def evaluation() -> list:
        from ssl_mi_callback.estimators import cuda_graphs

        rows = []
        for name, dtype in DTYPES.items():
            for graphs in cpu_bench.CUDA_GRAPH_SETTINGS[args.cuda_graphs]:
                try:
                    with cuda_graphs.switched(graphs):
                        rows.append(cpu_bench.bench_evaluation(heldout(), "tiny" if args.quick else "base", eval_seconds,
                                                               args.repeats, device, dtype, warmup=True))
                except Exception as error:  # keep the other precision
                    rows.append({"dtype": name, "skipped": f"{type(error).__name__}: {error}"})
                    results["failures"][f"evaluation {name}"] = traceback.format_exc(limit=-8)
                # "on" only where graphs ran: a failed capture turns them off for the process
                rows[-1]["probe_cuda_graphs"] = graphs and device.type == "cuda" and cuda_graphs.failure() is None
                rows[-1]["cuda_graph_failure"] = cuda_graphs.failure()
                results["evaluation"] = rows  # saved as each run finishes
                save()
                print(f"[gpu] evaluation {name} graphs {'on' if graphs else 'off'}: "
                      f"{json.dumps(rows[-1].get('seconds', rows[-1]), default=str)[:300]}", flush=True)
        results["precision_agreement"] = precision_agreement([row for row in rows if row["probe_cuda_graphs"]] or rows)
        return rows

    sections["evaluation"] = evaluation
    sections["base_overhead"] = lambda: bench_base_overhead(args.corpus, heldout(), device, args.repeats, args.quick)
    grid = [(20000, 256, 50)] if args.quick else [(100000, 768, 50), (200000, 768, 50), (1000000, 768, 50),
                                                   (1000000, 768, 100), (1000000, 1024, 500)]
    sections["kmeans"] = lambda: bench_kmeans(grid, device, [1, 2, 4, 8] if args.quick else [1, 2, 4, 8, 16, 100])

    def hook() -> dict:
        overrides = [f"common.cpu={'false' if device.type == 'cuda' else 'true'}",
                     f"common.fp16={'true' if device.type == 'cuda' else 'false'}"]
        measured = cpu_bench.bench_hook(args.corpus, args.work, 1, 40 if args.quick else None, overrides)
        history = Path(measured["runs"]["with hook"][0]["log"]).parent / "ckpt" / "mi_history.jsonl"
        records = [json.loads(line) for line in history.read_text().splitlines()] if history.exists() else []
        measured["mi_bits"] = [r.get("metrics", {}).get("mi_bits", float("nan")) for r in records]
        measured["overrides"] = overrides
        return measured

    sections["hook"] = hook
    save()  # the machine and command, even if the first section is killed
    for name in filter(None, args.sections.split(",")):
        if name not in sections:
            parser.error(f"unknown section {name!r}; choose from {', '.join(sections)}")
        if time.perf_counter() - started > args.budget_s:
            results["skipped_sections"].append(name)
            continue
        section_started = time.perf_counter()
        try:
            results[name] = sections[name]()
        except Exception as error:  # report, do not lose the other sections
            results[name] = {"skipped": f"{type(error).__name__}: {error}"} if name == "hook" else [{"skipped": f"{type(error).__name__}: {error}"}]
            results["failures"][name] = traceback.format_exc(limit=-8)
        print(f"[gpu] {name} done in {time.perf_counter() - section_started:.0f} s", flush=True)
        save()
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    results["elapsed_s"] = time.perf_counter() - started
    save()
    print(f"wrote {args.out / 'results_gpu.md'} in {results['elapsed_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
