"""Host memory over a run: peak resident set size at each eval of a run folder's metrics.jsonl.

Run: python benchmarks/peak_rss.py RUN_DIR        (prints a markdown table)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run_dir: str) -> None:
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [line for line in lines if "sys/peak_rss_mb" in line and "eval/accuracy" in line]
    if not evals:
        sys.exit(f"{run_dir}/metrics.jsonl has no eval lines with sys/peak_rss_mb")
    print("| step | training seconds | eval acc % | peak RSS MiB |\n|---|---|---|---|")
    for line in evals:
        print(f"| {line['step']} | {line['wall_s']:.0f} | {100 * line['eval/accuracy']:.2f} | {line['sys/peak_rss_mb']:.1f} |")
    first = next((line for line in evals if line["step"] >= 1000), evals[0])
    growth = evals[-1]["sys/peak_rss_mb"] - first["sys/peak_rss_mb"]
    print(f"\nPeak RSS grew {growth:.1f} MiB from step {first['step']} to step {evals[-1]['step']}.")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
