"""Label-free baselines computed beside the MI bound: RankMe, RankMe-t, k-means inertia, Davies-Bouldin."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .kmeans import OnlineKMeans
from .validation import ArrayLike, EstimatorInputError, as_features, as_ids, check_same_length, resolve_device


def _finite_features(z: ArrayLike, name: str, device: torch.device) -> Tensor:
    z = as_features(z, name, device)
    if not bool(torch.isfinite(z).all()):
        raise EstimatorInputError(f"{name} contains NaN or inf; drop those frames first")
    return z


def _means_by_index(x: Tensor, index: Tensor, n_groups: int) -> Tuple[Tensor, Tensor]:
    """Float64 mean row per group (index 0..n_groups-1) and the group sizes."""
    sums = torch.zeros(n_groups, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, index, x.double())
    sizes = torch.bincount(index, minlength=n_groups).double()
    return sums / sizes[:, None], sizes


def _singular_values(z: Tensor, block_rows: int = 16384) -> Tensor:
    """Singular values of z (frames, dims), largest first, as sqrt(eig(z^T z)) with the float64 Gram
    matrix summed over row blocks: one (dims x dims) eigenproblem instead of an SVD of the tall matrix
    (on a GPU a single matrix product; memory bounded by a block). Values below ~1e-8 of the largest
    lose relative precision, far below RankMe's ``eps``."""
    gram = torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64, device=z.device)
    for block in torch.split(z, block_rows):
        block = block.double()
        gram.addmm_(block.T, block)
    return torch.linalg.eigvalsh(gram).clamp_min_(0.0).sqrt_().flip(0)


def _rankme_of(z: Tensor, eps: float) -> float:
    singular_values = _singular_values(z)
    p = singular_values / singular_values.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def rankme(z: ArrayLike, *, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp(-sum_k p_k log p_k), p_k = sigma_k / ||sigma||_1 + eps,
    with sigma the singular values of the (uncentred) frame matrix z (frames, dims)."""
    return _rankme_of(_finite_features(z, "z", resolve_device(z)), eps)


def rankme_utterance(z: ArrayLike, groups: ArrayLike, *, eps: float = 1e-7) -> float:
    """RankMe-t (Aldeneh et al. 2024): RankMe of the per-utterance mean vectors."""
    device = resolve_device(z, groups)
    z = _finite_features(z, "z", device)
    groups = as_ids(groups, "groups", device)
    check_same_length(z=z, groups=groups)
    _, utterance = torch.unique(groups, return_inverse=True)
    return _rankme_of(_means_by_index(z, utterance, int(utterance.max()) + 1)[0], eps)


def kmeans_inertia(x: ArrayLike, *, clusters: int = 50, seed: int = 0) -> float:
    """Mean squared distance of the frames to their nearest of ``clusters`` k-means centres."""
    return OnlineKMeans(clusters, seed=seed).fit(x).inertia(x)


def davies_bouldin(x: ArrayLike, labels: ArrayLike) -> float:
    """Davies-Bouldin index (1/K) sum_i max_{j != i} (s_i + s_j) / ||mu_i - mu_j||, as sklearn:
    s_i = mean Euclidean distance of cluster i's points to its centroid mu_i. Lower is better."""
    device = resolve_device(x, labels)
    x = _finite_features(x, "x", device).double()
    labels = as_ids(labels, "labels", device)
    check_same_length(x=x, labels=labels)
    _, cluster = torch.unique(labels, return_inverse=True)
    n_clusters = int(cluster.max()) + 1
    if not 2 <= n_clusters <= x.shape[0] - 1:
        raise EstimatorInputError(
            f"davies_bouldin needs 2 to n_frames-1 clusters, got {n_clusters} for {x.shape[0]} frames"
        )
    centroids, sizes = _means_by_index(x, cluster, n_clusters)
    spread = torch.zeros(n_clusters, dtype=torch.float64, device=device)
    spread.index_add_(0, cluster, torch.linalg.vector_norm(x - centroids[cluster], dim=1))
    spread /= sizes
    separation = torch.cdist(centroids, centroids)
    if bool(torch.allclose(spread, torch.zeros_like(spread))) or bool(
        torch.allclose(separation, torch.zeros_like(separation))
    ):
        return 0.0
    separation = torch.where(separation == 0, torch.full_like(separation, float("inf")), separation)
    ratios = (spread[:, None] + spread[None, :]) / separation
    ratios.fill_diagonal_(float("-inf"))
    return float(ratios.max(dim=1).values.mean())
