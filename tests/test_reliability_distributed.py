"""Distributed edge cases with real gloo processes (CPU): uneven shards, a rank with no held-out
batch, a failure on one rank (in the feature stage and in the estimator stage), and only rank 0
writing -- at the evaluator level (torch.multiprocessing + gloo, like tests/test_evaluator.py, under a
deadline so a rank left waiting in a collective fails the test instead of hanging it) and in a real
two-process fairseq run (torchrun)."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess

import numpy as np
import pytest
import torch

from conftest import require
from gloo_workers import run_in_gloo_processes

CASES = {
    # 9 held-out utterances cropped to whole seconds -> 5 batches: rank 0 runs 3, rank 1 runs 2
    "uneven": dict(load={}, config=dict(batch_seconds=4.0, length_quantum_seconds=1.0), batches=5),
    # every utterance cropped to 0.9 s -> one batch: rank 1 has nothing to run
    "empty_rank": dict(load=dict(max_utterance_seconds=0.9), config=dict(batch_seconds=64.0), batches=1),
}


# rank 1's estimator stage asks k-means for more clusters than the fit part has frames: a real
# EstimatorInputError raised by the real estimator after the features were gathered, on rank 1 only
# (rank 0 scores the same features with 8 clusters and reaches the collective that follows)
ESTIMATOR_FAILS_ON_RANK_1 = 100_000
GLOO_DEADLINE_SECONDS = 300


def _evaluator(heldout, case, rank=0, world_size=1, clusters=8):
    from ssl_mi_callback.data import load_heldout
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter

    settings = CASES[case]
    config = EvaluationConfig(clusters=clusters, bootstrap=50, mask_length=5, **settings["config"])
    subset = load_heldout(heldout, **settings["load"])
    return Evaluator(config, subset, FairseqMaskedPredictionAdapter(), rank=rank, world_size=world_size)


def _worker(rank, world_size, heldout, out_dir):
    from test_evaluator import tiny_wav2vec2

    from ssl_mi_callback.callback import MICallback
    from ssl_mi_callback.selector import CheckpointSelector, SelectionConfig

    model = tiny_wav2vec2()
    results = {}
    # the failures come first: the cases after them prove that both ranks left them in step
    for case in ["estimator_fails_on_rank_1", "nan_on_rank_1", *CASES]:
        clusters = ESTIMATOR_FAILS_ON_RANK_1 if case == "estimator_fails_on_rank_1" and rank == 1 else 8
        evaluator = _evaluator(heldout, case if case in CASES else "uneven", rank, world_size, clusters)
        results[f"{case}_local_batches"] = len(evaluator.batches[rank::world_size])
        if case == "nan_on_rank_1" and rank == 1:
            evaluator.batches[1].utterances[0].waveform[:] = np.nan  # rank 1's first batch
        selector = CheckpointSelector(SelectionConfig(), history_path=f"{out_dir}/{case}.jsonl", is_writer=rank == 0)
        record = MICallback(evaluator, selector).evaluate(model, step=10)
        results[case] = {key: record.get(key) for key in ("status", "error", "metrics", "distributed")}
    with open(f"{out_dir}/rank{rank}.json", "w") as handle:
        json.dump(results, handle)


@pytest.fixture(scope="module")
def heldout(tiny_corpus):
    require("fairseq")
    return str(tiny_corpus / "heldout.tsv")


def test_uneven_shards_empty_rank_and_one_failing_rank(heldout, tmp_path):
    run_in_gloo_processes(_worker, (heldout, str(tmp_path)), deadline_seconds=GLOO_DEADLINE_SECONDS)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    from test_evaluator import tiny_wav2vec2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for case, settings in CASES.items():
            single = _evaluator(heldout, case)
            assert len(single.batches) == settings["batches"]
            expected = single.evaluate(tiny_wav2vec2())["metrics"]
            assert [rank[f"{case}_local_batches"] for rank in ranks] == [(settings["batches"] + 1) // 2, settings["batches"] // 2]
            for rank in ranks:
                assert rank[case]["status"] == "ok"
                assert rank[case]["metrics"] == expected, case  # world size 2 == world size 1, every metric
                assert rank[case]["distributed"] == {"world_size": 2, "rank_mi_bits": [expected["mi_bits"]] * 2}
            # one writer: exactly one history line although both ranks observed the record
            assert [json.loads(line)["step"] for line in (tmp_path / f"{case}.jsonl").read_text().splitlines()] == [10]
    finally:
        torch.set_num_threads(threads)

    # NaN audio in rank 1's shard: both ranks return (no hang) and record the same failure, naming rank 1
    for rank in ranks:
        failed = rank["nan_on_rank_1"]
        assert failed["status"] == "failed" and failed["metrics"] == {}
        assert "rank 1: ValueError: non-finite features" in failed["error"], failed["error"]
    history = [json.loads(line) for line in (tmp_path / "nan_on_rank_1.jsonl").read_text().splitlines()]
    assert [(r["step"], r["status"]) for r in history] == [(10, "failed")]

    # the estimator stage fails on rank 1 only, after the features were gathered: rank 0 finished its
    # estimate and waits in the collective that agrees on the value; it gets rank 1's error there, so
    # both ranks record the same failure (no hang: the deadline above), and the ok cases that ran after
    # it on the same process group prove both ranks left it in step
    assert ranks[0]["estimator_fails_on_rank_1"] == ranks[1]["estimator_fails_on_rank_1"]
    failed = ranks[0]["estimator_fails_on_rank_1"]
    assert failed["status"] == "failed" and failed["metrics"] == {}
    assert re.fullmatch(
        rf"EvaluationError: rank 1: EstimatorInputError: the fit part has \d+ frames, fewer than "
        rf"clusters={ESTIMATOR_FAILS_ON_RANK_1}", failed["error"]), failed["error"]
    history = [json.loads(line) for line in (tmp_path / "estimator_fails_on_rank_1.jsonl").read_text().splitlines()]
    assert [(r["step"], r["status"], r["error"]) for r in history] == [(10, "failed", failed["error"])]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{case}.jsonl" for case in [*CASES, "nan_on_rank_1", "estimator_fails_on_rank_1"]] + ["rank0.json", "rank1.json"])


@pytest.mark.slow
def test_two_process_training_with_an_empty_rank_writes_only_on_rank_0(speech_corpus, tmp_path):
    """torchrun, 2 gloo processes; every held-out utterance cropped to 1 s -> one batch, so rank 1
    extracts nothing. Every write of the hook (history append / rewrite, export) is traced by rank."""
    require("fairseq")
    from fairseq_runs import FAST, RECIPES, ROOT, TORCHRUN

    from ssl_mi_callback.data import load_heldout, plan_batches

    settings = ["task.mi_max_utterance_seconds=1.0", "task.mi_max_seconds=24", "task.mi_batch_seconds=64"]
    subset = load_heldout(speech_corpus / "heldout.tsv", max_seconds=24, max_utterance_seconds=1.0)
    assert len(plan_batches(subset.utterances, batch_seconds=64)) == 1  # precondition: rank 1 gets no batch
    save_dir = tmp_path / "checkpoints"
    command = [
        *TORCHRUN, "--nproc_per_node", "2", "--master_port", str(29400 + os.getpid() % 90),
        str(ROOT / "benchmarks" / "reliability" / "chaos_launcher.py"),
        "--config-dir", str(RECIPES), "--config-name", "tiny_wav2vec2", f"task.data={speech_corpus}",
        f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={save_dir / 'hydra'}",
        *[o for o in FAST if not o.startswith("task.mi_max_seconds")], *settings,
        "optimization.max_update=100", "distributed_training.distributed_world_size=2",
        "distributed_training.distributed_backend=gloo", "distributed_training.ddp_backend=legacy_ddp",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "CHAOS_TRACE_WRITES": "1"}
    run = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-4000:]
    writes = re.findall(r"@@write (\S+) rank=(\d+)", run.stdout)
    assert writes and {rank for _, rank in writes} == {"0"}, writes
    assert ("history-append", "0") in writes and ("export", "0") in writes
    history = [json.loads(line) for line in (save_dir / "mi_history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [50, 100]
    for record in history:
        assert record["status"] == "ok" and record["subset"]["utterances"] == len(subset.utterances)
        assert record["distributed"]["rank_mi_bits"] == [record["metrics"]["mi_bits"]] * 2
        assert math.isfinite(record["metrics"]["mi_bits"])
    assert sorted(p.name for p in save_dir.glob("checkpoint_mi_best*")) == ["checkpoint_mi_best.json", "checkpoint_mi_best.pt"]

    # one process scoring the same weights with the same settings gets the same value
    from ssl_mi_callback.evaluator import EvaluationConfig
    from ssl_mi_callback.scoring import load_fairseq, score_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = score_checkpoint(str(save_dir / "checkpoint_last.pt"), load_fairseq, subset, EvaluationConfig.from_settings(history[-1]["settings"]))
    finally:
        torch.set_num_threads(threads)
    assert single["step"] == 100
    assert math.isclose(single["metrics"]["mi_bits"], history[-1]["metrics"]["mi_bits"], abs_tol=1e-4)
