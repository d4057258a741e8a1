"""The best eval so far, and early stopping once it stops improving.

Selection reaches what a finite corpus can teach in fewer steps than uniform sampling; past that point
further steps repeat the samples it favours and the held-out metric gets worse. :class:`BestMetric`
tracks one eval metric so the loop can keep the best model and stop there instead of at ``max_steps``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["BestMetric"]

MODES = ("min", "max")


class BestMetric:
    """The best value of one eval metric and the evals since it improved.

    Args:
        metric: the eval key, e.g. ``eval/loss``.
        mode: ``min`` (lower is better) or ``max``.
        patience: evals in a row without an improvement after which :attr:`should_stop` is true; 0: never.
        min_delta: an eval improves on the best only by more than this (in the metric's units).
    """

    def __init__(self, metric: str, mode: str, patience: int = 0, min_delta: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a whole number of evals >= 0, got {patience!r}")
        if not (min_delta >= 0 and math.isfinite(min_delta)):
            raise ValueError(f"min_delta must be finite and >= 0, got {min_delta!r}")
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best_value: float | None = None
        self.best_step = -1
        self.evals_since_best = 0

    def update(self, step: int, line: dict[str, Any]) -> bool:
        """Read ``line[metric]`` of the eval at ``step``; True when it is the new best. A NaN or inf
        eval is never the best (it counts as an eval without improvement)."""
        if self.metric not in line:
            logged = ", ".join(key for key in line if key.startswith("eval/")) or "nothing"
            raise KeyError(f"the eval at step {step} has no {self.metric!r} to track; it logs {logged}")
        value = float(line[self.metric])
        if math.isfinite(value) and (self.best_value is None or self._better(value)):
            self.best_value, self.best_step, self.evals_since_best = value, step, 0
            return True
        self.evals_since_best += 1
        return False

    def _better(self, value: float) -> bool:
        assert self.best_value is not None
        if self.mode == "min":
            return value < self.best_value - self.min_delta
        return value > self.best_value + self.min_delta

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` evals in a row have passed without an improvement."""
        return self.patience > 0 and self.evals_since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step, "evals_since_best": self.evals_since_best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        value = state.get("best_value")
        self.best_value = None if value is None else float(value)
        self.best_step = int(state.get("best_step", -1))
        self.evals_since_best = int(state.get("evals_since_best", 0))
