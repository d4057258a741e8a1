"""``online-select bench``: policies side by side under one budget, markdown tables and a plot.

For every seed, uniform's best eval metric on that seed is the target; each policy's steps and
training seconds to first reach it are compared with uniform's own. Results are reported as
mean ± standard deviation over seeds. The metric and its direction come from the task
(``eval/accuracy``, higher is better, by default; ``eval/loss``, lower is better, for language
models) or from ``--metric/--mode``. With ``smooth=n`` every curve is first replaced by its trailing
rolling mean over n evals, so one lucky evaluation does not set (or meet) the target. ``targets``
adds a table of steps and seconds to fixed metric values (e.g. 85%, 87%, 89% accuracy).

With ``budgets`` each policy also runs over budgets of its own (``train.max_steps``, each with its own LR
schedule): the target is then uniform's best *budget* (past some budget uniform memorises flipped labels, so
its longest run need not be its best), and the table says how short a run of each policy reaches it.
With ``learning_rates`` each policy also runs at learning rates of its own, and the target is uniform's best
run over its budgets and learning rates.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import Config, config_from_dict, config_to_dict
from .distributed import is_main_process

__all__ = [
    "Comparison",
    "run_bench",
    "finished_run",
    "read_metrics",
    "smooth_curve",
    "summarise_run",
    "RunSummary",
    "bench_table",
    "targets_table",
    "time_split_table",
    "plot_runs",
    "budget_table",
    "best_budget",
    "parse_budgets",
    "parse_learning_rates",
]

METRIC = "eval/accuracy"


@dataclass(frozen=True)
class Comparison:
    """What runs are compared on: an eval metric, whether higher (``max``) or lower (``min``) is
    better, and the rolling-mean window applied to each curve first."""

    metric: str = METRIC
    mode: str = "max"
    smooth: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be max or min, got {self.mode!r}")
        if self.smooth < 1:
            raise ValueError(f"smooth must be at least 1, got {self.smooth}")

    def reached(self, value: float, target: float) -> bool:
        sign = 1.0 if self.mode == "max" else -1.0
        return sign * (value - target) >= -1e-12

    @property
    def label(self) -> str:
        """Column label, decimals and scale for tables: accuracy in %, anything else as logged."""
        return "acc %" if self.metric == METRIC else self.metric.split("/")[-1]

    @property
    def digits_scale(self) -> tuple[int, float]:
        return (2, 100.0) if self.metric == METRIC else (4, 1.0)


def read_metrics(path: str | Path, metric: str = METRIC) -> list[dict[str, Any]]:
    """Eval lines of a ``metrics.jsonl`` (lines that carry ``metric``), in step order."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return sorted((line for line in lines if metric in line), key=lambda line: line["step"])


def _eval_curve(path: Path, metric: str) -> list[dict[str, Any]]:
    """:func:`read_metrics`; a run whose evals never log ``metric`` (a typo in ``--metric``) is a ValueError that
    names the eval metrics they do log."""
    curve = read_metrics(path, metric)
    if not curve:
        logged = sorted({key for line in read_metrics(path, "step") for key in line if key.startswith("eval/")})
        raise ValueError(f"{path} has no eval line with the metric {metric!r}; its evals log {', '.join(logged) or 'nothing'}")
    return curve


def smooth_curve(curve: list[dict[str, Any]], window: int, metric: str = METRIC) -> list[dict[str, Any]]:
    """Replace ``metric`` by its trailing rolling mean over ``window`` evals (the first eval, at
    step 0, is left out of the windows of later evals)."""
    if window <= 1:
        return curve
    out = []
    for i, line in enumerate(curve):
        start = max(1 if i else 0, i - window + 1)
        values = [curve[j][metric] for j in range(start, i + 1)]
        out.append({**line, metric: sum(values) / len(values)})
    return out


@dataclass
class RunSummary:
    policy: str
    seed: int
    curve: list[dict[str, Any]]
    comparison: Comparison = field(default_factory=Comparison)
    best: float = float("nan")
    best_step: int = 0
    final: float = float("nan")
    overhead_pct: float = float("nan")
    noisy_share: float = float("nan")
    base_noisy_share: float = float("nan")
    spearman: float = float("nan")
    reference_s: float = 0.0
    step_ms: float = float("nan")

    def first_reaching(self, target: float) -> tuple[float, float]:
        """(step, wall seconds) of the first eval at or beyond ``target``; NaN if never."""
        for line in self.curve:
            if self.comparison.reached(line[self.comparison.metric], target):
                return float(line["step"]), float(line["wall_s"])
        return float("nan"), float("nan")


