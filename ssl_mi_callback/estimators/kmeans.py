"""Online (streaming, mini-batch) k-means with k-means++ seeding, on any torch device.

State is fixed-size sufficient statistics — per-cluster sum vectors and counts, accumulated in
float64 from per-chunk sums in the input's precision — so a caller can reduce them across processes
with a sum (``reduce_fn``) before every centre update.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple, Union

import torch
from torch import Tensor

from .reduce import ReduceFn, no_reduce
from .seeding import make_generator
from .validation import ArrayLike, EstimatorInputError, as_features, check_int, resolve_device

Device = Optional[Union[str, torch.device]]
_ROW_BLOCK = 1024
"""Rows per element-wise temporary (x * x): a chunk-sized one costs more to allocate than to compute."""


def _row_blocks(x: Tensor, gpu_rows: int) -> Tuple[Tensor, ...]:
    """``x`` split for element-wise temporaries: ``_ROW_BLOCK`` rows on the CPU, ``gpu_rows`` on a GPU
    (where small blocks would only add kernel launches)."""
    return torch.split(x, _ROW_BLOCK if x.device.type == "cpu" else max(gpu_rows, 1))


def _row_squared_norms(x: Tensor) -> Tensor:
    """||x_i||^2 per row (the same sums whatever the blocks)."""
    return torch.cat([(block * block).sum(1) for block in _row_blocks(x, x.shape[0])])


def kmeans_plusplus(
    sample: Tensor, n_clusters: int, generator: torch.Generator, n_init: int = 1
) -> Tuple[Tensor, float]:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; 2 + ln K trials per centre, as sklearn).

    Each new centre is the best, by resulting potential sum_i min_c ||x_i - c||^2, of a few
    candidates drawn with probability proportional to the current squared distance. ``n_init``
    seedings run in lockstep (one distance product per step for all of their candidates, so the
    sample is read once per step, not once per seeding); each draws its random numbers in the order a
    seeding alone would, so run r is the r-th of ``n_init`` consecutive single seedings (up to the
    float32 rounding of a distance product of another shape, which only a near tie could expose).
    Returns the (K, D) centres with the lowest final potential on ``sample`` (the first on a tie) and
    that potential.
    """
    n_trials = 2 + int(math.log(n_clusters))
    n, device = sample.shape[0], sample.device
    norms = _row_squared_norms(sample)

    def squared_distances_to(ids: Tensor) -> Tensor:
        return (norms[ids, None] + norms - 2.0 * sample[ids] @ sample.T).clamp_min_(0.0).double()

    firsts, uniforms = [], []
    for _ in range(n_init):  # the generator's order of a single seeding: its first centre, then its draws
        firsts.append(torch.randint(n, (1,), generator=generator))
        uniforms.append(torch.rand(n_clusters - 1, n_trials, generator=generator, dtype=torch.float64))
    runs = torch.arange(n_init, device=device)
    chosen = [torch.cat(firsts).to(device)]
    closest = squared_distances_to(chosen[0])  # (runs, n)
    potential = closest.sum(1)
    uniforms_by_step = torch.stack(uniforms, dim=1).to(device)  # (K - 1, runs, trials)
    for draws in uniforms_by_step:
        targets = (draws * potential[:, None]).contiguous()
        candidate_ids = torch.searchsorted(torch.cumsum(closest, 1), targets).clamp_max_(n - 1)  # (runs, trials)
        distances = squared_distances_to(candidate_ids.flatten()).view(n_init, n_trials, n)
        candidate_closest = torch.minimum(closest[:, None, :], distances)
        candidate_potential = candidate_closest.sum(2)
        best = torch.argmin(candidate_potential, dim=1)
        closest, potential = candidate_closest[runs, best], candidate_potential[runs, best]
        chosen.append(candidate_ids[runs, best])
    winner = min(range(n_init), key=lambda run: float(potential[run]))
    return sample[torch.stack(chosen, dim=1)[winner]], float(potential[winner])


def fit_sample_rows(n_rows: int, size: int, seed: int) -> Tensor:
    """The rows (ascending) that ``OnlineKMeans(fit_sample=size, seed=seed).fit`` uses of ``n_rows``:
    ``size`` drawn without replacement from the seed's own stream (all rows when ``size >= n_rows``)."""
    if check_int(size, "fit_sample", 1) >= n_rows:
        return torch.arange(n_rows)
    return torch.randperm(n_rows, generator=make_generator(seed, "kmeans-fit-sample"))[:size].sort().values


