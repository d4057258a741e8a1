"""Does the LM recipe's gain come from the scorer or from the reference's ranking alone?

On ``recipes/lm_noisy_corpus.yaml`` a block's learnability ``(1 - p_large) * (p_ref - floor)`` has
``p_large = exp(-mean token loss)`` of about 0.01, so the score is close to ``p_ref - floor``: a ranking by the
bigram reference alone. This script registers that ranking as a policy, ``reference_rank`` (the reference's
``p_ref`` over the same floor, top-k, no scorer), runs it per seed with the recipe's other settings, and prints
the bench's table against uniform runs already made (e.g. by ``online-select bench ... --out runs/lm_lr``).

Run: python benchmarks/lm_reference_rank.py OUT SEEDS UNIFORM_RUNS [DEFAULT_RUNS] [recipe overrides...]
     UNIFORM_RUNS / DEFAULT_RUNS name one folder per seed with ``{seed}``, e.g. 'runs/lm_lr/uniform_600_lr0.002/seed{seed}'.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from steps_to_best import main_seeds

from online_select.bench import finished_run
from online_select.config import load_config
from online_select.loop import train
from online_select.policies import POLICIES, REFERENCE_LOSS, Signals

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "lm_noisy_corpus.yaml"


def _reference_rank(s: Signals, options: dict) -> torch.Tensor:
    return torch.exp(-s.get(REFERENCE_LOSS).clamp_min(0.0))


# reference_filter with p_ref as the score instead of a random one: the same signals and eligibility (the floor).
POLICIES["reference_rank"] = dataclasses.replace(
    POLICIES["reference_filter"], name="reference_rank", score_fn=_reference_rank,
    description="the reference's p_ref over the floor, no scorer",
)


def main(out: str, seeds: int, baselines: list[str], overrides: list[str]) -> None:
    for seed in range(seeds):
        folder = Path(out) / f"seed{seed}"
        config = load_config(RECIPE, overrides + ["selection.policy=reference_rank", f"seed={seed}",
                                                  f"output_dir={folder}", "train.progress=false"])
        if not finished_run(config, folder, "eval/loss"):
            train(config)
    main_seeds(seeds, baselines + [str(Path(out) / "seed{seed}")])


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    args = sys.argv[4:]
    baselines = [sys.argv[3]] + [a for a in args if "{seed}" in a]
    main(sys.argv[1], int(sys.argv[2]), baselines, [a for a in args if "{seed}" not in a])
