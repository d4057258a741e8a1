import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from online_select import (
    ClassificationLoss,
    ExplorationWarning,
    FlatScoresWarning,
    LossShapeError,
    NonFiniteLossError,
    OnlineSelector,
    ProxyModel,
    ReferenceCoverageError,
    ReferenceMismatchError,
    ReferenceModel,
    ReferenceTable,
    Scorer,
    samples_fingerprint,
)
from online_select.batch import BatchError, concat, take


def _batch(b=32, start=0, g=None):
    g = g or torch.Generator().manual_seed(start)
    return {
        "input": torch.randn(b, 5, generator=g),
        "label": torch.randint(0, 3, (b,), generator=g),
        "id": torch.arange(start, start + b),
        "text": [f"sample {i}" for i in range(start, start + b)],
    }


def _selector(policy="predicted_learnability", **kwargs):
    table = ReferenceTable(torch.rand(1000) * 2)
    return OnlineSelector(policy, keep=0.25, scorer=Scorer(), reference=table, label_floor=1 / 3, **kwargs)


def test_three_line_loop_selects_exactly_k_and_trains():
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    selector = _selector()
    for step in range(5):
        selected = selector.select(_batch(start=32 * step))
        assert selected.k == 8 and len(selected.batch["text"]) == 8
        assert selected.batch["text"][0] == f"sample {int(selected.batch['id'][0])}"
        losses = F.cross_entropy(model(selected.batch["input"]), selected.batch["label"], reduction="none")
        loss = selector.observe(selected, losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert selector.step == 5 and selector.scorer.updates == 5
    assert len(selector.scorer.memory) == 40
    stats = selector.stats()
    assert "selection/spearman_explore" in stats and stats["selection/samples_seen"] == 160


def _run_steps(selector, steps, read_every_step):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    read = []
    for step in range(steps):
        selected = selector.select(_batch(start=32 * step))
        losses = F.cross_entropy(model(selected.batch["input"]), selected.batch["label"], reduction="none")
        selector.observe(selected, losses)
        if read_every_step:
            read.append(selector.stats())
    return read


def test_stats_read_late_equal_stats_read_every_step():
    # The window's entries are computed when first read: reading them at every step or once at the end
    # must give the same figures, and a checkpoint holds the computed entries (plain values and tensors).
    torch.manual_seed(0)
    eager = _selector(stats_window=4)
    _run_steps(eager, 7, read_every_step=True)
    torch.manual_seed(0)
    lazy = _selector(stats_window=4)
    _run_steps(lazy, 7, read_every_step=False)

    def figures(selector):  # all but the timings
        return {key: value for key, value in selector.stats().items() if not key.endswith("_ms")}

    assert figures(lazy) == figures(eager) and "selection/spearman_explore" in figures(lazy)
    assert lazy.flat_score_steps == eager.flat_score_steps
    window = lazy.state_dict()["window"]
    assert len(window) == 4 and all(isinstance(entry, dict) for entry in window)
    restored = _selector(stats_window=4)
    restored.load_state_dict(copy.deepcopy(lazy.state_dict()))
    assert figures(restored) == figures(lazy)


def test_loss_discount_weights_picks_by_exp_minus_q_loss_normalised_and_detached():
    losses = torch.tensor([0.5, 1.0, 2.0, 4.0, float("nan")], requires_grad=True)
    discount = torch.exp(-0.5 * losses.detach()[:4])
    selector = OnlineSelector("uniform", keep=5, loss_discount=0.5, on_nonfinite="skip")
    loss = selector.observe(selector.select(_batch()), losses)
    assert loss.item() == pytest.approx((discount * losses.detach()[:4]).sum().item() / discount.sum().item())
    loss.backward()
    assert torch.allclose(losses.grad[:4], discount / discount.sum()) and losses.grad[4] == 0
    plain = OnlineSelector("uniform", keep=4)
    assert plain.observe(plain.select(_batch()), losses.detach()[:4]).item() == pytest.approx(1.875)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="loss_discount must be a finite number >= 0"):
            OnlineSelector("uniform", keep=4, loss_discount=bad)


def test_loss_discount_stays_finite_when_every_loss_is_large():
    # exp(-q * loss) underflows to 0 for all of these; the normalised weights do not.
    for q, values in ((1.0, [200.0, 210.0, 220.0, 230.0]), (0.15, [700.0, 720.0, 750.0, 800.0])):
        losses = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        discount = torch.exp(-q * (losses.detach() - values[0]))
        selector = OnlineSelector("uniform", keep=4, loss_discount=q)
        loss = selector.observe(selector.select(_batch()), losses.float())
        assert loss.item() == pytest.approx(float((discount * losses.detach()).sum() / discount.sum()), rel=1e-5)
        loss.backward()
        assert torch.isfinite(losses.grad).all()


