"""Kept language models read on held-out text the run never looked at: the LM recipe's eval (and so early
stopping's choice of the best model) reads the first `data.extra.validation_blocks` blocks of the validation
documents; this script reads the models each run kept (`train.keep_best` writes OUT/best/step-N) on every other
block of those documents, so a kept eval that is the lowest of noisy ones does not set the comparison.

Each run's model is rebuilt from its own config.yaml and loaded from OUT/best/step-N/model.safetensors (or the
newest OUT/checkpoints/step-N with `--from checkpoints`). Differences are paired by block against the first run
(the baseline); the 95% interval resamples blocks (a bootstrap, 2000 draws, seeded), which treats blocks as
independent although neighbouring blocks share a document, so read it as a lower bound on the uncertainty.

`--by-document` adds a table by validation document (a block belongs to the document its first token is in).
A run made with `data.extra.validation_blocks=0` evaluated on every block, so none is held out from it: the
comparison is then on all blocks (paired as above); `--first N` splits the blocks at N whatever the runs read.

Run: python benchmarks/lm_heldout.py runs/x/uniform/seed0 runs/x/selected/seed0 [more runs]
         [--from best|checkpoints] [--data-path FOLDER] [--by-document]      (markdown on stdout)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from online_select.checkpoint import list_checkpoints, load_checkpoint
from online_select.config import load_config
from online_select.tasks import build_task


def block_losses(model: torch.nn.Module, task) -> torch.Tensor:
    """Mean token loss of each validation block, from the batches the task's eval reads."""
    parts = task.validation_parts(model, torch.device("cpu"))
    return torch.cat([p.sum.double() / p.count.double() for p in parts])


def kept_model(run: Path, source: str) -> tuple[int, dict[str, torch.Tensor]]:
    found = list_checkpoints(run / source)
    if not found:
        raise SystemExit(f"{run / source} holds no complete checkpoint (train with train.keep_best=true, "
                         "or pass --from)")
    _, model_state, step = load_checkpoint(found[-1])
    if model_state is None:
        raise SystemExit(f"{found[-1]} has no model.safetensors")
    return step, model_state


def bootstrap(diff: torch.Tensor, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(len(diff), (draws, len(diff)), generator=g)
    means = diff[rows].mean(1).sort().values
    return float(means[int(0.025 * draws)]), float(means[int(0.975 * draws) - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders; the first is the baseline")
    parser.add_argument("--from", dest="source", choices=("best", "checkpoints"), default="best")
    parser.add_argument("--data-path", default="", help="the text folder, where it moved since the runs")
    parser.add_argument("--by-document", action="store_true", help="also a table by validation document")
    parser.add_argument("--first", type=int, default=None,
                        help="split at this many blocks instead of the runs' data.extra.validation_blocks")
    args = parser.parse_args()

    tasks: dict[str, object] = {}
    rows = []
    for run in map(Path, args.runs):
        overrides = ["data.extra.validation_blocks=0", "data.eval_size=0"]
        if args.data_path:
            overrides.append(f"data.path={args.data_path}")
        config = load_config(run / "config.yaml", overrides)
        if config.task != "noisy_corpus_lm":
            raise SystemExit(f"{run}: task {config.task!r}; this script reads noisy_corpus_lm runs")
        key = repr(config.data)
        if key not in tasks:
            tasks[key] = build_task(config)
        task = tasks[key]
        evals_read = int(load_config(run / "config.yaml", []).data.extra.get("validation_blocks", 64))
        step, state = kept_model(run, args.source)
        model = task.large_model()
        model.load_state_dict(state)
        losses = block_losses(model, task)
        # validation_blocks 0: the run's evals read every block, so none is held out from them
        selection_blocks = args.first if args.first is not None else (evals_read or len(losses))
        if not 0 <= selection_blocks <= len(losses):
            raise SystemExit(f"--first {selection_blocks}: the validation set has {len(losses)} blocks")
        rows.append((run, step, losses, selection_blocks, task))

    base_run, _, base, selection_blocks, task = rows[0]
    if any(len(r[2]) != len(base) or r[3] != selection_blocks for r in rows):
        raise SystemExit("the runs' evals read different validation blocks (different data settings); compare like "
                         "with like, or split them alike with --first")
    held_out = len(base) - selection_blocks
    # The evals' blocks get a column of their own only when some are held out; else they are the compared ones.
    evals_column = [f"first {selection_blocks} blocks (the evals')"] if held_out > 0 else []
    if held_out > 0:
        compared, compared_name = slice(selection_blocks, None), f"other {held_out} blocks"
        split = f"the evals read the first {selection_blocks}, the other {held_out} are read here for the first time"
    else:
        compared, compared_name = slice(None), f"all {len(base)} blocks"
        split = "the evals read every block, so none is held out: Δ compares on all of them"
    print(f"validation blocks: {len(base)}; {split}; mean token loss (nats) per block, blocks weighted equally; "
          f"Δ against {base_run}, paired by block, 95% bootstrap interval over blocks")
    print()
    header = ["run", "kept step", *evals_column, compared_name, f"Δ {compared_name}", "95% interval",
              "blocks where lower"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for run, step, losses, _, _ in rows:
        diff = losses[compared] - base[compared]
        low, high = bootstrap(diff)
        lower = float((diff < 0).double().mean()) if run != base_run else float("nan")
        interval = "–" if run == base_run else f"[{low:+.4f}, {high:+.4f}]"
        delta = "–" if run == base_run else f"{float(diff.mean()):+.4f}"
        share = "–" if run == base_run else f"{100 * lower:.0f}%"
        first = [f"{float(losses[:selection_blocks].mean()):.4f}" if selection_blocks else "–"] if evals_column else []
        cells = [run, step, *first, f"{float(losses[compared].mean()):.4f}", delta, interval, share]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")

    if args.by_document:
        names, owner = task.document_names["validation"], task.corpus.validation_document
        print()
        print("| validation document | blocks | " + " | ".join(f"run {i}" for i in range(len(rows)))
              + " | " + " | ".join(f"Δ run {i}" for i in range(1, len(rows))) + " |")
        print("|---|---|" + "---|" * (2 * len(rows) - 1))
        for index, name in enumerate(names):
            mask = owner == index
            if not mask.any():
                continue
            means = [float(r[2][mask].mean()) for r in rows]
            print(f"| {name} | {int(mask.sum())} | " + " | ".join(f"{m:.3f}" for m in means) + " | "
                  + " | ".join(f"{m - means[0]:+.3f}" for m in means[1:]) + " |")
        print()
        print("runs: " + "; ".join(f"{i}: {r[0]}" for i, r in enumerate(rows)))


if __name__ == "__main__":
    main()
