"""Refreshing the reference with the large model, over several seeds: uniform, the default policy, and
the default with `reference.refresh_at` (and `selection.reject_after`). Prints the bench tables, what the
refreshes changed (samples re-judged, admitted / rejected and their noisy shares) and what
`reject_after` rejected during training.

Run: python benchmarks/reference_refresh.py OUT SEEDS [--variants=SLUG,...] [recipe overrides...]
(markdown on stdout; a variant's slug is its folder name under OUT, e.g. uniform, predicted_learnability;
all variants when --variants is not given)
A run whose folder already holds a finished run of the same config is read back, not run again.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from levers import DEFAULT, choose, run_variant

from online_select.bench import (
    Comparison,
    _fmt,
    bench_table,
    read_metrics,
    summarise_run,
    targets_table,
    time_split_table,
)

REFRESH = "reference.refresh_at=[0.25,0.5,0.75]"
REJECT = [DEFAULT, "selection.label_floor=0.05", "selection.reject_after=2"]
LEVERS = REJECT + [REFRESH]
VARIANTS: dict[str, list[str]] = {
    "uniform": ["selection.policy=uniform"],
    "predicted_learnability": [DEFAULT],
    "+ refresh at 0.25, 0.5, 0.75": [DEFAULT, REFRESH],
    "+ floor 0.05, reject after 2 visits": REJECT,
    "+ floor 0.05, reject after 2 visits, refresh x3": LEVERS,
    "+ floor 0.05, reject after 2 visits, refresh x3, scorer update every 4": LEVERS + ["scorer.update_every=4"],
    "+ floor 0.05, reject after 2 visits, refresh once at 0.25, scorer update every 4": REJECT + [
        "reference.refresh_at=[0.25]", "scorer.update_every=4"
    ],
    "+ floor 0.05, reject after 2 visits, refresh x3, scorer update every 4, temperature 0.1 to 1": LEVERS + [
        "scorer.update_every=4", "selection.temperature_end=1.0"
    ],
    "+ floor 0.05, reject after 3 visits, refresh x3, scorer update every 4": [
        DEFAULT, "selection.label_floor=0.05", "selection.reject_after=3", REFRESH, "scorer.update_every=4"
    ],
}
REFRESH_KEYS = (
    ("reference/refreshed", "re-judged", 0, 1),
    ("reference/admitted", "admitted", 0, 1),
    ("reference/admitted_noisy_share", "admitted noisy %", 1, 100),
    ("reference/rejected", "rejected", 0, 1),
    ("reference/rejected_noisy_share", "rejected noisy %", 1, 100),
    ("reference/refresh_seconds", "seconds", 1, 1),
)


def refresh_lines(folder: Path) -> list[dict]:
    return read_metrics(folder / "metrics.jsonl", "reference/refreshed")


def refresh_table(folders: dict[str, list[Path]]) -> str:
    """Per variant and refresh step, the mean ± std over seeds of what the refresh changed."""
    rows = ["| variant | step | " + " | ".join(label for _, label, _, _ in REFRESH_KEYS) + " |",
            "|" + "---|" * (len(REFRESH_KEYS) + 2)]
    for name, runs in folders.items():
        per_seed = [refresh_lines(folder) for folder in runs]
        for i, first in enumerate(per_seed[0] if per_seed else []):
            lines = [seed[i] for seed in per_seed if len(seed) > i]
            cells = [_fmt([line.get(key, float("nan")) for line in lines], digits, scale, missing="–")
                     for key, _, digits, scale in REFRESH_KEYS]
            rows.append(f"| {name} | {first['step']} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def rejection_table(folders: dict[str, list[Path]]) -> str:
    """Samples made ineligible by ``selection.reject_after`` over the whole run, and their noisy share."""
    rows = ["| variant | rejected while training | noisy share of them % |", "|---|---|---|"]
    for name, runs in folders.items():
        totals, shares = [], []
        for folder in runs:
            lines = read_metrics(folder / "metrics.jsonl", "selection/rejected")
            rejected = sum(line["selection/rejected"] for line in lines)
            noisy = sum(line["selection/rejected"] * line["selection/rejected_noisy_share"] for line in lines)
            totals.append(rejected)
            shares.append(noisy / rejected if rejected else float("nan"))
        rows.append(f"| {name} | {_fmt(totals)} | {_fmt(shares, 1, 100, missing='–')} |")
    return "\n".join(rows) + "\n"


def slug(name: str) -> str:
    return name.replace("+ ", "").replace(",", "").replace(" ", "_")


def main(out: str, seeds: int, overrides: list[str]) -> None:
    comparison = Comparison(smooth=3)
    runs: dict[str, list] = {}
    folders: dict[str, list[Path]] = {}
    variants, overrides = choose(VARIANTS, overrides, "variants", slug)
    if "uniform" not in variants:
        sys.exit("--variants: list uniform too (the baseline)")
    for name, extra in variants.items():
        for seed in range(seeds):
            folder = Path(out) / slug(name) / f"seed{seed}"
            run_variant(name, folder, overrides + extra + [f"seed={seed}"], comparison)
            runs.setdefault(name, []).append(summarise_run(name, seed, read_metrics(folder / "metrics.jsonl"), comparison))
            folders.setdefault(name, []).append(folder)
    uniform_best = statistics.fmean(r.best for r in runs["uniform"])
    print(f"\n{seeds} seed(s), {' '.join(overrides)}; uniform's best {100 * uniform_best:.2f}% (mean, smoothed over 3 evals)\n")
    print(bench_table(runs))
    print("Per-step time split (ms):\n")
    print(time_split_table(runs))
    print("Steps and seconds to fixed accuracies:\n")
    print(targets_table(runs, [0.87, 0.89, 0.9]))
    print("What each refresh changed (mean ± std over seeds):\n")
    print(refresh_table({name: f for name, f in folders.items() if refresh_lines(f[0])}))
    print("What `selection.reject_after` rejected while training (sum over the run, mean ± std over seeds):\n")
    print(rejection_table({name: f for name, f in folders.items() if any("reject_after" in o for o in variants[name])}))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
