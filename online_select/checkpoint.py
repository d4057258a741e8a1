"""Atomic, verifiable checkpoints, alone or through ``accelerator.save_state``.

A checkpoint is a directory ``root/step-XXXXXXXX`` written under a temporary name, fsynced, and
renamed into place; ``meta.json`` (written last) names every file with its size, so a directory
whose files are missing or cut short is *incomplete* and skipped when looking for the newest one.
A crash while saving leaves at most a ``.tmp-*`` directory behind; the latest good checkpoint is
never touched.

Two writers share that format:

- :func:`save_checkpoint` / :func:`load_checkpoint`: a plain state dict plus model weights.
- :func:`save_accelerator_checkpoint` / :func:`load_accelerator_checkpoint`: everything
  ``accelerator.save_state`` writes (models with safetensors, optimizers, schedulers, scaler and
  per-process RNG, FSDP/DeepSpeed layouts included) plus the objects given to :func:`register_state`.

Everything is read back with safetensors or ``torch.load(weights_only=True)``. That is why the
selector joins ``save_state`` through Accelerate's save/load hooks rather than
``accelerator.register_for_checkpointing``: Accelerate loads registered objects with
``weights_only=False`` (arbitrary code from a pickle), which this library never does.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "CheckpointError",
    "Stateful",
    "ProcessRNG",
    "GeneratorState",
    "save_checkpoint",
    "write_loadable",
    "load_checkpoint",
    "find_latest_checkpoint",
    "list_checkpoints",
    "read_meta",
    "register_state",
    "register_selector",
    "save_accelerator_checkpoint",
    "load_accelerator_checkpoint",
]

FORMAT = "online_select.checkpoint/2"
_NAME = re.compile(r"^step-(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or not an online_select checkpoint."""


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (relative path -> size in bytes)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _commit(tmp: Path, final: Path, meta: dict[str, Any]) -> None:
    """fsync ``tmp``'s files, write ``meta.json`` naming them, and rename ``tmp`` to ``final``."""
    files = _files(tmp)
    for name in files:
        _fsync(tmp / name)
    for folder in sorted({(tmp / name).parent for name in files}, key=lambda p: len(p.parts), reverse=True):
        _fsync(folder)
    meta_tmp = tmp / "meta.json.tmp"
    meta_tmp.write_text(json.dumps({"format": FORMAT, **meta, "files": files}, indent=1))
    _fsync(meta_tmp)
    os.replace(meta_tmp, tmp / "meta.json")
    _fsync(tmp)
    if final.exists():
        _discard(final)
    os.replace(tmp, final)
    _fsync(final.parent)


def _discard(path: Path) -> None:
    """Remove a checkpoint directory: renamed away first, so it is never seen half deleted."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            _discard(old)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``meta.json`` after checking that every file it names is there in full."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a directory")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not an online_select checkpoint (meta.json unreadable: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path} has format {found!r}; expected {FORMAT!r}")
    for name, size in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path} is incomplete: {name} is missing")
        if file.stat().st_size != size:
            raise CheckpointError(
                f"{path} is incomplete: {name} has {file.stat().st_size} bytes, meta.json says {size}"
            )
    return meta


def _unshared(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies safetensors accepts: tied weights (e.g. a language model's input and output
    embeddings) are stored once per name; loading copies the same values into the tied parameter."""
    out, seen = {}, set()
    for key, value in model_state.items():
        value = value.detach().contiguous().cpu()
        pointer = (value.untyped_storage().data_ptr(), value.storage_offset())
        out[key] = value.clone() if pointer in seen else value
        seen.add(pointer)
    return out


def _is_complete(path: Path) -> bool:
    try:
        read_meta(path)
    except CheckpointError:
        return False
    return True


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and _is_complete(child):
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def find_latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or ``None``."""
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def write_loadable(state: Any, path: str | Path) -> None:
    """``torch.save(state, path)``, then read it back as every loader here does (``weights_only=True``,
    memory-mapped, so tensors are not copied); raises :class:`CheckpointError` naming what cannot be read
    back, at save time rather than at the resume that needs it."""
    torch.save(state, path)
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(
            f"the state written to {path} cannot be read back with torch.load(weights_only=True): {exc}; "
            "keep tensors, numbers, strings, lists and dicts in it (e.g. a numpy array as torch.from_numpy(a))"
        ) from None


def _safe_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign pickles
        raise CheckpointError(f"{path} is corrupt or unsafe to load: {exc}") from None


def save_checkpoint(
    root: str | Path,
    step: int,
    state: dict[str, Any],
    model_state: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``root/step-XXXXXXXX`` atomically (``state`` with ``torch.save``, ``model_state`` with
    safetensors) and keep only the newest ``keep`` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_loadable(state, tmp / "state.pt")
    except CheckpointError:
        shutil.rmtree(tmp)
        raise
    if model_state is not None:
        save_file(_unshared(model_state), str(tmp / "model.safetensors"))
    _commit(tmp, final, {"kind": "plain", "step": step})
    _prune(root, keep)
    return final


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None, int]:
    """Return ``(state, model_state, step)`` of a :func:`save_checkpoint` checkpoint; raises
    :class:`CheckpointError` with the reason."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("kind") != "plain":
        raise CheckpointError(
            f"{path} was written by save_accelerator_checkpoint; load it with load_accelerator_checkpoint"
        )
    state = _safe_load(path / "state.pt")
    model_state = None
    if (path / "model.safetensors").is_file():
        try:
            model_state = load_file(str(path / "model.safetensors"))
        except Exception as exc:
            raise CheckpointError(f"{path}/model.safetensors is corrupt: {exc}") from None
    return state, model_state, int(meta["step"])