def test_skipped_half_precision_losses_do_not_overflow_the_sum():
    selector = OnlineSelector("uniform", keep=2048, on_nonfinite="skip")
    losses = torch.full((2048,), 40.0, dtype=torch.float16)
    losses[0] = float("nan")
    assert selector.observe(selector.select(_batch(b=4096)), losses).item() == 40.0


def test_bad_settings_are_named_up_front():
    for kwargs, message in (
        ({"temperature": 0.0}, "temperature must be positive"),
        ({"temperature": float("inf")}, "temperature must be positive"),
        ({"label_floor": 1.0}, "label_floor is a probability"),
        ({"label_floor": -0.1}, "label_floor is a probability"),
        ({"label_floor": float("nan")}, "label_floor is a probability"),
        ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            OnlineSelector("uniform", keep=4, **kwargs)


def test_missing_components_are_named_up_front():
    with pytest.raises(ValueError, match=r"needs scorer=Scorer\(...\), reference="):
        OnlineSelector("predicted_learnability")
    with pytest.raises(ValueError, match="large_loss_fn"):
        OnlineSelector("reducible_loss", reference=ReferenceTable(torch.zeros(3)))
    with pytest.raises(ValueError, match="unknown policy"):
        OnlineSelector("nope")
    with pytest.raises(ValueError, match="keep ratio must be in"):
        OnlineSelector("uniform", keep=2.0)


def test_ids_are_required_when_memory_or_table_need_them():
    selector = _selector()
    batch = _batch()
    del batch["id"]
    with pytest.raises(ValueError, match="needs sample ids"):
        selector.select(batch)
    assert selector.select(batch, ids=torch.arange(32)).k == 8


def test_ids_come_from_a_batch_encoding_and_fields_that_are_not_ids_are_named():
    from transformers import BatchEncoding

    batch = BatchEncoding({"input": torch.randn(16, 5), "id": torch.arange(100, 116)})
    selected = _selector().select(batch)
    assert isinstance(selected.batch, BatchEncoding) and selected.selected_ids.min() >= 100
    hashes = {"input": torch.randn(8, 5), "id": [f"5733be28477{i}" for i in range(8)]}
    assert OnlineSelector("uniform", keep=4).select(hashes).ids is None  # uniform needs no ids: the field is not read as ids
    per_token = {"input": torch.randn(8, 5), "index": torch.zeros(8, 3, dtype=torch.long)}
    assert OnlineSelector("uniform", keep=4).select(per_token).ids is None
    with pytest.raises(ValueError, match="sample ids read from the batch's 'id' field: sample ids must be dense non-negative"):
        OnlineSelector("uniform", keep=4).select({"input": torch.randn(8, 5), "id": torch.arange(8) - 3})
    with pytest.raises(ValueError, match="sample ids read from the batch's 'id' field"):
        _selector().select(hashes)
    with pytest.raises(ValueError, match=r"sample ids read from ids=: expected 16 sample ids"):
        _selector().select(batch, ids=torch.arange(3))


def test_exploration_that_rounds_to_no_pick_warns_once():
    selector = _selector(explore=0.125)
    selector.keep = 4
    with pytest.warns(ExplorationWarning, match=r"explore=0.125 of k=4 rounds to no exploration pick") as caught:
        selector.select(_batch())
    assert caught[0].filename == __file__  # the user's call, not the library's frames or torch's decorator
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selector.select(_batch(start=32))
        _selector(explore=0.125).select(_batch())  # k = 8: one exploration pick


def test_k_larger_than_batch():
    selector = OnlineSelector("uniform", keep=40)
    with pytest.raises(ValueError, match="cannot keep k=40 samples from a candidate batch of B=32"):
        selector.select(_batch())


def test_scalar_loss_is_rejected_with_the_fix():
    selector = OnlineSelector("uniform", keep=4)
    selected = selector.select(_batch())
    with pytest.raises(LossShapeError, match="reduction='none'"):
        selector.observe(selected, torch.tensor(1.0))
    with pytest.raises(LossShapeError, match="has 3 values for a batch of 4 samples"):
        selector.observe(selected, torch.ones(3))
    with pytest.raises(LossShapeError, match=r"shape \(4, 7\)"):
        selector.observe(selected, torch.ones(4, 7))


def test_a_reference_or_proxy_loss_that_is_not_per_sample_is_named():
    def mean_loss(model, batch):
        return F.cross_entropy(model(batch["input"]), batch["label"])

    reference = ReferenceModel(torch.nn.Linear(5, 3), mean_loss)
    with pytest.raises(LossShapeError, match="the reference model's loss is a scalar"):
        OnlineSelector("reducible_loss", keep=4, reference=reference, large_loss_fn=lambda b: torch.ones(32)).select(_batch())
    proxy = ProxyModel(torch.nn.Linear(5, 3), lambda model, batch: mean_loss(model, batch)[None])
    with pytest.raises(LossShapeError, match="the proxy's loss has 1 values for a batch of 32 samples"):
        OnlineSelector("proxy_loss", keep=4, proxy=proxy).select(_batch())


def test_a_selection_is_observed_once():
    selector = _selector()
    selected = selector.select(_batch())
    with pytest.raises(NonFiniteLossError):  # refused before anything learnt from it: it may be observed again
        selector.observe(selected, torch.full((8,), float("nan")))
    selector.observe(selected, torch.ones(8))
    with pytest.raises(RuntimeError, match="observed already"):
        selector.observe(selected, torch.ones(8))
    assert selector.step == 1 and selector.samples_seen == 32 and int(selector.scorer.memory.count.sum()) == 8


def test_nan_losses_raise_or_are_skipped_and_counted():
    selector = OnlineSelector("uniform", keep=4)
    selected = selector.select(_batch())
    bad = torch.tensor([1.0, float("nan"), 2.0, 3.0], requires_grad=True)
    with pytest.raises(NonFiniteLossError, match="1 of 4 per-sample losses are NaN"):
        selector.observe(selected, bad)
    skipping = OnlineSelector("predicted_loss", keep=4, scorer=Scorer(), on_nonfinite="skip")
    selected = skipping.select(_batch())
    loss = skipping.observe(selected, bad)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(2.0)
    loss.backward()
    assert torch.isfinite(bad.grad).all() and bad.grad[1] == 0
    assert skipping.stats()["selection/nonfinite_losses"] == 1


def test_finite_losses_whose_sum_overflows_are_observed_not_raised():
    selector = OnlineSelector("predicted_loss", keep=4, scorer=Scorer())
    selected = selector.select(_batch())
    huge = torch.finfo(torch.float32).max
    selector.observe(selected, torch.tensor([huge, huge, 1.0, 1.0]))
    assert selector.nonfinite_losses == 0 and int(selector.scorer.memory.count.sum()) == 4


def test_reference_table_coverage_error_names_ids():
    selector = OnlineSelector("predicted_learnability", keep=4, scorer=Scorer(), reference=ReferenceTable(torch.zeros(10)))
    with pytest.raises(ReferenceCoverageError, match=r"^the reference table has no loss for 22 candidate sample id\(s\), e.g. \[10, 11"):
        selector.select(_batch())  # the message as written, not quoted as a KeyError's


def test_reference_table_features_are_its_rows_and_follow_replaced_losses(tmp_path):
    losses, extra = torch.tensor([0.5, 1.0, 2.0, 3.0]), torch.arange(8.0).reshape(4, 2)
    with torch.inference_mode():  # as references are built; replacing losses must still work
        table = ReferenceTable(losses.clone(), extra.clone())
    ids = torch.tensor([3, 1, 3])
    assert torch.equal(table.features(None, ids), torch.cat([losses[:, None], extra], 1)[ids])
    table.replace_losses(torch.tensor([1]), torch.tensor([4.0]))
    loss, features = table.losses_and_features(None, ids)
    assert loss.tolist() == [3.0, 4.0, 3.0] and features[:, 1:].tolist() == extra[ids].tolist()
    table.save(tmp_path / "t.safetensors")
    again = ReferenceTable.load(tmp_path / "t.safetensors")
    assert torch.equal(again.features(None, ids), features) and again.extra.shape == (4, 2)


def test_a_reference_table_checks_the_fingerprint_it_was_saved_with(tmp_path):
    path = tmp_path / "t.safetensors"
    ReferenceTable(torch.tensor([0.5, 1.0])).save(path, {"task": "t", "samples_sha256": "abc"})
    assert ReferenceTable.load(path, {"task": "t", "samples_sha256": "abc", "other": "x"}).table.tolist() == [0.5, 1.0]
    with pytest.raises(ReferenceMismatchError, match="samples_sha256: 'abc' in the file, 'def' in this run"):
        ReferenceTable.load(path, {"task": "t", "samples_sha256": "def"})
    ReferenceTable(torch.tensor([0.5])).save(path)
    with pytest.warns(UserWarning, match="saved without a fingerprint") as caught:
        ReferenceTable.load(path, {"samples_sha256": "abc"})
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ReferenceTable.load(path)


def test_samples_fingerprint_names_values_dtype_and_shape():
    x, y = torch.arange(6, dtype=torch.uint8).reshape(3, 2), torch.tensor([0, 1, 1])
    same = samples_fingerprint(x, y)
    assert samples_fingerprint(x.clone(), y.clone()) == same
    assert samples_fingerprint(x.t().contiguous().t(), y) == same  # the layout in memory does not count
    changed = [samples_fingerprint(x, torch.tensor([0, 1, 0])), samples_fingerprint(x.reshape(2, 3), y),
               samples_fingerprint(x.long(), y), samples_fingerprint(x[:2], y[:2]), samples_fingerprint(x)]
    assert same not in changed and len(set(changed)) == len(changed)


def test_a_reference_table_never_writes_into_the_callers_losses():
    losses = torch.full((64,), 0.1)
    table = ReferenceTable(losses)
    table.replace_losses(torch.tensor([3]), torch.tensor([5.0]))
    assert table.table[3] == 5.0 and bool((losses == 0.1).all())


def test_reducible_loss_runs_the_large_model_only_when_declared():
    model = torch.nn.Linear(5, 3)
    calls = []

    def large_loss_fn(batch):
        calls.append(len(batch["id"]))
        return F.cross_entropy(model(batch["input"]), batch["label"], reduction="none")

    ref = ReferenceModel(torch.nn.Linear(5, 3), ClassificationLoss("input", "label"))
    rho = OnlineSelector("reducible_loss", keep=4, reference=ref, large_loss_fn=large_loss_fn, explore=0.0, rule="top_k")
    selected = rho.select(_batch())
    expected = large_loss_fn(_batch()) - ref.losses(_batch(), None)
    assert set(selected.indices.tolist()) == set(expected.topk(4).indices.tolist())
    calls.clear()
    predicted = OnlineSelector("predicted_loss", keep=4, scorer=Scorer(), large_loss_fn=large_loss_fn)
    predicted.select(_batch())
    assert calls == []


def test_proxy_policy_trains_its_proxy():
    proxy = ProxyModel(torch.nn.Linear(5, 3), ClassificationLoss("input", "label"))
    selector = OnlineSelector("proxy_loss", keep=4, proxy=proxy)
    before = proxy.model.weight.clone()
    selected = selector.select(_batch())
    selector.observe(selected, torch.rand(4))
    assert not torch.equal(before, proxy.model.weight)


def test_warmup_selects_uniformly_and_still_trains_the_scorer():
    selector = _selector(warmup_steps=2)
    selected = selector.select(_batch())
    assert bool(selected.explored.all())
    selector.observe(selected, torch.rand(8))
    assert selector.scorer.updates == 1


def test_state_dict_round_trip_repeats_the_same_selections():
    a = _selector(rule="sample", temperature=0.5)
    g = torch.Generator().manual_seed(3)
    for step in range(4):
        sel = a.select(_batch(start=32 * step))
        a.observe(sel, torch.rand(sel.k, generator=g))
    b = _selector(rule="sample", temperature=0.5)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for step in range(4, 8):
        batch = _batch(start=32 * step)
        sa, sb = a.select(batch), b.select(batch)
        assert torch.equal(sa.indices, sb.indices) and torch.equal(sa.weights, sb.weights)
        losses = torch.rand(sa.k, generator=g)
        a.observe(sa, losses)
        b.observe(sb, losses)


def test_loading_state_of_another_policy_is_an_error():
    with pytest.raises(ValueError, match="is for policy 'uniform'"):
        _selector().load_state_dict(OnlineSelector("uniform").state_dict())


def test_switch_to_scores_with_the_second_policy_from_switch_at_on():
    from online_select.policies import Signals, get_policy

    selector = _selector(switch_to="predicted_reducible_loss", switch_at=3, explore=0.0)
    assert [p.name for p in selector.policies] == ["predicted_learnability", "predicted_reducible_loss"]
    g = torch.Generator().manual_seed(0)
    for step in range(5):
        assert selector.policy.name == ("predicted_learnability" if step < 3 else "predicted_reducible_loss")
        selected = selector.select(_batch(start=32 * step))
        signals = Signals(32, predicted_loss=selected.predicted_loss, reference_loss=selected.reference_loss)
        expected = selector.policy.score(signals, label_floor=selector.label_floor)
        assert torch.allclose(selected.scores, expected)
        selector.observe(selected, torch.rand(selected.k, generator=g))
        assert selector.stats()["selection/switched"] == float(step + 1 >= 3)
    reducible = get_policy("predicted_reducible_loss")
    assert selector.policy is reducible and selector.initial_policy.name == "predicted_learnability"


def test_a_switch_is_saved_and_a_resume_must_switch_alike():
    a = _selector(switch_to="predicted_reducible_loss", switch_at=2)
    for step in range(3):
        selected = a.select(_batch(start=32 * step))
        a.observe(selected, torch.rand(selected.k))
    state = copy.deepcopy(a.state_dict())
    b = _selector(switch_to="predicted_reducible_loss", switch_at=2)
    b.load_state_dict(state)
    assert b.policy.name == "predicted_reducible_loss" and b.step == 3
    for other in (_selector(), _selector(switch_to="predicted_reducible_loss", switch_at=5)):
        with pytest.raises(ValueError, match="resume with the switch_to and switch_at of the run that saved it"):
            other.load_state_dict(state)
    with pytest.raises(ValueError, match="switches policy as never"):
        _selector(switch_to="predicted_reducible_loss", switch_at=2).load_state_dict(_selector().state_dict())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"switch_to": "predicted_learnability", "switch_at": 2}, "is the policy already in use"),
        ({"switch_to": "predicted_reducible_loss"}, "switch_at must be a whole number of steps >= 1"),
        ({"switch_to": "predicted_reducible_loss", "switch_at": 0.5}, "switch_at must be a whole number"),
        ({"switch_at": 10}, "needs switch_to"),
        ({"switch_to": "reducible_loss", "switch_at": 2}, "'predicted_learnability' then 'reducible_loss' needs large_loss_fn"),
        ({"switch_to": "no_such_policy", "switch_at": 2}, "unknown policy 'no_such_policy'"),
    ],
)
def test_a_bad_switch_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _selector(**kwargs)


