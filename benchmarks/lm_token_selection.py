"""Rho-1's token selection on the LM recipe: does training on the top tokens by excess loss pay, alone or on
top of the block selection?

Each selected block goes through the large model whole; only the ``keep`` fraction of the batch's tokens with the
highest excess loss (the large model's token loss minus the clean-holdout bigram's, Rho-1's reference) drive the
gradient, as :class:`online_select.hf.SelectiveTrainer` does with ``token_selection=TokenSelection(keep, ...)``.
The selector still observes each block's full mean token loss (its loss memory and scorer are unchanged). The
plain loop has no token selection of its own; this script patches the task's per-sample loss to add it.

For each policy and keep ratio (1 = no token selection), seed by seed, into ``OUT/POLICY_tokensKEEP/seedS``; then,
when the first variant is uniform without token selection, the steps-to-best table of it against the others
(``benchmarks/steps_to_best.py``).

Run: python benchmarks/lm_token_selection.py OUT SEEDS [--policies=uniform,predicted_learnability] [--keep=1,0.7]
     [recipe overrides...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from levers import option
from steps_to_best import main_seeds

from online_select.bench import finished_run
from online_select.config import load_config
from online_select.hf.losses import CausalLMLoss, SampleLosses
from online_select.hf.tokens import TokenSelection, select_tokens
from online_select.lm_corpus import BigramLM
from online_select.loop import train
from online_select.tasks import build_task

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "lm_noisy_corpus.yaml"


class TokenSelectedLoss(CausalLMLoss):
    """Per-block losses whose value is the block's mean token loss and whose gradient is that of the kept tokens'
    loss, normalised as Rho-1 does: the sum over the batch's kept tokens over their count."""

    def __init__(self, keep: float, reference: BigramLM) -> None:
        super().__init__()
        self.settings = TokenSelection(keep, lambda batch: reference.token_losses(batch["input_ids"].cpu()))

    def __call__(self, model: torch.nn.Module, batch) -> torch.Tensor:
        losses, mask = self.token_losses(model, batch)
        full = SampleLosses(losses.sum(1), mask.sum(1)).mean  # token losses are 0 where the mask is False
        if not torch.is_grad_enabled():
            return full
        reference = self.settings.reference_losses(batch).to(losses.device)
        kept = select_tokens(losses, mask, self.settings.keep, reference, self.settings.scope)
        per_block = len(losses) / kept.sum().clamp_min(1)  # the batch's mean over blocks is sum(kept) / count(kept)
        trained = (losses * kept).sum(1) * per_block
        return trained + (full - trained).detach()


def run(folder: Path, overrides: list[str], keep: float) -> None:
    config = load_config(RECIPE, overrides + [f"output_dir={folder}", "train.progress=false"])
    print(f"lm_token_selection: keep {keep:g} -> {folder}", file=sys.stderr, flush=True)
    if finished_run(config, folder, "eval/loss"):
        return
    task = build_task(config)
    if keep < 1.0:
        reference = BigramLM(task.corpus.vocab_size).fit(task.corpus.holdout)
        task.loss = TokenSelectedLoss(keep, reference)
    train(config, task)


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit(__doc__)
    policies, overrides = option(argv[3:], "policies", "uniform,predicted_learnability")
    keeps, overrides = option(overrides, "keep", "1,0.7")
    policy_names, keep_ratios = policies.split(","), [float(k) for k in keeps.split(",")]
    out, seeds = Path(argv[1]), int(argv[2])
    folders = []
    for policy in policy_names:
        for keep in keep_ratios:
            name = f"{policy}_tokens{keep:g}"
            folders.append(str(out / name / "seed{seed}"))
            for seed in range(seeds):
                run(out / name / f"seed{seed}", overrides + [f"selection.policy={policy}", f"seed={seed}"], keep)
    if policy_names[0] == "uniform" and keep_ratios[0] == 1.0:
        main_seeds(seeds, folders)
    else:
        print("no table: the first variant is not uniform without token selection; read the runs with "
              "benchmarks/steps_to_best.py against uniform runs", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
