"""Selection telemetry: what was selected and why, as numbers a tracker can plot.

The worst failure of data selection is silent: training runs without error and ends up poor because
the selector chose the wrong data. This module turns :class:`~online_select.SelectedBatch` objects and
selector state into summaries:

- pure functions over tensors (:func:`step_summary`, :func:`precision_at_k`, :func:`oracle_scores`,
  :func:`coverage_summary`, :func:`distribution_shift`, ...);
- :class:`SelectionTelemetry`, the one object holding counters (per-id pick counts, a window of
  scores, audits), fed once per step by :meth:`SelectionTelemetry.record_step`;
- tracker output (:func:`log_histograms`, :func:`log_example_tables`) that sends histograms and
  example tables to W&B (``wandb.Histogram`` / ``wandb.Table``) and TensorBoard, and plain quantiles
  to every tracker through the scalar lines.

The audit oracle
----------------
:meth:`SelectionTelemetry.audit` runs the large model's forward on a small random sample of one
step's candidates and compares the selector's ranking with the *oracle* ranking: the policy's own score
with every estimate of the large model's loss (the scorer's prediction, a proxy's loss) replaced by
the exact loss (``predicted_learnability`` -> ``learnability``, ``predicted_loss`` -> ``large_loss``).
The oracle is the target the scorer is taught, not the truth about which data helps:

- it is greedy: it ranks by the current loss, not by what a step on the sample does to test accuracy;
- loss-driven oracles prefer mislabelled samples (their loss stays high because the label is wrong);
  ``large_loss``, and ``reducible_loss`` once the large model outgrows its reference, drift toward
  them, so a high precision@k against such an oracle can mean the selector follows it into the noise.
  ``audit/oracle_noisy_share`` (the noisy share of the oracle's own top-k, when the data carries noise
  flags) shows how far the oracle itself has drifted;
- it is the model in eval mode before this step's update; a sample of ``audit_size`` candidates gives
  ``k' = round(k/B * audit_size)`` slots, so single audits are noisy: read the mean over an eval window
  next to ``audit/chance_precision`` (what a random ranking scores).
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .batch import batch_size, take
from .distributed import ProcessGroup
from .policies import Signals, get_policy
from .selector import OnlineSelector, SelectedBatch, spearman

__all__ = [
    "SelectionTelemetry",
    "telemetry_from_config",
    "step_summary",
    "score_summary",
    "split_scores",
    "score_histogram",
    "precision_at_k",
    "oracle_policy_name",
    "oracle_scores",
    "coverage_summary",
    "distribution_shift",
    "most_selected",
    "most_rejected",
    "render_example",
    "log_histograms",
    "log_example_tables",
    "wandb_tables",
    "QUANTILES",
]

QUANTILES = (0.1, 0.5, 0.9)
_MAX_SCORES_PER_STEP = 256  # per side: bounds the histogram buffer whatever B and the log cadence
_MAX_GROUPS = 1024  # categorical fields with more values than this are not tallied
_MAX_PER_GROUP_KEYS = 32  # per-class scalar keys only for small label sets; the TV distance always


def split_scores(selected: SelectedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores of the selected candidates and of the rejected ones."""
    scores = selected.scores.detach().float().cpu()
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[selected.indices.cpu()] = True
    return scores[mask], scores[~mask]


def _quantiles(values: torch.Tensor, prefix: str) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    q = np.quantile(values.detach().cpu().numpy().astype(np.float64), QUANTILES)
    return {f"{prefix}_q{round(100 * p):02d}": float(v) for p, v in zip(QUANTILES, q)}


def score_summary(scores: torch.Tensor, selected_scores: torch.Tensor, rejected_scores: torch.Tensor) -> dict[str, float]:
    """Mean, spread and quantiles of all candidates' scores, and the selected vs rejected means.

    ``score_gap`` is the selected mean minus the rejected mean: near 0, the selection is no better
    than random by its own scores.
    """
    scores = scores.double().flatten()
    chosen = selected_scores.double().flatten()
    rejected = rejected_scores.double().flatten()
    out = {
        "score_mean": float(scores.mean()) if scores.numel() else float("nan"),
        "score_std": float(scores.std()) if scores.numel() > 1 else 0.0,
        "selected_score_mean": float(chosen.mean()) if chosen.numel() else float("nan"),
        "rejected_score_mean": float(rejected.mean()) if rejected.numel() else float("nan"),
    }
    out["score_gap"] = out["selected_score_mean"] - out["rejected_score_mean"] if rejected.numel() else 0.0
    out.update(_quantiles(scores, "score"))
    out.update(_quantiles(chosen, "selected_score"))
    out.update(_quantiles(rejected, "rejected_score"))
    return out


