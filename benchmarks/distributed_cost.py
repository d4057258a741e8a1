"""Per-step cost of selection across processes: ``local`` vs ``global``, measured side by side.

Run (starts 2 CPU processes with gloo itself; or launch it with torchrun):

    python benchmarks/distributed_cost.py
    torchrun --nproc_per_node 2 benchmarks/distributed_cost.py

Each process holds B candidates per step and keeps k; the selector is the default
``predicted_learnability`` (scorer + reference table). The two modes alternate step by step in the
same processes so they share the machine's load. Times are the slowest process's per step (the step
waits for it), median over the measured steps; "moved" is how many selected samples changed process
in ``global`` mode (while the scorer is cold its scores tie, top-k breaks ties by position, and the
picks pile up on one process, so the early steps move the most). A one-process row (B and k, no
communication, measured alone before the processes start) shows what the same selection work costs
without any. The "plans of 4" rows select once per 4 steps (``select_steps``, ``local``), their times per step
(a plan's divided by 4): each step's ``observe`` gathers that step's losses, the plan's last one the rest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from online_select import OnlineSelector, ReferenceTable, Scorer
from online_select.distributed import ProcessGroup

PAYLOADS = {"1x28x28 f32 (3.1 KB)": (1, 28, 28), "3x96x96 f32 (110.6 KB)": (3, 96, 96)}
NUM_IDS = 60_000
PLAN_STEPS = 4
PLANNED = f"plans of {PLAN_STEPS}"


def _selector(mode: str, keep: int) -> OnlineSelector:
    table = ReferenceTable(torch.rand(NUM_IDS, generator=torch.Generator().manual_seed(1)) * 2.3)
    return OnlineSelector(
        "predicted_learnability", keep=keep, scorer=Scorer(), reference=table, label_floor=0.1, distributed=mode
    )


def _batch(step: int, rank: int, world: int, size: int, inputs: torch.Tensor) -> dict:
    ids = torch.randperm(NUM_IDS, generator=torch.Generator().manual_seed(step))[: size * world]
    ids = ids[rank * size : (rank + 1) * size]
    return {"input": inputs, "label": ids % 10, "id": ids}


def _plan(selector: OnlineSelector, batches: list[dict]) -> tuple[float, float, int]:
    """One plan over ``batches`` (one step's candidates each): select and observe seconds per step."""
    start = time.perf_counter()
    parts = selector.select_steps(batches)
    middle = time.perf_counter()
    for part in parts:
        selector.observe(part, (part.batch["id"] % 97).float() / 40)
    end = time.perf_counter()
    return (middle - start) / len(batches), (end - middle) / len(batches), 0


def _step(selector: OnlineSelector, batch: dict, rank: int, size: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    selected = selector.select(batch)
    middle = time.perf_counter()
    losses = (selected.batch["id"] % 97).float() / 40  # a stand-in for the large model's per-sample losses
    selector.observe(selected, losses)
    end = time.perf_counter()
    own = (selected.indices >= rank * size) & (selected.indices < (rank + 1) * size)
    moved = int((~own).sum()) if selected.selection_order is not None else 0
    return middle - start, end - middle, moved


def _measure(rank: int, world: int, args: argparse.Namespace) -> list[dict]:
    rows = []
    for payload, shape in PAYLOADS.items():
        inputs = torch.randn(args.candidates, *shape)
        modes = ("local", "global", PLANNED) if world > 1 else ("one process", PLANNED)
        selectors = {mode: _selector("global" if mode == "global" else "local", args.keep) for mode in modes}
        samples: dict[str, list] = {mode: [] for mode in modes}
        for step in range(args.warmup + args.steps):
            for mode in modes:
                if mode == PLANNED:  # a plan every PLAN_STEPS-th step, over those steps' candidates
                    if step % PLAN_STEPS:
                        continue
                    batches = [_batch(s, rank, world, args.candidates, inputs) for s in range(step, step + PLAN_STEPS)]
                    timing = _plan(selectors[mode], batches)
                else:
                    timing = _step(
                        selectors[mode], _batch(step, rank, world, args.candidates, inputs), rank, args.candidates
                    )
                if step >= args.warmup:
                    samples[mode].append(timing)
        for mode in modes:
            values = torch.tensor(samples[mode], dtype=torch.float64)
            if world > 1:  # per step: the slowest process's times, and all processes' moved samples
                gathered = [torch.empty_like(values) for _ in range(world)]
                dist.all_gather(gathered, values)
                stacked = torch.stack(gathered)
                values = torch.cat([stacked[:, :, :2].max(0).values, stacked[:, :, 2:].sum(0)], 1)
            select_ms = 1000 * statistics.median(values[:, 0].tolist())
            observe_ms = 1000 * statistics.median(values[:, 1].tolist())
            total_ms = 1000 * statistics.median((values[:, 0] + values[:, 1]).tolist())
            moved, most = float(values[:, 2].mean()), float(values[:, 2].max())
            features = selectors[mode].scorer.num_features
            comm_ms = _communication_ms(mode, args, inputs[0].numel() * 4, moved, features) if world > 1 else 0.0
            rows.append(
                {
                    "payload": payload,
                    "mode": mode,
                    "processes": world,
                    "select_ms": select_ms,
                    "observe_ms": observe_ms,
                    "total_ms": total_ms,
                    "moved": moved,
                    "most": most,
                    "moved_kb": moved * inputs[0].numel() * 4 / 1024,
                    "comm_ms": comm_ms,
                }
            )
    return rows


def _communication_ms(mode: str, args: argparse.Namespace, sample_bytes: int, moved: float, features: int) -> float:
    """The step's collectives alone, back to back with the sizes the selector used (no compute between,
    so no waiting on a descheduled process): the communication cost itself on this machine."""
    group = ProcessGroup.current()
    world, rank = group.world_size, group.rank
    observed = torch.zeros(args.keep, 7 + features, dtype=torch.float64)
    signals = torch.zeros(args.candidates, 3, dtype=torch.float64)  # id, reference loss, predicted loss
    per_peer = round(moved / world / (world - 1))
    row_bytes = sample_bytes + 4 * (features + 2)  # the sample, its scorer features, predicted and reference loss
    sends = torch.zeros(per_peer * (world - 1), row_bytes, dtype=torch.uint8)
    counts = [0 if peer == rank else per_peer for peer in range(world)]
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        if mode == PLANNED:  # a plan's collectives, per step: each step's losses, then the plan's rows once
            for _ in range(PLAN_STEPS):
                group.all_gather_rows(observed[:, :1], torch.zeros(0), max_rows=args.keep)
            group.all_gather_rows(observed.repeat(PLAN_STEPS, 1), torch.zeros(4), max_rows=args.keep * PLAN_STEPS)
            times.append((time.perf_counter() - start) / PLAN_STEPS)
            continue
        if mode == "global":
            group.all_gather_rows(signals, torch.zeros(1), max_rows=args.candidates)
            if per_peer:
                group.all_to_all_rows(sends, counts, counts)
        group.all_gather_rows(observed, torch.zeros(3), max_rows=args.keep)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _collective_ms(steps: int) -> float:
    """Median time of one tiny all_gather: the floor every collective pays on this machine."""
    times = []
    value = torch.zeros(1)
    parts = [torch.zeros(1) for _ in range(dist.get_world_size())]
    for _ in range(steps):
        start = time.perf_counter()
        dist.all_gather(parts, value)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _table(rows: list[dict], args: argparse.Namespace, collective_ms: float | None) -> str:
    lines = [
        f"B={args.candidates} candidates and k={args.keep} kept per process; median of {args.steps} steps "
        f"after {args.warmup} warm-up; CPU, gloo, 1 thread per process",
        "",
        "| payload per sample | mode | processes | select ms | observe ms | total ms/step | vs local (one process) "
        "| samples moved/step (mean, max) | KB moved/step (mean) | collectives alone ms/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        local = next((r for r in rows if r["payload"] == row["payload"] and r["processes"] == row["processes"]
                      and r["mode"] in ("local", "one process")), None)
        ratio = f"{row['total_ms'] / local['total_ms']:.2f}x" if local else "-"
        lines.append(
            f"| {row['payload']} | {row['mode']} | {row['processes']} | {row['select_ms']:.2f} "
            f"| {row['observe_ms']:.2f} | {row['total_ms']:.2f} | {ratio} | {row['moved']:.1f}, {row['most']:.0f} "
            f"| {row['moved_kb']:.0f} | {row['comm_ms']:.2f} |"
        )
    if collective_ms is not None:
        lines += [
            "",
            f"One tiny all_gather, back to back: {collective_ms:.2f} ms median. local makes 1 collective per step "
            "(observe), global 2 or 3 (the signals in select, the all_to_all when samples move, 1 in observe), "
            f"plans of {PLAN_STEPS} 1 a step and 1 more a plan. "
            "Step times above include waiting for the other process: with more runnable processes than cores "
            "they run in turns, so a collective waits for the other's compute; 'collectives alone' replays the "
            "same collectives back to back.",
        ]
    return "\n".join(lines)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, single: list[dict]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    _run(args, single)
    dist.destroy_process_group()


def _run(args: argparse.Namespace, single: list[dict]) -> None:
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = _measure(rank, world, args)
    collective_ms = _collective_ms(args.steps)
    if rank == 0:
        ordered = []
        for payload in PAYLOADS:
            ordered += [r for r in single if r["payload"] == payload] + [r for r in rows if r["payload"] == payload]
        print(_table(ordered, args, collective_ms), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=640, help="B per process")
    parser.add_argument("--keep", type=int, default=64, help="k per process")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if "RANK" in os.environ:  # started by torchrun: no one-process row
        dist.init_process_group("gloo")
        _run(args, [])
        dist.destroy_process_group()
        return
    single = _measure(0, 1, args)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(args.processes, port, args, single), nprocs=args.processes)


if __name__ == "__main__":
    main()
