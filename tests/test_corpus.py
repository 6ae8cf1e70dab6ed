"""Synthetic corpus generation: text, phone set, alignment, layout, determinism, CLI."""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import TINY_CORPUS_SPLITS, require, tiny_corpus_config
from ssl_mi_callback.corpus import (PHONES, CorpusConfig, EngineUnavailable, build_parser,
                                    frame_labels, generate_corpus, num_frames, plan_utterances,
                                    read_labels, run)
from ssl_mi_callback.corpus import cli, espeak, flite, phones, render, verify
from ssl_mi_callback.corpus.generate import DEFAULT_ESPEAK_VOICES, check_engines
from ssl_mi_callback.corpus.text import SentenceGenerator


# ------------------------------------------------------------------------------ pure parts

def test_sentences_are_deterministic_unique_and_bounded():
    first = list(itertools.islice(SentenceGenerator(7, 3, 9).unique(), 300))
    again = list(itertools.islice(SentenceGenerator(7, 3, 9).unique(), 300))
    other = list(itertools.islice(SentenceGenerator(8, 3, 9).unique(), 300))
    assert first == again
    assert first != other
    assert len({s.lower() for s in first}) == 300
    assert all(3 <= len(s.split()) <= 9 and s.endswith(".") for s in first)


def test_phone_set_is_arpabet_39_plus_silence():
    assert len(PHONES) == 40
    assert PHONES[0] == "sil"
    assert len(set(PHONES)) == 40
    assert set(phones.ESPEAK_TO_SHARED.values()) <= set(PHONES)
    assert set(phones.FLITE_TO_SHARED.values()) <= set(PHONES)
    assert set(phones.ARPABET) <= set(phones.FLITE_TO_SHARED.values())
    with pytest.raises(phones.UnknownPhone, match="no mapping"):
        phones.to_shared("espeak", "QQ")


def test_num_frames_matches_wav2vec2_geometry():
    assert num_frames(399) == 0
    assert num_frames(400) == 1
    assert num_frames(719) == 1
    assert num_frames(720) == 2
    assert num_frames(16000) == 49  # 1 s -> 49 frames, as the wav2vec2 conv stack gives


def test_frame_label_is_phone_at_frame_centre():
    # phones: sil [0, 500), AA [500, 1000), B [1000, ...)
    labels = frame_labels([0, 500, 1000], [0, 1, 7], 2000)
    centres = np.arange(num_frames(2000)) * 320 + 200
    expected = np.where(centres < 500, 0, np.where(centres < 1000, 1, 7))
    np.testing.assert_array_equal(labels, expected)
    # before the first phone is silence; a zero-length phone never wins
    np.testing.assert_array_equal(frame_labels([300, 600, 600], [5, 6, 9], 1040), [0, 5, 9])


def test_flite_segments_parse():
    text = "pau:0.164 hh:0.255 ax:0.304 junk l:x ow:0.548\n"
    assert flite.parse_segments(text) == [("pau", 0.164), ("hh", 0.255), ("ax", 0.304),
                                          ("ow", 0.548)]


def test_attach_prepauses_gives_closure_to_following_phone():
    audio = np.full(1000, 1000, dtype=np.int16)
    audio[400:600] = 0  # a closure ending exactly at the marker of 'k'
    audio[800:1000] = 0  # silence inside the final pause: stays with the pause
    marks = [("a", 0), ("k", 600), ("_:", 800)]
    assert render.attach_prepauses(audio, 22050, marks) == [0, 400, 800]
    # a run that covers the whole previous phone stops at that phone's start
    audio2 = np.full(1000, 1000, dtype=np.int16)
    audio2[300:600] = 0
    assert render.attach_prepauses(audio2, 22050, [("a", 0), ("l", 350), ("k", 600)]) == \
        [0, 350, 350]
    # after a pause phone, silence stays with the pause
    assert render.attach_prepauses(audio2, 22050, [("a", 0), ("_", 300), ("k", 600)]) == \
        [0, 300, 600]


def test_resampling_preserves_time():
    impulse = np.zeros(22050)
    impulse[11025] = 1.0
    out = render.resample(impulse, 22050)
    assert out.shape[0] == 16000
    assert int(np.argmax(np.abs(out))) == 8000


