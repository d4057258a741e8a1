"""``online-select bench``: policies side by side under one budget, a markdown table and a plot.

For every seed, uniform's best eval accuracy on that seed is the target; each policy's steps and
training seconds to first reach it are compared with uniform's own. Results are reported as
mean ± standard deviation over seeds. With ``smooth=n`` every curve is first replaced by its trailing
rolling mean over n evals, so one lucky evaluation does not set (or meet) the target.
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
from .distributed import is_main_process

__all__ = ["run_bench", "read_metrics", "summarise_run", "RunSummary", "bench_table", "plot_runs"]

METRIC = "eval/accuracy"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Eval lines of a ``metrics.jsonl`` (lines that carry the eval metric), in step order."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return sorted((line for line in lines if METRIC in line), key=lambda line: line["step"])


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

    def first_reaching(self, target: float) -> tuple[float, float]:
        """(step, wall seconds) of the first eval at or above ``target``; NaN if never."""
        for line in self.curve:
            if line[METRIC] >= target - 1e-12:
                return float(line["step"]), float(line["wall_s"])
        return float("nan"), float("nan")


def _mean_of(curve: list[dict], key: str, skip_first: bool = True) -> float:
    values = [line[key] for line in (curve[1:] if skip_first else curve) if key in line and line[key] == line[key]]
    return sum(values) / len(values) if values else float("nan")


def smooth_curve(curve: list[dict[str, Any]], window: int) -> list[dict[str, Any]]:
    """Replace the metric by its trailing rolling mean over ``window`` evals (the first eval, at
    step 0, is left out of the windows of later evals)."""
    if window <= 1:
        return curve
    out = []
    for i, line in enumerate(curve):
        start = max(1 if i else 0, i - window + 1)
        values = [curve[j][METRIC] for j in range(start, i + 1)]
        out.append({**line, METRIC: sum(values) / len(values)})
    return out


def summarise_run(policy: str, seed: int, curve: list[dict[str, Any]], smooth: int = 1) -> RunSummary:
    curve = smooth_curve(curve, smooth)
    best_line = max(curve, key=lambda line: line[METRIC])
    summary = RunSummary(policy=policy, seed=seed, curve=curve, best=best_line[METRIC], best_step=best_line["step"])
    summary.final = curve[-1][METRIC]
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


def bench_table(runs: dict[str, list[RunSummary]]) -> str:
    """A markdown table comparing each policy with uniform, seed by seed."""
    if "uniform" not in runs:
        raise ValueError("bench needs the uniform policy as the baseline: add it to --policies")
    uniform = {r.seed: r for r in runs["uniform"]}
    header = (
        "| policy | steps to uniform's best | speed-up (steps) | seconds to uniform's best | speed-up (time) "
        "| best acc % | final acc % | overhead % of large step | ms/step | noisy share selected (base) | "
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
            f"{_fmt([r.best for r in summaries], 2, 100)} | {_fmt([r.final for r in summaries], 2, 100)} | "
            f"{_fmt([r.overhead_pct for r in summaries], 1)} | {_fmt([r.step_ms for r in summaries], 1)} | "
            f"{noisy} ({base}) | {_fmt([r.spearman for r in summaries], 2)} |"
        )
    return "\n".join(rows) + "\n"


def plot_runs(runs: dict[str, list[RunSummary]], path: str | Path, title: str = "") -> None:
    """Accuracy vs steps and vs seconds, mean over seeds per policy (shaded: min to max)."""
    from matplotlib.figure import Figure

    # A Figure without pyplot: no global backend switch, so notebooks keep showing their own plots.
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    for policy, summaries in runs.items():
        n = min(len(r.curve) for r in summaries)
        steps = [summaries[0].curve[i]["step"] for i in range(n)]
        acc = [[100 * r.curve[i][METRIC] for r in summaries] for i in range(n)]
        secs = [statistics.fmean(r.curve[i]["wall_s"] for r in summaries) for i in range(n)]
        mean = [statistics.fmean(a) for a in acc]
        lo, hi = [min(a) for a in acc], [max(a) for a in acc]
        for ax, x in ((axes[0], steps), (axes[1], secs)):
            (line,) = ax.plot(x, mean, label=policy)
            if len(summaries) > 1:
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    for ax, xlabel in ((axes[0], "large-model steps"), (axes[1], "training seconds (selection included)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
        all_means = [100 * line[METRIC] for rs in runs.values() for r in rs for line in r.curve[1:]]
        if all_means:
            ax.set_ylim(max(min(all_means), max(all_means) - 15), max(all_means) + 0.5)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _run_one(
    config: Config, policy: str, seed: int, out: Path, overrides: dict[str, Any], smooth: int = 1
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
    return summarise_run(policy, seed, read_metrics(out / "metrics.jsonl"), smooth)


def run_bench(
    config: Config,
    policies: list[str],
    seeds: int = 1,
    out_dir: str | Path | None = None,
    sweep_ratios: list[int] | None = None,
    smooth: int = 1,
) -> dict[str, list[RunSummary]]:
    """Run every policy for every seed (in that order, seeds outermost), then write the reports."""
    if "uniform" not in policies:
        raise ValueError("bench needs the uniform policy as the baseline: add it to --policies")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    out = Path(out_dir) if out_dir else Path(config.output_dir) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[RunSummary]] = {p: [] for p in policies}
    for seed in range(seeds):
        for policy in policies:
            if is_main_process():
                print(f"bench: {policy} seed {seed}", flush=True)
            runs[policy].append(_run_one(config, policy, seed, out / policy / f"seed{seed}", {}, smooth))
    table = bench_table(runs)
    k = config.selection.keep
    heading = (
        f"Recipe task={config.task}, label_noise={config.data.label_noise}, B={config.selection.candidate_batch_size}, "
        f"k={k}, max_steps={config.train.max_steps}, schedule={config.train.schedule}, seeds={seeds}, "
        f"accuracy smoothed over {smooth} eval(s)\n\n"
    )
    report = heading + table
    if sweep_ratios:
        report += "\n" + _sweep(config, policies, seeds, sweep_ratios, runs, out, smooth)
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
    smooth: int,
) -> str:
    """B/k sweep of each non-uniform policy: k fixed, candidate batch B = ratio * k."""
    from .loop import resolve_keep_count

    keep = resolve_keep_count(config.selection.keep, config.selection.candidate_batch_size)
    k = keep if isinstance(keep, int) else max(1, round(keep * config.selection.candidate_batch_size))
    uniform = {r.seed: r for r in runs["uniform"]}
    lines = [
        "| policy | B/k | B | steps to uniform's best | seconds to uniform's best | best acc % | overhead % | ms/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for policy in (p for p in policies if p != "uniform"):
        for ratio in ratios:
            summaries = []
            for seed in range(seeds):
                summaries.append(
                    _run_one(
                        config,
                        policy,
                        seed,
                        out / "sweep" / f"{policy}-r{ratio}" / f"seed{seed}",
                        {"candidate_batch_size": ratio * k, "keep": k},
                        smooth,
                    )
                )
            steps = [r.first_reaching(uniform[r.seed].best)[0] for r in summaries]
            secs = [r.first_reaching(uniform[r.seed].best)[1] for r in summaries]
            lines.append(
                f"| {policy} | {ratio} | {ratio * k} | {_fmt(steps)} | {_fmt(secs, 1)} | "
                f"{_fmt([r.best for r in summaries], 2, 100)} | {_fmt([r.overhead_pct for r in summaries], 1)} | "
                f"{_fmt([r.step_ms for r in summaries], 1)} |"
            )
    return "B/k sweep (k fixed):\n\n" + "\n".join(lines) + "\n"
