"""Per-sample and per-token losses of Hugging Face models.

Every loss here comes in two parts per sample: the **sum** of its item losses and the **count** of
items it has (1 for a classified sequence, the number of real target tokens for a causal LM).
``sum / count`` is the per-sample mean the selector observes; ``sum`` over the batch divided by the
number of items (Trainer's ``num_items_in_batch``) is the token-weighted loss a plain ``Trainer``
would backpropagate. Keeping both lets selection stay exactly consistent with Trainer's reduction,
gradient accumulation included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import LossShapeError, check_per_sample_loss, logits_of

__all__ = [
    "IGNORE_INDEX",
    "SampleLosses",
    "causal_lm_token_losses",
    "causal_lm_loss",
    "sequence_classification_loss",
    "CausalLMLoss",
    "SequenceClassificationLoss",
    "CustomLoss",
    "loss_for_model",
]

IGNORE_INDEX = -100


@dataclass
class SampleLosses:
    """Per-sample loss sums and item counts (both ``[B]``); ``mean`` is the per-sample mean."""

    sum: torch.Tensor
    count: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count.clamp_min(1).to(self.sum.dtype)


def causal_lm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
    """The labels a causal LM trains on: ``labels`` if given, else ``input_ids`` with padding ignored."""
    if labels is not None:
        return labels
    labels = input_ids.clone()
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return labels


def causal_lm_token_losses(
    logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token losses, shifted: position t predicts ``labels[:, t + 1]``.

    Returns ``(losses, mask)``, both ``[B, T - 1]``; ``mask`` is True on real target tokens (label
    not ``-100`` and, when ``attention_mask`` is given, the target token is not padding).
    Masked positions have loss 0.
    """
    if logits.ndim != 3:
        raise LossShapeError(f"causal-LM logits must be [batch, tokens, vocab], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise LossShapeError(f"labels have shape {tuple(labels.shape)} but logits are {tuple(logits.shape)}")
    shift_logits = logits[:, :-1].float()
    targets = labels[:, 1:].to(logits.device)
    mask = targets != IGNORE_INDEX
    if attention_mask is not None:
        mask = mask & (attention_mask[:, 1:].to(logits.device) != 0)
    safe_targets = torch.where(mask, targets, torch.zeros_like(targets))
    losses = F.cross_entropy(shift_logits.transpose(1, 2), safe_targets, reduction="none")
    return losses * mask, mask


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample causal-LM loss ``[B]``: the mean next-token loss over each sequence's real tokens.

    ``labels == -100`` and padding (``attention_mask == 0``) are ignored; labels are shifted as the
    model does (position t predicts token t + 1). A sequence with no real target token has loss 0.
    """
    return _lm_parts(logits, labels, attention_mask).mean


def _lm_parts(logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None) -> SampleLosses:
    losses, mask = causal_lm_token_losses(logits, labels, attention_mask)
    return SampleLosses(losses.sum(1), mask.sum(1))


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None = None) -> SampleLosses:
    """Per-sample loss of a sequence classifier, following the model's ``problem_type`` as HF does.

    Single-label: cross-entropy (a label of -100 counts 0 items); regression: squared error, mean
    over outputs; multi-label: binary cross-entropy, mean over labels.
    """
    num_labels = logits.shape[-1]
    labels = labels.to(logits.device)
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int, torch.int32, torch.int16, torch.uint8):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "single_label_classification":
        labels = labels.reshape(-1).long()
        valid = labels != IGNORE_INDEX
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        loss = F.cross_entropy(logits.float().reshape(-1, num_labels), safe, reduction="none") * valid
        return SampleLosses(loss, valid.long())
    if problem_type == "regression":
        diff = (logits.float().reshape(len(logits), -1) - labels.float().reshape(len(logits), -1)) ** 2
        return SampleLosses(diff.mean(1), torch.ones(len(logits), dtype=torch.long, device=logits.device))
    if problem_type == "multi_label_classification":
        bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
        return SampleLosses(bce.mean(1), torch.ones(len(logits), dtype=torch.long, device=logits.device))
    raise ValueError(f"unknown problem_type {problem_type!r}")


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


class CausalLMLoss:
    """Runs a causal LM (``input_ids``, optional ``attention_mask`` / ``labels``) and returns the
    per-sample mean next-token loss. Labels are not passed to the model: the loss is computed here
    from the logits, once. ``keep`` names the batch fields forwarded to the model."""

    kind = "causal_lm"

    def __init__(self, keep: tuple[str, ...] = MODEL_INPUTS) -> None:
        self.keep = keep

    def logits(self, model: nn.Module, batch: Mapping) -> torch.Tensor:
        inputs = {k: batch[k] for k in self.keep if k in batch}
        if "input_ids" not in batch:
            raise KeyError(f"a causal-LM batch needs input_ids; its fields are {list(batch)}")
        return logits_of(model(**inputs))

    def labels(self, batch: Mapping) -> torch.Tensor:
        return causal_lm_labels(batch["input_ids"], batch.get("attention_mask"), batch.get("labels"))

    def parts(self, model: nn.Module, batch: Mapping) -> SampleLosses:
        return _lm_parts(self.logits(model, batch), self.labels(batch), batch.get("attention_mask"))

    def token_losses(self, model: nn.Module, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        """``(losses, mask)``, ``[B, T - 1]``, see :func:`causal_lm_token_losses`."""
        return causal_lm_token_losses(self.logits(model, batch), self.labels(batch), batch.get("attention_mask"))

    def __call__(self, model: nn.Module, batch: Mapping) -> torch.Tensor:
        return self.parts(model, batch).mean

    def features(self, model: nn.Module, batch: Mapping) -> torch.Tensor:
        """``[mean token loss, token-loss std, log(real tokens)]`` for the scorer."""
        losses, mask = self.token_losses(model, batch)
        count = mask.sum(1).clamp_min(1).float()
        mean = losses.sum(1) / count
        var = ((losses - mean[:, None]) ** 2 * mask).sum(1) / count
        return torch.stack([mean, var.sqrt(), torch.log(count)], dim=1)


class SequenceClassificationLoss:
    """Runs a sequence classifier and returns per-sample losses (see :func:`sequence_classification_loss`).

    ``label_key`` names the labels field (``labels`` in HF batches); only the ``keep`` fields are
    passed to the model, so ids and telemetry fields in the batch are harmless.
    ``features`` gives the scorer ``[loss, entropy, margin]`` for single-label problems.
    """

    kind = "sequence_classification"

    def __init__(self, label_key: str = "labels", keep: tuple[str, ...] = MODEL_INPUTS) -> None:
        self.label_key = label_key
        self.keep = keep

    def logits(self, model: nn.Module, batch: Mapping) -> torch.Tensor:
        return logits_of(model(**{k: batch[k] for k in self.keep if k in batch}))

    def labels(self, batch: Mapping) -> torch.Tensor:
        for key in (self.label_key, "label", "label_ids"):
            if key in batch:
                return torch.as_tensor(batch[key])
        raise KeyError(f"the batch has no labels field {self.label_key!r}; its fields are {list(batch)}")

    def parts(self, model: nn.Module, batch: Mapping) -> SampleLosses:
        problem_type = getattr(getattr(model, "config", None), "problem_type", None)
        return sequence_classification_loss(self.logits(model, batch), self.labels(batch), problem_type)

    def __call__(self, model: nn.Module, batch: Mapping) -> torch.Tensor:
        return self.parts(model, batch).mean

    def features(self, model: nn.Module, batch: Mapping) -> torch.Tensor:
        from ..losses import classification_features

        logits = self.logits(model, batch)
        return classification_features(logits, self.labels(batch).to(logits.device))


class CustomLoss:
    """Wraps a user function ``(model, batch) -> [B]`` per-sample losses (anything else: seq2seq,
    vision, multi-task). The result is checked: one finite-typed value per sample, or a clear error."""

    kind = "custom"

    def __init__(self, fn: Callable[[nn.Module, Any], torch.Tensor]) -> None:
        self.fn = fn

    def parts(self, model: nn.Module, batch: Any) -> SampleLosses:
        from ..batch import batch_size

        losses = check_per_sample_loss(self.fn(model, batch), batch_size(batch), "per_sample_loss output")
        return SampleLosses(losses, torch.ones_like(losses, dtype=torch.long))

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.parts(model, batch).mean


def loss_for_model(model: nn.Module, per_sample_loss: Callable | str | None = None):
    """The per-sample loss adapter for ``model``: given, or detected from its class name.

    ``per_sample_loss`` may be a callable ``(model, batch) -> [B]``, an adapter object with
    ``parts``, ``"causal_lm"`` or ``"sequence_classification"``; ``None`` detects it from the model
    (``*ForCausalLM`` / ``*LMHeadModel`` or ``*ForSequenceClassification``).
    """
    if per_sample_loss is not None and hasattr(per_sample_loss, "parts"):
        return per_sample_loss
    if callable(per_sample_loss):
        return CustomLoss(per_sample_loss)
    kind = per_sample_loss
    if kind is None:
        base = getattr(model, "module", model)
        if hasattr(base, "get_base_model"):  # peft
            base = base.get_base_model()
        name = type(base).__name__
        if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
            kind = "causal_lm"
        elif name.endswith("ForSequenceClassification"):
            kind = "sequence_classification"
        else:
            raise ValueError(
                f"cannot tell how to compute per-sample losses for a {name}: pass per_sample_loss="
                "'causal_lm', 'sequence_classification' or a function (model, batch) -> one loss per sample"
            )
    if kind == "causal_lm":
        return CausalLMLoss()
    if kind == "sequence_classification":
        return SequenceClassificationLoss()
    raise ValueError(f"unknown per_sample_loss {kind!r}; expected 'causal_lm', 'sequence_classification' or a function")
