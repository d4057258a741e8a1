"""`datasets` integration: stable sample ids, batched tokenization, candidate batches, and
reference losses precomputed once per id.

Sample ids are positions in the dataset *before* any shuffling, assigned once with :func:`add_ids`;
every later transformation (tokenization, shuffling, streaming) carries the ``id`` column along,
so a reference table computed once can be looked up by id in any run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

import torch
from torch import nn

from ..memory import check_ids
from ..reference import ReferenceTable

__all__ = [
    "add_ids",
    "tokenize",
    "lm_blocks",
    "candidate_batches",
    "reference_table",
    "save_reference_table",
    "dataset_fingerprint",
]


def _is_iterable(dataset: Any) -> bool:
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


def add_ids(dataset, column: str = "id"):
    """Add a column of stable sample ids (``0..n-1`` in the dataset's current order).

    Works for map-style ``datasets.Dataset`` and streaming ``IterableDataset`` (ids count the
    stream's examples in order: add them before shuffling).
    """
    names = dataset.column_names
    if names is not None and column in names:
        raise ValueError(f"the dataset already has a {column!r} column; pass column= to name the ids differently")
    if _is_iterable(dataset):
        return dataset.map(lambda _, idx: {column: idx}, with_indices=True)
    return dataset.add_column(column, list(range(len(dataset))))


def tokenize(
    dataset,
    tokenizer,
    text_column: str = "text",
    max_length: int | None = None,
    keep_columns: tuple[str, ...] = ("id", "label", "labels"),
    batch_size: int = 1000,
    **tokenizer_kwargs: Any,
):
    """Tokenize ``text_column`` with a batched ``map``; keeps ``keep_columns`` (ids, labels), drops the rest.

    Sequences are truncated to ``max_length`` and left unpadded (pad per batch with a collator).
    """
    names = dataset.column_names
    if names is not None and text_column not in names:
        raise KeyError(f"the dataset has no text column {text_column!r}; its columns are {names}")

    def encode(batch: Mapping[str, list]) -> dict:
        return tokenizer(batch[text_column], truncation=max_length is not None, max_length=max_length, **tokenizer_kwargs)

    remove = [c for c in (names or []) if c not in keep_columns]
    return dataset.map(encode, batched=True, batch_size=batch_size, remove_columns=remove or None)


def lm_blocks(dataset, tokenizer, block_size: int, text_column: str = "text", id_column: str = "id", batch_size: int = 1000):
    """Causal-LM training blocks: tokenize, concatenate each ``map`` batch's documents (with EOS
    between them), cut into ``block_size`` tokens and give every block a stable id.

    Map-style datasets only (ids are block positions, stable for a fixed dataset and tokenizer).
    """
    if _is_iterable(dataset):
        raise TypeError("lm_blocks needs a map-style Dataset; for streams, tokenize() and add_ids() per document")
    eos = tokenizer.eos_token_id

    def chunk(batch: Mapping[str, list]) -> dict:
        ids: list[int] = []
        for text in batch[text_column]:
            ids.extend(tokenizer(text)["input_ids"])
            if eos is not None:
                ids.append(eos)
        n = len(ids) // block_size
        blocks = [ids[i * block_size : (i + 1) * block_size] for i in range(n)]
        return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks]}

    blocks = dataset.map(chunk, batched=True, batch_size=batch_size, remove_columns=dataset.column_names)
    return add_ids(blocks, id_column)


def _collate_default(rows: list[Mapping]) -> dict:
    out = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        try:
            out[key] = torch.as_tensor(values)
        except (TypeError, ValueError):
            out[key] = values
    return out


def candidate_batches(
    dataset,
    batch_size: int,
    collate_fn: Callable[[list], Mapping] | None = None,
    seed: int = 0,
    shuffle: bool = True,
    epochs: int | None = None,
    id_column: str = "id",
) -> Iterator[Mapping]:
    """Endless (or ``epochs``-long) candidate batches of ``batch_size`` from a ``datasets`` dataset.

    Map-style: a fresh seeded permutation per epoch, short last batch dropped. Streaming: shuffled
    with a buffer (``shuffle``) and ``set_epoch`` per pass. Every batch has the ``id_column``.
    """
    collate = collate_fn or _collate_default
    names = dataset.column_names
    if names is not None and id_column not in names:
        raise KeyError(f"the dataset has no {id_column!r} column: add stable ids first with add_ids(dataset)")
    epoch = 0
    while epochs is None or epoch < epochs:
        if _is_iterable(dataset):
            stream = dataset.shuffle(seed=seed, buffer_size=max(1000, 10 * batch_size)) if shuffle else dataset
            stream.set_epoch(epoch)
            rows: list = []
            produced = False
            for row in stream:
                rows.append(row)
                if len(rows) == batch_size:
                    produced = True
                    yield collate(rows)
                    rows = []
            if not produced:
                raise ValueError(f"the stream has fewer than batch_size={batch_size} examples")
        else:
            n = len(dataset)
            if n < batch_size:
                raise ValueError(f"the dataset has {n} examples, fewer than batch_size={batch_size}")
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)) if shuffle else torch.arange(n)
            for start in range(0, n - batch_size + 1, batch_size):
                yield collate([dataset[int(i)] for i in order[start : start + batch_size]])
        epoch += 1


@torch.inference_mode()
def reference_table(
    model: nn.Module,
    dataset,
    loss: Callable[[nn.Module, Any], torch.Tensor],
    batch_size: int = 64,
    collate_fn: Callable[[list], Mapping] | None = None,
    id_column: str = "id",
    device: str | torch.device = "cpu",
    num_ids: int | None = None,
) -> ReferenceTable:
    """Score every example once with a frozen reference ``model`` and key the losses by sample id.

    ``loss`` is a per-sample loss adapter (e.g. :class:`~online_select.hf.CausalLMLoss`); when it
    has ``features``, they are stored too and feed the scorer. Save the result with
    :func:`save_reference_table` and load it in any later run (``reference.kind=file`` in recipes).
    """
    model.eval().to(device)
    collate = collate_fn or _collate_default
    seen_ids, seen_feats = [], []
    names = dataset.column_names
    if names is not None and id_column not in names:
        raise KeyError(f"the dataset has no {id_column!r} column: add stable ids first with add_ids(dataset)")

    def score(batch: Mapping) -> None:
        ids = check_ids(torch.as_tensor(batch[id_column]), len(batch[id_column]))
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        feats = loss.features(model, moved) if hasattr(loss, "features") else loss(model, moved)[:, None]
        seen_ids.append(ids)
        seen_feats.append(feats.float().cpu())

    # Every example once, in order, the last batch short (a dataset smaller than batch_size is one batch).
    rows: list = []
    for row in dataset if _is_iterable(dataset) else (dataset[i] for i in range(len(dataset))):
        rows.append(row)
        if len(rows) == batch_size:
            score(collate(rows))
            rows = []
    if rows:
        score(collate(rows))
    if not seen_ids:
        raise ValueError("the dataset is empty: there is nothing to score")
    ids = torch.cat(seen_ids)
    feats = torch.cat(seen_feats)
    size = num_ids if num_ids is not None else int(ids.max()) + 1
    table = torch.full((size, feats.shape[1]), float("nan"))
    table[ids] = feats
    return ReferenceTable(table[:, 0], table[:, 1:] if feats.shape[1] > 1 else None)


def save_reference_table(table: ReferenceTable, path: str, fingerprint: Mapping[str, str] | None = None) -> None:
    """Write a reference table with safetensors, atomically; load it with ``ReferenceTable.load(path, expect)``.

    ``fingerprint`` (string keys and values) names the data the ids point at, e.g.
    ``dataset_fingerprint(train)`` (:func:`dataset_fingerprint`) or ``{"tokens_sha256": samples_fingerprint(token_ids)}``
    (:func:`~online_select.reference.samples_fingerprint`); a later load that expects another value for a stored
    key is an error."""
    table.save(path, fingerprint)


_FINGERPRINT_ROWS = 4096  # rows hashed at a time (fixed: the digest must not depend on a caller's batch size)


def dataset_fingerprint(dataset, columns: Iterable[str] | None = None, id_column: str = "id") -> dict[str, str]:
    """What a reference table's ids point at in a map-style ``datasets.Dataset``: ``{"num_ids", "rows_sha256"}``,
    the SHA-256 of the id column and ``columns`` (default: every column) row by row, in the order of the ids
    (so a shuffled copy, whose ids travel with their rows, has the same fingerprint).

    Save a table with it (``save_reference_table(table, path, dataset_fingerprint(train))``) and load it with
    ``ReferenceTable.load(path, expect=dataset_fingerprint(train))``: a dataset tokenized otherwise, relabelled,
    filtered or cut to another size is then a :class:`~online_select.reference.ReferenceMismatchError`.
    Name the columns the reference's losses depend on (e.g. ``["input_ids", "label"]``), so that columns
    added later for other purposes do not change it."""
    if _is_iterable(dataset):
        raise TypeError("dataset_fingerprint needs a map-style Dataset: a stream has no fixed contents to hash")
    names = list(dataset.column_names)
    if id_column not in names:
        raise KeyError(f"the dataset has no {id_column!r} column: add stable ids first with add_ids(dataset)")
    wanted = names if columns is None else list(dict.fromkeys(columns))
    missing = [column for column in wanted if column not in names]
    if missing:
        raise KeyError(f"the dataset has no column(s) {missing}; it has {names}")
    hashed = [id_column, *sorted(column for column in wanted if column != id_column)]
    digest = hashlib.sha256(json.dumps(hashed).encode())
    id_view = dataset.with_format("numpy", columns=[id_column])
    starts = range(0, len(dataset), _FINGERPRINT_ROWS)
    chunks = [np.asarray(id_view[start : start + _FINGERPRINT_ROWS][id_column]) for start in starts]
    ids = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    view = dataset.select(np.argsort(ids, kind="stable")).with_format("numpy", columns=hashed)
    for start in starts:
        rows = view[start : start + _FINGERPRINT_ROWS]
        for column in hashed:
            _hash_values(digest, rows[column])
    return {"num_ids": str(int(ids.max()) + 1 if ids.size else 0), "rows_sha256": digest.hexdigest()}


def _hash_values(digest: Any, values: Any) -> None:
    array = np.asarray(values) if not isinstance(values, list) else np.asarray(values, dtype=object)
    if array.dtype != object:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
        return
    # Ragged lists (unpadded token ids) and strings: one JSON line per row.
    for value in array:
        digest.update(json.dumps(value.tolist() if isinstance(value, np.ndarray) else value, default=str).encode())
        digest.update(b"\n")
