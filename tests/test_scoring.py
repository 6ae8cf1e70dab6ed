"""Offline scoring pieces that need no training run: label files, label alignment, loaders, ranking."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import require
from hypothesis import given
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
    import json

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
