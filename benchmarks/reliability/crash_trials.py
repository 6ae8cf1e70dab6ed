"""Crash safety on real training: SIGKILL tiny wav2vec 2.0 pretraining at seeded random moments.

Each *chain* starts a fresh run of ``recipes/fairseq/tiny_wav2vec2.yaml`` (validation + MI every
``--interval`` updates) through ``chaos_launcher.py`` (the product unchanged, its file writes
slowed and announced), kills the whole process group with SIGKILL in one of the phases below,
checks what is on disk, and starts the same command again (fairseq resumes from checkpoint_last.pt),
which is the next trial. A chain ends with a run that is allowed to finish.

Phases (the kill lands ``uniform(0, window)`` seconds after the trigger; ``@@`` markers come from
``chaos_launcher.py``):
  startup         0-14 s after the process starts (imports, held-out loading, resume, first updates)
  training        0-3 s after a training log line
  evaluation      0-0.5 s into an MI evaluation (``@@eval``)
  history-write   while a history line is being written (``@@history-write``: torn lines)
  export          at one of five seeded steps of an export of a new best: writing the file, file
                  staged, file and sidecar staged, file renamed but not its sidecar, both renamed
  after-export    0-0.3 s after an export: fairseq's validation loss and checkpoint save
  resume-rewrite  while the history is cut back at resume (its atomic rewrite)
Most kills wait for the run's first checkpoint save, so that the chain moves on. A trigger that does
not come (no new best, so no export; nothing to cut back) falls back to the next evaluation and the
trial is recorded under the phase it really hit.

Checks after every kill (any failure is counted and printed; ``--strict`` exits non-zero):
  * checkpoint_mi_best.pt, if present, loads with the weights-only loader, holds weights that an
    evaluation of its update scored (weight hash), that update was a new best, and its sidecar
    either verifies (SHA-256) or raises SidecarMismatchError (counted as *detected*);
  * mi_history.jsonl reads (a torn last line is repaired and counted), steps increase without gap
    or duplicate, and every evaluation the log printed ("MI at step N") is in it;
  * the next run announces the best-so-far that the resumed checkpoint holds (= the best of the
    history up to that checkpoint) and cuts the history back to exactly those records;
  * the finishing run exits 0, its history has no gap or duplicate, and the exported best is the
    final best-so-far (fairseq's checkpoint_best.pt holds the same weights).

Run (about 20 s per trial on 2 CPU cores; the table goes to stdout and --out):
    .venv/bin/python benchmarks/reliability/crash_trials.py --trials 27 --seed 0 --out crash_trials.json
It generates its own speech corpus unless --corpus DIR is given.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().parent / "chaos_launcher.py"
PHASES = ("startup", "training", "evaluation", "history-write", "export", "after-export", "resume-rewrite")
CYCLE = PHASES + ("history-write", "export")  # the two windows the issue names get twice the trials
PAUSE = 0.08  # CHAOS_SLOW_IO for the child: seconds added after each write step


EXPORT_STEPS = (  # (label, marker after which the kill lands, how many such markers since @@export-begin)
    ("writing the file", "@@export-begin", 1),
    ("file staged", "@@export-io fsync", 1),
    ("file and sidecar staged", "@@export-io fsync", 2),
    ("file renamed, sidecar not yet", "@@export-io replaced checkpoint_mi_best.pt", 1),
    ("both renamed", "@@export-io replaced checkpoint_mi_best.json", 1),
)


class Trigger:
    """When to kill in a phase: ``fire(line)`` returns (label, max delay) once the moment has come."""

    def __init__(self, phase: Optional[str], rng: random.Random) -> None:
        """``phase`` is one of PHASES; ``export=<i>`` picks EXPORT_STEPS[i] instead of a seeded one."""
        self.evaluations, self.export_markers, self.export_step = 0, None, None
        if phase is not None and phase.startswith("export"):
            name, _, step = phase.partition("=")
            self.export_step = EXPORT_STEPS[int(step)] if step else rng.choice(EXPORT_STEPS)
            phase = name
        self.phase = phase
        # Mostly wait for this run's first checkpoint save before arming, so that the chain moves on
        # and most kills find an earlier best (and its export) on disk; sometimes arm at once.
        self.armed = phase in (None, "startup", "resume-rewrite") or rng.random() < 0.25

    def fire(self, line: str) -> Optional[tuple]:
        phase = self.phase
        if not self.armed:
            self.armed = "Saved checkpoint" in line
            return None
        if line.startswith("@@eval"):
            self.evaluations += 1
        if phase == "training" and "train_inner" in line:
            return phase, 3.0
        if phase == "evaluation" and line.startswith("@@eval"):
            return phase, 0.5
        if phase == "history-write" and line.startswith("@@history-write"):
            return phase, 1.5 * PAUSE  # the line goes out in 4 chunks over 2 * PAUSE
        if phase == "after-export" and line.startswith("@@export-end"):
            return phase, 0.3  # validation loss, then fairseq saves checkpoint_<e>_<u>.pt, _best, _last
        if phase == "resume-rewrite" and line.startswith("@@export-io") and not self.evaluations:
            return phase, 0.8 * PAUSE  # the history rewrite at resume (temp staged, renamed, ...)
        if phase == "export":
            label, marker, count = self.export_step
            if line.startswith("@@export-begin"):
                self.export_markers = collections.Counter()
            if self.export_markers is not None and line.startswith(marker):
                self.export_markers[marker] += 1
                if self.export_markers[marker] == count:
                    return f"export: {label}", (0.03 if marker == "@@export-begin" else 0.8 * PAUSE)
        if line.startswith("@@eval") and (phase == "resume-rewrite" or (
                phase in ("export", "after-export") and self.evaluations > 3)):
            return "evaluation", 0.5  # the trigger did not come (nothing to cut back / no new best)
        return None


@dataclass
class Incarnation:
    lines: List[str] = field(default_factory=list)
    returncode: Optional[int] = None
    killed: bool = False
    phase_hit: str = ""
    seconds: float = 0.0
    delay: float = 0.0

    def hook_started(self) -> Optional[bool]:
        """True once fairseq logged the task (the hook's start-up, resume included, is done); None if
        the kill came while the hook was starting (its files may or may not have been touched)."""
        if any("] - task: " in line for line in self.lines):
            return True
        return None if any("MI held-out subset" in line for line in self.lines) else False

    def completed_export(self) -> Optional[int]:
        """The update of the last new best whose export returned in this run, else None."""
        best, done = None, None
        for line in self.lines:
            m = re.search(r"MI at step (\d+): .*\[new best\]", line)
            if m:
                best = int(m.group(1))
            elif line.startswith("@@export-end"):
                done = best
        return done

    def printed_steps(self) -> List[int]:
        return [int(m.group(1)) for line in self.lines if (m := re.search(r"MI at step (\d+): ", line))]

    def new_best_steps(self) -> List[int]:
        return [int(m.group(1)) for line in self.lines if (m := re.search(r"MI at step (\d+): .*\[new best\]", line))]

    def eval_hashes(self) -> Dict[int, str]:
        return {int(w[1]): w[2] for line in self.lines if line.startswith("@@eval ") and len(w := line.split()) == 3}

    def resumed(self) -> Optional[tuple]:
        """(best score, best update) or ('none', None) from the hook's resume line; None if absent."""
        for line in self.lines:
            m = re.search(r"MI hook resumed from .*: best (?:(-?[0-9.]+) bits at update (\d+)|none yet)", line)
            if m:
                return ("none", None) if m.group(1) is None else (float(m.group(1)), int(m.group(2)))
        return None


def _command(corpus: Path, save_dir: Path, max_update: int, interval: int) -> List[str]:
    return [
        sys.executable, str(CHILD), "--config-dir", str(ROOT / "recipes" / "fairseq"), "--config-name", "tiny_wav2vec2",
        f"task.data={corpus}", f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={save_dir / 'hydra'}",
        "task.mi_max_seconds=60", "task.mi_clusters=16", "task.mi_bootstrap=50", "task.mi_layers=-1",
        f"optimization.max_update={max_update}", f"checkpoint.save_interval_updates={interval}",
        f"dataset.validate_interval_updates={interval}",
    ]


def run_once(command: List[str], phase: Optional[str], rng: random.Random, timeout: float = 150.0) -> Incarnation:
    """Run ``command``; with a phase, SIGKILL its process group in that phase. Returns its output lines."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "CHAOS_SLOW_IO": str(PAUSE)}
    started = time.monotonic()
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def pump() -> None:
        for line in child.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    result = Incarnation()
    trigger = Trigger(phase, rng)
    kill_at: Optional[float] = None
    if phase == "startup":
        result.delay = rng.uniform(0.0, 14.0)  # imports, held-out loading, resume, first updates
        kill_at, result.phase_hit = started + result.delay, phase
    done = False
    while not done:
        now = time.monotonic()
        if kill_at is not None and now >= kill_at:
            os.killpg(child.pid, signal.SIGKILL)
            result.killed = True
            kill_at = None
        if now - started > timeout and not result.killed:
            os.killpg(child.pid, signal.SIGKILL)
            result.phase_hit = result.phase_hit or "timeout"
            result.killed = True
        wait = 0.2 if kill_at is None else max(0.0, min(0.2, kill_at - now))
        try:
            line = lines.get(timeout=wait)
        except queue.Empty:
            continue
        if line is None:
            done = True
            continue
        result.lines.append(line)
        if result.killed or kill_at is not None or phase is None or phase == "startup":
            continue
        fired = trigger.fire(line)
        if fired:
            result.phase_hit, window = fired
            result.delay = rng.uniform(0.0, window)
            kill_at = time.monotonic() + result.delay
    child.wait()
    result.returncode = child.returncode
    result.seconds = time.monotonic() - started
    return result


# ----------------------------------------------------------------------------------------- checks

def _safe_load(path: Path) -> dict:
    import ssl_mi_callback.integrations.fairseq  # noqa: F401  (compat + allowlist)
    from ssl_mi_callback.integrations.fairseq.safe_load import load_checkpoint

    return load_checkpoint(path)


def _weights_sha256(state_dict) -> str:
    sys.path.insert(0, str(CHILD.parent))
    from chaos_launcher import weights_sha256

    return weights_sha256(state_dict)


def best_of(records: List[dict]) -> Optional[tuple]:
    """(score, step) of the best ok record: max mi_bits, ties to the newer one (fairseq's rule)."""
    best = None
    for record in records:
        score = record.get("metrics", {}).get("mi_bits") if record.get("status") == "ok" else None
        if score is not None and (best is None or score >= best[0]):
            best = (score, record["step"])
    return best


@dataclass
class ChainState:
    save_dir: Path
    interval: int
    eval_hashes: Dict[int, Set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    new_best_steps: Set[int] = field(default_factory=set)


def inspect_after_kill(state: ChainState, run: Incarnation) -> dict:
    """What a kill left on disk, and every violation of the guarantees (``problems``)."""
    from ssl_mi_callback.selection import HistoryFile, SidecarMismatchError, read_sidecar

    save_dir, problems = state.save_dir, []
    for update, sha in run.eval_hashes().items():
        state.eval_hashes[update].add(sha)
    state.new_best_steps.update(run.new_best_steps())
    out: dict = {"phase": run.phase_hit, "killed": run.killed, "seconds": round(run.seconds, 1),
                 "delay": round(run.delay, 3)}

    history_path = save_dir / "mi_history.jsonl"
    raw = history_path.read_bytes() if history_path.exists() else b""
    out["history_torn_repaired"] = bool(raw) and not raw.endswith(b"\n")
    try:
        records = HistoryFile(history_path).read()
    except Exception as error:  # noqa: BLE001
        problems.append(f"history unreadable: {error}")
        records = []
    steps = [r["step"] for r in records]
    out["history_steps"] = steps
    if steps != [state.interval * (i + 1) for i in range(len(steps))]:
        problems.append(f"history steps have a gap or duplicate: {steps}")
    lost = sorted(set(run.printed_steps()) - set(steps))
    out["evaluations_printed"] = len(run.printed_steps())
    if lost:
        problems.append(f"evaluations printed but missing from the history: {lost}")

    export = save_dir / "checkpoint_mi_best.pt"
    out["temp_files_left"] = sorted(p.name for p in save_dir.glob(".*.export-tmp"))
    out["export"] = "absent"
    if export.exists():
        try:
            exported = _safe_load(export)
        except Exception as error:  # noqa: BLE001
            problems.append(f"exported checkpoint does not load: {error}")
        else:
            update = exported["extra_state"]["ssl_mi"]["update"]
            sha = _weights_sha256(exported["model"])
            out["export_update"] = update
            if sha not in state.eval_hashes.get(update, set()):
                problems.append(f"exported weights (update {update}) are not weights any evaluation scored")
            if update not in state.new_best_steps:
                problems.append(f"exported update {update} was never announced as a new best")
            try:
                sidecar = read_sidecar(export, verify=True)
            except SidecarMismatchError:
                out["export"] = "sidecar mismatch detected"
            except Exception as error:  # noqa: BLE001
                problems.append(f"sidecar unreadable: {error}")
            else:
                out["export"] = "complete, sidecar verified"
                if sidecar["update"] != update:
                    problems.append(f"sidecar names update {sidecar['update']} but the file holds {update}")

    last = save_dir / "checkpoint_last.pt"
    out["checkpoint_last_update"] = None
    if last.exists():
        try:
            state_last = _safe_load(last)
        except Exception as error:  # noqa: BLE001
            out["checkpoint_last"] = f"unreadable ({type(error).__name__})"
        else:
            out["checkpoint_last"] = "ok"
            out["checkpoint_last_update"] = state_last["optimizer_history"][-1]["num_updates"]
            best = (state_last.get("task_state") or {}).get("ssl_mi", {}).get("selector", {}).get("best")
            out["checkpoint_last_best"] = None if best is None else [best["metrics"]["mi_bits"], best["step"]]
    else:
        out["checkpoint_last"] = "absent"
    out["records_after_checkpoint"] = [s for s in steps if out["checkpoint_last_update"] is None or s > out["checkpoint_last_update"]]
    out["export_ahead_of_checkpoint"] = out.get("export_update") is not None and (
        out["checkpoint_last_update"] is None or out["export_update"] > out["checkpoint_last_update"])
    out["export_resynced_at_start"] = sum("MI hook:" in line and "re-exported update" in line for line in run.lines)
    out["moved_aside_at_fresh_start"] = sum("MI hook: fresh run; the earlier" in line for line in run.lines)
    out["history_before_resume"] = records
    out["problems"] = problems
    return out


def check_resume(previous: dict, run: Incarnation, save_dir: Path) -> List[str]:
    """The run after a kill resumed the best-so-far of its checkpoint and cut the history to it."""
    problems = []
    last_update = previous["checkpoint_last_update"]
    if last_update is None:
        return problems  # nothing to resume: a fresh start (an older history is moved aside)
    announced = run.resumed()
    if announced is None:
        if run.killed and not run.hook_started():
            return problems  # killed before the hook had finished resuming
        return [f"no 'MI hook resumed' line although checkpoint_last.pt is at update {last_update}"]
    kept = [r for r in previous["history_before_resume"] if r["step"] <= last_update]
    expected = best_of(kept)
    if expected is None:
        if announced != ("none", None):
            problems.append(f"resumed best {announced}, expected none")
    elif announced[1] != expected[1] or abs(announced[0] - expected[0]) > 5e-5:
        problems.append(f"resumed best {announced}, expected {expected} (the best of the history up to update {last_update})")
    return problems


def check_export_is_best_so_far(previous: Optional[dict], run: Incarnation, report: dict) -> List[str]:
    """checkpoint_mi_best.pt is the best-so-far of the run's history: the resumed best (or nothing, on a
    fresh start) until this run's first new best, then this run's latest exported new best (or, if the
    kill came during an export, the one before it)."""
    before = None if previous is None else previous.get("export_update")
    if previous is None or previous["checkpoint_last_update"] is None:
        resumed = None  # a fresh start moves an older export aside
    else:
        kept = [r for r in previous["history_before_resume"] if r["step"] <= previous["checkpoint_last_update"]]
        resumed = (best_of(kept) or (None, None))[1]
    started = run.hook_started()
    baseline = {before} if started is False else {resumed} if started else {before, resumed}
    new_bests = run.new_best_steps()
    completed = run.completed_export()
    if completed is not None:
        allowed = {completed} | {s for s in new_bests if s > completed}
    else:
        allowed = baseline | set(new_bests)
    got = report.get("export_update") if report["export"] != "absent" else None
    if got not in allowed:
        return [f"checkpoint_mi_best.pt holds update {got}, the best-so-far allows {sorted(allowed, key=str)}"]
    return []


def check_final(state: ChainState, run: Incarnation, final_update: int) -> List[str]:
    from ssl_mi_callback.selection import HistoryFile, read_sidecar

    problems = []
    if run.returncode != 0:
        return [f"finishing run exited {run.returncode}: {' | '.join(run.lines[-5:])}"]
    records = HistoryFile(state.save_dir / "mi_history.jsonl").read()
    steps = [r["step"] for r in records]
    if steps != list(range(state.interval, final_update + 1, state.interval)):
        problems.append(f"final history steps {steps}")
    best = best_of(records)
    export = state.save_dir / "checkpoint_mi_best.pt"
    sidecar = read_sidecar(export, verify=True)
    if best is None or sidecar["update"] != best[1]:
        problems.append(f"final export holds update {sidecar['update']}, the best-so-far is {best}")
    fairseq_best = _safe_load(state.save_dir / "checkpoint_best.pt")
    if fairseq_best["optimizer_history"][-1]["num_updates"] != sidecar["update"]:
        problems.append(
            f"checkpoint_best.pt holds update {fairseq_best['optimizer_history'][-1]['num_updates']}, export {sidecar['update']}"
        )
    elif _weights_sha256(fairseq_best["model"]) != _weights_sha256(_safe_load(export)["model"]):
        problems.append("checkpoint_best.pt and the export hold different weights for the same update")
    return problems


# ----------------------------------------------------------------------------------------- trials

def run_chain(corpus: Path, save_dir: Path, phases: List[str], rng: random.Random, interval: int,
              log=print) -> dict:
    """One fresh run killed once per phase (in order), then resumed to completion."""
    state = ChainState(save_dir=save_dir, interval=interval)
    command = _command(corpus, save_dir, max_update=100_000, interval=interval)
    trials, previous = [], None
    for phase in phases:
        run = run_once(command, phase, rng)
        problems = []
        if previous is not None:
            problems += check_resume(previous, run, save_dir)
        report = inspect_after_kill(state, run)
        if previous is not None and run.resumed() is not None:
            # the resumed run cut the history; the kill may have come later, so compare the prefix
            kept = [r["step"] for r in previous["history_before_resume"] if r["step"] <= (previous["checkpoint_last_update"] or 0)]
            if report["history_steps"][: len(kept)] != kept:
                problems.append(f"history after resume lost records: {report['history_steps']} vs {kept}")
        problems += check_export_is_best_so_far(previous, run, report)
        report["problems"] = problems + report["problems"]
        report["intended_phase"] = phase
        report["rolled_back_on_resume"] = len(previous["records_after_checkpoint"]) if previous else 0
        if not run.killed:
            report["problems"].append(f"run ended by itself (exit {run.returncode}) before the kill")
        log(f"  trial {len(trials) + 1}: {report['phase']:<37} export: {report['export']:<27} "
            f"history {len(report['history_steps'])} records{' (torn line repaired)' if report['history_torn_repaired'] else ''}"
            f"{', temp files left' if report['temp_files_left'] else ''}"
            f"{', checkpoint_last ' + report['checkpoint_last'] if report['checkpoint_last'] not in ('ok', 'absent') else ''}"
            f"{'  PROBLEMS: ' + '; '.join(report['problems']) if report['problems'] else ''}")
        if report["checkpoint_last"].startswith("unreadable"):
            # fairseq writes checkpoint_last.pt by a plain copy; it cannot resume from a torn one either
            (save_dir / "checkpoint_last.pt").unlink()
            log("    (fairseq's checkpoint_last.pt was torn by the kill; removed it to go on)")
        trials.append(report)
        previous = report
    final_update = ((previous["checkpoint_last_update"] or 0) // interval + 3) * interval
    final = run_once(_command(corpus, save_dir, max_update=final_update, interval=interval), None, rng)
    final_problems = check_resume(previous, final, save_dir) + check_final(state, final, final_update)
    log(f"  finishing run to update {final_update}: exit {final.returncode}"
        f"{'  PROBLEMS: ' + '; '.join(final_problems) if final_problems else ', history complete, export = best'}")
    for report in trials:
        report.pop("history_before_resume", None)
    resynced = sum("MI hook:" in line and "re-exported update" in line for line in final.lines)
    return {"trials": trials, "final": {"update": final_update, "returncode": final.returncode,
                                        "problems": final_problems, "export_resynced_at_start": resynced}}


def summarise(chains: List[dict]) -> dict:
    trials = [t for chain in chains for t in chain["trials"]]
    problems = [p for t in trials for p in t["problems"]] + [p for c in chains for p in c["final"]["problems"]]
    count = collections.Counter
    return {
        "trials": len(trials),
        "chains": len(chains),
        "by_phase": dict(count(t["phase"] for t in trials)),
        "export_state": dict(count(t["export"] for t in trials)),
        "torn_history_lines_repaired": sum(t["history_torn_repaired"] for t in trials),
        "kills_leaving_temp_files": sum(bool(t["temp_files_left"]) for t in trials),
        "checkpoint_last_torn": sum(t["checkpoint_last"].startswith("unreadable") for t in trials),
        "kills_leaving_export_ahead_of_checkpoint": sum(t["export_ahead_of_checkpoint"] for t in trials),
        "exports_resynced_at_resume": sum(t["export_resynced_at_start"] for t in trials)
        + sum(c["final"].get("export_resynced_at_start", 0) for c in chains),
        "files_moved_aside_at_fresh_start": sum(t["moved_aside_at_fresh_start"] for t in trials),
        "evaluations_printed": sum(t["evaluations_printed"] for t in trials),
        "records_rolled_back_on_resume": sum(t["rolled_back_on_resume"] for t in trials),
        "finishing_runs_ok": sum(c["final"]["returncode"] == 0 and not c["final"]["problems"] for c in chains),
        "problems": problems,
        "lost": len(problems),
    }


def markdown(result: dict) -> str:
    """The per-phase table of a run (docs/reliability.md)."""
    rows = collections.OrderedDict()
    for chain in result["chains"]:
        for t in chain["trials"]:
            row = rows.setdefault(t["phase"], collections.Counter())
            row["trials"] += 1
            row["torn"] += t["history_torn_repaired"]
            row["temps"] += bool(t["temp_files_left"])
            row["mismatch"] += t["export"] == "sidecar mismatch detected"
            row["ahead"] += t["export_ahead_of_checkpoint"]
            row["rolled"] += len(t["records_after_checkpoint"])
            row["lost"] += len(t["problems"])
    lines = ["| phase of the kill | trials | torn history line (repaired) | temp files left (removed by the next write) "
             "| sidecar mismatch (detected) | export ahead of checkpoint_last (re-synced at resume) "
             "| history records after checkpoint_last (cut at resume) | lost |", "|---|---|---|---|---|---|---|---|"]
    for phase, row in sorted(rows.items()):
        lines.append(f"| {phase} | {row['trials']} | {row['torn']} | {row['temps']} | {row['mismatch']} | {row['ahead']} "
                     f"| {row['rolled']} | {row['lost']} |")
    summary = result["summary"]
    lines.append(f"| **all** | **{summary['trials']}** | {summary['torn_history_lines_repaired']} | "
                 f"{summary['kills_leaving_temp_files']} | {summary['export_state'].get('sidecar mismatch detected', 0)} | "
                 f"{summary['kills_leaving_export_ahead_of_checkpoint']} | {sum(r['rolled'] for r in rows.values())} "
                 f"| **{summary['lost']}** |")
    return "\n".join(lines)


def make_corpus(out_dir: Path) -> Path:
    from ssl_mi_callback.corpus import CorpusConfig, generate_corpus

    splits = (("train", 0.6), ("valid", 0.05), ("heldout", 0.25), ("probe_train", 0.05), ("probe_test", 0.05))
    generate_corpus(CorpusConfig(minutes=6, seed=0, splits=splits, min_words=4, max_words=16), out_dir, jobs=2)
    return out_dir


def run_trials(corpus: Path, workdir: Path, trials: int, seed: int = 0, chain_length: int = len(CYCLE),
               interval: int = 20, log=print) -> dict:
    rng = random.Random(seed)
    phases = [CYCLE[i % len(CYCLE)] for i in range(trials)]
    exports = iter(range(trials))
    phases = [f"export={next(exports) % len(EXPORT_STEPS)}" if p == "export" else p for p in phases]  # every step in turn
    chains = []
    for index, start in enumerate(range(0, trials, chain_length)):
        chain_phases = phases[start:start + chain_length]
        rng.shuffle(chain_phases)
        # a kill during an export always leaves a record after the last checkpoint, so the next run
        # has history to cut back: put each resume-rewrite trial right after an export trial
        for _ in range(chain_phases.count("resume-rewrite")):
            chain_phases.remove("resume-rewrite")
            free = [i for i, p in enumerate(chain_phases) if p.startswith("export")
                    and (i + 1 == len(chain_phases) or chain_phases[i + 1] != "resume-rewrite")]
            chain_phases.insert(free[0] + 1 if free else len(chain_phases), "resume-rewrite")
        log(f"chain {index + 1}: {', '.join(chain_phases)}")
        save_dir = workdir / f"chain{index + 1}" / "checkpoints"
        chains.append(run_chain(corpus, save_dir, chain_phases, rng, interval, log=log))
    return {"seed": seed, "interval": interval, "summary": summarise(chains), "chains": chains}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=27)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chain-length", type=int, default=len(CYCLE))
    parser.add_argument("--interval", type=int, default=20, help="validation/MI/save interval in updates")
    parser.add_argument("--corpus", type=Path, help="a generated corpus (default: generate one)")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary folder, removed)")
    parser.add_argument("--out", type=Path, help="write the full result as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 if anything was lost")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crash_trials_"))
    try:
        corpus = args.corpus or make_corpus(workdir / "corpus")
        started = time.monotonic()
        result = run_trials(corpus, workdir, args.trials, args.seed, args.chain_length, args.interval)
        result["seconds"] = round(time.monotonic() - started, 1)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = result["summary"]
    print(json.dumps({k: v for k, v in summary.items() if k != "problems"}, indent=2))
    print(markdown(result))
    for problem in summary["problems"]:
        print("PROBLEM:", problem)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.strict and summary["lost"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
