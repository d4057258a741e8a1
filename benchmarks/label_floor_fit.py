"""The label floor fitted to the reference's losses (``selection.label_floor: fit``) against fixed floors, at
several noise rates: what each floor excludes, counted against the true noise flags.

A fixed floor suits one noise rate. The more labels are flipped, the less sure the twin-halves reference is of
every label, so a flipped label's ``p_ref`` rises above a floor that stopped it at a lower rate.
``fit_label_floor`` fits two Gaussians to the log reference losses and sets the floor where the group of
implausible labels becomes the likelier. "Excluding the true noise count" is the rule that knows how many labels
were flipped (not what a run can do), for scale.

Run: python benchmarks/label_floor_fit.py [--seeds N] [--noise 0.1,0.3,0.5] [recipe overrides...]   (~5 s a cell)
"""

from __future__ import annotations

import argparse

import torch
from levers import RECIPE
from noise_ceiling import kept_errors

from online_select.bench import _fmt
from online_select.config import load_config
from online_select.policies import fit_label_floor, plausible_labels
from online_select.tasks import build_task

FIXED = (0.05, 0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--noise", default="0.1,0.3,0.5")
    args, overrides = parser.parse_known_args()
    print("| noise | floor | floor value | excluded % | clean samples excluded % | noisy share of the kept % |")
    print("|---|---|---|---|---|---|")
    for noise in (float(value) for value in args.noise.split(",")):
        config = load_config(RECIPE, [*overrides, f"data.label_noise={noise}"])
        torch.set_num_threads(config.train.threads or torch.get_num_threads())
        task = build_task(config)  # the labels and their noise do not depend on the seed; the reference does
        rows: dict[str, list[tuple[float, float, float, float]]] = {}
        for seed in range(args.seeds):
            losses = task.build_reference(config.seed + seed)[0].table
            floors = {f"fixed {floor:g}": floor for floor in FIXED}
            floors["fit"] = fit_label_floor(losses)
            for name, floor in floors.items():
                kept = plausible_labels(losses, floor)
                rows.setdefault(name, []).append((floor, 100 - 100 * float(kept.float().mean()), *kept_errors(kept, task.is_noisy)))
            kept = torch.ones_like(task.is_noisy)
            kept[losses.argsort(descending=True)[: int(task.is_noisy.sum())]] = False
            rows.setdefault("excluding the true noise count", []).append(
                (float("nan"), 100 - 100 * float(kept.float().mean()), *kept_errors(kept, task.is_noisy)))
        for name, values in rows.items():
            cells = [_fmt([v[i] for v in values], 4 if i == 0 else 2, missing="–") for i in range(4)]
            print(f"| {noise:g} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