def test_a_switch_to_a_policy_with_a_scorer_keeps_the_scorer_from_the_start():
    table = ReferenceTable(torch.rand(1000) * 2)
    selector = OnlineSelector("reference_filter", keep=0.25, scorer=Scorer(), reference=table, label_floor=0.1,
                              switch_to="predicted_learnability", switch_at=2)
    assert selector.scorer is not None  # it learns during the filter's steps, ready when the switch comes
    for step in range(3):
        selected = selector.select(_batch(start=32 * step))
        selector.observe(selected, torch.rand(selected.k))
    assert selector.scorer.updates == 3


def test_refresh_reference_replaces_untrained_losses_and_counts_eligibility_changes():
    selector = _selector()
    selected = selector.select(_batch())
    selector.observe(selected, torch.rand(selected.k))
    trained = selected.batch["id"]
    untrained = torch.tensor([900, 901, 902])
    assert selector.untrained(torch.cat([trained, untrained])).tolist() == [False] * 8 + [True] * 3
    table = selector.reference.table
    table[untrained] = torch.tensor([3.0, 0.1, 0.2])  # floor 1/3: ineligible, eligible, eligible
    refresh = selector.refresh_reference(untrained, torch.tensor([0.2, 3.0, 0.5]))
    assert table[untrained].tolist() == pytest.approx([0.2, 3.0, 0.5])
    assert refresh.admitted.tolist() == [True, False, False] and refresh.rejected.tolist() == [False, True, False]
    noisy = torch.tensor([False, True, True])
    assert refresh.metrics(noisy) == {
        "reference/refreshed": 3.0,
        "reference/admitted": 1.0,
        "reference/admitted_noisy_share": 0.0,
        "reference/rejected": 1.0,
        "reference/rejected_noisy_share": 1.0,
    }
    with pytest.raises(ValueError, match="has trained on"):
        selector.refresh_reference(trained, torch.zeros(8))
    with pytest.raises(ValueError, match="finite losses"):
        selector.refresh_reference(untrained, torch.tensor([0.1, float("nan"), 0.1]))
    filter_only = OnlineSelector("reference_filter", keep=4, reference=ReferenceTable(torch.zeros(10)))
    with pytest.raises(ValueError, match="scorer"):
        filter_only.refresh_reference(torch.tensor([1]), torch.zeros(1))


