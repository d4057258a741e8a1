"""Atomic checkpoints: written to a temporary directory, fsynced, then renamed into place.

A crash while saving leaves at most a ``.tmp-*`` directory behind; the latest complete checkpoint
is never touched. Model weights are stored with safetensors; every other state (optimizer,
scheduler, selector, data position, RNG) with ``torch.save`` and read back with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["CheckpointError", "save_checkpoint", "find_latest_checkpoint", "load_checkpoint", "list_checkpoints"]

FORMAT = "online_select.checkpoint/1"
_NAME = re.compile(r"^step-(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or not an online_select checkpoint."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(
    root: str | Path,
    step: int,
    state: dict[str, Any],
    model_state: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``root/step-XXXXXXXX`` atomically and keep only the newest ``keep`` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = []
    if model_state is not None:
        save_file(_unshared(model_state), str(tmp / "model.safetensors"))
        files.append("model.safetensors")
    torch.save(state, tmp / "state.pt")
    files.append("state.pt")
    (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "step": step, "files": files}))
    for name in files + ["meta.json"]:
        _fsync_file(tmp / name)
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


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
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format") == FORMAT and all((path / name).is_file() for name in meta.get("files", []))


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


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None, int]:
    """Return ``(state, model_state, step)``; raises :class:`CheckpointError` with the reason."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a directory")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not an online_select checkpoint (meta.json unreadable: {exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}; expected {FORMAT!r}")
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign pickles
        raise CheckpointError(f"{path}/state.pt is corrupt or unsafe to load: {exc}") from None
    model_state = None
    if "model.safetensors" in meta.get("files", []):
        try:
            model_state = load_file(str(path / "model.safetensors"))
        except Exception as exc:
            raise CheckpointError(f"{path}/model.safetensors is corrupt: {exc}") from None
    return state, model_state, int(meta["step"])