class ProcessRNG:
    """This process's global random streams (torch CPU and CUDA, Python, NumPy) as a state dict."""

    def state_dict(self) -> dict:
        version, internal, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "python": {"version": version, "internal": list(internal), "gauss": gauss},
            "numpy": {
                "name": name,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": pos,
                "has_gauss": has_gauss,
                "cached": cached,
            },
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        python = state["python"]
        random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
        numpy = state["numpy"]
        keys = numpy["keys"].numpy().astype(np.uint32)
        np.random.set_state((numpy["name"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class GeneratorState:
    """A ``torch.Generator`` as a state dict (e.g. a selector's own stream, which is per process in ``local`` mode)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


def _shared_file(name: str) -> str:
    return f"{name}_state.pt"


def _process_file(name: str, index: int) -> str:
    return f"{name}_process_{index}.pt"


def register_state(
    accelerator: Any,
    shared: Mapping[str, Stateful],
    per_process: Mapping[str, Stateful] | None = None,
    name: str = "online_select",
    formerly_shared: Iterable[str] = (),
) -> None:
    """Make ``accelerator.save_state`` / ``load_state`` include these objects, read back with
    ``weights_only=True``.

    ``shared`` objects are the same on every process and written once by the main process;
    ``per_process`` objects (random streams) are written by every process to its own file. On load,
    shared objects are restored first, then per-process ones. ``formerly_shared``: per-process objects
    that older checkpoints hold in the shared file, restored from there when their process file lacks them.
    """
    per_process = dict(per_process or {})
    formerly_shared = set(formerly_shared)

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        folder = Path(output_dir)
        if accelerator.is_main_process:
            write_loadable({key: obj.state_dict() for key, obj in shared.items()}, folder / _shared_file(name))
        if per_process:
            state = {key: obj.state_dict() for key, obj in per_process.items()}
            write_loadable(state, folder / _process_file(name, accelerator.process_index))

    def load_hook(models: list, input_dir: str) -> None:
        folder = Path(input_dir)
        shared_path = folder / _shared_file(name)
        shared_state = _read_state(shared_path)
        _restore(shared_path, shared_state, shared)
        if per_process:
            process_path = folder / _process_file(name, accelerator.process_index)
            process_state = _read_state(process_path)
            older = {key for key in formerly_shared & per_process.keys() if key in shared_state and key not in process_state}
            _restore(process_path, process_state, {key: obj for key, obj in per_process.items() if key not in older})
            _restore(shared_path, shared_state, {key: per_process[key] for key in older})

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _read_state(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint was not written with these objects registered")
    state = _safe_load(path)
    return state if isinstance(state, dict) else {}


def _restore(path: Path, state: dict, objects: Mapping[str, Stateful]) -> None:
    """Load ``objects`` from ``state``, read from ``path`` (named in errors)."""
    missing = [key for key in objects if key not in state]
    if missing:
        raise CheckpointError(f"{path} has no state for {missing}")
    for key, obj in objects.items():
        try:
            obj.load_state_dict(state[key])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{path}: the saved {key!r} state does not fit this run: {exc}") from None


def register_selector(accelerator: Any, selector: Any) -> None:
    """Include ``selector`` in ``accelerator.save_state`` / ``load_state`` (scorer, memory, counters
    once; each process's own random stream separately)."""
    register_state(
        accelerator,
        {"selector": selector},
        {"selector_generator": GeneratorState(selector.generator)},
        name="online_select_selector",
    )


def save_accelerator_checkpoint(
    accelerator: Any, root: str | Path, step: int, keep: int = 2, meta: dict[str, Any] | None = None
) -> Path:
    """``accelerator.save_state`` into ``root/step-XXXXXXXX``, atomically, keeping the newest ``keep``.

    Every process must call it. The directory must be on a file system all processes share.
    """
    root = Path(root)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        info = {"kind": "accelerate", "step": step, "world_size": accelerator.num_processes, **(meta or {})}
        _commit(tmp, final, info)
        _prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def load_accelerator_checkpoint(accelerator: Any, path: str | Path) -> dict[str, Any]:
    """Restore a :func:`save_accelerator_checkpoint` checkpoint with ``accelerator.load_state``; returns
    its metadata. Raises :class:`CheckpointError` naming the problem."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("kind") != "accelerate":
        raise CheckpointError(f"{path} was written by save_checkpoint, not save_accelerator_checkpoint")
    if meta.get("world_size") != accelerator.num_processes:
        raise CheckpointError(
            f"{path} was written by {meta.get('world_size')} processes but this run has {accelerator.num_processes}; "
            "resume with the same number of processes (the data shards and random streams depend on it)"
        )
    try:
        accelerator.load_state(str(path))
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path} could not be loaded: {type(exc).__name__}: {exc}") from None
    return meta
