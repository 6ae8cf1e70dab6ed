"""``ssl-mi plot`` on a history written by the real callback and selector: tiny randomly initialised
fairseq wav2vec 2.0 models (one per "checkpoint") scored on real generated speech, one of them
broken (NaN weights) so that the history also holds a failed evaluation."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch

from conftest import require

TINY_CONV = "[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2"
OK_STEPS = (10, 20, 40, 50)
FAILED_STEP = 30
PNG_SHAPE = (600, 1200, 4)  # FIGURE_INCHES * FIGURE_DPI, RGBA


def tiny_wav2vec2(seed: int) -> torch.nn.Module:
    import ssl_mi_callback.integrations.fairseq  # noqa: F401  (compat before fairseq)
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        conv_feature_layers=TINY_CONV, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
        encoder_attention_heads=2, final_dim=32, conv_pos=16, conv_pos_groups=4, quantize_targets=False,
    )
    torch.manual_seed(seed)
    return Wav2Vec2Model(config)


def make_callback(tiny_corpus, history_path: Path):
    from ssl_mi_callback.callback import MICallback
    from ssl_mi_callback.data import load_heldout
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features.fairseq import FairseqMaskedPredictionAdapter
    from ssl_mi_callback.selector import CheckpointSelector, SelectionConfig

    config = EvaluationConfig(clusters=8, bootstrap=50, mask_length=5, layers=(1, 2), selection="mean")
    evaluator = Evaluator(config, load_heldout(tiny_corpus / "heldout.tsv"), FairseqMaskedPredictionAdapter())
    return MICallback(evaluator, CheckpointSelector(SelectionConfig(), history_path=history_path))


def broken_model() -> torch.nn.Module:
    """A model whose features are NaN: its evaluation fails and is recorded as failed."""
    model = tiny_wav2vec2(seed=99)
    with torch.no_grad():
        model.layer_norm.weight.fill_(float("nan"))
    return model


@pytest.fixture(scope="module")
def history(tiny_corpus, tmp_path_factory):
    """(path, callback, records returned by the callback) of a 5-evaluation history, one failed."""
    require("fairseq", "matplotlib")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = tmp_path_factory.mktemp("plot") / "mi_history.jsonl"
        callback = make_callback(tiny_corpus, path)
        models = [tiny_wav2vec2(seed) for seed in range(len(OK_STEPS))]
        # Put the model with the highest MI second, so that neither the first nor the last point is the best.
        scores = [callback.evaluator.evaluate(model)["metrics"]["mi_bits"] for model in models]
        best = models.pop(scores.index(max(scores)))
        models.insert(1, best)
        checkpoints = dict(zip(OK_STEPS, models))
        checkpoints[FAILED_STEP] = broken_model()
        returned = [callback.evaluate(checkpoints[step], step=step) for step in sorted(checkpoints)]
    finally:
        torch.set_num_threads(previous_threads)
    assert [r["status"] for r in returned].count("failed") == 1
    assert callback.selector.best["step"] == OK_STEPS[1]
    return path, callback, returned


def run_cli(*args: str) -> int:
    from ssl_mi_callback.cli import main

    return main(["plot", *args])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ssl-mi plot: error: ")
    return lines[0]


def test_data_and_figure_mark_the_selectors_best_and_the_failed_evaluation(history):
    from ssl_mi_callback.plot import BEST_MARKER_GID, FAILED_MARKER_GID, draw_history, history_plot_data
    from ssl_mi_callback.report import read_history

    path, callback, returned = history
    records = read_history(str(path))
    assert [r["step"] for r in records] == sorted(OK_STEPS + (FAILED_STEP,))
    data = history_plot_data(records)

    ok = [r for r in records if r["status"] == "ok"]
    highest = max(r["metrics"]["mi_bits"] for r in ok)
    expected_best_step = max(r["step"] for r in ok if r["metrics"]["mi_bits"] == highest)  # ties: the later
    assert data.best_step == expected_best_step == callback.selector.best["step"]
    assert [r["step"] for r in returned if r["is_best"]][-1] == data.best_step  # the callback's own decisions
    assert data.best_value == highest
    assert data.failed_steps == (FAILED_STEP,)
    assert data.layers == (1, 2) and data.evaluations == len(OK_STEPS) + 1
    for layer in (1, 2):
        series, band = data.mi[layer], data.bands[layer]
        assert series.steps == OK_STEPS == band.steps
        assert series.values == tuple(r["metrics"][f"mi_bits_l{layer}"] for r in ok)
        assert all(low <= value <= high for low, value, high in zip(band.low, series.values, band.high))
    assert set(data.baselines) == {"rankme", "rankme_t", "kmeans_inertia_eval"}
    assert data.baselines["rankme"][2].values == tuple(r["metrics"]["rankme_l2"] for r in ok)

    figure = draw_history(data)
    best_markers = [line for axes in figure.axes for line in axes.lines if line.get_gid() == BEST_MARKER_GID]
    assert len(best_markers) == 1
    assert list(best_markers[0].get_xdata()) == [data.best_step]
    assert list(best_markers[0].get_ydata()) == [data.best_value]
    # selection "mean" differs from both layer curves, so the selection curve is drawn on the MI panel too
    mi_axes = best_markers[0].axes
    assert any(line.get_label() == "mi_bits (selection value)" and tuple(line.get_xdata()) == OK_STEPS for line in mi_axes.lines)
    failed = [line for axes in figure.axes for line in axes.lines if line.get_gid() == FAILED_MARKER_GID]
    assert len(failed) == len(figure.axes) == 4  # MI + RankMe + RankMe-t + inertia
    assert all(list(line.get_xdata()) == [FAILED_STEP] for line in failed)


def test_cli_writes_png_pdf_and_svg(history, tmp_path, capsys):
    import matplotlib.image

    path, callback, _ = history
    best_step = callback.selector.best["step"]
    png = tmp_path / "history.png"
    assert run_cli(str(path), "-o", str(png)) == 0
    assert f"at step {best_step}" in capsys.readouterr().out
    image = matplotlib.image.imread(png)
    assert image.shape == PNG_SHAPE
    assert image[..., :3].std() > 0.05  # drawn on, not blank

    pdf = tmp_path / "history.pdf"
    assert run_cli(str(path), "-o", str(pdf)) == 0
    assert pdf.read_bytes().startswith(b"%PDF-")

    svg = tmp_path / "history.SVG"  # the extension is matched case-insensitively
    assert run_cli(str(path), "-o", str(svg)) == 0
    ids = {element.get("id") for element in ElementTree.parse(svg).iter()}
    assert {"best", "failed"} <= ids


def test_metric_mode_and_layers_choose_the_marked_point(history, tmp_path, capsys):
    from ssl_mi_callback.plot import BEST_MARKER_GID, draw_history, history_plot_data
    from ssl_mi_callback.report import read_history

    path, _, _ = history
    records = [r for r in read_history(str(path)) if r["status"] == "ok"]
    lowest = min(r["metrics"]["kmeans_inertia_eval_l1"] for r in records)
    expected = max(r["step"] for r in records if r["metrics"]["kmeans_inertia_eval_l1"] == lowest)

    data = history_plot_data(read_history(str(path)), metric="kmeans_inertia_eval_l1", layers=[1], mode="min")
    assert (data.best_step, data.best_value) == (expected, lowest)
    assert data.layers == (1,) and set(data.mi) == {1}
    marker = next(line for axes in draw_history(data).axes for line in axes.lines if line.get_gid() == BEST_MARKER_GID)
    assert marker.axes.get_ylabel() == "k-means inertia (eval)"  # on the inertia panel, not the MI panel

    out = tmp_path / "inertia.png"
    assert run_cli(str(path), "-o", str(out), "--metric", "kmeans_inertia_eval_l1", "--mode", "min", "--layers", "1") == 0
    assert f"best kmeans_inertia_eval_l1 {lowest:.4f} at step {expected}" in capsys.readouterr().out
    highest_l1 = max(r["metrics"]["mi_bits_l1"] for r in records)
    assert run_cli(str(path), "-o", str(out), "--metric", "mi_bits_l1", "--layers", "1,2") == 0
    assert f"best mi_bits_l1 {highest_l1:.4f}" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(history, tiny_corpus, tmp_path, capsys):
    path, _, _ = history
    out = str(tmp_path / "out.png")
    assert run_cli(str(tmp_path / "missing.jsonl"), "-o", out) == 2
    assert "no such history file" in one_error_line(capsys)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run_cli(str(empty), "-o", out) == 2
    assert "no records" in one_error_line(capsys)

    all_failed = tmp_path / "all_failed" / "mi_history.jsonl"
    make_callback(tiny_corpus, all_failed).evaluate(broken_model(), step=5)
    assert run_cli(str(all_failed), "-o", out) == 2
    assert "no successful evaluation" in one_error_line(capsys)

    assert run_cli(str(path), "-o", out, "--metric", "mi_bit") == 2
    assert "unknown metric 'mi_bit' (did you mean mi_bits?)" in one_error_line(capsys)
    assert run_cli(str(path), "-o", out, "--layers", "3") == 2
    assert "layer 3 is not in the history; its scored layers are 1, 2" in one_error_line(capsys)
    assert run_cli(str(path), "-o", out, "--layers", "x") == 2
    assert "--layers: 'x' is not a layer number" in one_error_line(capsys)
    assert run_cli(str(path), "-o", str(tmp_path / "out.jpg")) == 2
    assert "end it in .png, .pdf or .svg" in one_error_line(capsys)
    assert run_cli(str(path), "-o", str(tmp_path / "no_such_folder" / "out.png")) == 2
    assert "does not exist" in one_error_line(capsys)
    assert not (tmp_path / "out.png").exists()


def test_without_matplotlib_the_error_says_what_to_install(history, tmp_path):
    """A fresh interpreter in which importing matplotlib fails, as on an install without the extra."""
    path, _, _ = history
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"  # makes every 'import matplotlib...' raise ImportError
        "from ssl_mi_callback.cli import main\n"
        f"sys.exit(main(['plot', {str(path)!r}, '-o', {str(tmp_path / 'out.png')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "ssl-mi plot: error: drawing needs matplotlib, which is not installed: pip install 'ssl_mi_callback[plot]'"
    )
    assert not (tmp_path / "out.png").exists()
