"""Shared test fixtures.

Tests that need an optional part (fairseq, espeak-ng, flite, torchaudio) call ``require(...)``.
On a user's machine a missing part skips the test with a message that says what to install; under
CI (environment variable CI=true) it fails instead, so a broken install can never pass green.
"""
from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

_INSTALL_HINT = {
    "espeak-ng": "apt-get install espeak-ng (or run scripts/setup_env.sh)",
    "flite": "apt-get install flite (or run scripts/setup_env.sh)",
    "fairseq": "run scripts/setup_env.sh (installs fairseq 0.12.2 into .venv)",
    "torchaudio": "pip install torchaudio==<your torch version>",
    "transformers": "pip install 'ssl_mi_callback[huggingface]' (or run scripts/setup_env.sh)",
    "accelerate": "pip install 'ssl_mi_callback[huggingface]' (or run scripts/setup_env.sh)",
    "lightning": "pip install 'ssl_mi_callback[lightning]' (or run scripts/setup_env.sh)",
    "matplotlib": "pip install 'ssl_mi_callback[plot]' (or run scripts/setup_env.sh)",
    "faiss": "run scripts/setup_env.sh (the dev lock installs faiss-cpu, the speed benchmark's reference)",
}


def _available(part: str) -> bool:
    if part in ("espeak-ng", "flite"):
        return shutil.which(part) is not None
    return importlib.util.find_spec(part) is not None


def require(*parts: str) -> None:
    """Skip (locally) or fail (CI=true) unless every named part is installed."""
    missing = [p for p in parts if not _available(p)]
    if not missing:
        return
    hints = "; ".join(f"{p}: {_INSTALL_HINT.get(p, 'install it')}" for p in missing)
    message = f"missing {', '.join(missing)} ({hints})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("required for CI: " + message, pytrace=False)
    pytest.skip(message)


# --- estimator tests ---------------------------------------------------------------------------
import numpy as np  # noqa: E402


@pytest.fixture
def one_torch_thread():
    """Run a test with one intra-op torch thread (fast and stable on small CPU machines), then restore."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _two_views(
    n_states=16,
    *,
    p=None,
    flip=0.0,
    n_utterances=80,
    frames_per_utterance=50,
    dims_a=16,
    dims_b=24,
    separation=3.0,
    noise=0.3,
    seed=0,
):
    """Paired views of a discrete latent S: zb = B[S] + noise, za = A[S'] + noise, where S' = S, or with
    probability ``flip`` a uniform draw. Returns (za, zb, groups, s, s_prime) as float32/int64 numpy."""
    rng = np.random.default_rng(seed)
    n_frames = n_utterances * frames_per_utterance
    means_a = rng.normal(size=(n_states, dims_a)) * separation
    means_b = rng.normal(size=(n_states, dims_b)) * separation
    s = rng.choice(n_states, size=n_frames, p=p)
    s_prime = np.where(rng.random(n_frames) < flip, rng.integers(n_states, size=n_frames), s)
    za = (means_a[s_prime] + noise * rng.normal(size=(n_frames, dims_a))).astype(np.float32)
    zb = (means_b[s] + noise * rng.normal(size=(n_frames, dims_b))).astype(np.float32)
    groups = np.repeat(np.arange(n_utterances), frames_per_utterance)
    return za, zb, groups, s, s_prime


@pytest.fixture
def two_views():
    """Factory for paired views of a discrete latent (see ``_two_views``)."""
    return _two_views


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory):
    """A 6-minute generated corpus with a 25% held-out split (about 1.5 min), made once per session:
    enough speech for tiny fairseq training runs and their MI evaluations."""
    require("espeak-ng", "flite")
    from ssl_mi_callback.corpus import generate_corpus

    out_dir = tmp_path_factory.mktemp("speech_corpus")
    splits = (("train", 0.6), ("valid", 0.05), ("heldout", 0.25), ("probe_train", 0.05), ("probe_test", 0.05))
    generate_corpus(tiny_corpus_config(minutes=6, splits=splits, min_words=4, max_words=16), out_dir, jobs=2)
    return out_dir


# Settings of the session-wide tiny corpus (a few dozen short utterances, both engines).
TINY_CORPUS_SPLITS = (("train", 0.4), ("valid", 0.1), ("heldout", 0.2), ("probe_train", 0.15),
                      ("probe_test", 0.15))


def tiny_corpus_config(**changes):
    """The CorpusConfig of the ``tiny_corpus`` fixture (pass changes for variants)."""
    from ssl_mi_callback.corpus import CorpusConfig

    settings = dict(minutes=1.5, seed=0, splits=TINY_CORPUS_SPLITS, min_words=3, max_words=8)
    settings.update(changes)
    return CorpusConfig(**settings)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Path of a generated corpus: ~1.5 min, 16 kHz, espeak-ng + flite, all five splits.

    Layout: wav/*.wav, {train,valid,heldout,probe_train,probe_test}.tsv (fairseq manifests)
    and .phn (20 ms frame phone ids), phones.txt, utterances.tsv, align/<uid>.tsv, corpus.json.
    Generated once per test session (a few seconds).
    """
    require("espeak-ng", "flite")
    from ssl_mi_callback.corpus import generate_corpus

    out_dir = tmp_path_factory.mktemp("tiny_corpus")
    generate_corpus(tiny_corpus_config(), out_dir, jobs=2)
    return out_dir


# Fuzz tests: under CI the examples are derandomized (the same cases every run, so CI cannot turn red
# by chance); locally hypothesis explores new cases each run.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        _hypothesis_settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass
