"""Deferring the labels the reference is unsure of to the refresh: does the large model's first judgement stop the leak?

The flipped labels that pass the reference's floor cost the default most of its gap to a perfect filter, and once
the large model has trained on them no loss threshold tells them from clean but hard samples (README, "Tried").
This patch holds back every sample whose twin-halves ``p_ref`` lies between the label floor and ``below`` (where
most of the flipped labels that pass the floor sit: ``benchmarks/label_posterior.py``): their reference loss is
set under the floor, so they are not picked until the refresh (``reference.refresh_at``, a quarter of a long run)
replaces it with the large model's loss on them, a held-out judgement since it has never trained on them. A patch
on this script's runs, not a library option; the runs must refresh (4000 steps at the recipe's
``refresh_at: auto`` do).

Runs, seed by seed, the default and the default with each deferral, and prints best (smoothed over 3 evals) and
final accuracy, the flipped share of the picks, how many samples were deferred (their flipped share) and how many
the refresh admitted (their flipped share), mean ± std over seeds; then the clean samples each deferral holds back,
class by class (read off the default runs' saved reference, the same table as the deferring run of that seed).

Run: python benchmarks/defer_to_refresh.py OUT SEEDS [--below=0.3] [recipe overrides...]
A run whose folder already holds a finished run of the same config is read back, not run again.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from levers import option, run_patched

import online_select.loop as loop_module
from online_select import ReferenceTable
from online_select.bench import _fmt
from online_select.config import load_config
from online_select.policies import plausible_labels
from online_select.tasks import build_task


def unsure(reference_loss: torch.Tensor, floor: float, below: float) -> torch.Tensor:
    """Mask of the labels the reference finds plausible (``p_ref >= floor``) but not sure (``p_ref < below``)."""
    return plausible_labels(reference_loss, floor) & ~plausible_labels(reference_loss, below)


@contextlib.contextmanager
def deferred_to_refresh(below: float) -> Iterator[None]:
    """Patch the runs inside the block: labels with ``floor <= p_ref < below`` start under the floor."""
    build = loop_module.build_selector

    def build_deferring(config, task, large_loss_fn):
        selector, report = build(config, task, large_loss_fn)
        floor = selector.label_floor
        deferred = task.train_ids[unsure(selector.reference.table[task.train_ids], floor, below)]
        # under the floor until the refresh replaces it
        selector.reference.replace_losses(deferred, torch.full((deferred.numel(),), -math.log(floor / 2)))
        report["reference/deferred"] = float(deferred.numel())
        report["reference/deferred_noisy_share"] = float(task.is_noisy[deferred].float().mean())
        return selector, report

    loop_module.build_selector = build_deferring
    try:
        yield
    finally:
        loop_module.build_selector = build


def _reference_counts(folder: Path) -> tuple[float, float, float, float]:
    """Deferred (their flipped share), from the reference's report on the first line, and admitted by the refresh
    (their flipped share), from the refresh's line."""
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    refreshes = [line for line in lines if "reference/refreshed" in line]
    if not refreshes:
        sys.exit(f"{folder}: the run did not refresh, so its deferred samples were never judged; run longer")
    return (lines[0].get("reference/deferred", 0.0), lines[0].get("reference/deferred_noisy_share", 0.0),
            refreshes[0].get("reference/admitted", 0.0), refreshes[0].get("reference/admitted_noisy_share", 0.0))


def main(out: str, seeds: int, overrides: list[str]) -> None:
    below_list, overrides = option(overrides, "below", "0.3")
    belows = [float(b) for b in below_list.split(",")]
    patches = [(f"deferred below p_ref {b:g}", f"defer_{b:g}", functools.partial(deferred_to_refresh, b)) for b in belows]
    results = run_patched(out, seeds, overrides, patches)
    runs = {name: [summary for summary, _ in rows] for name, rows in results.items()}
    counts = {name: [_reference_counts(folder) for _, folder in rows] for name, rows in results.items()}
    table = [f"\n{seeds} seed(s), {' '.join(overrides)}\n",
             "| run | best acc % | final acc % | flipped labels selected % | deferred (flipped %) | admitted by the refresh (flipped %) |",
             "|---|---|---|---|---|---|"]
    for name, rs in runs.items():
        c = list(zip(*counts[name]))
        table.append(f"| {name} | {_fmt([100 * r.best for r in rs], 2)} | {_fmt([100 * r.final for r in rs], 2)} "
                     f"| {_fmt([100 * r.noisy_share for r in rs], 1)} | {_fmt(c[0], 0)} ({_fmt([100 * x for x in c[1]], 1)}) "
                     f"| {_fmt(c[2], 0)} ({_fmt([100 * x for x in c[3]], 1)}) |")
    print("\n".join(table))
    print(clean_deferred_by_class([folder for _, folder in results["default"]], belows))


def clean_deferred_by_class(default_runs: list[Path], belows: list[float]) -> str:
    """Markdown: per class, the clean samples whose ``p_ref`` lies between the floor and each ``below``."""
    config = load_config(default_runs[0] / "config.yaml", [])
    task = build_task(config)
    labels, clean = task.train_y[task.train_ids], ~task.is_noisy[task.train_ids]
    names = getattr(task, "class_names", None) or [str(c) for c in range(task.num_classes)]
    counts = {below: [] for below in belows}
    for folder in default_runs:
        reference_loss = ReferenceTable.load(folder / "reference.safetensors").table[task.train_ids]
        for below in belows:
            held = clean & unsure(reference_loss, config.selection.label_floor, below)
            counts[below].append(torch.bincount(labels[held], minlength=task.num_classes).float())
    lines = ["\n| clean samples deferred, by class | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for below in belows:
        per_class = torch.stack(counts[below])
        lines.append(f"| below p_ref {below:g} | " + " | ".join(_fmt(per_class[:, c].tolist(), 0) for c in range(len(names))) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
