"""Input validation for the estimators, in one place.

Every public estimator converts its inputs here. Bad input raises :class:`EstimatorInputError`
(a ``ValueError``) with a one-line message that names the argument; nothing deeper is reached.
Features become 2-D float tensors, ids (groups, labels) 1-D int64 tensors, all on one device.

Unusable frames are dropped and counted (:func:`finite_rows`), never silently kept: a frame with a NaN
or inf feature, and a frame whose values are so large that squared distances overflow the features'
precision (|x|^2 > finfo.max / 4, e.g. values near 1e19 in float32). An inf frame is the limit of
ever larger values, so both are treated alike instead of the finite giants reaching the k-means and
coming out as a NaN inertia. When no frame is left the error names the reason and says to rescale.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

ArrayLike = Union[Tensor, np.ndarray, Sequence]


class EstimatorInputError(ValueError):
    """Raised for estimator input that cannot be used; the message is one line."""


def _to_tensor(value: ArrayLike, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as error:
            raise EstimatorInputError(f"{name} cannot be read as an array: {error}") from None
    if value.dtype.kind not in "biuf":
        raise EstimatorInputError(f"{name} must be numeric, got dtype {value.dtype}")
    return torch.from_numpy(np.ascontiguousarray(value))


def _dtype_name(tensor: Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


def resolve_device(*values: ArrayLike, device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """The device to compute on: ``device`` if given, else that of the torch inputs (CPU for numpy).

    Torch inputs on different devices are an error unless ``device`` says where to go.
    """
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise EstimatorInputError(f"device {device!r} is not a torch device") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EstimatorInputError(f"device {device} requested but CUDA is not available")
        return device
    devices = {v.device for v in values if isinstance(v, Tensor)}
    if len(devices) > 1:
        listed = ", ".join(sorted(str(d) for d in devices))
        raise EstimatorInputError(f"inputs are on different devices ({listed}); move them to one device")
    return devices.pop() if devices else torch.device("cpu")


def as_features(value: ArrayLike, name: str, device: torch.device) -> Tensor:
    """A non-empty 2-D (frames, dims) floating-point tensor on ``device`` (float32, or float64 kept)."""
    tensor = _to_tensor(value, name)
    if not tensor.is_floating_point():
        raise EstimatorInputError(f"{name} must hold floating-point features, got dtype {_dtype_name(tensor)}")
    if tensor.dim() != 2:
        raise EstimatorInputError(f"{name} must be 2-D (frames, dims), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise EstimatorInputError(f"{name} is empty (shape {tuple(tensor.shape)})")
    if tensor.dtype != torch.float64:
        tensor = tensor.to(torch.float32)
    return tensor.to(device)


def as_ids(value: ArrayLike, name: str, device: torch.device, *, nonnegative: bool = False) -> Tensor:
    """A non-empty 1-D int64 tensor on ``device``; ``nonnegative`` rejects ids below 0."""
    tensor = _to_tensor(value, name)
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise EstimatorInputError(f"{name} must hold integer ids, got dtype {_dtype_name(tensor)}")
    if tensor.dim() != 1:
        raise EstimatorInputError(f"{name} must be 1-D (one id per frame), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise EstimatorInputError(f"{name} is empty")
    tensor = tensor.to(device=device, dtype=torch.int64)
    if nonnegative and bool((tensor < 0).any()):
        raise EstimatorInputError(f"{name} must be non-negative, got minimum {int(tensor.min())}")
    return tensor


DENSE_LABEL_FLOOR = 2**16
"""Class ids below this are always accepted (see :func:`check_label_range`)."""


def check_label_range(labels: Tensor, name: str = "labels", n_classes: Optional[int] = None) -> int:
    """The number of classes of the class ids ``labels`` (1-D, non-negative, as from ``as_ids``):
    ``n_classes`` if given (every id must be below it), else the largest id + 1.

    Per-class state (counts, class frequencies, probe weights D x n) is allocated for every id up to
    the largest, so ids must be dense 0..n-1 and n is capped at max(N, 2**16), N = len(labels): N
    frames can fill at most N classes, so an id >= N proves that most classes are empty (ids that were
    never remapped, e.g. hashes), while the 2**16 floor lets a small subset keep a global inventory
    (phones, characters, subword units) without remapping. At the cap a probe on 768-dim features
    holds 2**16 x 768 float32 weights (192 MiB); an id of 1e12 would have asked for terabytes.
    """
    if labels.numel() == 0:
        raise EstimatorInputError(f"{name} is empty")
    cap = max(int(labels.shape[0]), DENSE_LABEL_FLOOR)
    largest = int(labels.max())
    remap = "remap them to 0..n-1, e.g. numpy.unique(ids, return_inverse=True)[1]"
    if n_classes is None:
        if largest >= cap:
            raise EstimatorInputError(
                f"{name} has id {largest}, but class ids must be dense 0..n-1 with n <= {cap} "
                f"(max(frames, {DENSE_LABEL_FLOOR})); {remap}"
            )
        return largest + 1
    n_classes = check_int(n_classes, "n_classes", 1)
    if n_classes > cap:
        raise EstimatorInputError(
            f"n_classes={n_classes} is more than {cap} = max(frames, {DENSE_LABEL_FLOOR}) classes; "
            f"class ids must be dense 0..n-1: {remap}"
        )
    if largest >= n_classes:
        raise EstimatorInputError(f"{name} has id {largest} but n_classes={n_classes}")
    return n_classes


def check_same_length(**named: Tensor) -> int:
    """The common number of rows; an error naming every length when they differ."""
    lengths = {name: int(t.shape[0]) for name, t in named.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise EstimatorInputError(f"inputs must have one row per frame; lengths differ: {listed}")
    return next(iter(lengths.values()))


SQUARED_NORM_HEADROOM = 4.0
"""A usable row has |x|^2 <= finfo(dtype).max / this: squared distances between usable rows and
centres (means of rows), |a - b|^2 <= (|a| + |b|)^2 <= 4 max(|a|^2, |b|^2), then stay finite."""


def squared_norm_limit(dtype: torch.dtype) -> float:
    """Largest squared row norm :func:`finite_rows` keeps for features of ``dtype``."""
    return torch.finfo(dtype).max / SQUARED_NORM_HEADROOM


def _usable(tensor: Tensor, chunk_rows: int = 8192) -> Tensor:
    """Rows with |x|^2 <= squared_norm_limit; NaN/inf propagate into |x|^2, so they fail the same test."""
    if tensor.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=tensor.device)
    limit = squared_norm_limit(tensor.dtype)
    return torch.cat([(chunk * chunk).sum(dim=1) <= limit for chunk in torch.split(tensor, chunk_rows)])


def finite_rows(*features: Tensor) -> Tuple[Tensor, int]:
    """Mask of rows usable in every feature tensor, and the number of rows dropped.

    A row is dropped when it has a NaN or inf feature or when its squared norm is beyond
    :func:`squared_norm_limit` of the features' dtype (distances to it would overflow). Raises when no
    usable row remains, saying to rescale when oversized values are the reason.
    """
    keep = torch.ones(features[0].shape[0], dtype=torch.bool, device=features[0].device)
    for tensor in features:
        keep &= _usable(tensor)
    kept = int(keep.sum())
    if kept == 0:
        _raise_no_usable_rows(features)
    return keep, int(keep.shape[0]) - kept


def _raise_no_usable_rows(features: Sequence[Tensor]) -> None:
    """The error of :func:`finite_rows` when every row is dropped, naming the reason."""
    finite = [torch.isfinite(tensor).all(dim=1) for tensor in features]
    oversized = [(tensor, ok & ~_usable(tensor)) for tensor, ok in zip(features, finite)]
    oversized = [(tensor, rows) for tensor, rows in oversized if bool(rows.any())]
    if not oversized:
        raise EstimatorInputError("no finite frames remain: every frame has a NaN or inf feature")
    tensor, rows = oversized[0]
    n_nonfinite = int((~torch.stack(finite).all(dim=0)).sum())
    largest = float(tensor[rows].abs().max())
    also = f", the other {n_nonfinite} a NaN or inf" if n_nonfinite else ""
    raise EstimatorInputError(
        f"no usable frames remain: {len(rows) - n_nonfinite} frames have values too large for "
        f"{_dtype_name(tensor)} arithmetic (largest |value| {largest:.3g}; squared row norms must stay "
        f"<= {squared_norm_limit(tensor.dtype):.3g}){also}; rescale the features (e.g. standardise them)"
    )


def check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise EstimatorInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_int(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise EstimatorInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_fraction(value: float, name: str) -> float:
    if not isinstance(value, (int, float, np.floating)) or not 0.0 < float(value) < 1.0:
        raise EstimatorInputError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return float(value)
