"""Held-out data: manifests, folders, bad files, cropping, determinism, sharding, batching."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import _available, require
from ssl_mi_callback import data
from ssl_mi_callback.data import (HeldOutDataError, Utterance, plan_batches,
                                  load_heldout, parse_manifest)

RATE = 16000


@pytest.fixture(scope="module")
def speech_wavs(request, tmp_path_factory):
    """Six real 16 kHz speech files (from the tiny corpus; tones if no speech engine exists)."""
    folder = tmp_path_factory.mktemp("speech")
    if _available("espeak-ng") and _available("flite"):
        corpus = request.getfixturevalue("tiny_corpus")
        sources = sorted((corpus / "wav").iterdir())[:6]
        for index, source in enumerate(sources):
            shutil.copy(source, folder / f"good{index}.wav")
    else:
        for index in range(6):
            t = np.arange(int(RATE * (1.0 + 0.3 * index))) / RATE
            tone = 0.3 * np.sin(2 * np.pi * (150 + 40 * index) * t) * np.hanning(t.size)
            soundfile.write(folder / f"good{index}.wav", tone, RATE, subtype="PCM_16")
    return sorted(folder.iterdir())


def _write_manifest(path: Path, root: Path, names, counts=None) -> Path:
    lines = [str(root)] + [f"{name}\t{(counts or {}).get(name, 16000)}" for name in names]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def messy_folder(tmp_path, speech_wavs):
    """Two good files plus every kind of bad input, written by hand."""
    root = tmp_path / "audio"
    root.mkdir()
    good = [shutil.copy(speech_wavs[0], root / "a_good.wav"),
            shutil.copy(speech_wavs[1], root / "b_good.wav")]
    speech, _ = soundfile.read(speech_wavs[2], dtype="float32")
    (root / "c_empty_bytes.wav").write_bytes(b"")
    soundfile.write(root / "d_no_frames.wav", np.zeros(0, np.float32), RATE)
    soundfile.write(root / "e_short.wav", speech[:3200], RATE, subtype="PCM_16")
    whole = Path(speech_wavs[3]).read_bytes()
    (root / "f_truncated_data.wav").write_bytes(whole[: len(whole) // 2])
    (root / "g_truncated_header.wav").write_bytes(whole[:30])
    (root / "h_text.wav").write_text("this is not audio\n" * 20)
    soundfile.write(root / "i_stereo.wav", np.stack([speech, 0.5 * speech], axis=1), RATE,
                    subtype="PCM_16")
    eight_k = speech[::2]
    soundfile.write(root / "j_8khz.wav", eight_k, 8000, subtype="PCM_16")
    nan = speech.copy()
    nan[100] = np.nan
    soundfile.write(root / "k_nan.wav", nan, RATE, subtype="FLOAT")
    inf = speech.copy()
    inf[5] = np.inf
    soundfile.write(root / "l_inf.wav", inf, RATE, subtype="FLOAT")
    soundfile.write(root / "m_loud.wav", np.clip(speech * 8, -3, 3), RATE, subtype="FLOAT")
    (root / "notes.txt").write_text("ignored: not an audio extension")
    return root, good


EXPECTED_SKIPS = {
    "c_empty_bytes.wav": ("empty", "empty file"),
    "d_no_frames.wav": ("empty", "no audio samples"),
    "e_short.wav": ("too short", "too short: 0.20 s < min_seconds 0.5"),
    "f_truncated_data.wav": ("corrupt", "truncated wav: header declares"),
    "g_truncated_header.wav": ("corrupt", "truncated wav"),
    "h_text.wav": ("not audio", "not an audio file"),
    "k_nan.wav": ("non-finite", "NaN or infinite"),
    "l_inf.wav": ("non-finite", "NaN or infinite"),
}


def test_folder_with_every_bad_input(messy_folder, caplog):
    root, _ = messy_folder
    caplog.set_level(logging.INFO, logger="ssl_mi_callback.data")
    subset = load_heldout(root)
    kept = [u.uid for u in subset.utterances]
    assert kept == ["a_good.wav", "b_good.wav", "i_stereo.wav", "j_8khz.wav", "m_loud.wav"]
    assert [u.index for u in subset.utterances] == list(range(5))
    reasons = {Path(path).name: reason for path, reason in subset.skipped}
    assert set(reasons) == set(EXPECTED_SKIPS)
    for name, (_, fragment) in EXPECTED_SKIPS.items():
        assert fragment in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name]
    assert subset.skip_counts == {"empty": 2, "too short": 1, "corrupt": 2, "not audio": 1,
                                  "non-finite": 2}
    assert (subset.downmixed, subset.resampled, subset.clipped) == (1, 1, 1)
    for utterance in subset.utterances:
        assert utterance.waveform.dtype == np.float32 and utterance.waveform.ndim == 1
        assert np.abs(utterance.waveform).max() <= 1.0
    line = subset.describe()
    assert "5 utterances" in line and "8 skipped" in line and "2 corrupt" in line
    assert "1 downmixed to mono" in line and subset.fingerprint() in line and "\n" not in line
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 8 and all("skipping" in w for w in warnings)
    downmix_logs = [r for r in caplog.records if "downmixing" in r.getMessage()]
    assert len(downmix_logs) == 1


def test_stereo_is_averaged_and_8khz_resampled(messy_folder, speech_wavs):
    root, _ = messy_folder
    subset = load_heldout(root)
    by_uid = {u.uid: u for u in subset.utterances}
    speech, _ = soundfile.read(speech_wavs[2], dtype="float32")
    stereo = by_uid["i_stereo.wav"].waveform
    np.testing.assert_allclose(stereo, 0.75 * speech, atol=2e-4)
    resampled = by_uid["j_8khz.wav"].waveform
    assert abs(resampled.shape[0] - speech.shape[0]) <= 2


def test_without_torchaudio_other_rates_are_skipped(messy_folder, monkeypatch):
    root, _ = messy_folder
    monkeypatch.setattr(data, "_RESAMPLER", "No module named 'torchaudio'")
    subset = load_heldout(root)
    reasons = {Path(path).name: reason for path, reason in subset.skipped}
    assert "install torchaudio" in reasons["j_8khz.wav"]
    assert subset.skip_counts["sample rate"] == 1


def test_manifest_with_bad_lines_and_missing_files(tmp_path, speech_wavs):
    root = Path(speech_wavs[0]).parent
    manifest = tmp_path / "held.tsv"
    manifest.write_text("\n".join([
        str(root),
        f"{Path(speech_wavs[1]).name}\t123",
        "no_such_file.wav\t16000",
        "only_one_column.wav",
        "three\tcolumns\there",
        f"{Path(speech_wavs[0]).name}\tabc",
        f"{Path(speech_wavs[0]).name}\t-5",
        f"{Path(speech_wavs[0]).name}\t1.5",
        "",
        f"{Path(speech_wavs[0]).name}\t16000",
    ]) + "\n")
    subset = load_heldout(manifest)
    assert [u.uid for u in subset.utterances] == [Path(speech_wavs[1]).name,
                                                   Path(speech_wavs[0]).name]
    assert subset.skip_counts == {"bad manifest line": 5, "missing": 1}
    where = [w for w, _ in subset.skipped]
    assert f"{manifest}:4" in where and f"{manifest}:8" in where
    reasons = dict(subset.skipped)
    assert reasons[f"{manifest}:4"] == "line 4: expected 2 tab-separated columns (path, " \
                                       "num_samples), got 1"
    assert "is not a non-negative integer" in reasons[f"{manifest}:6"]
    assert reasons[str(root / "no_such_file.wav")] == "missing file"


def test_nothing_usable_raises_one_line_error(tmp_path):
    manifest = _write_manifest(tmp_path / "x.tsv", tmp_path, ["a.wav", "b.wav"])
    (tmp_path / "c.wav").write_text("text")
    with open(manifest, "a") as handle:
        handle.write("c.wav\t100\n")
    with pytest.raises(HeldOutDataError) as error:
        load_heldout(manifest)
    message = str(error.value)
    assert message == (f"held-out subset '{manifest}' has no usable audio: 3 skipped "
                       "(2 missing, 1 not audio)")
    assert isinstance(error.value, ValueError)


def test_missing_sources_raise_naming_the_path(tmp_path):
    with pytest.raises(HeldOutDataError, match="manifest not found: .*nope.tsv"):
        load_heldout(tmp_path / "nope.tsv")
    with pytest.raises(HeldOutDataError, match="source not found"):
        load_heldout(tmp_path / "no_folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeldOutDataError, match="lists no audio files"):
        load_heldout(tmp_path / "empty")
    bad_root = tmp_path / "noroot.tsv"
    bad_root.write_text("a.wav\t100\n")
    with pytest.raises(HeldOutDataError, match="root directory on line 1"):
        load_heldout(bad_root)
    gone = _write_manifest(tmp_path / "gone.tsv", tmp_path / "moved_away", ["a.wav"])
    with pytest.raises(HeldOutDataError, match="root directory .*moved_away does not exist"):
        load_heldout(gone)


def test_relative_root_resolves_beside_the_manifest(tmp_path, speech_wavs, monkeypatch):
    folder = tmp_path / "corpus" / "audio"
    folder.mkdir(parents=True)
    shutil.copy(speech_wavs[0], folder / "x.wav")
    manifest = _write_manifest(tmp_path / "corpus" / "m.tsv", Path("audio"), ["x.wav"])
    monkeypatch.chdir(tmp_path)
    assert [u.uid for u in load_heldout(manifest).utterances] == ["x.wav"]


def test_folder_is_recursive_and_sorted(tmp_path, speech_wavs):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "z").mkdir(parents=True)
    shutil.copy(speech_wavs[0], tmp_path / "b" / "1.wav")
    shutil.copy(speech_wavs[1], tmp_path / "a" / "z" / "2.WAV")
    shutil.copy(speech_wavs[2], tmp_path / "a" / "3.wav")
    soundfile.write(tmp_path / "a" / "4.flac", soundfile.read(speech_wavs[3])[0], RATE)
    subset = load_heldout(tmp_path)
    assert [u.uid for u in subset.utterances] == ["a/3.wav", "a/4.flac", "a/z/2.WAV", "b/1.wav"]


def test_list_keeps_given_order(speech_wavs):
    paths = [speech_wavs[2], speech_wavs[0], speech_wavs[1]]
    subset = load_heldout(paths)
    assert [u.path for u in subset.utterances] == [str(p) for p in paths]
    assert subset.source == "3 files"


def test_cropping_and_total_budget(speech_wavs):
    full = load_heldout(speech_wavs)
    cropped = load_heldout(speech_wavs, max_utterance_seconds=1.0)
    for long, short in zip(full.utterances, cropped.utterances):
        assert short.num_samples == min(long.num_samples, RATE)
        np.testing.assert_array_equal(short.waveform, long.waveform[:short.num_samples])
    budget = full.total_seconds * 0.5
    capped = load_heldout(speech_wavs, max_seconds=budget)
    assert capped.total_seconds <= budget + 1 / RATE
    assert capped.total_seconds > budget - 0.5
    assert capped.budget_reached and "capped at max_seconds" in capped.describe()
    assert [u.uid for u in capped.utterances] == [u.uid for u in full.utterances][:len(capped)]
    last = capped.utterances[-1]
    np.testing.assert_array_equal(last.waveform, full.utterances[last.index].waveform[
        :last.num_samples])
    assert all(u.num_samples >= 0.5 * RATE for u in capped.utterances)


def test_loading_is_deterministic_and_fingerprint_tracks_changes(speech_wavs):
    first = load_heldout(speech_wavs, max_seconds=5)
    second = load_heldout(speech_wavs, max_seconds=5)
    assert first.fingerprint() == second.fingerprint()
    assert len(first.fingerprint()) == 16
    for a, b in zip(first.utterances, second.utterances):
        assert a.uid == b.uid
        np.testing.assert_array_equal(a.waveform, b.waveform)
    assert load_heldout(speech_wavs, max_seconds=4).fingerprint() != first.fingerprint()
    assert load_heldout(speech_wavs[1:], max_seconds=5).fingerprint() != first.fingerprint()


def test_heldout_manifest_of_generated_corpus(tiny_corpus):
    subset = load_heldout(tiny_corpus / "heldout.tsv")
    rows = (tiny_corpus / "heldout.tsv").read_text().splitlines()[1:]
    assert [u.uid for u in subset.utterances] == [row.split("\t")[0] for row in rows]
    assert [u.num_samples for u in subset.utterances] == [int(r.split("\t")[1]) for r in rows]
    assert not subset.skipped


def _utterances(lengths):
    return [Utterance(index=i, uid=f"u{i}", waveform=np.full(n, 0.1 * (i + 1), np.float32))
            for i, n in enumerate(lengths)]


def test_plan_batches_crops_to_equal_lengths_without_padding():
    lengths = [8000, 12000, 15999, 16000, 4000, 40000, 3000]  # 16 kHz; quantum 0.5 s = 8000 samples
    utterances = _utterances(lengths)
    batches = plan_batches(utterances, batch_seconds=2.0, length_quantum_seconds=0.5, sample_rate=RATE)
    layout = [(b.num_samples, [u.index for u in b.utterances]) for b in batches]
    again = plan_batches(list(reversed(utterances)), batch_seconds=2.0, length_quantum_seconds=0.5, sample_rate=RATE)
    assert sorted(layout) == sorted((b.num_samples, sorted(u.index for u in b.utterances)) for b in again)
    assert sorted(u.index for b in batches for u in b.utterances) == list(range(len(lengths)))
    for batch in batches:
        assert all(u.num_samples >= batch.num_samples for u in batch.utterances)
        assert batch.num_samples % 8000 == 0 or batch.num_samples < 8000  # shorter than one quantum: kept whole
        assert batch.num_samples * len(batch.utterances) <= 32000 or len(batch.utterances) == 1
        assert batch.waveforms().shape == (len(batch.utterances), batch.num_samples)
    assert [b.index for b in batches] == list(range(len(batches)))
    assert {b.num_samples for b in batches} == {3000, 4000, 8000, 16000, 40000}
    with pytest.raises(ValueError):
        plan_batches(utterances, batch_seconds=0)


# ------------------------------------------------------------------------------ fuzzing

_line = st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, b: f"{a}\t{b}", st.text(max_size=20), st.text(max_size=12)),
    st.builds(lambda a, n: f"{a}.wav\t{n}", st.text(alphabet="abc/_. ", max_size=10),
              st.integers(min_value=-5, max_value=10 ** 6)),
)


@given(root=st.text(max_size=30), lines=st.lists(_line, max_size=25))
@settings(max_examples=300, deadline=None)
def test_manifest_parser_never_crashes_and_accounts_for_every_line(root, lines):
    text = "\n".join([root] + lines)
    manifest = parse_manifest(text)
    physical = text.split("\n")
    if physical and physical[-1] == "":
        physical.pop()
    body = max(len(physical) - 1, 0)
    assert len(manifest.entries) + len(manifest.bad_lines) + manifest.blank_lines == body
    numbers = [e.line_number for e in manifest.entries] + [n for n, _ in manifest.bad_lines]
    assert len(set(numbers)) == len(numbers) and all(2 <= n <= body + 1 for n in numbers)
    for entry in manifest.entries:
        assert entry.num_samples >= 0 and entry.path
    for _, reason in manifest.bad_lines:
        assert "\n" not in reason


@given(lines=st.lists(_line, min_size=1, max_size=8))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_loading_fuzzed_manifests_only_raises_heldout_errors(tmp_path, lines):
    manifest = tmp_path / "fuzz.tsv"
    manifest.write_text("\n".join([str(tmp_path)] + lines) + "\n", encoding="utf-8",
                        errors="surrogateescape")
    try:
        subset = load_heldout(manifest)
    except HeldOutDataError as error:
        assert "\n" not in str(error)
    else:  # only possible if a fuzzed line named a real file
        assert subset.utterances


# ------------------------------------------------------------------------------ bounded reading

def _long_speech(speech_wavs, seconds: float, rate: int = RATE) -> np.ndarray:
    """The six speech files end to end, repeated to ``seconds`` (mono float32)."""
    pieces = [soundfile.read(path, dtype="float32")[0] for path in speech_wavs]
    joined = np.concatenate(pieces)
    return np.resize(joined, int(seconds * rate)).astype(np.float32)


def _full_read_then_crop(path, seconds: float, channels_mean: bool = False) -> np.ndarray:
    """What loading did before reads were bounded: the whole file, downmixed, resampled, then cropped."""
    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1, dtype=np.float32) if channels_mean else audio[:, 0]
    if rate != RATE:
        import torchaudio

        mono = torchaudio.functional.resample(torch.from_numpy(mono), rate, RATE).numpy()
    return mono[: int(round(seconds * RATE))], len(mono)


@pytest.mark.parametrize("rate", [RATE, 44100])
def test_a_long_file_is_read_only_up_to_the_crop(tmp_path, speech_wavs, rate):
    """60 s of speech, max_utterance_seconds=2: the same samples as a full read cropped, the full length
    still known (label alignment uses it), and the memory of the read bounded by the crop, not the file."""
    import tracemalloc

    if rate != RATE:
        require("torchaudio")
    path = tmp_path / "long.wav"
    soundfile.write(path, _long_speech(speech_wavs, 60, rate), rate, subtype="FLOAT")
    expected, full_length = _full_read_then_crop(path, 2.0)

    def peak_bytes(**settings) -> tuple:
        tracemalloc.start()
        try:
            subset = load_heldout([path], **settings)
            return subset, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    load_heldout([path], max_utterance_seconds=0.5)  # warm-up: torchaudio's import is not the read
    cropped, cropped_peak = peak_bytes(max_utterance_seconds=2.0)
    whole, whole_peak = peak_bytes()  # control: the measurement sees a whole read
    utterance = cropped.utterances[0]
    np.testing.assert_allclose(utterance.waveform, expected, rtol=0, atol=1e-6)
    assert utterance.source_samples == full_length == 60 * RATE and cropped.cropped == 1
    assert whole.utterances[0].num_samples == 60 * RATE
    assert whole_peak > 60 * rate * 4  # the file's float32 samples (3.8 MB at 16 kHz, 10.6 MB at 44.1 kHz)
    assert cropped_peak < 1e6, cropped_peak  # measured: 0.26 MB (16 kHz), 0.45 MB (44.1 kHz)


def test_garbage_beyond_the_crop_is_never_read(tmp_path, speech_wavs):
    """A file whose audio turns into NaN after 10 s: with a 2 s crop that part is never read, so the file
    is kept with exactly its first 2 s; read whole it is still skipped as non-finite."""
    audio = _long_speech(speech_wavs, 60)
    audio[10 * RATE:] = np.nan
    path = tmp_path / "bad_tail.wav"
    soundfile.write(path, audio, RATE, subtype="FLOAT")
    subset = load_heldout([path], max_utterance_seconds=2.0)
    np.testing.assert_array_equal(subset.utterances[0].waveform, audio[: 2 * RATE])
    assert subset.utterances[0].source_samples == 60 * RATE and not subset.skipped
    with pytest.raises(HeldOutDataError, match="1 non-finite"):
        load_heldout([path])


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_bounded_read_resamples_like_a_full_read(tmp_path, speech_wavs, rate, channels):
    """Other sample rates (and stereo): the bounded read plus its margin gives the samples of resampling
    the whole file, cropped; the full length at 16 kHz is the full resample's."""
    require("torchaudio")
    audio = _long_speech(speech_wavs, 20, rate)
    if channels == 2:
        audio = np.stack([audio, 0.5 * audio[::-1]], axis=1)
    path = tmp_path / f"at_{rate}.wav"
    soundfile.write(path, audio, rate, subtype="FLOAT")
    expected, full_length = _full_read_then_crop(path, 1.5, channels_mean=channels == 2)
    subset = load_heldout([path], max_utterance_seconds=1.5)
    utterance = subset.utterances[0]
    assert utterance.num_samples == len(expected) == int(1.5 * RATE)
    np.testing.assert_allclose(utterance.waveform, expected, rtol=0, atol=1e-6)
    assert utterance.source_samples == full_length
    assert (subset.resampled, subset.downmixed, subset.cropped) == (1, channels - 1, 1)


def test_short_crop_does_not_make_a_long_file_too_short(speech_wavs):
    """min_seconds applies to the file, as before: a 0.3 s crop of a longer file is kept."""
    subset = load_heldout(speech_wavs[:2], max_utterance_seconds=0.3, min_seconds=0.5)
    assert [u.num_samples for u in subset.utterances] == [int(0.3 * RATE)] * 2 and not subset.skipped
