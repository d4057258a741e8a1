"""A reference table from a task's true noise flags (a flipped label, a junk block): the oracle filter.

A noisy sample gets reference loss 10 (p = exp(-10), under any label floor used here), a clean one 0.01
(p ~ 1), so `reference.kind=file reference.path=OUT` puts a perfect filter behind any policy: with
`selection.policy=reference_filter`, uniform over the clean samples only (how far a perfect filter alone
goes); with the default policy, its scorer ranking the clean samples.

Run: python benchmarks/oracle_table.py RECIPE OUT [recipe overrides...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from online_select import ReferenceTable
from online_select.config import load_config
from online_select.tasks import Task, build_task

NOISY_LOSS, CLEAN_LOSS = 10.0, 0.01


def noise_flags(task: Task) -> torch.Tensor:
    """The true noise flag of every training id (image tasks: ``is_noisy``; the LM corpus: ``corpus.noisy``)."""
    flags = getattr(task, "is_noisy", None)
    if flags is None and hasattr(task, "corpus"):
        flags = task.corpus.noisy
    if flags is None:
        raise ValueError(f"task {type(task).__name__} keeps no per-id noise flags to build an oracle table from")
    return torch.as_tensor(flags, dtype=torch.bool)


def oracle_table(recipe: str | Path, overrides: list[str], path: Path) -> Path:
    """Write the oracle table of the recipe's task (after ``overrides``) to ``path``."""
    task = build_task(load_config(recipe, overrides))
    flags = noise_flags(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = ReferenceTable(torch.where(flags, torch.tensor(NOISY_LOSS), torch.tensor(CLEAN_LOSS)))
    table.save(path, task.reference_fingerprint())
    print(f"{path}: {int(flags.sum())} of {flags.numel()} ids flagged noisy", file=sys.stderr)
    return path


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    oracle_table(sys.argv[1], sys.argv[3:], Path(sys.argv[2]))
