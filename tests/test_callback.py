"""The framework-free hook's export of the best weights: a failure of any kind is logged, kept in the
record and training goes on (``strict``: raised), and the previous export stays whole. A real (tiny,
randomly initialised, pure torch) conv encoder, real generated speech, real files."""
from __future__ import annotations

import json
import logging
import pickle

import pytest
import torch

HOP, WINDOW = 320, 400  # 20 ms frames of 25 ms at 16 kHz


class TinyConvEncoder(torch.nn.Module):
    """A conv front end (25 ms windows, 20 ms hop) and two context layers (conv over 5 frames).

    ``extra_state`` is what the module returns from ``get_extra_state`` (torch puts it in
    ``state_dict()`` as ``_extra_state``): None (no entry), a plain value, or a callable, which is
    called, so that it can raise as a real module's state hook can.
    """

    def __init__(self, dim: int = 32, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.front = torch.nn.Conv1d(1, dim, WINDOW, stride=HOP)
        self.layers = torch.nn.ModuleList(torch.nn.Conv1d(dim, dim, 5, padding=2) for _ in range(2))
        self.extra_state = None

    def layer_outputs(self, waveforms: torch.Tensor) -> list[torch.Tensor]:
        hidden, outputs = torch.relu(self.front(waveforms.unsqueeze(1))), []
        for layer in self.layers:
            hidden = torch.relu(layer(hidden)) + hidden
            outputs.append(hidden.transpose(1, 2))  # [B, F, D]
        return outputs

    def get_extra_state(self):
        return self.extra_state() if callable(self.extra_state) else self.extra_state

    def set_extra_state(self, state) -> None:
        self.extra_state = state

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        if self.extra_state is None:
            state.pop("_extra_state", None)
        return state


@pytest.fixture(scope="module")
def subset(tiny_corpus):
    from ssl_mi_callback.data import load_heldout

    return load_heldout(tiny_corpus / "heldout.tsv")


def make_callback(subset, tmp_path, export_best, *, strict: bool = False, history: str = "history.jsonl"):
    from ssl_mi_callback.callback import MICallback
    from ssl_mi_callback.evaluator import EvaluationConfig, Evaluator
    from ssl_mi_callback.features.generic import FunctionAdapter
    from ssl_mi_callback.selector import CheckpointSelector, SelectionConfig

    adapter = FunctionAdapter(lambda model, waveforms: model.layer_outputs(waveforms), num_layers=2, frame_hop=HOP,
                              frame_length=WINDOW, num_frames=lambda samples: (samples - WINDOW) // HOP + 1)
    evaluator = Evaluator(EvaluationConfig(clusters=8, bootstrap=20, mask_length=5), subset, adapter)
    selector = CheckpointSelector(SelectionConfig(), history_path=tmp_path / history)
    return MICallback(evaluator, selector, strict=strict, export_best=export_best)


def _unpicklable():
    return {"scale": lambda x: 2 * x}  # a local function: torch.save cannot pickle it


def _raises():
    raise RuntimeError("extra state needs the process group, which is gone")


# name -> (how to break the export, the exception it raises, a fragment of its reason)
FAILURES = {
    "torch.save fails": (lambda model, path: setattr(model, "extra_state", _unpicklable),
                         (pickle.PicklingError, AttributeError), "local object"),  # "Can't pickle/get local object"
    "state_dict raises": (lambda model, path: setattr(model, "extra_state", _raises), RuntimeError, "process group"),
    "path under a file": (lambda model, path: None, OSError, "not_a_folder"),
}


def _export_path(tmp_path, failure: str):
    if failure == "path under a file":
        (tmp_path / "not_a_folder").write_text("a file where the export folder should be")
        return tmp_path / "not_a_folder" / "best.pt"
    return tmp_path / "best.pt"


@pytest.mark.parametrize("failure", list(FAILURES))
def test_failed_export_is_logged_recorded_and_training_goes_on(subset, tmp_path, caplog, failure, one_torch_thread):
    from ssl_mi_callback.selector import read_sidecar

    export = _export_path(tmp_path, failure)
    if failure != "path under a file":  # a previous best, exported by an earlier run of the hook
        earlier = TinyConvEncoder(seed=1)
        earlier.extra_state = {"scale": 2.0}  # a plain extra state is exported as it is
        first = make_callback(subset, tmp_path, export, history="earlier.jsonl").evaluate(earlier, step=10)
        assert first["is_best"] and "export_error" not in first
        previous_bytes = export.read_bytes()
    model = TinyConvEncoder(seed=0)
    break_export, _, fragment = FAILURES[failure]
    break_export(model, export)
    callback = make_callback(subset, tmp_path, export)
    caplog.set_level(logging.WARNING, logger="ssl_mi_callback")
    record = callback.evaluate(model, step=20)
    assert record["status"] == "ok" and record["is_best"]
    assert fragment in record["export_error"] and "\n" not in record["export_error"]
    warnings = [r.getMessage() for r in caplog.records if "export" in r.getMessage()]
    assert len(warnings) == 1 and "failed, training continues" in warnings[0] and record["export_error"] in warnings[0]
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [(r["step"], r["status"]) for r in history] == [(20, "ok")]
    assert callback.on_step(model, 21) is None and callback.selector.best["step"] == 20  # the run goes on
    if failure == "path under a file":
        assert not export.parent.is_dir()
        return
    assert export.read_bytes() == previous_bytes  # the previous best is whole, with its own sidecar
    assert read_sidecar(export, verify=True)["step"] == 10
    saved = torch.load(export, weights_only=True)
    assert saved["_extra_state"] == {"scale": 2.0}
    assert torch.equal(saved["front.weight"], TinyConvEncoder(seed=1).front.weight)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.lstrip(".").startswith("best"))
    assert left == ["best.json", "best.pt"]  # no temp file (".best.pt.<hex>...") left behind


@pytest.mark.parametrize("failure", list(FAILURES))
def test_strict_export_failure_is_raised(subset, tmp_path, failure, one_torch_thread):
    export = _export_path(tmp_path, failure)
    model = TinyConvEncoder(seed=0)
    break_export, error_type, fragment = FAILURES[failure]
    break_export(model, export)
    callback = make_callback(subset, tmp_path, export, strict=True)
    with pytest.raises(error_type, match=fragment):
        callback.evaluate(model, step=20)
    assert not export.exists()


def test_a_working_export_has_no_error_and_loads_weights_only(subset, tmp_path, one_torch_thread):
    from ssl_mi_callback.selector import read_sidecar

    model = TinyConvEncoder(seed=0)
    record = make_callback(subset, tmp_path, tmp_path / "out" / "best.pt").evaluate(model, step=5)
    assert record["is_best"] and "export_error" not in record
    saved = torch.load(tmp_path / "out" / "best.pt", weights_only=True)
    assert set(saved) == set(model.state_dict()) and "_extra_state" not in saved
    assert read_sidecar(tmp_path / "out" / "best.pt", verify=True)["score"] == record["metrics"]["mi_bits"]
