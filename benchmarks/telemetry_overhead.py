"""What selection telemetry costs a training step. Prints two tables.

1. End to end, side by side in one process: the ready loop on noisy Fashion-MNIST (recipe defaults:
   B=640, k=64, the small CNN) with W&B offline in every variant, telemetry off / on without audits /
   on with the default audits. Variants run interleaved, ``--rounds`` times; the table gives the median
   milliseconds per step of everything after the reference is built (steps, logging, audits, tables,
   the one final evaluation) and the ratio to telemetry off.
2. Per call: each telemetry call on real selector output, and its cost per step at the recipe's
   default cadence (``log_every``, ``audit_every``, ``table_every``).

Run:  python benchmarks/telemetry_overhead.py [--steps 300] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from online_select.config import load_config  # noqa: E402
from online_select.loop import train  # noqa: E402

RECIPE = ROOT / "recipes" / "fashion_mnist_noisy.yaml"
VARIANTS = {
    "telemetry off": ["logging.telemetry=false"],
    "telemetry on, no audits": ["logging.telemetry=true", "logging.audit_every=0"],
    "telemetry on (defaults)": ["logging.telemetry=true"],
}


def end_to_end(args: argparse.Namespace, work: Path) -> None:
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    large_ms: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        for name, extra in VARIANTS.items():
            out = work / f"{name.replace(' ', '_').replace(',', '').replace('(', '').replace(')', '')}-{round_}"
            config = load_config(RECIPE, [
                f"output_dir={out}", f"train.max_steps={args.steps}", f"train.eval_every={args.steps}",
                "train.checkpoint_every=0", f"train.threads={args.threads}", "train.progress=false",
                f"data.max_train_samples={args.train_samples}", "data.eval_size=2000", "reference.epochs=1",
                "logging.trackers=[wandb]", *extra,
            ])
            start = time.perf_counter()
            final = train(config)
            total = time.perf_counter() - start
            steps_s = total - final.get("reference_seconds", 0.0)
            times[name].append(1000 * steps_s / args.steps)
            large_ms[name].append(final.get("time/large_ms", float("nan")))
            print(f"  round {round_} {name}: {1000 * steps_s / args.steps:.1f} ms/step", flush=True)
    base = statistics.median(times["telemetry off"])
    print(f"\nEnd to end: {args.steps} steps, B=640, k=64, {args.threads} thread(s), W&B offline in every variant, "
          f"median of {args.rounds} interleaved rounds\n")
    print("| variant | ms/step (median) | all rounds | ratio to off | large step ms (median) |")
    print("|---|---|---|---|---|")
    for name in VARIANTS:
        median = statistics.median(times[name])
        rounds = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"| {name} | {median:.1f} | {rounds} | {median / base:.3f} | {statistics.median(large_ms[name]):.1f} |")


def per_call(args: argparse.Namespace, work: Path) -> None:
    from online_select import OnlineSelector, ReferenceTable, Scorer
    from online_select.config import Config
    from online_select.models import small_cnn
    from online_select.telemetry import SelectionTelemetry, log_example_tables, log_histograms

    defaults = Config().logging
    torch.manual_seed(0)
    num_ids, batch = 60000, 640
    reference = ReferenceTable(torch.rand(num_ids) * 2)
    model = small_cnn()  # the recipe's large model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def large_loss(candidates):
        return torch.nn.functional.cross_entropy(model(candidates["input"]), candidates["label"], reduction="none")

    selector = OnlineSelector("predicted_learnability", keep=64, scorer=Scorer(), reference=reference, label_floor=0.1)
    telemetry = SelectionTelemetry(selector, large_loss_fn=large_loss, audit_every=defaults.audit_every,
                                   audit_size=defaults.audit_size, table_every=defaults.table_every)

    def candidates():
        ids = torch.randint(0, num_ids, (batch,))
        return {"input": torch.randn(batch, 1, 28, 28), "label": ids % 10, "noisy": ids % 3 == 0, "id": ids}

    def lookup(ids):
        return {"example": [torch.rand(1, 28, 28) for _ in ids], "label": (ids % 10).tolist()}

    class WandbOnly:  # an Accelerate-like holder of one offline W&B tracker
        def __init__(self, run):
            self.trackers = [type("T", (), {"name": "wandb", "log": lambda self, values, step: run.log(values, step=step)})()]

    import wandb

    run = wandb.init(project="telemetry-overhead", dir=str(work), mode="offline")
    accelerator = WandbOnly(run)
    costs: dict[str, list[float]] = {"large step (fwd+bwd+AdamW on k=64)": [], "record_step": [], "step_metrics": [], "log_histograms (W&B)": [], "audit": [],
                                     "example tables (W&B + jsonl)": []}
    for step in range(1, 401):
        batch_ = candidates()
        selected = selector.select(batch_)
        if step % 20 == 0:
            start = time.perf_counter()
            telemetry.audit(batch_, selected)
            costs["audit"].append(time.perf_counter() - start)
        start = time.perf_counter()
        telemetry.record_step(batch_, selected, {"large": 0.03})
        costs["record_step"].append(time.perf_counter() - start)
        start = time.perf_counter()
        losses = large_loss(selected.batch)
        loss = selector.observe(selected, losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        costs["large step (fwd+bwd+AdamW on k=64)"].append(time.perf_counter() - start - selected.timings["observe_s"])
        if step % 10 == 0:
            start = time.perf_counter()
            line = telemetry.step_metrics()
            costs["step_metrics"].append(time.perf_counter() - start)
            start = time.perf_counter()
            log_histograms(accelerator, step, line["selection/score_hist"])
            costs["log_histograms (W&B)"].append(time.perf_counter() - start)
        if step % 100 == 0:
            start = time.perf_counter()
            log_example_tables(accelerator, step, telemetry.example_rows(defaults.table_rows, lookup), work / "tables.jsonl")
            costs["example tables (W&B + jsonl)"].append(time.perf_counter() - start)
    run.finish()
    every = {"large step (fwd+bwd+AdamW on k=64)": 1, "record_step": 1, "step_metrics": defaults.log_every, "log_histograms (W&B)": defaults.log_every,
             "audit": defaults.audit_every, "example tables (W&B + jsonl)": defaults.table_every}
    large = 1000 * statistics.median(costs["large step (fwd+bwd+AdamW on k=64)"])
    print(f"\nPer call, side by side with the large step (the recipe's CNN; B=640, k=64, {args.threads} thread(s), "
          f"W&B offline; cadences: the recipe defaults)\n")
    print("| call | median ms per call | calls | every N steps (default) | ms per step, amortized | % of the large step |")
    print("|---|---|---|---|---|---|")
    total = 0.0
    for name, values in costs.items():
        median = 1000 * statistics.median(values)
        amortized = median / every[name]
        if not name.startswith("large"):
            total += amortized
        print(f"| {name} | {median:.3f} | {len(values)} | {every[name]} | {amortized:.4f} | {100 * amortized / large:.2f} |")
    print(f"| **all telemetry** | | | | {total:.4f} | {100 * total / large:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-samples", type=int, default=20000, help="training subset (the reference is built on it)")
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("WANDB_DIR", str(work))
        per_call(args, work)
        if not args.skip_end_to_end:
            end_to_end(args, work)


if __name__ == "__main__":
    main()
