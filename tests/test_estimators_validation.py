"""Bad input: one clear, one-line EstimatorInputError (a ValueError) per case."""
import numpy as np
import pytest
import torch

from ssl_mi_callback.estimators import EstimatorInputError, supervised_mi, unsupervised_mi
from ssl_mi_callback.estimators.validation import DENSE_LABEL_FLOOR, check_label_range, finite_rows, squared_norm_limit

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
    "all frames too large for float32": (
        lambda v: unsupervised_with(v, zb=np.full_like(v[1], 3e38)),
        "no usable frames remain: 160 frames have values too large for float32 arithmetic",
    ),
    "too large or NaN in every frame": (
        lambda v: supervised_with(v, z=np.where(np.arange(160)[:, None] < 10, np.nan, 1e19).astype(np.float32)),
        "150 frames have values too large for float32 arithmetic (largest |value| 1e+19; squared row norms must "
        "stay <= 8.51e+37), the other 10 a NaN or inf; rescale the features",
    ),
    "label id far beyond the frames": (
        lambda v: supervised_with(v, labels=np.where(np.arange(160) == 5, 10**12, v[3])),
        "labels has id 1000000000000, but class ids must be dense 0..n-1 with n <= 65536",
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


def test_label_range_caps_classes_at_frames_or_the_floor():
    small = torch.tensor([0, 3, 1])
    assert check_label_range(small) == 4
    assert check_label_range(small, n_classes=10) == 10
    assert check_label_range(torch.tensor([DENSE_LABEL_FLOOR - 1])) == DENSE_LABEL_FLOOR  # floor: always allowed
    many_frames = torch.arange(DENSE_LABEL_FLOOR + 10)  # N frames may hold ids up to N - 1
    assert check_label_range(many_frames) == DENSE_LABEL_FLOOR + 10
    with pytest.raises(EstimatorInputError, match=r"labels has id 65536, but class ids must be dense 0\.\.n-1 with n <= 65536"):
        check_label_range(torch.tensor([0, DENSE_LABEL_FLOOR]))
    with pytest.raises(EstimatorInputError, match=r"ids has id 65546, .* n <= 65546 \(max\(frames, 65536\)\); remap"):
        check_label_range(torch.cat([many_frames[:-1], torch.tensor([DENSE_LABEL_FLOOR + 10])]), "ids")
    with pytest.raises(EstimatorInputError, match=r"n_classes=1000000000000 is more than 65536"):
        check_label_range(small, n_classes=10**12)
    with pytest.raises(EstimatorInputError, match="labels has id 3 but n_classes=3"):
        check_label_range(small, n_classes=3)
    with pytest.raises(EstimatorInputError, match="n_classes must be an integer >= 1"):
        check_label_range(small, n_classes=0)


def test_oversized_rows_are_dropped_and_counted_like_nonfinite_rows():
    """Rows whose squared norm exceeds finfo.max / 4 go the way of NaN/inf rows; the bound stays finite."""
    x = torch.randn(50, 4)
    limit = squared_norm_limit(torch.float32)
    assert limit == pytest.approx(torch.finfo(torch.float32).max / 4)
    edge = (limit / 4) ** 0.5 * 0.999  # four equal values: squared norm just below the limit
    x[1], x[2], x[3], x[4] = float("nan"), float("inf"), 3e38, 1e19
    x[5] = edge
    keep, dropped = finite_rows(x)
    assert dropped == 4 and keep[:6].tolist() == [True, False, False, False, False, True]
    # the kept giant still gives finite squared distances in float32, to the origin and to its negation
    assert torch.isfinite(torch.cdist(x[keep][:6], -x[keep][:6]) ** 2).all()
    as_float64 = x.double()
    as_float64[3] = 1e100  # float64 has room: only NaN/inf rows are dropped there
    assert finite_rows(as_float64)[1] == 2
    keep_pair, dropped_pair = finite_rows(x, torch.randn(50, 2))
    assert dropped_pair == 4 and torch.equal(keep_pair, keep)


def test_unsupervised_bound_drops_oversized_frames(views):
    za, zb, groups, _ = views
    zb = zb.copy()
    zb[:7] = 3e38
    result = unsupervised_mi(za, zb, groups, clusters=4, bootstrap=20)
    assert result.dropped_nonfinite == 7
    assert np.isfinite(result.kmeans_inertia_eval) and np.isfinite(result.mi_bits)
