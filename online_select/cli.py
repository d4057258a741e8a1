"""``online-select`` command line: ``train`` a recipe, ``bench`` policies side by side, ``report``
runs as an HTML page, create a W&B ``dashboard``."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from . import __version__
from .checkpoint import CheckpointError
from .config import ConfigError, load_config

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    from .distributed import is_main_process
    from .loop import train

    config = load_config(args.recipe, args.overrides)
    if args.reuse:
        from .bench import finished_everywhere

        if finished_everywhere(config, config.output_dir):
            if is_main_process():
                print(f"online_select: reusing the finished run in {config.output_dir}")
            return 0
    final = train(config)
    if final and is_main_process():
        shown = {k: v for k, v in final.items() if k in ("step", "wall_s", "eval/accuracy", "eval/loss")}
        print(f"online_select: finished {config.output_dir}: {shown}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import parse_budgets, parse_learning_rates, run_bench
    from .policies import get_policy

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    try:
        for policy in policies:  # before any run trains: a typo must not cost the runs before it
            get_policy(policy)
        budgets = parse_budgets(args.budget, policies)
        learning_rates = parse_learning_rates(args.lr, policies)
    except ValueError as exc:
        print(f"online-select bench: {exc}", file=sys.stderr)
        return 2
    config = load_config(args.recipe, args.overrides)
    run_bench(
        config,
        policies,
        seeds=args.seeds,
        out_dir=args.out,
        sweep_ratios=[int(r) for r in args.sweep.split(",")] if args.sweep else None,
        smooth=args.smooth,
        metric=args.metric,
        mode=args.mode,
        targets=[float(t) for t in args.targets.split(",")] if args.targets else None,
        reuse=args.reuse,
        budgets=budgets or None,
        evals_per_run=args.evals_per_run,
        learning_rates=learning_rates or None,
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    try:
        page = write_report(args.run_dirs, args.out, title=args.title)
    except (FileNotFoundError, ValueError) as exc:
        print(f"online-select report: {exc}", file=sys.stderr)
        return 2
    print(f"online-select report: wrote {page} (figures in {page.parent / (page.stem + '_figures')})")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from .dashboard import create_dashboard, selection_workspace

    if args.dry_run:
        workspace = selection_workspace(args.entity, args.project, args.name)
        print(f"online-select dashboard: {len(workspace.sections)} sections: " + ", ".join(s.name for s in workspace.sections))
        return 0
    try:
        url = create_dashboard(args.entity, args.project, args.name)
    except RuntimeError as exc:
        print(f"online-select dashboard: {exc}", file=sys.stderr)
        return 2
    print(f"online-select dashboard: saved {url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="online-select", description="Online in-batch data selection.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a recipe (YAML) with dotted key=value overrides")
    train.add_argument("recipe", help="path to a recipe YAML")
    train.add_argument("overrides", nargs="*", help="e.g. selection.policy=uniform train.max_steps=500 seed=1")
    train.add_argument(
        "--reuse", action="store_true",
        help="do nothing if output_dir already holds a finished run of the same config (else train as usual)",
    )
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
    bench.add_argument(
        "--smooth", type=int, default=3, help="compare rolling means over this many evals (1: raw evals)"
    )
    bench.add_argument(
        "--targets", default="", help="comma-separated metric values (e.g. 0.85,0.87): steps and seconds to reach each"
    )
    bench.add_argument("--metric", default=None, help="eval metric to compare on (default: the task's, e.g. eval/accuracy)")
    bench.add_argument("--mode", default=None, choices=["max", "min"], help="whether higher (max) or lower (min) is better")
    bench.add_argument(
        "--reuse", action="store_true",
        help="read back runs already finished in --out with the same config instead of running them again",
    )
    bench.add_argument(
        "--budget", action="append", default=[], metavar="POLICY=STEPS[,STEPS...]",
        help="run POLICY over these train.max_steps, each with its own schedule (repeat per policy); the table then "
        "reads every run against uniform's best budget, e.g. --budget uniform=4000,8000 --budget predicted_learnability=3000",
    )
    bench.add_argument(
        "--lr", action="append", default=[], metavar="POLICY=LR[,LR...]",
        help="run POLICY with each of these train.lr (repeat per policy), so each policy is read at its own best "
        "learning rate; the table then reads every run against uniform's best run over its budgets and learning rates, "
        "e.g. --lr uniform=0.0005,0.001 --lr predicted_learnability=0.002",
    )
    bench.add_argument(
        "--evals-per-run", type=int, default=None, metavar="N",
        help="evaluate every max_steps // N steps in every run (default: the recipe's train.eval_every)",
    )
    bench.set_defaults(func=_bench)

    report = sub.add_parser("report", help="turn runs' metrics.jsonl into a self-contained HTML page (offline)")
    report.add_argument("run_dirs", nargs="+", help="run output folders, or folders holding several (e.g. a bench --out)")
    report.add_argument("--out", default=None, help="the HTML file (default: RUN_DIR/report.html for one run, "
                        "./online_select_report.html for several)")
    report.add_argument("--title", default="online_select report")
    report.set_defaults(func=_report, overrides=[])

    dashboard = sub.add_parser("dashboard", help="create the selection-telemetry workspace in W&B (needs wandb login)")
    dashboard.add_argument("--entity", required=True, help="W&B user or team")
    dashboard.add_argument("--project", required=True, help="W&B project the runs log to (logging.project)")
    dashboard.add_argument("--name", default="online_select: selection telemetry", help="workspace name")
    dashboard.add_argument("--dry-run", action="store_true", help="build the definition offline and list its sections")
    dashboard.set_defaults(func=_dashboard, overrides=[])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parser.parse_known_args(argv)
    unknown_flags = [item for item in rest if item.startswith("-")]
    if unknown_flags or not hasattr(args, "overrides") or (rest and args.command in ("report", "dashboard")):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.overrides = list(args.overrides) + rest
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"online-select: config error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, CheckpointError, yaml.YAMLError) as exc:
        # Bad input (an unknown policy, a data folder without its files, an unreadable checkpoint, broken YAML)
        # as one line; ONLINE_SELECT_TRACEBACK=1 shows where it was raised.
        if os.environ.get("ONLINE_SELECT_TRACEBACK"):
            raise
        print(f"online-select: error: {type(exc).__name__}: {exc} (ONLINE_SELECT_TRACEBACK=1 shows the traceback)",
              file=sys.stderr)
        return 2
    finally:
        from .distributed import end_process_group

        end_process_group()


if __name__ == "__main__":
    sys.exit(main())
