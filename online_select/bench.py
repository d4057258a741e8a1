"""``online-select bench``: policies side by side under one budget, a markdown table and a plot.

For every seed, uniform's best eval metric on that seed is the target; each policy's steps and
training seconds to first reach it are compared with uniform's own. Results are reported as
mean ± standard deviation over seeds. The metric and its direction come from the task
(``eval/accuracy``, max, by default; ``eval/loss``, min, for language models) or ``--metric/--mode``.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config

__all__ = ["run_bench", "read_metrics", "summarise_run", "RunSummary", "bench_table", "plot_runs"]

METRIC = "eval/accuracy"


def read_metrics(path: str | Path, metric: str = METRIC) -> list[dict[str, Any]]:
    """Eval lines of a ``metrics.jsonl`` (lines that carry the eval metric), in step order."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return sorted((line for line in lines if metric in line), key=lambda line: line["step"])


@dataclass
class RunSummary:
    policy: str
    seed: int
    curve: list[dict[str, Any]]
    best: float = float("nan")
    best_step: int = 0
    final: float = float("nan")
    overhead_pct: float = float("nan")
    noisy_share: float = float("nan")
    base_noisy_share: float = float("nan")
    spearman: float = float("nan")
    reference_s: float = 0.0
    step_ms: float = float("nan")
    extra: dict = field(default_factory=dict)
    metric: str = METRIC
    mode: str = "max"  # "max": higher is better; "min": lower is better

    def first_reaching(self, target: float) -> tuple[float, float]:
        """(step, wall seconds) of the first eval at or above ``target``; NaN if never."""
        sign = 1.0 if self.mode == "max" else -1.0
        for line in self.curve:
            if sign * (line[self.metric] - target) >= -1e-12:
                return float(line["step"]), float(line["wall_s"])
        return float("nan"), float("nan")


def _mean_of(curve: list[dict], key: str, skip_first: bool = True) -> float:
    values = [line[key] for line in (curve[1:] if skip_first else curve) if key in line and line[key] == line[key]]
    return sum(values) / len(values) if values else float("nan")


def summarise_run(policy: str, seed: int, curve: list[dict[str, Any]], metric: str = METRIC, mode: str = "max") -> RunSummary:
    pick = max if mode == "max" else min
    best_line = pick(curve, key=lambda line: line[metric])
    summary = RunSummary(policy=policy, seed=seed, curve=curve, best=best_line[metric], best_step=best_line["step"],
                         metric=metric, mode=mode)
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


def _fmt(values: list[float], digits: int = 0, scale: float = 1.0) -> str:
    finite = [v * scale for v in values if v == v and not math.isinf(v)]
    if not finite:
        return "never"
    mean = statistics.fmean(finite)
    text = f"{mean:.{digits}f}"
    if len(finite) > 1:
        text += f" ± {statistics.stdev(finite):.{digits}f}"
    if len(finite) < len(values):
        text += f" ({len(finite)}/{len(values)} reached)"
    return text


def _metric_format(metric: str) -> tuple[str, int, float]:
    """Column name, decimals and scale of a metric (accuracy in %, anything else as logged)."""
    if metric == METRIC:
        return "acc %", 2, 100.0
    return metric.split("/")[-1], 4, 1.0


def bench_table(runs: dict[str, list[RunSummary]]) -> str:
    """A markdown table comparing each policy with uniform, seed by seed."""
    if "uniform" not in runs:
        raise ValueError("bench needs the uniform policy as the baseline: add it to --policies")
    uniform = {r.seed: r for r in runs["uniform"]}
    name, digits, scale = _metric_format(runs["uniform"][0].metric)
    header = (
        "| policy | steps to uniform's best | speed-up (steps) | seconds to uniform's best | speed-up (time) "
        f"| best {name} | final {name} | overhead % of large step | ms/step | noisy share selected (base) | "
        "Spearman (explore) |\n" + "|" + "---|" * 11
    )
    rows = [header]
    for policy, summaries in runs.items():
        steps, secs, step_ratio, time_ratio = [], [], [], []
        for run in summaries:
            target = uniform[run.seed].best
            s, w = run.first_reaching(target)
            us, uw = uniform[run.seed].first_reaching(target)
            steps.append(s)
            secs.append(w)
            step_ratio.append(us / s if s == s and s > 0 else float("nan"))
            time_ratio.append(uw / w if w == w and w > 0 else float("nan"))
        noisy = _fmt([r.noisy_share for r in summaries], 1, 100)
        base = _fmt([r.base_noisy_share for r in summaries], 1, 100)
        rows.append(
            f"| {policy} | {_fmt(steps)} | {_fmt(step_ratio, 2)}x | {_fmt(secs, 1)} | {_fmt(time_ratio, 2)}x | "
            f"{_fmt([r.best for r in summaries], digits, scale)} | {_fmt([r.final for r in summaries], digits, scale)} | "
            f"{_fmt([r.overhead_pct for r in summaries], 1)} | {_fmt([r.step_ms for r in summaries], 1)} | "
            f"{noisy} ({base}) | {_fmt([r.spearman for r in summaries], 2)} |"
        )
    return "\n".join(rows) + "\n"


