"""Bad input: one clear, one-line EstimatorInputError (a ValueError) per case."""
import numpy as np
import pytest
import torch

from ssl_mi_callback.estimators import EstimatorInputError, supervised_mi, unsupervised_mi

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def views(two_views):
    za, zb, groups, s, _ = two_views(4, n_utterances=8, frames_per_utterance=20, dims_a=3, dims_b=3)
    return za, zb, groups, s


def unsupervised_with(views, **changes):
    za, zb, groups, _ = views
    arguments = dict(za=za, zb=zb, groups=groups, clusters=4, bootstrap=0)
    arguments.update(changes)
    return lambda: unsupervised_mi(arguments.pop("za"), arguments.pop("zb"), arguments.pop("groups"), **arguments)


def supervised_with(views, **changes):
    za, _, groups, s = views
    arguments = dict(z=za, labels=s, groups=groups, bootstrap=0)
    arguments.update(changes)
    return lambda: supervised_mi(arguments.pop("z"), arguments.pop("labels"), arguments.pop("groups"), **arguments)


CASES = {
    "mismatched lengths": (lambda v: unsupervised_with(v, zb=v[1][:-1]), "lengths differ: za=160, zb=159"),
    "empty features": (lambda v: unsupervised_with(v, za=np.zeros((0, 3), np.float32)), "za is empty"),
    "empty groups": (lambda v: supervised_with(v, groups=np.zeros(0, np.int64)), "groups is empty"),
    "1-D features": (lambda v: unsupervised_with(v, za=v[0][:, 0]), "za must be 2-D"),
    "integer features": (lambda v: unsupervised_with(v, zb=v[1].astype(np.int64)), "zb must hold floating-point"),
    "string groups": (lambda v: unsupervised_with(v, groups=v[2].astype(str)), "groups must be numeric"),
    "float groups": (lambda v: unsupervised_with(v, groups=v[2].astype(np.float32)), "groups must hold integer ids"),
    "float labels": (lambda v: supervised_with(v, labels=v[3].astype(np.float64)), "labels must hold integer ids"),
    "negative labels": (lambda v: supervised_with(v, labels=v[3] - 1), "labels must be non-negative"),
    "fewer eval frames than clusters": (
        lambda v: unsupervised_with(v, clusters=90, fit_fraction=0.8),
        "the eval part has 40 frames, fewer than clusters=90",
    ),
    "fewer fit frames than clusters": (
        lambda v: unsupervised_with(v, clusters=90, fit_fraction=0.2),
        "the fit part has 40 frames, fewer than clusters=90",
    ),
    "single utterance": (lambda v: unsupervised_with(v, groups=np.zeros(160, np.int64)), "single utterance"),
    "one utterance in a part": (
        lambda v: supervised_with(v, groups=np.repeat([0, 1, 2], [60, 50, 50])),
        "need at least 2 utterances per part",
    ),
    "all frames non-finite": (
        lambda v: unsupervised_with(v, za=np.full_like(v[0], np.nan)),
        "no finite frames remain",
    ),
    "unknown probe": (lambda v: unsupervised_with(v, probe="svm"), "probe must be one of linear, mlp"),
    "bad fit fraction": (lambda v: unsupervised_with(v, fit_fraction=1.0), "fit_fraction must be strictly between"),
    "negative bootstrap": (lambda v: unsupervised_with(v, bootstrap=-1), "bootstrap must be an integer >= 0"),
    "one cluster": (lambda v: unsupervised_with(v, clusters=1), "clusters must be an integer >= 2"),
    "label beyond n_classes": (lambda v: supervised_with(v, n_classes=2), "labels has id 3 but n_classes=2"),
    "unknown device": (lambda v: unsupervised_with(v, device="tpu9"), "is not a torch device"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_one_line_error(case, views):
    make_call, message = CASES[case]
    with pytest.raises(EstimatorInputError) as raised:
        make_call(views)()
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_torch_inputs_on_different_devices_are_rejected(views):
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    za, zb, groups, _ = views
    with pytest.raises(EstimatorInputError, match="different devices"):
        unsupervised_mi(torch.from_numpy(za).cuda(), torch.from_numpy(zb), groups, clusters=4)
