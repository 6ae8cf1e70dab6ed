"""Offline scoring pieces that need no training run: label files, label alignment, loaders, ranking."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from payloads import ExecPayload, SystemPayload
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl_mi_callback.labels import LABEL_FRAME_TOLERANCE, align_labels, parse_label_lines, read_frame_labels
from ssl_mi_callback.scoring import ranking, resolve_loader


def test_label_lines_parse_and_bad_tokens_name_their_line():
    rows = parse_label_lines("0 1 1 2\n\n39 0\n")
    assert [row.tolist() for row in rows] == [[0, 1, 1, 2], [], [39, 0]]
    for text, token in (("1 2\n3 -1\n", "'-1'"), ("1 x\n", "'x'"), ("1 99999999999999999999999\n", "'99999999999999999999'"),
                        ("1 2.5\n", "'2.5'"), ("1 ³\n", "'³'")):
        with pytest.raises(ValueError, match=f"line {text.count(chr(10)) if '-1' in text else 1}: {token}"):
            parse_label_lines(text)


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_label_parser_returns_ids_or_raises_value_error(text):
    try:
        rows = parse_label_lines(text)
    except ValueError as error:
        assert "\n" not in str(error)
        return
    assert all(row.dtype == np.int64 and (row >= 0).all() for row in rows)


def test_labels_are_matched_to_manifest_entries(tmp_path):
    (tmp_path / "heldout.tsv").write_text("/audio\na.wav\t16000\nsub/b.wav\t32000\n")
    (tmp_path / "heldout.phn").write_text("1 2 3\n4 5\n")
    labels = read_frame_labels(tmp_path / "heldout.phn", tmp_path / "heldout.tsv")
    assert {uid: row.tolist() for uid, row in labels.items()} == {"a.wav": [1, 2, 3], "sub/b.wav": [4, 5]}
    (tmp_path / "short.phn").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="has 1 label lines but .* has 2 entries"):
        read_frame_labels(tmp_path / "short.phn", tmp_path / "heldout.tsv")


def test_label_alignment_tolerates_a_partial_frame_and_refuses_foreign_labels():
    labels = np.arange(50)
    assert align_labels(labels, 49, 49).tolist() == list(range(49))
    assert align_labels(labels, 51, 51).tolist() == list(range(50)) + [49]
    assert align_labels(labels, 50, 25).tolist() == list(range(25))  # utterance cropped to its first 25 frames
    assert align_labels(labels, 50 + LABEL_FRAME_TOLERANCE + 1, 20) is None
    assert align_labels(np.array([], dtype=np.int64), 0, 0) is None


def test_loaders_by_family_or_user_function():
    from ssl_mi_callback.scoring import LOADERS

    assert resolve_loader("fairseq") is LOADERS["fairseq"]
    assert resolve_loader("ssl_mi_callback.scoring:load_fairseq") is LOADERS["fairseq"]
    with pytest.raises(ValueError, match="unknown model family 'espnet'"):
        resolve_loader("espnet")
    with pytest.raises(ValueError, match="cannot import the loader 'no_such_module:load'"):
        resolve_loader("no_such_module:load")


def test_ranking_puts_the_best_first_and_leaves_out_failures():
    records = [
        {"status": "ok", "step": 100, "metrics": {"mi_bits": 1.5}},
        {"status": "failed", "step": None, "metrics": {}},
        {"status": "ok", "step": 200, "metrics": {"mi_bits": 1.7}},
        {"status": "ok", "step": 300, "metrics": {"mi_bits": 1.7}},
        {"status": "ok", "step": 400, "metrics": {"mi_bits": float("nan")}},
    ]
    assert [r["step"] for r in ranking(records)] == [300, 200, 100]


def _score_cli(tmp_path, tiny_corpus, family, *checkpoints):
    from ssl_mi_callback.cli import main

    out = tmp_path / "scores.json"
    code = main(["score", *map(str, checkpoints), "--family", family, "--data", str(tiny_corpus / "heldout.tsv"),
                 "--labels", str(tiny_corpus / "heldout.phn"), "--clusters", "8", "--bootstrap", "20",
                 "--mask-length", "5", "--layers", "1,2", "--json", str(out)])
    return code, json.loads(out.read_text())


def test_score_torchaudio_checkpoints(tmp_path, tiny_corpus, one_torch_thread):
    """torchaudio models saved with their builder's arguments are rebuilt, scored and ranked."""
    require("torchaudio")
    import torch
    import torchaudio

    from ssl_mi_callback.scoring import save_torchaudio_checkpoint

    kwargs = dict(extractor_mode="group_norm", extractor_conv_layer_config=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
                  extractor_conv_bias=False, encoder_embed_dim=32, encoder_projection_dropout=0.0,
                  encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=2,
                  encoder_attention_dropout=0.0, encoder_ff_interm_features=64, encoder_ff_interm_dropout=0.0,
                  encoder_dropout=0.0, encoder_layer_norm_first=False, encoder_layer_drop=0.0, aux_num_out=None)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"seed{seed}.pt")
        save_torchaudio_checkpoint(str(paths[-1]), torchaudio.models.wav2vec2_model(**kwargs), "wav2vec2_model", kwargs, step=seed * 10)
    code, scores = _score_cli(tmp_path, tiny_corpus, "torchaudio", *paths)
    assert code == 0
    for record, step in zip(scores["checkpoints"], (0, 10)):
        assert record["status"] == "ok" and record["step"] == step and record["settings"]["adapter"] == "torchaudio"
        assert record["views"]["mask_placement"] == "waveform"
        assert 0.0 <= record["metrics"]["phone_accuracy_l2"] <= 1.0
    assert sorted(scores["ranking"]) == sorted(map(str, paths))


def test_score_hugging_face_model_directories(tmp_path, tiny_corpus, one_torch_thread):
    require("transformers")
    import torch
    import transformers

    config = transformers.Wav2Vec2Config(
        conv_dim=(32,) * 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, mask_time_prob=0.05,
    )
    torch.manual_seed(0)
    transformers.Wav2Vec2Model(config).save_pretrained(tmp_path / "model")
    (tmp_path / "not_a_model").mkdir()
    code, scores = _score_cli(tmp_path, tiny_corpus, "huggingface", tmp_path / "model", tmp_path / "not_a_model")
    assert code == 1  # one of the two failed
    good, bad = scores["checkpoints"]
    assert good["status"] == "ok" and good["settings"]["adapter"] == "huggingface" and good["views"]["mask_placement"] == "feature"
    assert bad["status"] == "failed" and "no config.json" in bad["error"]


# ------------------------------------------------------------------------------ safe loading
REPO = Path(__file__).resolve().parents[1]
TINY_WAV2VEC2 = dict(conv_feature_layers="[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2", encoder_layers=2,
                     encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=2, final_dim=32,
                     conv_pos=16, conv_pos_groups=4, quantize_targets=False)




def _fairseq_checkpoint(model_state: dict, update: int, payload=None) -> dict:
    """The layout fairseq 0.12.2 and our hook's export write (cfg as a plain dict, no pickled classes)."""
    extra_state = {"train_iterator": {"epoch": 1}}
    if payload is not None:
        extra_state["best"] = payload
    return {
        "args": None,
        "cfg": {"task": {"_name": "audio_pretraining", "data": "/nonexistent"}, "model": {"_name": "wav2vec2", **TINY_WAV2VEC2}},
        "model": model_state,
        "criterion": None,
        "optimizer_history": [{"criterion_name": None, "optimizer_name": None, "lr_scheduler_state": {}, "num_updates": update}],
        "task_state": {},
        "extra_state": extra_state,
    }


def _tiny_wav2vec2_state(seed: int = 0) -> dict:
    require("fairseq")
    import torch

    import ssl_mi_callback.integrations.fairseq  # noqa: F401  (compat before fairseq)
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(seed)
    return Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC2)).state_dict()


