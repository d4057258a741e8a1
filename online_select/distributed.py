"""Selection across processes started by ``accelerate launch``, ``torchrun`` or any ``torch.distributed`` setup.

The selector uses the default process group whenever one with more than one process is initialised
(Accelerate does this). Two modes, ``OnlineSelector(distributed=...)`` / ``selection.distributed``:

``local``
    Each process picks the top-k of its own candidates: choosing needs no communication. In
    ``observe`` the processes all-gather the selected samples' observed losses, ids, weights and
    scorer features (a few numbers per selected sample), so every process makes the same scorer
    update on the same data, and the returned loss is scaled by the global number of selected samples.
``global``
    The processes all-gather every candidate's signals (the few numbers the policy scores from) and
    its id; each process then applies the same rule with the same random stream to the concatenated
    candidate list, which is exactly what one process selects from the concatenated batch. The
    selected samples are spread evenly over the processes, each staying where it is when it can; only
    those that must move are sent (one ``all_to_all`` of their bytes), so sample traffic is O(k) per
    process, never O(B).

This module holds the communication (thin wrappers over ``torch.distributed``) and the pure planning
functions; the selection rule itself stays in :mod:`online_select.rules`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ._tensors import tensors_sha256
from .batch import BatchError, map_fields, per_sample_fields, take
from .rules import resolve_keep

__all__ = [
    "MODES",
    "DistributedSelectionError",
    "ProcessGroup",
    "FieldSpec",
    "local_keep",
    "global_keep",
    "even_quotas",
    "assign_trainers",
    "field_specs",
    "fields_signature",
    "describe_fields",
    "pack_rows",
    "unpack_rows",
    "exchange_selected",
    "gather_batches",
    "fingerprint",
    "is_main_process",
    "end_process_group",
]

MODES = ("local", "global")


class DistributedSelectionError(RuntimeError):
    """The processes disagree about something that must be the same on all of them."""


@dataclass(frozen=True)
class ProcessGroup:
    """The processes selection spans (the default ``torch.distributed`` group) and the device it talks on."""

    rank: int
    world_size: int
    device: torch.device

    @classmethod
    def current(cls) -> ProcessGroup | None:
        """The default process group when it spans more than one process, else ``None``."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        world_size = dist.get_world_size()
        if world_size < 2:
            return None
        backend = str(dist.get_backend())
        if backend == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        elif backend == "xccl":
            device = torch.device("xpu", torch.xpu.current_device())
        else:
            device = torch.device("cpu")
        return cls(dist.get_rank(), world_size, device)

    def _all_gather_same(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device).contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts).cpu()

    def all_gather_rows(
        self, rows: torch.Tensor, header: torch.Tensor, max_rows: int | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """All-gather a fixed-length ``header`` and a variable number of ``rows`` (``[n, ...]``) from
        every process. Returns ``(headers [world, h] float64, rows of each process)``, on the CPU.

        With ``max_rows`` (the same on every process) float64 rows travel with the header in one
        collective, and a second one follows only if some process had more rows than that;
        otherwise the counts go first.
        """
        width = math.prod(rows.shape[1:])
        meta = torch.cat(
            [torch.tensor([rows.shape[0], width], dtype=torch.float64), header.to(torch.float64).flatten()]
        )
        if max_rows is not None and rows.dtype == torch.float64:
            fits = rows[:max_rows].reshape(-1).cpu()
            padded = torch.zeros(max_rows * width, dtype=torch.float64)
            padded[: fits.numel()] = fits
            gathered = self._all_gather_same(torch.cat([meta, padded]))
            metas, data = gathered[:, : meta.numel()], gathered[:, meta.numel() :]
            counts = self._counts(metas)
            if max(counts) <= max_rows:
                parts = [row[: count * width].reshape(count, *rows.shape[1:]) for row, count in zip(data, counts)]
                return metas[:, 2:], parts
            return metas[:, 2:], self._gather_padded(rows, counts)
        metas = self._all_gather_same(meta)
        return metas[:, 2:], self._gather_padded(rows, self._counts(metas))

    def _gather_padded(self, rows: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
        longest = max(counts)
        if longest == 0:
            return [rows.new_empty((0, *rows.shape[1:])).cpu() for _ in counts]
        padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=self.device)
        padded[: rows.shape[0]] = rows.to(self.device)
        parts = self._all_gather_same(padded)
        return [part[:count] for part, count in zip(parts, counts)]

    def _counts(self, metas: torch.Tensor) -> list[int]:
        widths = metas[:, 1].long().tolist()
        if len(set(widths)) > 1:
            raise DistributedSelectionError(
                f"processes sent rows of different widths {widths} (ranks 0..{self.world_size - 1})"
            )
        return metas[:, 0].long().tolist()

    def all_to_all_rows(self, rows: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
        """Send ``send_counts[d]`` consecutive rows to process ``d``; receive ``recv_counts[s]`` from ``s``."""
        received = torch.empty((sum(recv_counts), *rows.shape[1:]), dtype=rows.dtype, device=self.device)
        dist.all_to_all_single(received, rows.to(self.device).contiguous(), recv_counts, send_counts)
        return received

    def all_gather_objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        values = values.to(self.device, torch.float64).clone()
        dist.all_reduce(values)
        return values.cpu()

    def check_identical(self, tensors: Sequence[torch.Tensor], what: str) -> None:
        """Raise :class:`DistributedSelectionError` (on every process) unless ``tensors`` are bitwise equal on all."""
        digests = self._all_gather_same(torch.tensor([fingerprint(tensors)], dtype=torch.int64)).flatten().tolist()
        if len(set(digests)) > 1:
            raise DistributedSelectionError(
                f"{what} differs across processes (fingerprints by rank: {digests}); every process must make the "
                "same updates from the same data: check for nondeterministic kernels or unequal inputs"
            )


def is_main_process() -> bool:
    """Whether this is rank 0 of the default process group, or, before one is up, of the launcher's processes
    (``RANK``, set by ``torchrun`` and ``accelerate launch``), or the only process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def end_process_group() -> None:
    """Tear down the default process group if one is up (at the end of a command-line run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def fingerprint(tensors: Sequence[torch.Tensor]) -> int:
    """A 63-bit digest of the tensors' dtypes, shapes and bytes."""
    return int.from_bytes(tensors_sha256(tensors)[:8], "big") >> 1


def local_keep(keep: int | float, batch_size: int) -> int:
    """Samples one process keeps from its ``batch_size`` candidates in ``local`` mode.

    A ratio is applied to this process's candidates; a count is capped at them (a short final batch of
    an epoch trains on all its candidates instead of failing on one process and hanging the others).
    """
    if isinstance(keep, float):
        return resolve_keep(keep, batch_size)
    return resolve_keep(min(keep, batch_size), batch_size)


def global_keep(keep: int | float, world_size: int, total: int) -> int:
    """Samples ``global`` mode keeps from ``total`` candidates of ``world_size`` processes: a count ``k``
    per process (``k * world_size``, capped at ``total``), or a ratio of all candidates."""
    if isinstance(keep, float):
        return resolve_keep(keep, total)
    return resolve_keep(min(keep * world_size, total), total)


def even_quotas(total: int, world_size: int) -> list[int]:
    """How many of ``total`` selected samples each process trains on: as even as possible, lower ranks first."""
    base, extra = divmod(total, world_size)
    return [base + (rank < extra) for rank in range(world_size)]


def assign_trainers(owners: torch.Tensor, quotas: Sequence[int]) -> torch.Tensor:
    """Which process trains each selected sample.

    ``owners[i]`` is the process holding the i-th selected sample (selection order). Each process keeps
    its own samples, in selection order, up to its quota; the surplus fills the other processes'
    shortfall in rank order. It moves the fewest samples possible and depends only on its arguments,
    so every process computes the same plan.
    """
    if sum(quotas) != owners.numel():
        raise ValueError(f"quotas {list(quotas)} do not add up to {owners.numel()} selected samples")
    trainers = torch.full_like(owners, -1)
    surplus = []
    for rank, quota in enumerate(quotas):
        own = (owners == rank).nonzero()[:, 0]
        trainers[own[:quota]] = rank
        surplus.append(own[quota:])
    spare = torch.cat(surplus).sort().values
    start = 0
    for rank, quota in enumerate(quotas):
        need = quota - int((trainers == rank).sum())
        trainers[spare[start : start + need]] = rank
        start += need
    return trainers


@dataclass(frozen=True)
class FieldSpec:
    """One per-sample field of a batch as it travels between processes."""

    path: str
    kind: str  # tensor | ndarray | list
    dtype: str
    shape: tuple[int, ...]  # of one sample
    nbytes: int  # of one sample

    def torch_dtype(self) -> torch.dtype:
        if self.kind == "ndarray":
            return torch.from_numpy(np.empty(0, dtype=np.dtype(self.dtype))).dtype
        return getattr(torch, self.dtype.removeprefix("torch."))


def field_specs(batch: Any) -> list[FieldSpec]:
    """The per-sample fields of ``batch`` in traversal order."""
    specs: list[FieldSpec] = []

    def visit(path: str, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            per_sample = tuple(value.shape[1:])
            specs.append(
                FieldSpec(path, "tensor", str(value.dtype), per_sample, math.prod(per_sample) * value.element_size())
            )
        elif isinstance(value, np.ndarray):
            if value.dtype.kind not in "biufc":  # object, text ('U', 'S'), dates...: torch has no such dtype
                raise BatchError(
                    f"{path} is a numpy array of {value.dtype}; selection across processes moves samples as bytes: "
                    "use a tensor, a numeric array or a list"
                )
            per_sample = tuple(value.shape[1:])
            specs.append(
                FieldSpec(path, "ndarray", value.dtype.str, per_sample, math.prod(per_sample) * value.itemsize)
            )
        else:
            specs.append(FieldSpec(path, "list", "", (), 0))
        return value

    map_fields(batch, visit)
    return specs


def fields_signature(specs: Sequence[FieldSpec]) -> int:
    """A 48-bit digest of the fields' names, kinds, dtypes and per-sample shapes (exact in float64)."""
    text = repr([(s.path, s.kind, s.dtype, s.shape) for s in specs])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big")


def describe_fields(specs: Sequence[FieldSpec]) -> str:
    return ", ".join(f"{s.path}: {s.kind} {s.dtype} {list(s.shape)}".rstrip() for s in specs)


def pack_rows(batch: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """The tensor and array fields of ``batch`` as bytes, one ``uint8`` row per sample (rows of width 0 for a batch
    of lists only)."""
    parts: list[torch.Tensor] = []

    def visit(path: str, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            flat = value.detach().to(device).reshape(value.shape[0], math.prod(value.shape[1:])).contiguous()
            parts.append(flat.view(torch.uint8))
        return value

    map_fields(batch, visit)
    if not parts:
        fields = per_sample_fields(batch)  # lists only; not batch_size(): a process may send no rows at all
        return torch.zeros((fields[0][1] if fields else 0, 0), dtype=torch.uint8, device=device)
    return torch.cat(parts, dim=1)


def unpack_rows(rows: torch.Tensor, specs: Sequence[FieldSpec], template: Any, lists: dict[str, list]) -> Any:
    """Rebuild a batch with ``template``'s structure from :func:`pack_rows` bytes and the list fields.

    Tensors land on the device of the template's field.
    """
    n = rows.shape[0]
    spec_iter = iter(specs)
    offset = [0]

    def visit(path: str, value: Any) -> Any:
        spec = next(spec_iter)
        if spec.kind == "list":
            return lists[spec.path]
        if spec.nbytes == 0:
            field = torch.empty((n, *spec.shape), dtype=spec.torch_dtype())
        else:
            chunk = rows[:, offset[0] : offset[0] + spec.nbytes].clone(memory_format=torch.contiguous_format)  # aligned
            offset[0] += spec.nbytes
            field = chunk.view(spec.torch_dtype()).reshape(n, *spec.shape)
        if spec.kind == "ndarray":
            return field.cpu().numpy()
        return field.to(value.device)

    return map_fields(template, visit)


def _list_fields(batch: Any) -> dict[str, list]:
    found: dict[str, list] = {}

    def visit(path: str, value: Any) -> Any:
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            found[path] = list(value)
        return value

    map_fields(batch, visit)
    return found


def exchange_selected(
    group: ProcessGroup,
    payload: Any,
    specs: Sequence[FieldSpec],
    owners: torch.Tensor,
    trainers: torch.Tensor,
    local_index: torch.Tensor,
) -> Any:
    """Move selected samples to the processes that train on them.

    ``owners``, ``trainers`` and ``local_index`` (the sample's position in its owner's batch) are given
    per selected sample in selection order and are the same on every process. Returns this process's
    samples, in selection order, with ``payload``'s structure.
    """
    rank, world = group.rank, group.world_size
    mine = trainers == rank
    from_me = owners == rank
    keep_pos = (mine & from_me).nonzero()[:, 0]
    if not bool((owners != trainers).any()):  # nothing moves: this process's own samples, in selection order
        return take(payload, local_index[keep_pos])
    send_pos = (from_me & ~mine).nonzero()[:, 0]
    send_pos = send_pos[torch.sort(trainers[send_pos], stable=True).indices]
    recv_pos = (mine & ~from_me).nonzero()[:, 0]
    recv_pos = recv_pos[torch.sort(owners[recv_pos], stable=True).indices]
    send_counts = torch.bincount(trainers[send_pos], minlength=world).tolist()
    recv_counts = torch.bincount(owners[recv_pos], minlength=world).tolist()

    sent = take(payload, local_index[send_pos])
    rows = group.all_to_all_rows(pack_rows(sent, group.device), send_counts, recv_counts)
    received_lists: dict[str, list] = {}
    if any(s.kind == "list" for s in specs):
        chunks = {path: _split(values, send_counts) for path, values in _list_fields(sent).items()}
        for source in group.all_gather_objects(chunks):
            for path, values in source.items():
                received_lists.setdefault(path, []).extend(values[rank])
    received = unpack_rows(rows, specs, payload, received_lists)

    # Write kept and received samples straight into their slots in selection order.
    slots = torch.empty(keep_pos.numel() + recv_pos.numel(), dtype=torch.long)
    slots[torch.argsort(torch.cat([keep_pos, recv_pos]))] = torch.arange(slots.numel())
    keep_slots, recv_slots = slots[: keep_pos.numel()], slots[keep_pos.numel() :]
    keep_rows = local_index[keep_pos]
    incoming = iter(_fields(received))

    def place(path: str, value: Any) -> Any:
        arrived = next(incoming)
        if isinstance(value, torch.Tensor):
            out = value.new_empty((slots.numel(), *value.shape[1:]))
            out[keep_slots.to(value.device)] = value[keep_rows.to(value.device)]
            out[recv_slots.to(value.device)] = arrived.to(value.device)
            return out
        if isinstance(value, np.ndarray):
            out = np.empty((slots.numel(), *value.shape[1:]), dtype=value.dtype)
            out[keep_slots.numpy()] = value[keep_rows.numpy()]
            out[recv_slots.numpy()] = arrived
            return out
        out = [None] * slots.numel()
        for slot, row in zip(keep_slots.tolist(), keep_rows.tolist()):
            out[slot] = value[row]
        for slot, item in zip(recv_slots.tolist(), arrived):
            out[slot] = item
        return out

    return map_fields(payload, place)


def _fields(batch: Any) -> list[Any]:
    found: list[Any] = []
    map_fields(batch, lambda path, value: found.append(value) or value)
    return found


def gather_batches(
    group: ProcessGroup, batch: Any, specs: Sequence[FieldSpec], permutation: torch.Tensor | None = None
) -> Any:
    """All processes' ``batch`` concatenated in rank order on every process, then reordered by
    ``permutation`` (indices into the concatenation) when given."""
    _, parts = group.all_gather_rows(pack_rows(batch, group.device), torch.zeros(0))
    all_rows = torch.cat(parts)
    lists: dict[str, list] = {}
    if any(s.kind == "list" for s in specs):
        for source in group.all_gather_objects(_list_fields(batch)):
            for path, values in source.items():
                lists.setdefault(path, []).extend(values)
    if permutation is not None:
        all_rows = all_rows[permutation]
        lists = {path: [values[i] for i in permutation.tolist()] for path, values in lists.items()}
    return unpack_rows(all_rows, specs, batch, lists)


def _split(values: list, counts: Sequence[int]) -> list[list]:
    out, start = [], 0
    for count in counts:
        out.append(values[start : start + count])
        start += count
    return out
