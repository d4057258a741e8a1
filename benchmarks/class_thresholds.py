"""Per-class label floors (confident learning's per-class thresholds) against the one global floor.

The recipe's reference filter excludes a sample when the twin-halves reference gives its (noisy) label a
probability under one floor for every class. Hard classes (shirts) have a lower typical probability of their
own label, so one floor excludes more of their clean samples. Confident learning (Northcutt et al.) instead
compares each sample with its label's threshold ``t_y``, the mean probability the reference gives label ``y``
on the samples labelled ``y``. This script asks whether that ranks flipped labels better. Each rule excludes
the same number of samples as the recipe's floor, and the two errors of each are counted against the true
noise flags.

Rules:
- ``global p``: p_ref(y|x), the recipe's rule.
- ``p / t_y``: confident learning's per-class normalisation.
- ``per-class rank``: the same share of every label excluded.

Run: python benchmarks/class_thresholds.py [--seeds N] [recipe overrides...]     (markdown on stdout, ~5 s a seed)
"""

from __future__ import annotations

import argparse

import torch
from levers import RECIPE
from noise_ceiling import kept_errors

from online_select.bench import _fmt
from online_select.config import load_config
from online_select.tasks import build_task


def rules(p_label: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Each rule's score of every training sample (low: excluded first)."""
    own = torch.stack([p_label[labels == c].mean() for c in range(num_classes)])
    rank = torch.empty_like(p_label)
    for c in range(num_classes):
        members = labels == c
        rank[members] = p_label[members].argsort().argsort().float() / int(members.sum())
    return {"global p": p_label, "p / t_y": p_label / own[labels], "per-class rank": rank}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    args, overrides = parser.parse_known_args()
    config = load_config(RECIPE, overrides)
    torch.set_num_threads(config.train.threads or torch.get_num_threads())
    task = build_task(config)  # the labels and their noise do not depend on the seed; the reference does
    floor = task.label_floor() if config.selection.label_floor == "auto" else float(config.selection.label_floor)
    errors: dict[str, list[tuple[float, float]]] = {}
    shares = []
    for seed in range(args.seeds):
        reference, _ = task.build_reference(config.seed + seed)
        p_label = torch.exp(-reference.table)
        count = int((p_label < floor).sum())
        shares.append(100 * count / len(p_label))
        for name, score in rules(p_label, task.train_y, task.num_classes).items():
            kept = torch.ones_like(p_label, dtype=torch.bool)
            kept[score.argsort()[:count]] = False
            errors.setdefault(name, []).append(kept_errors(kept, task.is_noisy))

    print(f"\n{args.seeds} seed(s) of the twin-halves reference; each rule excludes as many samples as the floor "
          f"{floor:g} ({_fmt(shares, 2)}% of them); errors against the true noise flags (mean ± std over seeds)\n")
    print("| rule | clean samples excluded % | noisy share of the kept % |")
    print("|---|---|---|")
    for name, pairs in errors.items():
        print(f"| {name} | {_fmt([c for c, _ in pairs], 2)} | {_fmt([n for _, n in pairs], 2)} |")


if __name__ == "__main__":
    main()
