"""Per-sample losses: checks, and the model-running adapters used for scorers and references."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LossShapeError",
    "NonFiniteLossError",
    "check_per_sample_loss",
    "finite_gradients",
    "get_field",
    "logits_of",
    "classification_features",
    "ModelLoss",
    "ClassificationLoss",
]


class LossShapeError(ValueError):
    """A loss is not one value per sample."""


class NonFiniteLossError(FloatingPointError):
    """A per-sample loss or score is NaN or infinite."""


def finite_gradients(model: torch.nn.Module) -> bool:
    """Whether every gradient a backward left on ``model`` is finite (True when it left none).

    ``on_nonfinite="skip"`` keeps NaN/inf losses out of the loss to backpropagate, but the activations behind
    them still send NaN/inf into the shared weights' gradients (zero times NaN is NaN); check this before the
    optimizer step of a step that skipped losses (``selector.nonfinite_losses`` grew), and skip the step if not.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def check_per_sample_loss(losses: torch.Tensor, batch_size: int, what: str = "loss") -> torch.Tensor:
    """Check that ``losses`` holds exactly one value per sample and return it as a 1-D tensor."""
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"{what} must be a tensor of per-sample losses, got {type(losses).__name__}")
    if losses.ndim == 0:
        raise LossShapeError(
            f"{what} is a scalar, but one loss per selected sample is needed: "
            "compute it with reduction='none' (e.g. F.cross_entropy(logits, y, reduction='none'))"
        )
    if losses.ndim == 2 and losses.shape[0] == batch_size and losses.shape[1] == 1:
        losses = losses[:, 0]
    if losses.ndim != 1:
        raise LossShapeError(
            f"{what} has shape {tuple(losses.shape)}; expected ({batch_size},), one loss per sample. "
            "Reduce per-token losses to per-sample ones first (see online_select.hf.causal_lm_loss)."
        )
    if losses.shape[0] != batch_size:
        raise LossShapeError(f"{what} has {losses.shape[0]} values for a batch of {batch_size} samples")
    if losses.dtype.is_floating_point is False:
        raise TypeError(f"{what} must be floating point, got {losses.dtype}")
    return losses


def get_field(batch: Any, key: str | int) -> Any:
    """``batch[key]`` with an error that names the missing field."""
    try:
        return batch[key]
    except (KeyError, IndexError, TypeError):
        if isinstance(batch, Mapping):
            raise KeyError(f"the batch has no field {key!r}; its fields are {list(batch.keys())}") from None
        raise KeyError(f"the batch ({type(batch).__name__}) has no field {key!r}") from None


def logits_of(outputs: Any) -> torch.Tensor:
    """Logits from a model output: a tensor, or an object/mapping with ``logits`` (HF models)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and "logits" in outputs:
        return outputs["logits"]
    if hasattr(outputs, "logits"):
        return outputs.logits
    raise TypeError(f"cannot find logits in a model output of type {type(outputs).__name__}")


def classification_features(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``[loss, entropy, margin]`` of a classifier's prediction for the given labels.

    ``margin`` is the top class probability minus the label's probability (0 when the label is the
    argmax): with the loss, it tells a confidently wrong label from an uncertain one.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    probs = log_probs.exp()
    label_log_prob = log_probs.gather(1, labels[:, None].long())[:, 0]
    entropy = -(probs * log_probs).sum(-1)
    margin = probs.max(-1).values - label_log_prob.exp()
    return torch.stack([-label_log_prob, entropy, margin], dim=1)


class ModelLoss(Protocol):
    """Runs a model on a batch and returns one loss per sample, plus optional scorer features."""

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    def features(self, model: nn.Module, batch: Any) -> torch.Tensor: ...


@dataclass
class ClassificationLoss:
    """Per-sample cross-entropy of ``model(batch[input_key])`` against ``batch[label_key]``.

    Mapping inputs are passed as keyword arguments (HF style). ``input_transform`` (e.g. bytes to
    standardized floats) is applied to the input first. ``features`` returns
    :func:`classification_features` for the scorer.
    """

    input_key: str | int = 0
    label_key: str | int = 1
    input_transform: Callable[[Any], Any] | None = None

    def logits(self, model: nn.Module, batch: Any) -> torch.Tensor:
        inputs = get_field(batch, self.input_key)
        if self.input_transform is not None:
            inputs = self.input_transform(inputs)
        outputs = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
        return logits_of(outputs)

    def labels(self, batch: Any) -> torch.Tensor:
        return torch.as_tensor(get_field(batch, self.label_key))

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        logits = self.logits(model, batch)
        labels = self.labels(batch).to(logits.device)
        return F.cross_entropy(logits.float(), labels.long(), reduction="none")

    def features(self, model: nn.Module, batch: Any) -> torch.Tensor:
        logits = self.logits(model, batch)
        return classification_features(logits, self.labels(batch).to(logits.device))
