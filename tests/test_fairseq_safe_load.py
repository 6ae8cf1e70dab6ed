"""Safe loading of fairseq checkpoints (torch weights_only=True + an exact-class allowlist).

Fast tests build checkpoint-shaped files by hand: malicious pickles must be refused without their
payload running, fairseq's Dictionary must load. Slow tests train the tiny wav2vec 2.0 and HuBERT
recipes for 20 updates on a few espeak-ng utterances through our fairseq-hydra-train drop-in and load
the real checkpoints both with our loader and with fairseq's own.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from payloads import ExecPayload, SystemPayload

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "fairseq"
UPDATES = 20


@pytest.fixture(scope="module")
def safe_load():
    require("fairseq")
    from ssl_mi_callback.integrations.fairseq import safe_load

    return safe_load


def _fairseq_shaped(payload) -> dict:
    import torch

    return {
        "args": None,
        "cfg": {"task": {"_name": "audio_pretraining"}},
        "model": {"w": torch.zeros(3)},
        "task_state": {},
        "extra_state": {"train_iterator": {"epoch": 1}, "best": payload},
    }


def _fairseq_shaped_plain(payload) -> dict:
    return {"args": None, "model": {}, "extra_state": {"best": payload}}


@pytest.mark.parametrize("payload_class", [SystemPayload, ExecPayload])
def test_payloads_do_run_under_plain_pickle(tmp_path, payload_class):
    """Control: the marker mechanism works, so a missing marker below means the payload was stopped."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(payload_class(marker)))
    assert marker.exists()


@pytest.mark.parametrize("payload_class", [SystemPayload, ExecPayload])
@pytest.mark.parametrize("mmap", [False, True])
def test_malicious_checkpoint_is_refused_and_payload_never_runs(safe_load, tmp_path, payload_class, mmap):
    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint_best.pt"
    torch.save(_fairseq_shaped(payload_class(marker)), path)
    with pytest.raises(safe_load.UnsafeCheckpointError, match="unsupported global") as caught:
        safe_load.load_checkpoint(path, mmap=mmap)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_malicious_raw_pickle_is_refused(safe_load, tmp_path):
    """A plain pickle (not torch's zip format) goes through the legacy path: refused as well."""
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint_last.pt"
    path.write_bytes(pickle.dumps(_fairseq_shaped_plain(SystemPayload(marker)), protocol=2))
    for mmap in (False, True):
        with pytest.raises(safe_load.UnsafeCheckpointError, match="unsupported global posix.system"):
            safe_load.load_checkpoint(path, mmap=mmap)
    assert not marker.exists()



def test_numpy_scalar_metric_is_refused(safe_load, tmp_path):
    """fairseq stores the best metric as given: a numpy float there makes the checkpoint unloadable."""
    import torch

    path = tmp_path / "checkpoint_best.pt"
    torch.save({"model": {}, "extra_state": {"best": round(np.float64(1.23456), 3)}}, path)
    with pytest.raises(safe_load.UnsafeCheckpointError, match="numpy"):
        safe_load.load_checkpoint(path)
    torch.save({"model": {}, "extra_state": {"best": float(round(np.float64(1.23456), 3))}}, path)
    assert safe_load.load_checkpoint(path)["extra_state"]["best"] == 1.235


def test_dictionary_and_namespace_are_allowed(safe_load, tmp_path):
    import argparse

    import torch
    from fairseq.data.dictionary import Dictionary

    labels = Dictionary()
    for symbol in map(str, range(5)):
        labels.add_symbol(symbol)
    path = tmp_path / "checkpoint.pt"
    torch.save({"args": argparse.Namespace(arch="wav2vec2", lr=[0.1]), "model": {"w": torch.ones(2)},
                "task_state": {"dictionaries": [labels]}}, path)
    state = safe_load.load_checkpoint(path, mmap=True)
    loaded = state["task_state"]["dictionaries"][0]
    assert type(loaded) is Dictionary
    assert loaded.symbols == labels.symbols and loaded.indices == labels.indices
    assert state["args"].arch == "wav2vec2" and state["args"].lr == [0.1]
    assert torch.equal(state["model"]["w"], torch.ones(2))


def test_allowlist_is_exact(safe_load):
    import argparse

    from fairseq.data.dictionary import Dictionary

    assert safe_load.fairseq_checkpoint_classes() == [Dictionary, argparse.Namespace]


# --- real checkpoints from the tiny recipes -------------------------------------------------------
_SENTENCES = [
    "the quick brown fox jumps over the lazy dog near the river bank",
    "she sells sea shells by the sea shore every single summer morning",
    "a large black cat was sitting quietly on the old wooden fence",
    "please remember to bring the green umbrella when you leave today",
    "seven small children played happily in the sunny park after lunch",
    "the weather report says heavy rain will arrive late this evening",
    "my grandfather told long stories about ships and distant islands",
    "we walked along the narrow path until the village came into view",
    "bright yellow flowers grew beside the road leading to the farm",
    "an orange train rolled slowly through the quiet mountain valley",
    "the old clock on the wall struck twelve as the guests arrived",
    "fresh bread and warm soup were waiting on the kitchen table",
    "two blue birds built a nest high in the branches of the oak",
    "the teacher wrote a long list of new words on the board",
]
# heldout: the unlabeled subset that MI tasks (*_pretraining_mi) score on; they need >= 4 utterances
_SPLITS = (("train", range(8)), ("valid", range(8, 10)), ("heldout", range(10, 14)))


