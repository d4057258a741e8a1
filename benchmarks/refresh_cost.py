"""What a reference refresh costs per sample: the large model's forward over training images, by batch size.

A refresh (``reference.refresh_at``) runs the large model over every sample it has not trained on, in
batches of ``reference.refresh_batch_size`` (default: ``selection.keep``). This times that forward for the
recipe's CNN at widths 32 and 64, each batch size side by side in one process, best of ``--repeats``.

Run: python benchmarks/refresh_cost.py [--samples=8192] [--repeats=3] [--threads=2]   (prints a markdown table)
"""

from __future__ import annotations

import argparse
import time

import torch

from online_select.config import load_config
from online_select.tasks import build_task

BATCH_SIZES = (32, 64, 128, 256, 512)


def seconds_per_sample(model: torch.nn.Module, task, ids: torch.Tensor, batch_size: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in task.batches_by_id(ids, batch_size):
                task.loss(model, batch)
        best = min(best, time.perf_counter() - start)
    return best / len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/fashion_mnist_noisy.yaml")
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = " | ".join(f"batch {b}" for b in BATCH_SIZES)
    print(f"| model | {header} | batch 64 vs 256 |\n|---|{'---|' * len(BATCH_SIZES)}---|")
    for width in (32, 64):
        task = build_task(load_config(args.recipe, [f"model.width={width}"]))
        torch.manual_seed(0)
        model = task.large_model().eval()
        ids = task.train_ids[: args.samples]
        cost = {b: seconds_per_sample(model, task, ids, b, args.repeats) for b in BATCH_SIZES}
        cells = " | ".join(f"{1e3 * cost[b]:.3f} ms" for b in BATCH_SIZES)
        print(f"| CNN width {width} | {cells} | {cost[256] / cost[64]:.2f}x faster |")


if __name__ == "__main__":
    main()
