"""Policies at several budgets, each run with its own schedule over its own `train.max_steps`: the best
metric each budget buys, against uniform at the same budget and against the best of uniform's budgets (mean
over seeds; the question "how short a run of this policy matches uniform's best run").

The step of the best eval and the final metric show where a long budget's uniform run peaks and what it
loses after (memorising flipped labels). Each argument names one run per seed with ``{seed}`` (e.g.
``runs/budget/levers_2000/seed{seed}``); the policy and budget are read from each run's config. Every curve
is smoothed over 3 evals first, as the bench does. "vs uniform, same budget" is the mean ± std over seeds of
the paired difference with the uniform run of the same seed and budget (when one is given). Training
seconds: the whole run, reference building and refreshes included, evaluation excluded.

Run: python benchmarks/budgets.py --seeds=N RUNS [RUNS ...]      (markdown on stdout)
"""

from __future__ import annotations

import sys
from pathlib import Path

from steps_to_best import comparison_of, summary

from online_select.bench import RunSummary, _fmt, _ratio
from online_select.config import load_config


def main(seeds: int, patterns: list[str]) -> None:
    configs = {pattern: load_config(Path(pattern.format(seed=0)) / "config.yaml", []) for pattern in patterns}
    comparison = comparison_of(configs[patterns[0]])
    runs: dict[str, list[RunSummary]] = {
        pattern: [summary(pattern, s, pattern.format(seed=s), comparison) for s in range(seeds)] for pattern in patterns
    }
    budget = {pattern: configs[pattern].train.max_steps for pattern in patterns}
    policy = {pattern: configs[pattern].selection.policy for pattern in patterns}
    uniform = {budget[p]: runs[p] for p in patterns if policy[p] == "uniform"}
    if not uniform:
        sys.exit("budgets: give at least one uniform run pattern")
    # The target is uniform's best budget, not its largest: past some budget uniform memorises flipped labels.
    pick = max if comparison.mode == "max" else min
    target = pick(uniform, key=lambda steps: sum(u.best for u in uniform[steps]))
    base = [u.first_reaching(u.best) for u in uniform[target]]
    digits, scale = comparison.digits_scale
    name = comparison.label
    print(
        f"| run | policy | budget (steps) | best {name} | at step | final {name} | vs uniform, same budget | "
        f"training seconds | "
        f"steps to uniform's best (its {target}-step run) | speed-up (steps) | seconds to it | speed-up (time) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for pattern in patterns:
        rows = runs[pattern]
        best = [scale * r.best for r in rows]
        final = [scale * r.final for r in rows]
        same = uniform.get(budget[pattern])
        diff = (
            _fmt([scale * (r.best - u.best) for r, u in zip(rows, same)], digits)
            if same and policy[pattern] != "uniform"
            else "–"
        )
        seconds = _fmt([r.curve[-1]["wall_s"] for r in rows], 1)
        reached = [r.first_reaching(u.best) for r, u in zip(rows, uniform[target])]
        step_ratio = _ratio([b[0] / r[0] for r, b in zip(reached, base)])
        time_ratio = _ratio([b[1] / r[1] for r, b in zip(reached, base)])
        label = pattern.replace("/seed{seed}", "").rstrip("/").split("/")[-1]
        print(
            f"| {label} | {policy[pattern]} | {budget[pattern]} | {_fmt(best, digits)} | "
            f"{_fmt([r.best_step for r in rows], 0)} | {_fmt(final, digits)} | {diff} | {seconds} | "
            f"{_fmt([r[0] for r in reached], 0)} | {step_ratio} | {_fmt([r[1] for r in reached], 1)} | {time_ratio} |"
        )


if __name__ == "__main__":
    seeds = [a for a in sys.argv[1:] if a.startswith("--seeds=")]
    patterns = [a for a in sys.argv[1:] if not a.startswith("--seeds=")]
    if not seeds or not patterns or any("{seed}" not in p for p in patterns):
        sys.exit(__doc__)
    main(int(seeds[0].split("=", 1)[1]), patterns)
