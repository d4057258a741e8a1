"""Candidate batches of any common structure: measure them, check them, slice them.

A batch is a tensor, a numpy array, a mapping (``dict``, ``transformers.BatchEncoding``), or a
tuple/list of fields. Per-sample fields are tensors or arrays (samples along dim 0) and, inside a
mapping or a tuple, lists (e.g. raw strings or ids: ``(texts, labels)``; a list of lists is a list of
samples). Scalars, ``None`` and 0-dim tensors are batch-level values: they are kept as they are when a
batch is sliced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["BatchError", "batch_size", "take", "per_sample_fields", "map_fields", "concat"]


class BatchError(ValueError):
    """A candidate batch is empty, ragged or of a structure that cannot be sliced."""


def _is_leaf(value: Any) -> bool:
    return value is None or isinstance(value, (str, bytes, int, float, bool))


def _is_field_container(value: Sequence) -> bool:
    """A tuple/list is a container of fields when it holds tensors, arrays, mappings or tuples; a tuple of lists
    only is one too (``(texts, labels)``, as ``zip(*samples)`` gives), while a list of lists is a list of samples."""
    if isinstance(value, tuple) and value and all(isinstance(v, list) for v in value):
        return True
    return any(isinstance(v, (torch.Tensor, np.ndarray, Mapping, tuple)) for v in value)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.ndim == 0
    return isinstance(value, (int, float, bool, np.generic))


def _uncollated(batch: Sequence) -> str | None:
    """What ``batch`` holds if it is a list of samples rather than of fields: two or more mappings with the
    same keys, or tuples of one length, with scalars that differ (labels, ids) at the same key or position. A
    batch of fields never has that: its labels and ids are per-sample tensors or lists, and a batch-level scalar
    repeated in each group of fields is the same in all of them."""
    if len(batch) < 2:
        return None
    first = batch[0]
    if isinstance(first, Mapping):
        if not all(isinstance(sample, Mapping) and sample.keys() == first.keys() for sample in batch):
            return None
        key = next((key for key in first if _differing_scalars([sample[key] for sample in batch])), None)
        return None if key is None else f"each a mapping with a scalar {key!r}"
    if isinstance(first, tuple):
        if not all(isinstance(sample, tuple) and len(sample) == len(first) for sample in batch):
            return None
        position = next((i for i in range(len(first)) if _differing_scalars([sample[i] for sample in batch])), None)
        return None if position is None else f"each a tuple with a scalar at position {position}"
    return None


def _differing_scalars(values: list) -> bool:
    return all(_is_scalar(value) for value in values) and len({float(value) for value in values}) > 1


def per_sample_fields(batch: Any, path: str = "batch") -> list[tuple[str, int]]:
    """Return ``(path, length)`` for every per-sample field in ``batch``."""
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        if batch.ndim == 0:
            return []
        return [(path, int(batch.shape[0]))]
    if isinstance(batch, Mapping):
        fields = []
        for key, value in batch.items():
            sub = f"{path}[{key!r}]"
            if isinstance(value, list):
                fields.append((sub, len(value)))
            else:
                fields.extend(per_sample_fields(value, sub))
        return fields
    if isinstance(batch, (tuple, list)):
        if _is_field_container(batch):
            samples = _uncollated(batch)
            if samples:
                raise BatchError(
                    f"{path} is a {type(batch).__name__} of {len(batch)} samples ({samples}), not a batch of fields: "
                    "collate them into one batch first (torch.utils.data.default_collate, or a DataLoader)"
                )
            fields = []
            for i, value in enumerate(batch):
                fields.extend(per_sample_fields(value, f"{path}[{i}]"))
            return fields
        return [(path, len(batch))]
    if _is_leaf(batch):
        return []
    raise BatchError(
        f"{path} has type {type(batch).__name__}; expected a tensor, array, mapping, tuple or list"
    )


def batch_size(batch: Any) -> int:
    """Number of samples in ``batch``; raises :class:`BatchError` if it is empty or ragged."""
    fields = per_sample_fields(batch)
    if not fields:
        raise BatchError("the batch has no per-sample field (no tensor, array or list of samples)")
    first_path, first_len = fields[0]
    for path, length in fields[1:]:
        if length != first_len:
            raise BatchError(
                f"ragged batch: {path} has {length} samples but {first_path} has {first_len}"
            )
    if first_len == 0:
        raise BatchError("the candidate batch is empty (0 samples)")
    return first_len


def take(batch: Any, indices: torch.Tensor) -> Any:
    """Return the samples at ``indices`` (a 1-D integer tensor) of every per-sample field.

    The structure is kept: a ``BatchEncoding`` stays a ``BatchEncoding``, a tuple a tuple.
    """
    if indices.ndim != 1:
        raise BatchError(f"indices must be 1-D, got shape {tuple(indices.shape)}")
    return _take(batch, indices.to("cpu", torch.long), None)


def _take(batch: Any, indices: torch.Tensor, index_list: list[int] | None) -> Any:
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 0:
            return batch
        return batch.index_select(0, indices.to(batch.device))
    if isinstance(batch, np.ndarray):
        if batch.ndim == 0:
            return batch
        return batch[indices.numpy()]
    if isinstance(batch, Mapping):
        if index_list is None:
            index_list = indices.tolist()
        items = {}
        for key, value in batch.items():
            if isinstance(value, list):
                items[key] = [value[i] for i in index_list]
            else:
                items[key] = _take(value, indices, index_list)
        return _rebuild_mapping(batch, items)
    if isinstance(batch, (tuple, list)):
        if index_list is None:
            index_list = indices.tolist()
        if _is_field_container(batch):
            values = [_take(v, indices, index_list) for v in batch]
        else:
            values = [batch[i] for i in index_list]
        if hasattr(batch, "_fields"):  # namedtuple
            return type(batch)(*values)
        return type(batch)(values)
    return batch


def map_fields(batch: Any, fn: Callable[[str, Any], Any], path: str = "batch") -> Any:
    """Rebuild ``batch`` with ``fn(path, field)`` in place of each per-sample field.

    Fields are visited in the order of :func:`per_sample_fields`; batch-level values are kept.
    """
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return batch if batch.ndim == 0 else fn(path, batch)
    if isinstance(batch, Mapping):
        items = {}
        for key, value in batch.items():
            sub = f"{path}[{key!r}]"
            items[key] = fn(sub, value) if isinstance(value, list) else map_fields(value, fn, sub)
        return _rebuild_mapping(batch, items)
    if isinstance(batch, (tuple, list)):
        if not _is_field_container(batch):
            return fn(path, batch)
        values = [map_fields(value, fn, f"{path}[{i}]") for i, value in enumerate(batch)]
        if hasattr(batch, "_fields"):  # namedtuple
            return type(batch)(*values)
        return type(batch)(values)
    return batch


def concat(batches: Sequence[Any]) -> Any:
    """One batch of the samples of ``batches`` in order (per-sample fields joined along dim 0).

    The batches must share one structure and, for tensors and arrays, the shape past dim 0: a field
    padded to another length in one batch (dynamic padding) is a :class:`BatchError` naming it.
    Batch-level values are taken from the first batch.
    """
    if not batches:
        raise BatchError("concat needs at least one batch")
    return _concat(list(batches), "batch")


def _concat(values: list, path: str) -> Any:
    first = values[0]
    if isinstance(first, (torch.Tensor, np.ndarray)):
        if first.ndim == 0:
            return first
        for i, value in enumerate(values[1:], 1):
            if type(value) is not type(first) or value.shape[1:] != first.shape[1:]:
                got = getattr(value, "shape", type(value).__name__)
                raise BatchError(
                    f"{path} of batch {i} has shape {tuple(got)} against {tuple(first.shape)} in batch 0: only "
                    "the sample count may differ (pad every batch to one length)"
                )
        return torch.cat(values) if isinstance(first, torch.Tensor) else np.concatenate(values)
    if isinstance(first, Mapping):
        for i, value in enumerate(values[1:], 1):
            if not isinstance(value, Mapping) or list(value) != list(first):
                keys = list(value) if isinstance(value, Mapping) else type(value).__name__
                raise BatchError(f"{path} of batch {i} has fields {keys} against {list(first)} in batch 0")
        items = {}
        for key, value in first.items():
            sub = f"{path}[{key!r}]"
            column = [batch[key] for batch in values]
            items[key] = [x for part in column for x in part] if isinstance(value, list) else _concat(column, sub)
        return _rebuild_mapping(first, items)
    if isinstance(first, (tuple, list)):
        for i, value in enumerate(values[1:], 1):
            if type(value) is not type(first) or (_is_field_container(first) and len(value) != len(first)):
                raise BatchError(f"{path} of batch {i} differs in structure from batch 0")
        if not _is_field_container(first):
            return type(first)(x for part in values for x in part)
        joined = [_concat([batch[j] for batch in values], f"{path}[{j}]") for j in range(len(first))]
        return type(first)(*joined) if hasattr(first, "_fields") else type(first)(joined)
    return first


def _rebuild_mapping(original: Mapping, items: dict) -> Mapping:
    if type(original) is dict:
        return items
    if type(original).__name__ == "BatchEncoding":
        # BatchEncoding(data, tensor_type=None) keeps tensors as they are.
        return type(original)(items)
    try:
        return type(original)(items)
    except TypeError:
        return items
