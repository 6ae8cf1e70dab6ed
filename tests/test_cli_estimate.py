"""`ssl-mi estimate`: JSON fields, summary, exit code 2 with a one-line error on bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssl_mi_callback.cli import CommandError, estimate_json, main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def arrays(tmp_path, two_views):
    """Good arrays (600 frames, 20 utterances, 8 states) and one bad variant per input error, as .npy files."""
    za, zb, groups, s, _ = two_views(8, n_utterances=20, frames_per_utterance=30, dims_a=6, dims_b=10)
    huge_label = s.copy()
    huge_label[5] = 10**12
    arrays = {
        "za": za, "zb": zb, "groups": groups, "labels": s, "float_labels": s.astype(np.float32),
        "za_short": za[:-1], "za_nan": np.full_like(za, np.nan), "za_inf": np.full_like(za, np.inf),
        "za_huge": np.full_like(za, 3e38), "zb_huge": np.full_like(zb, 3e38), "za_1d": za[:, 0],
        "za_empty": np.zeros((0, 6), np.float32), "za_no_dims": np.zeros((600, 0), np.float32),
        "za_int": za.astype(np.int64), "za_bool": za > 0, "za_complex": za.astype(np.complex64),
        "za_str": za.astype(str), "groups_one": np.zeros_like(groups), "groups_float": groups.astype(np.float64),
        "groups_empty": np.zeros(0, np.int64), "groups_2d": groups[:, None], "labels_negative": s - 1,
        "labels_huge": huge_label, "labels_empty": np.zeros(0, np.int64),
    }  # fmt: skip
    paths = {}
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


def supervised_args(paths, z="za", labels="labels", groups="groups"):
    return ["estimate", "--z", paths[z], "--labels", paths[labels], "--groups", paths[groups], "--bootstrap", "0"]


def views_args(paths, za="za", zb="zb", groups="groups"):
    return ["estimate", "--za", paths[za], "--zb", paths[zb], "--groups", paths[groups], "--clusters", "8",
            "--bootstrap", "0"]  # fmt: skip


# One case per input error of the issue (and tests/test_estimators_validation.py), through the CLI.
BAD_INPUT = {
    "features and ids together": (lambda p: unsupervised_args(p, "--clusters", "8") + ["--z", p["za"]], "give either --za and --zb"),
    "no features": (lambda p: ["estimate", "--groups", p["groups"]], "give either --za and --zb"),
    "one view only": (lambda p: ["estimate", "--za", p["za"], "--groups", p["groups"]], "needs both --za and --zb"),
    "missing file": (lambda p: views_args(p) + ["--zb", "missing.npy"], "--zb: no such file"),
    "not a .npy file": (lambda p: views_args(p, za="garbage"), "--za: cannot read"),
    "clusters with labels": (lambda p: supervised_args(p) + ["--clusters", "8"], "--clusters applies only"),
    "mismatched lengths": (lambda p: views_args(p, za="za_short"), "lengths differ: za=599, zb=600, groups=600"),
    "mismatched label length": (lambda p: supervised_args(p, z="za_short"), "lengths differ: z=599, labels=600"),
    "NaN frames": (lambda p: views_args(p, za="za_nan"), "no finite frames remain"),
    "inf frames": (lambda p: supervised_args(p, z="za_inf"), "no finite frames remain"),
    "frames too large for float32 in za": (lambda p: views_args(p, za="za_huge"), "too large for float32 arithmetic"),
    "frames too large for float32 in zb": (lambda p: views_args(p, zb="zb_huge"), "rescale the features"),
    "frames too large for float32 in z": (lambda p: supervised_args(p, z="za_huge"), "rescale the features"),
    "fewer frames than clusters": (lambda p: unsupervised_args(p, "--clusters", "400"), "fewer than clusters=400"),
    "single utterance": (lambda p: views_args(p, groups="groups_one"), "single utterance"),
    "single utterance, supervised": (lambda p: supervised_args(p, groups="groups_one"), "single utterance"),
    "empty features": (lambda p: views_args(p, za="za_empty"), "za is empty"),
    "features without dims": (lambda p: supervised_args(p, z="za_no_dims"), "z is empty"),
    "empty groups": (lambda p: views_args(p, groups="groups_empty"), "groups is empty"),
    "empty labels": (lambda p: supervised_args(p, labels="labels_empty"), "labels is empty"),
    "1-D features": (lambda p: views_args(p, za="za_1d"), "za must be 2-D"),
    "2-D groups": (lambda p: views_args(p, groups="groups_2d"), "groups must be 1-D"),
    "integer features": (lambda p: views_args(p, zb="za_int"), "zb must hold floating-point features, got dtype int64"),
    "boolean features": (lambda p: supervised_args(p, z="za_bool"), "z must hold floating-point features, got dtype bool"),
    "complex features": (lambda p: views_args(p, za="za_complex"), "za must be numeric, got dtype complex64"),
    "string features": (lambda p: views_args(p, za="za_str"), "za must be numeric, got dtype <U"),
    "float groups": (lambda p: views_args(p, groups="groups_float"), "groups must hold integer ids, got dtype float64"),
    "float labels": (lambda p: supervised_args(p, labels="float_labels"), "labels must hold integer ids"),
    "negative labels": (lambda p: supervised_args(p, labels="labels_negative"), "labels must be non-negative, got minimum -1"),
    "label id far beyond the frames": (lambda p: supervised_args(p, labels="labels_huge"),
                                       "class ids must be dense 0..n-1 with n <= 65536"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_one_line(arrays, capsys, case):
    make_argv, message = BAD_INPUT[case]
    assert main(make_argv(arrays)) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssl-mi estimate: error: "), captured.err
    assert message in lines[0]
    assert captured.out == ""


def test_usage_error_ends_with_one_error_line(arrays, capsys):
    """argparse's own errors: its usage block, then one error line."""
    assert main(unsupervised_args(arrays, "--probe", "svm")) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("usage: ssl-mi estimate") and captured.out == ""
    assert captured.err.splitlines()[-1].startswith("ssl-mi estimate: error: argument --probe: invalid choice: 'svm'")


