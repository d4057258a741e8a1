"""Selection rules: pure functions from candidate scores to the picked indices and loss weights.

Every rule returns a :class:`Selection` whose ``weights`` are meant for
``(selection.weights * per_sample_losses).mean()``: all ones for plain top-k, and importance weights
for stochastic sampling that make that mean an unbiased estimate of the mean loss over *all*
candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._tensors import all_finite

__all__ = ["Selection", "annealed_temperature", "resolve_keep", "select", "RULES"]

RULES = ("top_k", "sample")


@dataclass(frozen=True)
class Selection:
    """The outcome of a selection rule over a candidate batch of size ``batch_size``.

    ``indices`` are positions in the candidate batch (unique, exactly k), ``weights`` are per-sample
    loss weights aligned with ``indices`` and ``explored`` marks the uniformly random exploration picks.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    explored: torch.Tensor
    batch_size: int
    num_eligible: int = -1

    @property
    def k(self) -> int:
        return int(self.indices.numel())


def annealed_temperature(start: float, end: float, progress: float) -> float:
    """The sampling temperature at ``progress`` in [0, 1] of a run: geometric from ``start`` to ``end``.

    Raising the temperature as training goes on relaxes ``rule="sample"`` from the top of the scores
    toward uniform sampling among the eligible candidates.
    """
    for name, value in (("start", start), ("end", end)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"temperature {name} must be positive and finite, got {value}")
    progress = min(1.0, max(0.0, progress))
    return start * (end / start) ** progress


def resolve_keep(keep: int | float, batch_size: int) -> int:
    """Turn ``keep`` (a count k, or a ratio of the batch in (0, 1]) into a count for this batch.

    A float ratio keeps ``max(1, round(keep * batch_size))`` samples; an int is taken as a count and
    must not exceed the batch size.
    """
    if batch_size <= 0:
        raise ValueError(f"the candidate batch is empty (batch_size={batch_size})")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise TypeError(f"keep must be an int count or a float ratio, got {keep!r}")
    if isinstance(keep, float):
        if not (0.0 < keep <= 1.0) or math.isnan(keep):
            raise ValueError(f"keep ratio must be in (0, 1], got {keep}")
        return max(1, min(batch_size, round(keep * batch_size)))
    if keep <= 0:
        raise ValueError(f"keep must be positive, got k={keep}")
    if keep > batch_size:
        raise ValueError(f"cannot keep k={keep} samples from a candidate batch of B={batch_size}")
    return keep