def test_plan_is_deterministic_balanced_and_text_disjoint():
    config = CorpusConfig(minutes=10, seed=3)
    specs = list(itertools.islice(plan_utterances(config), 400))
    assert specs == list(itertools.islice(plan_utterances(config), 400))
    assert len({s.text for s in specs}) == len(specs)
    estimated = {name: 0.0 for name, _ in config.splits}
    for spec in specs:
        estimated[spec.split] += len(spec.text.split())
    total = sum(estimated.values())
    for name, fraction in config.split_fractions().items():
        assert abs(estimated[name] / total - fraction) < 0.03
    assert {s.engine for s in specs} == {"espeak", "flite"}
    noisy = [s for s in specs if s.snr_db is not None]
    assert 0.15 < len(noisy) / len(specs) < 0.35
    assert all(10 <= s.snr_db <= 30 for s in noisy)


def test_heldout_voices_never_speak_in_train_or_valid():
    config = CorpusConfig(minutes=10, heldout_voices=("flite:slt", "espeak:en-us+f1"))
    specs = list(itertools.islice(plan_utterances(config), 600))
    training = {s.voice_id for s in specs if s.split in ("train", "valid")}
    evaluation = {s.voice_id for s in specs if s.split not in ("train", "valid")}
    assert not training & {"flite:slt", "espeak:en-us+f1"}
    assert {"flite:slt", "espeak:en-us+f1"} <= evaluation


@pytest.mark.parametrize("changes, message", [
    (dict(minutes=0), "minutes"),
    (dict(splits=(("train", 1.0), ("train", 1.0))), "duplicate"),
    (dict(splits=(("a/b", 1.0),)), "split name"),
    (dict(splits=(("train", 0.0),)), "fraction"),
    (dict(engines=("festival",)), "engines"),
    (dict(heldout_voices=("flite:nobody",)), "not in the voice list"),
    (dict(engines=("flite",), heldout_voices=("flite:kal16", "flite:awb", "flite:rms",
                                              "flite:slt")), "every voice"),
    (dict(speed_range=(1.2, 0.8)), "speed_range"),
    (dict(noise_prob=1.5), "noise_prob"),
    (dict(min_words=5, max_words=2), "min_words"),
])
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        CorpusConfig(**changes)


def test_cli_parses_splits_and_builds_config():
    parser = build_parser()
    args = parser.parse_args(["--out", "x", "--minutes", "2", "--splits", "train=3,valid=1",
                              "--engines", "espeak", "--speed-range", "0.9,1.1"])
    config = cli.config_from_args(args)
    assert config.split_fractions() == {"train": 0.75, "valid": 0.25}
    assert config.engines == ("espeak",)
    assert config.speed_range == (0.9, 1.1)
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_splits("train")
    # build_parser attaches to a given parser, or adds a "corpus" subcommand
    top = argparse.ArgumentParser()
    sub = top.add_subparsers(dest="command")
    build_parser(sub.add_parser("make-corpus"))
    assert top.parse_args(["make-corpus", "--out", "y"]).out == "y"
    build_parser(sub)
    parsed = top.parse_args(["corpus", "--out", "z", "--minutes", "3"])
    assert (parsed.command, parsed.out, parsed.minutes) == ("corpus", "z", 3.0)


