"""Early stopping replayed on finished runs: where `train.early_stop_patience` would stop each run, the eval it
would keep (`train.keep_best`), and the steps it saves against a baseline run to its own best.

Seconds compare only between runs made one after the other on a quiet machine.
Runs are deterministic, so the rule (online_select.early_stopping.BestMetric, the loop's) applied to a run's
logged raw evals stops where the same run with early stopping stops. Losses are raw evals, not smoothed: early
stopping reads them as they come.

Run: python benchmarks/early_stop_replay.py --seeds=3 --patience=3,5,10 --min-delta=0 \\
         'runs/x/uniform/seed{seed}' 'runs/x/selected/seed{seed}'      (markdown on stdout)
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from online_select.bench import read_metrics
from online_select.config import best_metric, load_config
from online_select.early_stopping import BestMetric


def replay(lines: list[dict], metric: str, mode: str, patience: int, min_delta: float) -> tuple[dict, int, float]:
    """(the eval line it stops at, best step, best value) of early stopping over the logged evals; it stops at the
    last eval when patience never runs out."""
    tracker = BestMetric(metric, mode, patience, min_delta)
    for line in lines:
        tracker.update(line["step"], line)
        if tracker.should_stop:
            break
    assert tracker.best_value is not None, "no finite eval"
    return line, tracker.best_step, tracker.best_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", help="the baseline's run folder, with {seed}")
    parser.add_argument("run", help="the run folder to replay early stopping on, with {seed}")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--patience", default="3,5,10", help="comma-separated evals without improvement")
    parser.add_argument("--min-delta", type=float, default=0.0)
    args = parser.parse_args()

    config = load_config(Path(args.run.format(seed=0)) / "config.yaml", [])
    metric, mode = best_metric(config)
    pick = min if mode == "min" else max
    print(f"{metric} ({mode}), raw evals; min_delta {args.min_delta:g}; the baseline runs to its end, the run stops early")
    print()
    print("| patience (evals) | seed | stops at step | keeps step | kept " + metric + " | baseline best (step) "
          "| kept − baseline best | baseline steps to its best / steps run | seconds run | baseline seconds to its best "
          "/ seconds run |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for patience in (int(p) for p in args.patience.split(",")):
        ratios, gaps, time_ratios = [], [], []
        for seed in range(args.seeds):
            base = read_metrics(Path(args.baseline.format(seed=seed)) / "metrics.jsonl", metric)
            run = read_metrics(Path(args.run.format(seed=seed)) / "metrics.jsonl", metric)
            stop, kept_step, kept = replay(run, metric, mode, patience, args.min_delta)
            base_best = pick(base, key=lambda line: line[metric])
            ratio = base_best["step"] / stop["step"]
            time_ratio = base_best["wall_s"] / stop["wall_s"]
            gap = kept - base_best[metric]
            ratios.append(ratio)
            gaps.append(gap)
            time_ratios.append(time_ratio)
            print(f"| {patience} | {seed} | {stop['step']} | {kept_step} | {kept:.4f} | {base_best[metric]:.4f} "
                  f"({base_best['step']}) | {gap:+.4f} | {ratio:.2f}x | {stop['wall_s']:.0f} | {time_ratio:.2f}x |")
        if len(ratios) > 1:
            print(f"| {patience} | mean ± std | | | | | {statistics.mean(gaps):+.4f} ± {statistics.stdev(gaps):.4f} "
                  f"| {statistics.mean(ratios):.2f} ± {statistics.stdev(ratios):.2f}x | "
                  f"| {statistics.mean(time_ratios):.2f} ± {statistics.stdev(time_ratios):.2f}x |")


if __name__ == "__main__":
    main()
