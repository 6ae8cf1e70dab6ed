"""The linear probe's work per fit, counted: the tensor operations it dispatches (ATen dispatches on the CPU, a
proxy for its GPU kernel launches, which likely set its pace there: benchmarks/speed/gpu_probe_lbfgs/notes.md),
its matrix products and its time (CPU by default; ``--device cuda`` on a GPU, where ``--cuda-graphs both`` fits
each input without and with the probe's CUDA graphs), on the probe inputs of real evaluations.

    .venv/bin/python -m benchmarks.speed.probe_ops --corpus runs/bench_speed/corpus --inputs /tmp/probe_inputs.pt

The first run captures the ``LinearProbe.fit`` inputs of one evaluation each of a random-init wav2vec 2.0
tiny (300 s of held-out audio asked) and base (60 s) model, as section 2 of the speed benchmark, into
``--inputs``; later runs reuse them, so another version of the estimators can be counted on the same inputs
(``--estimators OTHER_CHECKOUT``, e.g. a ``git worktree`` of an older commit). One torch thread; times are
medians of ``--repeats``.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path
from typing import List

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _OperationCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched inside the ``with`` block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def capture_inputs(corpus: Path, path: Path) -> List[tuple]:
    """(x, y, groups, n_classes, seed) of every LinearProbe.fit in one tiny and one base evaluation."""
    from benchmarks.speed.run import build_wav2vec2, section2_evaluator
    from ssl_mi_callback.data import load_heldout
    from ssl_mi_callback.estimators import probes

    captured: List[tuple] = []
    fit = probes.LinearProbe.fit

    def capturing_fit(self, x, y, groups):
        captured.append((torch.as_tensor(x).clone(), torch.as_tensor(y).clone(), torch.as_tensor(groups).clone(),
                         self.n_classes, self.seed))
        return fit(self, x, y, groups)

    probes.LinearProbe.fit = capturing_fit
    try:
        torch.manual_seed(0)
        for kind, seconds in (("tiny", 300.0), ("base", 60.0)):
            subset = load_heldout(corpus / "heldout.tsv", max_seconds=seconds, max_utterance_seconds=15.0)
            section2_evaluator(kind, subset).evaluate(build_wav2vec2(kind))
    finally:
        probes.LinearProbe.fit = fit
    torch.save(captured, path)
    return captured


def count_fit(inputs: tuple, repeats: int, device: str = "cpu", cuda_graphs: bool = True) -> dict:
    """One input's fit: the operations dispatched from the host (on a GPU, a replayed CUDA graph's kernels
    are not among them) and the median time of ``repeats`` more fits (the GPU synchronised around each)."""
    from ssl_mi_callback.estimators import LinearProbe, cuda_graphs as graphs

    x, y, groups, n_classes, seed = (item.to(device) if torch.is_tensor(item) else item for item in inputs)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    with graphs.switched(cuda_graphs):
        with _OperationCounter() as counter:
            probe = LinearProbe(n_classes, seed=seed).fit(x, y, groups)
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            LinearProbe(n_classes, seed=seed).fit(x, y, groups)
            sync()
            times.append(time.perf_counter() - start)
    return {
        "device": str(device),
        "cuda_graphs": bool(cuda_graphs and torch.device(device).type == "cuda" and graphs.failure() is None),
        "cuda_graph_failure": graphs.failure(),
        "frames_x_dims": list(x.shape),
        "operations": sum(counter.counts.values()),
        "matrix_products": counter.counts["addmm"] + counter.counts["mm"],
        "seconds": statistics.median(times),
        "weight_decay": probe.weight_decay_,
        "cv_bits": [round(value, 5) for value in probe.cv_bits_],
        "refit_iterations": probe.n_iter_,
    }


def main() -> None:
    from benchmarks.speed.run import CUDA_GRAPH_SETTINGS  # no ssl_mi_callback import: --estimators still applies

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("runs/bench_speed/corpus"),
                        help="a generated corpus (python -m ssl_mi_callback.corpus) with heldout.tsv")
    parser.add_argument("--inputs", type=Path, required=True, help="probe inputs: read if present, else captured here")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per input (median)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--estimators", type=Path,
                        help="a checkout whose ssl_mi_callback package is counted instead of this one's")
    parser.add_argument("--device", default="cpu", help="where the fits run (default cpu; cuda times them on a GPU)")
    parser.add_argument("--cuda-graphs", choices=tuple(CUDA_GRAPH_SETTINGS), default="on",
                        help="the probe's CUDA graphs on a GPU: on (the default), off, or both, one after the other per input")
    args = parser.parse_args()
    if args.estimators is not None:
        sys.path.insert(0, str(args.estimators.resolve()))
    import ssl_mi_callback

    print(f"counting {Path(ssl_mi_callback.__file__).parent}", flush=True)
    torch.set_num_threads(1)
    inputs = torch.load(args.inputs) if args.inputs.is_file() else capture_inputs(args.corpus, args.inputs)
    rows = [count_fit(item, args.repeats, args.device, graphs) for item in inputs
            for graphs in CUDA_GRAPH_SETTINGS[args.cuda_graphs]]
    print("| frames x dims | device | CUDA graphs | operations from the host | matrix products | seconds (torch on 1 CPU thread) | chosen wd | "
          "refit iterations | CV curve (bits) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['frames_x_dims'][0]} x {row['frames_x_dims'][1]} | {row['device']} | {'on' if row['cuda_graphs'] else 'off'} | "
              f"{row['operations']} | {row['matrix_products']} | {row['seconds']:.3f} | {row['weight_decay']:.3g} | "
              f"{row['refit_iterations']} | {row['cv_bits']} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
