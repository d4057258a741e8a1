"""Tasks bundle what a recipe trains on: data, the large model, its per-sample loss, evaluation and
reference builders. The ready loop (:mod:`online_select.loop`) only talks to this interface.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config, ConfigError
from .data import (
    TensorLoader,
    class_count,
    load_hub_image_classification,
    load_idx_folder,
    seeded_subset,
    symmetric_label_noise,
)
from .losses import ClassificationLoss
from .models import mlp_classifier, small_cnn
from .reference import Reference, ReferenceTable, holdout_reference, samples_fingerprint, twin_halves_reference

__all__ = ["Task", "ImageClassificationTask", "StandardizedPixels", "TASK_BUILDERS", "TASK_METRICS", "register_task", "task_metric", "build_task"]


class Task:
    """The interface the ready loop uses. Subclasses fill it in for a kind of data."""

    config: Config
    num_classes: int = 0
    loss: ClassificationLoss
    noise_key: str | None = "noisy"
    train_ids: torch.Tensor | None = None  # every training sample id, for tasks that load samples by id
    label_key: str | None = "label"

    def train_loader(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Iterator[dict]:
        """Endless candidate batches of ``batch_size`` for process ``rank`` of ``world_size``: each process
        must get its own shard, and the loader needs ``state_dict``/``load_state_dict`` for resume."""
        raise NotImplementedError

    def large_model(self) -> nn.Module:
        raise NotImplementedError

    def scorer_model(self, name: str) -> nn.Module | None:
        if name != "none":
            raise ValueError(f"scorer.model={name!r}: the {type(self).__name__} has no scorer input models; use none")
        return None

    def build_reference(self, seed: int) -> tuple[Reference | None, dict]:
        """The reference the recipe asks for (none, a saved table, or one trained by the task) and a report
        of how it was built."""
        ref = self.config.reference
        if ref.kind == "none":
            return None, {}
        if ref.kind == "file":
            return load_reference_file(ref.path, self.reference_fingerprint()), {}
        return self.train_reference(seed)

    def samples_by_id(self) -> tuple[torch.Tensor, ...]:
        """The tensors, indexed by training id, that a sample's reference loss depends on (its inputs and the
        labels it trains with); empty when the task cannot name them, and nothing is checked."""
        return ()

    def reference_fingerprint(self) -> dict[str, str]:
        """Metadata a saved reference table carries and a run that loads it must match: the task, the number
        of training ids and a hash of :meth:`samples_by_id` (so another data folder, label noise or noise seed
        is an error, not a table that scores other samples)."""
        samples = self.samples_by_id()
        if not samples:
            return {}
        return {"online_select.task": self.config.task, "online_select.num_ids": str(len(samples[0])),
                "online_select.samples_sha256": samples_fingerprint(*samples)}

    def train_reference(self, seed: int) -> tuple[Reference, dict]:
        raise NotImplementedError

    def batches_by_id(self, ids: torch.Tensor, batch_size: int) -> Iterable[dict]:
        """Training samples ``ids`` in batches with an ``id`` field, in order. Tasks that can set
        :attr:`train_ids` (all training ids) and implement this; ``reference.refresh_at`` needs both."""
        raise NotImplementedError(f"task {type(self).__name__} cannot load training samples by id")

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        raise NotImplementedError

    def label_floor(self) -> float:
        return 1.0 / self.num_classes if self.num_classes else 0.0

    def examples(self, ids: torch.Tensor) -> dict[str, Any] | None:
        """Per-sample fields for the telemetry's example tables, each of length ``len(ids)``:
        ``example`` (an image tensor, or a text) and e.g. ``label``, ``noisy``. ``None``: ids only."""
        return None


class StandardizedPixels(nn.Module):
    """8-bit pixels to model inputs, ``(pixels / 255 - mean) / std`` in float32 (optionally flattened).

    The image task keeps its images as bytes and converts them only where a model reads them, so loading a
    candidate batch of B images copies a quarter of the bytes, and only the k picks are converted (on the GPU,
    if the large model is there)."""

    def __init__(self, mean: float, std: float, flatten: bool = False) -> None:
        super().__init__()
        self.mean, self.std, self.flatten = mean, std, flatten

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.float() / 255.0 - self.mean) / self.std
        return x.flatten(1) if self.flatten else x


def _pixels(images: Any, split: str) -> torch.Tensor:
    pixels = torch.from_numpy(images)
    if pixels.dtype != torch.uint8:
        raise ValueError(f"{split} images are {pixels.dtype}: the image task reads 8-bit pixels (MNIST-format IDX)")
    return pixels


class ImageClassificationTask(Task):
    """Image classification from an MNIST-format IDX folder (or the hub), with symmetric label noise.

    Training ids are positions in the training split (in the subset ``data.max_train_samples`` draws at random,
    if set); with ``reference.kind=holdout`` a ``data.holdout_fraction`` of them is held out for the reference
    model and never trained on. Labels must be the class indices ``0..C-1``.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        data = config.data
        if data.source not in ("folder", "hub"):
            raise ConfigError(f"data.source={data.source!r} is not one of folder, hub (for the {config.task} task)")
        if data.source == "folder":
            raw = load_idx_folder(data.path)
        else:
            raw = load_hub_image_classification(data.hub_name, data.label_column)
        train_x, test_x = _pixels(raw["train_images"], "train"), _pixels(raw["test_images"], "test")
        train_y = torch.from_numpy(raw["train_labels"].astype("int64"))
        test_y = torch.from_numpy(raw["test_labels"].astype("int64"))
        if train_x.ndim == 3:
            train_x, test_x = train_x[:, None], test_x[:, None]
        elif train_x.ndim == 4 and train_x.shape[-1] in (1, 3):
            train_x, test_x = train_x.permute(0, 3, 1, 2), test_x.permute(0, 3, 1, 2)
        self.num_classes = class_count(train_y, test_y)
        # The noise is drawn over the whole split before max_train_samples takes its subset, so a sample keeps
        # the label it has in a run on all the data.
        noisy_y, is_noisy = symmetric_label_noise(train_y, data.label_noise, self.num_classes, data.noise_seed)
        rows = seeded_subset(len(train_y), data.max_train_samples, data.noise_seed)
        if len(rows) < len(train_y):
            train_x, train_y, noisy_y, is_noisy = train_x[rows], train_y[rows], noisy_y[rows], is_noisy[rows]
        scaled = train_x.float() / 255.0
        self.standardize = StandardizedPixels(float(scaled.mean()), float(scaled.std()))
        del scaled
        self.train_pixels = train_x
        test_rows = seeded_subset(len(test_y), data.eval_size, data.noise_seed)
        self.test_x, self.test_y = self.standardize(test_x[test_rows]), test_y[test_rows]
        self.clean_y = train_y
        self.train_y, self.is_noisy = noisy_y, is_noisy
        n = len(train_y)
        self.train_ids = torch.arange(n)
        self.holdout_ids = torch.arange(0)
        if config.reference.kind == "holdout":
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(data.noise_seed + 1))
            n_hold = max(1, int(round(data.holdout_fraction * n)))
            self.holdout_ids = perm[:n_hold].sort().values
            self.train_ids = perm[n_hold:].sort().values
        self.loss = ClassificationLoss("input", "label", input_transform=self.standardize)

    @property
    def train_x(self) -> torch.Tensor:
        """Every training image as the models see it (float32, standardized)."""
        return self.standardize(self.train_pixels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_pixels.shape[1:])

    def _fields(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: values.index_select(0, ids) for name, values in
                (("input", self.train_pixels), ("label", self.train_y), ("noisy", self.is_noisy))}

    def samples_by_id(self) -> tuple[torch.Tensor, ...]:
        return self.train_pixels, self.train_y

    def examples(self, ids: torch.Tensor) -> dict[str, Any]:
        return {
            "example": list(self.train_pixels[ids]),
            "label": self.train_y[ids].tolist(),
            "true_label": self.clean_y[ids].tolist(),
            "noisy": self.is_noisy[ids].tolist(),
        }

    def train_loader(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> TensorLoader:
        return TensorLoader(self._fields(self.train_ids), batch_size, seed, ids=self.train_ids, rank=rank, world_size=world_size)

    def large_model(self) -> nn.Module:
        m = self.config.model
        if m.name != "small_cnn":
            raise ValueError(f"task {self.config.task!r} builds model.name=small_cnn, not {m.name!r}")
        c, h, _ = self.image_shape
        return small_cnn(c, self.num_classes, width=m.width, hidden=m.hidden, image_size=h)

    def _small_mlp(self, hidden: int) -> nn.Module:
        return mlp_classifier(math.prod(self.image_shape), self.num_classes, hidden)

    def scorer_model(self, name: str) -> nn.Module | None:
        if name == "none":
            return None
        if name == "mlp":
            return nn.Sequential(
                StandardizedPixels(self.standardize.mean, self.standardize.std, flatten=True),
                nn.Linear(math.prod(self.image_shape), self.config.scorer.hidden),
                nn.ReLU(),
            )
        raise ValueError(f"unknown scorer.model {name!r}; expected none or mlp")

    def batches_by_id(self, ids: torch.Tensor, batch_size: int) -> Iterable[dict]:
        for start in range(0, len(ids), batch_size):
            rows = ids[start : start + batch_size]
            yield {**self._fields(rows), "id": rows}

    def _batches(self, ids: torch.Tensor, batch_size: int, shuffle: bool, seed: int) -> Iterable[dict]:
        order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))] if shuffle else ids
        return self.batches_by_id(order, batch_size)

    def train_reference(self, seed: int) -> tuple[Reference, dict]:
        ref = self.config.reference
        if ref.model not in ("mlp", "small_cnn"):
            raise ValueError(f"unknown reference.model {ref.model!r}; expected mlp or small_cnn")
        torch.manual_seed(seed + 7919)
        c, h, _ = self.image_shape
        if ref.model == "mlp":
            make_model = lambda: self._small_mlp(ref.hidden)  # noqa: E731
        else:
            make_model = lambda: small_cnn(c, self.num_classes, width=ref.width, hidden=ref.hidden, image_size=h)  # noqa: E731
        make_opt = lambda model: torch.optim.AdamW(model.parameters(), lr=ref.lr)  # noqa: E731
        ids_of = lambda batch: batch["id"]  # noqa: E731
        num_ids = len(self.train_y)
        if ref.kind == "twin_halves":
            halves = [self.train_ids[self.train_ids % 2 == h] for h in (0, 1)]
            epoch_counter = iter(range(10**9))

            def batches_of_half(half: int, shuffle: bool) -> Iterable[dict]:
                return self._batches(halves[half], ref.batch_size, shuffle, seed + next(epoch_counter))

            return twin_halves_reference(make_model, make_opt, batches_of_half, self.loss, ids_of, num_ids, ref.epochs)
        if ref.kind == "holdout":
            model = make_model()
            counter = iter(range(10**9))
            return holdout_reference(
                model,
                make_opt(model),
                lambda: self._batches(self.holdout_ids, ref.batch_size, True, seed + next(counter)),
                self._batches(self.train_ids, 4096, False, 0),
                self.loss,
                ids_of,
                num_ids,
                ref.epochs,
            )
        raise ValueError(f"unknown reference.kind {ref.kind!r}; expected twin_halves, holdout, file or none")

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        was_training = model.training
        model.eval()
        correct, total_loss = 0, 0.0
        for start in range(0, len(self.test_y), 2000):
            x = self.test_x[start : start + 2000].to(device)
            y = self.test_y[start : start + 2000].to(device)
            logits = model(x).float()
            correct += int((logits.argmax(1) == y).sum())
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        model.train(was_training)
        n = len(self.test_y)
        return {"eval/accuracy": correct / n, "eval/loss": total_loss / n}


