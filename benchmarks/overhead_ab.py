"""Selection overhead of two (or more) checkouts of this library, or settings, side by side on this machine.

Each round trains the Fashion-MNIST recipe for ``--steps`` steps with each checkout (and each ``--variant``,
a space-separated list of recipe overrides) in turn (every other round in reverse order), in a fresh process
that imports that checkout, so machine drift hits every run alike. Prints one table: the
per-step time split (median and range over rounds) and the final accuracy, which is equal across
checkouts when a change leaves the selections as they were.

Run:  git worktree add /tmp/before <commit>
      python benchmarks/overhead_ab.py /tmp/before . [--steps 800] [--rounds 3] [recipe overrides...]
      python benchmarks/overhead_ab.py . --variant "" --variant "selection.plan_steps=4"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "fashion_mnist_noisy.yaml"
FIELDS = ("time/load_ms", "time/select_ms", "time/observe_ms", "time/large_ms", "time/overhead_pct", "wall_s")

RUN = """
import json, sys
from online_select.config import load_config
from online_select.loop import train
final = train(load_config(sys.argv[1], sys.argv[2:]))
print("RESULT " + json.dumps({k: v for k, v in final.items() if isinstance(v, (int, float))}))
"""


def commit_of(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip() + ("" if clean(tree) else "+changes")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "?"


def clean(tree: Path) -> bool:
    status = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True).stdout
    return not status.strip()


def run_once(tree: Path, variant: str, out: Path, args: argparse.Namespace) -> dict:
    overrides = [
        f"output_dir={out}", f"train.max_steps={args.steps}", f"train.eval_every={args.steps}",
        "train.checkpoint_every=0", "logging.trackers=[]", f"train.threads={args.threads}", "train.progress=false",
        *args.overrides, *variant.split(),
    ]
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, "-c", RUN, str(RECIPE), *overrides], cwd=tree, env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"training with {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", type=Path, help="checkouts of online_select to compare")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", action="append", default=None,
                        help="recipe overrides of one variant, space-separated (repeat to compare; '' for the recipe)")
    args, args.overrides = parser.parse_known_args()
    trees = [tree.resolve() for tree in args.trees]
    for tree in trees:
        if not (tree / "online_select" / "__init__.py").exists():
            sys.exit(f"{tree} is not a checkout of online_select")
    runs = [(tree, variant) for tree in trees for variant in (args.variant or [""])]
    results: dict[tuple[Path, str], list[dict]] = {run: [] for run in runs}
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(args.rounds):
            # Every other round in reverse order, so a drift within a round favours no run.
            order = list(enumerate(runs))
            for i, (tree, variant) in order if round_ % 2 == 0 else order[::-1]:
                final = run_once(tree, variant, Path(work) / f"{i}-{round_}", args)
                results[(tree, variant)].append(final)
                print(f"round {round_ + 1}: {tree} {variant} overhead {final['time/overhead_pct']:.2f}%, "
                      f"accuracy {100 * final['eval/accuracy']:.2f}%", file=sys.stderr, flush=True)
    print(f"\n{args.steps} steps of {RECIPE.name}, {args.rounds} rounds, checkouts alternating, "
          f"train.threads={args.threads}; median [min-max] over rounds\n")
    print("| checkout | commit | overrides | load ms | select ms | observe ms | large step ms | overhead % of large step | training seconds | final acc % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tree, variant in runs:
        cells = []
        for field in FIELDS:
            values = [final[field] for final in results[(tree, variant)]]
            cells.append(f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]")
        accuracies = sorted({f"{100 * final['eval/accuracy']:.2f}" for final in results[(tree, variant)]})
        print(f"| {tree} | {commit_of(tree)} | {variant or '–'} | " + " | ".join(cells) + f" | {', '.join(accuracies)} |")


if __name__ == "__main__":
    main()
