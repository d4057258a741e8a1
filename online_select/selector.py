"""`OnlineSelector`: all selection state in one object, and the two calls a training loop makes.

    selected = selector.select(candidate_batch, ids=ids)   # the k samples to train on
    losses = loss_fn(model(selected.batch), ...)          # per-sample, reduction="none"
    loss = selector.observe(selected, losses)             # weighted mean; the scorer learns
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .batch import batch_size, take
from .losses import NonFiniteLossError, check_per_sample_loss, get_field
from .memory import check_ids
from .policies import Policy, Signals, get_policy
from .reference import Reference
from .rules import RULES, Selection, resolve_keep, select
from .scorer import Scorer

__all__ = ["OnlineSelector", "SelectedBatch", "ProxyModel", "spearman"]

ID_KEYS = ("id", "ids", "idx", "index", "sample_id")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (NaN when undefined)."""
    if a.numel() < 3:
        return float("nan")
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else float("nan")


@dataclass
class SelectedBatch:
    """What :meth:`OnlineSelector.select` returns: the selected samples and why they were picked.

    ``batch`` has the structure of the candidate batch with only the selected samples; ``indices``
    are their positions in the candidate batch; ``weights`` multiply the per-sample losses;
    ``explored`` marks uniformly random exploration picks; ``scores`` are all B candidates' scores.
    """

    batch: Any
    indices: torch.Tensor
    weights: torch.Tensor
    explored: torch.Tensor
    scores: torch.Tensor
    ids: torch.Tensor | None
    candidate_batch_size: int
    step: int
    features: torch.Tensor | None = field(default=None, repr=False)
    predicted_loss: torch.Tensor | None = field(default=None, repr=False)
    reference_loss: torch.Tensor | None = field(default=None, repr=False)
    eligible: torch.Tensor | None = field(default=None, repr=False)
    timings: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.indices.numel())

    @property
    def selected_ids(self) -> torch.Tensor | None:
        return None if self.ids is None else self.ids[self.indices]

    def weighted_mean(self, losses: torch.Tensor) -> torch.Tensor:
        """``mean(weights * losses)``, the loss to backpropagate."""
        return (self.weights.to(losses.device, losses.dtype) * losses).mean()


