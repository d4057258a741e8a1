"""Selection policies: pure score functions over per-candidate signals.

A policy declares which signals it needs (:attr:`Policy.needs`); the selector computes exactly those
and nothing else, so a policy that never asks for ``large_loss`` never pays a large-model forward on
rejected candidates. Higher scores are preferred.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["Signals", "Policy", "POLICIES", "get_policy", "learnability", "plausible_labels", "fit_label_floor"]

LARGE_LOSS = "large_loss"
REFERENCE_LOSS = "reference_loss"
PREDICTED_LOSS = "predicted_loss"
PROXY_LOSS = "proxy_loss"
SIGNALS = (LARGE_LOSS, REFERENCE_LOSS, PREDICTED_LOSS, PROXY_LOSS)


@dataclass
class Signals:
    """Per-candidate signals, each a 1-D tensor of length B (``None`` when not computed).

    - ``large_loss``: the large model's current loss (a forward on every candidate).
    - ``reference_loss``: the irreducible-loss estimate from a reference model or table.
    - ``predicted_loss``: the scorer's prediction of the large model's current loss.
    - ``proxy_loss``: a small proxy model's own task loss.
    """

    batch_size: int
    large_loss: torch.Tensor | None = None
    reference_loss: torch.Tensor | None = None
    predicted_loss: torch.Tensor | None = None
    proxy_loss: torch.Tensor | None = None
    generator: torch.Generator | None = field(default=None, repr=False)

    def get(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"signal {name!r} was not computed; the policy must declare it in `needs`")
        return value


def plausible_labels(reference_loss: torch.Tensor, label_floor: float) -> torch.Tensor:
    """Candidates whose label the reference finds at least ``label_floor`` likely (``p_ref >= floor``)."""
    if label_floor > 1:
        return torch.zeros_like(reference_loss, dtype=torch.bool)
    # exp(-max(loss, 0)) >= floor, read on the loss side: one comparison instead of four small kernels, each
    # slow right after the large model's step. NaN is never plausible either way.
    return reference_loss <= (-math.log(label_floor) if label_floor > 0 else math.inf)


def fit_label_floor(reference_loss: torch.Tensor, iterations: int = 200) -> float:
    """A label floor fitted to the data: two Gaussians fitted (by EM) to the log reference losses of the training
    labels, one for the labels the reference finds plausible and one for the rest, and the floor ``p_ref`` where
    the second becomes the likelier between their means.

    A fixed floor suits one noise rate. On Fashion-MNIST with 50% flipped labels the twin-halves reference is
    unsure of every label: the floor 0.05 keeps 40% flipped labels among what it passes, the fitted floor (0.115)
    8% (``benchmarks/label_floor_fit.py``). Non-finite losses (ids the reference does not cover) are ignored."""
    losses = reference_loss.detach().double().flatten()
    losses = losses[torch.isfinite(losses)]
    if losses.numel() < 10:
        raise ValueError(f"fitting a label floor needs 10 or more finite reference losses, got {losses.numel()}")
    x = losses.clamp_min(1e-8).log()
    # EM over a fine histogram of the log losses: the same fit as over every label, at a cost that does not
    # grow with the dataset.
    low_x, high_x = float(x.min()), float(x.max())
    counts = torch.histc(x, bins=4096, min=low_x, max=high_x)
    centres = torch.linspace(low_x, high_x, 4097, dtype=torch.float64)
    centres = (centres[1:] + centres[:-1]) / 2
    mean = torch.stack([x.quantile(0.25), x.quantile(0.9)])
    var = x.var().clamp_min(1e-6).expand(2).clone()
    weight = torch.full((2,), 0.5, dtype=torch.float64)

    def log_joint(values: torch.Tensor) -> torch.Tensor:
        return -0.5 * (values[:, None] - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var) + weight.log()

    for _ in range(iterations):
        resp = torch.softmax(log_joint(centres), 1) * counts[:, None]
        total = resp.sum(0).clamp_min(1e-12)
        weight, mean = total / counts.sum(), (resp * centres[:, None]).sum(0) / total
        var = ((resp * (centres[:, None] - mean) ** 2).sum(0) / total).clamp_min(1e-6)
    low, high = mean.argsort().tolist()
    grid = torch.linspace(float(mean[low]), float(mean[high]), 4001, dtype=torch.float64)
    above = (torch.softmax(log_joint(grid), 1)[:, high] >= 0.5).nonzero()
    if float(weight.min()) < 0.01 or float(mean[high] - mean[low]) < 1e-3 or above.numel() == 0:
        raise ValueError(
            "the reference's losses show no second group of labels to set a floor between (few or no labels it "
            "finds implausible): use a fixed selection.label_floor"
        )
    crossing = grid[int(above[0, 0])]
    return math.exp(-math.exp(float(crossing)))


def learnability(large_loss: torch.Tensor, reference_loss: torch.Tensor, label_floor: float) -> torch.Tensor:
    """Bounded learnability: ``(1 - p_large) * (p_ref - label_floor)`` with ``p = exp(-loss)``.

    ``1 - p_large`` is what the large model still gets wrong about the sample's label;
    ``p_ref - label_floor`` is the reference's evidence that the label is right, relative to a
    floor (e.g. chance, 1/num_classes). A mislabelled sample has ``p_ref`` near or under the floor,
    so it scores at or below zero however badly the large model fits it; unlike the raw difference
    ``large_loss - reference_loss`` this cannot drift toward mislabelled samples as the large model
    grows more confident than the reference.
    """
    p_large = torch.exp(-large_loss.clamp_min(0.0))
    p_ref = torch.exp(-reference_loss.clamp_min(0.0))
    return (1.0 - p_large) * (p_ref - label_floor)


@dataclass(frozen=True)
class Policy:
    """A named score function and the signals it needs."""

    name: str
    needs: tuple[str, ...]
    score_fn: Callable[[Signals, dict], torch.Tensor]
    description: str
    eligible_fn: Callable[[Signals, dict], torch.Tensor | None] | None = None

    @property
    def needs_large_forward(self) -> bool:
        """Whether the large model must run a forward on every candidate (rejected ones too)."""
        return LARGE_LOSS in self.needs

    @property
    def needs_reference(self) -> bool:
        return REFERENCE_LOSS in self.needs

    @property
    def needs_scorer(self) -> bool:
        return PREDICTED_LOSS in self.needs

    @property
    def needs_proxy(self) -> bool:
        return PROXY_LOSS in self.needs

    def eligible(self, signals: Signals, **options) -> torch.Tensor | None:
        """Mask of candidates the policy is willing to train on (``None``: all of them)."""
        return None if self.eligible_fn is None else self.eligible_fn(signals, options)

    def score(self, signals: Signals, **options) -> torch.Tensor:
        scores = self.score_fn(signals, options)
        if scores.shape != (signals.batch_size,):
            raise ValueError(
                f"policy {self.name!r} returned scores of shape {tuple(scores.shape)}, "
                f"expected ({signals.batch_size},)"
            )
        return scores


def _uniform(s: Signals, _: dict) -> torch.Tensor:
    return torch.rand(s.batch_size, generator=s.generator)


def _plausible(s: Signals, options: dict) -> torch.Tensor | None:
    floor = options.get("label_floor", 0.0)
    return plausible_labels(s.get(REFERENCE_LOSS), floor) if floor > 0 else None


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("uniform", (), _uniform, "a uniformly random subset (the baseline)"),
        Policy(
            "large_loss",
            (LARGE_LOSS,),
            lambda s, o: s.get(LARGE_LOSS),
            "the large model's own loss on all candidates (Selective-Backprop style oracle)",
        ),
        Policy(
            "reducible_loss",
            (LARGE_LOSS, REFERENCE_LOSS),
            lambda s, o: s.get(LARGE_LOSS) - s.get(REFERENCE_LOSS),
            "RHO-LOSS: large-model loss minus reference loss, a large forward on all candidates",
        ),
        Policy(
            "learnability",
            (LARGE_LOSS, REFERENCE_LOSS),
            lambda s, o: learnability(s.get(LARGE_LOSS), s.get(REFERENCE_LOSS), o.get("label_floor", 0.0)),
            "bounded learnability from the large model's exact loss (oracle of predicted_learnability)",
            _plausible,
        ),
        Policy(
            "predicted_loss",
            (PREDICTED_LOSS,),
            lambda s, o: s.get(PREDICTED_LOSS),
            "the scorer's prediction of the large model's loss; no large forward on candidates",
        ),
        Policy(
            "predicted_learnability",
            (PREDICTED_LOSS, REFERENCE_LOSS),
            lambda s, o: learnability(s.get(PREDICTED_LOSS), s.get(REFERENCE_LOSS), o.get("label_floor", 0.0)),
            "bounded learnability from the scorer's predicted loss and the reference loss",
            _plausible,
        ),
        Policy(
            "predicted_reducible_loss",
            (PREDICTED_LOSS, REFERENCE_LOSS),
            lambda s, o: s.get(PREDICTED_LOSS) - s.get(REFERENCE_LOSS),
            "RHO-LOSS's reducible loss from the scorer's predicted loss, over the candidates p_ref >= label_floor "
            "passes; for language models, where p = exp(-loss) is near 0 and bounded learnability ranks by p_ref",
            _plausible,
        ),
        Policy(
            "reference_filter",
            (REFERENCE_LOSS,),
            _uniform,
            "uniform over the candidates whose label the reference finds plausible (p_ref >= label_floor)",
            _plausible,
        ),
        Policy(
            "proxy_loss",
            (PROXY_LOSS,),
            lambda s, o: s.get(PROXY_LOSS),
            "a small proxy model's own task loss",
        ),
    )
}


def get_policy(policy: str | Policy) -> Policy:
    """Look up a policy by name (or pass a :class:`Policy` through)."""
    if isinstance(policy, Policy):
        return policy
    try:
        return POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; known policies: {', '.join(POLICIES)}") from None
