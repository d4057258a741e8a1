"""`OnlineSelector`: all selection state in one object, and the two calls a training loop makes.

    selected = selector.select(candidate_batch, ids=ids)   # the k samples to train on
    losses = loss_fn(model(selected.batch), ...)          # per-sample, reduction="none"
    loss = selector.observe(selected, losses)             # weighted mean; the scorer learns

or, to score several steps' candidates in one pass (fewer small ops per step; across processes with
``distributed="local"``):

    for part in selector.select_plan(candidate_batch, steps=4):   # 4 steps' candidates at once
        loss = selector.observe(part, loss_fn(model(part.batch), ...))
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._tensors import all_finite
from ._warn import warn_user
from .batch import batch_size, concat, map_fields, take
from .distributed import (
    MODES,
    DistributedSelectionError,
    ProcessGroup,
    assign_trainers,
    describe_fields,
    even_quotas,
    exchange_selected,
    field_specs,
    fields_signature,
    gather_batches,
    global_keep,
    local_keep,
)
from .losses import LossShapeError, NonFiniteLossError, check_per_sample_loss, get_field
from .memory import LossMemory, check_ids
from .policies import SIGNALS, Policy, Signals, get_policy, plausible_labels
from .reference import Reference, ReferenceTable
from .rules import RULES, Selection, resolve_keep, select
from .scorer import Scorer

__all__ = ["FlatScoresWarning", "OnlineSelector", "SelectedBatch", "ReferenceRefresh", "ProxyModel", "spearman"]

# rule="sample" draws with intensity exp(score / temperature): when the eligible candidates' scores span
# less than FLAT_SPREAD * temperature, the likeliest is at most e**0.1 ~ 1.1x as likely as the least,
# i.e. the selection is nearly uniform. Warn once that has held on FLAT_SHARE of the steps of a window of
# FLAT_WINDOW sampled steps: a learned score is flat for its first ~100 steps (an untrained scorer predicts
# about the same loss for every candidate), and that transient is not a misconfigured temperature.
FLAT_SPREAD = 0.1
FLAT_WINDOW = 200
FLAT_SHARE = 0.9


class FlatScoresWarning(UserWarning):
    """Sampling at this temperature picks nearly at random: the scores vary far less than the temperature."""


class ExplorationWarning(UserWarning):
    """The exploration share rounds to no pick at this k: the scorer sees only the samples its scores chose."""


ID_KEYS = ("id", "ids", "idx", "index", "sample_id")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors, tied values sharing their mean rank (NaN when undefined,
    e.g. when either side is constant)."""
    if a.numel() < 3:
        return float("nan")
    ra, rb = _mean_ranks(a), _mean_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else float("nan")


def _mean_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of ``values``, each run of equal values given the mean of its positions."""
    order = values.argsort()
    ordered = values[order]
    starts_run = torch.ones(ordered.numel(), dtype=torch.bool)
    starts_run[1:] = ordered[1:] != ordered[:-1]
    run = starts_run.cumsum(0) - 1
    lengths = torch.bincount(run)
    ends = lengths.cumsum(0)  # one past each run's last position
    first = ends - lengths
    ranks = torch.empty(values.numel(), dtype=torch.float64)
    ranks[order] = ((first + ends - 1).double() / 2)[run]
    return ranks


@dataclass
class SelectedBatch:
    """What :meth:`OnlineSelector.select` returns: the selected samples and why they were picked.

    ``batch`` has the structure of the candidate batch with only the selected samples; ``indices``
    are their positions in the candidate batch; ``weights`` multiply the per-sample losses;
    ``explored`` marks uniformly random exploration picks; ``scores`` are all B candidates' scores.

    With ``distributed="global"`` across processes, ``selection_order`` holds the positions of this
    process's samples in the global selection and ``global_indices`` every process's picks; ``indices``,
    ``scores``, ``ids`` and ``candidate_batch_size`` then refer to the candidates of all processes
    concatenated in rank order, and ``features``/``predicted_loss``/``reference_loss`` to this process's
    selected samples only.
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
    selection_order: torch.Tensor | None = field(default=None, repr=False)
    global_indices: torch.Tensor | None = field(default=None, repr=False)
    plan: _Plan | None = field(default=None, repr=False)
    observed: bool = field(default=False, repr=False)

    @property
    def k(self) -> int:
        return int(self.indices.numel())

    @property
    def selected_ids(self) -> torch.Tensor | None:
        return None if self.ids is None else self.ids.index_select(0, self.indices)

    def weighted_mean(self, losses: torch.Tensor) -> torch.Tensor:
        """``mean(weights * losses)`` over these samples (:meth:`OnlineSelector.observe`'s loss in one process)."""
        return (self.weights.to(losses.device, losses.dtype) * losses).mean()

    def selected_rows(self, per_candidate: torch.Tensor | None) -> torch.Tensor | None:
        """The rows of a per-candidate tensor (``features``, ``predicted_loss``...) for the selected samples."""
        if per_candidate is None or self.selection_order is not None:
            return per_candidate
        return per_candidate.index_select(0, self.indices)


@dataclass
class _Plan:
    """One selection over several steps' candidates (:meth:`OnlineSelector.select_plan`): the whole
    selection, its per-step parts, and the losses observed on the parts so far."""

    selected: SelectedBatch
    parts: list[SelectedBatch]
    step_offsets: torch.Tensor  # of each selected row: its part (the step after the plan's first)
    observed: list[torch.Tensor] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.parts)

    @property
    def open(self) -> bool:
        return len(self.observed) < self.steps


@dataclass
class ReferenceRefresh:
    """What :meth:`OnlineSelector.refresh_reference` changed: the ids re-judged, and masks over them of
    those that became eligible (``admitted``) or ineligible (``rejected``) under the label floor."""

    ids: torch.Tensor
    admitted: torch.Tensor | None = None
    rejected: torch.Tensor | None = None

    def metrics(self, noisy: torch.Tensor | None = None) -> dict[str, float]:
        """Counts for logging; with the true noise flags of ``ids`` (known in benchmarks), the noisy
        share of the admitted and rejected samples too."""
        out = {"reference/refreshed": float(self.ids.numel())}
        for name, mask in (("admitted", self.admitted), ("rejected", self.rejected)):
            if mask is None:
                continue
            out[f"reference/{name}"] = float(mask.sum())
            if noisy is not None and bool(mask.any()):
                out[f"reference/{name}_noisy_share"] = float(noisy[mask].float().mean())
        return out


@dataclass
class _StepView:
    """One step's selected samples and observed losses, across all processes when there are several."""

    losses: torch.Tensor
    weights: torch.Tensor
    explored: torch.Tensor
    ids: torch.Tensor | None
    features: torch.Tensor | None
    candidates: int
    select_s: float
    # (explored & finite, losses) -> the step's entry for stats(): the scores' means, the explored picks'
    # predicted and observed losses, the eligible share. Computed when stats() or state_dict() reads the
    # window, not at every step: after the large model's step each small op costs far more than the
    # same ops run back to back.
    summary: Callable[[torch.Tensor, torch.Tensor], dict]
    batch: Any = None
    step_offsets: torch.Tensor | None = None  # a plan's rows: the part (step after the plan's first) of each


