"""``online-select`` command line: ``train`` a recipe, ``bench`` policies side by side."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    from .loop import train

    config = load_config(args.recipe, args.overrides)
    final = train(config)
    if final:
        shown = {k: v for k, v in final.items() if k in ("step", "wall_s", "eval/accuracy", "eval/loss")}
        print(f"online_select: finished {config.output_dir}: {shown}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    config = load_config(args.recipe, args.overrides)
    run_bench(
        config,
        policies,
        seeds=args.seeds,
        out_dir=args.out,
        sweep_ratios=[int(r) for r in args.sweep.split(",")] if args.sweep else None,
        metric=args.metric,
        mode=args.mode,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="online-select", description="Online in-batch data selection.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a recipe (YAML) with dotted key=value overrides")
    train.add_argument("recipe", help="path to a recipe YAML")
    train.add_argument("overrides", nargs="*", help="e.g. selection.policy=uniform train.max_steps=500 seed=1")
    train.set_defaults(func=_train)

    bench = sub.add_parser("bench", help="run policies side by side under one budget; write a table and a plot")
    bench.add_argument("recipe")
    bench.add_argument("overrides", nargs="*")
    bench.add_argument("--policies", default="uniform,predicted_learnability", help="comma-separated policy names")
    bench.add_argument("--seeds", type=int, default=1, help="seeds per policy (0..N-1 added to the recipe's seed)")
    bench.add_argument("--out", default=None, help="output folder (default: <output_dir>/bench)")
    bench.add_argument(
        "--sweep", default="", help="comma-separated B/k ratios (e.g. 2,5,10,20): also run a keep-ratio sweep"
    )
    bench.add_argument("--metric", default=None, help="eval metric to compare on (default: the task's, e.g. eval/accuracy)")
    bench.add_argument("--mode", default=None, choices=["max", "min"], help="whether higher (max) or lower (min) is better")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parser.parse_known_args(argv)
    unknown_flags = [item for item in rest if item.startswith("-")]
    if unknown_flags or not hasattr(args, "overrides"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.overrides = list(args.overrides) + rest
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"online-select: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