def _mean_of(curve: list[dict], key: str, skip_first: bool = True) -> float:
    values = [line[key] for line in (curve[1:] if skip_first else curve) if key in line and line[key] == line[key]]
    return sum(values) / len(values) if values else float("nan")


def summarise_run(
    policy: str, seed: int, curve: list[dict[str, Any]], comparison: Comparison | None = None
) -> RunSummary:
    comparison = comparison or Comparison()
    metric = comparison.metric
    curve = smooth_curve(curve, comparison.smooth, metric)
    pick = max if comparison.mode == "max" else min
    best_line = pick(curve, key=lambda line: line[metric])
    summary = RunSummary(policy, seed, curve, comparison, best=best_line[metric], best_step=best_line["step"])
    summary.final = curve[-1][metric]
    summary.overhead_pct = _mean_of(curve, "time/overhead_pct")
    summary.spearman = _mean_of(curve[len(curve) // 2 :], "selection/spearman_explore", skip_first=False)
    selected = [line for line in curve if "selection/noisy_share" in line]
    if selected:
        summary.noisy_share = statistics.fmean(line["selection/noisy_share"] for line in selected)
        summary.base_noisy_share = statistics.fmean(line["selection/base_noisy_share"] for line in selected)
    summary.reference_s = float(curve[-1].get("reference_seconds", 0.0))
    last = curve[-1]
    if last["step"]:
        summary.step_ms = 1000 * last["wall_s"] / last["step"]
    return summary


def _fmt(values: list[float], digits: int = 0, scale: float = 1.0, missing: str = "never") -> str:
    finite = [v * scale for v in values if v == v and not math.isinf(v)]
    if not finite:
        return missing
    mean = statistics.fmean(finite)
    text = f"{mean:.{digits}f}"
    if len(finite) > 1:
        text += f" ± {statistics.stdev(finite):.{digits}f}"
    if len(finite) < len(values):
        text += f" ({len(finite)}/{len(values)} reached)"
    return text


def _ratio(values: list[float]) -> str:
    """Speed-ups (uniform's steps or seconds over the policy's) over the seeds that got there; '–' if none.

    How many seeds got there is the steps cell's to say, so it is not repeated here.
    """
    finite = [v for v in values if v == v and not math.isinf(v)]
    return _fmt(finite, 2) + "x" if finite else "–"


def _speedups(run: RunSummary, baseline: RunSummary, target: float) -> tuple[float, float, float, float]:
    """(steps, seconds, step speed-up, time speed-up) of ``run`` to ``target`` vs ``baseline``."""
    steps, secs = run.first_reaching(target)
    base_steps, base_secs = baseline.first_reaching(target)
    step_ratio = base_steps / steps if steps == steps and steps > 0 else float("nan")
    time_ratio = base_secs / secs if secs == secs and secs > 0 else float("nan")
    return steps, secs, step_ratio, time_ratio


def bench_table(runs: dict[str, list[RunSummary]]) -> str:
    """A markdown table comparing each policy with uniform, seed by seed."""
    if "uniform" not in runs:
        raise ValueError("bench needs the uniform policy as the baseline: add it to --policies")
    uniform = {r.seed: r for r in runs["uniform"]}
    comparison = runs["uniform"][0].comparison
    digits, scale = comparison.digits_scale
    name = comparison.label
    header = (
        "| policy | steps to uniform's best | speed-up (steps) | seconds to uniform's best | speed-up (time) "
        f"| best {name} | final {name} | overhead % of large step | ms/step | noisy share selected (base) | "
        "Spearman (explore) |\n" + "|" + "---|" * 11
    )
    rows = [header]
    for policy, summaries in runs.items():
        steps, secs, step_ratio, time_ratio = zip(
            *(_speedups(run, uniform[run.seed], uniform[run.seed].best) for run in summaries)
        )
        noisy = _fmt([r.noisy_share for r in summaries], 1, 100, missing="–")
        spearman = _fmt([r.spearman for r in summaries], 2, missing="–")
        base = _fmt([r.base_noisy_share for r in summaries], 1, 100, missing="–")
        rows.append(
            f"| {policy} | {_fmt(list(steps))} | {_ratio(list(step_ratio))} | {_fmt(list(secs), 1)} | "
            f"{_ratio(list(time_ratio))} | {_fmt([r.best for r in summaries], digits, scale)} | "
            f"{_fmt([r.final for r in summaries], digits, scale)} | "
            f"{_fmt([r.overhead_pct for r in summaries], 1, missing='–')} | "
            f"{_fmt([r.step_ms for r in summaries], 1, missing='–')} | {noisy} ({base}) | {spearman} |"
        )
    return "\n".join(rows) + "\n"


TIME_PARTS = (("load", "loading"), ("select", "scoring B candidates"), ("large", "large step on k"),
              ("observe", "scorer update + bookkeeping"))


def time_split_table(runs: dict[str, list[RunSummary]]) -> str:
    """Mean milliseconds per step of each part of a step (from the runs' ``time/*_ms``), and the selection
    overhead (scoring + scorer update) as % of the large model's step."""
    header = "| policy | " + " | ".join(f"{label} ms" for _, label in TIME_PARTS) + " | overhead % of large step |"
    rows = [header, "|" + "---|" * (len(TIME_PARTS) + 2)]
    for policy, summaries in runs.items():
        parts = [_fmt([_mean_of(r.curve, f"time/{part}_ms") for r in summaries], 2, missing="–") for part, _ in TIME_PARTS]
        rows.append(f"| {policy} | " + " | ".join(parts) + f" | {_fmt([r.overhead_pct for r in summaries], 1)} |")
    return "\n".join(rows) + "\n"


def targets_table(runs: dict[str, list[RunSummary]], targets: list[float], baseline: str = "uniform") -> str:
    """Steps and seconds to fixed metric values, with the speed-up over the ``baseline`` runs (same seeds)."""
    uniform = {r.seed: r for r in runs[baseline]}
    comparison = runs[baseline][0].comparison
    digits, scale = comparison.digits_scale
    header = "| policy | " + " | ".join(
        f"{comparison.label.replace(' %', '')} {round(target * scale, 10):g}: steps (speed-up) / seconds (speed-up)"
        for target in targets
    )
    lines = [header + " |", "|---|" + "---|" * len(targets)]
    for policy, summaries in runs.items():
        cells = []
        for target in targets:
            steps, secs, step_ratio, time_ratio = zip(*(_speedups(r, uniform[r.seed], target) for r in summaries))
            cells.append(f"{_fmt(list(steps))} ({_ratio(list(step_ratio))}) / {_fmt(list(secs), 1)} ({_ratio(list(time_ratio))})")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _per_policy(specs: list[str], policies: list[str], what: str, unit: str, convert) -> dict[str, list]:
    """``["POLICY=A,B", ...]`` -> ``{policy: sorted values}``; ``convert`` parses one value (ValueError if bad)."""
    values_of: dict[str, list] = {}
    for spec in specs:
        policy, sep, values = (part.strip() for part in spec.partition("="))
        if not sep or not policy or not values:
            raise ValueError(f"a {what} is POLICY={unit}[,{unit}...], got {spec!r}")
        if policy not in policies:
            raise ValueError(f"{what} {spec!r} names policy {policy!r}, which is not among the policies run ({', '.join(policies)})")
        if policy in values_of:
            raise ValueError(f"policy {policy!r} has two {what} lists; give them in one: {policy}=A,B")
        try:
            parsed = [convert(value) for value in values.split(",")]
        except ValueError as exc:
            raise ValueError(f"{what} {spec!r}: {exc}") from None
        if len(set(parsed)) < len(parsed):
            raise ValueError(f"{what} {spec!r}: the values must be distinct")
        values_of[policy] = sorted(parsed)
    return values_of


def _steps(value: str) -> int:
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError("budgets are whole numbers of steps, at least 1")
    return int(value)


def _learning_rate(value: str) -> float:
    try:
        lr = float(value)
    except ValueError:
        raise ValueError(f"{value.strip()!r} is not a number") from None
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError("learning rates must be positive and finite")
    return lr


def parse_budgets(specs: list[str], policies: list[str]) -> dict[str, list[int]]:
    """``["uniform=4000,8000", "predicted_learnability=3000"]`` -> ``{policy: [steps, ...]}`` (sorted)."""
    return _per_policy(specs, policies, "budget", "STEPS", _steps)


def parse_learning_rates(specs: list[str], policies: list[str]) -> dict[str, list[float]]:
    """``["uniform=0.001,0.0005", "predicted_learnability=0.002"]`` -> ``{policy: [lr, ...]}`` (sorted)."""
    return _per_policy(specs, policies, "learning rate", "LR", _learning_rate)


def best_budget(runs: dict[str, list[RunSummary]]) -> str:
    """The label of uniform's best budget: the uniform runs with the best metric, mean over seeds."""
    uniform = [label for label, summaries in runs.items() if summaries[0].policy == "uniform"]
    if not uniform:
        raise ValueError("budgets: the runs need uniform at one budget at least, the baseline")
    sign = 1.0 if runs[uniform[0]][0].comparison.mode == "max" else -1.0
    return max(uniform, key=lambda label: sign * statistics.fmean(r.best for r in runs[label]))


def budget_table(runs: dict[str, list[RunSummary]], budgets: dict[str, int]) -> str:
    """Every run (a policy over its own budget) against uniform's best budget, seed by seed: its best and
    final metric, its lead over uniform of the same budget, and the steps and training seconds it takes to
    reach the best of uniform's best budget, with the speed-ups over that uniform run's own. Where uniform
    ran one budget at several learning rates, "same budget" is its best of them."""
    target = best_budget(runs)
    base = {r.seed: r for r in runs[target]}
    comparison = runs[target][0].comparison
    uniform_budgets = {budgets[label] for label, rs in runs.items() if rs[0].policy == "uniform"}
    uniform_at = {
        steps: runs[best_budget({label: rs for label, rs in runs.items() if budgets[label] == steps})]
        for steps in uniform_budgets
    }
    digits, scale = comparison.digits_scale
    name = comparison.label
    its_run = f"its {budgets[target]}-step run" if target == f"uniform_{budgets[target]}" else f"its run {target}"
    header = (
        f"| run | policy | budget (steps) | best {name} | at step | final {name} | vs uniform, same budget | "
        f"training seconds | steps to uniform's best ({its_run}) | speed-up (steps) | "
        "seconds to it | speed-up (time) | overhead % of large step | noisy share selected (base) | Spearman (explore) |"
    )
    rows = [header, "|" + "---|" * 15]
    for label, summaries in runs.items():
        steps, secs, step_ratio, time_ratio = zip(
            *(_speedups(run, base[run.seed], base[run.seed].best) for run in summaries)
        )
        same = {r.seed: r for r in uniform_at.get(budgets[label], [])}
        lead = "–"
        if same and summaries[0].policy != "uniform":
            lead = _fmt([r.best - same[r.seed].best for r in summaries], digits, scale)
        rows.append(
            f"| {label} | {summaries[0].policy} | {budgets[label]} | {_fmt([r.best for r in summaries], digits, scale)} | "
            f"{_fmt([r.best_step for r in summaries])} | {_fmt([r.final for r in summaries], digits, scale)} | {lead} | "
            f"{_fmt([r.curve[-1]['wall_s'] for r in summaries], 1)} | {_fmt(list(steps))} | {_ratio(list(step_ratio))} | "
            f"{_fmt(list(secs), 1)} | {_ratio(list(time_ratio))} | {_fmt([r.overhead_pct for r in summaries], 1)} | "
            f"{_fmt([r.noisy_share for r in summaries], 1, 100, '–')} "
            f"({_fmt([r.base_noisy_share for r in summaries], 1, 100, '–')}) | "
            f"{_fmt([r.spearman for r in summaries], 2, missing='–')} |"
        )
    return "\n".join(rows) + "\n"


def plot_runs(runs: dict[str, list[RunSummary]], path: str | Path, title: str = "") -> None:
    """The metric vs steps and vs seconds, mean over seeds per policy (shaded: min to max)."""
    from matplotlib.figure import Figure

    comparison = next(iter(runs.values()))[0].comparison
    _, scale = comparison.digits_scale
    metric = comparison.metric
    # A Figure without pyplot: no global backend switch, so notebooks keep showing their own plots.
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    for policy, summaries in runs.items():
        n = min(len(r.curve) for r in summaries)
        steps = [summaries[0].curve[i]["step"] for i in range(n)]
        values = [[scale * r.curve[i][metric] for r in summaries] for i in range(n)]
        secs = [statistics.fmean(r.curve[i]["wall_s"] for r in summaries) for i in range(n)]
        mean = [statistics.fmean(v) for v in values]
        lo, hi = [min(v) for v in values], [max(v) for v in values]
        for ax, x in ((axes[0], steps), (axes[1], secs)):
            (line,) = ax.plot(x, mean, label=policy)
            if len(summaries) > 1:
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    all_values = [scale * line[metric] for rs in runs.values() for r in rs for line in r.curve[1:]]
    for ax, xlabel in ((axes[0], "large-model steps"), (axes[1], "training seconds (selection included)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"eval {comparison.label}")
        ax.grid(alpha=0.3)
        if all_values and comparison.mode == "max":
            ax.set_ylim(max(min(all_values), max(all_values) - 15), max(all_values) + 0.5)
        elif all_values:
            ax.set_ylim(min(all_values) - 0.05, min(max(all_values), min(all_values) + 3))
    axes[0].legend()
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def finished_run(cfg: Config, out: str | Path, metric: str | None = None) -> bool:
    """Whether ``out`` holds a completed run of exactly ``cfg`` (same resolved config, last eval of
    ``metric``, by default the task's, at max_steps or where the run stopped early)."""
    out = Path(out)
    metric = metric or comparison_for(cfg, None, None, 1).metric
    config_file, metrics_file = out / "config.yaml", out / "metrics.jsonl"
    if not (config_file.is_file() and metrics_file.is_file()):
        return False
    # Read back through the config schema, so a run saved before a setting existed compares at its default.
    if config_to_dict(config_from_dict(yaml.safe_load(config_file.read_text()))) != config_to_dict(cfg):
        return False
    lines = read_metrics(metrics_file, metric)
    return bool(lines) and (lines[-1]["step"] == cfg.train.max_steps or bool(lines[-1].get("train/early_stopped")))


def finished_everywhere(cfg: Config, out: str | Path, metric: str | None = None) -> bool:
    """:func:`finished_run` as every process must see it. Once a process group is up (a bench's runs after the
    first), the main process may already be writing ``out`` for the next run while another still reads it, so
    the main process decides and tells the others. Before that, no process writes before the group's rendezvous,
    so each reads the folder itself."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return finished_run(cfg, out, metric)
    decided = [finished_run(cfg, out, metric) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(decided, src=0)
    return bool(decided[0])


def policy_name(config: Config) -> str:
    """A run's policy as tables name it: ``selection.policy``, and its switch if it has one."""
    sel = config.selection
    return sel.policy if not sel.switch_to else f"{sel.policy} → {sel.switch_to} at {sel.switch_at:g}"


def _run_one(
    config: Config,
    policy: str,
    seed: int,
    out: Path,
    overrides: dict[str, Any],
    comparison: Comparison,
    reuse: bool = False,
    max_steps: int | None = None,
    evals_per_run: int | None = None,
    lr: float | None = None,
) -> RunSummary:
    from .loop import train

    cfg = copy.deepcopy(config)
    cfg.selection.policy = policy
    if policy != config.selection.policy:  # a recipe's policy switch belongs to its own policy
        cfg.selection.switch_to, cfg.selection.switch_at = "", 0
    cfg.seed = config.seed + seed
    cfg.output_dir = str(out)
    cfg.train.resume = ""
    cfg.train.progress = False
    if max_steps is not None:
        cfg.train.max_steps = max_steps
    if lr is not None:
        cfg.train.lr = lr
    if evals_per_run:
        cfg.train.eval_every = max(1, cfg.train.max_steps // evals_per_run)
    for key, value in overrides.items():
        setattr(cfg.selection, key, value)
    if reuse and finished_everywhere(cfg, out, comparison.metric):
        if is_main_process():
            print(f"bench: reusing the finished run in {out}", flush=True)
    else:
        train(cfg)
    return summarise_run(policy_name(cfg), seed, _eval_curve(out / "metrics.jsonl", comparison.metric), comparison)


def comparison_for(config: Config, metric: str | None, mode: str | None, smooth: int) -> Comparison:
    """The task's metric and direction (see ``register_task``) unless ``metric``/``mode`` say otherwise;
    a loss or perplexity is better when lower unless told otherwise."""
    from .tasks import task_metric

    task_default = task_metric(config.task)
    if metric in (None, task_default[0]):
        return Comparison(task_default[0], mode or task_default[1], smooth)
    return Comparison(metric, mode or ("min" if "loss" in metric or "perplexity" in metric else "max"), smooth)


def run_bench(
    config: Config,
    policies: list[str],
    seeds: int = 1,
    out_dir: str | Path | None = None,
    sweep_ratios: list[int] | None = None,
    smooth: int = 1,
    metric: str | None = None,
    mode: str | None = None,
    targets: list[float] | None = None,
    reuse: bool = False,
    budgets: dict[str, list[int]] | None = None,
    evals_per_run: int | None = None,
    learning_rates: dict[str, list[float]] | None = None,
) -> dict[str, list[RunSummary]]:
    """Run every policy for every seed (in that order, seeds outermost), then write the reports. With
    ``reuse``, a run whose folder already holds a finished run of the same resolved config is read back,
    not run again (an interrupted bench continues; tables can be rewritten).

    ``budgets`` maps a policy to the ``train.max_steps`` it runs over, each run with its own schedule
    (policies not named run over the recipe's); the runs are then named ``POLICY_STEPS`` and compared with
    uniform's best budget (:func:`budget_table`). ``learning_rates`` maps a policy to the ``train.lr`` values
    it runs with (the recipe's for policies not named), so each policy is read at its own best learning rate:
    the runs are named ``POLICY_STEPS_lrLR`` and uniform's best run over its budgets and learning rates is the
    baseline. ``evals_per_run`` sets ``train.eval_every`` to ``max_steps // evals_per_run`` in every run, so
    runs of different budgets are read at the same resolution of their schedules.
    """
    comparison = comparison_for(config, metric, mode, smooth)
    if "uniform" not in policies:
        raise ValueError("bench needs the uniform policy as the baseline: add it to --policies")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    if evals_per_run is not None and evals_per_run < 1:
        raise ValueError(f"--evals-per-run must be at least 1, got {evals_per_run}")
    if (budgets or learning_rates) and sweep_ratios:
        raise ValueError("--budget and --lr cannot be combined with --sweep: run the sweep at one budget and learning rate")
    for name, given in (("budgets", budgets), ("learning rates", learning_rates)):
        unknown = sorted(set(given or {}) - set(policies))
        if unknown:
            raise ValueError(f"{name} given for {', '.join(unknown)}, not among the policies run ({', '.join(policies)})")
    per_run = bool(budgets or learning_rates)
    steps_of = {p: (budgets or {}).get(p, [config.train.max_steps]) for p in policies}
    lrs_of = {p: (learning_rates or {}).get(p, [None]) for p in policies}

    def label_of(policy: str, steps: int, lr: float | None) -> str:
        if not per_run:
            return policy
        return f"{policy}_{steps}" + ("" if lr is None else f"_lr{lr:g}")

    grid = [(p, steps, lr) for p in policies for steps in steps_of[p] for lr in lrs_of[p]]
    out = Path(out_dir) if out_dir else Path(config.output_dir) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[RunSummary]] = {label_of(*run): [] for run in grid}
    budget_of = {label_of(*run): run[1] for run in grid}
    for seed in range(seeds):
        for policy, steps, lr in grid:
            label = label_of(policy, steps, lr)
            if is_main_process():
                print(f"bench: {label} seed {seed}", flush=True)
            runs[label].append(
                _run_one(config, policy, seed, out / label / f"seed{seed}", {}, comparison, reuse, steps, evals_per_run, lr)
            )
    sel = config.selection
    noise = f", label_noise={config.data.label_noise}" if comparison.metric == METRIC else ""
    if budgets:
        steps_text = "budgets " + "; ".join(f"{p} {', '.join(map(str, steps_of[p]))}" for p in policies)
        steps_text += " steps (each run its own schedule)"
    else:
        steps_text = f"max_steps={config.train.max_steps}"
    if learning_rates:
        steps_text += ", learning rates " + "; ".join(
            f"{p} {', '.join(f'{lr:g}' for lr in lrs_of[p]) if lrs_of[p] != [None] else f'{config.train.lr:g}'}"
            for p in policies
        )
    evals = f", {evals_per_run} evals per run" if evals_per_run else ""
    heading = (
        f"Recipe task={config.task}{noise}, B={sel.candidate_batch_size}, k={sel.keep}, "
        f"{steps_text}{evals}, schedule={config.train.schedule}, seeds={seeds}; "
        f"{comparison.metric} ({'higher' if comparison.mode == 'max' else 'lower'} is better), "
        f"smoothed over {comparison.smooth} eval(s): best, final and the steps to each target are read from the "
        "smoothed curve (`online-select report` shows the raw evals)\n\n"
    )
    baseline = best_budget(runs) if per_run else "uniform"
    report = heading + (budget_table(runs, budget_of) if per_run else bench_table(runs))
    report += "\nPer-step time split (mean over evals and seeds):\n\n" + time_split_table(runs)
    if targets:
        report += "\nSteps and seconds to fixed targets (mean ± std over seeds; speed-up vs " + baseline + "):\n\n"
        report += targets_table(runs, targets, baseline)
    if sweep_ratios:
        report += "\n" + _sweep(config, policies, seeds, sweep_ratios, runs, out, comparison, reuse, evals_per_run)
    if not is_main_process():  # under accelerate launch / torchrun every process ran; one reports
        return runs
    (out / "bench.md").write_text(report)
    (out / "bench.json").write_text(
        json.dumps({p: [r.__dict__ for r in rs] for p, rs in runs.items()}, default=str, indent=1)
    )
    plot_runs(runs, out / "bench.png", title=heading.strip())
    print(report)
    print(f"bench: wrote {out / 'bench.md'} and {out / 'bench.png'}")
    return runs


def _sweep(
    config: Config,
    policies: list[str],
    seeds: int,
    ratios: list[int],
    runs: dict[str, list[RunSummary]],
    out: Path,
    comparison: Comparison,
    reuse: bool = False,
    evals_per_run: int | None = None,
) -> str:
    """B/k sweep of each non-uniform policy: k fixed, candidate batch B = ratio * k."""
    from .loop import resolve_keep_count

    keep = resolve_keep_count(config.selection.keep, config.selection.candidate_batch_size)
    k = keep if isinstance(keep, int) else max(1, round(keep * config.selection.candidate_batch_size))
    uniform = {r.seed: r for r in runs["uniform"]}
    digits, scale = comparison.digits_scale
    lines = [
        f"| policy | B/k | B | steps to uniform's best | seconds to uniform's best | best {comparison.label} "
        "| overhead % | ms/step | select + scorer update ms/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for policy in (p for p in policies if p != "uniform"):
        for ratio in ratios:
            summaries = [
                _run_one(
                    config,
                    policy,
                    seed,
                    out / "sweep" / f"{policy}-r{ratio}" / f"seed{seed}",
                    {"candidate_batch_size": ratio * k, "keep": k},
                    comparison,
                    reuse,
                    evals_per_run=evals_per_run,
                )
                for seed in range(seeds)
            ]
            steps = [r.first_reaching(uniform[r.seed].best)[0] for r in summaries]
            secs = [r.first_reaching(uniform[r.seed].best)[1] for r in summaries]
            selection_ms = [
                _mean_of(r.curve, "time/select_ms") + _mean_of(r.curve, "time/observe_ms") for r in summaries
            ]
            lines.append(
                f"| {policy} | {ratio} | {ratio * k} | {_fmt(steps)} | {_fmt(secs, 1)} | "
                f"{_fmt([r.best for r in summaries], digits, scale)} | {_fmt([r.overhead_pct for r in summaries], 1)} | "
                f"{_fmt([r.step_ms for r in summaries], 1)} | {_fmt(selection_ms, 2)} |"
            )
    return "B/k sweep (k fixed):\n\n" + "\n".join(lines) + "\n"