def _plan_head(selected: SelectedBatch, done: int, steps: int) -> SelectedBatch:
    """A plan's whole selection cut to its first ``done`` steps: their candidates and their picks."""
    candidates = selected.candidate_batch_size // steps * done
    picks = selected.k // steps * done

    def head(rows: int, value: Any) -> Any:
        return None if value is None else value[:rows]

    return SelectedBatch(
        batch=map_fields(selected.batch, lambda _, value: value[:picks]),
        indices=selected.indices[:picks],
        weights=selected.weights[:picks],
        explored=selected.explored[:picks],
        scores=selected.scores[:candidates],
        ids=head(candidates, selected.ids),
        candidate_batch_size=candidates,
        step=selected.step,
        features=head(candidates, selected.features),
        predicted_loss=head(candidates, selected.predicted_loss),
        reference_loss=head(candidates, selected.reference_loss),
        eligible=head(candidates, selected.eligible),
        timings=dict(selected.timings),
    )


# Selecting builds state the observe step then updates in place or trains on (the scorer's head, norm and
# optimizer, the loss memory's tables, the features): made under a caller's torch.inference_mode they would be
# inference tensors, which that refuses. No gradients are recorded either way.
_outside_inference_mode = torch.inference_mode(False)


def _count(mask: torch.Tensor | None, total: int) -> int:
    """How many candidates an eligibility mask admits (``None`` admits all)."""
    return total if mask is None else int(mask.sum())


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


def _describe_switch(switch: list | None) -> str:
    return "never" if switch is None else f"to {switch[0]!r} at step {switch[1]}"