def test_frames_too_large_for_float32_are_dropped_and_counted(arrays, tmp_path, capsys):
    zb = np.load(arrays["zb"])
    zb[:30] = 3e38  # the first utterance
    np.save(tmp_path / "zb_some_huge.npy", zb)
    assert main(views_args(arrays, zb="zb") + ["--zb", str(tmp_path / "zb_some_huge.npy"), "--json"]) == 0
    fields = json.loads(capsys.readouterr().out)  # strict JSON: json.loads would accept NaN, so check it too
    assert fields["dropped_nonfinite"] == 30 and fields["n_frames_fit"] + fields["n_frames_eval"] == 570
    assert all(np.isfinite(value) for value in fields.values() if isinstance(value, float))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_estimate_is_an_error_not_json(value):
    fields = {"estimator": "unsupervised", "mi_bits": 1.5, "ci95_bits": [1.0, 2.0], "kmeans_inertia_eval": value,
              "mi_normalized": None}  # fmt: skip
    with pytest.raises(CommandError, match=rf"the estimate is not finite \(kmeans_inertia_eval={value}\); .* rescale"):
        estimate_json(fields)
    with pytest.raises(CommandError, match=r"\(ci95_bits=\[1.0, nan\]\)"):
        estimate_json({**fields, "kmeans_inertia_eval": 2.0, "ci95_bits": [1.0, float("nan")]})
    assert json.loads(estimate_json({**fields, "kmeans_inertia_eval": 2.0}))["mi_normalized"] is None


def skip_or_fail(message: str) -> None:
    """conftest.require's rule for a missing part: skip on a user's machine, fail under CI=true."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("required for CI: " + message, pytrace=False)
    pytest.skip(message)


def test_console_script_runs_as_a_subprocess(arrays):
    script = Path(sys.executable).with_name("ssl-mi")
    if not script.exists():
        skip_or_fail(f"console script ssl-mi not installed at {script} (pip install -e . or run scripts/setup_env.sh)")
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
    deep = subprocess.run([str(script), *views_args(arrays, za="za_huge")], capture_output=True, text=True, timeout=120)
    assert deep.returncode == 2 and deep.stdout == ""  # an error from inside the estimator, in a real process:
    assert deep.stderr.startswith("ssl-mi estimate: error: no usable frames") and deep.stderr.count("\n") == 1
