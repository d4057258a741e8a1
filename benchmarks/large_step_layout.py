"""What the recipe's large model costs in other memory layouts and precisions, and torch.compile on the scorer.

The selection overhead is read against the large model's step, so a faster large step makes the same selection
a larger share of it. This times the Fashion-MNIST recipe's CNN (width 32, batches of 64) three ways, side by
side and interleaved over ``--rounds``: the default (NCHW, float32), channels-last memory format (model and
input), and bfloat16 autocast; for the training step (forward, backward, AdamW) and for inference at batch 64 (as
the reference refresh runs it). With ``--compile`` it also times the scorer's prediction (norm, two linear layers
on 640 candidates) eager and under ``torch.compile``, right after a convolution as in a training step, and the
compile time.

Run:  python benchmarks/large_step_layout.py [--rounds 5] [--threads 2] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from online_select.models import small_cnn

MODES = ("NCHW float32 (the recipe)", "channels-last float32", "NCHW bfloat16 autocast")


def _inputs(mode: str, x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if mode == MODES[1] else x


def _autocast(mode: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == MODES[2])


def train_ms(model, optimizer, mode: str, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        rows = slice(64 * i, 64 * (i + 1))
        with _autocast(mode):
            loss = F.cross_entropy(model(_inputs(mode, x[rows])), y[rows])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return 1000 * (time.perf_counter() - start) / steps


def infer_us(model, mode: str, x: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.inference_mode(), _autocast(mode):
        for rows in x.split(64):
            model(_inputs(mode, rows))
    return 1e6 * (time.perf_counter() - start) / len(x)


def layouts(rounds: int, steps: int) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64 * steps, 1, 28, 28, generator=g), torch.randint(0, 10, (64 * steps,), generator=g)
    runs = {}
    for mode in MODES:
        torch.manual_seed(0)
        model = small_cnn()
        if mode == MODES[1]:
            model = model.to(memory_format=torch.channels_last)
        runs[mode] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3), [], [])
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for mode, (model, optimizer, train, infer) in runs.items():
            train.append(train_ms(model.train(), optimizer, mode, x, y, steps))
            infer.append(infer_us(model.eval(), mode, x))
    base_train, base_infer = (statistics.median(values[1:]) for values in runs[MODES[0]][2:])
    print(f"Recipe CNN (width 32), batches of 64; medians of {rounds} interleaved rounds of {steps} steps\n")
    print("| layout | training step ms | vs the recipe | inference us/sample | vs the recipe |\n|---|---|---|---|---|")
    for mode, (_, _, train, infer) in runs.items():
        t, i = statistics.median(train[1:]), statistics.median(infer[1:])
        print(f"| {mode} | {t:.2f} | {base_train / t:.2f}x | {i:.1f} | {base_infer / i:.2f}x |")


def compiled_scorer(repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(640, 7, generator=g)
    mean, var = torch.rand(7, generator=g), torch.rand(7, generator=g) + 0.5
    head = torch.nn.Sequential(torch.nn.Linear(7, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    conv, images = torch.nn.Conv2d(32, 32, 3, padding=1), torch.randn(64, 32, 28, 28, generator=g)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return head((x - mean) / var.sqrt())[:, 0]

    start = time.perf_counter()
    compiled = torch.compile(predict, dynamic=False)
    with torch.no_grad():
        compiled(features)
    compile_s = time.perf_counter() - start
    print(f"\nScorer prediction (640 candidates), median of {repeats}; torch.compile took {compile_s:.1f} s\n")
    print("| prediction | after a convolution, us | back to back, us |\n|---|---|---|")
    for name, fn in (("eager", predict), ("torch.compile", compiled)):
        cells = []
        for after_conv in (True, False):
            times = []
            for _ in range(repeats):
                with torch.no_grad():
                    if after_conv:
                        conv(images)
                    start = time.perf_counter()
                    fn(features)
                    times.append(time.perf_counter() - start)
            cells.append(f"{1e6 * statistics.median(times):.1f}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time the scorer's prediction under torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layouts(args.rounds, args.steps)
    if args.compile:
        compiled_scorer(300)


if __name__ == "__main__":
    main()
