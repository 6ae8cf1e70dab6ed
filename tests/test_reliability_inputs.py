"""Bad held-out input end to end, and fuzzing of every parser of text the product reads.

``tests/test_data.py`` checks each bad input at ``load_heldout`` (the skip kind and its one-line
reason). Here the same inputs go through a real fairseq run: each one is a single warning line in
the training log, the start-up line states the counts, and training evaluates on what is left; a
held-out subset with nothing usable stops the run before training with one line. The fuzz tests
cover the history and sidecar readers and the corpus label readers (the manifest parser is fuzzed in
``tests/test_data.py``); run with ``--hypothesis-show-statistics`` to see the case counts.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import require
from fairseq_runs import train

RATE = 16000

# (name in the manifest, skip kind in the start-up line, fragment of its one-line reason)
BAD_FILES = [
    ("missing.wav", "missing", "missing file"),
    ("empty_bytes.wav", "empty", "empty file (0 bytes)"),
    ("zero_frames.wav", "empty", "no audio samples"),
    ("short.wav", "too short", "too short: 0.20 s"),
    ("truncated_data.wav", "corrupt", "truncated wav: header declares"),
    ("truncated_header.wav", "corrupt", "truncated wav"),
    ("text.wav", "not audio", "not an audio file"),
    ("nan.wav", "non-finite", "NaN or infinite samples"),
    ("inf.wav", "non-finite", "NaN or infinite samples"),
]
BAD_LINES = [
    ("one_column.wav", "expected 2 tab-separated columns (path, num_samples), got 1"),
    ("three\tcolumns\there", "expected 2 tab-separated columns (path, num_samples), got 3"),
    ("x.wav\tabc", "num_samples 'abc' is not a non-negative integer"),
    ("x.wav\t-5", "num_samples '-5' is not a non-negative integer"),
]


def _messy_heldout(corpus: Path, folder: Path) -> tuple[Path, int]:
    """A manifest of every bad input first, then the corpus's held-out speech; returns (manifest, good count)."""
    root, *rows = (corpus / "heldout.tsv").read_text().splitlines()
    good = [Path(root) / row.split("\t")[0] for row in rows]
    speech, _ = soundfile.read(good[0], dtype="float32")
    folder.mkdir()
    (folder / "empty_bytes.wav").write_bytes(b"")
    soundfile.write(folder / "zero_frames.wav", np.zeros(0, np.float32), RATE)
    soundfile.write(folder / "short.wav", speech[:3200], RATE, subtype="PCM_16")
    whole = good[1].read_bytes()
    (folder / "truncated_data.wav").write_bytes(whole[: len(whole) // 2])
    (folder / "truncated_header.wav").write_bytes(whole[:30])
    (folder / "text.wav").write_text("this is not audio\n" * 20)
    nan, inf = speech.copy(), speech.copy()
    nan[100], inf[5] = np.nan, -np.inf
    soundfile.write(folder / "nan.wav", nan, RATE, subtype="FLOAT")
    soundfile.write(folder / "inf.wav", inf, RATE, subtype="FLOAT")
    soundfile.write(folder / "stereo.wav", np.stack([speech, 0.5 * speech], axis=1), RATE, subtype="PCM_16")
    soundfile.write(folder / "rate_8k.wav", speech[::2], 8000, subtype="PCM_16")
    soundfile.write(folder / "loud.wav", np.clip(speech * 8, -3, 3), RATE, subtype="FLOAT")
    long = np.concatenate([soundfile.read(path, dtype="float32")[0] for path in good[:12]])
    assert long.size > 16 * RATE
    soundfile.write(folder / "long.wav", long, RATE, subtype="PCM_16")
    lines = [str(folder)]
    lines += [f"{name}\t16000" for name, _, _ in BAD_FILES]
    lines += [line for line, _ in BAD_LINES]
    lines += ["stereo.wav\t1", "rate_8k.wav\t2", "loud.wav\t3", f"long.wav\t{long.size}"]  # sizes wrong on purpose
    lines += [f"{path}\t{soundfile.info(path).frames}" for path in good]  # absolute paths join as themselves
    manifest = folder / "messy.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, 4 + len(good)


@pytest.fixture(scope="module")
def corpus(speech_corpus):
    require("fairseq")
    return speech_corpus


@pytest.mark.slow
def test_every_bad_input_is_one_log_line_and_training_goes_on(corpus, tmp_path):
    manifest, _ = _messy_heldout(corpus, tmp_path / "messy")
    run = train("tiny_wav2vec2", corpus, tmp_path / "checkpoints",
                ["optimization.max_update=50", f"task.mi_heldout={manifest}", "task.mi_max_utterance_seconds=15"])
    assert run.returncode == 0, run.output[-4000:]
    log = run.output.splitlines()
    skips = [line for line in log if f"held-out '{manifest}': skipping" in line]
    assert len(skips) == len(BAD_FILES) + len(BAD_LINES), "\n".join(skips)
    for name, _, reason in BAD_FILES:
        assert sum(f"skipping {manifest.parent / name}: {reason}" in line for line in skips) == 1, name
    for number, (_, reason) in enumerate(BAD_LINES, start=2 + len(BAD_FILES)):
        assert sum(f"skipping {manifest}:{number}: line {number}: {reason}" in line for line in skips) == 1, reason
    summary = [line for line in log if "MI held-out subset:" in line]
    assert len(summary) == 1
    for part in ("13 skipped (", "4 bad manifest line", "2 corrupt", "2 empty", "2 non-finite", "1 missing",
                 "1 not audio", "1 too short", "1 downmixed to mono", "1 resampled", "1 clipped to [-1, 1]",
                 "capped at max_seconds"):
        assert part in summary[0], (part, summary[0])
    assert re.search(r"\b[1-9]\d* cropped", summary[0]), summary[0]  # long.wav, cut to 15 s
    history = run.history()
    assert [(r["step"], r["status"]) for r in history] == [(50, "ok")]
    assert math.isfinite(history[0]["metrics"]["mi_bits"])


@pytest.mark.slow
def test_a_heldout_with_nothing_usable_stops_before_training_with_one_line(corpus, tmp_path):
    manifest, _ = _messy_heldout(corpus, tmp_path / "messy")
    lines = manifest.read_text().splitlines()
    only_bad = tmp_path / "only_bad.tsv"
    only_bad.write_text("\n".join(lines[: 1 + len(BAD_FILES) + len(BAD_LINES)]) + "\n")
    run = train("tiny_wav2vec2", corpus, tmp_path / "checkpoints", [f"task.mi_heldout={only_bad}"])
    assert run.returncode == 2
    errors = [line for line in run.output.splitlines() if line.startswith("ssl-mi-fairseq-hydra-train: error:")]
    assert errors == [
        f"ssl-mi-fairseq-hydra-train: error: held-out subset '{only_bad}' has no usable audio: 13 skipped "
        "(4 bad manifest line, 2 corrupt, 2 empty, 2 non-finite, 1 missing, 1 not audio, 1 too short)"
    ], run.output[-3000:]
    assert "num_updates" not in run.output


# ------------------------------------------------------------------------------ fuzzing

_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_history_line = st.one_of(
    _json_value.map(lambda value: json.dumps(value).encode()),  # valid JSON, any shape
    st.fixed_dictionaries({"step": st.integers(-3, 10 ** 6), "status": st.sampled_from(["ok", "failed", "?"])})
    .map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=60),  # anything, invalid UTF-8 included
    st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),  # deep nesting
)


