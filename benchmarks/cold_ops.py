"""What small tensor ops cost right after a large model's step, against the same ops back to back.

Selection runs its ops between the large model's steps, whose convolutions evict the caches the small ops'
code and data sat in. This times eight ops of the kind selection runs (gathers on 64-640 rows, a mean read
back with ``.item()``, a 640-id gather from a 114k-entry table by indexing and by ``index_select``, the scorer
head's two linear layers on 640 candidates) after a convolution of the recipe's shape and with nothing in
between, and prints a table of microseconds per op (median of ``--repeats``).

Run:  python benchmarks/cold_ops.py [--repeats 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(640, generator=g)
    picked = torch.randperm(640, generator=g)[:64]
    ids = torch.randint(0, 60000, (640,), generator=g)
    features = torch.randn(640, 7, generator=g)
    table = torch.randn(114440, generator=g)
    hidden = torch.randn(640, 32, generator=g)
    weight1, bias1 = torch.randn(32, 7, generator=g), torch.randn(32, generator=g)
    weight2, bias2 = torch.randn(1, 32, generator=g), torch.randn(1, generator=g)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    images = torch.randn(64, 32, 28, 28, generator=g)
    ops = {
        "scores[picked]": lambda: scores[picked],
        "ids[picked]": lambda: ids[picked],
        "features[picked]": lambda: features[picked],
        "scores.mean().item()": lambda: scores.mean().item(),
        "table[ids]": lambda: table[ids],
        "table.index_select(0, ids)": lambda: table.index_select(0, ids),
        "scorer head layer 1 (640 x 7 -> 32)": lambda: torch.nn.functional.linear(features, weight1, bias1),
        "scorer head layer 2 (640 x 32 -> 1)": lambda: torch.nn.functional.linear(hidden, weight2, bias2),
    }
    timings: dict[str, dict[str, list[float]]] = {"after a convolution": {}, "back to back": {}}
    for setting, per_op in timings.items():
        for name in ops:
            per_op[name] = []
        for _ in range(args.repeats):
            if setting == "after a convolution":
                with torch.no_grad():
                    conv(images)
            for name, op in ops.items():
                start = time.perf_counter()
                op()
                per_op[name].append(time.perf_counter() - start)
    print(f"Microseconds per op, median of {args.repeats}, {args.threads} thread(s); ops run in this order\n")
    print("| op | after a 64 x 32 x 28 x 28 convolution | back to back | ratio |\n|---|---|---|---|")
    totals = {setting: 0.0 for setting in timings}
    for name in ops:
        cold = 1e6 * statistics.median(timings["after a convolution"][name])
        warm = 1e6 * statistics.median(timings["back to back"][name])
        totals["after a convolution"] += cold
        totals["back to back"] += warm
        print(f"| `{name}` | {cold:.1f} | {warm:.1f} | {cold / warm:.1f}x |")
    cold, warm = totals["after a convolution"], totals["back to back"]
    print(f"| all {len(ops)} | {cold:.1f} | {warm:.1f} | {cold / warm:.1f}x |")


if __name__ == "__main__":
    main()
