import base64
import io

import pytest
import torch

from online_select import OnlineSelector, Scorer, learnability
from online_select.reference import ReferenceTable
from online_select.selector import SelectedBatch
from online_select.telemetry import (
    SelectionTelemetry,
    coverage_summary,
    distribution_shift,
    most_rejected,
    most_selected,
    oracle_policy_name,
    oracle_scores,
    precision_at_k,
    render_example,
    score_histogram,
    step_summary,
)


def _selected(scores, indices, explored, ids=None):
    scores = torch.tensor(scores, dtype=torch.float32)
    indices = torch.tensor(indices)
    return SelectedBatch(
        batch=None,
        indices=indices,
        weights=torch.ones(len(indices)),
        explored=torch.tensor(explored),
        scores=scores,
        ids=None if ids is None else torch.tensor(ids),
        candidate_batch_size=len(scores),
        step=0,
    )


def test_step_summary_reports_keep_ratio_exploration_and_score_gap():
    selected = _selected([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [7, 6, 0, 5], [False, False, True, False])
    summary = step_summary(selected)
    assert summary["keep_ratio"] == 0.5
    assert summary["explore_share"] == 0.25
    assert summary["selected_score_mean"] == pytest.approx(4.5)
    assert summary["rejected_score_mean"] == pytest.approx(2.5)
    assert summary["score_gap"] == pytest.approx(2.0)
    assert summary["score_mean"] == pytest.approx(3.5)
    assert summary["score_q10"] < summary["score_q50"] < summary["score_q90"]


def test_score_histogram_shares_edges_and_counts_every_score():
    hist = score_histogram(torch.tensor([0.9, 1.0]), torch.tensor([0.0, 0.1, 0.2]), bins=5)
    assert len(hist["edges"]) == 6 and hist["edges"][0] == 0.0 and hist["edges"][-1] == 1.0
    assert sum(hist["selected"]) == 2 and sum(hist["rejected"]) == 3
    assert hist["selected"][-1] == 2 and hist["rejected"][0] == 2
    assert score_histogram(torch.zeros(0), torch.zeros(0)) is None
    same = score_histogram(torch.ones(3), torch.ones(2), bins=4)
    assert sum(same["selected"]) == 3 and sum(same["rejected"]) == 2


def test_precision_at_k():
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    assert precision_at_k(scores, scores, 2) == 1.0
    assert precision_at_k(scores, -scores, 2) == 0.0
    assert precision_at_k(scores, torch.tensor([5.0, 0.0, 4.0, 0.0, 0.0]), 2) == 0.5
    with pytest.raises(ValueError, match="k=0"):
        precision_at_k(scores, scores, 0)
    with pytest.raises(ValueError, match="oracle"):
        precision_at_k(scores, scores[:3], 2)


def test_oracle_is_the_policy_with_exact_losses():
    exact, reference = torch.tensor([0.1, 2.0, 1.0]), torch.tensor([0.2, 3.0, 0.5])
    got = oracle_scores("predicted_learnability", exact, reference, 0.1)
    assert torch.allclose(got, learnability(exact, reference, 0.1))
    assert torch.equal(oracle_scores("predicted_loss", exact), exact)
    assert torch.allclose(oracle_scores("reducible_loss", exact, reference), exact - reference)
    assert oracle_policy_name("uniform", has_reference=False) == "large_loss"
    assert oracle_policy_name("uniform", has_reference=True) == "learnability"
    assert oracle_policy_name("predicted_learnability", True) == "predicted_learnability"
    assert oracle_policy_name("predicted_loss", False, requested="large_loss") == "large_loss"
    assert oracle_policy_name("reference_filter", has_reference=True) == "learnability"
    with pytest.raises(ValueError, match="unknown policy"):
        oracle_policy_name("predicted_loss", False, requested="nope")
    with pytest.raises(ValueError, match="the uniform policy's score is a random draw"):
        oracle_policy_name("predicted_loss", False, requested="uniform")
    with pytest.raises(ValueError, match="needs reference"):
        oracle_scores("learnability", exact)


def test_coverage_and_most_selected_and_rejected():
    picks = torch.tensor([5, 0, 1, 0, 0])
    appearances = torch.tensor([6, 9, 1, 0, 2])
    summary = coverage_summary(picks, appearances)
    assert summary["coverage"] == pytest.approx(2 / 4)
    assert summary["never_picked"] == 2 and summary["samples_candidate"] == 4
    assert summary["pick_count_max"] == 5
    assert summary["top1pct_pick_share"] == pytest.approx(5 / 6)
    assert most_selected(picks, appearances, 2).tolist() == [0, 2]
    assert most_rejected(picks, appearances, 2).tolist() == [1, 4]
    assert coverage_summary(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)) == {}