def test_reject_unlearned_makes_repeatedly_unfit_labels_ineligible():
    selector = _selector()
    table = selector.reference.table
    table[:] = 0.1  # every label plausible to the reference (floor 1/3)
    ids = torch.tensor([1, 2, 3])
    memory = selector.scorer.memory
    memory.update(ids, torch.tensor([3.0, 0.2, 3.0]), step=1)
    memory.update(ids[:2], torch.tensor([3.0, 0.2]), step=2)
    # id 1: two visits, still p < floor -> rejected; id 2: learnt; id 3: one visit only.
    result = selector.reject_unlearned(torch.tensor([1, 2, 3, 4]), min_visits=2)
    assert result.ids.tolist() == [1] and result.rejected.tolist() == [True]
    assert table[1].item() == pytest.approx(3.0) and table[2:5].tolist() == pytest.approx([0.1, 0.1, 0.1])
    assert selector.reject_unlearned(torch.tensor([1]), min_visits=2).rejected.tolist() == [False]
    with pytest.raises(ValueError, match="min_visits >= 1"):
        selector.reject_unlearned(ids, min_visits=0)


def test_online_rejection_matches_reject_unlearned_on_just_recorded_ids():
    g = torch.Generator().manual_seed(0)
    selector = _selector(reject_after=2)
    table = selector.reference.table
    table[:] = torch.rand(1000, generator=g) * 2  # some labels implausible to the reference already
    memory = selector.scorer.memory
    for step in range(3):
        ids = torch.randint(0, 40, (30,), generator=g)  # repeated ids within and across steps
        memory.update(ids, torch.rand(30, generator=g) * 4, step=step)
    twin = copy.deepcopy(selector)
    ids = torch.randint(0, 40, (30,), generator=g)
    for s in (selector, twin):
        s.scorer.memory.update(ids, torch.rand(30, generator=torch.Generator().manual_seed(1)) * 4, step=3)
    expected = twin.reject_unlearned(ids, min_visits=2)
    rejected = selector._reject_recorded(ids)
    assert expected.rejected.any() and rejected.tolist() == expected.ids[expected.rejected].tolist()
    assert torch.equal(selector.reference.table, twin.reference.table)


