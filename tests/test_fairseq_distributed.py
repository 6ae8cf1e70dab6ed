"""Two-process fairseq training on CPU (torchrun, gloo): same MI on every rank, equal to one process."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import require
from fairseq_runs import FAST, train

pytestmark = pytest.mark.slow


def test_two_processes_agree_and_match_one_process(speech_corpus, tmp_path):
    require("fairseq")
    save_dir = tmp_path / "checkpoints"
    run = train("tiny_wav2vec2", speech_corpus, save_dir, ["optimization.max_update=100"], processes=2)
    assert run.returncode == 0, run.output[-4000:]
    history = run.history()
    assert [r["step"] for r in history] == [50, 100]  # one writer: no duplicated records
    for record in history:
        assert record["status"] == "ok"
        assert record["distributed"]["world_size"] == 2
        rank0, rank1 = record["distributed"]["rank_mi_bits"]
        assert rank0 == rank1 == record["metrics"]["mi_bits"]
    assert sorted(p.name for p in save_dir.glob("checkpoint_mi_best*")) == ["checkpoint_mi_best.json", "checkpoint_mi_best.pt"]

    # The same weights scored by one process with the same settings give the same value.
    from ssl_mi_callback.data import load_heldout
    from ssl_mi_callback.scoring import load_fairseq, score_checkpoint
    from ssl_mi_callback.evaluator import EvaluationConfig

    settings = dict(item.split("=", 1) for item in FAST)
    last = history[-1]
    config = EvaluationConfig.from_settings(last["settings"])
    subset = load_heldout(speech_corpus / "heldout.tsv", max_seconds=float(settings["task.mi_max_seconds"]),
                          max_utterance_seconds=15.0)
    assert subset.fingerprint() == last["subset"]["fingerprint"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the training processes ran with OMP_NUM_THREADS=1
    try:
        single = score_checkpoint(str(save_dir / "checkpoint_last.pt"), load_fairseq, subset, config)
    finally:
        torch.set_num_threads(threads)
    assert single["step"] == 100
    assert math.isclose(single["metrics"]["mi_bits"], last["metrics"]["mi_bits"], abs_tol=1e-4)

