"""Tests of checkpoint selection: best-so-far rules, resume, the history file and atomic export.

The crash tests run real subprocesses that are killed with SIGKILL at seeded random moments.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_mi_callback.selector import (
    CheckpointSelector,
    HistoryCorruptError,
    HistoryFile,
    SelectionConfig,
    SidecarMismatchError,
    export_atomically,
    read_sidecar,
    sidecar_path,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def record(step: int, score: Optional[float] = None, status: str = "ok", monitor: str = "mi_bits") -> dict:
    metrics = {} if score is None else {monitor: score}
    return {"step": step, "epoch": 1, "status": status, "error": None if status == "ok" else "probe diverged",
            "metrics": metrics, "subset": "fingerprint", "seconds": 1.0}


def observe_all(selector: CheckpointSelector, scores: List[Optional[float]]) -> list:
    return [selector.observe(record(step, score)) for step, score in enumerate(scores, start=1)]


def temp_files(directory: Path) -> List[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".export-tmp"))


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"monitor": ""}, "monitor must name a metric"),
        ({"mode": "maximize"}, "mode must be 'max' or 'min'"),
        ({"min_delta": -0.1}, "min_delta must be a finite number >= 0"),
        ({"min_delta": float("nan")}, "min_delta must be a finite number >= 0"),
        ({"patience": 0}, "patience must be None"),
        ({"patience": 2.5}, "patience must be None"),
    ],
)
def test_config_validation_names_the_field(changes, message):
    with pytest.raises(ValueError, match=message) as caught:
        CheckpointSelector(SelectionConfig(**changes))
    assert "\n" not in str(caught.value)


def test_every_config_field_has_help():
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(SelectionConfig))


# --- best-so-far ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, scores, best_step, best_score",
    [
        ("max", [0.1, 0.5, 0.3], 2, 0.5),
        ("min", [0.4, 0.2, 0.3], 2, 0.2),
        ("max", [0.5, 0.5, 0.2], 2, 0.5),  # a tie goes to the newer record
        ("min", [0.2, 0.3, 0.2], 3, 0.2),
    ],
)
def test_best_so_far_by_mode(mode, scores, best_step, best_score):
    selector = CheckpointSelector(SelectionConfig(mode=mode))
    observe_all(selector, scores)
    assert selector.best["step"] == best_step
    assert selector.best_score == best_score


def test_min_delta_must_be_exceeded():
    selector = CheckpointSelector(SelectionConfig(min_delta=0.25))
    decisions = observe_all(selector, [1.0, 1.25, 1.125, 1.5])  # binary-exact: 1.25 ties the margin
    assert [d.is_best for d in decisions] == [True, False, False, True]
    assert selector.best["step"] == 4
    assert decisions[3].previous_best_score == 1.0


@pytest.mark.parametrize(
    "bad_record",
    [
        record(2, 9.0, status="failed"),
        record(2, None),
        record(2, float("nan")),
        record(2, float("inf")),
        {**record(2), "metrics": {"mi_bits": "high"}},
        {**record(2), "metrics": None},
    ],
)
def test_unscored_records_are_kept_but_never_best(bad_record, tmp_path, caplog):
    selector = CheckpointSelector(SelectionConfig(), tmp_path / "history.jsonl")
    selector.observe(record(1, 0.5))
    decision = selector.observe(bad_record)
    assert not decision.is_best and decision.score is None
    assert (decision.best_step, decision.best_score, decision.evaluations_since_best) == (1, 0.5, 0)
    assert [r["step"] for r in selector.history()] == [1, 2]
    assert "evaluation at step 2 cannot become best" in caplog.text


def test_only_failures_leave_no_best():
    selector = CheckpointSelector(SelectionConfig())
    decision = selector.observe(record(1, None, status="failed"))
    assert selector.best is None and selector.best_score is None
    assert decision.best_step is None and not selector.should_stop


def test_patience_counts_scored_evaluations_without_improvement():
    selector = CheckpointSelector(SelectionConfig(patience=2))
    observe_all(selector, [1.0, 0.9])
    assert not selector.should_stop
    selector.observe(record(3, None, status="failed"))  # failures carry no evidence either way
    assert not selector.should_stop
    decision = selector.observe(record(4, 0.8))
    assert decision.evaluations_since_best == 2 and selector.should_stop
    selector.observe(record(5, 1.5))
    assert not selector.should_stop


scores_strategy = st.lists(
    st.one_of(st.none(), st.floats(-5, 5), st.just(float("nan"))), min_size=1, max_size=30
)


@settings(max_examples=150, deadline=None)
@given(scores=scores_strategy, mode=st.sampled_from(["max", "min"]))
def test_zero_min_delta_picks_the_newest_extreme(scores, mode):
    selector = CheckpointSelector(SelectionConfig(mode=mode))
    observe_all(selector, scores)
    scored = [(s, step) for step, s in enumerate(scores, start=1) if s is not None and math.isfinite(s)]
    if not scored:
        assert selector.best is None
        return
    extreme = max(s for s, _ in scored) if mode == "max" else min(s for s, _ in scored)
    assert selector.best_score == extreme
    assert selector.best["step"] == max(step for s, step in scored if s == extreme)


@settings(max_examples=150, deadline=None)
@given(scores=scores_strategy, min_delta=st.floats(0.01, 2))
def test_nothing_after_the_best_beats_it_by_more_than_min_delta(scores, min_delta):
    selector = CheckpointSelector(SelectionConfig(min_delta=min_delta))
    observe_all(selector, scores)
    later = [s for step, s in enumerate(scores, start=1)
             if selector.best and step > selector.best["step"] and s is not None and math.isfinite(s)]
    assert all(s - selector.best_score <= min_delta for s in later)
    assert selector.state_dict()["evaluations_since_best"] == len(later)


def test_steps_must_increase_and_records_must_be_well_formed():
    selector = CheckpointSelector(SelectionConfig())
    selector.observe(record(5, 1.0))
    with pytest.raises(ValueError, match="step 5 is not after the last observed step 5"):
        selector.observe(record(5, 1.0))
    with pytest.raises(ValueError, match="integer 'step'"):
        selector.observe({**record(6, 1.0), "step": "6"})
    with pytest.raises(ValueError, match="'status' must be 'ok' or 'failed'"):
        selector.observe({**record(6, 1.0), "status": "done"})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        selector.observe({**record(6, 1.0), "settings": object()})


def test_numpy_and_torch_scalars_are_stored_as_numbers(tmp_path):
    import numpy as np

    selector = CheckpointSelector(SelectionConfig(), tmp_path / "history.jsonl")
    selector.observe({**record(1), "step": np.int64(1), "metrics": {"mi_bits": torch.tensor(0.5)}})
    assert selector.best_score == 0.5
    assert selector.history()[0]["step"] == 1


def test_best_is_a_detached_copy():
    selector = CheckpointSelector(SelectionConfig())
    original = record(1, 1.0)
    selector.observe(original)
    original["metrics"]["mi_bits"] = -1.0
    selector.best["metrics"]["mi_bits"] = -2.0
    assert selector.best["metrics"]["mi_bits"] == 1.0


# --- state_dict and resume ------------------------------------------------------------------------


def test_state_dict_round_trip_through_json():
    config = SelectionConfig(monitor="mi_bits_l4", mode="min", min_delta=0.01, patience=3)
    selector = CheckpointSelector(config)
    for step, score in enumerate([0.5, 0.4, 0.45, None], start=1):
        selector.observe(record(step, score, monitor="mi_bits_l4"))
    state = json.loads(json.dumps(selector.state_dict()))
    restored = CheckpointSelector(config)
    restored.load_state_dict(state)
    assert restored.state_dict() == selector.state_dict()
    assert restored.best == selector.best and restored.best_score == 0.4
    decision = restored.observe(record(5, 0.41, monitor="mi_bits_l4"))
    assert decision.evaluations_since_best == 2 and decision.previous_best_score == 0.4


@pytest.mark.parametrize("field_name, value", [("monitor", "rankme"), ("mode", "min")])
def test_resume_refuses_another_monitor_or_mode(field_name, value):
    saved = CheckpointSelector(SelectionConfig())
    saved.observe(record(1, 1.0))
    other = CheckpointSelector(SelectionConfig(**{field_name: value}))
    with pytest.raises(ValueError, match=f"the checkpoint's selector used {field_name}=") as caught:
        other.load_state_dict(saved.state_dict())
    assert "\n" not in str(caught.value)


def test_resume_refuses_a_state_that_is_not_a_selector_state():
    with pytest.raises(ValueError, match="selector state lacks"):
        CheckpointSelector(SelectionConfig()).load_state_dict({"best": None})


def test_resume_truncates_history_written_after_the_checkpoint(tmp_path, caplog):
    path = tmp_path / "history.jsonl"
    first_run = CheckpointSelector(SelectionConfig(), path)
    for step in (1, 2, 3):
        first_run.observe(record(step, step / 10))
    checkpoint_state = json.loads(json.dumps(first_run.state_dict()))
    first_run.observe(record(4, 0.9))
    first_run.observe(record(5, 1.0))  # then the job is killed before the next checkpoint

    caplog.set_level(logging.INFO, logger="ssl_mi_callback")
    resumed = CheckpointSelector(SelectionConfig(), path)
    resumed.load_state_dict(checkpoint_state)
    assert "dropped 2 history records after step 3 (written after the checkpoint being resumed)" in caplog.text
    assert [r["step"] for r in resumed.history()] == [1, 2, 3]
    assert resumed.best["step"] == 3
    resumed.observe(record(4, 0.2))
    assert [r["step"] for r in HistoryFile(path).read()] == [1, 2, 3, 4]
    assert resumed.best["step"] == 3
    assert temp_files(tmp_path) == []


def test_resume_from_a_state_before_any_evaluation_empties_the_history(tmp_path):
    path = tmp_path / "history.jsonl"
    selector = CheckpointSelector(SelectionConfig(), path)
    empty_state = selector.state_dict()
    selector.observe(record(1, 1.0))
    resumed = CheckpointSelector(SelectionConfig(), path)
    resumed.load_state_dict(empty_state)
    assert resumed.history() == [] and resumed.best is None


def test_resume_warns_when_the_history_lacks_records_the_checkpoint_saw(tmp_path, caplog):
    selector = CheckpointSelector(SelectionConfig(), tmp_path / "old.jsonl")
    selector.observe(record(1, 1.0))
    resumed = CheckpointSelector(SelectionConfig(), tmp_path / "new.jsonl")
    resumed.load_state_dict(selector.state_dict())
    assert "new.jsonl is empty but the checkpoint saw evaluations through step 1" in caplog.text


def test_fresh_selector_refuses_to_write_over_an_existing_history(tmp_path):
    path = tmp_path / "history.jsonl"
    observe_all(CheckpointSelector(SelectionConfig(), path), [0.1, 0.2, 0.3])
    fresh = CheckpointSelector(SelectionConfig(), path)
    with pytest.raises(ValueError, match="already holds step 3 >= 2: resume with load_state_dict"):
        fresh.observe(record(2, 0.5))
    assert len(HistoryFile(path).read()) == 3


def test_non_writer_ranks_never_touch_files(tmp_path):
    path = tmp_path / "history.jsonl"
    HistoryFile(path).append(record(9, 1.0))
    before = path.read_bytes()
    other_rank = CheckpointSelector(SelectionConfig(), path, is_writer=False)
    state = other_rank.state_dict()
    decisions = observe_all(other_rank, [0.1, 0.3])
    other_rank.load_state_dict(state)
    assert decisions[1].is_best and path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["history.jsonl"]


# --- history file ---------------------------------------------------------------------------------


def test_history_appends_one_line_per_record(tmp_path):
    history = HistoryFile(tmp_path / "sub" / "history.jsonl")
    assert history.read() == []
    history.append(record(1, 0.5))
    history.append({**record(2), "error": "line one\nline two"})
    assert history.path.read_bytes().count(b"\n") == 2
    assert [r["step"] for r in history.read()] == [1, 2]


def test_torn_last_line_is_repaired_in_place(tmp_path, caplog):
    history = HistoryFile(tmp_path / "history.jsonl")
    history.append(record(1, 0.5))
    intact_size = history.path.stat().st_size
    with open(history.path, "ab") as handle:
        handle.write(b'{"step": 2, "status": "o')  # 24 bytes: a write killed midway
    assert [r["step"] for r in history.read(repair=False)] == [1]
    assert history.path.stat().st_size == intact_size + 24
    assert [r["step"] for r in history.read()] == [1]
    assert history.path.stat().st_size == intact_size
    assert "removed a torn last line (24 bytes)" in caplog.text


def test_append_after_a_torn_line_starts_on_a_fresh_line(tmp_path):
    history = HistoryFile(tmp_path / "history.jsonl")
    history.append(record(1, 0.5))
    with open(history.path, "ab") as handle:
        handle.write(b'{"step": 2')
    history.append(record(2, 0.6))
    assert [r["step"] for r in history.read()] == [1, 2]


@pytest.mark.parametrize("bad_line, message", [(b'{"step": 2,', "line 2 is not valid JSON"),
                                               (b"[1, 2]", "line 2 is a JSON list, not a record")])
def test_damage_in_the_middle_is_refused_with_the_line_number(tmp_path, bad_line, message):
    path = tmp_path / "history.jsonl"
    path.write_bytes(b'{"step": 1}\n' + bad_line + b'\n{"step": 3}\n')
    with pytest.raises(HistoryCorruptError, match=message) as caught:
        HistoryFile(path).read()
    assert "\n" not in str(caught.value)


def test_truncate_after_rewrites_only_when_something_is_dropped(tmp_path):
    history = HistoryFile(tmp_path / "history.jsonl")
    for step in range(1, 6):
        history.append(record(step, step / 10))
    inode = history.path.stat().st_ino
    assert history.truncate_after(5) == 0 and history.path.stat().st_ino == inode
    assert history.truncate_after(3) == 2
    assert [r["step"] for r in history.read()] == [1, 2, 3]
    assert temp_files(tmp_path) == []


# --- atomic export --------------------------------------------------------------------------------


def test_export_copies_a_file_and_writes_its_sidecar(tmp_path):
    source = tmp_path / "checkpoint_500.pt"
    source.write_bytes(os.urandom(300_000))
    dest = export_atomically(source, tmp_path / "best" / "checkpoint_mi_best.pt", {"step": 500, "mi_bits": 1.2})
    assert dest.read_bytes() == source.read_bytes()
    sidecar = read_sidecar(dest, verify=True)
    assert sidecar_path(dest).name == "checkpoint_mi_best.json"
    assert sidecar["file"] == dest.name and sidecar["bytes"] == 300_000
    assert sidecar["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert sidecar["step"] == 500 and sidecar["written_at"].endswith("+00:00")


def test_export_with_torch_save(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7}
    dest = export_atomically(lambda f: torch.save(state, f), tmp_path / "best.pt", {"step": 7})
    loaded = torch.load(dest, weights_only=True)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["step"] == 7
    assert read_sidecar(dest)["step"] == 7


def test_failed_write_keeps_the_previous_export(tmp_path):
    dest = export_atomically(lambda f: f.write(b"version 1"), tmp_path / "best.pt", {"step": 1})

    def failing_write(handle):
        handle.write(b"half of version 2")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export_atomically(failing_write, dest, {"step": 2})
    assert dest.read_bytes() == b"version 1" and read_sidecar(dest)["step"] == 1
    assert temp_files(tmp_path) == []


def test_leftover_temps_of_a_killed_writer_are_cleaned_and_nothing_else(tmp_path):
    ours = [".best.pt.0123456789ab.export-tmp", ".best.json.ba9876543210.export-tmp"]
    not_ours = [".best.pt.tmp", ".other.pt.0123456789ab.export-tmp", "best.pt.0123456789ab.export-tmp",
                ".best.pt.xyz.export-tmp"]
    for name in ours + not_ours:
        (tmp_path / name).write_bytes(b"partial")
    export_atomically(lambda f: f.write(b"new"), tmp_path / "best.pt", {})
    assert sorted(os.listdir(tmp_path)) == sorted(["best.pt", "best.json"] + not_ours)


@pytest.mark.parametrize(
    "source, sidecar, message",
    [
        ("missing.pt", {}, "is not an existing file"),
        ("dest", {}, "onto itself"),
        ("data.pt", {"bytes": 3}, "filled in by export_atomically"),
    ],
)
def test_export_refuses_bad_arguments(tmp_path, source, sidecar, message):
    dest = tmp_path / "best.pt"
    dest.write_bytes(b"old")
    (tmp_path / "data.pt").write_bytes(b"new")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        export_atomically(dest if source == "dest" else tmp_path / source, dest, sidecar)
    assert dest.read_bytes() == b"old"


def test_export_refuses_a_json_destination(tmp_path):
    with pytest.raises(ValueError, match="its sidecar would be the same file"):
        export_atomically(lambda f: f.write(b"{}"), tmp_path / "best.json", {})


def test_read_sidecar_detects_a_file_replaced_without_its_sidecar(tmp_path):
    dest = export_atomically(lambda f: f.write(b"version 1"), tmp_path / "best.pt", {})
    dest.write_bytes(b"version 22")
    with pytest.raises(SidecarMismatchError, match="says 9 bytes but best.pt has 10"):
        read_sidecar(dest)
    dest.write_bytes(b"version 2")
    read_sidecar(dest)
    with pytest.raises(SidecarMismatchError, match="another SHA-256"):
        read_sidecar(dest, verify=True)


# --- crash safety under SIGKILL -------------------------------------------------------------------

EXPORT_AND_APPEND_CHILD = r"""
import hashlib, random, sys
from pathlib import Path
from ssl_mi_callback.selector import HistoryFile, export_atomically