def _score_subprocess(tiny_corpus, family: str, *checkpoints) -> subprocess.CompletedProcess:
    """`ssl-mi score` in a fresh process (torch's safe loading left as it is)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ssl_mi_callback.cli", "score", *map(str, checkpoints), "--family", family,
               "--data", str(tiny_corpus / "heldout.tsv"), "--clusters", "8", "--bootstrap", "20", "--mask-length", "5",
               "--layers", "1,2", "--json", str(Path(checkpoints[0]).parent / "scores.json")]
    return subprocess.run(command, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600)


def _assert_refused(done: subprocess.CompletedProcess, record: dict, path: Path) -> None:
    assert record["status"] == "failed" and record["checkpoint"] == str(path)
    assert record["error"].startswith(f"UnsafeCheckpointError: refusing to load {path}"), record["error"]
    assert "unsupported global" in record["error"] and "\n" not in record["error"]
    printed = [line for line in done.stdout.splitlines() if line.startswith(f"failed: {path}:")]
    assert len(printed) == 1 and "refusing to load" in printed[0]
    assert "Traceback" not in done.stderr


def test_score_fairseq_refuses_code_carrying_checkpoints_and_scores_the_good_one(tmp_path, tiny_corpus):
    """A fairseq-shaped checkpoint whose pickle calls os.system or exec is a failed row with one line
    ("refusing to load ..."), its payload never runs, and a genuine checkpoint beside it is read by the
    same loader and scored."""
    import torch

    good = tmp_path / "checkpoint_good.pt"
    torch.save(_fairseq_checkpoint(_tiny_wav2vec2_state(), 30), good)
    markers = {name: tmp_path / f"pwned_{name}" for name in ("system", "exec")}
    evil = {name: tmp_path / f"checkpoint_{name}.pt" for name in markers}
    torch.save(_fairseq_checkpoint(_tiny_wav2vec2_state(), 40, SystemPayload(markers["system"])), evil["system"])
    torch.save(_fairseq_checkpoint(_tiny_wav2vec2_state(), 50, ExecPayload(markers["exec"])), evil["exec"])
    done = _score_subprocess(tiny_corpus, "fairseq", good, evil["system"], evil["exec"])
    assert done.returncode == 1, done.stderr[-3000:]  # some checkpoints failed
    records = json.loads((tmp_path / "scores.json").read_text())["checkpoints"]
    assert records[0]["status"] == "ok" and records[0]["step"] == 30, records[0]
    for record, name in zip(records[1:], ("system", "exec")):
        _assert_refused(done, record, evil[name])
    assert not any(marker.exists() for marker in markers.values())


def test_fairseq_loader_reads_the_weights_and_step_once(tmp_path, one_torch_thread):
    import torch

    from ssl_mi_callback.scoring import load_fairseq

    state = _tiny_wav2vec2_state(seed=3)
    path = tmp_path / "checkpoint_3_70.pt"
    torch.save(_fairseq_checkpoint(state, 70), path)
    loaded = load_fairseq(str(path), "cpu")
    assert loaded.step == 70 and not loaded.model.training
    assert all(torch.equal(loaded.model.state_dict()[name], tensor) for name, tensor in state.items())
    torch.save({"torchaudio_builder": "wav2vec2_model", "builder_kwargs": {}, "model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a fairseq checkpoint .*pass --family"):
        load_fairseq(str(tmp_path / "other.pt"), "cpu")


def test_weights_only_block_covers_every_torch_load_inside_it(tmp_path):
    """fairseq models may load a second file named in a checkpoint (e.g. w2v_path): inside the scoring
    loader's block every torch.load goes through our weights-only loader (the one-line refusal is ours,
    not torch's), whatever the caller asks."""
    require("fairseq")
    import torch

    from ssl_mi_callback.integrations.fairseq.safe_load import UnsafeCheckpointError, weights_only_torch_load

    marker, path = tmp_path / "pwned", tmp_path / "w2v.pt"
    torch.save({"model": {"w": torch.ones(2)}, "x": SystemPayload(marker)}, path)
    original = torch.load
    with weights_only_torch_load():
        with pytest.raises(UnsafeCheckpointError, match="unsupported global posix.system") as caught:
            torch.load(str(path))  # as fairseq calls it: no weights_only
        assert "\n" not in str(caught.value)
        with open(path, "rb") as handle, pytest.raises(UnsafeCheckpointError, match="refusing to load .*w2v.pt"):
            torch.load(handle, map_location="cpu")
        with pytest.raises(UnsafeCheckpointError, match="asks for weights_only=False"):
            torch.load(str(path), weights_only=False)
        torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
        assert torch.equal(torch.load(str(tmp_path / "plain.pt"))["w"], torch.ones(2))
    assert torch.load is original
    assert not marker.exists()


def test_score_torchaudio_refuses_a_code_carrying_checkpoint(tmp_path, tiny_corpus):
    require("torchaudio")
    import torch

    marker, path = tmp_path / "pwned", tmp_path / "evil_torchaudio.pt"
    torch.save({"torchaudio_builder": "wav2vec2_model", "builder_kwargs": {}, "step": 1, "model": {},
                "note": SystemPayload(marker)}, path)
    done = _score_subprocess(tiny_corpus, "torchaudio", path)
    assert done.returncode == 1, done.stderr[-3000:]
    _assert_refused(done, json.loads((tmp_path / "scores.json").read_text())["checkpoints"][0], path)
    assert not marker.exists()


def test_score_hugging_face_refuses_a_code_carrying_bin_file(tmp_path, tiny_corpus):
    """transformers reads pytorch_model.bin with weights_only=True passed explicitly; the refusal is one line."""
    require("transformers")
    import torch
    import transformers

    config = transformers.Wav2Vec2Config(conv_dim=(32,) * 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    directory = tmp_path / "model"
    model = transformers.Wav2Vec2Model(config)
    model.save_pretrained(directory)
    for weights in directory.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "pwned"
    torch.save({**model.state_dict(), "note": SystemPayload(marker)}, directory / "pytorch_model.bin")
    done = _score_subprocess(tiny_corpus, "huggingface", directory)
    assert done.returncode == 1, done.stderr[-3000:]
    record = json.loads((tmp_path / "scores.json").read_text())["checkpoints"][0]
    _assert_refused(done, record, directory)
    assert not marker.exists()