@given(lines=st.lists(_history_line, max_size=12), torn_tail=st.binary(max_size=40), newline_at_end=st.booleans())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_history_reader_returns_records_or_one_line_error(tmp_path, lines, torn_tail, newline_at_end):
    from ssl_mi_callback.selection import HistoryCorruptError, HistoryFile

    body = b"\n".join(line.replace(b"\n", b" ") for line in lines)
    data = body + (b"\n" if newline_at_end and lines else b"") + torn_tail.replace(b"\n", b"")
    path = tmp_path / "history.jsonl"
    path.write_bytes(data)
    history = HistoryFile(path)
    try:
        records = history.read(repair=False)
    except HistoryCorruptError as error:
        assert "\n" not in str(error) and re.search(r"line \d+", str(error))
    else:
        assert all(isinstance(record, dict) for record in records)
        assert len(records) == data[: data.rfind(b"\n") + 1].count(b"\n")
    assert path.read_bytes() == data  # repair=False never writes
    try:
        history.read(repair=True)
    except HistoryCorruptError:
        pass
    repaired = path.read_bytes()
    assert repaired == data[: data.rfind(b"\n") + 1]  # only the torn tail is ever cut


@given(content=st.one_of(_json_value.map(lambda v: json.dumps(v).encode()), st.binary(max_size=80),
                         st.fixed_dictionaries({"file": st.sampled_from(["best.pt", "other.pt"]),
                                                "bytes": st.one_of(st.integers(0, 20), st.text(max_size=3)),
                                                "sha256": st.text(max_size=5)}).map(lambda v: json.dumps(v).encode())))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_sidecar_reader_accepts_only_a_sidecar_that_describes_the_file(tmp_path, content):
    from ssl_mi_callback.selection import SidecarMismatchError, read_sidecar

    (tmp_path / "best.pt").write_bytes(b"0123456789")
    (tmp_path / "best.json").write_bytes(content)
    try:
        fields = read_sidecar(tmp_path / "best.pt", verify=True)
    except SidecarMismatchError as error:
        assert "\n" not in str(error)
    else:
        assert fields["file"] == "best.pt" and fields["bytes"] == 10