class ProxyModel:
    """A small model trained on the task itself on the selected samples; scores by its own loss."""

    def __init__(self, model: torch.nn.Module, loss: Callable[[torch.nn.Module, Any], torch.Tensor], lr: float = 1e-3):
        self.model = model
        self.loss = loss
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    @torch.no_grad()
    def losses(self, batch: Any) -> torch.Tensor:
        self.model.eval()
        return self.loss(self.model, batch).float().cpu()

    def update(self, batch: Any) -> None:
        self.model.train()
        loss = self.loss(self.model, batch).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class OnlineSelector:
    """Selects the k samples of each candidate batch the large model should train on.

    Args:
        policy: a name from :data:`online_select.POLICIES` or a :class:`Policy`.
        keep: k as a count, or a ratio of the candidate batch in (0, 1].
        scorer: the co-trained :class:`Scorer` (needed by ``predicted_*`` policies).
        reference: a :class:`Reference` (needed by ``reducible_loss`` and ``*learnability``); its
            features also feed the scorer.
        large_loss_fn: ``candidate_batch -> per-sample losses`` of the large model (needed only by
            policies that score with the large model itself, e.g. ``reducible_loss``).
        proxy: a :class:`ProxyModel` for the ``proxy_loss`` policy.
        rule: ``"sample"`` (default) or ``"top_k"`` (see :func:`online_select.rules.select`). Hard top-k
            drifts onto the few mislabelled samples that pass the reference's check once most clean
            ones are learnt; sampling with a temperature does not (see README, Results).
        explore: fraction of k picked uniformly at random (unbiased targets for the scorer).
        temperature: for ``rule="sample"``: intensity ``exp(score / temperature)``.
        importance_weights: unbiased loss weights (``rule="sample"`` only).
        label_floor: the learnability floor (``1/num_classes`` is a good value for classifiers).
        warmup_steps: steps of uniform selection first (the scorer still learns during them).
        on_nonfinite: ``"raise"`` (default) or ``"skip"``: drop NaN/inf losses from the step and
            count them in ``stats()["nonfinite_losses"]``.
        id_key: the batch field holding sample ids when ``ids`` is not passed to :meth:`select`.
        seed: seeds the selector's own random generator (exploration and sampling).
    """

    def __init__(
        self,
        policy: str | Policy = "predicted_learnability",
        keep: int | float = 0.1,
        *,
        scorer: Scorer | None = None,
        reference: Reference | None = None,
        large_loss_fn: Callable[[Any], torch.Tensor] | None = None,
        proxy: ProxyModel | None = None,
        rule: str = "sample",
        explore: float = 0.125,
        temperature: float = 0.1,
        importance_weights: bool = False,
        label_floor: float = 0.0,
        warmup_steps: int = 0,
        on_nonfinite: str = "raise",
        id_key: str | int | None = None,
        seed: int = 0,
        stats_window: int = 50,
    ) -> None:
        self.policy = get_policy(policy)
        resolve_keep(keep, max(keep, 1) if isinstance(keep, int) else 1)
        if rule not in RULES:
            raise ValueError(f"unknown selection rule {rule!r}; expected one of {RULES}")
        if importance_weights and rule != "sample":
            raise ValueError("importance_weights=True needs rule='sample' (top-k has no inclusion probabilities)")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be in [0, 1], got {explore}")
        missing = []
        if self.policy.needs_scorer and scorer is None:
            missing.append("scorer=Scorer(...)")
        if self.policy.needs_reference and reference is None:
            missing.append("reference=... (a ReferenceTable or ReferenceModel)")
        if self.policy.needs_large_forward and large_loss_fn is None:
            missing.append("large_loss_fn=... (the large model's per-sample loss on a candidate batch)")
        if self.policy.needs_proxy and proxy is None:
            missing.append("proxy=ProxyModel(...)")
        if missing:
            raise ValueError(f"policy {self.policy.name!r} needs " + ", ".join(missing))
        self.keep = keep
        self.scorer = scorer if self.policy.needs_scorer else None
        self.reference = reference if (self.policy.needs_reference or self.scorer is not None) else None
        self.large_loss_fn = large_loss_fn
        self.proxy = proxy if self.policy.needs_proxy else None
        self.rule = rule
        self.explore = explore
        self.temperature = temperature
        self.importance_weights = importance_weights
        self.label_floor = label_floor
        self.warmup_steps = warmup_steps
        self.on_nonfinite = on_nonfinite
        self.id_key = id_key
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.samples_seen = 0
        self.nonfinite_losses = 0
        self._window: deque = deque(maxlen=stats_window)
        self._last: dict[str, float] = {}

    @property
    def needs_ids(self) -> bool:
        return bool(
            (self.scorer is not None and self.scorer.needs_ids)
            or (self.reference is not None and self.reference.needs_ids)
        )

    def _ids(self, batch: Any, ids: Any, n: int) -> torch.Tensor | None:
        if ids is None and self.id_key is not None:
            ids = get_field(batch, self.id_key)
        if ids is None and isinstance(batch, dict):
            ids = next((batch[key] for key in ID_KEYS if key in batch), None)
        if ids is None:
            if self.needs_ids:
                raise ValueError(
                    f"policy {self.policy.name!r} with this scorer/reference needs sample ids: pass ids= to "
                    f"select(), or give the batch an id field (one of {ID_KEYS}) or set id_key="
                )
            return None
        return check_ids(torch.as_tensor(ids), n)

    def select(self, candidate_batch: Any, ids: Any = None) -> SelectedBatch:
        """Score a candidate batch and return the selected samples with their loss weights."""
        start = time.perf_counter()
        n = batch_size(candidate_batch)
        k = resolve_keep(self.keep, n)
        ids = self._ids(candidate_batch, ids, n)
        signals = Signals(batch_size=n, generator=self.generator)
        features = predicted = reference_loss = None
        warming_up = self.step < self.warmup_steps
        reference_features = None
        if self.reference is not None:
            reference_loss, reference_features = self.reference.losses_and_features(candidate_batch, ids)
            signals.reference_loss = reference_loss
        if self.scorer is not None:
            features = self.scorer.features(candidate_batch, ids, self.step, reference_features)
            predicted = self.scorer.predict(features, candidate_batch)
            signals.predicted_loss = predicted
        if self.policy.needs_large_forward and not warming_up:
            with torch.inference_mode():
                large = self.large_loss_fn(candidate_batch)
            signals.large_loss = check_per_sample_loss(large, n, "large_loss_fn output").float().cpu()
        if self.proxy is not None and not warming_up:
            signals.proxy_loss = self.proxy.losses(candidate_batch)

        eligible = self.policy.eligible(signals, label_floor=self.label_floor)
        if warming_up:
            scores = torch.rand(n, generator=self.generator)
            selection = select(scores, k, rule="top_k", explore=1.0, generator=self.generator, eligible=eligible)
        else:
            scores = self.policy.score(signals, label_floor=self.label_floor).float()
            bad = ~torch.isfinite(scores)
            if bool(bad.any()):
                raise NonFiniteLossError(
                    f"policy {self.policy.name!r} produced {int(bad.sum())} NaN/inf scores of {n}; "
                    "check the large-model, reference and scorer losses for NaN/inf"
                )
            selection = select(
                scores,
                k,
                rule=self.rule,
                temperature=self.temperature,
                explore=self.explore,
                importance_weights=self.importance_weights,
                generator=self.generator,
                eligible=eligible,
            )
        selected = self._package(candidate_batch, selection, scores, ids, features, predicted, reference_loss, start)
        selected.eligible = eligible
        return selected

    def _package(
        self,
        candidate_batch: Any,
        selection: Selection,
        scores: torch.Tensor,
        ids: torch.Tensor | None,
        features: torch.Tensor | None,
        predicted: torch.Tensor | None,
        reference_loss: torch.Tensor | None,
        start: float,
    ) -> SelectedBatch:
        return SelectedBatch(
            batch=take(candidate_batch, selection.indices),
            indices=selection.indices,
            weights=selection.weights,
            explored=selection.explored,
            scores=scores,
            ids=ids,
            candidate_batch_size=selection.batch_size,
            step=self.step,
            features=features,
            predicted_loss=predicted,
            reference_loss=reference_loss,
            timings={"select_s": time.perf_counter() - start},
        )

    def observe(self, selected: SelectedBatch, losses: torch.Tensor) -> torch.Tensor:
        """Take the large model's per-sample losses on the selected samples; return the loss to
        backpropagate (``mean(weights * losses)``, non-finite ones dropped if ``on_nonfinite='skip'``).

        The scorer, memory and proxy learn from the detached losses.
        """
        start = time.perf_counter()
        losses = check_per_sample_loss(losses, selected.k, "per-sample loss")
        observed = losses.detach().float().cpu()
        finite = torch.isfinite(observed)
        n_bad = int((~finite).sum())
        if n_bad:
            if self.on_nonfinite == "raise":
                raise NonFiniteLossError(
                    f"{n_bad} of {selected.k} per-sample losses are NaN or infinite at step {self.step}; "
                    "pass on_nonfinite='skip' to drop them from the update and count them instead"
                )
            self.nonfinite_losses += n_bad
        keep = finite.nonzero()[:, 0]
        sel_ids = selected.selected_ids
        if self.scorer is not None and keep.numel():
            sub_ids = None if sel_ids is None else sel_ids[keep]
            sub_batch = take(selected.batch, keep) if self.scorer.model is not None else None
            self.scorer.update(selected.features[selected.indices[keep]], observed[keep], sub_ids, self.step, sub_batch)
        if self.proxy is not None and keep.numel():
            self.proxy.update(take(selected.batch, keep))
        selected.timings["observe_s"] = time.perf_counter() - start
        self._record(selected, observed, finite, selected.timings["observe_s"])
        self.step += 1
        self.samples_seen += selected.candidate_batch_size
        weights = selected.weights.to(losses.device, losses.dtype)
        if n_bad:
            mask = finite.to(losses.device)
            return torch.where(mask, weights * losses, torch.zeros_like(losses)).sum() / max(int(mask.sum()), 1)
        return (weights * losses).mean()

    def _record(self, selected: SelectedBatch, observed: torch.Tensor, finite: torch.Tensor, update_s: float) -> None:
        explored = selected.explored & finite
        entry = {
            "select_s": selected.timings.get("select_s", 0.0),
            "update_s": update_s,
            "explored_predicted": None,
            "explored_observed": observed[explored],
            "selected_score": selected.scores[selected.indices].mean().item(),
            "candidate_score": selected.scores.mean().item(),
            "eligible_share": 1.0 if selected.eligible is None else selected.eligible.float().mean().item(),
        }
        if selected.predicted_loss is not None:
            entry["explored_predicted"] = selected.predicted_loss[selected.indices[explored]]
        self._window.append(entry)

    def stats(self) -> dict[str, float]:
        """Summary over the recent window of steps: scorer quality, scores and time split."""
        if not self._window:
            return {}
        out: dict[str, float] = {
            "selection/step": float(self.step),
            "selection/samples_seen": float(self.samples_seen),
            "selection/select_ms": 1000 * sum(e["select_s"] for e in self._window) / len(self._window),
            "selection/update_ms": 1000 * sum(e["update_s"] for e in self._window) / len(self._window),
            "selection/selected_score": sum(e["selected_score"] for e in self._window) / len(self._window),
            "selection/candidate_score": sum(e["candidate_score"] for e in self._window) / len(self._window),
            "selection/eligible_share": sum(e["eligible_share"] for e in self._window) / len(self._window),
            "selection/nonfinite_losses": float(self.nonfinite_losses),
        }
        pairs = [(e["explored_predicted"], e["explored_observed"]) for e in self._window if e["explored_predicted"] is not None]
        if pairs:
            predicted = torch.cat([p for p, _ in pairs])
            observed = torch.cat([o for _, o in pairs])
            out["selection/spearman_explore"] = spearman(predicted, observed)
        if self.scorer is not None and not math.isnan(self.scorer.last_loss):
            out["selection/scorer_loss"] = self.scorer.last_loss
        return out

    def state_dict(self) -> dict:
        """Everything needed to continue selection exactly: scorer, proxy, reference, RNG, counters."""
        state: dict[str, Any] = {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "nonfinite_losses": self.nonfinite_losses,
            "generator": self.generator.get_state(),
            "policy": self.policy.name,
        }
        if self.scorer is not None:
            state["scorer"] = self.scorer.state_dict()
        if self.proxy is not None:
            state["proxy"] = self.proxy.state_dict()
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("policy") != self.policy.name:
            raise ValueError(f"selector state is for policy {state.get('policy')!r}, not {self.policy.name!r}")
        self.step = int(state["step"])
        self.samples_seen = int(state["samples_seen"])
        self.nonfinite_losses = int(state["nonfinite_losses"])
        self.generator.set_state(state["generator"])
        if self.scorer is not None:
            self.scorer.load_state_dict(state["scorer"])
        if self.proxy is not None:
            self.proxy.load_state_dict(state["proxy"])
        if self.reference is not None and "reference" in state:
            self.reference.load_state_dict(state["reference"])
