"""Finished runs against a baseline run: best and final accuracy, and the steps and training seconds each
takes to reach the baseline's best, every curve smoothed over 3 evals first (the bench's reading).

For runs made apart from a bench, e.g. one oracle run beside a bench's uniform seed. Compare seconds only
between runs made one after the other on a quiet machine.

Run: python benchmarks/steps_to_best.py BASELINE_RUN RUN [RUN ...]      (markdown on stdout)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from online_select.bench import Comparison, read_metrics, summarise_run


def main(folders: list[str]) -> None:
    comparison = Comparison(smooth=3)
    runs = [summarise_run(folder, 0, read_metrics(Path(folder) / "metrics.jsonl"), comparison) for folder in folders]
    target = runs[0].best
    baseline_steps, baseline_secs = runs[0].first_reaching(target)
    print(f"| run | best acc % | final acc % | steps to {100 * target:.2f}% (the baseline's best) | speed-up (steps) "
          "| seconds to it | speed-up (time) |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        steps, secs = run.first_reaching(target)
        if math.isnan(steps):
            reached = "never | – | never | –"
        else:
            reached = f"{steps:.0f} | {baseline_steps / steps:.2f}x | {secs:.1f} | {baseline_secs / secs:.2f}x"
        print(f"| {run.policy} | {100 * run.best:.2f} | {100 * run.final:.2f} | {reached} |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1:])