def select(
    scores: torch.Tensor,
    k: int,
    *,
    rule: str = "top_k",
    temperature: float = 1.0,
    explore: float = 0.0,
    importance_weights: bool = False,
    generator: torch.Generator | None = None,
    eligible: torch.Tensor | None = None,
) -> Selection:
    """Pick ``k`` of ``len(scores)`` candidates; higher scores are preferred.

    - ``rule="top_k"``: the k highest scores (ties broken by position).
    - ``rule="sample"``: priority sampling without replacement, each candidate drawn with intensity
      ``exp(score / temperature)``; with ``importance_weights=True`` the returned weights make the
      weighted mean loss an exactly unbiased estimate of the mean over all candidates (Duffield,
      Lund & Thorup's priority-sampling estimator).
    - ``explore``: a fraction of k drawn uniformly at random *before* the rule picks the rest, so a
      scorer trained on them sees unbiased targets.
    - ``eligible``: an optional mask of the candidates the policy is willing to train on (e.g. labels
      the reference finds plausible). Exploration and the rule draw from eligible candidates; only if
      fewer than k are eligible are the highest-scoring others added. Importance weights are then
      unbiased for the mean loss over the eligible candidates (picks that are all exploration, a
      uniform sample, each weigh 1).
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D (one per candidate), got shape {tuple(scores.shape)}")
    batch_size = scores.numel()
    if batch_size == 0:
        raise ValueError("cannot select from an empty candidate batch")
    if not 0 < k <= batch_size:
        raise ValueError(f"cannot keep k={k} samples from a candidate batch of B={batch_size}")
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {RULES}")
    if not 0.0 <= explore <= 1.0:
        raise ValueError(f"explore must be in [0, 1], got {explore}")
    if temperature <= 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    if importance_weights and rule != "sample":
        raise ValueError("importance_weights=True needs rule='sample' (top-k has no inclusion probabilities)")
    scores = scores.detach().float().cpu()
    if not all_finite(scores):
        bad = int((~torch.isfinite(scores)).sum())
        raise ValueError(f"{bad} of {batch_size} candidate scores are NaN or infinite")
    if eligible is None:
        eligible = torch.ones(batch_size, dtype=torch.bool)
    elif eligible.shape != (batch_size,) or eligible.dtype != torch.bool:
        raise ValueError(f"eligible must be a bool mask of shape ({batch_size},), got {eligible.dtype} {tuple(eligible.shape)}")
    eligible = eligible.cpu()

    order = torch.randperm(batch_size, generator=generator)
    # Eligible candidates first (in random order), then the others: exploration draws from the front.
    order = order.index_select(0, torch.argsort(~eligible.index_select(0, order), stable=True))
    num_eligible = int(eligible.sum())
    # Exploration never reaches past the eligible candidates: with fewer of them than its share, the rest of k
    # is filled with the best-scoring others below, not with random ineligible ones.
    n_explore = min(k, round(explore * k), num_eligible)
    explored_idx = order[:n_explore]
    pool = order[n_explore:num_eligible] if n_explore < num_eligible else order[:0]
    n_rule = k - n_explore
    weights_rest = None
    if n_rule == 0:
        picked = pool[:0]
    elif pool.numel() < n_rule:
        # Too few eligible candidates: take them all and fill up with the best-scoring others.
        others = order[max(n_explore, num_eligible) :].sort().values
        picked = torch.cat([pool, _best(scores, others, n_rule - pool.numel())])
    elif rule == "top_k":
        picked = _best(scores, pool.sort().values, n_rule)
    else:
        picked, weights_rest = _priority_sample(scores.index_select(0, pool) / temperature, n_rule, generator, importance_weights)
        picked = pool.index_select(0, picked)
    indices = torch.cat([picked, explored_idx])
    explored = torch.arange(k) >= n_rule
    if importance_weights and n_rule:
        # Each explored pick stands for itself; each sampled pick for max(1, tau / w_i) candidates.
        units = torch.cat([torch.ones(n_rule) if weights_rest is None else weights_rest, torch.ones(n_explore)])
        weights = units * (k / max(num_eligible, k))
    else:
        weights = torch.ones(k)
    return Selection(indices=indices, weights=weights, explored=explored, batch_size=batch_size, num_eligible=num_eligible)


def _best(scores: torch.Tensor, positions: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` of ``positions`` (ascending) with the highest scores, ties to the earlier position: a stable
    sort, since ``torch.topk`` leaves the order of equal values unspecified."""
    order = torch.sort(scores.index_select(0, positions), descending=True, stable=True).indices
    return positions.index_select(0, order[:n])


def _priority_sample(
    log_intensity: torch.Tensor, k: int, generator: torch.Generator | None, weights: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Priority sampling: keep the k largest ``w_i / u_i``; estimate weights ``max(1, tau / w_i)`` (None
    unless ``weights``).

    Works in log space so large scores cannot overflow.
    """
    n = log_intensity.numel()
    log_w = log_intensity - log_intensity.max()
    u = torch.rand(n, generator=generator).clamp_min(torch.finfo(torch.float32).tiny)
    log_priority = log_w - torch.log(u)
    if k >= n:
        return torch.arange(n), torch.ones(n) if weights else None
    top = torch.topk(log_priority, k + 1, sorted=True)
    picked = top.indices[:k]
    if not weights:
        return picked, None
    log_tau = top.values[k]
    units = torch.exp((log_tau - log_w.index_select(0, picked)).clamp_min(0.0))
    return picked, units
