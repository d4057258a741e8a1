"""Token-level selection (Rho-1 style): train only on the tokens with the highest excess loss.

Sequence-level selection saves the large model's forward, loss and backward on every rejected
sequence. Token-level selection saves **no forward compute**: every token of a selected sequence
still goes through the model, because its loss is what ranks it; it changes only which tokens
contribute to the gradient. Use it to sharpen what the model learns from the sequences it trains
on (skip noise, boilerplate and already-known tokens inside a sequence), and sequence selection to
save compute; they combine: select sequences first, then tokens within them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["TOKEN_SCOPES", "select_tokens", "kept_token_count", "TokenSelection"]

TOKEN_SCOPES = ("batch", "sequence")


def _counts(mask: torch.Tensor, keep: float, scope: str) -> torch.Tensor:
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"token keep ratio must be in (0, 1], got {keep}")
    if scope not in TOKEN_SCOPES:
        raise ValueError(f"unknown token selection scope {scope!r}; expected one of {TOKEN_SCOPES}")
    real = mask.sum(1) if scope == "sequence" else mask.sum().reshape(1)
    return torch.where(real > 0, torch.round(real.double() * keep).long().clamp(min=1), torch.zeros_like(real))


def kept_token_count(mask: torch.Tensor, keep: float, scope: str = "batch") -> int:
    """How many tokens :func:`select_tokens` keeps for this mask (known before any forward)."""
    return int(_counts(mask.bool(), keep, scope).sum())


def select_tokens(
    token_losses: torch.Tensor,
    mask: torch.Tensor,
    keep: float,
    reference_token_losses: torch.Tensor | None = None,
    scope: str = "batch",
) -> torch.Tensor:
    """The tokens to train on: the top ``keep`` fraction of real tokens by excess loss.

    ``token_losses``, ``mask`` (True on real target tokens) and ``reference_token_losses`` are
    ``[B, T]``. The score is ``token_losses - reference_token_losses`` (Rho-1's excess loss), or
    ``token_losses`` alone without a reference. ``scope="batch"`` keeps ``round(keep * n_real)``
    tokens of the whole batch (as Rho-1 does); ``"sequence"`` keeps that fraction of every
    sequence. At least one token is kept wherever there is a real one; ties go to earlier positions.
    Returns a boolean mask ``[B, T]``, a subset of ``mask``.
    """
    if token_losses.shape != mask.shape:
        raise ValueError(f"token_losses {tuple(token_losses.shape)} and mask {tuple(mask.shape)} differ in shape")
    mask = mask.bool()
    score = token_losses.detach().float()
    if reference_token_losses is not None:
        if reference_token_losses.shape != token_losses.shape:
            raise ValueError(
                f"reference_token_losses {tuple(reference_token_losses.shape)} must match token_losses "
                f"{tuple(token_losses.shape)}"
            )
        score = score - reference_token_losses.detach().float().to(score.device)
    counts = _counts(mask, keep, scope).to(score.device)
    score = score.masked_fill(~mask, float("-inf"))
    if scope == "batch":
        flat = score.reshape(-1)
        # A stable descending sort breaks ties by position.
        order = torch.sort(flat, descending=True, stable=True).indices[: int(counts[0])]
        kept = torch.zeros_like(flat, dtype=torch.bool)
        kept[order] = True
        return kept.reshape(mask.shape) & mask
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return (rank < counts[:, None]) & mask


@dataclass
class TokenSelection:
    """Settings for token-level selection in :class:`~online_select.hf.SelectiveTrainer`.

    Args:
        keep: fraction of real target tokens trained on (Rho-1 used 0.6-0.7).
        reference: a frozen reference causal LM (same tokenizer; moved to the device of the batches it
            scores), or a function ``batch -> [B, T - 1]`` reference token losses (e.g. looked up from a
            table by sample id). ``None`` ranks tokens by the large model's own loss.
        scope: ``"batch"`` or ``"sequence"`` (see :func:`select_tokens`).
    """

    keep: float = 0.7
    reference: nn.Module | Callable[[Mapping], torch.Tensor] | None = None
    scope: str = "batch"
    _reference_device: torch.device | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _counts(torch.ones(1, 1, dtype=torch.bool), self.keep, self.scope)
        if isinstance(self.reference, nn.Module):
            self.reference.eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def reference_losses(self, batch: Mapping) -> torch.Tensor | None:
        if self.reference is None:
            return None
        if isinstance(self.reference, nn.Module):
            from .losses import CausalLMLoss

            device = batch["input_ids"].device
            if device != self._reference_device:  # the Trainer places only the model it trains
                self.reference.to(device)
                self._reference_device = device
            losses, _ = CausalLMLoss().token_losses(self.reference, batch)
            return losses
        return self.reference(batch)
