"""A W&B workspace laying out the selection telemetry in sections (built with ``wandb-workspaces``).

:func:`selection_workspace` builds the definition offline; :func:`create_dashboard` (the CLI's
``online-select dashboard --entity E --project P``) saves it to W&B and needs a logged-in account.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SECTIONS", "selection_workspace", "create_dashboard"]

# (section, [(panel title, x key, [y keys])]); x "Step" is the logged step (large-model optimizer steps).
SECTIONS: list[tuple[str, list[tuple[str, str, list[str]]]]] = [
    (
        "Training",
        [
            ("test accuracy vs steps", "Step", ["eval/accuracy"]),
            ("test accuracy vs training seconds", "wall_s", ["eval/accuracy"]),
            ("train loss (weighted, selected samples)", "Step", ["train/loss"]),
            ("test loss", "Step", ["eval/loss"]),
        ],
    ),
    (
        "Selection quality",
        [
            ("scorer: Spearman(predicted, observed) on exploration picks", "Step", ["selection/spearman_explore"]),
            ("audit: precision@k vs the exact-loss oracle (and chance)", "Step",
             ["audit/precision_at_k", "audit/chance_precision"]),
            ("audit: Spearman of scores and of losses vs the oracle", "Step",
             ["audit/spearman_score", "audit/spearman_loss"]),
            ("scorer loss", "Step", ["selection/scorer_loss"]),
        ],
    ),
    (
        "Scores",
        [
            ("selected scores (histogram over steps)", "Step", ["selection/selected_scores"]),
            ("rejected scores (histogram over steps)", "Step", ["selection/rejected_scores"]),
            ("candidate score quantiles", "Step", ["selection/score_q10", "selection/score_q50", "selection/score_q90"]),
            ("selected vs rejected mean score", "Step",
             ["selection/selected_score_mean", "selection/rejected_score_mean", "selection/score_gap"]),
            ("keep ratio and exploration share", "Step", ["selection/keep_ratio", "selection/explore_share"]),
        ],
    ),
    (
        "Noise, classes and coverage",
        [
            ("mislabelled share: selected vs candidates", "Step",
             ["selection/noisy_share", "selection/base_noisy_share"]),
            ("mislabelled share of the oracle's and the selector's audit top-k", "Step",
             ["audit/oracle_noisy_share", "audit/selector_noisy_share"]),
            ("class mix: total variation, selected vs candidates", "Step", ["selection/label_tv"]),
            ("coverage: share of candidates ever picked", "Step", ["selection/coverage"]),
            ("share of picks going to the most-picked 1%", "Step", ["selection/top1pct_pick_share"]),
        ],
    ),
    (
        "Time",
        [
            ("ms per step: large model, scoring, scorer update, data, telemetry", "Step",
             ["time/large_ms", "time/select_ms", "time/observe_ms", "time/load_ms", "time/telemetry_ms"]),
            ("selection overhead, % of the large step", "Step", ["time/overhead_pct"]),
            ("samples seen (candidates) and trained on", "Step", ["selection/samples_seen", "selection/large_samples"]),
        ],
    ),
]

TABLES = ["selection/most_selected", "selection/most_rejected"]

GUIDE = """**Healthy selection**: accuracy reaches uniform's level in fewer steps *and* seconds; the scorer's
Spearman on exploration picks stays above ~0.3; precision@k sits well above chance; the mislabelled share of
the selection stays at or below the candidates'; selected scores sit right of the rejected ones; coverage grows
and no class is starved. The audit oracle uses the exact large-model loss: loss-driven oracles drift toward
mislabelled samples, so read precision@k next to the noisy shares."""


def selection_workspace(entity: str, project: str, name: str = "online_select: selection telemetry") -> Any:
    """The workspace definition (a ``wandb_workspaces.workspaces.Workspace``); builds offline."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as exc:
        raise ImportError(
            "the W&B dashboard needs the wandb-workspaces package: pip install 'online_select[dashboard]'"
        ) from exc

    sections = [ws.Section(name="How to read this", panels=[wr.MarkdownPanel(markdown=GUIDE)], is_open=True)]
    for title, panels in SECTIONS:
        plots = [wr.LinePlot(title=t, x=x, y=list(y)) for t, x, y in panels]
        sections.append(ws.Section(name=title, panels=plots, is_open=True))
    sections.append(
        ws.Section(
            name="Examples: most selected and most rejected",
            panels=[wr.WeavePanelSummaryTable(table_name=t) for t in TABLES],
            is_open=True,
        )
    )
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections)


def create_dashboard(entity: str, project: str, name: str = "online_select: selection telemetry") -> str:
    """Save the workspace to W&B (needs ``wandb login``); returns its URL."""
    import wandb

    try:
        logged_in = bool(wandb.Api().api_key)
    except wandb.errors.UsageError:
        logged_in = False
    if not logged_in:
        raise RuntimeError("creating a W&B dashboard needs an account: run `wandb login` (or set WANDB_API_KEY) first")
    workspace = selection_workspace(entity, project, name).save()
    return workspace.url
