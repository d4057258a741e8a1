import copy
import math

import pytest
import torch
import torch.nn.functional as F

from online_select import Scorer, spearman


def _features(n, g):
    # Two informative columns and one nuisance column; the "large loss" depends nonlinearly on them.
    x = torch.randn(n, 3, generator=g)
    loss = torch.nn.functional.softplus(2 * x[:, 0] - x[:, 1] ** 2) + 0.05 * torch.randn(n, generator=g)
    return x, loss


def test_scorer_learns_to_rank_known_losses():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    scorer = Scorer(use_memory=False)
    held_x, held_loss = _features(512, g)
    before = None
    for step in range(600):
        x, loss = _features(64, g)
        if step == 0:
            before = spearman(scorer.predict(held_x), held_loss)
        scorer.update(x, loss, ids=None, step=step)
    after = spearman(scorer.predict(held_x), held_loss)
    assert after > 0.9
    assert after > before + 0.3


def test_memory_features_track_observed_losses():
    scorer = Scorer(use_memory=True)
    ids = torch.tensor([5, 9])
    scorer.update(scorer.features(None, ids, step=0), torch.tensor([2.0, 0.5]), ids, step=0)
    feats = scorer.features(None, torch.tensor([5, 9, 11]), step=10)
    assert feats[:, 0].tolist() == [2.0, 0.5, 0.0]  # last loss (0 when unseen)
    assert feats[:, 1].tolist() == [1.0, 1.0, 0.0]  # seen flag
    assert feats[0, 2] > 0 and feats[2, 2] == 0  # age only for seen samples


def test_small_input_model_is_trained_with_the_head():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    scorer = Scorer(model, use_memory=False, model_input=lambda batch: batch["x"])
    batch = {"x": torch.randn(8, 4)}
    before = [p.clone() for p in model.parameters()]
    feats = scorer.features(batch, None, step=0)
    assert feats.shape == (8, 0)
    assert scorer.predict(feats, batch).shape == (8,)
    scorer.update(feats, torch.rand(8), None, 0, batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_default_head_has_the_width_asked_for():
    scorer = Scorer(use_memory=False, hidden=8)
    scorer.predict(scorer.features(None, None, 0, reference_features=torch.randn(5, 3)))
    assert scorer.head[0].out_features == 8 and scorer.head[2].in_features == 8


def test_the_scorer_model_reads_its_input_from_a_batch_encoding():
    from transformers import BatchEncoding

    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    scorer = Scorer(model, use_memory=False)
    batch = BatchEncoding({"input_ids": torch.randn(6, 4), "attention_mask": torch.ones(6, 4)})
    assert scorer.predict(scorer.features(batch, None, 0), batch).shape == (6,)
    assert seen[-1] == (6, 4)


def test_state_dict_round_trip_gives_identical_predictions():
    g = torch.Generator().manual_seed(1)
    a = Scorer(use_memory=True)
    for step in range(20):
        ids = torch.randint(0, 100, (16,), generator=g).unique()
        ref = torch.rand(ids.numel(), 2, generator=g)
        a.update(a.features(None, ids, step, ref), torch.rand(ids.numel(), generator=g), ids, step)
    b = Scorer(use_memory=True)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as a save/load would
    ids = torch.arange(100)
    ref = torch.rand(100, 2, generator=g)
    fa, fb = a.features(None, ids, 50, ref), b.features(None, ids, 50, ref)
    assert torch.equal(fa, fb)
    assert torch.equal(a.predict(fa), b.predict(fb))
    # and they keep learning identically
    loss = torch.rand(100, generator=g)
    a.update(fa, loss, ids, 50)
    b.update(fb, loss, ids, 50)
    assert torch.equal(a.predict(fa), b.predict(fb))


def test_rank_objective_also_learns():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    scorer = Scorer(use_memory=False, objective="rank_mse")
    held_x, held_loss = _features(512, g)
    for step in range(400):
        x, loss = _features(64, g)
        scorer.update(x, loss, None, step)
    assert spearman(scorer.predict(held_x), held_loss) > 0.85


def test_rank_objective_is_the_mean_over_pairs_with_different_targets_plus_mse():
    scorer = Scorer(use_memory=False, objective="rank_mse")
    prediction = torch.tensor([0.0, 1.0, 3.0], requires_grad=True)
    target = torch.tensor([1.0, 1.0, 2.0])
    # ordered pairs (0, 2) and (1, 2), each counted both ways; the tie (0, 1) is left out
    rank = (F.softplus(torch.tensor(-3.0)) + F.softplus(torch.tensor(-2.0))) / 2
    assert scorer._objective(prediction, target).item() == pytest.approx(rank.item() + 2 / 3)
    ties = scorer._objective(prediction, torch.ones(3))
    assert ties.item() == pytest.approx(F.mse_loss(prediction, torch.ones(3)).item())
    ties.backward()
    assert torch.isfinite(prediction.grad).all()


def test_memory_lookup_of_unseen_ids_leaves_the_state_unchanged():
    from online_select import LossMemory

    memory = LossMemory()
    memory.update(torch.tensor([1, 2]), torch.tensor([0.5, 0.7]), step=3)
    before = {k: v.clone() for k, v in memory.state_dict().items()}
    loss, step, count = memory.lookup(torch.tensor([2, 5000]))
    assert loss[0].item() == pytest.approx(0.7) and torch.isnan(loss[1]) and step.tolist() == [3, 0] and count.tolist() == [1, 0]
    for key, value in memory.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True)