def test_missing_flite_names_the_package(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(flite.shutil, "which", lambda name: None)
    with pytest.raises(EngineUnavailable, match="apt-get install flite"):
        check_engines(CorpusConfig(engines=("flite",)))
    args = build_parser().parse_args(["--out", str(tmp_path / "c"), "--engines", "flite"])
    assert run(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: flite not found") and "\n" not in error


def test_missing_espeak_library_names_the_package(monkeypatch):
    def no_library(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(espeak.ctypes, "CDLL", no_library)
    with pytest.raises(EngineUnavailable, match="apt-get install espeak-ng"):
        check_engines(CorpusConfig(engines=("espeak",)))


# ------------------------------------------------------------------------------ engines

@pytest.mark.speech
def test_espeak_is_deterministic_whatever_was_spoken_before():
    require("espeak-ng")
    spec = render.UtteranceSpec(0, "u0", "train", "The quick brown fox jumps over a lazy dog.",
                                "espeak", "en-us+m3", 1.0, 1.0, 0.0, None, 1)
    other = render.UtteranceSpec(1, "u1", "train", "Some clever sheep sang loudly.", "espeak",
                                 "en-gb-scotland+f1", 1.2, 1.1, -3.0, 20.0, 2)
    first = render.render(spec)
    render.render(other)
    second = render.render(spec)
    np.testing.assert_array_equal(first.audio, second.audio)
    np.testing.assert_array_equal(first.labels, second.labels)


@pytest.mark.speech
def test_every_default_espeak_voice_speaks_with_mapped_phones():
    require("espeak-ng")
    engine = espeak.server()
    assert engine.sample_rate == 22050
    text = "The curious child threw her yellow jacket beyond those quiet bridges again."
    for index, voice in enumerate(DEFAULT_ESPEAK_VOICES):
        assert engine.check_voice(voice) is None
        assert not espeak.variant_has_echo(engine.data_path, voice.partition("+")[2])
        spec = render.UtteranceSpec(index, f"u{index}", "train", text, "espeak", voice, 1.0, 1.0,
                                    0.0, None, index)
        rendered = render.render(spec)  # raises UnknownPhone on an unmapped symbol
        speech = [s.phone for s in rendered.segments if s.phone != "sil"]
        assert len(speech) > 30, voice
    assert "not found" in engine.check_voice("en-us+nosuchvariant")
    assert "no voice" in engine.check_voice("xx-nowhere")
    assert espeak.variant_has_echo(engine.data_path, "f2")


@pytest.mark.speech
def test_flite_voices_render_at_16k_with_labels():
    require("flite")
    for index, voice in enumerate(["kal", "kal16", "awb", "rms", "slt"]):
        spec = render.UtteranceSpec(index, f"u{index}", "train", "A small boat crossed the river.",
                                    "flite", voice, 1.1, 0.9, -2.0, 15.0, index)
        rendered = render.render(spec)
        assert rendered.audio.dtype == np.int16
        assert rendered.labels.shape[0] == num_frames(rendered.num_samples)
        assert rendered.segments[-1].end == rendered.num_samples
        assert {"sil", "S", "OW", "R"} <= {s.phone for s in rendered.segments}


@pytest.mark.speech
def test_added_noise_has_requested_snr():
    require("espeak-ng")
    base = dict(index=0, uid="u0", split="train", text="Several quiet farmers opened the gate.",
                engine="espeak", voice="en-us+m1", speed=1.0, pitch=1.0, gain_db=0.0,
                noise_seed=5)
    clean = render.render(render.UtteranceSpec(snr_db=None, **base))
    noisy = render.render(render.UtteranceSpec(snr_db=12.0, **base))
    speech = np.zeros(clean.num_samples, dtype=bool)
    for segment in clean.segments:
        if segment.phone != "sil":
            speech[segment.start:segment.end] = True
    signal = clean.audio.astype(np.float64)
    noise = noisy.audio.astype(np.float64) - signal
    snr = 10 * np.log10(np.mean(signal[speech] ** 2) / np.mean(noise ** 2))
    assert abs(snr - 12.0) < 0.5


# ------------------------------------------------------------------------------ the corpus

def _manifest(corpus: Path, split: str):
    lines = (corpus / f"{split}.tsv").read_text().splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def test_tiny_corpus_layout(tiny_corpus):
    record = json.loads((tiny_corpus / "corpus.json").read_text())
    assert record["settings"] == tiny_corpus_config().to_settings()
    assert record["sample_rate"] == 16000
    assert record["phones"] == list(PHONES)
    assert set(record["engines"]) == {"espeak", "flite"}
    assert (tiny_corpus / "phones.txt").read_text().split() == list(PHONES)
    total = 0.0
    for split, _ in TINY_CORPUS_SPLITS:
        root, rows = _manifest(tiny_corpus, split)
        assert root == str(tiny_corpus)
        assert len(rows) == record["splits"][split]["utterances"] >= 2
        labels = read_labels(tiny_corpus, split)
        assert len(labels) == len(rows)
        for (relative, count), frame_ids in zip(rows, labels):
            info = soundfile.info(str(tiny_corpus / relative))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.frames == int(count)
            assert frame_ids.shape[0] == (int(count) - 400) // 320 + 1
            assert frame_ids.min() >= 0 and frame_ids.max() < len(PHONES)
        total += sum(int(count) for _, count in rows) / 16000
        assert verify.check_label_files(tiny_corpus, split) == len(rows)
    assert abs(total - record["total_seconds"]) < 1e-3
    assert 90 <= total < 90 + 10  # stops at the first utterance that reaches 1.5 min
    assert len(list((tiny_corpus / "wav").iterdir())) == sum(
        record["splits"][s]["utterances"] for s, _ in TINY_CORPUS_SPLITS)
    assert not list(tiny_corpus.glob("tmp-*"))


def test_tiny_corpus_splits_have_disjoint_text(tiny_corpus):
    lines = (tiny_corpus / "utterances.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    texts = {}
    for row in rows:
        texts.setdefault(row["split"], set()).add(row["text"])
    for a, b in itertools.combinations(texts, 2):
        assert not texts[a] & texts[b]
    assert {row["engine"] for row in rows} == {"espeak", "flite"}


def test_tiny_corpus_labels_line_up_with_audio(tiny_corpus):
    """Acoustic check: silence quiet, vowels loud, sibilants high-frequency, best at ~0 shift."""
    for engine in ("espeak", "flite"):
        profile = verify.lag_profile(tiny_corpus, engine=engine, max_lag_ms=30)
        assert profile.utterances >= 3
        assert abs(profile.best_lag_ms) <= 5, (engine, profile)
        zero = profile.agreement[profile.lags_ms.index(0.0)]
        assert zero > profile.agreement[0] + 0.1 and zero > profile.agreement[-1] + 0.1


def test_regeneration_is_identical_with_any_job_count(tiny_corpus, tmp_path):
    info = generate_corpus(tiny_corpus_config(), tmp_path / "again", jobs=1)
    assert not info.reused
    for split, _ in TINY_CORPUS_SPLITS:
        assert (tmp_path / "again" / f"{split}.phn").read_bytes() == \
            (tiny_corpus / f"{split}.phn").read_bytes()
        _, rows = _manifest(tiny_corpus, split)
        _, rows_again = _manifest(tmp_path / "again", split)
        assert rows == rows_again
    for path in sorted((tiny_corpus / "wav").iterdir()):
        assert (tmp_path / "again" / "wav" / path.name).read_bytes() == path.read_bytes()


def test_same_settings_reuse_and_other_settings_refuse(tiny_corpus, capsys):
    stamp = (tiny_corpus / "corpus.json").stat().st_mtime_ns
    info = generate_corpus(tiny_corpus_config(), tiny_corpus, jobs=2)
    assert info.reused and "reused" in info.summary()
    assert (tiny_corpus / "corpus.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="--force"):
        generate_corpus(tiny_corpus_config(seed=1), tiny_corpus)
    args = build_parser().parse_args(
        ["--out", str(tiny_corpus), "--minutes", "1.5", "--min-words", "3", "--max-words", "8",
         "--splits", ",".join(f"{n}={f}" for n, f in TINY_CORPUS_SPLITS)])
    assert run(args) == 0
    assert capsys.readouterr().out.startswith("reused existing corpus")


def test_moved_corpus_gets_its_manifest_root_fixed(tiny_corpus, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(tiny_corpus, moved)
    info = generate_corpus(tiny_corpus_config(), moved)
    assert info.reused
    assert _manifest(moved, "heldout")[0] == str(moved)


@pytest.mark.speech
def test_module_runs_from_command_line(tmp_path):
    require("espeak-ng")
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "ssl_mi_callback.corpus", "--out", str(out), "--minutes",
               "0.1", "--engines", "espeak", "--splits", "train=0.5,heldout=0.5", "--jobs", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("generated corpus")
    assert (out / "heldout.tsv").is_file() and (out / "train.phn").is_file()
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.stdout.startswith("reused existing corpus")


def test_refuses_foreign_folder_and_force_replaces_a_corpus(tmp_path):
    require("espeak-ng")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "wav").mkdir()
    (foreign / "notes.txt").write_text("user data")
    small = dict(minutes=0.1, engines=("espeak",), splits=(("train", 0.5), ("test", 0.5)))
    with pytest.raises(FileExistsError, match="not empty and holds no corpus"):
        generate_corpus(CorpusConfig(**small), foreign, jobs=1)
    assert (foreign / "notes.txt").exists()

    corpus = tmp_path / "corpus"
    generate_corpus(CorpusConfig(**small), corpus, jobs=1)
    assert (corpus / "test.tsv").exists() and not (corpus / ".corpus-incomplete").exists()
    other = dict(small, seed=4, splits=(("train", 0.5), ("heldout", 0.5)))
    info = generate_corpus(CorpusConfig(**other), corpus, jobs=1, force=True)
    assert not info.reused
    assert not (corpus / "test.tsv").exists() and (corpus / "heldout.tsv").exists()
    uids = {line.split("\t")[0] for split in ("train", "heldout")
            for line in (corpus / f"{split}.tsv").read_text().splitlines()[1:]}
    assert {f"wav/{p.name}" for p in (corpus / "wav").iterdir()} == uids


def test_verify_command_reports_consistent_labels(tiny_corpus, capsys):
    assert verify.main([str(tiny_corpus), "--split", "heldout"]) == 0
    out = capsys.readouterr().out
    assert "heldout:" in out and "label files consistent" in out
    assert "espeak: best label shift" in out and "flite: best label shift" in out