def _make_corpus(root: Path) -> Path:
    """espeak-ng speech at 16 kHz plus fairseq manifests for the splits in ``_SPLITS``."""
    import soundfile as sf
    from scipy.signal import resample_poly

    wav_dir, manifest_dir = root / "wav", root / "manifest"
    wav_dir.mkdir(parents=True)
    manifest_dir.mkdir()
    sizes = []
    for index, text in enumerate(_SENTENCES):
        raw = wav_dir / f"raw{index}.wav"
        voice = ["en-us", "en"][index % 2]
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(150 + 10 * (index % 3)), "-w", str(raw), text],
                       check=True, capture_output=True)
        audio, rate = sf.read(str(raw), dtype="float32")
        raw.unlink()
        audio = resample_poly(audio, 16000, rate).astype(np.float32)
        sf.write(str(wav_dir / f"u{index}.wav"), audio, 16000)
        sizes.append(len(audio))
    for split, indices in _SPLITS:
        lines = [str(wav_dir)] + [f"u{i}.wav\t{sizes[i]}" for i in indices]
        (manifest_dir / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return manifest_dir


def _train(config: str, run_dir: Path, *overrides: str) -> Path:
    save_dir = run_dir / "checkpoints"
    command = [
        sys.executable, "-m", "ssl_mi_callback.integrations.fairseq.launcher",
        "--config-dir", str(RECIPES), "--config-name", config,
        f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={run_dir / 'hydra'}",
        f"optimization.max_update={UPDATES}", "checkpoint.save_interval_updates=10",
        "dataset.validate_interval_updates=10", "lr_scheduler.warmup_updates=5", *overrides,
    ]
    done = subprocess.run(command, cwd=str(REPO), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{config} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (save_dir / "checkpoint_last.pt").is_file(), done.stdout[-3000:]
    return save_dir


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    require("fairseq", "espeak-ng", "torchaudio")
    root = tmp_path_factory.mktemp("tiny_fairseq")
    manifest_dir = _make_corpus(root)
    sys.path.insert(0, str(RECIPES))
    try:
        import prepare_hubert_labels
    finally:
        sys.path.remove(str(RECIPES))
    label_dir = root / "labels"
    prepare_hubert_labels.prepare(manifest_dir, out=label_dir, k=8, seed=0, log=lambda *_: None)
    wav2vec2 = _train("tiny_wav2vec2", root / "wav2vec2", f"task.data={manifest_dir}")
    hubert = _train("tiny_hubert", root / "hubert", f"task.data={manifest_dir}",
                    f"task.label_dir={label_dir}")
    return {"wav2vec2": wav2vec2, "hubert": hubert}


@pytest.mark.slow
@pytest.mark.fairseq
@pytest.mark.speech
@pytest.mark.parametrize("family", ["wav2vec2", "hubert"])
def test_tiny_checkpoints_load_safely(safe_load, tiny_checkpoints, family):
    # last + best always; checkpoint_<epoch>_<updates>.pt only where an interval save is not also
    # an epoch end (fairseq skips it there), which depends on batching
    paths = sorted(tiny_checkpoints[family].glob("checkpoint*.pt"))
    assert {"checkpoint_last.pt", "checkpoint_best.pt"} <= {p.name for p in paths}
    for path in paths:
        state = safe_load.load_checkpoint(path)
        _check_state(state, family, path.name)


def _check_state(state, family, name):
    import torch
    from fairseq.data.dictionary import Dictionary

    if name == "checkpoint_last.pt":
        assert state["optimizer_history"][-1]["num_updates"] == UPDATES
    assert all(isinstance(v, torch.Tensor) for v in state["model"].values())
    dictionaries = (state.get("task_state") or {}).get("dictionaries")
    if family == "hubert" and "task_state" in state:
        assert [type(d) for d in dictionaries] == [Dictionary]
        assert len(dictionaries[0]) == 8 + 4  # k clusters + bos/pad/eos/unk
    else:
        assert dictionaries is None


@pytest.mark.slow
@pytest.mark.fairseq
@pytest.mark.speech
@pytest.mark.parametrize("family", ["wav2vec2", "hubert"])
def test_fairseq_own_loader_works(safe_load, tiny_checkpoints, family):
    """fairseq's torch.load (weights_only=True by default on torch >= 2.6) works after compat.apply()."""
    import torch
    from fairseq import checkpoint_utils

    path = tiny_checkpoints[family] / "checkpoint_best.pt"
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert state["cfg"]["model"]["_name"] == family
    if state["cfg"]["task"]["_name"].endswith("_mi"):  # a recipe on an MI task: register those first
        import ssl_mi_callback.integrations.fairseq.tasks  # noqa: F401
    # the training data need not exist any more: the task's dictionaries come from task_state
    overrides = {"data": "/nonexistent"}
    if family == "hubert":
        overrides["label_dir"] = "/nonexistent"
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides=overrides)
    model = models[0].eval()
    with torch.no_grad():
        wav = torch.randn(1, 16000)
        if family == "hubert":
            features, _ = model.extract_features(wav, padding_mask=None, mask=False, output_layer=2)
        else:
            features = model.extract_features(wav, padding_mask=None, mask=False, layer=1)["x"]
    assert features.shape == (1, (16000 - 400) // 320 + 1, 64)
    assert torch.isfinite(features).all()