class OnlineKMeans:
    """k-means with k-means++ seeding on a bounded sample, Lloyd ``fit`` and streaming ``partial_fit``.

    Objective: inertia = (1/N) sum_i min_k ||x_i - mu_k||^2 (mean squared distance).
    Statistics: S_k = sum of the points assigned to k, n_k = their count (float64);
    centre update mu_k = S_k / n_k. In ``partial_fit`` S_k and n_k accumulate over batches, which is
    the mini-batch k-means rule mu_k += (S_k^batch - n_k^batch mu_k) / n_k (Sculley 2010).
    ``reduce_fn`` (sum across processes, default identity) is applied to the statistics before every
    update, so all processes that start from the same centres stay identical. Seeding is local:
    with ``reduce_fn`` the k-means++ seeds are checked to agree across processes (they do when every
    process sees the same rows) and an error asks for shared ``init`` centres otherwise. An empty
    cluster is re-seeded deterministically at the point farthest from its centre (the i-th empty
    cluster at the i-th farthest; across processes a distance-weighted mean of each process's
    candidate).

    Parameters: ``n_clusters`` K; ``seed`` for sampling and seeding; ``init`` "k-means++" or a (K, D)
    array of initial centres; ``init_sample`` the most rows k-means++ looks at; ``n_init`` k-means++
    runs on that sample, the one with the lowest potential is kept; ``fit_sample`` the most rows of
    each process that ``fit`` uses (seeding, tolerance and Lloyd iterations all on one seeded random
    subset of the process's rows, at the same positions on every process; with ``reduce_fn`` over P
    processes the statistics sum up to P * ``fit_sample`` rows; None, the default: all rows; like
    faiss's training sample of 256 points per centre, it trades centres fitted to a sample for speed
    at large N; ``partial_fit`` ignores it); ``max_iter`` Lloyd
    iterations in ``fit``; ``tol`` stop when the squared centre shift sum_k ||mu_k' - mu_k||^2 falls
    below tol * mean per-dimension variance (as sklearn); ``chunk_size`` rows per distance block
    (memory stays O(chunk_size * K)); ``device`` where to compute (default: the input's device).

    Fitted state: ``cluster_centers_`` (K, D), ``sums_`` (K, D) float64, ``counts_`` (K,) float64,
    ``inertia_`` mean squared distance measured in the last pass (under the centres before its update;
    over the ``fit_sample`` rows when set, as are ``sums_`` and ``counts_``, so a ``partial_fit`` after a
    sampled ``fit`` weighs its batch against the sample's counts),
    ``n_iter_`` Lloyd iterations of the last ``fit``, ``n_updates_`` centre updates in all.
    """

    def __init__(
        self,
        n_clusters: int = 50,
        *,
        seed: int = 0,
        init: Union[str, ArrayLike] = "k-means++",
        init_sample: int = 10000,
        n_init: int = 3,
        fit_sample: Optional[int] = None,
        max_iter: int = 100,
        tol: float = 1e-4,
        chunk_size: int = 16384,
        device: Device = None,
        reduce_fn: Optional[ReduceFn] = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.seed = seed
        self.init = init
        self.init_sample = init_sample
        self.n_init = n_init
        self.fit_sample = fit_sample
        self.max_iter = max_iter
        self.tol = tol
        self.chunk_size = chunk_size
        self.device = device
        self.reduce_fn = reduce_fn

    # ----------------------------------------------------------------------------- public API
    def fit(self, x: ArrayLike) -> "OnlineKMeans":
        """Seed, then Lloyd iterations on all of ``x`` (or its ``fit_sample`` rows) until the centre
        shift is below tolerance."""
        x = self._fit_rows(self._features(x))
        reduce = self.reduce_fn or no_reduce
        self.cluster_centers_ = self._initial_centers(x)
        tolerance = self.tol * self._mean_variance(x, reduce)
        for iteration in range(1, check_int(self.max_iter, "max_iter", 1) + 1):
            previous = self.cluster_centers_
            stats, closest = self._statistics(x, previous)
            stats = reduce(stats)
            self.inertia_ = self._pass_inertia(stats)
            self._update_centers(stats, x, closest)
            shift = float(((self.cluster_centers_ - previous) ** 2).sum())
            if shift <= tolerance:
                break
        self.n_iter_ = iteration
        self.n_updates_ = iteration
        return self

    def partial_fit(self, x: ArrayLike) -> "OnlineKMeans":
        """One mini-batch update with ``x``; the first call seeds the centres from ``x`` (or ``init``)."""
        x = self._features(x)
        self._checked_fit_sample()  # unused here, but a bad value is an error in every method that fits
        reduce = self.reduce_fn or no_reduce
        if not hasattr(self, "cluster_centers_"):
            self.cluster_centers_ = self._initial_centers(x)
            self.sums_ = torch.zeros(self.cluster_centers_.shape, dtype=torch.float64, device=x.device)
            self.counts_ = torch.zeros(self.n_clusters, dtype=torch.float64, device=x.device)
            self.n_iter_ = 0
            self.n_updates_ = 0
        elif x.shape[1] != self.cluster_centers_.shape[1]:
            raise EstimatorInputError(
                f"x has {x.shape[1]} dims but the model was fitted on {self.cluster_centers_.shape[1]}"
            )
        self.cluster_centers_ = self.cluster_centers_.to(x.device)
        x = x.to(self.cluster_centers_.dtype)
        stats, closest = self._statistics(x, self.cluster_centers_)
        stats = reduce(stats)
        self.inertia_ = self._pass_inertia(stats)
        dims = x.shape[1]
        stats[:, :dims] += self.sums_.to(x.device)
        stats[:, dims] += self.counts_.to(x.device)
        self._update_centers(stats, x, closest)
        self.n_updates_ += 1
        return self

    def predict(self, x: ArrayLike) -> Tensor:
        """Index of the nearest centre for every row (int64, on the compute device)."""
        x = self._fitted_features(x)
        return self._assign(x, self.cluster_centers_.to(x.device))[0]

    def inertia(self, x: ArrayLike) -> float:
        """Mean squared distance of the rows of ``x`` to their nearest centre (this process's rows)."""
        x = self._fitted_features(x)
        return float(self._assign(x, self.cluster_centers_.to(x.device))[1].double().mean())

    # ----------------------------------------------------------------------------- internals
    def _features(self, x: ArrayLike) -> Tensor:
        check_int(self.n_clusters, "n_clusters", 1)
        x = as_features(x, "x", resolve_device(x, device=self.device))
        # NaN/inf reach the row sums (one read of x, no N x D mask); only a non-finite row sum, which
        # finite values can also give by overflow, needs the element-wise check
        if not bool(torch.isfinite(x.sum(dim=1)).all()) and not bool(torch.isfinite(x).all()):
            raise EstimatorInputError("x contains NaN or inf; drop those frames first")
        return x

    def _fit_rows(self, x: Tensor) -> Tensor:
        """``x``, or ``fit_sample`` of its rows drawn without replacement (in row order) when it has more."""
        size = self._checked_fit_sample()
        return x if size is None or x.shape[0] <= size else x[fit_sample_rows(x.shape[0], size, self.seed).to(x.device)]

    def _checked_fit_sample(self) -> Optional[int]:
        """``fit_sample`` (None or an integer >= n_clusters, checked by fit and partial_fit alike)."""
        if self.fit_sample is None:
            return None
        return check_int(self.fit_sample, "fit_sample", check_int(self.n_clusters, "n_clusters", 1))

    def _fitted_features(self, x: ArrayLike) -> Tensor:
        if not hasattr(self, "cluster_centers_"):
            raise EstimatorInputError("this OnlineKMeans is not fitted yet; call fit or partial_fit first")
        x = self._features(x)
        if x.shape[1] != self.cluster_centers_.shape[1]:
            raise EstimatorInputError(
                f"x has {x.shape[1]} dims but the model was fitted on {self.cluster_centers_.shape[1]}"
            )
        return x.to(self.cluster_centers_.dtype)

    def _initial_centers(self, x: Tensor) -> Tensor:
        if not isinstance(self.init, str):
            centers = as_features(self.init, "init", x.device).to(x.dtype)
            if tuple(centers.shape) != (self.n_clusters, x.shape[1]):
                raise EstimatorInputError(
                    f"init must have shape ({self.n_clusters}, {x.shape[1]}), got {tuple(centers.shape)}"
                )
            return centers.clone()
        if self.init != "k-means++":
            raise EstimatorInputError(f"init must be 'k-means++' or an array of centres, got {self.init!r}")
        if x.shape[0] < self.n_clusters:
            raise EstimatorInputError(f"need at least n_clusters={self.n_clusters} frames to seed, got {x.shape[0]}")
        generator = make_generator(self.seed, "kmeans-init")
        sample_size = max(self.n_clusters, min(check_int(self.init_sample, "init_sample", 1), x.shape[0]))
        rows = torch.randperm(x.shape[0], generator=generator)[:sample_size].to(x.device)
        centers, _ = kmeans_plusplus(x[rows], self.n_clusters, generator, check_int(self.n_init, "n_init", 1))
        if self.reduce_fn is not None:
            self._check_same_on_every_process(centers)
        return centers

    def _check_same_on_every_process(self, centers: Tensor) -> None:
        """Local k-means++ seeds must agree across processes: sum_p mu^(p) == P mu (one reduction)."""
        local = torch.cat([centers.double().flatten(), centers.new_ones(1, dtype=torch.float64)])
        total = self.reduce_fn(local.clone())
        if not torch.allclose(total[:-1], local[:-1] * total[-1], rtol=1e-6, atol=1e-9):
            raise EstimatorInputError(
                "k-means++ seeds differ across processes; pass the same init centres to every process "
                "(e.g. seeded on one rank and broadcast)"
            )

    def _assign_chunks(self, x: Tensor, centers: Tensor) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        """(rows, nearest-centre labels, squared distances), ``chunk_size`` rows at a time.

        ||x - mu||^2 = ||x||^2 + ||mu||^2 - 2 x.mu from the one matrix product that also picks the
        nearest centre (as scikit-learn computes it), clamped at 0 against rounding.
        """
        center_norms = (centers * centers).sum(1)
        for chunk in torch.split(x, check_int(self.chunk_size, "chunk_size", 1)):
            scores = torch.addmm(center_norms, chunk, centers.T, alpha=-2.0)
            nearest, labels = scores.min(dim=1)
            yield chunk, labels, (nearest + _row_squared_norms(chunk)).clamp_min_(0.0)

    def _assign(self, x: Tensor, centers: Tensor) -> Tuple[Tensor, Tensor]:
        """Nearest-centre labels and squared distances for all rows."""
        labels, closest = zip(*[(labels, closest) for _, labels, closest in self._assign_chunks(x, centers)])
        return torch.cat(labels), torch.cat(closest)

    def _statistics(self, x: Tensor, centers: Tensor) -> Tuple[Tensor, Tensor]:
        """Packed (K, D + 2) float64 [S_k | n_k | sum of squared distances], and per-row distances."""
        dims = x.shape[1]
        stats = torch.zeros(self.n_clusters, dims + 2, dtype=torch.float64, device=x.device)
        closest = []
        for chunk, labels, chunk_closest in self._assign_chunks(x, centers):
            # per-chunk sums in the input's precision (at most chunk_size rows), accumulated in float64
            chunk_sums = torch.zeros(self.n_clusters, dims, dtype=chunk.dtype, device=x.device)
            stats[:, :dims] += chunk_sums.index_add_(0, labels, chunk).double()
            stats[:, dims] += torch.bincount(labels, minlength=self.n_clusters).double()
            stats[:, dims + 1].index_add_(0, labels, chunk_closest.double())
            closest.append(chunk_closest)
        return stats, torch.cat(closest)

    @staticmethod
    def _pass_inertia(stats: Tensor) -> float:
        """Mean squared distance of one pass, from its packed statistics."""
        return float(stats[:, -1].sum() / stats[:, -2].sum())

    def _update_centers(self, stats: Tensor, x: Tensor, closest: Tensor) -> None:
        """Keep S_k, n_k from ``stats``; mu_k = S_k / n_k where n_k > 0; empty clusters at far points."""
        dims = x.shape[1]
        self.sums_, self.counts_ = stats[:, :dims].clone(), stats[:, dims].clone()
        filled = self.counts_ > 0
        centers = self.cluster_centers_.clone()
        centers[filled] = (self.sums_[filled] / self.counts_[filled, None]).to(centers.dtype)
        empty = torch.nonzero(~filled).flatten()
        if len(empty) > 0:
            centers[empty] = self._far_points(x, closest, len(empty)).to(centers.dtype)
        self.cluster_centers_ = centers

    def _far_points(self, x: Tensor, closest: Tensor, count: int) -> Tensor:
        """The ``count`` rows farthest from their centre (ties by row order), reduced across processes
        as the distance-weighted mean sum_p d_p x_p / sum_p d_p (the row itself on one process)."""
        order = torch.sort(closest, descending=True, stable=True).indices[:count]
        if len(order) < count:  # fewer local rows than empty clusters: repeat the farthest
            order = order[torch.arange(count, device=x.device) % max(len(order), 1)]
        weights = closest[order].double().clamp_min(1e-12)
        packed = torch.cat([x[order].double() * weights[:, None], weights[:, None]], dim=1)
        packed = (self.reduce_fn or no_reduce)(packed)
        return packed[:, :-1] / packed[:, -1:]

    def _mean_variance(self, x: Tensor, reduce: ReduceFn) -> float:
        """Mean over dimensions of the variance of ``x`` (all processes)."""
        moments = torch.zeros(2 * x.shape[1] + 1, dtype=torch.float64, device=x.device)
        for block in _row_blocks(x, check_int(self.chunk_size, "chunk_size", 1)):  # only sets the tolerance
            moments[: 2 * x.shape[1]] += torch.cat([block.sum(0), (block * block).sum(0)]).double()
        moments[-1] = x.shape[0]
        moments = reduce(moments)
        dims = x.shape[1]
        mean = moments[:dims] / moments[-1]
        return float((moments[dims : 2 * dims] / moments[-1] - mean**2).mean())
