"""How much of the gap to clean training is the label filter's: uniform and `reference_filter` on clean
and on 30%-noisy labels, an oracle filter that knows which labels were flipped, and oracle hard-mining
(the oracle filter plus the exact `learnability` score: the large model's forward on every candidate,
so the best any scorer of this library could select; steps only, its clock is 5x). One seed each.

For each run: the filter's errors (clean samples it excludes, noisy share of what it keeps, both counted
against the task's true noise flags), the test accuracy, and the steps it takes to reach the best accuracy
of uniform on the noisy labels (how many fewer steps clean data, or a perfect filter, would buy).

Run: python benchmarks/noise_ceiling.py OUT [recipe overrides...]       (markdown on stdout)
A run whose folder already holds a finished run of the same config is read back, not run again.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from levers import RECIPE, run_variant
from oracle_table import oracle_table

from online_select import ReferenceTable
from online_select.bench import Comparison, read_metrics, summarise_run
from online_select.config import load_config
from online_select.tasks import build_task


def filter_errors(folder: Path, overrides: list[str]) -> tuple[float, float]:
    """(% of clean samples excluded, % noisy among the kept) of the reference table a run used."""
    config = load_config(RECIPE, overrides)
    task = build_task(config)
    floor = task.label_floor() if config.selection.label_floor == "auto" else float(config.selection.label_floor)
    path = Path(config.reference.path) if config.reference.kind == "file" else folder / "reference.safetensors"
    return kept_errors(torch.exp(-ReferenceTable.load(path).table) >= floor, task.is_noisy)


def kept_errors(kept: torch.Tensor, noisy: torch.Tensor) -> tuple[float, float]:
    """(% of clean samples not in ``kept``, % noisy among ``kept``): a filter's two errors."""
    clean_excluded = 100 * float((~kept & ~noisy).sum()) / max(int((~noisy).sum()), 1)
    noisy_kept = 100 * float((kept & noisy).sum()) / max(int(kept.sum()), 1)
    return clean_excluded, noisy_kept


def main(out: str, overrides: list[str]) -> None:
    oracle = oracle_table(RECIPE, overrides, Path(out) / "oracle_table.safetensors")
    variants = {
        "uniform, clean labels": ["selection.policy=uniform", "data.label_noise=0"],
        "reference_filter, clean labels": ["selection.policy=reference_filter", "data.label_noise=0"],
        "uniform, 30% noise": ["selection.policy=uniform"],
        "reference_filter (MLP twin halves), 30% noise": ["selection.policy=reference_filter"],
        "oracle filter (true noise flags), 30% noise": [
            "selection.policy=reference_filter", "reference.kind=file", f"reference.path={oracle}"
        ],
        "oracle hard-mining (true noise flags + the large model's exact loss on all candidates), 30% noise": [
            "selection.policy=learnability", "reference.kind=file", f"reference.path={oracle}"
        ],
    }
    comparison = Comparison(smooth=3)
    runs, errors = {}, {}
    for name, extra in variants.items():
        folder = Path(out) / name.split(",")[0].split(" (")[0].replace(" ", "_") / ("clean" if "clean" in name else "noisy")
        run_variant(name, folder, overrides + extra, comparison)
        runs[name] = summarise_run(name, 0, read_metrics(folder / "metrics.jsonl"), comparison)
        errors[name] = ("–", "–")
        if "filter" in name or "oracle" in name:
            errors[name] = tuple(f"{v:.2f}" for v in filter_errors(folder, overrides + extra))
    target = runs["uniform, 30% noise"].best
    print("| run | clean samples excluded % | noisy share of the kept % | best acc % | final acc % "
          f"| steps to {100 * target:.2f}% (uniform's best on noisy labels) |")
    print("|---|---|---|---|---|---|")
    for name, run in runs.items():
        steps, _ = run.first_reaching(target)
        reached = "never" if math.isnan(steps) else f"{steps:.0f}"
        print(f"| {name} | {errors[name][0]} | {errors[name][1]} | {100 * run.best:.2f} | {100 * run.final:.2f} | {reached} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
