"""Finished runs of policies at several budgets, each run with its own schedule over its own
`train.max_steps`, read as `online-select bench --budget` reads its own: the best metric each budget buys,
against uniform at the same budget and against the best of uniform's budgets (the question "how short a
run of this policy matches uniform's best run"), mean ± std over seeds.

For runs made apart from one bench (e.g. by `benchmarks/fashion_mnist.sh`). Each argument names one run
per seed with ``{seed}`` (e.g. ``runs/budget/levers_2000/seed{seed}``); the policy and budget are read from
each run's config, the name from the folder (its whole path where two folders share a name). Every curve
is smoothed over 3 evals first, as the bench does.

Run: python benchmarks/budgets.py --seeds=N [--plot=FILE.png] RUNS [RUNS ...]      (markdown on stdout)
With --plot, also the bench's plot of the same runs (the metric against steps and seconds, mean over seeds).
"""

from __future__ import annotations

import sys
from pathlib import Path

from steps_to_best import comparison_of, summary

from online_select.bench import budget_table, plot_runs, policy_name
from online_select.config import load_config


def main(seeds: int, patterns: list[str], plot: str | None = None) -> None:
    configs = {pattern: load_config(Path(pattern.format(seed=0)) / "config.yaml", []) for pattern in patterns}
    comparison = comparison_of(configs[patterns[0]])
    folders = {pattern: pattern.replace("/seed{seed}", "").rstrip("/") for pattern in patterns}
    labels = {pattern: folder.split("/")[-1] for pattern, folder in folders.items()}
    if len(set(labels.values())) < len(labels):  # two folders of one name: name each run by its whole path
        labels = folders
    runs = {labels[p]: [summary(policy_name(configs[p]), s, p.format(seed=s), comparison) for s in range(seeds)]
            for p in patterns}
    try:
        print(budget_table(runs, {labels[p]: configs[p].train.max_steps for p in patterns}), end="")
    except ValueError as exc:
        sys.exit(f"budgets: {exc}")
    if plot:
        plot_runs(runs, plot, title=f"{len(runs)} runs, {seeds} seed(s) each; shaded: min to max over seeds")


if __name__ == "__main__":
    options = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--") and "=" in a}
    patterns = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--seeds" not in options or set(options) - {"--seeds", "--plot"} or not patterns or any("{seed}" not in p for p in patterns):
        sys.exit(__doc__)
    main(int(options["--seeds"]), patterns, options.get("--plot"))
