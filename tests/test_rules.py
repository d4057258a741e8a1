import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from online_select import annealed_temperature, resolve_keep, select
from online_select._tensors import all_finite


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 200),
    frac=st.floats(0.01, 1.0),
    explore=st.floats(0.0, 1.0),
    rule=st.sampled_from(["top_k", "sample"]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_selection_properties(b, frac, explore, rule, weighted, seed):
    k = max(1, min(b, round(frac * b)))
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, generator=g) * 5
    sel = select(scores, k, rule=rule, explore=explore, importance_weights=weighted and rule == "sample", generator=g)
    assert sel.indices.numel() == k
    assert sel.indices.unique().numel() == k
    assert int(sel.indices.min()) >= 0 and int(sel.indices.max()) < b
    assert torch.isfinite(sel.weights).all() and (sel.weights > 0).all()
    assert int(sel.explored.sum()) == min(k, round(explore * k))


def test_top_k_picks_the_highest_scores():
    scores = torch.tensor([0.1, 5.0, -1.0, 3.0, 2.0])
    sel = select(scores, 2)
    assert sorted(sel.indices.tolist()) == [1, 3]
    assert sel.weights.tolist() == [1.0, 1.0]


def test_exploration_picks_are_uniform_over_candidates():
    # With explore=1 the selection ignores scores: each candidate is equally likely.
    counts = torch.zeros(10)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        sel = select(torch.arange(10.0), 2, explore=1.0, generator=g)
        counts[sel.indices] += 1
    assert counts.min() > 300 and counts.max() < 500


def test_importance_weights_are_unbiased():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(40, generator=g)
    losses = torch.rand(40, generator=g) * 3
    losses = losses + 2 * (scores > 0)  # make high-score candidates have high losses
    weighted, plain = [], []
    for _ in range(10000):
        sel = select(scores, 8, rule="sample", temperature=0.5, explore=0.25, importance_weights=True, generator=g)
        weighted.append(float((sel.weights * losses[sel.indices]).mean()))
        plain.append(float(losses[sel.indices].mean()))
    weighted = torch.tensor(weighted)
    standard_error = float(weighted.std()) / len(weighted) ** 0.5
    assert abs(float(weighted.mean()) - float(losses.mean())) < 4 * standard_error
    # Without the weights the same picks over-represent high-score (high-loss) candidates.
    assert float(torch.tensor(plain).mean()) - float(losses.mean()) > 10 * standard_error


def test_importance_weights_of_picks_that_are_all_exploration_are_unbiased():
    # No pick is left for the rule: the uniform sample stands for every eligible candidate.
    g = torch.Generator().manual_seed(0)
    scores, losses = torch.randn(16, generator=g), torch.rand(16, generator=g) * 3
    estimates = []
    for _ in range(4000):
        sel = select(scores, 4, rule="sample", explore=1.0, importance_weights=True, generator=g)
        estimates.append(float((sel.weights * losses[sel.indices]).mean()))
    estimates = torch.tensor(estimates)
    assert abs(float(estimates.mean()) - float(losses.mean())) < 4 * float(estimates.std()) / len(estimates) ** 0.5


