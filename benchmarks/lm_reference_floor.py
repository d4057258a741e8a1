"""Where the LM recipe's label floor goes: how the reference's mean token loss separates clean blocks from junk.

The learnability score's floor applies to ``p_ref = exp(-reference loss)``; a block under it is ineligible,
for the exploration picks too. For a range of floors (given as the reference loss they cut at), prints the
share of clean blocks excluded and the junk share of what is kept (counted against the corpus's junk flags,
which training never reads), then the reference loss of clean blocks and of each junk kind, then the clean
blocks by the leading digits of their documents' file names (the year, for the State of the Union speeches):
what a score that ranks by `p_ref` favours besides clean text.

Run: python benchmarks/lm_reference_floor.py [recipe overrides...]      (markdown on stdout)
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import torch

from online_select.config import load_config
from online_select.lm_corpus import JUNK_KINDS
from online_select.tasks import build_task

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "lm_noisy_corpus.yaml"
CUTS = (6.0, 6.3, 6.5, 6.8, 7.0, 7.5)
QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)


def main(overrides: list[str]) -> None:
    config = load_config(RECIPE, overrides)
    task = build_task(config)
    reference, _ = task.build_reference(config.seed)
    loss, kind = reference.table, task.corpus.kind
    junk = kind > 0
    print(f"\n{config.reference.kind} {config.reference.model} reference, {int((~junk).sum())} clean and "
          f"{int(junk.sum())} junk training blocks\n")
    print("| floor (p_ref) | cuts at reference loss | clean blocks excluded % | junk share of the kept % |")
    print("|---|---|---|---|")
    for cut in CUTS:
        kept = loss <= cut
        clean_excluded = 100 * float((~kept & ~junk).sum()) / int((~junk).sum())
        junk_kept = 100 * float((kept & junk).sum()) / max(int(kept.sum()), 1)
        print(f"| {math.exp(-cut):.5f} | {cut} | {clean_excluded:.2f} | {junk_kept:.2f} |")
    print("\n| blocks | " + " | ".join(f"reference loss q{q:g}" for q in QUANTILES) + " |")
    print("|---|" + "---|" * len(QUANTILES))
    for index, name in enumerate(("clean",) + JUNK_KINDS):
        values = loss[kind == index]
        if values.numel():
            row = torch.quantile(values, torch.tensor(QUANTILES)).tolist()
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    by_group(task, loss)


def by_group(task, loss: torch.Tensor, years: int = 40, favoured: float = 0.2) -> None:
    """Clean blocks by a ``years``-wide span of the number their document's file name starts with."""
    names = task.document_names["train"]
    clean = task.corpus.kind == 0
    start = torch.tensor([int(re.match(r"\d*", names[d]).group() or -1) for d in task.corpus.document[clean].tolist()])
    clean_loss = loss[clean]
    top = torch.zeros_like(clean_loss, dtype=torch.bool)
    top[clean_loss.argsort()[: int(favoured * len(clean_loss))]] = True
    label_floor = task.config.selection.label_floor
    floor = -math.log(label_floor) if isinstance(label_floor, (int, float)) and label_floor > 0 else None
    print(f"\n| clean blocks from documents named | blocks | mean reference loss | excluded by the floor % "
          f"| share among the {100 * favoured:.0f}% lowest-loss clean blocks % |")
    print("|---|---|---|---|---|")
    if bool((start < 0).all()):
        print("| (no file name starts with a number) | | | | |")
        return
    for low in range(int(start[start >= 0].min()) // 10 * 10, int(start.max()) + 1, years):
        rows = (start >= low) & (start < low + years)
        if rows.any():
            excluded = f"{100 * float((clean_loss[rows] > floor).float().mean()):.1f}" if floor else "–"
            print(f"| {low}-{low + years - 1} | {int(rows.sum())} | {float(clean_loss[rows].mean()):.2f} | {excluded} "
                  f"| {100 * float(top[rows].float().mean()):.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
