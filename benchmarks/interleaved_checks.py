"""Two ways of one selection-step check, alternating call by call inside one training run.

Across separate runs this VM's speed drifts by more than a small op costs, so this compares the library's
``all_finite`` and ``plausible_labels`` with the forms they replaced (``isfinite(values).all()`` and
``exp(-max(loss, 0)) >= floor``) in the same process, each call taking the other form than the call before,
where they run: between the large model's steps of the Fashion-MNIST recipe. Prints the median and mean
microseconds per call of each.

Run:  python benchmarks/interleaved_checks.py [--steps 1000] [--skip 400] [recipe overrides...]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from online_select import memory, policies, rules, selector
from online_select._tensors import all_finite
from online_select.config import load_config
from online_select.loop import train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist_noisy.yaml"


def _isfinite_all(values: torch.Tensor) -> bool:
    return bool(torch.isfinite(values).all())


def _exp_floor(reference_loss: torch.Tensor, label_floor: float) -> torch.Tensor:
    return torch.exp(-reference_loss.clamp_min(0.0)) >= label_floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--skip", type=int, default=400, help="calls of each check not timed (warm-up)")
    args, overrides = parser.parse_known_args()
    seconds: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    calls: collections.Counter = collections.Counter()

    def alternating(name: str, library: Callable, replaced: Callable, replaced_name: str) -> Callable:
        def check(*a):
            calls[name] += 1
            form, fn = (("library", library) if calls[name] % 2 else (replaced_name, replaced))
            start = time.perf_counter()
            out = fn(*a)
            if calls[name] > args.skip:
                seconds[(name, form)].append(time.perf_counter() - start)
            return out

        return check

    finite = alternating("all_finite", all_finite, _isfinite_all, "isfinite(values).all()")
    rules.all_finite = selector.all_finite = memory.all_finite = finite
    plausible = alternating("plausible_labels", policies.plausible_labels, _exp_floor, "exp(-max(loss, 0)) >= floor")
    selector.plausible_labels = policies.plausible_labels = plausible
    with tempfile.TemporaryDirectory() as out:
        train(load_config(str(RECIPE), [
            f"output_dir={out}", f"train.max_steps={args.steps}", "train.eval_every=0", "train.checkpoint_every=0",
            "logging.trackers=[]", "train.progress=false", *overrides,
        ]))
    print(f"\n{args.steps} steps of {RECIPE.name}; calls alternate between the two forms, the first {args.skip} untimed\n")
    print("| check | form | calls timed | median us | mean us |")
    print("|---|---|---|---|---|")
    for (name, form), values in sorted(seconds.items()):
        print(f"| {name} | `{form}` | {len(values)} | {1e6 * statistics.median(values):.1f} | {1e6 * statistics.mean(values):.1f} |")


if __name__ == "__main__":
    main()
