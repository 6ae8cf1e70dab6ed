"""`ssl-mi estimate`: JSON fields, summary, exit code 2 with a one-line error on bad input."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssl_mi_callback.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def arrays(tmp_path, two_views):
    za, zb, groups, s, _ = two_views(8, n_utterances=20, frames_per_utterance=30, dims_a=6, dims_b=10)
    paths = {}
    arrays = {"za": za, "zb": zb, "groups": groups, "labels": s, "float_labels": s.astype(np.float32)}
    for name, array in arrays.items():
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], array)
    (tmp_path / "garbage.npy").write_text("not an array")
    paths["garbage"] = str(tmp_path / "garbage.npy")
    return paths


def unsupervised_args(paths, *extra):
    return ["estimate", "--za", paths["za"], "--zb", paths["zb"], "--groups", paths["groups"], *extra]


def test_unsupervised_json(arrays, capsys):
    assert main(unsupervised_args(arrays, "--clusters", "8", "--bootstrap", "100", "--seed", "3", "--json")) == 0
    fields = json.loads(capsys.readouterr().out)
    assert fields["estimator"] == "unsupervised"
    assert {"mi_bits", "h_c_bits", "ce_bits", "mi_normalized", "ci95_bits", "n_frames_fit", "n_frames_eval",
            "n_utterances_fit", "n_utterances_eval", "clusters", "probe", "seed", "dropped_nonfinite"} <= set(fields)
    assert fields["clusters"] == 8 and fields["seed"] == 3 and fields["bootstrap"] == 100
    assert fields["mi_bits"] > 2.8  # 8 separable states: 3 bits


def test_supervised_json_with_mlp_probe(arrays, capsys):
    argv = ["estimate", "--z", arrays["za"], "--labels", arrays["labels"], "--groups", arrays["groups"]]
    assert main(argv + ["--probe", "mlp", "--json"]) == 0
    fields = json.loads(capsys.readouterr().out)
    assert fields["estimator"] == "supervised" and fields["probe"] == "mlp"
    assert {"mi_bits", "h_y_bits", "ce_bits", "accuracy", "ci95_bits", "n_classes"} <= set(fields)
    assert fields["accuracy"] > 0.99


def test_summary_without_json(arrays, capsys):
    assert main(unsupervised_args(arrays, "--clusters", "8", "--bootstrap", "0")) == 0
    out = capsys.readouterr().out
    assert out.startswith("I(Za; c(Zb)) >= ") and "plug-in H(c) " in out and "CI" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (lambda p: unsupervised_args(p, "--clusters", "8") + ["--z", p["za"]], "give either --za and --zb"),
        (lambda p: ["estimate", "--groups", p["groups"]], "give either --za and --zb"),
        (lambda p: ["estimate", "--za", p["za"], "--groups", p["groups"]], "needs both --za and --zb"),
        (lambda p: ["estimate", "--za", p["za"], "--zb", "missing.npy", "--groups", p["groups"]], "--zb: no such file"),
        (lambda p: ["estimate", "--za", p["garbage"], "--zb", p["zb"], "--groups", p["groups"]], "--za: cannot read"),
        (lambda p: ["estimate", "--z", p["za"], "--labels", p["float_labels"], "--groups", p["groups"]],
         "labels must hold integer ids"),
        (lambda p: unsupervised_args(p, "--clusters", "400"), "fewer than clusters=400"),
        (lambda p: ["estimate", "--z", p["za"], "--labels", p["labels"], "--groups", p["groups"], "--clusters", "8"],
         "--clusters applies only"),
        (lambda p: unsupervised_args(p, "--probe", "svm"), "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(arrays, capsys, argv, message):
    assert main(argv(arrays)) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_console_script_runs_as_a_subprocess(arrays):
    script = Path(sys.executable).with_name("ssl-mi")
    if not script.exists():
        pytest.skip(f"console script not installed at {script} (pip install -e .)")
    done = subprocess.run(
        [str(script), *unsupervised_args(arrays, "--clusters", "8", "--bootstrap", "50", "--json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["clusters"] == 8
    failed = subprocess.run([str(script), "estimate", "--groups", "nowhere.npy", "--z", "a", "--labels", "b"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert failed.returncode == 2
    assert failed.stderr.strip().count("\n") == 0 and "no such file" in failed.stderr