def test_reject_after_rejects_online_as_losses_are_observed():
    table = ReferenceTable(torch.full((100,), 0.1))
    selector = OnlineSelector("predicted_learnability", keep=2, scorer=Scorer(), reference=table, label_floor=1 / 3,
                              reject_after=2, explore=0.0)
    batch = {"input": torch.randn(2, 5), "label": torch.zeros(2, dtype=torch.long), "id": torch.tensor([7, 8])}
    for visit in range(2):
        selected = selector.select(batch)
        losses = torch.where(selected.batch["id"] == 7, torch.tensor(3.0), torch.tensor(0.1))
        selector.observe(selected, losses)
        assert table.table[7].item() == pytest.approx(3.0 if visit == 1 else 0.1)
    assert selector.last_step["rejected_ids"].tolist() == [7]
    assert selector.stats()["selection/unlearned_rejected"] == 1 and table.table[8].item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="reject_after needs a ReferenceTable"):
        OnlineSelector("reference_filter", keep=2, reference=table, label_floor=0.3, reject_after=2)


def test_loop_tally_counts_rejections_and_reads_older_checkpoints():
    from online_select.loop import _Tally

    tally = _Tally(num_classes=3)
    selected = {"id": torch.tensor([4, 5, 6]), "noisy": torch.tensor([True, False, True])}
    tally.add_rejected(torch.tensor([4, 6, 99]), selected, "noisy")  # 99: rejected on another process
    tally.add_rejected(None, selected, "noisy")
    assert (tally.rejected, tally.rejected_noisy) == (2, 2)
    again = _Tally(num_classes=3)
    again.load_state_dict(tally.state_dict())
    assert (again.rejected, again.rejected_noisy) == (2, 2)
    older = {"vector": tally.state_dict()["vector"][:-2]}  # written before the rejection counts existed
    again.load_state_dict(older)
    assert (again.rejected, again.rejected_noisy) == (0, 0) and again.class_counts.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("scale", "rule", "warns", "advice"),
    [
        (1e-4, "sample", True, "temperature on the scores' scale"),
        (0.0, "sample", True, "all but equal"),
        (1e-4, "top_k", False, ""),
        (1.0, "sample", False, ""),
    ],
)
def test_sampling_on_flat_scores_warns_once(scale, rule, warns, advice):
    from online_select.selector import FLAT_WINDOW

    g = torch.Generator().manual_seed(0)
    selector = OnlineSelector("large_loss", keep=4, rule=rule, temperature=0.1,
                              large_loss_fn=lambda batch: 1.0 + scale * torch.rand(len(batch["id"]), generator=g))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2 * FLAT_WINDOW + 10):
            selector.select(_batch(start=32 * step))
    flat = [w for w in caught if issubclass(w.category, FlatScoresWarning)]
    assert len(flat) == (1 if warns else 0)
    assert selector.flat_score_steps == (2 * FLAT_WINDOW + 10 if warns else 0)
    if warns:
        assert "picks nearly at random" in str(flat[0].message) and advice in str(flat[0].message)
        assert flat[0].filename == __file__


