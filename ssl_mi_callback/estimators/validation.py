"""Input validation for the estimators, in one place.

Every public estimator converts its inputs here. Bad input raises :class:`EstimatorInputError`
(a ``ValueError``) with a one-line message that names the argument; nothing deeper is reached.
Features become 2-D float tensors, ids (groups, labels) 1-D int64 tensors, all on one device.
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


def check_same_length(**named: Tensor) -> int:
    """The common number of rows; an error naming every length when they differ."""
    lengths = {name: int(t.shape[0]) for name, t in named.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise EstimatorInputError(f"inputs must have one row per frame; lengths differ: {listed}")
    return next(iter(lengths.values()))


def finite_rows(*features: Tensor) -> Tuple[Tensor, int]:
    """Mask of rows that are finite in every feature tensor, and the number of rows dropped.

    Raises when no finite row remains.
    """
    keep = torch.ones(features[0].shape[0], dtype=torch.bool, device=features[0].device)
    for tensor in features:
        keep &= torch.isfinite(tensor).all(dim=1)
    kept = int(keep.sum())
    if kept == 0:
        raise EstimatorInputError("no finite frames remain: every frame has a NaN or inf feature")
    return keep, int(keep.shape[0]) - kept


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
