"""Small tensor checks shared by the hot path of a selection step."""

from __future__ import annotations

import math

import torch


def all_finite(values: torch.Tensor) -> bool:
    """Whether every value is finite. For real floating-point values a finite sum proves it (NaN and inf
    propagate) in two kernels instead of the six of ``isfinite(values).all()``, each slow right after the
    large model's step; a sum that overflows, and other dtypes, are checked value by value."""
    if values.is_floating_point() and math.isfinite(float(values.sum())):
        return True
    return bool(torch.isfinite(values).all())