def step_summary(selected: SelectedBatch) -> dict[str, float]:
    """One step's numbers: ``keep_ratio`` (k/B), ``explore_share`` (the fraction of the k picks that
    were uniformly random) and :func:`score_summary` of its scores."""
    chosen, rejected = split_scores(selected)
    out = {
        "keep_ratio": selected.k / max(selected.candidate_batch_size, 1),
        "explore_share": float(selected.explored.float().mean()) if selected.k else 0.0,
    }
    out.update(score_summary(selected.scores.detach().float().cpu(), chosen, rejected))
    return out


def score_histogram(
    selected_scores: torch.Tensor, rejected_scores: torch.Tensor, bins: int = 30
) -> dict[str, list[float]] | None:
    """Histograms of selected and rejected scores over shared bin edges (``None`` when empty)."""
    both = torch.cat([selected_scores.double().flatten(), rejected_scores.double().flatten()])
    both = both[torch.isfinite(both)]
    if both.numel() == 0:
        return None
    lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)

    def counts(values: torch.Tensor) -> list[int]:
        values = values.double().flatten()
        values = values[torch.isfinite(values)]
        return torch.histc(values, bins=bins, min=lo, max=hi).long().tolist() if values.numel() else [0] * bins

    return {"edges": edges.tolist(), "selected": counts(selected_scores), "rejected": counts(rejected_scores)}


def precision_at_k(scores: torch.Tensor, oracle: torch.Tensor, k: int) -> float:
    """The share of the top-k by ``scores`` that is also in the top-k by ``oracle`` (1 = same set)."""
    n = scores.numel()
    if oracle.numel() != n:
        raise ValueError(f"precision_at_k: {n} scores but {oracle.numel()} oracle scores")
    if not 0 < k <= n:
        raise ValueError(f"precision_at_k: k={k} must be in [1, {n}]")
    top = set(scores.topk(k).indices.tolist())
    best = set(oracle.topk(k).indices.tolist())
    return len(top & best) / k


UNSCORED_POLICIES = ("uniform", "reference_filter")  # their scores are random draws, not estimates of a loss


def oracle_policy_name(policy: str, has_reference: bool, requested: str = "auto") -> str:
    """The policy the audit compares against: ``requested`` unless ``"auto"``.

    ``auto`` keeps the policy itself (its estimates are swapped for the exact loss in
    :func:`oracle_scores`); the policies whose score is a random draw (``uniform``, ``reference_filter``)
    have none to audit, so they are compared with ``learnability`` when a reference exists and with
    ``large_loss`` otherwise (their precision@k is then chance level).
    """
    if requested != "auto":
        if requested in UNSCORED_POLICIES:
            raise ValueError(f"the {requested} policy's score is a random draw: it cannot be an audit oracle")
        get_policy(requested)
        return requested
    if policy in UNSCORED_POLICIES:
        return "learnability" if has_reference else "large_loss"
    return policy


def oracle_scores(
    policy: str,
    exact_loss: torch.Tensor,
    reference_loss: torch.Tensor | None = None,
    label_floor: float = 0.0,
) -> torch.Tensor:
    """The policy's score with the exact large-model loss in place of every estimate of it."""
    return _oracle(policy, exact_loss, reference_loss, label_floor)[0]