def test_distribution_shift_total_variation():
    same = distribution_shift(torch.tensor([1, 1]), torch.tensor([5, 5]))
    assert same["tv"] == 0.0 and same["selected_share"] == [0.5, 0.5]
    disjoint = distribution_shift(torch.tensor([4, 0]), torch.tensor([0, 7]))
    assert disjoint["tv"] == 1.0


def test_render_example_image_and_text():
    from PIL import Image

    rendered = render_example(torch.randn(1, 12, 10))
    image = Image.open(io.BytesIO(base64.b64decode(rendered["image"])))
    assert image.size == (10, 12)
    assert render_example("a short review")["text"] == "a short review"


def _stream(n_steps, batch=64, num_ids=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        ids = torch.randperm(num_ids, generator=g)[:batch]
        yield {
            "x": torch.randn(batch, 3, generator=g),
            "label": ids % 5,
            "noisy": ids % 7 == 0,
            "id": ids,
        }


def _exact_loss(batch):
    return (batch["id"].float() % 13) / 13.0


def test_audit_of_an_exact_policy_matches_its_oracle():
    reference = ReferenceTable(torch.linspace(0.05, 2.0, 500))
    selector = OnlineSelector("learnability", keep=16, reference=reference, large_loss_fn=_exact_loss, explore=0.0,
                              label_floor=0.2)
    telemetry = SelectionTelemetry(selector, large_loss_fn=_exact_loss, audit_every=1, audit_size=32)
    for batch in _stream(3):
        selected = selector.select(batch)
        result = telemetry.audit(batch, selected)
        selector.observe(selected, _exact_loss(selected.batch))
        assert result["precision_at_k"] == 1.0 and result["spearman_score"] == pytest.approx(1.0)
        assert result["chance_precision"] == 8 / 32
        assert 0.0 <= result["oracle_noisy_share"] <= 1.0
    metrics = telemetry.eval_metrics()
    assert metrics["audit/precision_at_k"] == 1.0 and metrics["audit/count"] == 3
    assert telemetry.eval_metrics().get("audit/count") is None  # the eval window restarted


def test_the_audit_oracle_follows_a_policy_switch():
    reference = ReferenceTable(torch.linspace(0.05, 2.0, 500))
    selector = OnlineSelector("learnability", keep=16, reference=reference, large_loss_fn=_exact_loss, explore=0.0,
                              label_floor=0.2, switch_to="reducible_loss", switch_at=2)
    telemetry = SelectionTelemetry(selector, large_loss_fn=_exact_loss, audit_every=1, audit_size=32)
    oracles = []
    for batch in _stream(4):
        selected = selector.select(batch)
        oracles.append(telemetry.oracle)
        result = telemetry.audit(batch, selected)
        selector.observe(selected, _exact_loss(selected.batch))
        assert result["precision_at_k"] == 1.0  # each exact policy matches its own oracle, before and after
    assert oracles == ["learnability", "learnability", "reducible_loss", "reducible_loss"]
    assert telemetry.eval_metrics()["audit/oracle"] == "reducible_loss"


def test_uniform_selection_audits_near_chance():
    selector = OnlineSelector("uniform", keep=16, seed=3)
    telemetry = SelectionTelemetry(selector, large_loss_fn=_exact_loss, audit_every=1, audit_size=64)
    assert telemetry.oracle == "large_loss"
    precisions = []
    for batch in _stream(40, seed=1):
        selected = selector.select(batch)
        precisions.append(telemetry.audit(batch, selected)["precision_at_k"])
        selector.observe(selected, _exact_loss(selected.batch))
    assert 0.1 < sum(precisions) / len(precisions) < 0.4  # chance is 16/64


def test_spearman_gives_ties_their_mean_rank_and_nan_for_a_constant_side():
    from online_select.selector import spearman

    # ranks (0.5, 0.5, 2.5, 2.5) against (0, 1, 2, 3): 4 / (2 * sqrt(5))
    assert spearman(torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.arange(4.0)) == pytest.approx(2 / 5**0.5)
    assert spearman(torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([2.0, 1.0, 3.0, 0.0])) == pytest.approx(2 / 5**0.5)
    assert spearman(torch.zeros(8), torch.arange(8.0)) != spearman(torch.zeros(8), torch.arange(8.0))  # NaN


def test_plans_are_audited_when_one_of_their_steps_is_due():
    telemetry = SelectionTelemetry(OnlineSelector("uniform", keep=4), large_loss_fn=_exact_loss, audit_every=200)
    assert [step for step in range(1, 801, 4) if telemetry.audit_due(step, 4)] == [197, 397, 597, 797]
    assert [step for step in range(1, 801) if telemetry.audit_due(step)] == [200, 400, 600, 800]


def test_a_reference_filter_audit_ranks_only_what_the_filter_lets_through():
    # The odd ids' labels are implausible (p_ref = exp(-5)); the filter never picks them, whatever their random score.
    reference = ReferenceTable(torch.where(torch.arange(500) % 2 == 1, 5.0, 0.1))
    selector = OnlineSelector("reference_filter", keep=16, reference=reference, label_floor=0.05)
    telemetry = SelectionTelemetry(selector, large_loss_fn=_exact_loss, audit_every=1, audit_size=64, noise_key="odd")
    assert telemetry.oracle == "learnability"
    for batch in _stream(5):
        batch["odd"] = batch["id"] % 2 == 1
        result = telemetry.audit(batch, selector.select(batch))
        assert result["selector_noisy_share"] == 0.0 and result["oracle_noisy_share"] == 0.0


def test_an_audit_of_candidates_other_than_the_scored_ones_is_skipped_with_a_warning():
    # As with distributed="global", where the scores cover every process's candidates and this one holds its own.
    selector = OnlineSelector("large_loss", keep=4, large_loss_fn=_exact_loss)
    telemetry = SelectionTelemetry(selector, large_loss_fn=_exact_loss, audit_every=1)
    batch = next(_stream(1))
    selected = selector.select(batch)
    own = {key: value[:16] for key, value in batch.items()}
    with pytest.warns(UserWarning, match="audits are skipped with distributed='global'"):
        assert telemetry.audit(own, selected) == {}


def test_a_global_selection_is_recorded_with_every_processs_picks():
    # Process 0 of 2 trains 2 of the 4 global picks among 16 candidates (8 each); the others' picks are not rejected.
    selected = _selected([float(i) for i in range(16)], [15, 3], [False, True], ids=list(range(16)))
    selected.global_indices = torch.tensor([15, 3, 14, 9])
    telemetry = SelectionTelemetry(OnlineSelector("uniform", keep=2))
    telemetry.record_step(None, selected)
    metrics = telemetry.step_metrics()
    assert metrics["selection/keep_ratio"] == 4 / 16 and metrics["selection/explore_share"] == 1 / 2
    assert metrics["selection/selected_score_mean"] == pytest.approx((15 + 3 + 14 + 9) / 4)
    assert int(telemetry.picks.sum()) == 4


def test_telemetry_never_changes_the_selection():
    def run(with_telemetry):
        torch.manual_seed(0)
        selector = OnlineSelector("predicted_loss", keep=8, scorer=Scorer(), explore=0.25, seed=5)
        telemetry = SelectionTelemetry(selector, large_loss_fn=_exact_loss, audit_every=2, audit_size=16)
        picked = []
        for step, batch in enumerate(_stream(12, seed=2), 1):
            selected = selector.select(batch)
            if with_telemetry:
                if telemetry.audit_due(step):
                    telemetry.audit(batch, selected)
                telemetry.record_step(batch, selected, {"large": 0.01})
                if step % 4 == 0:
                    telemetry.step_metrics()
            selector.observe(selected, _exact_loss(selected.batch))
            picked.append(selected.selected_ids.tolist())
        return picked

    assert run(True) == run(False)


def test_record_step_and_summaries():
    selector = OnlineSelector("predicted_loss", keep=8, scorer=Scorer(), explore=0.25)
    telemetry = SelectionTelemetry(selector, histogram_bins=10)
    assert telemetry.step_metrics() == {}
    for batch in _stream(5):
        selected = selector.select(batch)
        telemetry.record_step(batch, selected, {"large": 0.02, "select": 0.001})
        selector.observe(selected, _exact_loss(selected.batch))
    metrics = telemetry.step_metrics()
    assert metrics["selection/keep_ratio"] == 8 / 64
    assert metrics["selection/explore_share"] == 0.25
    assert metrics["selection/large_samples"] == 40
    assert metrics["time/large_ms"] == pytest.approx(20.0)
    assert metrics["time/telemetry_ms"] > 0
    hist = metrics["selection/score_hist"]
    assert sum(hist["selected"]) == 40 and sum(hist["rejected"]) == 5 * 56 and len(hist["edges"]) == 11
    for key in ("score_q10", "score_q50", "score_q90", "selected_score_q50", "rejected_score_q50", "score_gap"):
        assert f"selection/{key}" in metrics
    evals = telemetry.eval_metrics()
    assert evals["selection/samples_candidate"] == int((telemetry.appearances > 0).sum())
    assert telemetry.picks.sum() == 40 and telemetry.appearances.sum() == 5 * 64
    assert len(evals["selection/label_selected_share"]) == 5
    assert sum(evals[f"selection/label_share/{c}"] for c in range(5)) == pytest.approx(1.0)
    assert 0.0 <= evals["selection/label_tv"] <= 1.0
    assert "audit/precision_at_k" not in evals


def test_example_rows_use_the_lookup_and_state_round_trips():
    selector = OnlineSelector("uniform", keep=8)
    telemetry = SelectionTelemetry(selector)
    for batch in _stream(6):
        selected = selector.select(batch)
        telemetry.record_step(batch, selected)
        selector.observe(selected, _exact_loss(selected.batch))

    def lookup(ids):
        return {"example": [torch.rand(4, 4) for _ in ids], "label": (ids % 5).tolist(), "noisy": (ids % 7 == 0).tolist()}

    tables = telemetry.example_rows(3, lookup)
    top = tables["most_selected"]
    assert len(top) == 3 and top[0]["picks"] >= top[1]["picks"] >= top[2]["picks"]
    assert top[0]["picks"] == int(telemetry.picks.max())
    assert {"id", "picks", "rejections", "pick_rate", "last_score", "image", "label", "noisy"} <= set(top[0])
    rejected = tables["most_rejected"]
    assert rejected[0]["rejections"] == int((telemetry.appearances - telemetry.picks).max())

    restored = SelectionTelemetry(OnlineSelector("uniform", keep=8))
    restored.load_state_dict(telemetry.state_dict())
    assert torch.equal(restored.picks, telemetry.picks) and torch.equal(restored.appearances, telemetry.appearances)


def test_bad_configuration_is_a_clear_error():
    selector = OnlineSelector("uniform", keep=4)
    with pytest.raises(ValueError, match="large_loss_fn"):
        SelectionTelemetry(selector, audit_every=10)
    with pytest.raises(ValueError, match="needs reference losses"):
        SelectionTelemetry(selector, large_loss_fn=_exact_loss, audit_every=10, audit_oracle="learnability")
    telemetry = SelectionTelemetry(selector)
    batch = next(_stream(1))
    batch["id"] = batch["id"] - 1000
    with pytest.raises(ValueError, match="non-negative"):
        telemetry.record_step(batch, selector.select(batch))


def test_tables_due_cadence():
    telemetry = SelectionTelemetry(OnlineSelector("uniform", keep=4), table_every=100)
    steps = [*range(0, 500, 40), 500]
    due = [step for step in steps if telemetry.tables_due(step, final=step == 500)]
    assert due == [120, 240, 360, 480, 500]


def test_no_audit_when_nothing_was_rejected():
    selector = OnlineSelector("uniform", keep=64)
    telemetry = SelectionTelemetry(selector, large_loss_fn=_exact_loss, audit_every=1)
    batch = next(_stream(1))
    assert telemetry.audit(batch, selector.select(batch)) == {}
    assert "audit/count" not in telemetry.eval_metrics()


def test_tables_leave_out_never_picked_and_never_rejected_samples():
    picks = torch.tensor([2, 0, 1])
    appearances = torch.tensor([2, 3, 1])
    assert most_selected(picks, appearances, 5).tolist() == [0, 2]
    assert most_rejected(picks, appearances, 5).tolist() == [1]
