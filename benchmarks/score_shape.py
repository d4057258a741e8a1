"""The shape of the reference's factor in the score: does ranking doubtful labels lower (or higher) pay?

The default scores a candidate ``(1 - p_large) * (p_ref - floor)``: linear in the reference's probability of the
label. The flipped labels that pass the floor sit mostly at ``p_ref`` 0.05-0.3, beside the clean boundary samples of
the hard classes (README, "Tried"); every hard cut there traded one for the other. This patch keeps every sample
eligible and changes only how the score weighs ``p_ref``: ``(1 - p_large) * (p_ref - floor) ** gamma``. A gamma
above 1 ranks the doubtful band lower (fewer flipped picks, fewer clean boundary picks), below 1 higher. The
exploration picks, the floor, the refresh and the rejection are the default's. A patch on this script's runs, not a
library option.

Runs, seed by seed, the default and the default with each gamma, and prints best (smoothed over 3 evals) and final
accuracy and the flipped share of the picks, mean ± std over seeds.

Run: python benchmarks/score_shape.py OUT SEEDS [--gammas=0.5,2] [recipe overrides...]
A run whose folder already holds a finished run of the same config is read back, not run again.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from levers import sweep_main

import online_select.policies as policies_module


@contextlib.contextmanager
def score_shape(gamma: float) -> Iterator[None]:
    """Patch the runs inside the block: the score's reference factor raised to ``gamma`` (its sign kept)."""
    learnability = policies_module.learnability

    def shaped(large_loss: torch.Tensor, reference_loss: torch.Tensor, label_floor: float) -> torch.Tensor:
        p_large = torch.exp(-large_loss.clamp_min(0.0))
        evidence = torch.exp(-reference_loss.clamp_min(0.0)) - label_floor
        return (1.0 - p_large) * evidence.sign() * evidence.abs().pow(gamma)

    policies_module.learnability = shaped
    try:
        yield
    finally:
        policies_module.learnability = learnability


if __name__ == "__main__":
    sweep_main(sys.argv, __doc__, "gammas", "0.5,2", lambda g: f"default, reference factor ** {g}", lambda g: f"gamma_{g}", score_shape)
