"""A later, stricter label floor: train on the doubtful labels while the large model learns, drop them before it memorises.

Networks fit clean samples first and memorise flipped labels late (the early-learning phenomenon). The default's
leak is the flipped labels with ``p_ref`` just above the 0.05 floor, mixed with the clean boundary samples of the
confusable classes. Holding that band out until the refresh cost 1.42 points (the clean boundary samples are what
the large model learns from early; README, "Tried"); this patch does the reverse: the recipe's floor until a
fraction of the run, then a stricter one, which makes the band ineligible (and the rejection after 2 visits reads
the stricter floor too). A patch on this script's runs, not a library option.

Runs, seed by seed, the default and the default with each schedule ``FLOOR@FRACTION`` (e.g. ``0.1@0.5``: floor 0.1
from half the run on), and prints best (smoothed over 3 evals) and final accuracy and the flipped share of the
picks, mean ± std over seeds.

Run: python benchmarks/late_floor.py OUT SEEDS [--schedules=0.1@0.5] [recipe overrides...]
A run whose folder already holds a finished run of the same config is read back, not run again.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from levers import option, patched_table

import online_select.loop as loop_module
from online_select.selector import OnlineSelector


@contextlib.contextmanager
def late_floor(floor: float, fraction: float) -> Iterator[None]:
    """Patch the runs inside the block: from step ``fraction * train.max_steps`` on, the selector's label floor is
    ``floor``."""
    build, select_plan = loop_module.build_selector, OnlineSelector.select_plan
    switch_step: dict[int, int] = {}  # id(selector) -> the first step (1-based) selected under ``floor``

    def building(config, *args, **kwargs):
        selector, report = build(config, *args, **kwargs)
        switch_step[id(selector)] = max(1, round(fraction * config.train.max_steps))
        return selector, report

    def planning(selector, *args, **kwargs):
        # selector.step counts the steps already observed, so the plan made now is for step selector.step + 1.
        if selector.step + 1 >= switch_step[id(selector)] and selector.label_floor < floor:
            selector.label_floor = floor
        return select_plan(selector, *args, **kwargs)

    loop_module.build_selector, OnlineSelector.select_plan = building, planning
    try:
        yield
    finally:
        loop_module.build_selector, OnlineSelector.select_plan = build, select_plan


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit(__doc__)
    schedules, overrides = option(argv[3:], "schedules", "0.1@0.5")
    patches = []
    for schedule in schedules.split(","):
        floor, fraction = (float(x) for x in schedule.split("@"))
        patches.append((f"default, floor {floor:g} from {fraction:g} of the run", f"floor_{floor:g}_at_{fraction:g}",
                        lambda floor=floor, fraction=fraction: late_floor(floor, fraction)))
    print(patched_table(argv[1], int(argv[2]), overrides, patches))


if __name__ == "__main__":
    main(sys.argv)
