"""Finished runs against a baseline run: best and final accuracy, and the steps and training seconds each
takes to reach the baseline's best, every curve smoothed over 3 evals first (the bench's reading).

For runs made apart from a bench, e.g. one oracle run beside a bench's uniform seed. Compare seconds only
between runs made one after the other on a quiet machine.

Run: python benchmarks/steps_to_best.py BASELINE_RUN RUN [RUN ...]      (markdown on stdout)
     python benchmarks/steps_to_best.py --seeds=N UNIFORM_RUNS RUNS [RUNS ...]
With --seeds, each folder names one run per seed with ``{seed}`` (e.g. ``runs/x/seed{seed}``), the baseline
must be uniform, and the bench's table is printed: mean ± std over seeds 0..N-1, each seed against its own
uniform run.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from online_select.bench import Comparison, RunSummary, bench_table, comparison_for, read_metrics, summarise_run
from online_select.config import Config, load_config


def comparison_of(config: Config) -> Comparison:
    """The bench's reading of the task a run trained (accuracy, or an LM's validation loss), smoothed over 3."""
    return comparison_for(config, None, None, 3)


def summary(name: str, seed: int, folder: str, comparison: Comparison) -> RunSummary:
    return summarise_run(name, seed, read_metrics(Path(folder) / "metrics.jsonl", comparison.metric), comparison)


def main(folders: list[str]) -> None:
    comparison = comparison_of(load_config(Path(folders[0]) / "config.yaml", []))
    runs = [summary(folder, 0, folder, comparison) for folder in folders]
    digits, scale = comparison.digits_scale
    name, target = comparison.label, runs[0].best
    baseline_steps, baseline_secs = runs[0].first_reaching(target)
    unit = "%" if scale == 100 else ""
    print(f"| run | best {name} | final {name} | steps to {scale * target:.{digits}f}{unit} (the baseline's best) "
          "| speed-up (steps) | seconds to it | speed-up (time) |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        steps, secs = run.first_reaching(target)
        if math.isnan(steps):
            reached = "never | – | never | –"
        else:
            reached = f"{steps:.0f} | {baseline_steps / steps:.2f}x | {secs:.1f} | {baseline_secs / secs:.2f}x"
        print(f"| {run.policy} | {scale * run.best:.{digits}f} | {scale * run.final:.{digits}f} | {reached} |")


def main_seeds(seeds: int, patterns: list[str]) -> None:
    baseline = load_config(Path(patterns[0].format(seed=0)) / "config.yaml", [])
    if baseline.selection.policy != "uniform":
        sys.exit(f"--seeds: the baseline {patterns[0]} must be uniform runs, not {baseline.selection.policy}")
    comparison = comparison_of(baseline)
    names = ["uniform"] + patterns[1:]
    runs = {
        name: [summary(name, seed, pattern.format(seed=seed), comparison) for seed in range(seeds)]
        for name, pattern in zip(names, patterns)
    }
    print(bench_table(runs))


if __name__ == "__main__":
    seeds = [a for a in sys.argv[1:] if a.startswith("--seeds=")]
    folders = [a for a in sys.argv[1:] if not a.startswith("--seeds=")]
    if len(folders) < 2:
        sys.exit(__doc__)
    if seeds:
        main_seeds(int(seeds[0].split("=", 1)[1]), folders)
    else:
        main(folders)
