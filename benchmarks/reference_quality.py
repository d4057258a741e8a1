"""How well references that cost more than the recipe's tell a flipped label from a clean but hard one.

Each reference scores every training sample with a model that never trained on it (k folds: model f trains
on the other folds and scores fold f). Against the recipe's (MLP twin halves, 3 epochs):

- more folds (each model trains on 3/4 of the data instead of 1/2);
- more rounds: round r trains the twin halves again on the samples round r - 1 found plausible
  (``p_ref >= 0.05``), so it learns from cleaner labels (iterative cross-validated filtering);
- an ensemble: two twin-halves references from different seeds, their probabilities averaged;
- the large model's own architecture (the recipe's CNN) as the twin halves, one epoch;
- two architectures: the recipe's MLP and that CNN, their probabilities averaged (they err on different samples).

Prints each reference's seconds and its two errors at several label floors, counted against the task's true
noise flags: clean samples excluded % / noisy share of the kept %, mean ± std over seeds 0..SEEDS-1 (the
seconds of a reference built on others include theirs). ``--save=DIR`` writes each table to
``DIR/seedS/SLUG.safetensors``, to train behind it (``reference.kind=file reference.path=...``).

Run: python benchmarks/reference_quality.py SEEDS [--save=DIR] [recipe overrides...]     (markdown on stdout)
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from levers import RECIPE
from noise_ceiling import kept_errors
from torch import nn

from online_select import ReferenceTable
from online_select.bench import _fmt
from online_select.config import load_config
from online_select.models import mlp_classifier, small_cnn
from online_select.reference import reference_table_from_models, train_model
from online_select.tasks import ImageClassificationTask, build_task

FLOORS = (0.02, 0.05, 0.1)
ROUND_FLOOR = 0.05


def folds_reference(
    task: ImageClassificationTask,
    make_model: Callable[[], nn.Module],
    folds: int,
    epochs: int,
    seed: int,
    trusted: torch.Tensor | None = None,
    batch_size: int = 128,
) -> ReferenceTable:
    """Model f trains on the ``trusted`` samples of every fold but f, and scores all of fold f."""
    ref = task.config.reference
    ids = task.train_ids
    parts = []
    for fold in range(folds):
        fit = ids[ids % folds != fold]
        if trusted is not None:
            fit = fit[trusted[fit]]
        torch.manual_seed(seed + fold)
        model = make_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=ref.lr)
        epoch = iter(range(10**9))

        def batches(fit: torch.Tensor = fit) -> Iterable[dict]:
            order = torch.randperm(len(fit), generator=torch.Generator().manual_seed(seed + 1000 * next(epoch)))
            return task.batches_by_id(fit[order], batch_size)

        train_model(model, optimizer, batches, task.loss, epochs)
        parts.append((model, task.batches_by_id(ids[ids % folds == fold], 4096)))
    return reference_table_from_models(parts, task.loss, lambda batch: batch["id"], len(task.train_y))


def averaged(first: ReferenceTable, other: ReferenceTable) -> ReferenceTable:
    """Two references' probabilities of each label averaged, with ``first``'s features (the scorer reads them)."""
    p_label = (torch.exp(-first.table) + torch.exp(-other.table)) / 2
    return ReferenceTable(-torch.log(p_label), first.extra)


def references(task: ImageClassificationTask, seed: int) -> dict[str, tuple[Callable[[], ReferenceTable], tuple[str, ...]]]:
    """The references compared, in the order they print: each a builder and the names of the references it
    builds on (their tables are reused, their seconds are counted in)."""
    ref = task.config.reference
    pixels = task.train_x[0].numel()
    mlp = lambda: mlp_classifier(pixels, task.num_classes, ref.hidden)  # noqa: E731
    built: dict[str, ReferenceTable] = {}

    def recipe() -> ReferenceTable:
        built["recipe"] = task.train_reference(seed)[0]
        return built["recipe"]

    def next_round(previous: str, name: str, round_seed: int) -> Callable[[], ReferenceTable]:
        def build() -> ReferenceTable:
            trusted = torch.exp(-built[previous].table) >= ROUND_FLOOR
            built[name] = folds_reference(task, mlp, 2, ref.epochs, round_seed, trusted)
            return built[name]

        return build

    def ensemble() -> ReferenceTable:
        return averaged(built["recipe"], folds_reference(task, mlp, 2, ref.epochs, seed + 500))

    def large_architecture() -> ReferenceTable:
        m, (channels, size, _) = task.config.model, task.image_shape
        cnn = lambda: small_cnn(channels, task.num_classes, width=m.width, hidden=m.hidden, image_size=size)  # noqa: E731
        built["cnn"] = folds_reference(task, cnn, 2, 1, seed + 700, batch_size=64)
        return built["cnn"]

    recipe_name = f"MLP twin halves, {ref.epochs} epochs (the recipe's)"
    cnn_name = "large-model CNN as twin halves, 1 epoch"
    return {
        recipe_name: (recipe, ()),
        f"MLP 4 folds, {ref.epochs} epochs": (lambda: folds_reference(task, mlp, 4, ref.epochs, seed + 100), ()),
        "MLP twin halves, 2 rounds": (next_round("recipe", "round 2", seed + 200), (recipe_name,)),
        "MLP twin halves, 3 rounds": (next_round("round 2", "round 3", seed + 300), ("MLP twin halves, 2 rounds",)),
        "2 MLP twin halves (2 seeds), probabilities averaged": (ensemble, (recipe_name,)),
        cnn_name: (large_architecture, ()),
        "MLP twin halves + CNN twin halves, probabilities averaged": (
            lambda: averaged(built["recipe"], built["cnn"]),
            (recipe_name, cnn_name),
        ),
    }


def slug(name: str) -> str:
    """A file name for a reference: ``MLP twin halves, 3 rounds`` -> ``mlp_twin_halves_3_rounds``."""
    return "_".join("".join(c if c.isalnum() else " " for c in name.split(" (")[0].lower()).split())


def main(seeds: int, overrides: list[str]) -> None:
    save = next((Path(o.split("=", 1)[1]) for o in overrides if o.startswith("--save=")), None)
    overrides = [o for o in overrides if not o.startswith("--save=")]
    seconds: dict[str, list[float]] = defaultdict(list)
    errors: dict[tuple[str, float], list[tuple[float, float]]] = defaultdict(list)
    config = load_config(RECIPE, overrides)
    torch.set_num_threads(config.train.threads or torch.get_num_threads())
    task = build_task(config)  # the data and its label noise do not depend on the run seed; the references do
    fingerprint = task.reference_fingerprint()
    for seed in range(seeds):
        spent: dict[str, float] = {}
        for name, (build, builds_on) in references(task, seed).items():
            print(f"reference_quality: seed {seed}, {name}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            table = build()
            spent[name] = time.perf_counter() - start + sum(spent[other] for other in builds_on)
            seconds[name].append(spent[name])
            p_label = torch.exp(-table.table)
            for floor in FLOORS:
                errors[name, floor].append(kept_errors(p_label >= floor, task.is_noisy))
            if save is not None:
                (save / f"seed{seed}").mkdir(parents=True, exist_ok=True)
                table.save(save / f"seed{seed}" / f"{slug(name)}.safetensors", fingerprint)
    print(f"\n{seeds} seed(s), {' '.join(overrides) or 'the recipe as it is'}; each cell: clean samples excluded % / "
          "noisy share of the kept %, against the true noise flags (mean ± std over seeds)\n")
    print("| reference | seconds | " + " | ".join(f"floor {floor}" for floor in FLOORS) + " |")
    print("|---|---|" + "---|" * len(FLOORS))
    for name, spent_s in seconds.items():
        shown = " | ".join(
            f"{_fmt([c for c, _ in errors[name, floor]], 2)} / {_fmt([n for _, n in errors[name, floor]], 2)}"
            for floor in FLOORS
        )
        print(f"| {name} | {_fmt(spent_s, 1)} | {shown} |")


if __name__ == "__main__":
    if len(sys.argv) < 2 or not sys.argv[1].isdigit():
        sys.exit(__doc__)
    main(int(sys.argv[1]), sys.argv[2:])