def _oracle(
    policy: str, exact_loss: torch.Tensor, reference_loss: torch.Tensor | None, label_floor: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The oracle's scores and the candidates it would consider (its eligibility rule; None: all), both read
    off one set of exact signals."""
    oracle = get_policy(policy)
    if oracle.name in UNSCORED_POLICIES:
        raise ValueError(f"the {oracle.name} policy has no oracle score; pick one with oracle_policy_name()")
    if oracle.needs_reference and reference_loss is None:
        raise ValueError(f"the audit oracle {oracle.name!r} needs reference losses, and this selector has no reference")
    signals = _exact_signals(exact_loss, reference_loss)
    return oracle.score(signals, label_floor=label_floor).float(), oracle.eligible(signals, label_floor=label_floor)


def _exact_signals(exact_loss: torch.Tensor, reference_loss: torch.Tensor | None) -> Signals:
    """The signals with the exact large-model loss in place of every estimate of it."""
    exact = exact_loss.detach().float().cpu()
    return Signals(
        batch_size=exact.numel(),
        large_loss=exact,
        predicted_loss=exact,
        proxy_loss=exact,
        reference_loss=None if reference_loss is None else reference_loss.detach().float().cpu(),
    )


def coverage_summary(picks: torch.Tensor, appearances: torch.Tensor) -> dict[str, float]:
    """How the picks spread over the samples that were candidates at least once.

    ``coverage``: share of those samples picked at least once; ``never_picked``: their count;
    ``pick_count_max``; ``top1pct_pick_share``: share of all picks that went to the most-picked 1%.
    """
    seen = appearances > 0
    n_seen = int(seen.sum())
    if n_seen == 0:
        return {}
    picked = picks[seen]
    total = int(picked.sum())
    top = max(1, n_seen // 100)
    return {
        "coverage": float((picked > 0).float().mean()),
        "never_picked": float(int((picked == 0).sum())),
        "samples_candidate": float(n_seen),
        "pick_count_max": float(int(picked.max())),
        "top1pct_pick_share": float(picked.topk(top).values.sum()) / total if total else 0.0,
    }


def distribution_shift(selected_counts: torch.Tensor, candidate_counts: torch.Tensor) -> dict[str, Any]:
    """Shares of each category among the selected and among the candidates, and their total
    variation distance (0: the selection keeps the candidates' mix; 1: disjoint)."""
    sel = selected_counts.double()
    cand = candidate_counts.double()
    sel_share = sel / sel.sum().clamp_min(1)
    cand_share = cand / cand.sum().clamp_min(1)
    return {
        "selected_share": sel_share.tolist(),
        "candidate_share": cand_share.tolist(),
        "tv": 0.5 * float((sel_share - cand_share).abs().sum()),
    }


def most_selected(picks: torch.Tensor, appearances: torch.Tensor, n: int) -> torch.Tensor:
    """Ids picked most often (ties: higher pick rate first); never-picked ids are left out."""
    seen = (picks > 0).nonzero()[:, 0]
    if seen.numel() == 0:
        return seen
    rate = picks[seen].double() / appearances[seen].double()
    key = picks[seen].double() + 0.5 * rate  # rate < 1 breaks ties between equal counts only
    return seen[key.argsort(descending=True)[:n]]


def most_rejected(picks: torch.Tensor, appearances: torch.Tensor, n: int) -> torch.Tensor:
    """Ids rejected most often (ties: lower pick rate first); never-rejected ids are left out."""
    seen = (appearances > picks).nonzero()[:, 0]
    if seen.numel() == 0:
        return seen
    rejections = (appearances[seen] - picks[seen]).double()
    rate = picks[seen].double() / appearances[seen].double()
    return seen[(rejections - 0.5 * rate).argsort(descending=True)[:n]]


def render_example(value: Any) -> dict[str, str]:
    """``{"image": base64 PNG}`` for a 2-D/3-D tensor (CHW or HWC), ``{"text": str}`` otherwise."""
    if isinstance(value, torch.Tensor) and value.ndim in (2, 3):
        image = value.detach().float().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
            image = image.permute(1, 2, 0)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        lo, hi = float(image.min()), float(image.max())
        image = (image - lo) / (hi - lo) if hi > lo else torch.zeros_like(image)
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray((255 * image).round().to(torch.uint8).numpy()).save(buffer, format="png")
        return {"image": base64.b64encode(buffer.getvalue()).decode("ascii")}
    return {"text": str(value)}


def _is_category(values: Any) -> bool:
    return isinstance(values, torch.Tensor) and values.ndim == 1 and not values.is_floating_point()


class SelectionTelemetry:
    """Counters and windows over the selection, fed once per step; summaries on demand.

    Args:
        selector: the :class:`OnlineSelector` whose choices are recorded (read only: the telemetry
            never changes what is selected; audits use their own random generator).
        large_loss_fn: ``candidate_batch -> per-sample losses`` of the large model, for audits.
        audit_every: audit every this many steps (0: never).
        audit_size: candidates per audit (a random sample of that step's candidate batch).
        audit_oracle: ``"auto"`` (the selector's policy of the audited step, so it follows a ``switch_to``) or a
            policy name (see :func:`oracle_policy_name`).
        group_keys: integer batch fields whose distribution among the selected is compared with the
            candidates' (e.g. a class label, a data source).
        noise_key: a boolean batch field flagging corrupted samples (used only for telemetry).
        histogram_bins: bins of the selected/rejected score histograms.
        table_every: example tables are due at the first call of :meth:`tables_due` at least this
            many steps after the last ones (0: only at the final step).
        seed: seeds the audit sampling.
        pool_processes: under ``distributed="local"`` across processes, pool every process's records in
            the summaries (:meth:`step_metrics`, :meth:`eval_metrics`, :meth:`example_rows`), which every
            process must then call at the same step; off, each process summarises its own.
    """

    def __init__(
        self,
        selector: OnlineSelector,
        *,
        large_loss_fn: Callable[[Any], torch.Tensor] | None = None,
        audit_every: int = 0,
        audit_size: int = 256,
        audit_oracle: str = "auto",
        group_keys: Iterable[str] = ("label", "source"),
        noise_key: str | None = "noisy",
        histogram_bins: int = 30,
        table_every: int = 0,
        seed: int = 0,
        pool_processes: bool = False,
    ) -> None:
        if audit_every < 0 or audit_size < 2:
            raise ValueError(f"audit_every must be >= 0 and audit_size >= 2, got {audit_every} and {audit_size}")
        if audit_every and large_loss_fn is None:
            raise ValueError("audit_every > 0 needs large_loss_fn=... (the large model's per-sample loss)")
        self.selector = selector
        self.large_loss_fn = large_loss_fn
        self.audit_every = audit_every
        self.audit_size = audit_size
        self.audit_oracle = audit_oracle
        for policy in selector.policies:
            oracle = oracle_policy_name(policy.name, selector.reference is not None, audit_oracle)
            if audit_every and get_policy(oracle).needs_reference and selector.reference is None:
                raise ValueError(
                    f"audit oracle {oracle!r} needs reference losses, but policy {policy.name!r} runs "
                    "without a reference: pick another logging.audit_oracle (e.g. large_loss)"
                )
        self.group_keys = tuple(group_keys)
        self.noise_key = noise_key
        self.histogram_bins = histogram_bins
        self.table_every = table_every
        self.pool_processes = pool_processes
        self._last_table_step = 0
        self._warned_global_audit = False
        self.generator = torch.Generator().manual_seed(seed + 104729)
        self.picks = torch.zeros(0, dtype=torch.long)
        self.appearances = torch.zeros(0, dtype=torch.long)
        self.last_score = torch.zeros(0, dtype=torch.float32)
        self.seconds = {"record": 0.0, "audit": 0.0, "summary": 0.0}  # totals since construction
        self._telemetry_s = 0.0  # record + summary time in the current step window
        self._reset_step_window()
        self._reset_eval_window()

    # ---- per step -------------------------------------------------------------------------------
    def _reset_step_window(self) -> None:
        self._steps = 0
        self._candidates = 0
        self._large_samples = 0
        self._own_picks = 0  # this process's (every process's picks are in _large_samples under distributed="global")
        self._explored = 0
        self._scores: list[np.ndarray] = []
        self._selected_scores: list[np.ndarray] = []
        self._rejected_scores: list[np.ndarray] = []
        self._time: dict[str, float] = {}

    def _reset_eval_window(self) -> None:
        self._audits: list[dict[str, float]] = []
        self._groups: dict[str, list[torch.Tensor]] = {}  # key -> [selected counts, candidate counts]
        self._pending_groups: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def record_step(
        self, candidate_batch: Any, selected: SelectedBatch, seconds: dict[str, float] | None = None, steps: int = 1
    ) -> None:
        """Record one step's selection. Cheap (tens of microseconds): it stores the scores and
        counts; means, quantiles and histograms are computed when :meth:`step_metrics` is called.
        ``seconds``: the loop's time split of this step, e.g. ``{"large": ..., "select": ...}``;
        ``steps``: how many training steps the selection was for (a plan's, summed in ``seconds``)."""
        start = time.perf_counter()
        scores = selected.scores.detach().cpu().numpy()
        # Every process's picks under distributed="global", where the scores are every process's candidates'.
        indices = (selected.indices if selected.global_indices is None else selected.global_indices).cpu()
        chosen = np.zeros(scores.shape[0], dtype=bool)
        chosen[indices.numpy()] = True
        self._scores.append(scores[:_MAX_SCORES_PER_STEP].copy())
        self._selected_scores.append(scores[chosen][:_MAX_SCORES_PER_STEP])
        self._rejected_scores.append(scores[~chosen][:_MAX_SCORES_PER_STEP])
        self._steps += steps
        self._candidates += selected.candidate_batch_size
        self._large_samples += indices.numel()
        self._own_picks += selected.k
        self._explored += int(selected.explored.sum())
        for key, value in (seconds or {}).items():
            self._time[key] = self._time.get(key, 0.0) + value
        if selected.ids is not None:
            self._count_ids(selected.ids.cpu().long(), indices, selected.scores)
        if isinstance(candidate_batch, Mapping) and isinstance(selected.batch, Mapping):
            # The trained samples come from the selected batch itself: with distributed="global" the
            # indices point into all processes' candidates, not into this process's candidate batch.
            for key in self.group_keys:
                values, picked = candidate_batch.get(key), selected.batch.get(key)
                if _is_category(values) and _is_category(picked):
                    self._pending_groups.setdefault(key, []).append((picked.cpu(), values.cpu()))
        elapsed = time.perf_counter() - start
        self.seconds["record"] += elapsed
        self._telemetry_s += elapsed

    def _count_ids(self, ids: torch.Tensor, indices: torch.Tensor, scores: torch.Tensor) -> None:
        if ids.numel() == 0:
            return
        low, high = ids.aminmax()
        if int(low) < 0:
            raise ValueError("selection telemetry needs non-negative integer sample ids")
        needed = int(high) + 1
        if needed > self.picks.numel():
            grow = max(needed, 2 * self.picks.numel()) - self.picks.numel()
            self.picks = torch.cat([self.picks, torch.zeros(grow, dtype=torch.long)])
            self.appearances = torch.cat([self.appearances, torch.zeros(grow, dtype=torch.long)])
            self.last_score = torch.cat([self.last_score, torch.zeros(grow)])
        ones = torch.ones(ids.numel(), dtype=torch.long)
        self.appearances.index_add_(0, ids, ones)
        self.picks.index_add_(0, ids[indices], ones[: indices.numel()])
        self.last_score[ids] = scores.detach().float().cpu()

    def _fold_groups(self) -> None:
        """Turn the stored per-step category values into counts (done at summary time, not per step)."""
        for key, pending in self._pending_groups.items():
            selected_values = torch.cat([p[0] for p in pending]).long()
            candidate_values = torch.cat([p[1] for p in pending]).long()
            if candidate_values.numel() == 0:
                continue
            low, high = candidate_values.aminmax()
            if int(low) < 0 or int(high) >= _MAX_GROUPS:
                continue
            counts = self._groups.setdefault(key, [torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)])
            for slot, values in ((0, selected_values), (1, candidate_values)):
                counts[slot] = _add_padded(counts[slot], torch.bincount(values, minlength=int(high) + 1))
        self._pending_groups = {}

    def tables_due(self, step: int, final: bool = False) -> bool:
        """Whether example tables are due at this (evaluation) step; marks them done if so.

        Tables written only because the run ends (``final``) do not move the schedule, so a run
        stopped early and resumed writes its periodic tables where an uninterrupted run does."""
        periodic = step > 0 and self.table_every > 0 and step - self._last_table_step >= self.table_every
        if periodic:
            self._last_table_step = step
        return periodic or (final and step > 0)

    @property
    def oracle(self) -> str:
        """The audit's oracle policy for the selector's policy now (it follows a ``switch_to``)."""
        return oracle_policy_name(self.selector.policy.name, self.selector.reference is not None, self.audit_oracle)

    def audit_due(self, step: int, steps: int = 1) -> bool:
        """Whether a selection for training steps ``step .. step + steps - 1`` (a plan's) is audited: one of
        them is a multiple of ``audit_every``."""
        return bool(self.audit_every) and (step + steps - 1) // self.audit_every > (step - 1) // self.audit_every

    def audit(self, candidate_batch: Any, selected: SelectedBatch) -> dict[str, float]:
        """Compare the selector's ranking with the oracle's on a random sample of the candidates.

        Call it after :meth:`OnlineSelector.select` and before the large model's update, so the oracle
        sees the model the scores were made for. Costs one large forward on ``audit_size`` samples.
        Returns ``{}`` (and records nothing) when the whole candidate batch was selected.
        """
        if self.large_loss_fn is None:
            raise ValueError("audit() needs large_loss_fn")
        start = time.perf_counter()
        n = selected.candidate_batch_size
        if selected.k >= n:
            return {}  # nothing was rejected (e.g. the uniform baseline loads only k): nothing to audit
        if batch_size(candidate_batch) != n:
            if not self._warned_global_audit:
                self._warned_global_audit = True
                warnings.warn("audits are skipped with distributed='global': the scores cover every process's "
                              "candidates, and this process holds only its own", stacklevel=2)
            return {}
        m = min(self.audit_size, n)
        rows = torch.randperm(n, generator=self.generator)[:m].sort().values
        with torch.inference_mode():
            exact = self.large_loss_fn(take(candidate_batch, rows))
        exact = exact.detach().float().cpu().reshape(-1)
        if exact.numel() != m:
            raise ValueError(f"large_loss_fn returned {exact.numel()} losses for an audit sample of {m}")
        reference = None if selected.reference_loss is None else selected.reference_loss.detach().float().cpu()[rows]
        oracle, oracle_eligible = _oracle(self.oracle, exact, reference, self.selector.label_floor)
        scores = selected.scores.detach().float().cpu()[rows]
        if selected.eligible is not None:  # the selector never picks the ineligible, whatever their score
            scores = scores.masked_fill(~selected.eligible.cpu()[rows], float("-inf"))
        if oracle_eligible is not None:
            oracle = oracle.masked_fill(~oracle_eligible, float("-inf"))
        k = max(1, min(m, round(selected.k / n * m)))
        result = {
            "precision_at_k": precision_at_k(scores, oracle, k),
            "chance_precision": k / m,
            "spearman_score": spearman(scores, oracle),
        }
        if selected.predicted_loss is not None:
            result["spearman_loss"] = spearman(selected.predicted_loss.detach().float().cpu()[rows], exact)
        if self.noise_key and isinstance(candidate_batch, Mapping) and self.noise_key in candidate_batch:
            noisy = candidate_batch[self.noise_key].cpu()[rows].float()
            result["oracle_noisy_share"] = float(noisy[oracle.topk(k).indices].mean())
            result["selector_noisy_share"] = float(noisy[scores.topk(k).indices].mean())
        result["ms"] = 1000 * (time.perf_counter() - start)
        self._audits.append(result)
        self.seconds["audit"] += time.perf_counter() - start
        return result

    # ---- summaries ------------------------------------------------------------------------------
    def _window_counts(self) -> dict[str, Any]:
        """The step window's counters and time split."""
        return {
            "steps": self._steps,
            "candidates": self._candidates,
            "large_samples": self._large_samples,
            "own_picks": self._own_picks,
            "explored": self._explored,
            "time": dict(self._time),
        }

    def _processes(self) -> ProcessGroup | None:
        """The processes whose records are pooled when summarised: under ``distributed="local"`` each records
        only its own candidates and picks (under ``global`` every process already records every process's)."""
        return ProcessGroup.current() if self.pool_processes and self.selector.distributed == "local" else None

    def step_metrics(self) -> dict[str, Any]:
        """Means over the steps since the last call (then the window restarts), with the quantiles of
        selected and rejected scores, and ``selection/score_hist`` (edges and counts; for files).

        With ``pool_processes`` under ``distributed="local"``, every process's window is summed (times are the
        mean over processes): every process must call this at the same step."""
        group = self._processes()
        if not self._steps and group is None:
            return {}
        start = time.perf_counter()
        window = {
            **self._window_counts(),
            "telemetry_s": self._telemetry_s,
            **{side: np.concatenate(parts) if parts else np.zeros(0, np.float32) for side, parts in (
                ("scores", self._scores), ("selected", self._selected_scores), ("rejected", self._rejected_scores))},
        }
        if group is not None:
            window = _merge_step_windows(group.all_gather_objects(window))
        if not window["steps"]:
            return {}
        out: dict[str, Any] = {
            "selection/keep_ratio": window["large_samples"] / max(window["candidates"], 1),
            "selection/explore_share": window["explored"] / max(window["own_picks"], 1),
            "selection/large_samples": float(window["large_samples"]),
        }
        for key, seconds in window["time"].items():
            out[f"time/{key}_ms"] = 1000 * seconds / window["steps"]
        scores, chosen, rejected = (torch.from_numpy(window[side]) for side in ("scores", "selected", "rejected"))
        out.update({f"selection/{k}": v for k, v in score_summary(scores, chosen, rejected).items()})
        histogram = score_histogram(chosen, rejected, self.histogram_bins)
        if histogram is not None:
            out["selection/score_hist"] = histogram
        self._fold_groups()
        out["time/telemetry_ms"] = 1000 * window["telemetry_s"] / window["steps"]
        self._reset_step_window()
        elapsed = time.perf_counter() - start
        self.seconds["summary"] += elapsed
        self._telemetry_s = elapsed  # this summary's cost counts in the next window
        return out

    def eval_metrics(self) -> dict[str, Any]:
        """Audits (means since the last call), selected vs candidate category mix, and coverage.

        With ``pool_processes`` under ``distributed="local"``, every process's audits, category counts and
        picks are pooled: every process must call this at the same step."""
        out: dict[str, Any] = {}
        self._fold_groups()
        audits, groups, picks, appearances = self._audits, self._groups, self.picks, self.appearances
        group = self._processes()
        if group is not None:
            parts = group.all_gather_objects({"audits": audits, "groups": groups, "ids": picks.numel()})
            audits = [audit for part in parts for audit in part["audits"]]
            groups = _sum_groups([part["groups"] for part in parts])
            picks, appearances, _ = self._pooled_counts(group, max(part["ids"] for part in parts))
        if audits:
            keys = {key for audit in audits for key in audit}
            for key in sorted(keys):
                values = [a[key] for a in audits if key in a and not math.isnan(a[key])]
                if values:
                    out[f"audit/{key}"] = sum(values) / len(values)
            out["audit/count"] = float(len(audits))
            out["audit/oracle"] = self.oracle
        for key, (selected_counts, candidate_counts) in groups.items():
            shift = distribution_shift(selected_counts, candidate_counts)
            out[f"selection/{key}_tv"] = shift["tv"]
            out[f"selection/{key}_selected_share"] = [round(v, 5) for v in shift["selected_share"]]
            out[f"selection/{key}_candidate_share"] = [round(v, 5) for v in shift["candidate_share"]]
            if len(shift["selected_share"]) <= _MAX_PER_GROUP_KEYS:
                for c, (s, b) in enumerate(zip(shift["selected_share"], shift["candidate_share"])):
                    out[f"selection/{key}_share/{c}"] = s
                    out[f"selection/{key}_lift/{c}"] = s / b if b else float("nan")
        out.update({f"selection/{k}": v for k, v in coverage_summary(picks, appearances).items()})
        self._reset_eval_window()
        return out

    def _pooled_counts(self, group: ProcessGroup, ids: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Picks and appearances per id summed over the processes, and each id's last score averaged over
        the processes that scored it (``ids``: the longest id range of any process, if known)."""
        if ids is None:
            ids = max(group.all_gather_objects(self.picks.numel()))
        seen = (self.appearances > 0).double()
        rows = torch.zeros(4, ids, dtype=torch.float64)
        for row, values in enumerate((self.picks.double(), self.appearances.double(), self.last_score.double() * seen, seen)):
            rows[row, : values.numel()] = values
        picks, appearances, score_sum, scored = group.all_reduce_sum(rows)
        return picks.long(), appearances.long(), (score_sum / scored.clamp_min(1)).float()

    def example_rows(
        self, n: int = 16, lookup: Callable[[torch.Tensor], dict[str, Any]] | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """The ``n`` most-selected and most-rejected samples with their counts and last scores.

        ``lookup(ids)`` may return a dict of per-sample fields (tensors or lists of length ``len(ids)``):
        an ``example`` field is rendered (images as base64 PNG, anything else as text), other fields
        (label, noisy flag, ...) are copied into the rows.
        """
        picks, appearances, last_score = self.picks, self.appearances, self.last_score
        group = self._processes()
        if group is not None:
            picks, appearances, last_score = self._pooled_counts(group)
        tables: dict[str, list[dict[str, Any]]] = {}
        for name, pick in (("most_selected", most_selected), ("most_rejected", most_rejected)):
            ids = pick(picks, appearances, n)
            extra = (lookup(ids) or {}) if (lookup is not None and ids.numel()) else {}
            rows = []
            for i, sample_id in enumerate(ids.tolist()):
                row: dict[str, Any] = {
                    "id": sample_id,
                    "picks": int(picks[sample_id]),
                    "rejections": int(appearances[sample_id] - picks[sample_id]),
                    "pick_rate": round(float(picks[sample_id]) / max(int(appearances[sample_id]), 1), 4),
                    "last_score": round(float(last_score[sample_id]), 6),
                }
                for key, values in extra.items():
                    value = values[i]
                    if key == "example":
                        row.update(render_example(value))
                    else:
                        row[key] = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
                rows.append(row)
            tables[name] = rows
        return tables

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Per-id counters and the open step and eval windows, so a resumed run logs what an
        uninterrupted one would (tensors, floats and strings only: loadable with weights_only=True)."""
        self._fold_groups()
        self._pending_groups = {}
        return {
            "picks": self.picks.clone(),
            "appearances": self.appearances.clone(),
            "last_score": self.last_score.clone(),
            "generator": self.generator.get_state(),
            "last_table_step": self._last_table_step,
            "step_window": {
                **self._window_counts(),
                "scores": [torch.from_numpy(a.copy()) for a in self._scores],
                "selected_scores": [torch.from_numpy(a.copy()) for a in self._selected_scores],
                "rejected_scores": [torch.from_numpy(a.copy()) for a in self._rejected_scores],
            },
            "eval_window": {
                "audits": [dict(a) for a in self._audits],
                "groups": {key: [c.clone() for c in counts] for key, counts in self._groups.items()},
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.picks = state["picks"].clone()
        self.appearances = state["appearances"].clone()
        self.last_score = state["last_score"].clone()
        self.generator.set_state(state["generator"])
        self._last_table_step = int(state["last_table_step"])
        window = state["step_window"]
        self._steps = int(window["steps"])
        self._candidates = int(window["candidates"])
        self._large_samples = int(window["large_samples"])
        self._own_picks = int(window.get("own_picks", window["large_samples"]))  # states written before it: one process
        self._explored = int(window["explored"])
        self._time = dict(window["time"])
        self._scores = [t.numpy().copy() for t in window["scores"]]
        self._selected_scores = [t.numpy().copy() for t in window["selected_scores"]]
        self._rejected_scores = [t.numpy().copy() for t in window["rejected_scores"]]
        self._audits = [dict(a) for a in state["eval_window"]["audits"]]
        self._groups = {key: [c.clone() for c in counts] for key, counts in state["eval_window"]["groups"].items()}
        self._pending_groups = {}


def _merge_step_windows(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every process's step window as one: counts summed, times averaged over processes, scores joined."""
    merged: dict[str, Any] = {key: sum(w[key] for w in windows) for key in ("candidates", "large_samples", "own_picks", "explored")}
    merged["steps"] = max(w["steps"] for w in windows)
    merged["telemetry_s"] = sum(w["telemetry_s"] for w in windows) / len(windows)
    keys = dict.fromkeys(key for w in windows for key in w["time"])
    merged["time"] = {key: sum(w["time"].get(key, 0.0) for w in windows) / len(windows) for key in keys}
    for side in ("scores", "selected", "rejected"):
        merged[side] = np.concatenate([w[side] for w in windows])
    return merged


def _sum_groups(per_process: list[dict[str, list[torch.Tensor]]]) -> dict[str, list[torch.Tensor]]:
    """Category counts (``key -> [selected, candidates]``) summed over processes, padded to the longest."""
    total: dict[str, list[torch.Tensor]] = {}
    for groups in per_process:
        for key, counts in groups.items():
            slots = total.setdefault(key, [torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)])
            for slot, values in enumerate(counts):
                slots[slot] = _add_padded(slots[slot], values)
    return total


def _add_padded(total: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-category counts added, the shorter vector padded with zeros (categories it has not seen)."""
    summed = torch.zeros(max(total.numel(), counts.numel()), dtype=torch.long)
    summed[: total.numel()] += total
    summed[: counts.numel()] += counts
    return summed


def telemetry_from_config(config: Any, task: Any, selector: OnlineSelector, large_loss_fn: Callable) -> SelectionTelemetry | None:
    """The telemetry a recipe's ``logging`` section asks for (``None`` if ``logging.telemetry`` is off)."""
    log = config.logging
    if not log.telemetry:
        return None
    return SelectionTelemetry(
        selector,
        large_loss_fn=large_loss_fn,
        audit_every=log.audit_every,
        audit_size=log.audit_size,
        audit_oracle=log.audit_oracle,
        group_keys=tuple(key for key in (task.label_key, "source") if key),
        noise_key=task.noise_key,
        histogram_bins=log.histogram_bins,
        table_every=log.table_every,
        seed=config.seed,
        pool_processes=True,
    )


# ---- tracker output --------------------------------------------------------------------------------


def _trackers(accelerator: Any) -> list[Any]:
    return list(getattr(accelerator, "trackers", []) or [])


def log_histograms(accelerator: Any, step: int, histogram: dict[str, list[float]] | None) -> None:
    """Selected/rejected score histograms to W&B (``wandb.Histogram``) and TensorBoard
    (``add_histogram_raw``); other trackers get the quantiles from the scalar lines."""
    if histogram is None:
        return
    edges = histogram["edges"]
    for tracker in _trackers(accelerator):
        if tracker.name == "wandb":
            import numpy as np
            import wandb

            values = {
                f"selection/{side}_scores": wandb.Histogram(np_histogram=(np.asarray(histogram[side]), np.asarray(edges)))
                for side in ("selected", "rejected")
            }
            tracker.log(values, step=step)
        elif tracker.name == "tensorboard":
            writer = tracker.tracker
            for side in ("selected", "rejected"):
                counts = histogram[side]
                total = sum(counts)
                if not total:
                    continue
                centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
                mean = sum(c * w for c, w in zip(centers, counts)) / total
                writer.add_histogram_raw(
                    f"selection/{side}_scores",
                    min=edges[0],
                    max=edges[-1],
                    num=total,
                    sum=mean * total,
                    sum_squares=sum(c * c * w for c, w in zip(centers, counts)),
                    bucket_limits=edges[1:],
                    bucket_counts=counts,
                    global_step=step,
                )


def log_example_tables(
    accelerator: Any, step: int, tables: dict[str, list[dict[str, Any]]], path: str | Path | None = None
) -> None:
    """Most-selected / most-rejected tables: ``wandb.Table`` (images as ``wandb.Image``) to W&B,
    and one JSON line ``{"step": ..., "tables": ...}`` appended to ``path`` for offline reports."""
    if path is not None:
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, "tables": tables}) + "\n")
    for tracker in _trackers(accelerator):
        if tracker.name == "wandb":
            values = wandb_tables(tables)
            if values:
                tracker.log(values, step=step)


def wandb_tables(tables: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``{"selection/<name>": wandb.Table}`` for each non-empty table of :meth:`SelectionTelemetry.example_rows`
    (rendered images as ``wandb.Image``)."""
    import wandb

    values = {}
    for name, rows in tables.items():
        if not rows:
            continue
        columns = list(dict.fromkeys(key for row in rows for key in row))
        data = []
        for row in rows:
            cells = []
            for key in columns:
                value = row.get(key)
                if key == "image" and value is not None:
                    value = wandb.Image(_decode_png(value))
                cells.append(value)
            data.append(cells)
        values[f"selection/{name}"] = wandb.Table(columns=columns, data=data)
    return values


def _decode_png(encoded: str) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(encoded)))
