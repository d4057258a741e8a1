"""What each lever gives: the recipe run once per variant (a list of overrides), side by side.

Every variant is compared with the first one (the baseline, normally uniform) on steps and training
seconds to the baseline's best accuracy, best accuracy, selection overhead as % of the large step,
the scorer's Spearman on the exploration picks and the noisy share of the selection.

Run: python benchmarks/levers.py OUT [recipe overrides...]        (prints a markdown table)
A variant whose folder already holds a finished run of the same config is read back, not run again.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from online_select.bench import Comparison, RunSummary, _fmt, _mean_of, finished_run, read_metrics, summarise_run
from online_select.config import load_config
from online_select.loop import train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist_noisy.yaml"
DEFAULT = "selection.policy=predicted_learnability"
VARIANTS: dict[str, list[str]] = {
    "uniform": ["selection.policy=uniform"],
    "default (predicted_learnability)": [DEFAULT],
    "scorer update every 4 steps": [DEFAULT, "scorer.update_every=4"],
    "scorer update every 16 steps": [DEFAULT, "scorer.update_every=16"],
    "200 uniform warm-up steps": [DEFAULT, "selection.warmup_steps=200"],
    "exploration 0.25": [DEFAULT, "selection.explore=0.25"],
    "temperature 0.3": [DEFAULT, "selection.temperature=0.3"],
    "temperature 1.0": [DEFAULT, "selection.temperature=1.0"],
    "hard top-k": [DEFAULT, "selection.rule=top_k"],
}

T = TypeVar("T")


def choose(named: dict[str, T], overrides: list[str], flag: str, slug: Callable[[str], str]) -> tuple[dict[str, T], list[str]]:
    """The entries of ``named`` whose slugs ``--FLAG=SLUG,...`` lists (all of them when it is absent) and the
    overrides without that option; exits naming the known slugs if one is unknown."""
    prefix = f"--{flag}="
    chosen = [o.split("=", 1)[1].split(",") for o in overrides if o.startswith(prefix)]
    unknown = set(chosen[0] if chosen else []) - {slug(name) for name in named}
    if unknown:
        sys.exit(f"--{flag}: unknown {sorted(unknown)}; known: {[slug(name) for name in named]}")
    picked = {name: value for name, value in named.items() if not chosen or slug(name) in chosen[0]}
    return picked, [o for o in overrides if not o.startswith(prefix)]


def run_variant(name: str, folder: Path, overrides: list[str], comparison: Comparison) -> None:
    """Train the recipe with ``overrides`` into ``folder``, unless a finished run of that config is there."""
    config = load_config(RECIPE, overrides + [f"output_dir={folder}", "train.progress=false"])
    print(f"{Path(sys.argv[0]).stem}: {name} -> {folder}", file=sys.stderr, flush=True)
    if not finished_run(config, folder, comparison.metric):
        train(config)


def run_patched(
    out: str, seeds: int, overrides: list[str], patches: list[tuple[str, str, Callable[[], contextlib.AbstractContextManager]]]
) -> dict[str, list[tuple[RunSummary, Path]]]:
    """The default and each patched variant (name, folder name, a factory of the patch's context manager), seed by
    seed, into ``OUT/FOLDER/seedS`` (the default's folder: ``default``); each variant's summaries and run folders."""
    comparison = Comparison(smooth=3)
    runs: dict[str, list[tuple[RunSummary, Path]]] = {}
    for seed in range(seeds):
        for name, folder_name, patch in [("default", "default", contextlib.nullcontext), *patches]:
            folder = Path(out) / folder_name / f"seed{seed}"
            with patch():
                run_variant(name, folder, overrides + [DEFAULT, f"seed={seed}"], comparison)
            summary = summarise_run(name, seed, read_metrics(folder / "metrics.jsonl"), comparison)
            runs.setdefault(name, []).append((summary, folder))
    return runs


def option(overrides: list[str], name: str, default: str) -> tuple[str, list[str]]:
    """The value of ``--NAME=VALUE`` among the overrides (the last one; ``default`` if absent) and the others."""
    prefix = f"--{name}="
    values = [o[len(prefix):] for o in overrides if o.startswith(prefix)]
    return (values[-1] if values else default), [o for o in overrides if not o.startswith(prefix)]


def sweep_main(
    argv: list[str], doc: str, name: str, default: str, describe: Callable[[str], str], folder: Callable[[str], str],
    patch: Callable[[float], contextlib.AbstractContextManager],
) -> None:
    """A patch script's command line, ``OUT SEEDS [--NAME=V1,V2] [recipe overrides...]``: the default and the patch at
    each value, seed by seed, then :func:`patched_table`."""
    if len(argv) < 3:
        sys.exit(doc)
    values, overrides = option(argv[3:], name, default)
    patches = [(describe(v), folder(v), functools.partial(patch, float(v))) for v in values.split(",")]
    print(patched_table(argv[1], int(argv[2]), overrides, patches))


def patched_table(
    out: str, seeds: int, overrides: list[str], patches: list[tuple[str, str, Callable[[], contextlib.AbstractContextManager]]]
) -> str:
    """:func:`run_patched`, then a table of best and final accuracy and the flipped share of the picks, mean ± std
    over seeds."""
    runs = {name: [summary for summary, _ in rows] for name, rows in run_patched(out, seeds, overrides, patches).items()}
    table = [f"\n{seeds} seed(s), {' '.join(overrides)}\n", "| run | best acc % | final acc % | flipped labels selected % |",
             "|---|---|---|---|"]
    table += [f"| {name} | {_fmt([100 * r.best for r in rs], 2)} | {_fmt([100 * r.final for r in rs], 2)} "
              f"| {_fmt([100 * r.noisy_share for r in rs], 1)} |" for name, rs in runs.items()]
    return "\n".join(table)


def main(out: str, overrides: list[str]) -> None:
    comparison = Comparison(smooth=3)
    summaries = {}
    for name, extra in VARIANTS.items():
        folder = Path(out) / name.split(" (")[0].replace(" ", "_")
        run_variant(name, folder, overrides + extra, comparison)
        summaries[name] = summarise_run(name, 0, read_metrics(folder / "metrics.jsonl"), comparison)
    base = next(iter(summaries.values()))
    print(f"\nBaseline: {base.policy}, best accuracy {100 * base.best:.2f}% (smoothed over 3 evals)\n")
    print("| variant | steps to baseline's best | seconds to baseline's best | best acc % | final acc % "
          "| select ms | scorer update ms | overhead % of large step | Spearman (explore) | noisy share % |")
    print("|" + "---|" * 10)
    for name, run in summaries.items():
        steps, secs = run.first_reaching(base.best)
        print(
            f"| {name} | {_fmt([steps])} | {_fmt([secs], 1)} | {100 * run.best:.2f} | {100 * run.final:.2f} "
            f"| {_mean_of(run.curve, 'time/select_ms'):.2f} | {_mean_of(run.curve, 'time/observe_ms'):.2f} "
            f"| {run.overhead_pct:.1f} | {_fmt([run.spearman], 2, missing='–')} | {100 * run.noisy_share:.1f} |"
        )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