def load_reference_file(path: str, expect: dict[str, str] | None = None) -> ReferenceTable:
    """A reference table saved with ``safetensors`` (keys ``losses`` and optional ``features``), checked
    against ``expect`` (see :meth:`ReferenceTable.load`)."""
    if not path:
        raise ValueError("reference.kind=file needs reference.path")
    return ReferenceTable.load(path, expect)


TASK_BUILDERS: dict[str, Callable[[Config], Task]] = {"idx_images": ImageClassificationTask}
TASK_METRICS: dict[str, tuple[str, str]] = {}  # task -> (eval metric bench compares on, "max" | "min")


def register_task(name: str, builder: Callable[[Config], Task], metric: str = "eval/accuracy", mode: str = "max") -> None:
    """Make ``task: name`` usable in recipes; ``metric``/``mode`` is what ``bench`` compares on."""
    if mode not in ("max", "min"):
        raise ValueError(f"metric mode must be 'max' or 'min', got {mode!r}")
    TASK_BUILDERS[name] = builder
    TASK_METRICS[name] = (metric, mode)


def task_metric(name: str) -> tuple[str, str]:
    """The ``(metric, mode)`` bench uses for a task (``eval/accuracy``, higher is better, by default)."""
    return TASK_METRICS.get(name, ("eval/accuracy", "max"))


def _rotten_tomatoes(config: Config) -> Task:
    from .text_tasks import RottenTomatoesTask

    return RottenTomatoesTask(config)


def _noisy_corpus_lm(config: Config) -> Task:
    from .text_tasks import NoisyCorpusLMTask

    return NoisyCorpusLMTask(config)


register_task("rotten_tomatoes", _rotten_tomatoes)
register_task("noisy_corpus_lm", _noisy_corpus_lm, metric="eval/loss", mode="min")


def build_task(config: Config) -> Task:
    if config.task not in TASK_BUILDERS:
        raise ValueError(f"unknown task {config.task!r}; known tasks: {', '.join(TASK_BUILDERS)}")
    return TASK_BUILDERS[config.task](config)
