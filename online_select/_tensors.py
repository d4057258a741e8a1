"""Small tensor helpers shared across the package: the hot path's finite check, and a digest of tensors."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import torch


def all_finite(values: torch.Tensor) -> bool:
    """Whether every value is finite. For real floating-point values a finite sum proves it (NaN and inf
    propagate) in two kernels instead of the six of ``isfinite(values).all()``, each slow right after the
    large model's step; a sum that overflows, and other dtypes, are checked value by value."""
    if values.is_floating_point() and math.isfinite(float(values.sum())):
        return True
    return bool(torch.isfinite(values).all())


def tensors_sha256(tensors: Iterable[torch.Tensor]) -> bytes:
    """SHA-256 of each tensor's dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.digest()