def plot_runs(runs: dict[str, list[RunSummary]], path: str | Path, title: str = "") -> None:
    """Accuracy vs steps and vs seconds, mean over seeds per policy (shaded: min to max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(runs.values()))[0]
    name, _, scale = _metric_format(first.metric)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for policy, summaries in runs.items():
        n = min(len(r.curve) for r in summaries)
        steps = [summaries[0].curve[i]["step"] for i in range(n)]
        acc = [[scale * r.curve[i][first.metric] for r in summaries] for i in range(n)]
        secs = [statistics.fmean(r.curve[i]["wall_s"] for r in summaries) for i in range(n)]
        mean = [statistics.fmean(a) for a in acc]
        lo, hi = [min(a) for a in acc], [max(a) for a in acc]
        for ax, x in ((axes[0], steps), (axes[1], secs)):
            (line,) = ax.plot(x, mean, label=policy)
            if len(summaries) > 1:
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    for ax, xlabel in ((axes[0], "large-model steps"), (axes[1], "training seconds (selection included)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"eval {name}")
        ax.grid(alpha=0.3)
        all_means = [scale * line[first.metric] for rs in runs.values() for r in rs for line in r.curve[1:]]
        if all_means and first.mode == "max":
            ax.set_ylim(max(min(all_means), max(all_means) - 15), max(all_means) + 0.5)
        elif all_means:
            ax.set_ylim(min(all_means) - 0.05, min(max(all_means), min(all_means) + 3))
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_one(
    config: Config, policy: str, seed: int, out: Path, overrides: dict[str, Any], metric: tuple[str, str] = (METRIC, "max")
) -> RunSummary:
    from .loop import train

    cfg = copy.deepcopy(config)
    cfg.selection.policy = policy
    cfg.seed = config.seed + seed
    cfg.output_dir = str(out)
    cfg.train.resume = ""
    cfg.train.progress = False
    for key, value in overrides.items():
        setattr(cfg.selection, key, value)
    train(cfg)
    return summarise_run(policy, seed, read_metrics(out / "metrics.jsonl", metric[0]), *metric)


def run_bench(
    config: Config,
    policies: list[str],
    seeds: int = 1,
    out_dir: str | Path | None = None,
    sweep_ratios: list[int] | None = None,
    metric: str | None = None,
    mode: str | None = None,
) -> dict[str, list[RunSummary]]:
    """Run every policy for every seed (in that order, seeds outermost), then write the reports.

    ``metric``/``mode`` (``"max"`` or ``"min"``) default to the task's (see ``register_task``).
    """
    from .tasks import task_metric

    task_default = task_metric(config.task)
    if metric in (None, task_default[0]):
        target = (task_default[0], mode or task_default[1])
    else:  # a loss or perplexity is better when lower unless told otherwise
        target = (metric, mode or ("min" if "loss" in metric or "perplexity" in metric else "max"))
    if target[1] not in ("max", "min"):
        raise ValueError(f"--mode must be max or min, got {target[1]!r}")
    if "uniform" not in policies:
        raise ValueError("bench needs the uniform policy as the baseline: add it to --policies")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    out = Path(out_dir) if out_dir else Path(config.output_dir) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[RunSummary]] = {p: [] for p in policies}
    for seed in range(seeds):
        for policy in policies:
            print(f"bench: {policy} seed {seed}", flush=True)
            runs[policy].append(_run_one(config, policy, seed, out / policy / f"seed{seed}", {}, target))
    table = bench_table(runs)
    k = config.selection.keep
    heading = (
        f"Recipe task={config.task}, label_noise={config.data.label_noise}, B={config.selection.candidate_batch_size}, "
        f"k={k}, max_steps={config.train.max_steps}, seeds={seeds}\n\n"
    )
    report = heading + table
    if sweep_ratios:
        report += "\n" + _sweep(config, policies, seeds, sweep_ratios, runs, out, target)
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
    metric: tuple[str, str] = (METRIC, "max"),
) -> str:
    """B/k sweep of each non-uniform policy: k fixed, candidate batch B = ratio * k."""
    from .loop import resolve_keep_count

    keep = resolve_keep_count(config.selection.keep, config.selection.candidate_batch_size)
    k = keep if isinstance(keep, int) else max(1, round(keep * config.selection.candidate_batch_size))
    uniform = {r.seed: r for r in runs["uniform"]}
    name, digits, scale = _metric_format(metric[0])
    lines = [
        f"| policy | B/k | B | steps to uniform's best | seconds to uniform's best | best {name} | overhead % | ms/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for policy in (p for p in policies if p != "uniform"):
        for ratio in ratios:
            summaries = []
            for seed in range(seeds):
                summaries.append(
                    _run_one(config, policy, seed, out / "sweep" / f"{policy}-r{ratio}" / f"seed{seed}",
                             {"candidate_batch_size": ratio * k, "keep": k}, metric)
                )
            steps = [r.first_reaching(uniform[r.seed].best)[0] for r in summaries]
            secs = [r.first_reaching(uniform[r.seed].best)[1] for r in summaries]
            lines.append(
                f"| {policy} | {ratio} | {ratio * k} | {_fmt(steps)} | {_fmt(secs, 1)} | "
                f"{_fmt([r.best for r in summaries], digits, scale)} | {_fmt([r.overhead_pct for r in summaries], 1)} | "
                f"{_fmt([r.step_ms for r in summaries], 1)} |"
            )
    return "B/k sweep (k fixed):\n\n" + "\n".join(lines) + "\n"
