"""How often a label is flipped, given what the recipe's reference thinks of it.

For every training sample the recipe's twin-halves reference gives ``p_ref``, the probability of its label from
a model that never trained on it. Binned by ``p_ref``, this prints how many samples fall in each bin and what
share of them carry a flipped label (the task's true noise flags), mean ± std over reference seeds. Where that
share crosses 50% is where excluding a sample stops removing more flipped labels than clean ones: a label floor
above that point excludes more clean samples than flipped ones.

Run: python benchmarks/label_posterior.py SEEDS [recipe overrides...]     (markdown on stdout)
"""

from __future__ import annotations

import sys

import torch
from levers import RECIPE

from online_select.bench import _fmt
from online_select.config import load_config
from online_select.tasks import build_task

EDGES = (0.0, 0.01, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


def main(seeds: int, overrides: list[str]) -> None:
    config = load_config(RECIPE, overrides)
    torch.set_num_threads(config.train.threads or torch.get_num_threads())
    task = build_task(config)  # the labels and their noise do not depend on the run seed; the reference does
    noisy = task.is_noisy[task.train_ids]
    counts: list[list[float]] = [[] for _ in EDGES[:-1]]
    flipped: list[list[float]] = [[] for _ in EDGES[:-1]]
    for seed in range(seeds):
        p_ref = torch.exp(-task.train_reference(seed)[0].table[task.train_ids])
        for i, (low, high) in enumerate(zip(EDGES[:-1], EDGES[1:])):
            inside = (p_ref >= low) & ((p_ref < high) if high < 1.0 else (p_ref <= high))
            counts[i].append(float(inside.sum()))
            flipped[i].append(100 * float((inside & noisy).sum()) / max(int(inside.sum()), 1))
    print(f"\n{seeds} reference seed(s), {' '.join(overrides) or 'the recipe as it is'}, "
          f"{len(noisy)} training samples, {100 * float(noisy.float().mean()):.1f}% flipped\n")
    print("| p_ref of the label | samples | flipped labels among them % |")
    print("|---|---|---|")
    for i, (low, high) in enumerate(zip(EDGES[:-1], EDGES[1:])):
        print(f"| [{low}, {high}{']' if high == 1.0 else ')'} | {_fmt(counts[i], 0)} | {_fmt(flipped[i], 1)} |")


if __name__ == "__main__":
    if len(sys.argv) < 2 or not sys.argv[1].isdigit():
        sys.exit(__doc__)
    main(int(sys.argv[1]), sys.argv[2:])