def say(*words):  # one write per line: print() writes each word apart when PYTHONUNBUFFERED is set
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()

workdir = Path(sys.argv[1])
history = HistoryFile(workdir / "history.jsonl")
records = history.read()
step = records[-1]["step"] + 1 if records else 0
say("ready")
while True:
    data = random.Random(step).randbytes(1_000_000 + (step * 389_111) % 3_000_000)
    say("begin", step, hashlib.sha256(data).hexdigest())
    export_atomically(lambda f: f.write(data), workdir / "best.pt", {"step": step})
    say("exported", step)
    history.append({"step": step, "status": "ok", "metrics": {"mi_bits": step / 100}, "pad": "x" * 4000})
    say("appended", step)
    step += 1
"""

TRUNCATE_CHILD = r"""
import sys
from pathlib import Path
from ssl_mi_callback.selector import HistoryFile

history = HistoryFile(Path(sys.argv[1]))
base = int(sys.argv[2])
print("ready", flush=True)
while True:
    for step in range(base + 1, base + 4):
        history.append({"step": step, "pad": "y" * 20_000})
    history.truncate_after(base)
"""


def run_and_kill(code: str, args: List[str], delay_s: float) -> List[List[str]]:
    """Start a child, wait for its 'ready' line, SIGKILL it after ``delay_s``; return its complete stdout lines,
    split (a line the kill cut short is dropped: each is written before the step it announces begins)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline().strip() == b"ready", "child failed to start"
        time.sleep(delay_s)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    lines = child.stdout.read().decode().split("\n")[:-1]  # the last is empty or cut short
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL, "child ended before it was killed"
    return [line.split() for line in lines]


