"""`SelectiveTrainer`: a drop-in `transformers.Trainer` that trains on the selected part of each batch.

``per_device_train_batch_size`` is the candidate batch B; the model trains on the k samples the
:class:`~online_select.OnlineSelector` picks from it. One optimizer step per candidate batch, so
``max_steps``, epochs, LR schedulers and warm-up mean what they mean with ``Trainer``. The
selection of a whole gradient-accumulation window happens before its first forward, so Trainer's
``num_items_in_batch`` counts exactly the selected items (tokens for causal LMs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..batch import BatchError, batch_size, concat
from ..checkpoint import CheckpointError, write_loadable
from ..distributed import ProcessGroup, field_specs
from ..policies import get_policy
from ..reference import Reference
from ..scorer import Scorer
from ..selector import OnlineSelector, SelectedBatch
from ..telemetry import SelectionTelemetry, log_example_tables, wandb_tables
from .losses import SampleLosses, causal_lm_labels, loss_for_model
from ..losses import finite_gradients
from .tokens import TokenSelection, kept_token_count, select_tokens

__all__ = ["SelectiveTrainer", "SELECTOR_STATE_NAME"]

logger = logging.getLogger(__name__)

SELECTOR_STATE_NAME = "selector_state.pt"
WORLD_SIZE_KEY = "trainer/world_size"
SKIPPED_UPDATES_KEY = "trainer/skipped_updates"
TELEMETRY_KEY = "trainer/telemetry"
SELECTION_TABLES_NAME = "selection_tables.jsonl"


class SelectiveTrainer(Trainer):
    """``transformers.Trainer`` with online in-batch selection.

    Takes every ``Trainer`` argument unchanged, plus:

    Args:
        keep: k as a count or a ratio of the candidate batch; setting it turns selection on. With no
            ``keep`` and no ``selector`` the trainer behaves exactly like ``Trainer``.
        policy: a policy name (see :data:`online_select.POLICIES`); default
            ``"predicted_learnability"`` when a ``reference`` is given, else ``"predicted_loss"``.
        scorer: the co-trained :class:`~online_select.Scorer` (default ``Scorer()`` when the policy
            needs one).
        reference: a :class:`~online_select.Reference` (e.g. a ``ReferenceTable`` of precomputed
            losses per sample id, see :func:`online_select.hf.reference_table`).
        explore: fraction of k picked uniformly at random.
        selection_options: further :class:`~online_select.OnlineSelector` keyword arguments
            (``rule``, ``temperature``, ``label_floor``, ``warmup_steps``, ``on_nonfinite``...).
        selector: a ready :class:`~online_select.OnlineSelector` instead of the arguments above.
        per_sample_loss: ``"causal_lm"``, ``"sequence_classification"``, a function
            ``(model, batch) -> [B]`` or ``None`` to detect it from the model class.
        token_selection: a :class:`~online_select.hf.TokenSelection` for Rho-1-style token-level
            selection within the selected sequences (causal LMs).
        id_column: the dataset column with stable sample ids (see :func:`online_select.hf.add_ids`);
            kept by ``remove_unused_columns`` and never passed to the model.
        selection_columns: more columns the selector or scorer needs, kept and not passed to the model.
        plan_steps: score this many candidate batches (selector steps: one per micro-batch) in one pass
            and let the selector learn once from all their picks (:meth:`OnlineSelector.select_plan`):
            fewer, larger scoring passes where selection's per-step cost shows (a short large step).
            A plan's batches need one candidate count (an epoch's short last batch starts a plan of its
            own) and, if the selector reads the candidates themselves (a scorer or reference model, the
            large model's losses), one shape, since they are then joined: pad to a fixed length. Scoring
            by id (the loss memory, a ``ReferenceTable``) never joins them (:meth:`OnlineSelector.select_steps`).
            A checkpoint or the end of training inside a plan ends it early
            (:meth:`OnlineSelector.end_plan`) and its unused candidates are planned again, so a resumed
            run repeats the uninterrupted one.
        telemetry: what was selected and why, added to the training log lines (``True``, the default),
            ``False`` for none, or :class:`~online_select.telemetry.SelectionTelemetry` keyword arguments
            (e.g. ``{"audit_every": 50}`` for audits against the large model's exact loss). Score
            histograms go to W&B when its callback runs; the most-selected and most-rejected samples
            are written to ``output_dir/selection_tables.jsonl`` at the end of training.
    """

    def __init__(
        self,
        *args: Any,
        keep: int | float | None = None,
        policy: str | None = None,
        scorer: Scorer | None = None,
        reference: Reference | None = None,
        explore: float = 0.125,
        selection_options: Mapping[str, Any] | None = None,
        selector: OnlineSelector | None = None,
        per_sample_loss: str | Callable | None = None,
        token_selection: TokenSelection | None = None,
        id_column: str = "id",
        selection_columns: Iterable[str] = (),
        plan_steps: int = 1,
        telemetry: bool | Mapping[str, Any] = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.id_column = id_column
        self.selection_columns = tuple(dict.fromkeys([id_column, *selection_columns]))
        self.token_selection = token_selection
        self.selector = self._build_selector(selector, keep, policy, scorer, reference, explore, selection_options or {})
        self._selecting = self.selector is not None or token_selection is not None
        self._pending: deque[SelectedBatch | None] = deque()
        self.plan_steps = plan_steps
        self._planned: deque[tuple[Any, SelectedBatch]] = deque()  # (candidate batch, its planned part) not yet trained
        self._unplanned: list[Any] = []  # candidate batches fetched but not planned yet
        self._plan_source: Any = None  # the epoch iterator they came from
        self._warned_shapes = False
        self._token_counts = [0, 0]  # kept and real target tokens since the last log line
        self.skipped_updates = 0  # micro-steps whose skipped NaN/inf losses left non-finite gradients
        # Trainer reads loss_is_scaled_for_ga from transformers 5.19 on; before, it divides by the accumulation
        # steps exactly when num_items_in_batch is None, which is when compute_loss below does not scale.
        self._user_ga_scaling = getattr(self, "loss_is_scaled_for_ga", None)
        self._per_sample = loss_for_model(self.model, per_sample_loss) if self._selecting else None
        if token_selection is not None and getattr(self._per_sample, "kind", None) != "causal_lm":
            raise ValueError("token_selection needs a causal LM (per_sample_loss='causal_lm')")
        if self._selecting and self.args.n_gpu > 1:
            raise ValueError(
                "SelectiveTrainer does not support torch DataParallel (several GPUs in one process); "
                "launch one process per GPU with `accelerate launch` or `torchrun`"
            )
        if self._selecting and self.compute_loss_func is not None:
            raise ValueError("compute_loss_func cannot be combined with selection: pass per_sample_loss= instead")
        if self._selecting and self.args.label_smoothing_factor:
            raise ValueError(
                "label_smoothing_factor is not applied by the per-sample losses selection trains on; pass a "
                "per_sample_loss= that smooths (e.g. F.cross_entropy(..., label_smoothing=0.1, reduction='none'))"
            )
        if self.selector is not None and self.selector.loss_discount:
            raise ValueError(
                "loss_discount is not supported by SelectiveTrainer (it weights the loss OnlineSelector.observe "
                "returns, which the trainer does not use); it applies in the ready loop and your own loop"
            )
        self._check_plan_steps()
        self._check_id_column()
        self.telemetry = self._build_telemetry(telemetry)
        self._telemetry_steps = 0  # selector steps recorded: the audit schedule's clock
        self._warned_audit_shapes = False

    def _check_id_column(self) -> None:
        """Sample ids are integer positions: a dataset's own text ids (e.g. SQuAD's hashes) are named up front, not
        left to fail in a collator."""
        features = getattr(self.train_dataset, "features", None)
        if self.selector is None or not features or self.id_column not in features:
            return
        dtype = getattr(features[self.id_column], "dtype", None)
        if dtype is not None and not str(dtype).startswith(("int", "uint")):
            raise ValueError(
                f"the dataset's {self.id_column!r} column holds {dtype} values, but sample ids are integer positions: "
                f"add them with online_select.hf.add_ids(dataset, column='sample_id') and pass id_column='sample_id'"
            )

    def _check_plan_steps(self) -> None:
        steps = self.plan_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"plan_steps must be a whole number >= 1, got {steps!r}")
        if steps == 1:
            return
        if self.selector is None:
            raise ValueError("plan_steps > 1 plans selection: it needs keep= (or selector=)")
        if self.args.world_size > 1 and self.selector.distributed != "local":
            raise ValueError(
                f"plan_steps > 1 across processes needs distributed='local' selection (got {self.selector.distributed!r}); "
                "pass selection_options={'distributed': 'local'} or plan_steps=1"
            )

    # ---- construction -------------------------------------------------------------------------

    def _build_selector(
        self,
        selector: OnlineSelector | None,
        keep: int | float | None,
        policy: str | None,
        scorer: Scorer | None,
        reference: Reference | None,
        explore: float,
        options: Mapping[str, Any],
    ) -> OnlineSelector | None:
        if selector is not None:
            given = {"keep": keep, "policy": policy, "scorer": scorer, "reference": reference}
            clash = [name for name, value in given.items() if value is not None] + list(options)
            if clash:
                raise ValueError(f"pass either selector= or the selection settings, not both (got {', '.join(clash)})")
            return selector
        if keep is None:
            if policy is not None or scorer is not None or reference is not None:
                raise ValueError("selection needs keep= (k as a count, or a ratio of the candidate batch)")
            return None
        name = policy or ("predicted_learnability" if reference is not None else "predicted_loss")
        resolved = get_policy(name)
        policies = [resolved] + ([get_policy(options["switch_to"])] if options.get("switch_to") is not None else [])
        if any(p.needs_scorer for p in policies) and scorer is None:
            scorer = Scorer()
        options = dict(options)
        if "label_floor" not in options and any(p.needs_reference for p in policies):
            num_labels = getattr(getattr(self.model, "config", None), "num_labels", 0)
            is_classifier = type(self.model).__name__.endswith("ForSequenceClassification")
            options["label_floor"] = 1.0 / num_labels if is_classifier and num_labels > 1 else 0.0
        options.setdefault("seed", self.args.seed)  # per process in local mode: the selector offsets its stream by rank
        return OnlineSelector(
            resolved,
            keep,
            scorer=scorer,
            reference=reference,
            large_loss_fn=self._large_loss,
            explore=explore,
            **options,
        )

    def _build_telemetry(self, telemetry: bool | Mapping[str, Any]) -> SelectionTelemetry | None:
        if isinstance(telemetry, bool):
            options: dict[str, Any] = {}
            if not telemetry:
                return None
        elif isinstance(telemetry, Mapping):
            options = dict(telemetry)
        else:
            raise TypeError(f"telemetry must be True, False or a dict of SelectionTelemetry arguments, got {telemetry!r}")
        if self.selector is None:
            if options:
                raise ValueError("telemetry settings describe a selection: they need keep= (or selector=)")
            return None
        if "large_loss_fn" in options or "selector" in options:
            raise ValueError("telemetry= takes SelectionTelemetry's settings; the trainer supplies its selector and its model's loss")
        options.setdefault("group_keys", ("labels", "source"))
        options.setdefault("seed", self.args.seed)
        options.setdefault("pool_processes", True)  # Trainer calls log() on every process
        return SelectionTelemetry(self.selector, large_loss_fn=self._large_loss, **options)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        # Only while selecting: without selection this is Trainer, and e.g. a text `id` column must go as there.
        if self._signature_columns is not None and self._selecting:
            self._signature_columns += [c for c in self.selection_columns if c not in self._signature_columns]

    def _strip(self, inputs: Mapping) -> Mapping:
        """The batch without the selection-only columns (ids etc.), as the model must see it."""
        if not any(c in inputs for c in self.selection_columns):
            return inputs
        kept = {k: v for k, v in inputs.items() if k not in self.selection_columns}
        try:
            return type(inputs)(kept)
        except TypeError:
            return kept

    @torch.no_grad()
    def _large_loss(self, batch: Mapping) -> torch.Tensor:
        """The large model's per-sample losses on a candidate batch (for policies that need them)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self._per_sample.parts(self.model, self._strip(self._prepare_inputs(batch))).mean
        finally:
            self.model.train(was_training)

    # ---- selection inside Trainer's loop --------------------------------------------------------

    def _select(self, batch: Mapping) -> SelectedBatch | None:
        if self.selector is None:
            return None
        with self._keep_at_most(batch_size(batch)):
            selected = self.selector.select(batch, ids=self._ids_of(batch))
        self._record(batch, selected, 1)
        return selected

    def _record(self, candidates: Any, selected: SelectedBatch, steps: int, auditable: bool = True) -> None:
        """Telemetry of one selection (a plan's whole, for ``steps`` steps): audited first if one is due, since
        the audit's oracle is the large model before these candidates' update."""
        if self.telemetry is None:
            return
        first = self._telemetry_steps + 1
        self._telemetry_steps += steps
        if auditable and self.telemetry.audit_due(first, steps):
            self.telemetry.audit(candidates, selected)
        self.telemetry.record_step(candidates, selected, steps=steps)

    def _record_plan(self, batches: list, parts: list[SelectedBatch]) -> None:
        """Telemetry of a plan over several candidate batches, recorded once as its whole selection."""
        if self.telemetry is None:
            return
        keys = [*self.telemetry.group_keys, *([self.telemetry.noise_key] if self.telemetry.noise_key else [])]
        tallied = [
            key for key in keys
            if all(isinstance(b, Mapping) and isinstance(b.get(key), torch.Tensor) and b[key].ndim == 1 for b in batches)
        ]
        whole = dataclasses.replace(
            parts[0].plan.selected, batch={key: torch.cat([part.batch[key] for part in parts]) for key in tallied}
        )
        candidates = None
        if self.telemetry.audit_due(self._telemetry_steps + 1, len(parts)):
            try:
                candidates = concat(batches)
            except BatchError:  # dynamic padding: a plan's batches are not joined when scoring reads only ids
                if not self._warned_audit_shapes:
                    self._warned_audit_shapes = True
                    logger.warning("telemetry audits skip plans whose candidate batches differ in shape (pad to one length)")
        if candidates is None:
            self._record({key: torch.cat([batch[key] for batch in batches]) for key in tallied}, whole, len(parts), False)
        else:
            self._record(candidates, whole, len(parts))

    @contextlib.contextmanager
    def _keep_at_most(self, candidates: int) -> Iterator[None]:
        """A count k larger than a batch (an epoch's short last one, with dataloader_drop_last=False) keeps the
        whole batch, in one process as across processes in ``local`` mode (where the selector caps it itself)."""
        keep = self.selector.keep
        if isinstance(keep, bool) or not isinstance(keep, int) or keep <= candidates or self.args.world_size > 1:
            yield
            return
        self.selector.keep = candidates
        try:
            yield
        finally:
            self.selector.keep = keep

    def _ids_of(self, batch: Mapping) -> Any:
        ids = batch.get(self.id_column) if isinstance(batch, Mapping) else None
        if ids is None and self.selector.needs_ids:
            raise ValueError(
                f"the selector needs sample ids but the batch has no {self.id_column!r} column; add stable ids "
                "to the dataset with online_select.hf.add_ids(dataset) (or set id_column=)"
            )
        return ids

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """Fetch a gradient-accumulation window of candidate batches and select within each one,
        so that ``num_items_in_batch`` counts the selected items only."""
        if not self._selecting:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        if epoch_iterator is not self._plan_source:  # a new epoch: what the last one left is not trained on
            self._let_go_of_plans()
            self._plan_source = epoch_iterator
        candidates, selections = [], []
        for _ in range(num_batches):
            fetched = self._next_selection(epoch_iterator)
            if fetched is None:
                break
            candidates.append(fetched[0])
            selections.append(fetched[1])
        batches = [c if s is None else s.batch for c, s in zip(candidates, selections)]
        self._pending.clear()
        self._pending.extend(selections)
        num_items = self._get_num_items_in_batch(batches, device) if self._items_are_labels(batches) else None
        if num_items is not None and self.token_selection is not None:
            num_items = self._kept_tokens_in_window(batches, device)
        return batches, num_items

    def _items_are_labels(self, batches: list) -> bool:
        """Whether Trainer's count of the window's labels (those not -100) counts the loss's items: next tokens
        of a causal LM, or one label a sample of a single-label classifier. A custom per-sample loss, regression
        and multi-label classification have one item a sample whatever the labels' shape; their loss is then
        the mean over each micro-batch's samples, as Trainer's own is for a model that takes no ``num_items_in_batch``."""
        kind = getattr(self._per_sample, "kind", None)
        if kind == "causal_lm":
            return True
        if kind != "sequence_classification":
            return False
        labels = [batch.get("labels") if isinstance(batch, Mapping) else None for batch in batches]
        return all(
            isinstance(label, torch.Tensor) and label.ndim == 1 and not label.is_floating_point() for label in labels
        )

    def _next_selection(self, epoch_iterator) -> tuple[Any, SelectedBatch | None] | None:
        """The next candidate batch and its selection (a plan's next part); None at the epoch's end."""
        if self.plan_steps == 1:
            try:
                batch = next(epoch_iterator)
            except StopIteration:
                return None
            return batch, self._select(batch)
        if not self._planned:
            self._plan(epoch_iterator)
        return self._planned.popleft() if self._planned else None

    def _plan(self, epoch_iterator) -> None:
        """Fetch up to plan_steps candidate batches and select for all of them in one pass."""
        batches, self._unplanned = self._unplanned, []
        while len(batches) < self.plan_steps:
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batches:
            return
        # A plan's steps need one candidate count (an epoch's last batch may be short) and, when the selector
        # reads the candidates themselves (they are joined), one shape.
        joined = self.selector.reads_candidates
        shapes = [(batch_size(batch), field_specs(batch) if joined else None) for batch in batches]
        steps = next((i for i, shape in enumerate(shapes) if shape != shapes[0]), len(batches))
        if joined and steps < len(batches) and not self._warned_shapes and shapes[steps][1] != shapes[0][1]:
            self._warned_shapes = True
            logger.warning(
                "plan_steps=%d: candidate batches differ in shape past the batch size (dynamic padding?) and this selector "
                "reads the candidates, so plans are cut short where they do; pad every batch to one length "
                "(padding='max_length') to plan over all of them",
                self.plan_steps,
            )
        group = ProcessGroup.current()
        if group is not None:  # every process's plan has the same steps, or their collectives would not pair up
            steps = min(group.all_gather_objects(steps))
        batches, self._unplanned = batches[:steps], batches[steps:]
        if steps == 1:
            self._planned.append((batches[0], self._select(batches[0])))
            return
        ids = [self._ids_of(batch) for batch in batches]
        parts = self.selector.select_steps(batches, ids=None if any(i is None for i in ids) else ids)
        self._record_plan(batches, parts)
        self._planned.extend(zip(batches, parts))

    def _drop_plan(self) -> None:
        """End an open plan early (a checkpoint, the end of an epoch): its untrained candidates are
        planned again, from the next plan on."""
        if self.selector is None or not (self._planned or self._unplanned):
            return
        self.selector.end_plan()
        self._unplanned = [batch for batch, _ in self._planned] + self._unplanned
        self._planned.clear()

    def _let_go_of_plans(self) -> None:
        """Between runs: the selector learns from what a plan trained on, and its other candidates are let go."""
        self._drop_plan()
        self._unplanned, self._plan_source = [], None

    def _token_mask(self, batch: Mapping) -> torch.Tensor:
        labels = causal_lm_labels(batch["input_ids"], batch.get("attention_mask"), batch.get("labels"))
        mask = labels[:, 1:] != -100
        if batch.get("attention_mask") is not None:
            mask = mask & (batch["attention_mask"][:, 1:] != 0)
        return mask

    def _kept_tokens_in_window(self, batches: list, device: torch.device) -> torch.Tensor:
        ts = self.token_selection
        count = torch.tensor(sum(kept_token_count(self._token_mask(b), ts.keep, ts.scope) for b in batches), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count / (self.get_tp_size() * self.get_cp_size() * self.get_sp_size())

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        if not (self._selecting and model.training and self._pending):
            self.loss_is_scaled_for_ga = self._user_ga_scaling
            return super().compute_loss(model, self._strip(inputs), return_outputs, num_items_in_batch)
        selected = self._pending.popleft()
        batch = self._strip(inputs)
        kept_tokens = None
        if self.token_selection is not None:
            token_losses, mask = self._per_sample.token_losses(model, batch)
            full = SampleLosses(token_losses.sum(1), mask.sum(1))
            kept = select_tokens(
                token_losses, mask, self.token_selection.keep,
                self.token_selection.reference_losses(batch), self.token_selection.scope,
            )
            parts = SampleLosses((token_losses * kept).sum(1), kept.sum(1))
            kept_tokens = (int(kept.sum()), int(mask.sum()))
        else:
            full = parts = self._per_sample.parts(model, batch)
        weights = torch.ones_like(parts.sum)
        if selected is not None:
            self.selector.observe(selected, full.mean)  # raises on NaN/inf unless on_nonfinite="skip"
            weights = selected.weights.to(parts.sum.device, parts.sum.dtype)
        finite = torch.isfinite(full.mean)
        total = torch.where(finite, weights * parts.sum, torch.zeros_like(parts.sum)).sum()
        if num_items_in_batch is not None:
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            self.loss_is_scaled_for_ga = True
        else:
            loss = total / torch.where(finite, parts.count, torch.zeros_like(parts.count)).sum().clamp_min(1)
            self.loss_is_scaled_for_ga = False
        if kept_tokens is not None:
            self._token_counts[0] += kept_tokens[0]
            self._token_counts[1] += kept_tokens[1]
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """``Trainer.training_step``; with ``on_nonfinite="skip"``, a micro-step whose skipped NaN/inf losses
        left non-finite gradients drops all gradients (set to None: the optimizer step leaves every weight as it
        is, unless later micro-steps of the accumulation window add finite ones) instead of writing NaN into
        the model."""
        before = self.selector.nonfinite_losses if self.selector is not None else 0
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.selector is not None and self.selector.nonfinite_losses > before and not self._gradients_finite(model):
            model.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            logger.warning(
                "step %d: %d NaN/inf losses left non-finite gradients; their gradients are dropped",
                self.state.global_step, self.selector.nonfinite_losses - before,
            )
        return loss

    def _gradients_finite(self, model) -> bool:
        """Whether every process's gradients are finite. Inside an accumulation window DDP has not reduced them
        yet, so one process's NaN is its own: all processes must drop theirs together, or the window's update
        would keep the others' share of the micro-step it drops. (Every process gets here together: the
        selector's non-finite count comes from every process's losses.)"""
        finite = finite_gradients(model)
        if self.args.world_size == 1:
            return finite
        flags = self.accelerator.gather(torch.tensor([finite], device=self.args.device))
        return bool(flags.all())

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        return super().prediction_step(model, self._strip(inputs), prediction_loss_only, ignore_keys=ignore_keys)

    # ---- logging ----------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log, with the selection statistics added to the training lines."""
        if "loss" in logs and self._selecting:
            if self.selector is not None:
                logs.update(self.selector.stats())
            if self.skipped_updates:
                logs["train/skipped_updates"] = self.skipped_updates
            kept, real = self._token_counts
            if real:
                logs["selection/token_kept_share"] = kept / real
                self._token_counts = [0, 0]
            if self.telemetry is not None:
                metrics = {**self.telemetry.step_metrics(), **self.telemetry.eval_metrics()}
                self._log_score_histograms(metrics.pop("selection/score_hist", None))
                # Trainer keeps its log lines in trainer_state.json: numbers only (the class shares are per class keys)
                logs.update({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        super().log(logs, start_time)

    def _wandb_run(self) -> Any:
        """The W&B run Trainer's ``report_to`` logs to, on the main process; else None."""
        if not self.is_world_process_zero():
            return None
        if not any(type(callback).__name__ == "WandbCallback" for callback in self.callback_handler.callbacks):
            return None
        import wandb

        return wandb.run

    def _log_score_histograms(self, histogram: Mapping[str, list] | None) -> None:
        """Selected and rejected score histograms into the W&B row of the log line that follows."""
        run = None if histogram is None else self._wandb_run()
        if run is None:
            return
        import numpy as np
        import wandb

        edges = np.asarray(histogram["edges"])
        # Not committed: Trainer's W&B callback logs this line's scalars next, into the same row.
        run.log(
            {f"train/selection/{side}_scores": wandb.Histogram(np_histogram=(np.asarray(histogram[side]), edges))
             for side in ("selected", "rejected")},
            commit=False,
        )

    def write_selection_tables(self, rows: int = 16) -> dict[str, list[dict[str, Any]]]:
        """The ``rows`` most-selected and most-rejected samples (ids, picks, rejections, last score, label, text),
        appended to ``output_dir/selection_tables.jsonl`` and logged to W&B when its callback runs."""
        if self.telemetry is None:
            raise ValueError("selection tables need telemetry: construct the trainer with keep= and telemetry on")
        tables = self.telemetry.example_rows(rows, self._example_fields)
        if self.is_world_process_zero():
            os.makedirs(self.args.output_dir, exist_ok=True)
            # The file only: Trainer's trackers are callbacks, not the accelerator's (W&B is logged below).
            log_example_tables(self.accelerator, self.state.global_step, tables,
                               os.path.join(self.args.output_dir, SELECTION_TABLES_NAME))
            run = self._wandb_run()
            if run is not None:
                values = wandb_tables(tables)
                if values:
                    run.log({f"train/{key}": value for key, value in values.items()})
        return tables

    def _example_fields(self, ids: torch.Tensor) -> dict[str, list]:
        """Label and decoded text of training samples by id, when ids are the dataset's row positions
        (as :func:`online_select.hf.add_ids` numbers them); else nothing."""
        dataset = self.train_dataset
        if not hasattr(dataset, "select") or not len(ids) or int(ids.max()) >= len(dataset):
            return {}
        rows = dataset.select(ids.tolist())
        if self.id_column not in rows.column_names or list(rows[self.id_column]) != ids.tolist():
            return {}
        fields: dict[str, list] = {}
        for column in ("label", "labels"):
            if column in rows.column_names and not isinstance(rows[0][column], list):
                fields["label"] = list(rows[column])
                break
        decode = getattr(self.processing_class, "decode", None)
        if decode is not None and "input_ids" in rows.column_names:
            fields["example"] = [decode(tokens, skip_special_tokens=True) for tokens in rows["input_ids"]]
        return fields

    # ---- checkpoints ------------------------------------------------------------------------------

    def _selector_state_file(self, folder: str) -> str:
        if self.args.world_size > 1:
            return os.path.join(folder, f"selector_state_{self.args.process_index}.pt")
        return os.path.join(folder, SELECTOR_STATE_NAME)

    def _save_checkpoint(self, model, trial) -> None:
        if self.selector is not None:
            self._drop_plan()  # the state is saved between plans; a resumed run plans these candidates again
            # Written first and atomically: a checkpoint folder never has a half-written selector state.
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            path = self._selector_state_file(folder)
            tmp = f"{path}.tmp-{os.getpid()}"
            state = self.selector.state_dict()
            state[SKIPPED_UPDATES_KEY] = self.skipped_updates  # the selector's load leaves keys it does not know alone
            if self.telemetry is not None:
                state[TELEMETRY_KEY] = {"counters": self.telemetry.state_dict(), "steps": self._telemetry_steps}
            state[WORLD_SIZE_KEY] = self.args.world_size
            try:
                write_loadable(state, tmp)
            except Exception:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
                raise
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        super()._save_checkpoint(model, trial)

    def load_selector_state(self, checkpoint: str) -> bool:
        """Restore the selector from a checkpoint folder; False if it has no selector state."""
        path = self._selector_state_file(checkpoint)
        if not os.path.isfile(path):
            if glob.glob(os.path.join(glob.escape(checkpoint), "selector_state*.pt")):
                raise CheckpointError(
                    f"{checkpoint} holds the selector states of another number of processes than this run's "
                    f"{self.args.world_size}: resume with the number that wrote it"
                )
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated, corrupt or not weights-only: name the file, not torch's internals
            raise CheckpointError(f"the selector state {path} cannot be read: {error}") from error
        written_by = int(state.pop(WORLD_SIZE_KEY, self.args.world_size))  # absent in checkpoints written before it
        if written_by != self.args.world_size:
            raise CheckpointError(
                f"{path} was written by {written_by} processes but this run has {self.args.world_size}: resume with "
                f"{written_by} (every process keeps its part of the selector's state)"
            )
        self.skipped_updates = int(state.pop(SKIPPED_UPDATES_KEY, 0))  # absent in checkpoints written before it
        telemetry = state.pop(TELEMETRY_KEY, None)  # absent in checkpoints written before it, or without telemetry
        if telemetry is not None and self.telemetry is not None:
            self.telemetry.load_state_dict(telemetry["counters"])
            self._telemetry_steps = int(telemetry["steps"])
        self.selector.load_state_dict(state)
        return True

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint`` also restores the selector's state."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        self._let_go_of_plans()  # an earlier run stopped inside a plan
        if resume_from_checkpoint and self.selector is not None:
            if not self.load_selector_state(str(resume_from_checkpoint)):
                logger.warning(
                    "checkpoint %s has no selector state (saved by a plain Trainer?): selection starts afresh",
                    resume_from_checkpoint,
                )
        result = super().train(
            resume_from_checkpoint=resume_from_checkpoint or None, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
        )
        self._let_go_of_plans()  # max_steps inside a plan
        if self.telemetry is not None:
            self.write_selection_tables()
        return result