@given(lines=st.lists(st.one_of(st.lists(st.integers(0, 80), max_size=30).map(lambda ids: " ".join(map(str, ids))),
                                st.text(alphabet="0123456789 -\t.a", max_size=30)), max_size=10))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_frame_label_reader_returns_one_int_array_per_line_or_raises(tmp_path, lines):
    """Never a wrong number: one int64 array per line with exactly the class ids written, or a one-line
    ValueError naming the first token that is not a class id (a non-negative integer below 1e9).
    (Found by this fuzz: an integer beyond int64 raised OverflowError; negative ids were accepted.)"""
    from ssl_mi_callback.corpus import read_labels

    (tmp_path / "split.phn").write_text("\n".join(lines) + ("\n" if lines else ""))
    try:
        labels = read_labels(tmp_path, "split")
    except ValueError as error:
        assert "\n" not in str(error) and "is not a class id" in str(error)
        assert any(not re.fullmatch(r"0*\d{1,9}", token) for line in lines for token in line.split())
    else:
        assert len(labels) == len(lines)
        for array, line in zip(labels, lines):
            assert array.dtype == np.int64 and array.tolist() == [int(token) for token in line.split()]


@given(text=st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_flite_phone_segment_parser_never_raises(text):
    from ssl_mi_callback.corpus.flite import parse_segments

    for name, end in parse_segments(text):
        assert isinstance(name, str) and isinstance(end, float)


class _Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.slow
def test_a_checkpoint_that_would_run_code_is_refused_at_resume_with_one_line(corpus, tmp_path):
    import torch

    save_dir = tmp_path / "checkpoints"
    save_dir.mkdir()
    marker = tmp_path / "payload_ran"
    torch.save({"args": None, "model": {"w": torch.zeros(2)}, "task_state": {}, "optimizer_history": [{"num_updates": 50}],
                "extra_state": {"best": _Payload(marker)}}, save_dir / "checkpoint_last.pt")
    run = train("tiny_wav2vec2", corpus, save_dir, ["optimization.max_update=100"])
    assert run.returncode == 2, run.output[-3000:]
    errors = [line for line in run.output.splitlines() if line.startswith("ssl-mi-fairseq-hydra-train: error:")]
    assert len(errors) == 1 and "refusing to load" in errors[0] and "checkpoint_last.pt" in errors[0], run.output[-3000:]
    assert "posix.system" in errors[0] or "os.system" in errors[0]
    assert not marker.exists()
    assert "Traceback" not in run.output and "num_updates" not in run.output


@pytest.mark.slow
def test_a_torn_checkpoint_last_stops_the_run_with_one_line_naming_another_checkpoint(corpus, tmp_path):
    """fairseq writes checkpoint_last.pt by a plain copy; a kill during that copy leaves it torn."""
    save_dir = tmp_path / "checkpoints"
    first = train("tiny_wav2vec2", corpus, save_dir, ["optimization.max_update=50"])
    assert first.returncode == 0, first.output[-3000:]
    last = save_dir / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    run = train("tiny_wav2vec2", corpus, save_dir, ["optimization.max_update=100"])
    assert run.returncode == 2, run.output[-3000:]
    errors = [line for line in run.output.splitlines() if line.startswith("ssl-mi-fairseq-hydra-train: error:")]
    assert len(errors) == 1 and "cannot resume from" in errors[0] and "checkpoint.restore_file=" in errors[0], errors
    interval = next(p.name for p in save_dir.glob("checkpoint_*_50.pt"))
    assert interval in errors[0]
    retry = train("tiny_wav2vec2", corpus, save_dir, ["optimization.max_update=100", f"checkpoint.restore_file={save_dir / interval}"])
    assert retry.returncode == 0, retry.output[-3000:]
    assert [r["step"] for r in retry.history()] == [50, 100]


def test_sidecar_error_stays_one_line_for_a_value_with_a_newline(tmp_path):
    """Regression (found by the fuzz test): a sidecar value is quoted, never pasted raw into the message."""
    from ssl_mi_callback.selection import SidecarMismatchError, read_sidecar

    (tmp_path / "best.pt").write_bytes(b"0123456789")
    (tmp_path / "best.json").write_text('{"file": "best.pt", "bytes": "\\n"}')
    with pytest.raises(SidecarMismatchError) as error:
        read_sidecar(tmp_path / "best.pt")
    assert "\n" not in str(error.value)