def test_a_resumed_selector_warns_of_flat_scores_when_an_uninterrupted_one_would():
    from online_select.selector import FLAT_WINDOW

    def selector():
        g = torch.Generator().manual_seed(0)
        return OnlineSelector("large_loss", keep=4, large_loss_fn=lambda batch: 1.0 + 1e-4 * torch.rand(len(batch["id"]), generator=g))

    first = selector()
    for step in range(FLAT_WINDOW // 2):
        first.select(_batch(start=32 * step))
    resumed = selector()
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(FLAT_WINDOW // 2, FLAT_WINDOW):
            resumed.select(_batch(start=32 * step))
    assert len([w for w in caught if issubclass(w.category, FlatScoresWarning)]) == 1


def test_a_flat_start_that_ends_does_not_warn():
    from online_select.selector import FLAT_WINDOW

    step = iter(range(10**6))
    g = torch.Generator().manual_seed(0)
    # flat for the first 80% of the first window (an untrained scorer), spread out after
    selector = OnlineSelector("large_loss", keep=4, temperature=0.1,
                              large_loss_fn=lambda batch: (1e-4 if next(step) < 0.8 * FLAT_WINDOW else 1.0)
                              * torch.rand(len(batch["id"]), generator=g))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(2 * FLAT_WINDOW):
            selector.select(_batch(start=32 * i))
    assert not [w for w in caught if issubclass(w.category, FlatScoresWarning)]
    assert selector.flat_score_steps == int(0.8 * FLAT_WINDOW)


def _train_plans(selector, plans, steps, model=None, opt=None):
    model = model or torch.nn.Linear(5, 3)
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    for plan in range(plans):
        parts = selector.select_plan(_batch(32 * steps, start=32 * steps * plan), steps=steps)
        for part in parts:
            losses = F.cross_entropy(model(part.batch["input"]), part.batch["label"], reduction="none")
            loss = selector.observe(part, losses)
            assert torch.allclose(loss, part.weighted_mean(losses))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def test_a_plan_selects_k_per_step_and_learns_once_from_all_its_steps():
    table = ReferenceTable(torch.rand(1000) * 2)
    selector = OnlineSelector(keep=0.25, scorer=Scorer(update_every=4), reference=table, label_floor=1 / 3)
    parts = selector.select_plan(_batch(128), steps=4)
    assert [part.k for part in parts] == [8, 8, 8, 8] and [part.step for part in parts] == [0, 1, 2, 3]
    picked = torch.cat([part.indices for part in parts])
    assert picked.unique().numel() == 32
    for part in parts:  # each part's batch is its own picks, every field sliced alike
        assert torch.equal(part.batch["id"], part.ids[part.indices])
        assert part.batch["text"] == [f"sample {int(i)}" for i in part.batch["id"]]
    for i, part in enumerate(parts):  # each step drew its own k (one explored) from its own B candidates
        assert part.indices.min() >= 32 * i and part.indices.max() < 32 * (i + 1) and int(part.explored.sum()) == 1
    model = torch.nn.Linear(5, 3)
    for i, part in enumerate(parts):
        assert selector.step == 0 and len(selector.scorer.memory) == 0  # nothing learnt before the last part
        losses = F.cross_entropy(model(part.batch["input"]), part.batch["label"], reduction="none")
        selector.observe(part, losses.detach())
    assert selector.step == 4 and selector.scorer.updates == 1 and len(selector.scorer.memory) == 32
    assert selector.stats()["selection/samples_seen"] == 128
    _, last_step, count = selector.scorer.memory.lookup(torch.cat([part.selected_ids for part in parts]))
    assert last_step.tolist() == [step for step in range(4) for _ in range(8)] and count.eq(1).all()


def test_plans_train_like_steps():
    torch.manual_seed(0)
    planned = _selector()
    _train_plans(planned, 5, steps=4)
    assert planned.step == 20 and planned.scorer.updates == 5 and len(planned.scorer.memory) == 160
    stats = planned.stats()
    assert stats["selection/samples_seen"] == 640 and "selection/spearman_explore" in stats
    # A plan of one step is a plain select.
    single = _selector()
    assert single.select_plan(_batch(), steps=1)[0].plan is None


def test_plan_misuse_is_named():
    selector = _selector()
    with pytest.raises(ValueError, match="divisible"):
        selector.select_plan(_batch(30), steps=4)
    with pytest.raises(ValueError, match="whole number of steps"):
        selector.select_plan(_batch(32), steps=0)
    parts = selector.select_plan(_batch(64), steps=2)
    with pytest.raises(RuntimeError, match="in the order"):
        selector.observe(parts[1], torch.ones(8))
    with pytest.raises(RuntimeError, match="not observed yet"):
        selector.select(_batch())
    with pytest.raises(RuntimeError, match="between plans"):
        selector.state_dict()
    with pytest.raises(NonFiniteLossError, match="NaN"):
        selector.observe(parts[0], torch.tensor([float("nan")] + [1.0] * 7))
    for part in parts:
        selector.observe(part, torch.ones(8))
    with pytest.raises(RuntimeError, match="once each"):
        selector.observe(parts[1], torch.ones(8))
    assert selector.step == 2 and "scorer" in selector.state_dict()


def _same(a, b) -> bool:
    """Nested states equal, tensors exactly (NaN equal to NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.nan_to_num(-1), b.nan_to_num(-1))
    return a == b


def test_ending_a_plan_early_leaves_the_state_of_a_shorter_plan():
    candidates = _batch(128)
    model = torch.nn.Linear(5, 3)

    def run(steps, batch, observe):
        torch.manual_seed(0)
        selector = _selector()
        parts = selector.select_plan(batch, steps=steps)
        for part in parts[:observe]:
            selector.observe(part, F.cross_entropy(model(part.batch["input"]), part.batch["label"], reduction="none").detach())
        return selector, parts

    ended, parts = run(4, candidates, observe=2)
    assert ended.end_plan() == 2 and ended.end_plan() == 0
    shorter, short_parts = run(2, take(candidates, torch.arange(64)), observe=2)
    assert [p.batch["id"].tolist() for p in parts[:2]] == [p.batch["id"].tolist() for p in short_parts]
    state, expected = ended.state_dict(), shorter.state_dict()
    assert state["step"] == expected["step"] == 2 and state["samples_seen"] == expected["samples_seen"] == 64
    assert _same(state["scorer"], expected["scorer"]) and state["scorer"]["updates"] == 1
    with pytest.raises(RuntimeError, match="dropped by end_plan"):
        ended.observe(parts[2], torch.ones(8))
    ended.select(_batch(start=128))  # the next selection goes on as after any plan
    none_observed, _ = run(4, candidates, observe=0)
    assert none_observed.end_plan() == 4 and none_observed.step == 0 and len(none_observed.scorer.memory) == 0


def test_a_plan_over_separate_batches_selects_as_over_the_joined_one_without_joining_them():
    batches = [_batch(32, start=32 * i) for i in range(4)]
    model = torch.nn.Linear(5, 3)

    def run(plan):
        torch.manual_seed(0)
        selector = _selector()
        assert not selector.reads_candidates  # the memory and a ReferenceTable look candidates up by id
        picks = []
        for _ in range(2):
            for part in plan(selector):
                picks.append(part.batch["id"].tolist())
                selector.observe(part, F.cross_entropy(model(part.batch["input"]), part.batch["label"], reduction="none").detach())
        return selector, picks

    joined, joined_picks = run(lambda selector: selector.select_plan(concat(batches), steps=4))
    separate, separate_picks = run(lambda selector: selector.select_steps(batches))
    assert separate_picks == joined_picks and _same(separate.state_dict()["scorer"], joined.state_dict()["scorer"])
    # Never joined, so each step's batch may have its own padded length; each part is cut from its own batch.
    padded = [dict(batch, tokens=torch.zeros(32, 3 + i)) for i, batch in enumerate(batches)]
    parts = _selector().select_steps(padded)
    assert [part.batch["tokens"].shape[1] for part in parts] == [3, 4, 5, 6]
    assert all(part.batch["text"] == [f"sample {int(i)}" for i in part.batch["id"]] for part in parts)
    reading = OnlineSelector("large_loss", keep=8, large_loss_fn=lambda batch: batch["input"].sum(1))
    assert reading.reads_candidates
    with pytest.raises(BatchError, match=r"batch\['tokens'\] of batch 1 has shape"):
        reading.select_steps(padded)
    with pytest.raises(ValueError, match="one candidate count"):
        _selector().select_steps([batches[0], _batch(16, start=500)])
    # Joined too: 32 + 16 candidates would split into two steps of 24, one step's picks from the other's batch.
    with pytest.raises(ValueError, match="batch 1 has 16, batch 0 has 32"):
        reading.select_steps([batches[0], _batch(16, start=500)])


def test_a_plan_skips_nonfinite_losses_when_told():
    selector = _selector(on_nonfinite="skip")
    parts = selector.select_plan(_batch(64), steps=2)
    bad = torch.tensor([float("nan")] + [1.0] * 7)
    assert torch.isclose(selector.observe(parts[0], bad), torch.tensor(1.0))
    selector.observe(parts[1], torch.ones(8))
    assert selector.stats()["selection/nonfinite_losses"] == 1 and len(selector.scorer.memory) == 15


def test_selecting_under_inference_mode_leaves_a_selector_that_learns():
    model = torch.nn.Linear(5, 3)
    selector = _selector()
    for step in range(6):
        with torch.inference_mode():  # a natural wrapper for scoring; the scorer is built inside on the first call
            selected = selector.select(_batch(start=32 * (step % 3)))
        selector.observe(selected, F.cross_entropy(model(selected.batch["input"]), selected.batch["label"], reduction="none"))
    with torch.inference_mode():
        parts = selector.select_steps([_batch(start=0), _batch(start=32)])
    for part in parts:
        selector.observe(part, torch.ones(part.k))
    assert selector.scorer.updates == 7 and not torch.is_inference(selector.scorer.norm.mean)
