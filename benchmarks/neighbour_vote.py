"""A neighbour vote on the labels at the refresh: does it catch the flipped labels the filter lets through?

At the recipe's refresh (a quarter of the run) the large model has learnt a feature space in which a
sample's nearest neighbours mostly carry its true class, even where it has memorised the sample's own
flipped label. The vote is leave-one-out, so unlike the large model's own ``p(label)`` it also judges
samples the large model has trained on. After the refresh, every eligible sample is embedded with the
large model's penultimate layer (unit length), its ``--k`` nearest neighbours (cosine) are looked up among
a random ``--pool`` of the eligible samples, and a sample whose label fewer than a share ``t`` of them
carry is made ineligible (its reference loss set to ``-log(t * floor)``, under the floor).

Runs, seed by seed: uniform, the default, and the default with the vote at each threshold; prints the bench
table (mean ± std over seeds; each seed against its own uniform run) and what each vote rejected, against
the task's true noise flags. The vote is a patch on this script's runs, not a library option.

Run: python benchmarks/neighbour_vote.py OUT SEEDS [--thresholds=0.1,0.05] [--k=20] [--pool=20000] [recipe overrides...]
A run whose folder already holds a finished run of the same config (and, for a vote, its record) is read
back, not run again.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from levers import DEFAULT, option, run_variant

from online_select.bench import Comparison, _fmt, bench_table, read_metrics, summarise_run
from online_select.policies import plausible_labels
from online_select.selector import OnlineSelector
from online_select.tasks import ImageClassificationTask


def neighbour_share(features: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, pool: torch.Tensor, k: int,
                    chunk: int = 2048) -> torch.Tensor:
    """For each query id, the share of its ``k`` nearest pool ids (by ``features @ features.T``, itself
    left out) whose label equals its own."""
    pool_features, pool_labels = features[pool], labels[pool]
    share = torch.empty(queries.numel())
    for start in range(0, queries.numel(), chunk):
        rows = queries[start : start + chunk]
        similarity = features[rows] @ pool_features.T
        similarity[pool[None, :] == rows[:, None]] = -math.inf
        nearest = similarity.topk(k, dim=1).indices
        share[start : start + chunk] = (pool_labels[nearest] == labels[rows, None]).float().mean(1)
    return share


@contextlib.contextmanager
def neighbour_vote(threshold: float, k: int, pool_size: int, seed: int, record: dict) -> Iterator[None]:
    """Patch the refresh of the runs inside the block: after the large model's re-judgement, the vote."""
    models: list[tuple[ImageClassificationTask, torch.nn.Module]] = []
    build_model, refresh = ImageClassificationTask.large_model, OnlineSelector.refresh_reference

    def large_model(task: ImageClassificationTask) -> torch.nn.Module:
        model = build_model(task)
        models.append((task, model))
        return model

    def refresh_then_vote(selector: OnlineSelector, ids: torch.Tensor, large_losses: torch.Tensor):
        outcome = refresh(selector, ids, large_losses)
        start = time.perf_counter()
        task, model = models[-1]
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            features = torch.cat([F.normalize(model[:-1](task.train_x[s : s + 4096]), dim=1)
                                  for s in range(0, len(task.train_y), 4096)])
        model.train(was_training)
        table = selector.reference.table
        eligible = torch.nonzero(plausible_labels(table, selector.label_floor))[:, 0]
        order = torch.randperm(eligible.numel(), generator=torch.Generator().manual_seed(seed))
        share = neighbour_share(features, task.train_y, eligible, eligible[order[:pool_size]], k)
        rejected = eligible[share < threshold]
        if rejected.numel():
            loss = -math.log(threshold * selector.label_floor)
            selector.reference.replace_losses(rejected, torch.full((rejected.numel(),), loss))
        noisy = task.is_noisy[rejected]
        record.update(flipped=int(noisy.sum()), clean=int((~noisy).sum()), seconds=time.perf_counter() - start)
        return outcome

    ImageClassificationTask.large_model, OnlineSelector.refresh_reference = large_model, refresh_then_vote
    try:
        yield
    finally:
        ImageClassificationTask.large_model, OnlineSelector.refresh_reference = build_model, refresh


def main(out: str, seeds: int, overrides: list[str]) -> None:
    thresholds, overrides = option(overrides, "thresholds", "0.1")
    k, overrides = option(overrides, "k", "20")
    pool, overrides = option(overrides, "pool", "20000")
    comparison = Comparison(smooth=3)
    runs: dict[str, list] = {}
    votes: dict[str, list[dict]] = {}

    def run(name: str, folder: Path, extra: list[str], seed: int) -> None:
        run_variant(name, folder, overrides + extra + [f"seed={seed}"], comparison)
        runs.setdefault(name, []).append(summarise_run(name, seed, read_metrics(folder / "metrics.jsonl"), comparison))

    for seed in range(seeds):
        run("uniform", Path(out) / "uniform" / f"seed{seed}", ["selection.policy=uniform"], seed)
        run("default", Path(out) / "default" / f"seed{seed}", [DEFAULT], seed)
        for threshold in (float(t) for t in thresholds.split(",")):
            name = f"default + neighbour vote, share < {threshold:g}"
            folder = Path(out) / f"vote_{threshold:g}" / f"seed{seed}"
            record_file = folder / "neighbour_vote.json"
            if not record_file.is_file():
                (folder / "metrics.jsonl").unlink(missing_ok=True)  # a run without its record is not reused
            record: dict = {}
            with neighbour_vote(threshold, int(k), int(pool), seed, record):
                run(name, folder, [DEFAULT], seed)
            if record:
                record_file.write_text(json.dumps(record))
            elif not record_file.is_file():
                sys.exit(f"{folder}: the run made no refresh, so no vote (it runs at the refresh: reference.refresh_at)")
            votes.setdefault(name, []).append(json.loads(record_file.read_text()))

    print(f"\n{seeds} seed(s), k={k}, pool={pool}, {' '.join(overrides)}\n")
    print(bench_table(runs))
    print("What the vote made ineligible at the refresh, against the true noise flags (mean ± std over seeds):\n")
    print("| run | flipped labels | clean labels | seconds |")
    print("|---|---|---|---|")
    for name, records in votes.items():
        print(f"| {name} | {_fmt([r['flipped'] for r in records])} | {_fmt([r['clean'] for r in records])} "
              f"| {statistics.fmean(r['seconds'] for r in records):.1f} |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
