"""Which of the label filter's errors costs the accuracy, and how much is left to the scorer.

The co-trained scorer (the default policy, predicted_learnability) trains behind reference tables that
differ only in which samples pass the label floor (0.05, the noise levers' floor). Each table is built
from the twin-halves reference of the recipe and the task's true noise flags; a sample that passes gets
``p_ref ~ 1``, one that does not ``p_ref = exp(-10)``, so the score ranks the passing samples by the
scorer's predicted loss alone:

- reference: the samples the twin-halves reference passes (it excludes some clean ones, passes some noise);
- its noise leak only: every clean sample, plus the flipped labels the reference passes;
- its clean exclusions only: the clean samples the reference passes, no flipped label;
- oracle: exactly the clean samples.

Beside them, uniform (the baseline) and the default with the twin-halves reference as it is (floor 0.05;
its ``p_ref`` also weighs the score). Prints the bench table (steps and seconds to uniform's best, best
accuracy, noisy share selected; mean ± std over seeds) and each filter's errors against the true noise flags.

Run: python benchmarks/filter_errors.py OUT SEEDS [--tables=SLUG,...] [recipe overrides...]   (markdown on stdout)
(a table's slug is its name with underscores, e.g. clean_exclusions_only, oracle; all four when not given;
uniform and the twin-halves run always run, the tables are built from the latter's reference)
A run whose folder already holds a finished run of the same config is read back, not run again.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from levers import DEFAULT, RECIPE, choose, run_variant
from noise_ceiling import kept_errors

from online_select import ReferenceTable
from online_select.bench import Comparison, _fmt, bench_table, read_metrics, summarise_run
from online_select.config import load_config
from online_select.tasks import build_task

FLOOR = 0.05
PASS_LOSS, EXCLUDE_LOSS = 0.01, 10.0
TABLES = {
    "reference": lambda passes, noisy: passes,
    "noise leak only": lambda passes, noisy: ~noisy | passes,
    "clean exclusions only": lambda passes, noisy: ~noisy & passes,
    "oracle": lambda passes, noisy: ~noisy,
}


def slug(name: str) -> str:
    return name.replace(" ", "_")


def save_table(keep: torch.Tensor, path: Path, fingerprint: dict[str, str]) -> Path:
    """Write the reference table in which exactly ``keep`` passes the floor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ReferenceTable(torch.where(keep, torch.tensor(PASS_LOSS), torch.tensor(EXCLUDE_LOSS))).save(path, fingerprint)
    return path


def main(out: str, seeds: int, overrides: list[str]) -> None:
    tables, overrides = choose(TABLES, overrides, "tables", slug)
    task = build_task(load_config(RECIPE, overrides))
    noisy, fingerprint = task.is_noisy, task.reference_fingerprint()  # the corruption does not depend on the run seed
    comparison = Comparison(smooth=3)
    runs: dict[str, list] = {}
    errors: dict[str, list[tuple[float, float]]] = {}

    def run(name: str, folder: Path, extra: list[str], seed: int) -> None:
        run_variant(name, folder, overrides + extra + [f"seed={seed}"], comparison)
        runs.setdefault(name, []).append(summarise_run(name, seed, read_metrics(folder / "metrics.jsonl"), comparison))

    for seed in range(seeds):
        run("uniform", Path(out) / "uniform" / f"seed{seed}", ["selection.policy=uniform"], seed)
        real = Path(out) / "twin_halves" / f"seed{seed}"
        name = "default, twin-halves reference as it is"
        run(name, real, [DEFAULT, f"selection.label_floor={FLOOR}"], seed)
        passes = torch.exp(-ReferenceTable.load(real / "reference.safetensors").table) >= FLOOR
        errors.setdefault(name, []).append(kept_errors(passes, noisy))
        for table_name, rule in tables.items():
            keep = rule(passes, noisy)
            table = save_table(keep, Path(out) / "tables" / f"{slug(table_name)}_seed{seed}.safetensors", fingerprint)
            name = f"default behind the {table_name} filter"
            run(name, Path(out) / slug(table_name) / f"seed{seed}", [DEFAULT, "reference.kind=file", f"reference.path={table}"], seed)
            errors.setdefault(name, []).append(kept_errors(keep, noisy))

    uniform_best = statistics.fmean(r.best for r in runs["uniform"])
    print(f"\n{seeds} seed(s), {' '.join(overrides)}; uniform's best {100 * uniform_best:.2f}% (mean, smoothed over 3 evals)\n")
    print(bench_table(runs))
    print("The filters' errors, against the true noise flags (mean ± std over seeds):\n")
    print("| run | clean samples excluded % | noisy share of the kept % |")
    print("|---|---|---|")
    for name, pairs in errors.items():
        print(f"| {name} | {_fmt([e[0] for e in pairs], 2)} | {_fmt([e[1] for e in pairs], 2)} |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
