"""Per-sample memory of the large model's observed losses, keyed by sample id."""

from __future__ import annotations

import torch

from ._tensors import all_finite

__all__ = ["LossMemory", "check_ids", "checked_ids_and_max"]

MAX_SAMPLE_ID = 2**31 - 1


def check_ids(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Validate sample ids: a 1-D integer tensor of ``batch_size`` non-negative ids."""
    return checked_ids_and_max(ids, batch_size)[0]


def checked_ids_and_max(ids: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int]:
    """:func:`check_ids`, and the largest id (-1 for none): callers that bound-check a table need it,
    and one reduction for both bounds is a measurable share of a selection step."""
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(ids)
    if ids.ndim != 1 or ids.numel() != batch_size:
        raise ValueError(f"expected {batch_size} sample ids (one per candidate), got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"sample ids must be integers, got dtype {ids.dtype}")
    ids = ids.to("cpu", torch.long)
    if not ids.numel():
        return ids, -1
    low, high = (int(bound) for bound in torch.aminmax(ids))
    if low < 0 or high > MAX_SAMPLE_ID:
        raise ValueError(
            "sample ids must be dense non-negative integers below 2**31 (positions in the dataset); "
            f"got range [{low}, {high}]"
        )
    return ids, high


class LossMemory:
    """The last observed loss of every sample id, when it was observed and how often.

    Storage grows with the largest id seen, so memory use is flat once every sample has been seen.
    """

    def __init__(self, capacity: int = 0) -> None:
        self.last_loss = torch.full((capacity,), float("nan"))
        self.last_step = torch.zeros(capacity, dtype=torch.long)
        self.count = torch.zeros(capacity, dtype=torch.long)

    def __len__(self) -> int:
        return int((self.count > 0).sum())

    def _grow(self, max_id: int) -> None:
        size = self.last_loss.numel()
        if max_id < size:
            return
        new_size = max(max_id + 1, 2 * size, 1024)
        extra = new_size - size
        self.last_loss = torch.cat([self.last_loss, torch.full((extra,), float("nan"))])
        self.last_step = torch.cat([self.last_step, torch.zeros(extra, dtype=torch.long)])
        self.count = torch.cat([self.count, torch.zeros(extra, dtype=torch.long)])

    def update(self, ids: torch.Tensor, losses: torch.Tensor, step: int | torch.Tensor) -> None:
        """Record ``losses`` observed for ``ids`` at ``step`` (one for all, or one per id; non-finite
        losses are not recorded). An id that comes several times (a sampler drawing with replacement, a plan
        across an epoch's end) counts each time and keeps its last row's loss and step."""
        ids, max_id = checked_ids_and_max(ids, losses.numel())
        losses = losses.detach().float().cpu()
        if isinstance(step, torch.Tensor) and step.shape != ids.shape:
            raise ValueError(f"expected one step per id ({ids.numel()}), got shape {tuple(step.shape)}")
        if not all_finite(losses):
            keep = torch.isfinite(losses)
            ids, losses = ids[keep], losses[keep]
            if isinstance(step, torch.Tensor):
                step = step[keep]
            max_id = int(ids.max()) if ids.numel() else -1
        if ids.numel() == 0:
            return
        self._grow(max_id)
        self.count.index_add_(0, ids, torch.ones_like(ids))
        unique, inverse = torch.unique(ids, return_inverse=True)
        if unique.numel() < ids.numel():
            # Writing repeated ids at once leaves any of their values; keep each one's last row.
            rows = torch.arange(ids.numel())
            last = torch.full_like(unique, -1).scatter_reduce_(0, inverse, rows, "amax")
            ids, losses = unique, losses[last]
            if isinstance(step, torch.Tensor):
                step = step[last]
        self.last_loss[ids] = losses
        self.last_step[ids] = step

    def lookup(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(last_loss, last_step, count)`` for ``ids``; unseen ids give NaN, 0, 0."""
        ids, max_id = checked_ids_and_max(ids, ids.numel())
        size = self.last_loss.numel()
        if max_id < size:
            # index_select, not ids-indexing: the same rows for less once the large model's step has evicted the
            # tables from the caches (benchmarks/cold_ops.py; with the other gathers, select 1.35 -> 1.27 ms a step)
            return self.last_loss.index_select(0, ids), self.last_step.index_select(0, ids), self.count.index_select(0, ids)
        # Ids beyond the storage were never seen; looking up must not grow (and so change) the state.
        known = ids < size
        loss = torch.full((ids.numel(),), float("nan"))
        step = torch.zeros(ids.numel(), dtype=torch.long)
        count = torch.zeros(ids.numel(), dtype=torch.long)
        loss[known] = self.last_loss[ids[known]]
        step[known] = self.last_step[ids[known]]
        count[known] = self.count[ids[known]]
        return loss, step, count

    def mean_loss(self) -> float:
        """Mean of the recorded losses (NaN when nothing was recorded)."""
        seen = self.count > 0
        return float(self.last_loss[seen].mean()) if bool(seen.any()) else float("nan")

    def state_dict(self) -> dict:
        return {"last_loss": self.last_loss.clone(), "last_step": self.last_step.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.last_loss = state["last_loss"].clone().float()
        self.last_step = state["last_step"].clone().long()
        self.count = state["count"].clone().long()
