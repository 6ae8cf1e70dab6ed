"""Baselines: Davies-Bouldin against sklearn, RankMe sanity, RankMe-t, k-means inertia."""
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import davies_bouldin_score

from ssl_mi_callback.estimators import EstimatorInputError, davies_bouldin, kmeans_inertia, rankme, rankme_utterance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "case",
    ["blobs", "random_labels", "sparse_label_ids", "duplicate_centroids"],
)
def test_davies_bouldin_matches_sklearn(case):
    rng = np.random.default_rng(0)
    x, labels = make_blobs(500, 7, centers=6, random_state=0)
    if case == "random_labels":
        labels = rng.integers(0, 9, size=len(x))
    elif case == "sparse_label_ids":
        labels = np.array([-3, 7, 100, 2, 55, 9])[labels]
    elif case == "duplicate_centroids":
        x = np.concatenate([x[:50], x[:50]])
        labels = np.repeat([0, 1], 50)
    assert davies_bouldin(x.astype(np.float32), labels) == pytest.approx(
        davies_bouldin_score(x.astype(np.float32), labels), rel=1e-6, abs=1e-12
    )


def test_davies_bouldin_needs_two_clusters():
    with pytest.raises(EstimatorInputError, match="2 to n_frames-1 clusters"):
        davies_bouldin(np.zeros((5, 2), np.float32), np.zeros(5, np.int64))


@pytest.mark.parametrize("rank", [1, 5, 20])
def test_rankme_of_rank_r_data_with_equal_singular_values_is_r(rank):
    rng = np.random.default_rng(rank)
    left = np.linalg.qr(rng.normal(size=(400, rank)))[0]
    right = np.linalg.qr(rng.normal(size=(64, rank)))[0]
    z = left @ right.T * 10.0
    assert rankme(z) == pytest.approx(rank, rel=1e-3)


def test_rankme_of_random_rank_r_data_is_at_most_r():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(1000, 8)) @ rng.normal(size=(8, 128))
    assert 0.7 * 8 < rankme(torch.from_numpy(z).float()) <= 8.0 + 1e-3


@pytest.mark.parametrize("case", ["full_rank", "rank_deficient"])
def test_rankme_matches_the_definition_with_numpys_svd(case):
    """The Gram-matrix route (summed over row blocks: 40000 rows are three blocks) gives the RankMe of
    the singular values of a direct SVD."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(40000, 48)) * np.geomspace(10.0, 0.01, 48)
    if case == "rank_deficient":
        z[:, 30:] = 0.0
    for features, tolerance in ((z, 1e-9), (z.astype(np.float32), 1e-6)):
        sigma = np.linalg.svd(features.astype(np.float64), compute_uv=False)
        p = sigma / sigma.sum() + 1e-7
        assert rankme(features) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=tolerance)


def test_rankme_utterance_is_rankme_of_utterance_means():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(300, 16)).astype(np.float32)
    groups = rng.integers(0, 30, size=300)
    means = np.stack([z[groups == g].mean(0) for g in np.unique(groups)])
    assert rankme_utterance(z, groups) == pytest.approx(rankme(means), rel=1e-6)


def test_kmeans_inertia_baseline_matches_sklearn():
    x = make_blobs(2000, 10, centers=12, random_state=3)[0].astype(np.float32)
    reference = KMeans(12, n_init=3, random_state=0).fit(x).inertia_ / len(x)
    assert kmeans_inertia(x, clusters=12) == pytest.approx(reference, rel=0.01)


def test_center_by_group_removes_each_utterances_mean():
    import torch

    from ssl_mi_callback.estimators import center_by_group

    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [10.0, 0.0], [7.0, 7.0], [4.0, -1.0]])
    groups = torch.tensor([5, 5, 9, 2, 9])
    centered = center_by_group(x, groups)
    assert centered.tolist() == [[-1.0, -2.0], [1.0, 2.0], [3.0, 0.5], [0.0, 0.0], [-3.0, -0.5]]
    assert centered.dtype == x.dtype