class OnlineSelector:
    """Selects the k samples of each candidate batch the large model should train on.

    Args:
        policy: a name from :data:`online_select.POLICIES` or a :class:`Policy`.
        keep: k as a count, or a ratio of the candidate batch in (0, 1].
        scorer: the co-trained :class:`Scorer` (needed by ``predicted_*`` policies).
        reference: a :class:`Reference` (needed by ``reducible_loss``, ``*learnability`` and
            ``reference_filter``); its features also feed the scorer.
        large_loss_fn: ``candidate_batch -> per-sample losses`` of the large model (needed only by
            policies that score with the large model itself, e.g. ``reducible_loss``).
        proxy: a :class:`ProxyModel` for the ``proxy_loss`` policy.
        rule: ``"sample"`` (default) or ``"top_k"`` (see :func:`online_select.rules.select`). Hard top-k
            drifts onto the few mislabelled samples that pass the reference's check once most clean
            ones are learnt; sampling with a temperature does not (see docs/results_history.md).
        explore: fraction of k picked uniformly at random (unbiased targets for the scorer).
        temperature: for ``rule="sample"``: intensity ``exp(score / temperature)``.
        importance_weights: unbiased loss weights (``rule="sample"`` only).
        label_floor: the learnability floor (``1/num_classes`` is a good value for classifiers).
        warmup_steps: steps of uniform selection first (the scorer still learns during them).
        reject_after: when a sample has been trained on this many times and its observed loss still puts
            its label under ``label_floor``, make it ineligible (see :meth:`reject_unlearned`); 0: never.
            Needs a :class:`ReferenceTable` and a scorer with the loss memory.
        loss_discount: q >= 0; each selected sample's loss weight is multiplied by ``exp(-q * loss)``
            (its observed loss, detached), renormalised to mean 1 over the step's samples: a robust loss that
            leans less on the picks the large model fits worst, most of them mislabelled once the clean ones
            are learnt. 0 (default): off.
        on_nonfinite: ``"raise"`` (default) or ``"skip"``: drop NaN/inf losses from the step and
            count them in ``nonfinite_losses`` (``stats()["selection/nonfinite_losses"]``). The returned loss
            is then finite, but the NaN/inf activations behind those losses still reach the gradients: check
            :func:`~online_select.losses.finite_gradients` before the optimizer step (the ready loop and
            ``SelectiveTrainer`` do, and skip the update).
        id_key: the batch field holding sample ids when ``ids`` is not passed to :meth:`select`.
        seed: seeds the selector's own random generator (exploration and sampling).
        distributed: how to select when several processes train together (``accelerate launch``,
            ``torchrun``): ``"local"`` (each picks from its own candidates) or ``"global"`` (the global
            top-k of all processes' candidates; see :mod:`online_select.distributed`). ``keep`` is per
            process either way. Ignored in a single process.
        switch_to: a second policy that scores every selection from step ``switch_at`` on (``policy``
            scores the steps before), e.g. bounded learnability for its fast start, then the reducible loss
            (measured on the language-model recipe: recipes/README.md). The scorer, memory and reference carry
            over; a plan (:meth:`select_plan`) scores with the policy of its first step. ``None`` (default):
            no switch.
        switch_at: the selector step (:attr:`step`, counted by :meth:`observe`) of the switch, >= 1.
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
        reject_after: int = 0,
        loss_discount: float = 0.0,
        on_nonfinite: str = "raise",
        id_key: str | int | None = None,
        seed: int = 0,
        stats_window: int = 50,
        distributed: str = "local",
        switch_to: str | Policy | None = None,
        switch_at: int = 0,
    ) -> None:
        self.initial_policy = get_policy(policy)
        self.switch_to = None if switch_to is None else get_policy(switch_to)
        if self.switch_to is not None:
            if self.switch_to.name == self.initial_policy.name:
                raise ValueError(f"switch_to={self.switch_to.name!r} is the policy already in use: pass a different one or None")
            if isinstance(switch_at, bool) or not isinstance(switch_at, int) or switch_at < 1:
                raise ValueError(f"switch_at must be a whole number of steps >= 1 with switch_to, got {switch_at!r}")
        elif switch_at:
            raise ValueError(f"switch_at={switch_at!r} needs switch_to=... (the policy to switch to)")
        self.switch_at = switch_at
        policies = self.policies
        resolve_keep(keep, max(keep, 1) if isinstance(keep, int) else 1)
        if rule not in RULES:
            raise ValueError(f"unknown selection rule {rule!r}; expected one of {RULES}")
        if importance_weights and rule != "sample":
            raise ValueError("importance_weights=True needs rule='sample' (top-k has no inclusion probabilities)")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be in [0, 1], got {explore}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be positive and finite, got {temperature}")
        if not 0.0 <= label_floor < 1.0:
            raise ValueError(f"label_floor is a probability in [0, 1), got {label_floor}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if distributed not in MODES:
            raise ValueError(f"distributed must be one of {MODES}, got {distributed!r}")
        needs_scorer = any(p.needs_scorer for p in policies)
        needs_reference = any(p.needs_reference for p in policies)
        needs_proxy = any(p.needs_proxy for p in policies)
        missing = []
        if needs_scorer and scorer is None:
            missing.append("scorer=Scorer(...)")
        if needs_reference and reference is None:
            missing.append("reference=... (a ReferenceTable or ReferenceModel)")
        if any(p.needs_large_forward for p in policies) and large_loss_fn is None:
            missing.append("large_loss_fn=... (the large model's per-sample loss on a candidate batch)")
        if needs_proxy and proxy is None:
            missing.append("proxy=ProxyModel(...)")
        if missing:
            names = " then ".join(repr(p.name) for p in policies)
            raise ValueError(f"policy {names} needs " + ", ".join(missing))
        self.keep = keep
        self.scorer = scorer if needs_scorer else None
        self.reference = reference if (needs_reference or self.scorer is not None) else None
        self.large_loss_fn = large_loss_fn
        self.proxy = proxy if needs_proxy else None
        self.rule = rule
        self.explore = explore
        self.temperature = temperature
        self.importance_weights = importance_weights
        self.label_floor = label_floor
        self.warmup_steps = warmup_steps
        if reject_after < 0:
            raise ValueError(f"reject_after must be >= 0, got {reject_after}")
        if reject_after and (
            not isinstance(self.reference, ReferenceTable) or self.scorer is None or not self.scorer.use_memory
            or label_floor <= 0
        ):
            raise ValueError(
                "reject_after needs a ReferenceTable reference, a scorer with the loss memory and label_floor > 0"
            )
        self.reject_after = reject_after
        if not (loss_discount >= 0 and math.isfinite(loss_discount)):
            raise ValueError(f"loss_discount must be a finite number >= 0, got {loss_discount}")
        self.loss_discount = loss_discount
        self.on_nonfinite = on_nonfinite
        self.id_key = id_key
        self.distributed = distributed
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.last_step: dict[str, torch.Tensor | None] = {}
        self._group: ProcessGroup | None = None
        self._group_bound = False
        self._state_loaded = False
        # The largest per-process row counts gathered so far (the same on every process): with a
        # bound, a gather needs one collective instead of two.
        self._row_bounds: dict[str, int] = {}
        self.step = 0
        self.samples_seen = 0
        self.nonfinite_losses = 0
        self.unlearned_rejected = 0
        self._flat_score_steps = 0
        self._spreads: list[float] = []  # the eligible scores' spread on each sampled step of the current window
        self._spread_inputs: list[tuple[torch.Tensor, torch.Tensor | None, float]] = []  # steps not measured yet
        self._flat_warned = False
        self._explore_checked = False
        self._window: deque = deque(maxlen=stats_window)
        self._last: dict[str, float] = {}
        self._plan: _Plan | None = None

    @property
    def policies(self) -> tuple[Policy, ...]:
        """Every policy this selector scores with, in order: ``policy``, then ``switch_to`` if given."""
        return (self.initial_policy,) if self.switch_to is None else (self.initial_policy, self.switch_to)

    @property
    def policy(self) -> Policy:
        """The policy scoring the next selection: ``switch_to`` from step ``switch_at`` on."""
        if self.switch_to is not None and self.step >= self.switch_at:
            return self.switch_to
        return self.initial_policy

    @property
    def flat_score_steps(self) -> int:
        """Sampled steps on which the eligible scores spanned less than ``FLAT_SPREAD`` x the temperature."""
        self._count_spreads()
        return self._flat_score_steps

    @property
    def needs_ids(self) -> bool:
        return bool(
            (self.scorer is not None and self.scorer.needs_ids)
            or (self.reference is not None and self.reference.needs_ids)
        )

    def _ids(self, batch: Any, ids: Any, n: int) -> torch.Tensor | None:
        source, guessed = "ids=", False
        if ids is None and self.id_key is not None:
            ids, source = get_field(batch, self.id_key), f"the batch's {self.id_key!r} field (id_key)"
        if ids is None and isinstance(batch, Mapping):
            key = next((key for key in ID_KEYS if key in batch), None)
            if key is not None:
                ids, source, guessed = batch[key], f"the batch's {key!r} field", True
        if ids is None:
            if self.needs_ids:
                raise ValueError(
                    f"policy {self.policy.name!r} with this scorer/reference needs sample ids: pass ids= to "
                    f"select(), or give the batch an id field (one of {ID_KEYS}) or set id_key="
                )
            return None
        try:
            return check_ids(torch.as_tensor(ids), n)
        except (TypeError, ValueError) as error:
            if guessed and not self.needs_ids and not _one_integer_per_sample(ids, n):
                return None  # a field named like ids that holds something else (text hashes, per-token positions)
            raise type(error)(f"sample ids read from {source}: {error}") from None

    def _process_group(self) -> ProcessGroup | None:
        """The processes selection spans, looked up once (after the user's ``Accelerator`` exists)."""
        if not self._group_bound:
            self._group = ProcessGroup.current()
            self._group_bound = True
            if self._group is not None and self.distributed == "local" and not self._state_loaded:
                # Local exploration draws from each process's own stream, so the shards are not
                # explored at the same positions.
                self.generator.manual_seed(self.seed + 1_000_003 * self._group.rank)
        return self._group

    @_outside_inference_mode
    def select(self, candidate_batch: Any, ids: Any = None) -> SelectedBatch:
        """Score a candidate batch and return the selected samples with their loss weights.

        Across several processes every process must call this (and :meth:`observe`) once per step.
        """
        start = time.perf_counter()
        self._check_no_open_plan()
        group = self._process_group()
        if group is not None and self.distributed == "global":
            return self._select_global(group, candidate_batch, ids, start)
        n = batch_size(candidate_batch)
        ids = self._ids(candidate_batch, ids, n)
        k = resolve_keep(self.keep, n) if group is None else local_keep(self.keep, n)
        signals, features, predicted, reference_loss = self._signals(candidate_batch, ids, n)
        scores, selection, eligible = self._choose(signals, k)
        selected = self._package(candidate_batch, selection, scores, ids, features, predicted, reference_loss, start)
        selected.eligible = eligible
        return selected

    @_outside_inference_mode
    def select_plan(self, candidate_batch: Any, steps: int, ids: Any = None) -> list[SelectedBatch]:
        """Select for ``steps`` training steps at once: score their candidates (``steps x B`` samples, step
        i's the i-th B) in one pass and draw each step's k from its own B, as :meth:`select` would.

        Observe each part with :meth:`observe`, in the order given, before the next :meth:`select` or
        ``select_plan``: each returns its step's loss, and the scorer, memory and rejection learn from
        all the parts together once the last is observed. One scoring pass and one update per plan
        instead of per step cut the selector's many small tensor ops (they, not arithmetic, are its cost
        on a CPU); the price is scores up to ``steps - 1`` steps stale. Across several processes in
        ``distributed="local"`` mode every process plans over its own candidates and every part's
        :meth:`observe` gathers that step's losses (one small collective); the plan's learning gathers the
        rest once. ``distributed="global"`` selects at every step.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"a plan needs a whole number of steps >= 1, got {steps!r}")
        if steps == 1:
            return [self.select(candidate_batch, ids)]
        start = time.perf_counter()
        self._check_plan_allowed()
        n = batch_size(candidate_batch)
        if n % steps:
            raise ValueError(f"a plan of {steps} steps needs a candidate batch divisible into {steps} steps' candidates, got {n}")
        return self._plan_steps(candidate_batch, None, self._ids(candidate_batch, ids, n), steps, n, start)

    @property
    def reads_candidates(self) -> bool:
        """Whether scoring reads the candidates themselves (a scorer or reference model, the large model's
        or a proxy's losses), not only their ids."""
        return (
            (self.reference is not None and self.reference.reads_candidates)
            or self.policy.needs_large_forward
            or self._needs_batch()
        )

    @_outside_inference_mode
    def select_steps(self, step_batches: Sequence[Any], ids: Sequence[Any] | None = None) -> list[SelectedBatch]:
        """:meth:`select_plan` over one candidate batch per step (``ids``: one id tensor per batch, or from
        the batches). When scoring needs only ids (:attr:`reads_candidates` is False: the loss memory and a
        ``ReferenceTable``) the batches are never joined, so they may differ in shape past the batch size
        (dynamic padding) and large inputs are not copied; each step's picks come from its own batch.
        Otherwise they are joined (:func:`online_select.batch.concat`) and must share one shape.
        """
        steps = len(step_batches)
        if steps == 0:
            raise ValueError("select_steps needs at least one candidate batch")
        if ids is not None and len(ids) != steps:
            raise ValueError(f"select_steps got {steps} candidate batches but {len(ids)} id tensors")
        if steps == 1:
            return [self.select(step_batches[0], None if ids is None else ids[0])]
        width = batch_size(step_batches[0])
        for i, batch in enumerate(step_batches[1:], 1):
            if batch_size(batch) != width:
                raise ValueError(f"a plan's steps need one candidate count: batch {i} has {batch_size(batch)}, batch 0 has {width}")
        step_ids = [self._ids(batch, None if ids is None else ids[i], width) for i, batch in enumerate(step_batches)]
        if self.reads_candidates:
            joined_ids = None if step_ids[0] is None else torch.cat(step_ids)
            return self.select_plan(concat(step_batches), steps, joined_ids)
        start = time.perf_counter()
        self._check_plan_allowed()
        all_ids = None if step_ids[0] is None else torch.cat(step_ids)
        return self._plan_steps(None, list(step_batches), all_ids, steps, width * steps, start)

    def _check_plan_allowed(self) -> None:
        self._check_no_open_plan()
        group = self._process_group()
        if group is not None and self.distributed == "global":
            raise ValueError("select_plan needs distributed='local' across processes; with 'global' call select() at every step")

    def _plan_steps(
        self, candidate_batch: Any, step_batches: list | None, ids: torch.Tensor | None, steps: int, n: int, start: float
    ) -> list[SelectedBatch]:
        """A plan over ``n`` candidates, given joined (``candidate_batch``) or per step (``step_batches``,
        read for the picks only)."""
        group = self._process_group()
        per_step = (resolve_keep if group is None else local_keep)(self.keep, n // steps)
        signals, features, predicted, reference_loss = self._signals(candidate_batch, ids, n)
        # Scored in one pass; each step draws its k from its own B candidates, as select() would.
        width = n // steps
        chosen = [self._choose(_rows_of(signals, slice(i * width, (i + 1) * width)), per_step) for i in range(steps)]
        scores = torch.cat([scores for scores, _, _ in chosen])
        eligible = None if chosen[0][2] is None else torch.cat([mask for _, _, mask in chosen])
        whole = Selection(
            torch.cat([selection.indices + i * width for i, (_, selection, _) in enumerate(chosen)]),
            torch.cat([selection.weights for _, selection, _ in chosen]),
            torch.cat([selection.explored for _, selection, _ in chosen]),
            n,
        )
        selected = self._package(candidate_batch, whole, scores, ids, features, predicted, reference_loss, start)
        selected.eligible = eligible
        select_s = selected.timings["select_s"]
        parts = []
        for i in range(steps):
            rows = slice(i * per_step, (i + 1) * per_step)
            if step_batches is None:
                batch = map_fields(selected.batch, lambda _, value, rows=rows: value[rows])
            else:
                batch = take(step_batches[i], chosen[i][1].indices)
            part = SelectedBatch(
                batch=batch,
                indices=selected.indices[rows],
                weights=selected.weights[rows],
                explored=selected.explored[rows],
                scores=scores,
                ids=ids,
                candidate_batch_size=n,
                step=self.step + i,
                features=features,
                predicted_loss=predicted,
                reference_loss=reference_loss,
                eligible=eligible,
                timings={"select_s": select_s / steps},
            )
            parts.append(part)
        self._plan = _Plan(selected, list(parts), torch.arange(steps).repeat_interleave(per_step))
        for part in parts:
            part.plan = self._plan
        return parts

    def end_plan(self) -> int:
        """End the last plan (:meth:`select_plan`, :meth:`select_steps`) before all its parts are observed:
        learn from the parts observed so far, as if the plan had been that long, and drop the others (their
        samples were never trained on; observing one later is an error). Returns how many were dropped.

        For a checkpoint or the end of training inside a plan: the saved state is then exactly the
        state a plan of the observed steps would have left. Across processes, call it on every process
        at the same step.
        """
        plan = self._plan
        if plan is None or not plan.open:
            return 0
        start = time.perf_counter()
        done, dropped = len(plan.observed), plan.steps - len(plan.observed)
        selected = _plan_head(plan.selected, done, plan.steps)
        plan.parts = plan.parts[:done]
        if done:
            self._learn_plan(selected, plan.observed, plan.step_offsets[: selected.k], plan.parts[-1], start)
        return dropped

    def _learn_plan(
        self, selected: SelectedBatch, observed: list[torch.Tensor], step_offsets: torch.Tensor, timed: SelectedBatch, start: float
    ) -> None:
        """The learning from a plan's observed parts (``selected``: their picks), across processes when there are several."""
        whole = torch.cat(observed)
        group = self._process_group()
        if group is None:
            view = self._view(selected, whole, step_offsets)
        else:
            view = self._gather_view(group, selected, whole, step_offsets)
        finite, keep = _finite_rows(view.losses)  # the parts' non-finite losses were counted as they came
        self._learn(view, finite, keep, len(observed), timed, start)

    def _check_no_open_plan(self) -> None:
        if self._plan is not None and self._plan.open:
            left = self._plan.steps - len(self._plan.observed)
            raise RuntimeError(f"{left} part(s) of the last select_plan are not observed yet; observe them first")

    def _signals(
        self, candidate_batch: Any, ids: torch.Tensor | None, n: int
    ) -> tuple[Signals, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The policy's signals for this process's candidates, and the scorer features behind them."""
        signals = Signals(batch_size=n, generator=self.generator)
        features = predicted = reference_loss = None
        warming_up = self.step < self.warmup_steps
        reference_features = None
        if self.reference is not None:
            reference_loss, reference_features = self.reference.losses_and_features(candidate_batch, ids)
            reference_loss = check_per_sample_loss(reference_loss, n, "the reference's loss")
            if reference_features.ndim != 2 or reference_features.shape[0] != n:
                raise LossShapeError(
                    f"the reference's features have shape {tuple(reference_features.shape)}; expected ({n}, F), one row per candidate"
                )
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
            signals.proxy_loss = check_per_sample_loss(self.proxy.losses(candidate_batch), n, "the proxy's loss")
        return signals, features, predicted, reference_loss

    def _choose(self, signals: Signals, k: int) -> tuple[torch.Tensor, Selection, torch.Tensor | None]:
        """Scores, the selection rule's pick and the eligible mask over the candidates the signals describe."""
        n = signals.batch_size
        if not self._explore_checked:
            self._explore_checked = True
            if self.explore > 0 and self.scorer is not None and round(self.explore * k) == 0:
                warn_user(
                    f"explore={self.explore:g} of k={k} rounds to no exploration pick, so the scorer learns only from "
                    f"the samples its own scores chose (biased targets): use explore >= {1 / k:.2g} or a larger k",
                    ExplorationWarning,
                )
        eligible = self.policy.eligible(signals, label_floor=self.label_floor)
        if self.step < self.warmup_steps:
            scores = torch.rand(n, generator=self.generator)
            selection = select(scores, k, rule="top_k", explore=1.0, generator=self.generator, eligible=eligible)
            return scores, selection, eligible
        scores = self.policy.score(signals, label_floor=self.label_floor).float()
        try:
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
        except ValueError:
            # select() checks the scores are finite; say which signals to look at.
            bad = ~torch.isfinite(scores)
            if bool(bad.any()):
                raise NonFiniteLossError(
                    f"policy {self.policy.name!r} produced {int(bad.sum())} NaN/inf scores of {n}; "
                    "check the large-model, reference and scorer losses for NaN/inf"
                ) from None
            raise
        if self.rule == "sample":
            self._spread_inputs.append((scores, eligible, self.temperature))
            if len(self._spreads) + len(self._spread_inputs) >= FLAT_WINDOW:
                self._count_spreads()
        return scores, selection, eligible

    def _count_spreads(self) -> None:
        """Measure the spread of the eligible scores of the sampled steps not measured yet, and judge
        each full window of them. Deferred from the steps themselves: measured together they cost a
        fraction of measuring each right after the large model's step."""
        inputs, self._spread_inputs = self._spread_inputs, []
        for scores, eligible, temperature in inputs:
            if eligible is not None:
                scores = scores[eligible]
            if scores.numel() < 2:
                continue
            low, high = torch.aminmax(scores)
            spread = float(high - low)
            self._flat_score_steps += spread < FLAT_SPREAD * temperature
            self._spreads.append(spread)
            if len(self._spreads) >= FLAT_WINDOW:
                self._judge_spreads(scores, temperature)

    def _judge_spreads(self, scores: torch.Tensor, temperature: float) -> None:
        """Warn once if the scores were flat on most steps of the window that just filled."""
        flat_below = FLAT_SPREAD * temperature
        spreads, self._spreads = torch.tensor(self._spreads), []
        if self._flat_warned or float((spreads < flat_below).float().mean()) < FLAT_SHARE:
            return
        self._flat_warned = True
        typical = float(spreads.median())
        if typical > 1e-6 * max(abs(float(scores.max())), 1.0):
            advice = f"Use a temperature on the scores' scale (about {typical / 5:.2g}) or rule='top_k'"
        else:
            advice = (f"The scores are all but equal: check what the {self.policy.name} policy reads (e.g. a "
                      "reference table with one value, or a scorer that does not learn)")
        warn_user(
            f"rule='sample' at temperature {temperature:g}: on {FLAT_SHARE:.0%} or more of the last "
            f"{FLAT_WINDOW} steps the eligible candidates' {self.policy.name} scores spanned less than "
            f"{FLAT_SPREAD:g} x the temperature (median {typical:.3g}), so sampling picks nearly at random. {advice}",
            FlatScoresWarning,
        )

    def _global_candidates(self, candidate_batch: Any, ids: Any) -> tuple:
        """This process's part of a global selection: its candidates' rows (id, then one column per signal in
        ``SIGNALS`` order, zeros where the policy reads none, so every process sends the same width), the signal
        names present, and the payload that moves with the picks."""
        n = batch_size(candidate_batch)
        ids = self._ids(candidate_batch, ids, n)
        signals, features, predicted, reference_loss = self._signals(candidate_batch, ids, n)
        names = [name for name in SIGNALS if getattr(signals, name) is not None]
        columns = [ids.double() if ids is not None else torch.full((n,), -1.0, dtype=torch.float64)]
        columns += [
            torch.zeros(n, dtype=torch.float64) if getattr(signals, name) is None
            else getattr(signals, name).detach().double().cpu()
            for name in SIGNALS
        ]
        extras = {
            name: value
            for name, value in (("features", features), ("predicted", predicted), ("reference", reference_loss))
            if value is not None
        }
        payload = {"batch": candidate_batch, "extras": extras}
        return torch.stack(columns, 1), ids, names, payload, field_specs(payload)

    def _select_global(self, group: ProcessGroup, candidate_batch: Any, ids: Any, start: float) -> SelectedBatch:
        """Gather every candidate's signals and id, choose over all of them exactly as one process
        would from the concatenated batch, and move the selected samples to where they train.

        A process that cannot take part (an empty batch, an id the reference lacks, a loss of the wrong shape)
        still joins the gather, flagged, so every process stops with an error instead of waiting for it."""
        try:
            rows, ids, names, payload, specs = self._global_candidates(candidate_batch, ids)
            header, failure = torch.tensor([float(fields_signature(specs)), 0.0]), None
        except Exception as error:  # noqa: BLE001 (re-raised below, once the other processes know)
            rows, header, failure = torch.zeros((0, 1 + len(SIGNALS)), dtype=torch.float64), torch.tensor([0.0, 1.0]), error
        try:
            headers, parts = group.all_gather_rows(rows, header, self._row_bounds.get("candidates"))
        except Exception:
            if failure is not None:
                raise failure from None
            raise
        if bool(headers[:, 1].any()):
            messages = group.all_gather_objects(None if failure is None else f"{type(failure).__name__}: {failure}")
            if failure is not None:
                raise failure
            failed = ", ".join(f"rank {rank} ({message})" for rank, message in enumerate(messages) if message)
            raise DistributedSelectionError(
                f"global selection stopped on every process: {failed} could not take part in this step"
            )
        if len(set(headers[:, 0].tolist())) > 1:
            raise DistributedSelectionError(
                f"distributed='global' moves selected samples between processes, so every process's batch needs "
                f"the same fields, dtypes and per-sample shapes; this process (rank {group.rank}) has "
                f"[{describe_fields(specs)}] and another differs. Pad to a fixed length (e.g. "
                "padding='max_length') or use distributed='local'"
            )
        counts = [part.shape[0] for part in parts]
        self._row_bounds["candidates"] = max(counts)
        table = torch.cat(parts)
        total = table.shape[0]
        k = global_keep(self.keep, group.world_size, total)
        if k < group.world_size:
            raise ValueError(
                f"global selection keeps {k} of {total} candidates, fewer than the {group.world_size} processes "
                "that each need at least one sample to train on"
            )
        global_signals = Signals(batch_size=total, generator=self.generator)
        for name in names:
            setattr(global_signals, name, table[:, 1 + SIGNALS.index(name)].float())
        scores, selection, eligible = self._choose(global_signals, k)
        offsets = torch.tensor([0] + counts).cumsum(0)
        owners = torch.searchsorted(offsets[1:], selection.indices, right=True)
        trainers = assign_trainers(owners, even_quotas(k, group.world_size))
        mine = (trainers == group.rank).nonzero()[:, 0]
        moved = exchange_selected(group, payload, specs, owners, trainers, selection.indices - offsets[owners])
        return SelectedBatch(
            batch=moved["batch"],
            indices=selection.indices[mine],
            weights=selection.weights[mine],
            explored=selection.explored[mine],
            scores=scores,
            ids=table[:, 0].long() if ids is not None else None,
            candidate_batch_size=total,
            step=self.step,
            features=moved["extras"].get("features"),
            predicted_loss=moved["extras"].get("predicted"),
            reference_loss=moved["extras"].get("reference"),
            eligible=eligible,
            timings={"select_s": time.perf_counter() - start},
            selection_order=mine,
            global_indices=selection.indices,
        )

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

        The scorer, memory and proxy learn from the detached losses. Across several processes they
        learn from all processes' selected samples (gathered), so they stay identical everywhere, and
        the returned loss is ``world_size / K * sum(weights * losses)`` over this process's samples,
        with K the selected samples of all processes: averaged over processes (as DDP, FSDP and
        DeepSpeed average gradients) it is the weighted mean over all K, however unevenly they are spread.
        """
        start = time.perf_counter()
        losses = check_per_sample_loss(losses, selected.k, "per-sample loss")
        observed = losses.detach().float().cpu()
        if selected.plan is not None:
            return self._observe_part(selected, losses, observed, start)
        if selected.observed:
            raise RuntimeError("this selection was observed already: observe each select() once (the scorer, memory and counters learnt from it)")
        group = self._process_group()
        view = self._view(selected, observed) if group is None else self._gather_view(group, selected, observed)
        finite, keep = self._finite(view.losses)
        self._learn(view, finite, keep, 1, selected, start)
        selected.observed = True
        return self._loss(selected.weights, losses, observed, view.losses, finite, keep, group)

    def _observe_part(self, part: SelectedBatch, losses: torch.Tensor, observed: torch.Tensor, start: float) -> torch.Tensor:
        """One step of a plan: its loss now; the learning from all the plan's steps once the last is in."""
        plan = part.plan
        if all(part is not kept for kept in plan.parts):
            raise RuntimeError(
                "this part of a select_plan was dropped by end_plan() or load_state_dict(): its samples are not to be trained on"
            )
        if not plan.open or plan.parts[len(plan.observed)] is not part:
            raise RuntimeError("observe the parts of a select_plan once each, in the order it returned them")
        group = self._process_group()
        # Across processes each step's loss is scaled by every process's finite losses, and a NaN anywhere
        # must stop every process, so the part's losses are gathered now; the rest waits for the last part.
        step_losses = observed if group is None else self._gather_losses(group, observed)
        finite, keep = self._finite(step_losses)
        plan.observed.append(observed)
        if not plan.open:
            self._learn_plan(plan.selected, plan.observed, plan.step_offsets, part, start)
        else:
            part.timings["observe_s"] = time.perf_counter() - start
        return self._loss(part.weights, losses, observed, step_losses, finite, keep, group)

    def _gather_losses(self, group: ProcessGroup, observed: torch.Tensor) -> torch.Tensor:
        """Every process's observed losses of one step, in rank order."""
        _, parts = group.all_gather_rows(observed.double()[:, None], torch.zeros(0), self._row_bound("part"))
        self._row_bounds["part"] = max(part.shape[0] for part in parts)
        return torch.cat(parts)[:, 0].float()

    def _row_bound(self, gather: str, steps: int = 1) -> int | None:
        """Rows any process sends at most in ``gather``: k a step when k is a count, else the most so far."""
        return self.keep * steps if isinstance(self.keep, int) else self._row_bounds.get(gather)

    def _finite(self, losses: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The finite mask of a step's losses and the rows to keep (both None when all are finite); raises or
        counts the others."""
        finite, keep = _finite_rows(losses)
        if keep is None:
            return finite, keep
        n_bad = losses.numel() - keep.numel()
        if self.on_nonfinite == "raise":
            raise NonFiniteLossError(
                f"{n_bad} of {losses.numel()} per-sample losses are NaN or infinite at step {self.step}; "
                "pass on_nonfinite='skip' to drop them from the update and count them instead"
            )
        self.nonfinite_losses += n_bad
        return finite, keep

    def _learn(
        self, view: _StepView, finite: torch.Tensor | None, keep: torch.Tensor | None, steps: int, timed: SelectedBatch, start: float
    ) -> None:
        """The scorer, memory, proxy and rejection learn from ``steps`` steps' observed losses (``view``)."""
        kept = view.losses.numel() if keep is None else keep.numel()

        def kept_rows(rows: torch.Tensor) -> torch.Tensor:
            return rows if keep is None else rows[keep]

        if self.scorer is not None and kept:
            sub_ids = None if view.ids is None else kept_rows(view.ids)
            sub_batch = (view.batch if keep is None else take(view.batch, keep)) if self.scorer.model is not None else None
            step: int | torch.Tensor = self.step
            if view.step_offsets is not None:  # a plan: each sample observed at the step of its part
                step = kept_rows(self.step + view.step_offsets)
            self.scorer.update(kept_rows(view.features), kept_rows(view.losses), sub_ids, step, sub_batch, observations=steps)
        if self.proxy is not None and kept:
            self.proxy.update(view.batch if keep is None else take(view.batch, keep))
        rejected_ids = None
        if self.reject_after and kept and view.ids is not None:
            rejected_ids = self._reject_recorded(kept_rows(view.ids))
            self.unlearned_rejected += rejected_ids.numel()
        timed.timings["observe_s"] = time.perf_counter() - start
        self._record(view, finite, timed.timings["observe_s"], steps)
        self.last_step["rejected_ids"] = rejected_ids
        self.step += steps
        self.samples_seen += view.candidates

    def _loss(
        self,
        weights: torch.Tensor,
        losses: torch.Tensor,
        observed: torch.Tensor,
        view_losses: torch.Tensor,
        finite: torch.Tensor | None,
        keep: torch.Tensor | None,
        group: ProcessGroup | None,
    ) -> torch.Tensor:
        """The loss to backpropagate for one step (see :meth:`observe`)."""
        weights = weights.to(losses.device, losses.dtype)
        kept = view_losses.numel() if keep is None else keep.numel()
        if self.loss_discount and kept:
            # Normalised over every process's finite losses (the view), so the weights mean the same everywhere.
            # Shifted by the smallest loss, which the normalisation cancels: exp(-q * loss) alone underflows to
            # 0 for every sample once all losses are large (summed per-token losses), and 0 / 0 is NaN.
            finite_losses = view_losses if keep is None else view_losses[keep]
            low = float(finite_losses.min())
            scale = torch.exp(-self.loss_discount * (finite_losses - low)).mean()
            shifted = observed.nan_to_num(nan=low, posinf=low, neginf=low) - low
            discount = torch.exp(-self.loss_discount * shifted) / scale
            weights = weights * discount.to(losses.device, losses.dtype)
        # Scaled before summing, as a mean is: a sum of many half-precision losses can overflow.
        if group is not None:
            mask = torch.isfinite(observed).to(losses.device)
            scale = group.world_size / max(kept, 1)
            return torch.where(mask, weights * losses * scale, torch.zeros_like(losses)).sum()
        if keep is not None:
            mask = finite.to(losses.device)
            return torch.where(mask, weights * losses / max(kept, 1), torch.zeros_like(losses)).sum()
        return (weights * losses).mean()

    def untrained(self, ids: torch.Tensor) -> torch.Tensor:
        """Mask of ``ids`` the large model has never been observed training on (per the loss memory)."""
        _, _, count = self._refresh_memory().lookup(torch.as_tensor(ids))
        return count == 0

    def refresh_reference(self, ids: torch.Tensor, large_losses: torch.Tensor) -> ReferenceRefresh:
        """Let the large model re-judge labels it has never trained on: its losses on ``ids`` replace the
        reference losses there.

        The reference is a small model; once the large model is better, its loss on a sample it has not
        trained on is a held-out judgement of the label, as twin halves are, but sharper: clean but hard
        samples the small reference rejected become eligible again, and mislabelled ones it let through
        are caught. Ids the large model already trained on are refused (it may have memorised them).
        """
        table = self._reference_table("refresh_reference")
        ids = torch.as_tensor(ids)
        ids = check_ids(ids, ids.numel())
        large_losses = check_per_sample_loss(large_losses, ids.numel(), "large-model loss").detach().float().cpu()
        if not bool(self.untrained(ids).all()):
            raise ValueError("refresh_reference got ids the large model has trained on; pass untrained ones only")
        before = table.losses(None, ids)
        table.replace_losses(ids, large_losses)
        if self.label_floor <= 0:
            return ReferenceRefresh(ids)
        was = plausible_labels(before, self.label_floor)
        now = plausible_labels(large_losses, self.label_floor)
        return ReferenceRefresh(ids, admitted=now & ~was, rejected=was & ~now)

    def reject_unlearned(self, ids: torch.Tensor, min_visits: int) -> ReferenceRefresh:
        """Make ineligible the ``ids`` the large model has trained on at least ``min_visits`` times and
        still found unlikely (last observed ``p(label) < label_floor``): their reference loss becomes that
        last observed loss.

        A clean sample is usually learnt within a few visits; a mislabelled one that slipped past the
        reference is not (the early-learning regime, as in area-under-the-margin filtering), and the
        learnability score would otherwise keep picking it for as long as the large model cannot fit it.
        Costs no forward: the loss memory already holds those losses.
        """
        table = self._reference_table("reject_unlearned")
        if min_visits < 1 or self.label_floor <= 0:
            raise ValueError(f"reject_unlearned needs min_visits >= 1 and label_floor > 0, got {min_visits}, {self.label_floor}")
        ids = torch.as_tensor(ids)
        ids = check_ids(ids, ids.numel())
        last_loss, _, count = self._refresh_memory().lookup(ids)
        unlearned = (count >= min_visits) & ~plausible_labels(last_loss.nan_to_num(0.0), self.label_floor)
        return self._reject(table, ids[unlearned], last_loss[unlearned])

    def _reject_recorded(self, ids: torch.Tensor) -> torch.Tensor:
        """:meth:`reject_unlearned` with ``min_visits=reject_after`` over ids the loss memory has just recorded
        (checked, each with a finite loss), which ``observe`` hands it at every step; returns the rejected ids.

        The same outcome for fewer small ops: a recorded loss is finite and is the last one, so the counts are
        looked up only for the ids whose label the large model still finds unlikely (few, on most steps none)."""
        table = self._reference_table("reject_unlearned")
        memory = self._refresh_memory()
        last_loss = memory.last_loss.index_select(0, ids)
        rows = (~plausible_labels(last_loss, self.label_floor)).nonzero()[:, 0]
        if rows.numel():
            rows = rows[memory.count.index_select(0, ids.index_select(0, rows)) >= self.reject_after]
        unlearned = self._reject(table, ids.index_select(0, rows), last_loss.index_select(0, rows))
        return unlearned.ids[unlearned.rejected]

    def _reject(self, table: ReferenceTable, ids: torch.Tensor, last_loss: torch.Tensor) -> ReferenceRefresh:
        """Make ineligible those of the unlearned ``ids`` the reference still finds plausible."""
        if not ids.numel():  # most steps: nothing to look up in the table
            nothing = torch.zeros(0, dtype=torch.bool)
            return ReferenceRefresh(ids, admitted=nothing, rejected=nothing)
        rejected = plausible_labels(table.losses(None, ids), self.label_floor)
        if bool(rejected.any()):
            table.replace_losses(ids[rejected], last_loss[rejected])
        return ReferenceRefresh(ids, admitted=torch.zeros(ids.numel(), dtype=torch.bool), rejected=rejected)

    def _reference_table(self, caller: str) -> ReferenceTable:
        if not isinstance(self.reference, ReferenceTable):
            raise ValueError(f"{caller} needs a ReferenceTable reference (losses stored per sample id)")
        return self.reference

    def _refresh_memory(self) -> LossMemory:
        if self.scorer is None or not self.scorer.use_memory:
            raise ValueError(
                "refreshing the reference needs to know which samples the large model has trained on: "
                "use a policy with a scorer (e.g. predicted_learnability) and scorer use_memory=True"
            )
        return self.scorer.memory

    def _needs_batch(self) -> bool:
        return self.proxy is not None or (self.scorer is not None and self.scorer.model is not None)

    def _view(self, selected: SelectedBatch, observed: torch.Tensor, step_offsets: torch.Tensor | None = None) -> _StepView:
        # Only the tensors the summary reads, not the SelectedBatch (whose batch it would keep alive).
        scores, indices, predicted, eligible = selected.scores, selected.indices, selected.predicted_loss, selected.eligible
        candidates = selected.candidate_batch_size

        def summary(explored: torch.Tensor, losses: torch.Tensor) -> dict:
            return {
                "explored_predicted": None if predicted is None else predicted[indices][explored],
                "explored_observed": losses[explored],
                "selected_score": scores[indices].mean().item(),
                "candidate_score": scores.mean().item(),
                "eligible_share": _count(eligible, candidates) / max(candidates, 1),
            }

        return _StepView(
            losses=observed,
            weights=selected.weights,
            explored=selected.explored,
            ids=selected.selected_ids,
            features=selected.selected_rows(selected.features),
            candidates=candidates,
            select_s=selected.timings.get("select_s", 0.0),
            summary=summary,
            batch=selected.batch,
            step_offsets=step_offsets,
        )

    def _gather_view(
        self, group: ProcessGroup, selected: SelectedBatch, observed: torch.Tensor, step_offsets: torch.Tensor | None = None
    ) -> _StepView:
        """All processes' selected samples and observed losses, on every process: in selection order
        (global mode, the order one process would have) or in rank order (local mode; a plan's rows
        carry their ``step_offsets`` in the order column)."""
        k = selected.k
        order = selected.selection_order if selected.selection_order is not None else step_offsets
        order = torch.zeros(k) if order is None else order
        ids = selected.selected_ids
        features = selected.selected_rows(selected.features)
        predicted = selected.selected_rows(selected.predicted_loss)
        columns = [
            order.double()[:, None],
            observed.double()[:, None],
            selected.weights.double()[:, None],
            selected.explored.double()[:, None],
            (ids.double() if ids is not None else torch.full((k,), -1.0, dtype=torch.float64))[:, None],
            selected.scores[selected.indices].double()[:, None],
        ]
        if predicted is not None:
            columns.append(predicted.double()[:, None])
        if features is not None:
            columns.append(features.double().reshape(k, -1))
        if self.distributed == "global":
            candidates, score_sum, eligible = 0.0, 0.0, 0.0  # every process already holds all candidates' scores
        else:
            candidates, score_sum = float(selected.candidate_batch_size), float(selected.scores.double().sum())
            eligible = float(_count(selected.eligible, selected.candidate_batch_size))
        header = torch.tensor(
            [candidates, score_sum, selected.timings.get("select_s", 0.0), eligible], dtype=torch.float64
        )
        # A bound on every process's count lets the rows travel in one collective: the quotas in
        # global mode, k (a plan: k per step) in local mode with a count, else the largest count so far.
        gather = "selected" if step_offsets is None else "plan"
        if selected.selection_order is not None:
            bound = -(-global_keep(self.keep, group.world_size, selected.candidate_batch_size) // group.world_size)
        else:
            bound = self._row_bound(gather, 1 if step_offsets is None else int(step_offsets.max()) + 1)
        headers, parts = group.all_gather_rows(torch.cat(columns, 1), header, max_rows=bound)
        self._row_bounds[gather] = max(part.shape[0] for part in parts)
        rows = torch.cat(parts)
        permutation = torch.argsort(rows[:, 0], stable=True) if selected.selection_order is not None else None
        if permutation is not None:
            rows = rows[permutation]
        if self.distributed == "global":
            candidates_total, all_scores = selected.candidate_batch_size, selected.scores
            eligible_total = _count(selected.eligible, candidates_total)
        else:
            candidates_total, all_scores = int(headers[:, 0].sum()), None
            eligible_total = int(headers[:, 3].sum())
        score_sum = float(headers[:, 1].sum())
        width = 7 if predicted is not None else 6
        batch = None
        if self._needs_batch():
            batch = gather_batches(group, selected.batch, field_specs(selected.batch), permutation)
        selected_scores = rows[:, 5].float()
        predicted_rows = rows[:, 6].float() if predicted is not None else None

        def summary(explored: torch.Tensor, losses: torch.Tensor) -> dict:
            return {
                "explored_predicted": None if predicted_rows is None else predicted_rows[explored],
                "explored_observed": losses[explored],
                "selected_score": selected_scores.mean().item(),
                "candidate_score": (
                    all_scores.mean().item() if all_scores is not None else score_sum / max(candidates_total, 1)
                ),
                "eligible_share": eligible_total / max(candidates_total, 1),
            }

        return _StepView(
            losses=rows[:, 1].float(),
            weights=rows[:, 2].float(),
            explored=rows[:, 3].bool(),
            ids=rows[:, 4].long() if ids is not None else None,
            features=rows[:, width:].to(features.dtype) if features is not None else None,
            candidates=candidates_total,
            select_s=float(headers[:, 2].max()),
            summary=summary,
            batch=batch,
            step_offsets=rows[:, 0].long() if step_offsets is not None else None,
        )

    def _record(self, view: _StepView, finite: torch.Tensor | None, update_s: float, steps: int = 1) -> None:
        """One entry of the stats window (a plan's steps share one, its seconds per step)."""
        summary, explored, losses = view.summary, view.explored, view.losses
        select_s, update_s = view.select_s / steps, update_s / steps
        explored_finite = explored if finite is None else explored & finite
        self._window.append(lambda: {"select_s": select_s, "update_s": update_s, **summary(explored_finite, losses)})
        self.last_step = {"ids": view.ids, "weights": view.weights, "explored": view.explored, "losses": view.losses}

    def _window_entries(self) -> list[dict]:
        """The stats window's entries, each computed on first read."""
        for i in range(len(self._window)):
            if callable(self._window[i]):
                self._window[i] = self._window[i]()
        return list(self._window)

    def check_synchronized(self) -> None:
        """Raise :class:`~online_select.distributed.DistributedSelectionError` unless the scorer, proxy,
        loss memory and counters are bitwise identical on every process (a no-op in one process)."""
        group = self._process_group()
        if group is None:
            return
        # Per process by design: the RNG, the stats window, and in local mode the flat-score count and window (own
        # candidates' scores).
        local = ("flat_score_steps", "flat_window", "flat_warned") if self.distributed == "local" else ()
        own = ("generator", "window", *local)
        state = {key: value for key, value in self.state_dict().items() if key not in own}
        group.check_identical(_tensors_of(state), "the selector's state (scorer, proxy, loss memory, counters)")

    def stats(self) -> dict[str, float]:
        """Summary over the recent window of steps: scorer quality, scores and time split."""
        if not self._window:
            return {}
        window = self._window_entries()
        out: dict[str, float] = {
            "selection/step": float(self.step),
            "selection/samples_seen": float(self.samples_seen),
            "selection/select_ms": 1000 * sum(e["select_s"] for e in window) / len(window),
            "selection/update_ms": 1000 * sum(e["update_s"] for e in window) / len(window),
            "selection/selected_score": sum(e["selected_score"] for e in window) / len(window),
            "selection/candidate_score": sum(e["candidate_score"] for e in window) / len(window),
            "selection/eligible_share": sum(e["eligible_share"] for e in window) / len(window),
            "selection/nonfinite_losses": float(self.nonfinite_losses),
            "selection/unlearned_rejected": float(self.unlearned_rejected),
            "selection/flat_score_steps": float(self.flat_score_steps),
        }
        if self.switch_to is not None:
            out["selection/switched"] = float(self.step >= self.switch_at)
        pairs = [(e["explored_predicted"], e["explored_observed"]) for e in window if e["explored_predicted"] is not None]
        if pairs:
            predicted = torch.cat([p for p, _ in pairs])
            observed = torch.cat([o for _, o in pairs])
            out["selection/spearman_explore"] = spearman(predicted, observed)
        if self.scorer is not None and not math.isnan(self.scorer.last_loss):
            out["selection/scorer_loss"] = self.scorer.last_loss
        return out

    def state_dict(self) -> dict:
        """Everything needed to continue selection exactly: scorer, proxy, reference, RNG, counters.

        As with ``nn.Module.state_dict``, the scorer's tensors are the live ones: save it (``torch.save``) or
        ``copy.deepcopy`` it to keep a snapshot in memory."""
        if self._plan is not None and self._plan.open:
            raise RuntimeError(
                "the selector's state is saved between plans: observe every part of the last select_plan first, "
                "or end it early with end_plan()"
            )
        state: dict[str, Any] = {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "nonfinite_losses": self.nonfinite_losses,
            "unlearned_rejected": self.unlearned_rejected,
            "flat_score_steps": self.flat_score_steps,
            "flat_window": list(self._spreads),  # the window in progress and whether it warned, so a resume warns as
            "flat_warned": self._flat_warned,  # an uninterrupted run would
            "generator": self.generator.get_state(),
            "policy": self.initial_policy.name,
            "switch": None if self.switch_to is None else [self.switch_to.name, self.switch_at],
            "window": self._window_entries(),
        }
        if self.scorer is not None:
            state["scorer"] = self.scorer.state_dict()
        if self.proxy is not None:
            state["proxy"] = self.proxy.state_dict()
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("policy") != self.initial_policy.name:
            raise ValueError(f"selector state is for policy {state.get('policy')!r}, not {self.initial_policy.name!r}")
        switch = None if self.switch_to is None else [self.switch_to.name, self.switch_at]
        saved_switch = state.get("switch")
        if (None if saved_switch is None else list(saved_switch)) != switch:
            raise ValueError(
                f"selector state switches policy as {_describe_switch(saved_switch)}, this selector as "
                f"{_describe_switch(switch)}: resume with the switch_to and switch_at of the run that saved it"
            )
        if self._plan is not None:  # a plan open when the state is replaced is void: its parts cannot be observed
            self._plan.parts = self._plan.parts[: len(self._plan.observed)]
            self._plan = None
        self.step = int(state["step"])
        self.samples_seen = int(state["samples_seen"])
        self.nonfinite_losses = int(state["nonfinite_losses"])
        self.unlearned_rejected = int(state.get("unlearned_rejected", 0))
        self._spread_inputs = []
        self._flat_score_steps = int(state.get("flat_score_steps", 0))
        self._spreads = [float(spread) for spread in state.get("flat_window", [])]
        self._flat_warned = bool(state.get("flat_warned", False))
        self.generator.set_state(state["generator"])
        self._window.clear()
        self._window.extend(state.get("window", []))
        self._state_loaded = True
        if self.scorer is not None:
            self.scorer.load_state_dict(state["scorer"])
        if self.proxy is not None:
            self.proxy.load_state_dict(state["proxy"])
        if self.reference is not None and "reference" in state:
            self.reference.load_state_dict(state["reference"])


def _finite_rows(losses: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The finite mask of ``losses`` and the positions of the finite ones, or ``(None, None)`` when all are."""
    if all_finite(losses):
        return None, None
    finite = torch.isfinite(losses)
    return finite, finite.nonzero()[:, 0]


def _one_integer_per_sample(values: Any, n: int) -> bool:
    """Whether ``values`` has the form of sample ids (one integer per candidate), whatever their range."""
    try:
        values = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError):
        return False
    return values.shape == (n,) and not values.dtype.is_floating_point and values.dtype != torch.bool


def _rows_of(signals: Signals, rows: slice) -> Signals:
    """The signals of a contiguous range of the candidates."""
    out = Signals(batch_size=rows.stop - rows.start, generator=signals.generator)
    for name in SIGNALS:
        value = getattr(signals, name)
        if value is not None:
            setattr(out, name, value[rows])
    return out


def _tensors_of(state: Any) -> list[torch.Tensor]:
    """Every tensor and number in a nested state dict, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in _tensors_of(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in _tensors_of(value)]
    if isinstance(state, (int, float, bool)):
        return [torch.tensor(float(state), dtype=torch.float64)]
    return []