def test_memory_records_finite_losses_only_however_large():
    from online_select import LossMemory

    memory = LossMemory()
    huge = torch.finfo(torch.float32).max
    memory.update(torch.tensor([0, 1, 2, 3]), torch.tensor([huge, huge, float("nan"), float("inf")]), step=1)
    loss, _, count = memory.lookup(torch.tensor([0, 1, 2, 3]))
    assert count.tolist() == [1, 1, 0, 0] and loss[:2].tolist() == [huge, huge] and torch.isnan(loss[2:]).all()


def test_memory_counts_an_id_each_time_it_comes_and_keeps_its_last_row():
    from online_select import LossMemory

    memory = LossMemory()
    # A sampler drawing with replacement, or a plan across an epoch's end: id 3 three times, id 7 twice.
    memory.update(torch.tensor([3, 7, 3, 1, 3, 7]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                  step=torch.tensor([10, 10, 11, 11, 12, 12]))
    loss, step, count = memory.lookup(torch.tensor([3, 7, 1]))
    assert count.tolist() == [3, 2, 1] and loss.tolist() == [5.0, 6.0, 4.0] and step.tolist() == [12, 12, 11]


@pytest.mark.parametrize("with_model", [False, True])
def test_update_every_learns_once_per_m_observations_on_all_of_them(with_model):
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2) if with_model else None
    every, once = (Scorer(copy.deepcopy(model), update_every=m, model_input=lambda b: b["x"]) for m in (3, 1))
    steps = []
    for step in range(3):
        ids = torch.arange(8 * step, 8 * step + 8)
        batch = {"x": torch.randn(8, 4, generator=g)}
        steps.append((every.features(batch, ids, step), torch.rand(8, generator=g), ids, batch))
    head = None
    torch.manual_seed(0)  # the same head initialisation for both scorers (built at their first update)
    for step, (features, loss, ids, batch) in enumerate(steps):
        every.update(features, loss, ids, step, batch)
        if step == 0:
            head = [p.clone() for p in every.head.parameters()]
        assert every.memory.lookup(ids)[2].tolist() == [1] * 8  # the memory never waits
        assert every.updates == (1 if step == 2 else 0)
    assert any(not torch.equal(a, b) for a, b in zip(head, every.head.parameters()))
    # the one update equals a single update on the three observations concatenated
    features = torch.cat([s[0] for s in steps])
    batch = {"x": torch.cat([s[3]["x"] for s in steps])}
    torch.manual_seed(0)
    once.update(features, torch.cat([s[1] for s in steps]), torch.cat([s[2] for s in steps]), 2, batch)
    assert torch.allclose(every.predict(features, batch), once.predict(features, batch))


def test_update_every_keeps_waiting_observations_across_a_state_dict_round_trip():
    a, b = Scorer(update_every=2), Scorer(update_every=2)
    ids = torch.arange(8)
    features = a.features(None, ids, 0)
    a.update(features, torch.rand(8), ids, 0)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    loss = torch.rand(8)
    for scorer in (a, b):
        scorer.update(features, loss, ids, 1)
    assert a.updates == b.updates == 1
    assert torch.equal(a.predict(features), b.predict(features))


def test_last_scorer_loss_survives_a_state_dict_round_trip():
    # With update_every > 1 the last update's loss is what gets logged until the next one, resumed or not.
    a, b = Scorer(update_every=2), Scorer(update_every=2)
    ids = torch.arange(8)
    features = a.features(None, ids, 0)
    for step in (0, 1, 2):
        a.update(features, torch.rand(8), ids, step)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert a.updates == b.updates == 1
    assert not math.isnan(a.last_loss) and b.last_loss == a.last_loss


def test_default_optimizer_is_fused_adam_with_plain_adams_updates():
    def trained(optimizer):
        torch.manual_seed(0)
        scorer = Scorer(objective="rank_mse", use_memory=False, optimizer=optimizer)
        g = torch.Generator().manual_seed(0)
        for _ in range(20):
            x, loss = _features(32, g)
            scorer.update(x, loss, None, 0)
        return scorer

    fused = trained(None)
    plain = trained(lambda params: torch.optim.Adam(params, lr=3e-3))
    assert fused.optimizer.param_groups[0]["fused"] and not plain.optimizer.param_groups[0]["fused"]
    for a, b in zip(fused.head.parameters(), plain.head.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_update_every_must_be_positive():
    with pytest.raises(ValueError, match="update_every"):
        Scorer(update_every=0)


def test_a_feature_constant_so_far_is_not_blown_up_when_it_first_varies():
    from online_select.scorer import RunningNorm

    norm = RunningNorm(2)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # an epoch of unseen candidates: the memory's "seen" column is 0 for all of them
        norm.update(torch.stack([torch.randn(64, generator=g), torch.zeros(64)], dim=1))
    seen = torch.stack([torch.randn(64, generator=g), (torch.rand(64, generator=g) < 0.1).float()], dim=1)
    assert norm(seen)[:, 1].abs().max() <= 1.0  # unscaled until it varies, not divided by a floored std of 0.01
    norm.update(seen)
    assert 0.9 < float(norm.var[1]) <= 1.0  # then it moves from 1 toward its variance at the norm's momentum
