"""The ready training loop on Accelerate, used by the CLI and the recipes.

Writes ``output_dir/config.yaml`` (the resolved recipe), ``output_dir/metrics.jsonl`` (one JSON
object per line: train lines every ``logging.log_every`` steps, eval lines every
``train.eval_every``) and atomic checkpoints under ``output_dir/checkpoints``; logs the same
numbers to Accelerate trackers (W&B offline unless ``logging.wandb_mode=online``).

``wall_s`` counts training time from the start of the run, selection and reference building
included, evaluation and checkpointing excluded. With ``logging.trace=true`` it also writes
``output_dir/selection_trace.jsonl``: every step's selected sample ids, loss weights, exploration
flags and observed losses (all processes' samples; with ``selection.plan_steps > 1`` one line per plan).

Under ``accelerate launch`` or ``torchrun`` every process runs this loop on its own shard of each
candidate batch (``selection.candidate_batch_size`` and ``selection.keep`` are per process); counts
and timings are reduced across processes before logging, and only the main process writes files.
A checkpoint is ``accelerator.save_state`` (model, optimizer, scheduler, per-process RNG) plus the
selector, the data position, the training clock and the tallies since the last eval, so a resumed
run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from .checkpoint import (
    CheckpointError,
    GeneratorState,
    ProcessRNG,
    find_latest_checkpoint,
    list_checkpoints,
    load_accelerator_checkpoint,
    register_state,
    save_accelerator_checkpoint,
    save_checkpoint,
)
from .config import SCHEDULES, Config, ConfigError, best_metric, config_to_dict
from .distributed import ProcessGroup
from .early_stopping import BestMetric
from .losses import finite_gradients
from .policies import fit_label_floor, get_policy
from .reference import ReferenceTable
from .rules import annealed_temperature
from .scorer import Scorer
from .selector import OnlineSelector
from .tasks import Task, build_task
from .telemetry import log_example_tables, log_histograms, telemetry_from_config

__all__ = ["train", "build_selector", "lr_lambda", "resolve_keep_count"]


def lr_lambda(schedule: str, warmup_steps: int, max_steps: int) -> Callable[[int], float]:
    """Multiplier of the base LR at each optimizer step (one step per candidate batch)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown train.schedule {schedule!r}; expected {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def resolve_keep_count(keep: float, candidate_batch_size: int) -> int | float:
    """The recipe's ``selection.keep``: an integral value is a count, a fraction a ratio."""
    if isinstance(keep, int) or (isinstance(keep, float) and keep.is_integer() and keep > 1):
        return int(keep)
    return float(keep)


def _label_floor(setting: Any, task: Task, reference: Any) -> float:
    """The recipe's ``selection.label_floor``: ``auto`` is the task's (1/num_classes), ``fit`` is fitted to the
    reference table's losses (:func:`~online_select.policies.fit_label_floor`), a number is itself."""
    if setting == "auto" or (setting == "fit" and reference is None):  # no reference: no label is judged
        return task.label_floor()
    if setting == "fit":
        if not isinstance(reference, ReferenceTable):
            raise ConfigError(
                "selection.label_floor=fit fits the floor to a reference table's losses: use reference.kind "
                "twin_halves, holdout or file, or a fixed floor"
            )
        return fit_label_floor(reference.table)
    return float(setting)


def build_selector(
    config: Config, task: Task, large_loss_fn: Callable[[Any], torch.Tensor], keep: int | float | None = None
) -> tuple[OnlineSelector, dict]:
    """Build the reference, scorer and selector a recipe asks for. Returns the selector and a report.

    ``keep``: the selector's count or ratio, if not the recipe's ``selection.keep`` (the loop's uniform
    baseline loads only the k samples it trains on, and keeps all k)."""
    sel = config.selection
    policies = [get_policy(name) for name in (sel.policy, sel.switch_to) if name]
    needs_scorer = any(p.needs_scorer for p in policies)
    reference, report = None, {}
    if any(p.needs_reference for p in policies) or (needs_scorer and config.reference.kind != "none"):
        reference, report = task.build_reference(config.seed)
    scorer = None
    if needs_scorer:
        scorer = Scorer(
            task.scorer_model(config.scorer.model),
            lr=config.scorer.lr,
            hidden=config.scorer.hidden,
            objective=config.scorer.objective,
            use_memory=config.scorer.use_memory,
            age_scale=config.scorer.age_scale,
            update_every=config.scorer.update_every,
        )
    label_floor = _label_floor(sel.label_floor, task, reference)
    if sel.label_floor == "fit" and reference is not None:
        report = {**report, "label_floor_fitted": label_floor}
    switch_at = sel.switch_at
    if isinstance(switch_at, float):
        switch_at = max(1, round(switch_at * config.train.max_steps))
    selector = OnlineSelector(
        policies[0],
        resolve_keep_count(sel.keep, sel.candidate_batch_size) if keep is None else keep,
        scorer=scorer,
        reference=reference,
        large_loss_fn=large_loss_fn,
        rule=sel.rule,
        explore=sel.explore,
        temperature=sel.temperature,
        importance_weights=sel.importance_weights,
        label_floor=label_floor,
        warmup_steps=sel.warmup_steps,
        # Rejection reads the scorer's loss memory: policies without a scorer (uniform, reference_filter,
        # the exact scores) have none, so a recipe's reject_after does not apply to them.
        reject_after=sel.reject_after if needs_scorer else 0,
        loss_discount=sel.loss_discount,
        on_nonfinite=sel.on_nonfinite,
        id_key="id",
        seed=config.seed,
        distributed=sel.distributed,
        switch_to=sel.switch_to or None,
        switch_at=switch_at,
    )
    return selector, report


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class _Clock:
    """Training wall-clock that can be paused for evaluation and checkpointing."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.started = time.perf_counter()

    def pause(self) -> None:
        self.offset += time.perf_counter() - self.started

    def resume(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return self.offset + time.perf_counter() - self.started


class _Tally:
    """Counts over the selected samples between two eval lines (this process's share)."""

    TIMES = ("load", "select", "large", "observe")

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.selected = 0
        self.selected_noisy = 0
        self.candidates = 0
        self.candidates_noisy = 0
        self.class_counts = torch.zeros(max(self.num_classes, 1), dtype=torch.long)
        self.time = dict.fromkeys(self.TIMES, 0.0)
        self.steps = 0
        self.rejected = 0
        self.rejected_noisy = 0

    def add(self, candidate: dict | None, selected: dict, noise_key: str | None, label_key: str | None) -> None:
        """Count a step's selected samples, and its candidates unless None (a plan's later steps)."""
        self.selected += len(selected["id"])
        if candidate is not None:
            self.candidates += len(candidate["id"])
        if noise_key and noise_key in selected:
            self.selected_noisy += int(selected[noise_key].sum())
            if candidate is not None:
                self.candidates_noisy += int(candidate[noise_key].sum())
        if label_key and label_key in selected and self.num_classes:
            counts = torch.bincount(selected[label_key].cpu(), minlength=self.num_classes)
            self.class_counts += counts[: self.num_classes]

    def add_rejected(self, rejected_ids: torch.Tensor | None, selected: dict, noise_key: str | None) -> None:
        """Count this process's samples the selector just made ineligible (``reject_after``)."""
        if rejected_ids is None or not rejected_ids.numel():
            return
        mine = torch.isin(selected["id"].cpu(), rejected_ids)
        self.rejected += int(mine.sum())
        if noise_key and noise_key in selected:
            self.rejected_noisy += int(selected[noise_key].cpu()[mine].sum())

    def _vector(self) -> torch.Tensor:
        counts = [self.selected, self.selected_noisy, self.candidates, self.candidates_noisy, self.steps]
        times = [self.time[name] for name in self.TIMES]
        rejected = torch.tensor([self.rejected, self.rejected_noisy], dtype=torch.float64)
        return torch.cat([torch.tensor(counts + times, dtype=torch.float64), self.class_counts.double(), rejected])

    def _from_vector(self, vector: torch.Tensor) -> None:
        values = vector.tolist()
        counts = [int(v) for v in values[:5]]
        self.selected, self.selected_noisy, self.candidates, self.candidates_noisy, self.steps = counts
        self.time = dict(zip(self.TIMES, values[5:9]))
        classes = max(self.num_classes, 1)
        self.class_counts = vector[9 : 9 + classes].round().long()
        # Checkpoints written before the rejection counts existed end with the class counts.
        self.rejected, self.rejected_noisy = (int(v) for v in values[9 + classes :]) if len(values) > 9 + classes else (0, 0)

    def state_dict(self) -> dict:
        return {"vector": self._vector()}

    def load_state_dict(self, state: dict) -> None:
        self._from_vector(state["vector"])

    def summary(self, accelerator: Any) -> dict[str, float]:
        """Counts summed over processes; times are per process (the mean over processes)."""
        total = _Tally(self.num_classes)
        total._from_vector(accelerator.reduce(self._vector().to(accelerator.device), "sum").cpu())
        total.time = {name: seconds / accelerator.num_processes for name, seconds in total.time.items()}
        total.steps //= accelerator.num_processes
        out: dict[str, float] = {}
        if total.selected:
            out["selection/noisy_share"] = total.selected_noisy / total.selected
            out["selection/base_noisy_share"] = total.candidates_noisy / max(total.candidates, 1)
            if total.num_classes:
                share = total.class_counts.float() / total.class_counts.sum().clamp_min(1)
                out["selection/class_share_max"] = float(share.max())
                out["selection/class_share_min"] = float(share.min())
        if total.rejected:
            out["selection/rejected"] = float(total.rejected)
            out["selection/rejected_noisy_share"] = total.rejected_noisy / total.rejected
        if total.steps:
            for name, seconds in total.time.items():
                out[f"time/{name}_ms"] = 1000 * seconds / total.steps
            large = total.time["large"]
            out["time/overhead_pct"] = 100 * (total.time["select"] + total.time["observe"]) / large if large else 0.0
        return out


class _RunState:
    """What the loop itself carries across a resume: the training clock and the tally since the last eval.

    The tally is each process's own, and the main process writes this state for all: so before a checkpoint
    :meth:`gather_tally` sums every process's tally into the one written, and on resume the main process takes
    that sum and the others start from zero; the next eval's sum over processes is then the uninterrupted run's."""

    def __init__(self, clock: _Clock, tally: _Tally, process_index: int = 0, best: BestMetric | None = None) -> None:
        self.clock = clock
        self.tally = tally
        self.process_index = process_index
        self.best = best
        self.skipped_updates = 0
        self._summed_tally: torch.Tensor | None = None

    def gather_tally(self, accelerator: Any) -> None:
        """Sum every process's tally for the next checkpoint (every process calls this)."""
        self._summed_tally = accelerator.reduce(self.tally._vector().to(accelerator.device), "sum").cpu()

    def state_dict(self) -> dict:
        tally = self.tally.state_dict() if self._summed_tally is None else {"vector": self._summed_tally}
        return {"wall_s": self.clock.offset, "tally": tally, "tally_summed": self._summed_tally is not None,
                "skipped_updates": self.skipped_updates, "best": None if self.best is None else self.best.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.clock.offset = float(state["wall_s"])
        if state.get("tally_summed") and self.process_index != 0:
            self.tally.reset()
        else:  # the sum of all processes', or (checkpoints written before the sum) the main process's own
            self.tally.load_state_dict(state["tally"])
        self.skipped_updates = int(state.get("skipped_updates", 0))  # absent in checkpoints written before it
        if self.best is not None and state.get("best") is not None:
            self.best.load_state_dict(state["best"])


def _multi_process_without_accelerator() -> bool:
    """A multi-process launch on a machine with no GPU (or other accelerator): Accelerate sets such a
    run up as multi-process CPU only when told to use the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    accelerator_api = getattr(torch, "accelerator", None)
    return not (accelerator_api.is_available() if accelerator_api is not None else torch.cuda.is_available())


def check_processes_fit_gpus(local_processes: int, gpus: int, cpu: bool) -> None:
    """NCCL needs a GPU of its own for each process on a machine: more processes than GPUs would fail deep
    inside DistributedDataParallel ("Duplicate GPU detected"), so say what to change instead."""
    if cpu or gpus == 0 or local_processes <= gpus:
        return
    raise ValueError(
        f"{local_processes} processes on this machine but {gpus} GPU(s): launch at most {gpus} per machine "
        "(accelerate launch --num_processes / torchrun --nproc_per_node), or set train.cpu=true to run them all "
        "on the CPU"
    )


def _train_loader(task: Task, batch_size: int, seed: int, rank: int, world_size: int) -> Any:
    if world_size == 1:
        return task.train_loader(batch_size, seed)
    params = inspect.signature(task.train_loader).parameters
    if not {"rank", "world_size"} <= set(params):
        raise TypeError(
            f"{type(task).__name__}.train_loader(batch_size, seed) cannot shard data over {world_size} processes: "
            "add rank and world_size parameters and give each process its own shard"
        )
    return task.train_loader(batch_size, seed, rank=rank, world_size=world_size)


def _resume_target(resume: str, ckpt_root: Path) -> Path | None:
    if resume == "auto":
        return find_latest_checkpoint(ckpt_root)
    return Path(resume) if resume else None


def train(config: Config, task: Task | None = None) -> dict[str, Any]:
    """Run a recipe end to end; returns the final eval line.

    Launched with ``accelerate launch`` or ``torchrun``, every process runs it (see the module docs).
    """
    from accelerate import Accelerator
    from accelerate.utils import parse_flag_from_env, set_seed

    out_dir = Path(config.output_dir)
    trackers = [t for t in config.logging.trackers if t and t != "none"]
    if "wandb" in trackers:
        os.environ.setdefault("WANDB_MODE", config.logging.wandb_mode)
        os.environ.setdefault("WANDB_DIR", str(out_dir))
    on_cpu = config.train.cpu or _multi_process_without_accelerator()
    check_processes_fit_gpus(
        int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count(),
        on_cpu or parse_flag_from_env("ACCELERATE_USE_CPU"),
    )
    # One scheduler step per optimizer step on any number of processes (by default Accelerate steps a
    # prepared scheduler once per process, assuming an epoch-based schedule).
    accelerator = Accelerator(
        cpu=on_cpu,
        log_with=trackers or None,
        project_dir=str(out_dir),
        step_scheduler_with_optimizer=False,
        mixed_precision=config.train.mixed_precision or None,
    )
    if config.train.threads:  # after the Accelerator, which sets its own count on multi-process CPU runs
        torch.set_num_threads(config.train.threads)
    group = ProcessGroup.current()
    if (group.world_size if group else 1) != accelerator.num_processes:
        raise RuntimeError(
            f"torch.distributed has {group.world_size if group else 1} process(es) but Accelerate thinks it runs "
            f"{accelerator.num_processes}: start the run with `accelerate launch` or `torchrun`, and create no "
            "Accelerator before the process group is up"
        )
    set_seed(config.seed)
    if config.train.deterministic:
        # cuBLAS reads its workspace setting when it starts, before the model's first matrix product.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)  # an op with no such kernel warns, not fails
        torch.backends.cudnn.benchmark = False
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))

    sel_cfg = config.selection
    uniform = sel_cfg.policy == "uniform"
    keep = resolve_keep_count(sel_cfg.keep, sel_cfg.candidate_batch_size)
    k = keep if isinstance(keep, int) else max(1, round(keep * sel_cfg.candidate_batch_size))
    if k > sel_cfg.candidate_batch_size:
        raise ValueError(f"selection.keep={k} exceeds selection.candidate_batch_size={sel_cfg.candidate_batch_size}")

    plan_steps = 1 if uniform else sel_cfg.plan_steps
    _check_plan(plan_steps, config, int(os.environ.get("WORLD_SIZE", "1")))

    task = task or build_task(config)
    model = task.large_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.train.schedule, config.train.warmup_steps, config.train.max_steps)
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    device = accelerator.device

    def large_loss_fn(candidate: Any) -> torch.Tensor:
        model.eval()
        try:
            return task.loss(model, _to_device(candidate, device))
        finally:
            model.train()

    build_start = time.perf_counter()
    selector, reference_report = build_selector(config, task, large_loss_fn, keep=k if uniform else None)
    build_s = time.perf_counter() - build_start
    if accelerator.is_main_process and isinstance(selector.reference, ReferenceTable) and config.reference.kind != "file":
        # Saved so later runs can reuse it: reference.kind=file reference.path=OUT/reference.safetensors
        selector.reference.save(out_dir / "reference.safetensors", task.reference_fingerprint())
    refresh_steps = _refresh_steps(config, task, selector, k * accelerator.num_processes, plan_steps)
    if config.reference.refresh_at == "auto" and accelerator.is_main_process:
        chosen = f"one refresh, at step {min(refresh_steps)}" if refresh_steps else (
            f"no refresh (it pays on runs of {AUTO_REFRESH_EPOCHS:g}+ epochs with a policy that keeps a loss memory)")
        print(f"reference.refresh_at=auto: {chosen}", file=sys.stderr)
    refresh_batch_size = config.reference.refresh_batch_size or k
    temperature_at = _temperature_schedule(config)
    telemetry = telemetry_from_config(config, task, selector, large_loss_fn)  # None: logging.telemetry=false
    # The uniform baseline loads only the k samples it trains on, as a plain loop would.
    size = k if uniform else sel_cfg.candidate_batch_size * plan_steps
    loader = _train_loader(task, size, config.seed, accelerator.process_index, accelerator.num_processes)

    # The clock starts with the time spent building the reference and scorer (counted as training).
    clock = _Clock(offset=build_s)
    tally = _Tally(task.num_classes)
    best = None
    if config.train.early_stop_patience or config.train.keep_best:
        best = BestMetric(*best_metric(config), config.train.early_stop_patience, config.train.early_stop_min_delta)
    run_state = _RunState(clock, tally, accelerator.process_index, best)
    process_state: dict[str, Any] = {"rng": ProcessRNG(), "selector_generator": GeneratorState(selector.generator)}
    if telemetry is not None:  # each process's own counters: under `local` they are summed when logged
        process_state["telemetry"] = telemetry
    register_state(
        accelerator,
        {"selector": selector, "loader": loader, "run": run_state},
        process_state,
        formerly_shared=("telemetry",),
    )
    start_step = 0
    ckpt_root = out_dir / "checkpoints"
    metrics_path = out_dir / "metrics.jsonl"
    trace_path = out_dir / "selection_trace.jsonl"
    tables_path = out_dir / "selection_tables.jsonl"
    best_root = out_dir / "best"
    resume_from = _resume_target(config.train.resume, ckpt_root)
    if resume_from is not None:
        meta = load_accelerator_checkpoint(accelerator, resume_from)
        saved_mode = meta.get("distributed", sel_cfg.distributed)
        if accelerator.num_processes > 1 and saved_mode != sel_cfg.distributed:
            # local gives every process its own random stream and global one shared stream: the saved streams fit one
            raise CheckpointError(
                f"{resume_from} was written with selection.distributed={saved_mode!r}; resume with the same mode, not "
                f"{sel_cfg.distributed!r} (the processes' random streams depend on it)"
            )
        start_step = int(meta["step"])
        accelerator.print(f"online_select: resumed from {resume_from} (step {start_step})")
        changed = _changed_settings(meta.get("config"), config_to_dict(config))
        if changed and accelerator.is_main_process:
            warnings.warn(
                f"online_select: resumed with settings other than the checkpointed run's ({'; '.join(changed)}): the "
                "model, the optimizer with its learning rate and weight decay, the schedule's position and the "
                "selector continue from the checkpoint",
                stacklevel=2,
            )
    elif config.train.resume == "auto":
        accelerator.print(f"online_select: no complete checkpoint in {ckpt_root}; starting from step 0")
    if accelerator.is_main_process:
        for path in (metrics_path, trace_path, tables_path):
            _truncate_jsonl(path, start_step)
        if start_step == 0:
            _discard_earlier_run(ckpt_root, accelerator)
            # An earlier run's best model. A resume keeps it, even one saved after the checkpoint (the best it
            # tracks may have been pruned in its favour), and replaces it at its next best eval.
            for path in list_checkpoints(best_root):
                shutil.rmtree(path)
    accelerator.wait_for_everyone()
    clock.resume()
    if trackers:
        init_kwargs = {"wandb": {"dir": str(out_dir), "mode": config.logging.wandb_mode}}
        if config.logging.run_name:
            init_kwargs["wandb"]["name"] = config.logging.run_name
        accelerator.init_trackers(config.logging.project, config=_flat(config_to_dict(config)), init_kwargs=init_kwargs)

    last_eval: dict[str, Any] = {}

    def write(line: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(line) + "\n")
        accelerator.log({k: v for k, v in line.items() if isinstance(v, (int, float)) and k != "step"}, step=line["step"])

    def evaluate(step: int) -> dict[str, Any]:
        clock.pause()
        line = {"step": step, "wall_s": round(clock.offset, 4), "samples_seen": selector.samples_seen}
        line.update(task.evaluate(accelerator.unwrap_model(model), device))
        line.update(tally.summary(accelerator))
        line.update(selector.stats())
        line.update({k: v for k, v in reference_report.items()})
        if run_state.skipped_updates:
            line["train/skipped_updates"] = run_state.skipped_updates
        if best is not None:
            track_best(step, line)
        line["sys/peak_rss_mb"] = _peak_rss_mb()
        if telemetry is not None:
            line.update(telemetry.eval_metrics())
            if telemetry.tables_due(step, final=step == config.train.max_steps):
                tables = telemetry.example_rows(config.logging.table_rows, task.examples)
                log_example_tables(accelerator, step, tables, tables_path if accelerator.is_main_process else None)
        write(line)
        tally.reset()
        clock.resume()
        return line

    def track_best(step: int, line: dict[str, Any]) -> None:
        assert best is not None
        if best.metric not in line:
            logged = ", ".join(key for key in line if key.startswith("eval/"))
            raise ConfigError(f"train.best_metric: the evals log {logged}, not {best.metric!r}")
        value = float(line[best.metric])
        if accelerator.num_processes > 1:  # one decision on every process
            value = float(accelerator.reduce(torch.tensor([value], device=device), "mean"))
        if best.update(step, {**line, best.metric: value}) and config.train.keep_best and accelerator.is_main_process:
            state = {"metric": best.metric, "mode": best.mode, "value": value}
            save_checkpoint(best_root, step, state, accelerator.unwrap_model(model).state_dict(), keep=1)
        line["train/best_step"] = best.best_step
        if best.best_value is not None:
            line["train/best_value"] = best.best_value
        line["train/evals_since_best"] = best.evals_since_best
        if best.should_stop:
            line["train/early_stopped"] = 1

    def trace(step: int) -> None:
        if accelerator.is_main_process:
            record = {key: value.tolist() for key, value in selector.last_step.items() if value is not None}
            if plan_steps > 1:  # one line per plan, ending at `step`, its steps' samples in order
                record["plan_steps"] = plan_steps
            with open(trace_path, "a") as f:
                f.write(json.dumps({"step": step, **record}) + "\n")

    def refresh_reference(step: int) -> None:
        start = time.perf_counter()
        ids = task.train_ids[selector.untrained(task.train_ids)]
        losses, noisy = [], []
        with torch.inference_mode():
            for batch in task.batches_by_id(ids, refresh_batch_size):
                losses.append(large_loss_fn(batch).float().cpu())
                if task.noise_key and task.noise_key in batch:
                    noisy.append(batch[task.noise_key].cpu())
        refresh = selector.refresh_reference(ids, torch.cat(losses) if losses else torch.zeros(0))
        report = refresh.metrics(torch.cat(noisy) if noisy and len(noisy) == len(losses) else None)
        report["reference/refresh_seconds"] = time.perf_counter() - start
        write({"step": step, "wall_s": round(clock.elapsed(), 4), **report})
        if accelerator.is_main_process:
            counts = ", ".join(f"{key.split('/')[1]} {value:g}" for key, value in report.items())
            print(f"step {step}: the large model re-judged the samples it has not trained on: {counts}", file=sys.stderr)

    def checkpoint(step: int) -> None:
        clock.pause()
        selector.check_synchronized()
        run_state.gather_tally(accelerator)
        meta = {"distributed": sel_cfg.distributed, "policy": sel_cfg.policy, "config": config_to_dict(config)}
        save_accelerator_checkpoint(accelerator, ckpt_root, step, config.train.keep_checkpoints, meta)
        clock.resume()

    if start_step == 0 and config.train.eval_every:
        last_eval = evaluate(0)
    progress = None
    if config.train.progress and accelerator.is_local_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.train.max_steps, initial=start_step, desc=f"{sel_cfg.policy}", dynamic_ncols=True)
    model.train()
    parts: list = []  # the steps of the current plan not trained yet (selection.plan_steps)
    plan_split: dict[str, float] = {}  # the time split summed over the plan's steps so far
    stopped = best is not None and best.should_stop  # a resumed run that had stopped early
    last_step = start_step if stopped else config.train.max_steps
    if stopped:
        accelerator.print(f"online_select: the run stopped early at step {start_step}; nothing left to train")
    for step in range(start_step + 1, last_step + 1):
        t0 = time.perf_counter()
        plan_start = not parts
        if plan_start:
            candidate = next(loader)
            t1 = time.perf_counter()
            if temperature_at is not None:
                selector.temperature = temperature_at(step)
            parts = selector.select_plan(candidate, plan_steps)
            select_s = time.perf_counter() - t1  # the plan's, counted at its first step
            whole = parts[0].plan.selected if plan_steps > 1 else parts[0]
            if telemetry is not None and telemetry.audit_due(step, plan_steps):
                clock.pause()  # audits are telemetry: excluded from training time
                telemetry.audit(candidate, whole)
                clock.resume()
        else:
            t1, select_s = t0, 0.0
        selected = parts.pop(0)
        t2 = time.perf_counter()
        losses = task.loss(model, _to_device(selected.batch, device))
        nonfinite_before = selector.nonfinite_losses
        loss = selector.observe(selected, losses)
        accelerator.backward(loss)
        # on_nonfinite=skip keeps a NaN/inf loss out of the loss, not its activations' NaN out of the gradients:
        # such a step is not taken (every process alike, the gradients being reduced).
        if selector.nonfinite_losses > nonfinite_before and not finite_gradients(model):
            run_state.skipped_updates += 1
            accelerator.print(
                f"online_select: step {step}: {selector.nonfinite_losses - nonfinite_before} NaN/inf losses left "
                "non-finite gradients; the optimizer step is skipped"
            )
            with warnings.catch_warnings():
                # Skipping the very first step makes torch warn that the schedule's first value is lost: the
                # schedule stays on the step count, as with AMP's skipped steps.
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
                scheduler.step()
        else:
            optimizer.step()
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        observe_s = selected.timings.get("observe_s", 0.0)
        split = {"load": t1 - t0, "select": select_s, "large": (t4 - t2) - observe_s, "observe": observe_s}
        for name, seconds in split.items():
            tally.time[name] += seconds
            plan_split[name] = (0.0 if plan_start else plan_split[name]) + seconds
        tally.steps += 1
        tally.add(candidate if plan_start else None, selected.batch, task.noise_key, task.label_key)
        if not parts:  # the plan's last step: the selector has learnt from all of them
            tally.add_rejected(selector.last_step.get("rejected_ids"), whole.batch, task.noise_key)
            if telemetry is not None:
                telemetry.record_step(candidate, whole, plan_split, plan_steps)
        if step in refresh_steps:
            refresh_reference(step)
        if config.logging.trace and not parts:
            trace(step)
        if progress is not None:
            progress.update(1)
        if config.logging.log_every and step % config.logging.log_every == 0:
            train_loss = accelerator.reduce(loss.detach(), "mean")
            line = {"step": step, "wall_s": round(clock.elapsed(), 4), "train/loss": float(train_loss)}
            line["train/lr"] = scheduler.get_last_lr()[0]
            if run_state.skipped_updates:
                line["train/skipped_updates"] = run_state.skipped_updates
            if temperature_at is not None:
                line["selection/temperature"] = selector.temperature
            line.update(selector.stats())
            if telemetry is not None:
                line.update(telemetry.step_metrics())
                if accelerator.is_main_process:
                    log_histograms(accelerator, step, line.get("selection/score_hist"))
            write(line)
        if config.train.eval_every and (step % config.train.eval_every == 0 or step == config.train.max_steps):
            last_eval = evaluate(step)
            if progress is not None:
                progress.set_postfix(acc=f"{last_eval.get('eval/accuracy', float('nan')):.4f}")
            stopped = best is not None and best.should_stop
        if config.train.checkpoint_every and (
            stopped or step % config.train.checkpoint_every == 0 or step == config.train.max_steps
        ):
            checkpoint(step)
        if stopped:
            assert best is not None
            kept = f"; its model: {best_root / f'step-{best.best_step:08d}'}" if config.train.keep_best else ""
            best_text = "no finite value" if best.best_value is None else f"{best.best_value:.6g} (step {best.best_step})"
            accelerator.print(
                f"online_select: early stop at step {step}: {best.metric} has not improved on {best_text} "
                f"by more than {best.min_delta:g} in {best.patience} evals{kept}"
            )
            break
    if progress is not None:
        progress.close()
    # Trackers end here; the process group stays up for whoever launched this (the CLI ends it), so
    # train() can run again in the same processes (e.g. `online-select bench` under torchrun).
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.wait_for_everyone()
    return last_eval


def _temperature_schedule(config: Config) -> Callable[[int], float] | None:
    """``selection.temperature_end``: the sampling temperature of each step, or None when it is constant."""
    sel = config.selection
    if sel.temperature_end is None:
        return None
    if sel.rule != "sample":
        raise ValueError(f"selection.temperature_end needs selection.rule=sample (got rule={sel.rule!r})")
    max_steps = config.train.max_steps

    def temperature_at(step: int) -> float:
        return annealed_temperature(sel.temperature, sel.temperature_end, (step - 1) / max(1, max_steps - 1))

    temperature_at(1)
    return temperature_at


# reference.refresh_at=auto refreshes once, at this fraction of the run, if the run trains on at least
# AUTO_REFRESH_EPOCHS times the training set: measured on noisy Fashion-MNIST (docs/results_history.md), one
# refresh at 0.25 adds 0.2 point at 4000 steps (4.3 epochs) at the same wall-clock, and costs 20% of the
# clock for no accuracy at 1500 steps (1.6 epochs).
AUTO_REFRESH_AT = 0.25
AUTO_REFRESH_EPOCHS = 3.0


def _check_plan(plan_steps: int, config: Config, world_size: int) -> None:
    """selection.plan_steps: checkpoints and the run's end fall between plans; across processes, local selection."""
    if plan_steps < 1:
        raise ValueError(f"selection.plan_steps must be >= 1, got {plan_steps}")
    if plan_steps == 1:
        return
    if world_size > 1 and config.selection.distributed != "local":
        raise ValueError(
            f"selection.plan_steps > 1 across processes needs selection.distributed=local (got "
            f"{config.selection.distributed!r}); set plan_steps to 1 for global selection"
        )
    for key, steps in (("train.max_steps", config.train.max_steps), ("train.checkpoint_every", config.train.checkpoint_every)):
        if steps % plan_steps:
            raise ValueError(f"{key}={steps} must be a multiple of selection.plan_steps={plan_steps} (checkpoints fall between plans)")


def _refresh_steps(
    config: Config, task: Task, selector: OnlineSelector, samples_per_step: int, plan_steps: int = 1
) -> set[int]:
    """The steps at which the large model re-judges the labels it has not trained on (reference.refresh_at);
    with plans, the end of the plan each falls in (the loss memory knows the plan's samples only then)."""
    fractions = config.reference.refresh_at
    if fractions == "auto":
        fractions = _auto_refresh(config, task, selector, samples_per_step)
    elif isinstance(fractions, str):
        raise ValueError(f"reference.refresh_at must be auto or a list of fractions of train.max_steps, got {fractions!r}")
    if not fractions or selector.reference is None:  # a policy without a reference has nothing to refresh
        return set()
    if config.reference.refresh_batch_size < 0:
        raise ValueError(f"reference.refresh_batch_size must be >= 0 (0: selection.keep), got {config.reference.refresh_batch_size}")
    if any(not isinstance(f, (int, float)) or not 0 < f < 1 for f in fractions):
        raise ValueError(f"reference.refresh_at must list fractions of train.max_steps in (0, 1), got {fractions}")
    missing = _refresh_needs(task, selector)
    if missing:
        raise ValueError(f"reference.refresh_at needs {missing}")
    return {plan_steps * math.ceil(max(1, round(f * config.train.max_steps)) / plan_steps) for f in fractions}


def _refresh_needs(task: Task, selector: OnlineSelector) -> str | None:
    """What this run lacks to refresh the reference (None: nothing)."""
    if task.train_ids is None:
        return f"a task that loads training samples by id; {type(task).__name__} does not"
    if not isinstance(selector.reference, ReferenceTable) or selector.scorer is None or not selector.scorer.use_memory:
        return (
            "a reference table (reference.kind twin_halves, holdout or file) and a policy with a scorer that keeps "
            "the loss memory (e.g. predicted_learnability, scorer.use_memory=true)"
        )
    return None


def _auto_refresh(config: Config, task: Task, selector: OnlineSelector, samples_per_step: int) -> list[float]:
    """reference.refresh_at=auto: one refresh on long runs, where the policy and task support it; none otherwise."""
    if _refresh_needs(task, selector) or config.train.max_steps * samples_per_step < AUTO_REFRESH_EPOCHS * len(task.train_ids):
        return []
    return [AUTO_REFRESH_AT]


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _truncate_jsonl(path: Path, step: int) -> None:
    """On resume keep only lines up to the checkpoint's step (later ones will be written again); on a
    fresh start remove the file. Rewritten atomically; a line torn by a crash mid-write is dropped."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record["step"] <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _discard_earlier_run(ckpt_root: Path, accelerator: Any) -> None:
    """A fresh run in an output_dir that holds checkpoints replaces them (they would mix with its own)."""
    old = list_checkpoints(ckpt_root)
    if old:
        accelerator.print(f"online_select: starting fresh; removing {len(old)} earlier checkpoint(s) in {ckpt_root}")
        for path in old:
            shutil.rmtree(path)


def _changed_settings(saved: dict | None, current: dict) -> list[str]:
    """``key: old -> new`` for each setting that differs from a checkpoint's (where the run writes, where it resumes
    from and whether it shows progress aside); nothing for checkpoints written before their config was saved in them."""
    if saved is None:
        return []
    before, after = _flat(saved), _flat(current)
    return [
        f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key) and key not in ("output_dir", "train.resume", "train.progress")
    ]


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = str(value)
    return out
