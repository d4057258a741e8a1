"""Reference (irreducible-loss) estimates: a table looked up by sample id, or a frozen model.

Builders train reference models the ways RHO-LOSS and its successors do: on a holdout split, or as
*twin halves* (two models, each trained on one half of the training ids and scoring the other half,
so no data is held back and no sample is scored by a model that saw it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._tensors import tensors_sha256
from ._warn import warn_user
from .batch import batch_size
from .losses import ModelLoss, check_per_sample_loss
from .memory import check_ids, checked_ids_and_max

__all__ = [
    "Reference",
    "ReferenceTable",
    "ReferenceModel",
    "ReferenceCoverageError",
    "ReferenceMismatchError",
    "samples_fingerprint",
    "train_model",
    "reference_table_from_models",
    "twin_halves_reference",
    "holdout_reference",
]


class ReferenceCoverageError(KeyError):
    """A candidate's sample id has no reference loss."""

    def __str__(self) -> str:
        return str(self.args[0])


class ReferenceMismatchError(ValueError):
    """A saved reference table was built for other training data than the run that loads it."""


def samples_fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors indexed by sample id (each one's dtype, shape and values), e.g. a task's inputs and
    (noisy) labels: the data a reference table's ids point at."""
    return tensors_sha256(tensors).hex()


def _check_fingerprint(path: str, found: Mapping[str, str], expected: Mapping[str, str]) -> None:
    if not expected:
        return
    if not set(found) & set(expected):
        warn_user(
            f"online_select: the reference table {path!r} was saved without a fingerprint of its training data, so "
            "nothing checks that its sample ids point at this run's samples (label noise, data folder, sample count)",
            UserWarning,
        )
        return
    differ = [key for key in expected if key in found and found[key] != expected[key]]
    if differ:
        shown = "; ".join(f"{key}: {found[key]!r} in the file, {expected[key]!r} in this run" for key in differ)
        raise ReferenceMismatchError(
            f"the reference table {path!r} was built for other training data than this run's ({shown}). Its losses "
            "are keyed by sample id, so they would score other samples: rebuild it for this run's data (a recipe's "
            "data path, label_noise, noise_seed and max_train_samples must match the run that saved it)"
        )


class Reference:
    """Base class: per-candidate reference losses and scorer features."""

    needs_ids: bool = False
    reads_candidates: bool = True  # False: looks candidates up by id alone (OnlineSelector.select_steps need not join them)

    def losses(self, batch: Any, ids: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def features(self, batch: Any, ids: torch.Tensor | None) -> torch.Tensor:
        """Features for the scorer, ``[B, F]``; the first column is the reference loss."""
        return self.losses(batch, ids)[:, None]

    def losses_and_features(self, batch: Any, ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(batch, ids)
        return features[:, 0], features

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


class ReferenceTable(Reference):
    """Reference losses (and optional extra features) precomputed once per sample id.

    ``losses[i]`` is the reference loss of sample id ``i``; NaN marks an id that has none, and
    looking one up is an error that names it.
    """

    needs_ids = True
    reads_candidates = False

    def __init__(self, losses: torch.Tensor, features: torch.Tensor | None = None) -> None:
        # A copy: the table's losses are rewritten in place (refresh, rejection), never the caller's tensor.
        losses = torch.as_tensor(losses, dtype=torch.float32).flatten().clone()
        if features is not None:
            features = torch.as_tensor(features, dtype=torch.float32)
            if features.ndim != 2 or features.shape[0] != losses.numel():
                raise ValueError(
                    f"features must be [num_ids, F] with num_ids={losses.numel()}, got {tuple(features.shape)}"
                )
        self._set(losses, features)

    def _set(self, losses: torch.Tensor, features: torch.Tensor | None) -> None:
        # One row per id, the loss first: a candidate batch's scorer features are one gather, not one per column
        # and a join. ``table`` and ``extra`` are views of it, so writing either writes the rows.
        self._rows = losses[:, None] if features is None else torch.cat([losses[:, None], features], dim=1)
        self._views()
        self.covered = torch.isfinite(losses)
        self._covers_all = bool(self.covered.all())

    def _views(self) -> None:
        self.table = self._rows[:, 0]
        self.extra = self._rows[:, 1:] if self._rows.shape[1] > 1 else None

    def __len__(self) -> int:
        return int(self.covered.sum())

    def _check(self, ids: torch.Tensor | None, n: int) -> torch.Tensor:
        if ids is None:
            raise ValueError("a ReferenceTable looks losses up by sample id: pass ids with each candidate batch")
        ids, max_id = checked_ids_and_max(ids, n)
        if max_id < self.table.numel() and (self._covers_all or bool(self.covered[ids].all())):
            return ids
        outside = ids >= self.table.numel()
        missing = outside.clone()
        missing[~outside] = ~self.covered[ids[~outside]]
        if bool(missing.any()):
            bad = ids[missing][:5].tolist()
            raise ReferenceCoverageError(
                f"the reference table has no loss for {int(missing.sum())} candidate sample id(s), e.g. {bad}; "
                f"it covers {len(self)} ids in [0, {self.table.numel()})"
            )
        return ids

    def losses(self, batch: Any, ids: torch.Tensor | None) -> torch.Tensor:
        n = ids.numel() if ids is not None else 0
        return self.table.index_select(0, self._check(ids, n))

    def features(self, batch: Any, ids: torch.Tensor | None) -> torch.Tensor:
        n = ids.numel() if ids is not None else 0
        return self._rows.index_select(0, self._check(ids, n))

    def replace_losses(self, ids: torch.Tensor, losses: torch.Tensor) -> None:
        """Overwrite the reference losses of ``ids`` (covered ids only; features are kept)."""
        ids = self._check(ids, ids.numel())
        losses = torch.as_tensor(losses, dtype=torch.float32).flatten()
        if losses.numel() != ids.numel() or not bool(torch.isfinite(losses).all()):
            raise ValueError(f"expected {ids.numel()} finite losses to replace, got {losses.numel()} (or NaN/inf)")
        if self._rows.is_inference():  # tables built under torch.inference_mode cannot be updated in place
            self._rows = self._rows.clone()
            self._views()
        self.table[ids] = losses

    def state_dict(self) -> dict:
        state = {"losses": self.table.clone(memory_format=torch.contiguous_format)}
        if self.extra is not None:
            state["features"] = self.extra.clone(memory_format=torch.contiguous_format)
        return state

    def load_state_dict(self, state: dict) -> None:
        self._set(state["losses"].clone().float(), state["features"].clone().float() if "features" in state else None)

    @classmethod
    def from_state_dict(cls, state: dict) -> ReferenceTable:
        return cls(state["losses"], state.get("features"))

    def save(self, path: str | Path, fingerprint: Mapping[str, str] | None = None) -> None:
        """Write the table with safetensors (atomically: a temporary file renamed into place).

        ``fingerprint`` (string keys and values, e.g. :meth:`Task.reference_fingerprint`) names the training data
        the ids point at; it is stored as the file's metadata and checked by :meth:`load`."""
        from safetensors.torch import save_file

        metadata = {str(key): str(value) for key, value in (fingerprint or {}).items()}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file(self.state_dict(), str(tmp), metadata=metadata or None)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, expect: Mapping[str, str] | None = None) -> ReferenceTable:
        """Read a table written by :meth:`save`; a file without ``losses`` is a clear error.

        With ``expect`` (the loading run's fingerprint), a key the file stores with another value raises
        :class:`ReferenceMismatchError`; a file saved without a fingerprint loads with a warning."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as file:
                found = file.metadata() or {}
                state = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (a handle, not a dict)
        except (OSError, SafetensorError) as exc:
            raise ValueError(f"cannot read a reference table from {str(path)!r}: {exc}") from None
        if "losses" not in state:
            raise ValueError(f"{str(path)!r} has no 'losses' tensor; it is not a reference table")
        _check_fingerprint(str(path), found, expect or {})
        return cls.from_state_dict(state)


class ReferenceModel(Reference):
    """A frozen model evaluated on every candidate batch (one small forward per step)."""

    def __init__(self, model: nn.Module, loss: ModelLoss) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.loss = loss

    @torch.inference_mode()
    def losses(self, batch: Any, ids: torch.Tensor | None) -> torch.Tensor:
        return check_per_sample_loss(self.loss(self.model, batch), batch_size(batch), "the reference model's loss").float().cpu()

    @torch.inference_mode()
    def features(self, batch: Any, ids: torch.Tensor | None) -> torch.Tensor:
        if hasattr(self.loss, "features"):
            return self.loss.features(self.model, batch).float().cpu()
        return self.losses(batch, ids)[:, None]


def train_model(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[], Iterable[Any]],
    loss: ModelLoss,
    epochs: int,
) -> nn.Module:
    """Train ``model`` for ``epochs`` passes over ``batches()`` with the mean of ``loss``."""
    model.train()
    for _ in range(epochs):
        for batch in batches():
            per_sample = loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            per_sample.mean().backward()
            optimizer.step()
    return model.eval()


@torch.inference_mode()
def reference_table_from_models(
    parts: Sequence[tuple[nn.Module, Iterable[Any]]],
    loss: ModelLoss,
    ids_of: Callable[[Any], torch.Tensor],
    num_ids: int,
) -> ReferenceTable:
    """Score each ``(model, batches)`` part and collect one table keyed by sample id."""
    table = torch.full((num_ids,), float("nan"))
    extra: torch.Tensor | None = None
    for model, batches in parts:
        model.eval()
        for batch in batches:
            ids = torch.as_tensor(ids_of(batch))
            ids = check_ids(ids, ids.numel())
            feats = loss.features(model, batch).float().cpu() if hasattr(loss, "features") else None
            if feats is None:
                table[ids] = loss(model, batch).float().cpu()
                continue
            table[ids] = feats[:, 0]
            if feats.shape[1] > 1:
                if extra is None:
                    extra = torch.full((num_ids, feats.shape[1] - 1), float("nan"))
                extra[ids] = feats[:, 1:]
    return ReferenceTable(table, extra)


def twin_halves_reference(
    make_model: Callable[[], nn.Module],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    batches_of_half: Callable[[int, bool], Iterable[Any]],
    loss: ModelLoss,
    ids_of: Callable[[Any], torch.Tensor],
    num_ids: int,
    epochs: int = 3,
) -> tuple[ReferenceTable, dict]:
    """Twin-halves reference: model ``h`` trains on half ``h`` and scores half ``1 - h``.

    ``batches_of_half(h, shuffle)`` yields batches of the samples in half ``h``. Returns the table
    and a report (seconds spent, ids covered).
    """
    start = time.perf_counter()
    parts = []
    for half in (0, 1):
        model = make_model()
        train_model(model, make_optimizer(model), lambda h=half: batches_of_half(h, True), loss, epochs)
        parts.append((model, batches_of_half(1 - half, False)))
    table = reference_table_from_models(parts, loss, ids_of, num_ids)
    return table, {"reference_seconds": time.perf_counter() - start, "reference_ids": len(table)}


def holdout_reference(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    holdout_batches: Callable[[], Iterable[Any]],
    train_batches: Iterable[Any],
    loss: ModelLoss,
    ids_of: Callable[[Any], torch.Tensor],
    num_ids: int,
    epochs: int = 3,
) -> tuple[ReferenceTable, dict]:
    """RHO-LOSS's reference: train on a holdout split, then score every training id once."""
    start = time.perf_counter()
    train_model(model, optimizer, holdout_batches, loss, epochs)
    table = reference_table_from_models([(model, train_batches)], loss, ids_of, num_ids)
    return table, {"reference_seconds": time.perf_counter() - start, "reference_ids": len(table)}
