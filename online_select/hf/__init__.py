"""Hugging Face integration: `SelectiveTrainer`, per-sample and per-token losses of HF models,
token-level (Rho-1 style) selection, and `datasets` helpers.

    from online_select.hf import SelectiveTrainer, add_ids
    trainer = SelectiveTrainer(model, args, train_dataset=add_ids(ds), keep=0.25)  # k = B/4
"""

from .data import (
    add_ids,
    candidate_batches,
    dataset_fingerprint,
    lm_blocks,
    reference_table,
    save_reference_table,
    tokenize,
)
from .losses import (
    IGNORE_INDEX,
    CausalLMLoss,
    CustomLoss,
    SampleLosses,
    SequenceClassificationLoss,
    causal_lm_loss,
    causal_lm_token_losses,
    loss_for_model,
    sequence_classification_loss,
)
from .tokens import TokenSelection, kept_token_count, select_tokens
from .trainer import SELECTOR_STATE_NAME, SelectiveTrainer

__all__ = [
    "IGNORE_INDEX",
    "SELECTOR_STATE_NAME",
    "CausalLMLoss",
    "CustomLoss",
    "SampleLosses",
    "SelectiveTrainer",
    "SequenceClassificationLoss",
    "TokenSelection",
    "add_ids",
    "candidate_batches",
    "causal_lm_loss",
    "causal_lm_token_losses",
    "dataset_fingerprint",
    "kept_token_count",
    "lm_blocks",
    "loss_for_model",
    "reference_table",
    "save_reference_table",
    "select_tokens",
    "sequence_classification_loss",
    "tokenize",
]
