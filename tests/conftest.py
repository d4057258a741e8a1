import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from online_select.data import _IDX_DTYPES

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist_noisy.yaml"
# On a GPU only deterministic kernels give bitwise-equal runs, in one process or across processes (the CPU kernels
# used here already are): tests that compare two runs for equality add this override.
DETERMINISTIC = "train.deterministic=true"


def small_run(folder, out, *extra) -> list[str]:
    """Overrides for a seconds-long run of the Fashion-MNIST recipe on a generated IDX folder."""
    return [
        f"data.path={folder}",
        f"output_dir={out}",
        "selection.candidate_batch_size=64",
        "selection.keep=16",
        "train.max_steps=30",
        "train.eval_every=10",
        "train.checkpoint_every=15",
        "train.progress=false",
        "train.threads=1",
        "reference.epochs=1",
        "logging.trackers=[]",
        *extra,
    ]


def write_idx(path: Path, array: np.ndarray, dtype: Any = np.uint8) -> None:
    """Write an IDX file of one of the IDX element types (unsigned bytes by default; gzip-compressed when the
    name ends in .gz)."""
    code = next(code for code, idx_dtype in _IDX_DTYPES.items() if np.dtype(idx_dtype) == np.dtype(dtype))
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=dtype).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_image_folder(folder: Path, n_train: int = 1200, n_test: int = 400, seed: int = 0, size: int = 28) -> Path:
    """A generated MNIST-format folder: 10 classes, each a fixed random template plus pixel noise."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(10, size, size))

    def sample(n):
        labels = rng.integers(0, 10, n)
        images = templates[labels] * rng.uniform(0.5, 1.0, (n, 1, 1)) + rng.normal(0, 70, (n, size, size))
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)

    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images, labels = sample(n)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="session")
def tiny_idx_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("idx"))


@pytest.fixture(autouse=True)
def _quiet_offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.manual_seed(0)
