"""A reference table for the whole-corpus LM recipe that filters with one bigram and ranks with another.

The recipe's reference is a bigram fitted on the clean holdout (1,056 blocks): it keeps junk out (its floor) and
is also the reducible loss's estimate of each block's irreducible loss. On clean blocks the holdout is small, so
that estimate is poor (the bigram reads the validation speeches at 5.21 nats, one fitted on every clean training
block at 4.69). Twin halves of the training blocks (each half's bigram scores the other) estimate it better but
learn the boilerplate and markup the junk repeats, so alone they cannot be the filter. This table keeps the
holdout bigram's eligibility (its loss at most 6.5 nats: the recipe's floor, ``p_ref = exp(-6.5)``) and gives
eligible blocks the twin-halves bigram's loss and features; blocks the holdout bigram rejects get a loss of
20 nats, under any floor.

Run: python benchmarks/lm_hybrid_reference.py OUT.safetensors [recipe overrides...]
     then: online-select train recipes/lm_whole_corpus.yaml reference.kind=file reference.path=OUT.safetensors
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import torch

from online_select.config import load_config
from online_select.lm_corpus import BigramLM
from online_select.reference import ReferenceTable
from online_select.selector import spearman
from online_select.tasks import build_task

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "lm_whole_corpus.yaml"
ELIGIBLE_LOSS = 6.5  # the recipe's label_floor 0.0015 is exp(-6.5), rounded
REJECTED_LOSS = 20.0


def main(out: str, overrides: list[str]) -> None:
    config = load_config(RECIPE, [*overrides, "reference.kind=holdout"])
    task = build_task(config)  # the corpus (its tokenizer takes most of the time) is built once for both references
    holdout, _ = task.build_reference(config.seed)
    task.config = dataclasses.replace(config, reference=dataclasses.replace(config.reference, kind="twin_halves"))
    twin, _ = task.build_reference(config.seed)
    eligible = holdout.table <= ELIGIBLE_LOSS
    losses = torch.where(eligible, twin.table, torch.full_like(twin.table, REJECTED_LOSS))
    ReferenceTable(losses, twin.extra).save(out, task.reference_fingerprint())
    corpus = task.corpus
    junk = corpus.kind > 0
    clean = ~junk
    rank_correlation = spearman(holdout.table[clean], twin.table[clean])
    print("| floor (p_ref) | eligible blocks | junk among them | clean blocks excluded | Spearman of the two on clean blocks |")
    print("|---|---|---|---|---|")
    print(f"| {math.exp(-ELIGIBLE_LOSS):.5f} (loss {ELIGIBLE_LOSS}) | {int(eligible.sum())} | {int((eligible & junk).sum())} | "
          f"{int((~eligible & clean).sum())} | {rank_correlation:.3f} |")
    for name, blocks in (("the clean holdout", corpus.holdout), ("every clean training block", corpus.train[clean])):
        loss = float(BigramLM(corpus.vocab_size).fit(blocks).token_losses(corpus.validation).mean())
        print(f"\nvalidation loss of a bigram fitted on {name} ({len(blocks)} blocks): {loss:.2f} nats")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
