import pytest
import torch

from online_select import POLICIES, Signals, get_policy, learnability
from online_select.policies import plausible_labels


def _signals(b=6):
    g = torch.Generator().manual_seed(0)
    return Signals(
        batch_size=b,
        large_loss=torch.rand(b, generator=g) * 3,
        reference_loss=torch.rand(b, generator=g) * 3,
        predicted_loss=torch.rand(b, generator=g) * 3,
        proxy_loss=torch.rand(b, generator=g) * 3,
        generator=g,
    )


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_scores_every_candidate(name):
    scores = get_policy(name).score(_signals(), label_floor=0.1)
    assert scores.shape == (6,) and torch.isfinite(scores).all()


def test_policies_declare_what_they_need():
    assert not get_policy("predicted_learnability").needs_large_forward
    assert not get_policy("predicted_loss").needs_large_forward
    assert get_policy("reducible_loss").needs_large_forward and get_policy("reducible_loss").needs_reference
    assert get_policy("large_loss").needs_large_forward
    assert get_policy("proxy_loss").needs_proxy
    assert get_policy("uniform").needs == ()


def test_reducible_loss_is_rho_loss():
    s = _signals()
    assert torch.allclose(get_policy("reducible_loss").score(s), s.large_loss - s.reference_loss)


def test_predicted_reducible_loss_is_rho_loss_from_the_prediction_over_the_plausible():
    s = _signals()
    policy = get_policy("predicted_reducible_loss")
    assert not policy.needs_large_forward and policy.needs_scorer and policy.needs_reference
    assert torch.allclose(policy.score(s), s.predicted_loss - s.reference_loss)
    assert torch.equal(policy.eligible(s, label_floor=0.1), plausible_labels(s.reference_loss, 0.1))
    assert policy.eligible(s, label_floor=0.0) is None


def test_learnability_ranks_unlearnt_clean_over_learnt_clean_over_mislabelled():
    # p = exp(-loss). clean & unlearnt: reference confident, large model not;
    # clean & learnt: both confident; mislabelled: reference gives the label ~chance or less.
    large = -torch.log(torch.tensor([0.2, 0.98, 0.01]))
    ref = -torch.log(torch.tensor([0.8, 0.8, 0.03]))
    scores = learnability(large, ref, label_floor=0.1)
    assert scores[0] > scores[1] > scores[2]
    assert scores[2] < 0


def test_raw_reducible_loss_prefers_mislabelled_once_the_large_model_is_confident():
    # The failure mode learnability avoids (PRIOR_ART lesson 7).
    large = -torch.log(torch.tensor([0.2, 0.98, 0.001]))
    ref = -torch.log(torch.tensor([0.8, 0.8, 0.03]))
    rho = large - ref
    assert rho.argmax() == 2


def test_unknown_policy_lists_known_ones():
    with pytest.raises(ValueError, match="unknown policy 'best'; known policies: uniform"):
        get_policy("best")


def test_missing_signal_is_a_clear_error():
    with pytest.raises(ValueError, match="signal 'large_loss' was not computed"):
        get_policy("large_loss").score(Signals(batch_size=3))


@pytest.mark.parametrize("floor", [0.0, 1e-6, 0.05, 0.1, 1 / 3, 0.99, 1.0, 1.5])
def test_plausible_labels_is_p_ref_at_least_the_floor(floor):
    losses = torch.cat([torch.linspace(-2.0, 20.0, 4001), torch.tensor([float("nan"), float("inf"), float("-inf")])])
    p_ref = torch.exp(-losses.double().clamp_min(0.0))
    # Off the floor itself, where float32 rounding may fall either way.
    clear = ~torch.isclose(p_ref, torch.tensor(floor, dtype=torch.float64), rtol=1e-5, atol=0.0)
    expected = p_ref >= floor
    assert torch.equal(plausible_labels(losses, floor)[clear], expected[clear])
    assert torch.equal(plausible_labels(losses[:1], floor), torch.tensor([floor <= 1]))  # loss -2: p_ref 1


def test_learnability_policies_exclude_implausible_labels():
    s = _signals()
    s.reference_loss = -torch.log(torch.tensor([0.9, 0.05, 0.5, 0.01, 0.2, 0.11]))
    mask = get_policy("predicted_learnability").eligible(s, label_floor=0.1)
    assert mask.tolist() == [True, False, True, False, True, True]
    assert get_policy("predicted_learnability").eligible(s, label_floor=0.0) is None
    assert get_policy("reducible_loss").eligible(s, label_floor=0.1) is None


def test_a_fitted_label_floor_lies_between_the_plausible_and_the_implausible_labels():
    from online_select import fit_label_floor

    g = torch.Generator().manual_seed(0)
    plausible = torch.exp(torch.randn(7000, generator=g) * 0.8 - 2.5)  # p_ref around 0.92
    implausible = torch.exp(torch.randn(3000, generator=g) * 0.3 + 1.3)  # p_ref around 0.03
    losses = torch.cat([plausible, implausible, torch.full((50,), float("nan"))])  # ids the reference lacks
    floor = fit_label_floor(losses)
    kept = plausible_labels(losses, floor)
    assert float(kept[:7000].float().mean()) > 0.99 and float(kept[7000:10000].float().mean()) < 0.01
    assert floor == fit_label_floor(losses[torch.randperm(losses.numel(), generator=g)])  # order does not matter
    with pytest.raises(ValueError, match="no second group of labels"):
        fit_label_floor(plausible)
    with pytest.raises(ValueError, match="10 or more finite reference losses, got 3"):
        fit_label_floor(torch.tensor([0.1, 2.0, float("nan"), 3.0]))