EXPORT_TRIALS = 24
EXPORT_TRIALS_CAP = 200  # a slow disk exports less per kill: more trials until half of EXPORT_TRIALS exported


@pytest.mark.slow
def test_export_and_history_survive_sigkill_at_random_moments(tmp_path):
    rng = random.Random(1234)
    dest = tmp_path / "best.pt"
    history = HistoryFile(tmp_path / "history.jsonl")
    sha_of_step: Dict[int, str] = {}
    last_exported, last_appended, last_begun = -1, -1, -1
    outcomes: Dict[str, int] = {}
    for trial in itertools.count():
        if trial >= EXPORT_TRIALS and (last_exported >= EXPORT_TRIALS // 2 or trial >= EXPORT_TRIALS_CAP):
            break
        for words in run_and_kill(EXPORT_AND_APPEND_CHILD, [str(tmp_path)], rng.uniform(0.0, 0.35)):
            step = int(words[1])
            if words[0] == "begin":
                assert sha_of_step.setdefault(step, words[2]) == words[2]
                last_begun = step
            elif words[0] == "exported":
                last_exported = step
            else:
                last_appended = step
        torn = history.path.exists() and not history.path.read_bytes().endswith(b"\n")
        leftover_temps = temp_files(tmp_path)

        steps = [r["step"] for r in history.read()]
        assert steps == list(range(len(steps))), f"trial {trial}: history has gaps or duplicates"
        assert last_appended <= steps[-1] <= last_begun if steps else last_appended == -1, f"trial {trial}"

        possible = {sha_of_step[s] for s in (last_exported, last_begun) if s >= 0}
        if not dest.exists():
            assert last_exported == -1
            outcomes["killed before the first export"] = outcomes.get("killed before the first export", 0) + 1
            continue
        dest_sha = hashlib.sha256(dest.read_bytes()).hexdigest()
        assert dest_sha in possible, f"trial {trial}: destination is not a complete written version"
        sidecar = json.loads(sidecar_path(dest).read_text())
        assert sidecar["sha256"] == sha_of_step[sidecar["step"]] and sidecar["sha256"] in possible
        try:
            read_sidecar(dest, verify=True)
            sidecar_lags = False
        except SidecarMismatchError:
            sidecar_lags = True
            assert sidecar["step"] == last_exported and dest_sha == sha_of_step[last_begun], f"trial {trial}"

        if sidecar_lags:
            outcome = "between file rename and sidecar rename (sidecar one version behind)"
        elif leftover_temps:
            outcome = "mid-write (temp file left, destination intact)"
        elif torn:
            outcome = "mid-append (torn history line repaired)"
        else:
            outcome = "between writes"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    export_atomically(lambda f: f.write(b"final"), dest, {"step": -1})
    assert temp_files(tmp_path) == []
    print(f"\n{trial} SIGKILL trials, {last_begun + 1} exports begun; outcomes: {outcomes}")
    assert last_exported >= EXPORT_TRIALS // 2, "kills landed too early to exercise the export loop"


TRUNCATE_TRIALS = 12


def test_truncate_after_survives_sigkill_at_random_moments(tmp_path):
    rng = random.Random(99)
    history = HistoryFile(tmp_path / "history.jsonl")
    base = 99
    for step in range(base + 1):
        history.append({"step": step, "pad": "z" * 20_000})
    outcomes: Dict[str, int] = {}
    for trial in range(TRUNCATE_TRIALS):
        run_and_kill(TRUNCATE_CHILD, [str(history.path), str(base)], rng.uniform(0.0, 0.15))
        torn = not history.path.read_bytes().endswith(b"\n")
        outcome = "mid-rewrite (temp file left)" if temp_files(tmp_path) else "mid-append (torn line)" if torn else "between writes"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        steps = [r["step"] for r in history.read()]
        assert steps[: base + 1] == list(range(base + 1)), f"trial {trial}: committed records were lost"
        assert steps[base + 1:] == list(range(base + 1, len(steps))) and len(steps) <= base + 4, f"trial {trial}"
        history.truncate_after(base)
        assert temp_files(tmp_path) == []
    print(f"\n{TRUNCATE_TRIALS} SIGKILL trials of append + truncate_after; outcomes: {outcomes}")
