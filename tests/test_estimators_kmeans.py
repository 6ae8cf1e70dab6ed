"""OnlineKMeans against scikit-learn, streaming, cross-process reduction, empty clusters, determinism."""
import threading

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.datasets import make_blobs

from ssl_mi_callback.estimators import EstimatorInputError, OnlineKMeans, fit_sample_rows, kmeans_plusplus

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")),
]


def anisotropic(n_frames, dims, seed):
    """Gaussian data with log-normal per-axis scales in a random rotation (no cluster structure)."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.normal(size=(dims, dims)))[0]
    return ((rng.normal(size=(n_frames, dims)) * np.exp(rng.normal(size=dims))) @ rotation).astype(np.float32)


DATASETS = {
    "blobs32": lambda: make_blobs(6000, 32, centers=50, random_state=0)[0].astype(np.float32),
    "anisotropic64": lambda: anisotropic(4000, 64, seed=1),
    "anisotropic256": lambda: anisotropic(3000, 256, seed=2),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_fit_inertia_matches_sklearn_kmeans(dataset, device):
    x = DATASETS[dataset]()
    reference = KMeans(50, n_init=3, random_state=0).fit(x).inertia_ / len(x)
    model = OnlineKMeans(50, seed=0).fit(torch.from_numpy(x).to(device))
    ratio = model.inertia(x) / reference
    assert 0.99 <= ratio <= 1.01, f"inertia ratio {ratio:.4f} vs sklearn KMeans"
    assert model.cluster_centers_.device.type == device
    assert model.counts_.sum().item() == len(x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_streaming_inertia_matches_sklearn_minibatch(dataset, device):
    x = DATASETS[dataset]()
    reference = -MiniBatchKMeans(50, batch_size=1024, n_init=3, random_state=0).fit(x).score(x) / len(x)
    model = OnlineKMeans(50, seed=0)
    order = np.random.default_rng(0)
    for _ in range(5):
        shuffled = torch.from_numpy(x[order.permutation(len(x))]).to(device)
        for batch in torch.split(shuffled, 1024):
            model.partial_fit(batch)
    ratio = model.inertia(x) / reference
    # within 1% of sklearn either way, the bar (measured on CPU: 0.998 to 1.0045)
    assert 0.99 <= ratio <= 1.01, f"inertia ratio {ratio:.4f} vs sklearn MiniBatchKMeans"
    assert model.n_updates_ == 5 * len(range(0, len(x), 1024))


def test_predict_matches_nearest_centre_and_is_chunk_independent():
    x = anisotropic(2000, 16, seed=3)
    model = OnlineKMeans(20, seed=0).fit(x)
    nearest = torch.cdist(torch.from_numpy(x).double(), model.cluster_centers_.double()).argmin(1)
    assert torch.equal(model.predict(x), nearest)
    chunked = OnlineKMeans(20, seed=0, chunk_size=150).fit(x)
    # per-chunk sums are float32 (speed), accumulated in float64: equal up to float32 rounding
    assert torch.allclose(chunked.cluster_centers_, model.cluster_centers_, rtol=1e-6, atol=1e-6)
    assert torch.equal(chunked.predict(x), model.predict(x))
    squared = ((torch.from_numpy(x).double() - model.cluster_centers_.double()[nearest]) ** 2).sum(1)
    assert model.inertia(x) == pytest.approx(float(squared.mean()), rel=1e-5)


def test_same_seed_same_centres_to_the_last_digit():
    x = anisotropic(4000, 32, seed=4)
    first, second = OnlineKMeans(30, seed=5).fit(x), OnlineKMeans(30, seed=5).fit(x)
    assert torch.equal(first.cluster_centers_, second.cluster_centers_)
    assert first.inertia_ == second.inertia_
    assert not torch.equal(first.cluster_centers_, OnlineKMeans(30, seed=6).fit(x).cluster_centers_)


def test_fit_sample_is_a_plain_fit_on_its_seeded_rows():
    x = torch.from_numpy(DATASETS["blobs32"]())
    rows = fit_sample_rows(len(x), 1500, seed=3)
    assert len(rows) == 1500 and len(set(rows.tolist())) == 1500 and torch.all(rows[1:] > rows[:-1])
    sampled = OnlineKMeans(50, seed=3, fit_sample=1500).fit(x)
    on_rows = OnlineKMeans(50, seed=3).fit(x[rows])
    assert torch.equal(sampled.cluster_centers_, on_rows.cluster_centers_) and sampled.inertia_ == on_rows.inertia_
    assert not torch.equal(rows, fit_sample_rows(len(x), 1500, seed=4))
    # 30 rows per centre of 50 blobs: the centres still fit all rows almost as well as a fit on all of them
    full = OnlineKMeans(50, seed=3).fit(x)
    assert sampled.inertia(x) < 1.05 * full.inertia(x)
    # a sample at least as large as the data is the data: the plain fit, to the last digit
    assert torch.equal(OnlineKMeans(50, seed=3, fit_sample=len(x)).fit(x).cluster_centers_, full.cluster_centers_)
    # partial_fit streams every batch it gets; fit_sample is a fit-only setting
    streamed = OnlineKMeans(50, seed=3, fit_sample=100).partial_fit(x[:3000]).partial_fit(x[3000:])
    assert torch.equal(streamed.cluster_centers_, OnlineKMeans(50, seed=3).partial_fit(x[:3000]).partial_fit(x[3000:]).cluster_centers_)


@pytest.mark.parametrize("fit_sample", [49, 0, True, 2.5])
def test_fit_sample_below_n_clusters_or_not_an_integer_is_rejected(fit_sample):
    x = DATASETS["blobs32"]()
    for method in (OnlineKMeans.fit, OnlineKMeans.partial_fit):
        with pytest.raises(EstimatorInputError, match=r"fit_sample must be an integer >= 50"):
            method(OnlineKMeans(50, fit_sample=fit_sample), x)
    if not isinstance(fit_sample, (bool, float)) and fit_sample < 1:
        with pytest.raises(EstimatorInputError, match=r"fit_sample must be an integer >= 1"):
            fit_sample_rows(100, fit_sample, seed=0)


def test_lockstep_seedings_equal_consecutive_single_seedings():
    """n_init seedings run together pick exactly the centres of n_init seedings run one after the other
    from the same generator (the best potential wins), and leave the generator in the same state.
    (The distance products have another shape, so they may round differently in float32: a tie between
    two candidates closer than that rounding could in principle go the other way.)"""
    sample = torch.from_numpy(anisotropic(3000, 24, seed=7))
    lockstep_generator, single_generator = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    centers, potential = kmeans_plusplus(sample, 40, lockstep_generator, n_init=3)
    singles = [kmeans_plusplus(sample, 40, single_generator) for _ in range(3)]
    assert len({round(p, 6) for _, p in singles}) == 3  # three different seedings to choose from
    best_centers, best_potential = min(singles, key=lambda seeding: seeding[1])
    assert torch.equal(centers, best_centers)
    # float32 products of another shape round differently (each distance to ~1e-7 of the row norms);
    # 2.3e-9 apart on one CPU (2026-11-27), so 1e-9 was a per-CPU accident, 1e-6 is float32's own scale
    assert potential == pytest.approx(best_potential, rel=1e-6)
    assert torch.equal(lockstep_generator.get_state(), single_generator.get_state())
    squared = torch.cdist(sample.double(), centers.double()).min(1).values ** 2
    assert potential == pytest.approx(float(squared.sum()), rel=1e-6)


def test_empty_cluster_is_reseeded_at_the_farthest_point():
    x = make_blobs(600, 2, centers=3, cluster_std=0.5, random_state=0)[0].astype(np.float32)
    init = np.concatenate([x[:2], [[1e3, 1e3]], x[2:3]]).astype(np.float32)  # centre 2 attracts nothing
    model = OnlineKMeans(4, init=init, max_iter=1).fit(x)
    assert bool((model.cluster_centers_ < 1e3).all())
    distances = torch.cdist(torch.from_numpy(x).double(), torch.from_numpy(init).double())
    assert int((distances.argmin(1) == 2).sum()) == 0  # empty in the first pass
    farthest = int(distances.min(1).values.argmax())
    assert torch.equal(model.cluster_centers_[2], torch.from_numpy(x)[farthest])
    refined = OnlineKMeans(4, init=init).fit(x)
    assert bool((refined.counts_ > 0).all())


def test_fewer_distinct_points_than_clusters_does_not_fail():
    x = np.repeat(np.eye(3, dtype=np.float32), 20, axis=0)
    model = OnlineKMeans(5, seed=0).fit(x)
    assert model.inertia(x) == pytest.approx(0.0, abs=1e-9)


def test_reduce_fn_makes_two_processes_agree_with_one():
    """Two shards fitted in lockstep threads, statistics summed by reduce_fn, equal the single fit."""
    x = make_blobs(4000, 8, centers=10, random_state=1)[0].astype(np.float32)
    init = OnlineKMeans(10, seed=0).fit(x).cluster_centers_  # any shared start
    single = OnlineKMeans(10, init=init).fit(x)

    barrier, slots = threading.Barrier(2), [None, None]

    def reduce_for(rank):
        def reduce_fn(tensor):
            slots[rank] = tensor.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total

        return reduce_fn

    shards = [x[::2], x[1::2]]
    models = [OnlineKMeans(10, init=init, reduce_fn=reduce_for(rank)) for rank in (0, 1)]
    threads = [threading.Thread(target=models[r].fit, args=(shards[r],)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.equal(models[0].cluster_centers_, models[1].cluster_centers_)
    assert torch.allclose(models[0].cluster_centers_, single.cluster_centers_, atol=1e-5)
    assert torch.equal(models[0].counts_, single.counts_)


def test_reduce_fn_rejects_seeds_that_differ_across_processes():
    x = make_blobs(400, 4, centers=5, random_state=2)[0].astype(np.float32)
    doubled = OnlineKMeans(5, seed=0, reduce_fn=lambda t: 2 * t).fit(x)  # two processes with the same rows
    assert torch.allclose(doubled.cluster_centers_, OnlineKMeans(5, seed=0).fit(x).cluster_centers_)
    other_process_seeds = lambda t: t + torch.cat([torch.ones(len(t) - 1, dtype=t.dtype), t[-1:]])  # noqa: E731
    with pytest.raises(EstimatorInputError, match="seeds differ across processes"):
        OnlineKMeans(5, seed=0, reduce_fn=other_process_seeds).fit(x)


def test_unfitted_and_mismatched_inputs_raise_clear_errors():
    with pytest.raises(EstimatorInputError, match="not fitted"):
        OnlineKMeans(3).predict(np.zeros((4, 2), np.float32))
    model = OnlineKMeans(3, seed=0).fit(anisotropic(100, 4, seed=0))
    with pytest.raises(EstimatorInputError, match="dims"):
        model.predict(np.zeros((4, 5), np.float32))
    with pytest.raises(EstimatorInputError, match="at least n_clusters"):
        OnlineKMeans(10).fit(np.zeros((5, 2), np.float32))
    with pytest.raises(EstimatorInputError, match="NaN"):
        OnlineKMeans(2).fit(np.array([[0.0], [np.nan], [1.0]], np.float32))
