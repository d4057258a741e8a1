"""Read an offline W&B run back without an account (wandb itself has no reader for them).

A ``run-*.wandb`` file is a log of ``wandb_internal_pb2.Record`` protobufs in the LevelDB log layout:
a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each chunk
``crc32 (u32) | length (u16) | type (u8) | data``; type 1 is a whole record, 2/3/4 the first, middle
and last pieces of one split across blocks. The CRC is ``zlib.crc32`` over the type byte and data.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["WandbFileError", "find_run_files", "read_records", "read_history", "read_artifacts", "wait_until_finished"]

_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32 * 1024
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """The file is not a W&B run log, or it is corrupt."""


def find_run_files(folder: str | Path) -> list[Path]:
    """Every ``run-*.wandb`` file under ``folder`` (e.g. a run's output directory), oldest first."""
    return sorted(Path(folder).rglob("run-*.wandb"), key=lambda p: p.stat().st_mtime)


def _payloads(data: bytes, path: Path) -> Iterator[bytes]:
    if data[: len(_HEADER)] != _HEADER:
        raise WandbFileError(f"{path} is not a W&B run log (header {data[:7]!r})")
    pos, pending = len(_HEADER), None
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        if crc == 0 and length == 0 and kind == 0:  # zero padding at the end of a block
            pos += left
            continue
        chunk = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        if len(chunk) < length:
            break  # a run still being written (or cut short): the last record is incomplete
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise WandbFileError(f"{path}: checksum mismatch at byte {pos}")
        pos += _CHUNK_HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE and pending is not None:
            pending += chunk
        elif kind == _LAST and pending is not None:
            yield pending + chunk
            pending = None
        else:
            raise WandbFileError(f"{path}: unexpected chunk type {kind} at byte {pos}")


def read_records(path: str | Path) -> Iterator[Any]:
    """The ``wandb_internal_pb2.Record`` messages of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    for payload in _payloads(path.read_bytes(), path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def wait_until_finished(path: str | Path, timeout: float = 60.0) -> None:
    """Block until the run's ``exit`` record is in the file. ``wandb.finish()`` can return before
    W&B's writer process has flushed the file, so a reader that starts right away may see a run
    that stops short."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if any(record.WhichOneof("record_type") == "exit" for record in read_records(path)):
                return
        except WandbFileError:
            pass  # a chunk caught mid-write: read again
        if time.monotonic() > deadline:
            raise WandbFileError(f"{path}: no exit record after {timeout:.0f} s (the run has not finished writing)")
        time.sleep(0.1)


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Every logged history row as a dict; nested keys (``wandb.Histogram`` and ``wandb.Table``
    fields) are joined by ``/``, values decoded from JSON. Rows logged to the same step are merged."""
    rows: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for record in read_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        step = int(row.get("_step", len(order)))
        if step not in rows:
            rows[step] = {}
            order.append(step)
        rows[step].update(row)
    return [rows[step] for step in order]


def read_artifacts(path: str | Path) -> list[dict[str, Any]]:
    """Artifacts logged by the run (e.g. the media of ``wandb.Table`` s): name, type, file paths."""
    out = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "artifact":
            artifact = record.artifact
            out.append(
                {"name": artifact.name, "type": artifact.type, "files": [entry.path for entry in artifact.manifest.contents]}
            )
    return out