def test_sampling_prefers_high_scores():
    g = torch.Generator().manual_seed(0)
    scores = torch.zeros(100)
    scores[:10] = 5.0
    hits = sum(int((select(scores, 10, rule="sample", generator=g).indices < 10).sum()) for _ in range(100))
    assert hits > 800


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 6}, "cannot keep k=6 samples from a candidate batch of B=5"),
        ({"k": 0}, "cannot keep k=0"),
        ({"k": 2, "rule": "best"}, "unknown selection rule"),
        ({"k": 2, "importance_weights": True}, "importance_weights=True needs rule='sample'"),
        ({"k": 2, "explore": 1.5}, "explore must be in"),
        ({"k": 2, "rule": "sample", "temperature": 0.0}, "temperature must be positive"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select(torch.zeros(5), **kwargs)


def test_non_finite_scores_are_an_error():
    with pytest.raises(ValueError, match="1 of 3 candidate scores are NaN"):
        select(torch.tensor([1.0, float("nan"), 0.0]), 1)
    with pytest.raises(ValueError, match="2 of 3 candidate scores are NaN or infinite"):
        select(torch.tensor([float("inf"), 1.0, float("-inf")]), 1)


def test_finite_scores_whose_sum_overflows_are_not_an_error():
    huge = torch.finfo(torch.float32).max
    assert select(torch.tensor([huge, huge, 0.0]), 1, rule="top_k", explore=0.0).indices.tolist() == [0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_all_finite(dtype):
    nan, inf, huge = float("nan"), float("inf"), torch.finfo(dtype).max
    for values, expected in [
        ([1.0, 2.0], True),
        ([], True),
        ([1.0, nan], False),
        ([inf, 1.0], False),
        ([inf, -inf], False),
        ([huge, huge], True),  # the sum overflows, the values are finite
    ]:
        assert all_finite(torch.tensor(values, dtype=dtype)) is expected, values
    assert all_finite(torch.tensor([5, 7])) is True
    assert all_finite(torch.tensor([1 + 1j, complex(1, float("nan"))])) is False


def test_resolve_keep():
    assert resolve_keep(0.1, 640) == 64
    assert resolve_keep(64, 640) == 64
    assert resolve_keep(0.001, 10) == 1
    with pytest.raises(ValueError, match="cannot keep k=65"):
        resolve_keep(65, 64)
    with pytest.raises(ValueError, match="keep ratio must be in"):
        resolve_keep(1.5, 10)
    with pytest.raises(ValueError, match="must be positive"):
        resolve_keep(0, 10)
    with pytest.raises(ValueError, match="empty"):
        resolve_keep(3, 0)


def test_eligibility_restricts_exploration_and_rule():
    g = torch.Generator().manual_seed(0)
    scores = torch.arange(20.0)
    eligible = torch.zeros(20, dtype=torch.bool)
    eligible[:10] = True  # the ten lowest scores are the only eligible ones
    for rule in ("top_k", "sample"):
        sel = select(scores, 6, rule=rule, explore=0.5, eligible=eligible, generator=g)
        assert bool(eligible[sel.indices].all()) and sel.num_eligible == 10
    top = select(scores, 4, eligible=eligible)
    assert sorted(top.indices.tolist()) == [6, 7, 8, 9]


def test_too_few_eligible_are_topped_up_by_score():
    eligible = torch.zeros(10, dtype=torch.bool)
    eligible[[0, 1]] = True
    sel = select(torch.arange(10.0), 4, eligible=eligible, explore=0.25)
    assert sorted(sel.indices.tolist()) == [0, 1, 8, 9]


def test_exploration_never_takes_ineligible_candidates():
    # One eligible candidate, an exploration share of 4: the other 7 picks are the best-scoring others.
    eligible = torch.zeros(32, dtype=torch.bool)
    eligible[0] = True
    for seed in range(20):
        sel = select(torch.arange(32.0), 8, explore=0.5, eligible=eligible, generator=torch.Generator().manual_seed(seed))
        assert sorted(sel.indices.tolist()) == [0, *range(25, 32)]
        assert sel.indices[sel.explored].tolist() == [0]


def test_top_k_breaks_ties_by_position():
    for b, k in ((16, 4), (1000, 37)):
        assert sorted(select(torch.zeros(b), k).indices.tolist()) == list(range(k))
    eligible = torch.zeros(10, dtype=torch.bool)
    eligible[0] = True
    assert sorted(select(torch.zeros(10), 3, eligible=eligible).indices.tolist()) == [0, 1, 2]


def test_annealed_temperature_is_geometric_between_its_ends():
    assert annealed_temperature(0.1, 1.0, 0.0) == pytest.approx(0.1)
    assert annealed_temperature(0.1, 1.0, 0.5) == pytest.approx(0.1**0.5)
    assert annealed_temperature(0.1, 1.0, 1.0) == pytest.approx(1.0)
    assert annealed_temperature(0.1, 1.0, 2.0) == pytest.approx(1.0)
    assert annealed_temperature(1.0, 0.1, 0.5) == pytest.approx(0.1**0.5)
    with pytest.raises(ValueError, match="temperature end must be positive"):
        annealed_temperature(0.1, 0.0, 0.5)
