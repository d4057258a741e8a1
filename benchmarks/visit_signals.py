"""How well does what the large model shows at each visit tell a flipped label from a clean one?

Reads a run's ``selection_trace.jsonl`` (``logging.trace=true``): every pick's observed loss, so each sample's
``p(label)`` at its 1st, 2nd, ... visit. For the samples picked at least n times, it prints the AUC (probability
that a flipped sample scores above a clean one) of signals read off their first n visits: the last, mean, largest
and first ``p(label)`` (negated: low means flipped), the forgetting events (``p`` from >= 0.5 to < 0.5 between
visits, as in Toneva et al.) and the summed drops of ``p`` between visits; then the same among the samples fitted
within 2 visits (``p >= 0.5`` at the 1st or 2nd), the flipped labels that cost accuracy (README, "Tried").

Run: python benchmarks/visit_signals.py RUN_FOLDER [--visits=3,4,6] [recipe overrides of the run...]
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from levers import option

from online_select.config import load_config
from online_select.tasks import build_task

SIGNALS = ("last p", "mean p", "largest p", "first p", "forgetting events", "summed drops")


def auc(flipped: np.ndarray, values: np.ndarray) -> float:
    """P(value of a flipped sample > value of a clean one), ties counted half (Mann-Whitney)."""
    clean = np.sort(values[~flipped])
    below = np.searchsorted(clean, values[flipped], side="left")  # clean values under each flipped one
    tied = np.searchsorted(clean, values[flipped], side="right") - below
    return float((below.sum() + tied.sum() / 2) / max(len(clean) * int(flipped.sum()), 1))


def signals(p: list[float]) -> list[float]:
    pairs = list(itertools.pairwise(p))
    return [-p[-1], -sum(p) / len(p), -max(p), -p[0], sum(a >= 0.5 > b for a, b in pairs), sum(max(0.0, a - b) for a, b in pairs)]


def main(run: Path, overrides: list[str]) -> None:
    visits, overrides = option(overrides, "visits", "3,4,6")
    config = load_config(run / "config.yaml", overrides)
    noisy = build_task(config).is_noisy
    seen: dict[int, list[float]] = defaultdict(list)
    with open(run / "selection_trace.jsonl") as f:
        for line in f:
            record = json.loads(line)
            for sample, loss in zip(record["ids"], record["losses"]):
                seen[sample].append(math.exp(-loss))
    print(f"\n{run}: {len(seen)} samples picked\n")
    print("| samples | picked n+ times | flipped % | " + " | ".join(f"AUC {s}" for s in SIGNALS) + " |")
    print("|---|---|---|" + "---|" * len(SIGNALS))
    for n in (int(v) for v in visits.split(",")):
        ids = [s for s, p in seen.items() if len(p) >= n]
        fitted = [s for s in ids if max(seen[s][:2]) >= 0.5]
        for name, group in ((f"picked {n}+ times", ids), ("... of them fitted within 2 visits", fitted)):
            flipped = noisy[group].numpy().astype(bool)
            values = np.array([signals(seen[s][:n]) for s in group])
            aucs = " | ".join(f"{auc(flipped, values[:, j]):.3f}" for j in range(len(SIGNALS)))
            print(f"| {name} | {len(group)} | {100 * flipped.mean():.1f} | {aucs} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2:])
