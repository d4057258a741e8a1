"""Which tensor ops a selection step runs, and what each costs where it runs (between the large model's steps).

Trains the Fashion-MNIST recipe in this process and, for ``--steps`` steps after ``--skip`` warm-up steps, times
every aten op that ``OnlineSelector.select`` and ``OnlineSelector.observe`` dispatch (a ``TorchDispatchMode``),
keyed by the library line that called it. Prints the ops per call, the summed op time per step and a table of
the costliest call sites. The mode's own Python runs between the ops, so the sum is a little above the loop's
``time/select_ms + time/observe_ms``; compare checkouts with this script side by side, not with the loop's split.

Run:  python benchmarks/selection_ops.py [--steps 200] [--skip 200] [--top 30] [recipe overrides...]
      PYTHONPATH=/tmp/before python benchmarks/selection_ops.py   # another checkout
"""

from __future__ import annotations

import argparse
import collections
import functools
import tempfile
import time
import traceback
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

import online_select
from online_select import selector as selector_module
from online_select.config import load_config
from online_select.loop import train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist_noisy.yaml"
PACKAGE = str(Path(online_select.__file__).parent)


class _OpTimer(TorchDispatchMode):
    def __init__(self, method: str, seconds: dict, calls: collections.Counter) -> None:
        super().__init__()
        self.method, self.seconds, self.calls = method, seconds, calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        frames = [f for f in traceback.extract_stack(limit=16) if f.filename.startswith(PACKAGE)]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        site = (self.method, str(func).removeprefix("aten."), where)
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds[site] += time.perf_counter() - start
        self.calls[site] += 1
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--skip", type=int, default=200)
    parser.add_argument("--top", type=int, default=30)
    args, overrides = parser.parse_known_args()
    seconds: dict = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    method_calls: collections.Counter = collections.Counter()
    for method in ("select", "observe"):
        original = getattr(selector_module.OnlineSelector, method)

        def timed(self, *a, _original=original, _method=method, **k):
            method_calls[_method] += 1
            if args.skip < method_calls[_method] <= args.skip + args.steps:
                with _OpTimer(_method, seconds, calls):
                    return _original(self, *a, **k)
            return _original(self, *a, **k)

        setattr(selector_module.OnlineSelector, method, functools.wraps(original)(timed))
    with tempfile.TemporaryDirectory() as out:
        train(load_config(str(RECIPE), [
            f"output_dir={out}", f"train.max_steps={args.skip + args.steps}", "train.eval_every=0",
            "train.checkpoint_every=0", "logging.trackers=[]", "train.progress=false", *overrides,
        ]))
    n = args.steps
    print(f"\n{n} steps after {args.skip}, {RECIPE.name}, online_select from {PACKAGE}\n")
    for method in ("select", "observe"):
        ops = sum(c for site, c in calls.items() if site[0] == method) / n
        us = 1e6 * sum(s for site, s in seconds.items() if site[0] == method) / n
        print(f"- {method}: {ops:.1f} ops a step, {us:.0f} us a step")
    print(f"- both: {1e6 * sum(seconds.values()) / n:.0f} us a step\n")
    print("| call site | op | in | calls a step | us a step |")
    print("|---|---|---|---|---|")
    for site, s in sorted(seconds.items(), key=lambda item: -item[1])[: args.top]:
        print(f"| {site[2]} | `{site[1]}` | {site[0]} | {calls[site] / n:.2f} | {1e6 * s / n:.1f} |")


if __name__ == "__main__":
    main()
