import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from online_select import LossShapeError
from online_select.hf import (
    CausalLMLoss,
    CustomLoss,
    causal_lm_loss,
    causal_lm_token_losses,
    kept_token_count,
    loss_for_model,
    select_tokens,
    sequence_classification_loss,
)


def tiny_gpt2(vocab=50, seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()


def test_causal_lm_loss_shifts_and_ignores_padding_and_minus_100():
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    labels = ids.clone()
    labels[0, 2] = -100
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    losses, mask = causal_lm_token_losses(logits, labels, attention)
    assert losses.shape == mask.shape == (2, 4)
    expected_mask = torch.tensor([[True, False, True, True], [True, True, False, False]])
    assert torch.equal(mask, expected_mask)
    # position t predicts token t + 1
    manual = F.cross_entropy(logits[0, 0][None], ids[0, 1][None])
    assert torch.allclose(losses[0, 0], manual)
    per_sample = causal_lm_loss(logits, labels, attention)
    for i in range(2):
        targets = ids[i, 1:][expected_mask[i]]
        kept_logits = logits[i, :-1][expected_mask[i]]
        assert torch.allclose(per_sample[i], F.cross_entropy(kept_logits, targets), atol=1e-6)
    assert losses[~mask].abs().sum() == 0


def test_causal_lm_loss_matches_the_models_own_loss_for_one_sequence():
    model = tiny_gpt2()
    ids = torch.randint(0, 50, (1, 12))
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss
        ours = CausalLMLoss()(model, {"input_ids": ids})
    assert torch.allclose(ours[0], expected, atol=1e-5)


def test_sequence_without_targets_has_zero_loss_not_nan():
    logits = torch.randn(1, 3, 5)
    labels = torch.full((1, 3), -100)
    assert causal_lm_loss(logits, labels).item() == 0.0


def test_sequence_classification_problem_types():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 2, -100, 1])
    parts = sequence_classification_loss(logits, labels)
    assert parts.count.tolist() == [1, 1, 0, 1]
    assert torch.allclose(parts.sum[[0, 1, 3]], F.cross_entropy(logits[[0, 1, 3]], labels[[0, 1, 3]], reduction="none"))
    regression = sequence_classification_loss(torch.randn(4, 1), torch.randn(4))
    assert regression.sum.shape == (4,)
    multi = sequence_classification_loss(logits, torch.randint(0, 2, (4, 3)).float())
    assert multi.sum.shape == (4,)


def test_custom_loss_of_the_wrong_shape_is_a_clear_error():
    bad = CustomLoss(lambda model, batch: torch.zeros(4, 7))
    with pytest.raises(LossShapeError, match="one loss per sample"):
        bad.parts(None, {"x": torch.zeros(4, 2)})
    scalar = CustomLoss(lambda model, batch: torch.tensor(1.0))
    with pytest.raises(LossShapeError, match="reduction='none'"):
        scalar.parts(None, {"x": torch.zeros(4, 2)})


def test_loss_for_model_detects_causal_lm_and_rejects_unknown_models():
    assert loss_for_model(tiny_gpt2()).kind == "causal_lm"
    with pytest.raises(ValueError, match="per_sample_loss="):
        loss_for_model(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.5, 0.7, 1.0])
def test_select_tokens_keeps_the_right_fraction_of_real_tokens(keep):
    torch.manual_seed(1)
    losses = torch.rand(6, 20)
    mask = torch.rand(6, 20) > 0.3
    kept = select_tokens(losses, mask, keep)
    assert not bool((kept & ~mask).any())
    assert int(kept.sum()) == kept_token_count(mask, keep) == max(1, round(keep * int(mask.sum())))
    per_seq = select_tokens(losses, mask, keep, scope="sequence")
    expected = [max(1, round(keep * int(m.sum()))) if m.any() else 0 for m in mask]
    assert per_seq.sum(1).tolist() == expected
    assert int(per_seq.sum()) == kept_token_count(mask, keep, "sequence")


def test_select_tokens_ranks_by_excess_loss_over_the_reference():
    losses = torch.tensor([[5.0, 4.0, 1.0, 0.5]])
    reference = torch.tensor([[5.0, 1.0, 0.9, 0.0]])  # excess: 0, 3, 0.1, 0.5
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert select_tokens(losses, mask, 0.5, reference).tolist() == [[False, True, False, True]]
    assert select_tokens(losses, mask, 0.5).tolist() == [[True, True, False, False]]


def test_select_tokens_rejects_bad_settings():
    with pytest.raises(ValueError, match="keep ratio"):
        select_tokens(torch.rand(1, 3), torch.ones(1, 3, dtype=torch.bool), 0.0)
    with pytest.raises(ValueError, match="scope"):
        select_tokens(torch.rand(1, 3), torch.ones(1, 3, dtype=torch.bool), 0.5, scope="doc")
