"""The finite and label-floor checks of a selection step against the forms they replaced, in one training run.

Across separate runs this VM's speed drifts by more than a small op costs, so this compares the library's
``all_finite`` and ``plausible_labels`` with the forms they replaced (``isfinite(values).all()`` and
``exp(-max(loss, 0)) >= floor``) in one process: the two forms take turns by blocks of ``--block`` steps (the
recipe's scorer update period, so each form gets as many scorer updates), on the Fashion-MNIST recipe. Prints,
per form, the median and mean microseconds of each check's calls and of a step's ``select`` + ``observe``.

Run:  python benchmarks/interleaved_checks.py [--steps 1500] [--skip 300] [--block 4] [recipe overrides...]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import torch

from online_select import memory, policies, rules, selector
from online_select._tensors import all_finite
from online_select.config import load_config
from online_select.loop import train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist_noisy.yaml"
LIBRARY, REPLACED = "now", "before"


def _isfinite_all(values: torch.Tensor) -> bool:
    return bool(torch.isfinite(values).all())


def _exp_floor(reference_loss: torch.Tensor, label_floor: float) -> torch.Tensor:
    return torch.exp(-reference_loss.clamp_min(0.0)) >= label_floor


FORMS = {
    LIBRARY: {"all_finite": all_finite, "plausible_labels": policies.plausible_labels},
    REPLACED: {"all_finite": _isfinite_all, "plausible_labels": _exp_floor},
}
WHERE = {"all_finite": (rules, selector, memory), "plausible_labels": (selector, policies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--skip", type=int, default=300, help="steps not timed first (warm-up)")
    parser.add_argument("--block", type=int, default=4, help="steps in a row with one form")
    args, overrides = parser.parse_known_args()
    seconds: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    now = {"form": LIBRARY, "step": 0, "select_s": 0.0}

    def timed_check(name: str):
        def check(*a):
            start = time.perf_counter()
            out = FORMS[now["form"]][name](*a)
            if now["step"] > args.skip:
                seconds[(name, now["form"])].append(time.perf_counter() - start)
            return out

        return check

    for name, modules in WHERE.items():
        for module in modules:
            setattr(module, name, timed_check(name))
    select, observe = selector.OnlineSelector.select, selector.OnlineSelector.observe

    def timed_select(self, *a, **k):
        now["step"] += 1
        now["form"] = LIBRARY if (now["step"] // args.block) % 2 == 0 else REPLACED
        start = time.perf_counter()
        out = select(self, *a, **k)
        now["select_s"] = time.perf_counter() - start
        return out

    def timed_observe(self, *a, **k):
        start = time.perf_counter()
        out = observe(self, *a, **k)
        if now["step"] > args.skip:
            seconds[("select + observe", now["form"])].append(now["select_s"] + time.perf_counter() - start)
        return out

    selector.OnlineSelector.select, selector.OnlineSelector.observe = timed_select, timed_observe
    with tempfile.TemporaryDirectory() as out:
        train(load_config(str(RECIPE), [
            f"output_dir={out}", f"train.max_steps={args.steps}", "train.eval_every=0", "train.checkpoint_every=0",
            "logging.trackers=[]", "train.progress=false", *overrides,
        ]))
    print(f"\n{args.steps} steps of {RECIPE.name}, the forms taking turns by blocks of {args.block} steps, "
          f"the first {args.skip} steps untimed\n")
    print("| timed | form | calls | median us | mean us |")
    print("|---|---|---|---|---|")
    for (name, form), values in sorted(seconds.items(), key=lambda item: (item[0][0], item[0][1] != REPLACED)):
        print(f"| {name} | {form} | {len(values)} | {1e6 * statistics.median(values):.1f} | {1e6 * statistics.mean(values):.1f} |")


if __name__ == "__main__":
    main()
