"""``online-select report``: runs' ``metrics.jsonl`` files as one self-contained HTML page.

Works offline, without any tracker: each run's eval metric (its task's: accuracy, or validation loss for the
language model) vs steps and vs training seconds, selection
quality (the scorer's Spearman on the exploration picks, precision@k against the audit oracle), the
noisy-label share of the selection, selected vs rejected score histograms, the class mix of the
selection, the time split, the most-selected and most-rejected examples, and plain-language warnings
when a run shows the signs of unhealthy selection. Figures are embedded as PNGs and also written to a
``<name>_figures/`` folder next to the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .tasks import task_metric

__all__ = ["RunData", "find_runs", "load_run", "health_checks", "report_figures", "write_report"]

ACCURACY = "eval/accuracy"
PLOTTED = "_plotted_metric"  # the eval metric as the accuracy figure draws it (accuracy in %)
_MAX_HISTOGRAM_RUNS = 8


@dataclass
class RunData:
    """One run's lines, split into train lines (every ``log_every``) and eval lines."""

    path: Path
    name: str
    config: dict = field(default_factory=dict)
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)

    @property
    def policy(self) -> str:
        return str(self.config.get("selection", {}).get("policy", "?"))

    @property
    def metric(self) -> tuple[str, str]:
        """The eval metric its task is compared on and whether higher (``max``) or lower (``min``) is better."""
        return task_metric(str(self.config.get("task", "idx_images")))

    def metric_values(self) -> list[float]:
        """The eval metric at each eval line that has it."""
        return self.series(self.metric[0])[1]

    def series(self, key: str, lines: str = "evals") -> tuple[list[float], list[float]]:
        """(steps, values) of ``key`` over the eval (or train) lines that carry a finite value."""
        xs, ys = [], []
        for line in getattr(self, lines):
            value = line.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                xs.append(line["step"])
                ys.append(float(value))
        return xs, ys

    def last(self, key: str, lines: str = "evals") -> float:
        _, ys = self.series(key, lines)
        return ys[-1] if ys else float("nan")


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders (holding ``metrics.jsonl``) at or under each path, e.g. a ``bench --out`` folder."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"no such run folder: {path}")
        if path.is_file() and path.name == "metrics.jsonl":
            path = path.parent
        if (path / "metrics.jsonl").is_file():
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob("metrics.jsonl"))
        if not below:
            raise FileNotFoundError(f"{path} holds no metrics.jsonl (is it a run's output_dir?)")
        found.extend(below)
    return list(dict.fromkeys(found))


def _names(paths: list[Path]) -> list[str]:
    if len(paths) == 1:
        return [paths[0].name]
    parts = [p.resolve().parts for p in paths]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return ["/".join(p[common:]) for p in parts]


def load_run(path: str | Path, name: str | None = None) -> RunData:
    """Read a run folder: ``metrics.jsonl``, ``config.yaml`` and ``selection_tables.jsonl`` if present."""
    path = Path(path)
    lines = []
    for number, text in enumerate((path / "metrics.jsonl").read_text().splitlines(), 1):
        if text.strip():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path / 'metrics.jsonl'} line {number} is not JSON: {exc}") from None
    config = {}
    if (path / "config.yaml").is_file():
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    tables = []
    if (path / "selection_tables.jsonl").is_file():
        tables = [json.loads(t) for t in (path / "selection_tables.jsonl").read_text().splitlines() if t.strip()]
    return RunData(
        path=path,
        name=name or path.name,
        config=config,
        train=sorted((line for line in lines if not _is_eval(line)), key=lambda line: line["step"]),
        evals=sorted((line for line in lines if _is_eval(line)), key=lambda line: line["step"]),
        tables=tables,
    )


def _is_eval(line: dict[str, Any]) -> bool:
    return any(key.startswith("eval/") for key in line)


def _metric_label(runs: list[RunData]) -> str:
    """How the summary and the first figure name the runs' eval metric (accuracy in %)."""
    metrics = {run.metric[0] for run in runs}
    if metrics == {ACCURACY}:
        return "accuracy %"
    return " / ".join(sorted(metrics))


def _legend(ax: Any, **options: Any) -> None:
    """A legend, when the axes drew a labelled line (a run may not log what a panel shows)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**options)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def health_checks(run: RunData) -> list[str]:
    """Warnings about signs of unhealthy selection, in plain words (empty: nothing alarming)."""
    if run.policy == "uniform" or not run.evals:
        return []
    warnings = []
    late = run.evals[len(run.evals) // 2 :]
    spearman = _mean([line["selection/spearman_explore"] for line in late if _finite(line.get("selection/spearman_explore"))])
    if spearman == spearman and spearman < 0.2:
        warnings.append(
            f"the scorer barely ranks the large model's losses (Spearman {spearman:.2f} on the exploration picks, "
            "second half of the run): selection is close to random; more exploration or a stronger scorer may help"
        )
    precision = _mean([line["audit/precision_at_k"] for line in late if _finite(line.get("audit/precision_at_k"))])
    chance = _mean([line["audit/chance_precision"] for line in late if _finite(line.get("audit/chance_precision"))])
    if precision == precision and chance == chance and precision < 1.5 * chance:
        warnings.append(
            f"precision@k against the oracle ({precision:.2f}) is near chance ({chance:.2f}): the selector's top-k "
            "hardly overlaps the exact-loss top-k"
        )
    noisy = _mean([line["selection/noisy_share"] for line in late if _finite(line.get("selection/noisy_share"))])
    base = _mean([line["selection/base_noisy_share"] for line in late if _finite(line.get("selection/base_noisy_share"))])
    if noisy == noisy and base == base and base > 0 and noisy > 1.1 * base:
        warnings.append(
            f"the selection prefers mislabelled samples ({100 * noisy:.1f}% noisy vs {100 * base:.1f}% among candidates): "
            "the reference is too weak to tell noise from hard examples"
        )
    coverage = run.last("selection/coverage")
    if coverage == coverage and coverage < 0.05 and run.evals[-1]["step"] >= 1000:
        warnings.append(f"only {100 * coverage:.1f}% of the candidates were ever picked: selection keeps revisiting few samples")
    gap = _mean(run.series("selection/score_gap", "train")[1][len(run.train) // 2 :])
    std = _mean(run.series("selection/score_std", "train")[1][len(run.train) // 2 :])
    if gap == gap and std == std and std > 0 and abs(gap) < 0.1 * std:
        warnings.append("selected and rejected candidates have nearly the same scores: the scores carry little signal")
    return warnings


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _subplots(rows: int = 1, cols: int = 1, squeeze: bool = True, **figure_kwargs: Any) -> tuple[Any, Any]:
    """A figure made without pyplot, so that writing a report never changes a notebook's backend."""
    from matplotlib.figure import Figure

    fig = Figure(**figure_kwargs)
    return fig, fig.subplots(rows, cols, squeeze=squeeze)


def _plot_lines(
    ax: Any, runs: list[RunData], key: str, lines: str = "evals", x_key: str = "step", labelled: bool = True, **style: Any
) -> bool:
    drawn = False
    for index, run in enumerate(runs):
        xs, ys = [], []
        for line in getattr(run, lines):
            if _finite(line.get(key)) and _finite(line.get(x_key)):
                xs.append(line[x_key])
                ys.append(line[key])
        if xs:
            ax.plot(xs, ys, label=run.name if labelled else None, color=f"C{index % 10}", **style)
            drawn = True
    return drawn


def _finish(ax: Any, title: str, xlabel: str, ylabel: str = "", drawn: bool = True) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")


def report_figures(runs: list[RunData]) -> dict[str, tuple[str, bytes]]:
    """The report's figures: ``{file stem: (caption, PNG bytes)}``."""
    figures: dict[str, tuple[str, bytes]] = {}
    scaled = [RunData(r.path, r.name, r.config, r.train, [
        {**e, PLOTTED: (100 if r.metric[0] == ACCURACY else 1) * e[r.metric[0]]} if r.metric[0] in e else e for e in r.evals
    ]) for r in runs]
    label = _metric_label(runs)

    fig, axes = _subplots(1, 2, figsize=(12, 4.2))
    drawn = _plot_lines(axes[0], scaled, PLOTTED, marker=".")
    _finish(axes[0], f"eval {label} vs large-model steps", "steps", label, drawn)
    drawn = _plot_lines(axes[1], scaled, PLOTTED, x_key="wall_s", marker=".")
    _finish(axes[1], f"eval {label} vs training seconds (selection included)", "seconds", label, drawn)
    accuracies = [e[PLOTTED] for r in scaled for e in r.evals[1:] if PLOTTED in e] if label == "accuracy %" else []
    if accuracies:
        for ax in axes:
            ax.set_ylim(max(min(accuracies), max(accuracies) - 20) - 0.5, max(accuracies) + 0.5)
    _legend(axes[0], fontsize=8)
    fig.tight_layout()
    figures["accuracy"] = (f"Each run's eval {label} against steps and against training seconds.", _png(fig))

    fig, axes = _subplots(1, 3, figsize=(15, 4.2))
    drawn = _plot_lines(axes[0], runs, "selection/spearman_explore", marker=".")
    axes[0].axhline(0, color="gray", lw=0.8)
    _finish(axes[0], "scorer: Spearman(predicted, observed loss)\non the exploration picks", "steps", "", drawn)
    drawn = _plot_lines(axes[1], runs, "audit/precision_at_k", marker=".")
    _plot_lines(axes[1], runs, "audit/chance_precision", labelled=False, ls=":", alpha=0.6)
    _finish(axes[1], "audit: precision@k vs the exact-loss oracle\n(dotted: chance)", "steps", "", drawn)
    axes[1].set_ylim(0, 1.02)
    drawn = _plot_lines(axes[2], runs, "audit/spearman_score", marker=".")
    _finish(axes[2], "audit: Spearman(selector score, oracle score)\non the audit sample", "steps", "", drawn)
    _legend(axes[0], fontsize=8)
    fig.tight_layout()
    figures["selection_quality"] = ("Selection quality: does the selector rank candidates like the oracle?", _png(fig))

    fig, axes = _subplots(1, 2, figsize=(12, 4.2))
    scaled_noise = [
        RunData(r.path, r.name, r.config, r.train, [
            {**e, **{k + "%": 100 * e[k] for k in ("selection/noisy_share", "selection/base_noisy_share",
                                                    "audit/oracle_noisy_share") if _finite(e.get(k))}}
            for e in r.evals
        ])
        for r in runs
    ]
    drawn = _plot_lines(axes[0], scaled_noise, "selection/noisy_share%", marker=".")
    _plot_lines(axes[0], scaled_noise, "selection/base_noisy_share%", labelled=False, ls=":", alpha=0.7)
    _finish(axes[0], "mislabelled share of the selected samples\n(dotted: share among candidates)", "steps", "%", drawn)
    drawn = _plot_lines(axes[1], scaled_noise, "audit/oracle_noisy_share%", marker=".")
    _plot_lines(axes[1], scaled_noise, "selection/base_noisy_share%", labelled=False, ls=":", alpha=0.7)
    _finish(axes[1], "mislabelled share of the oracle's own top-k\n(the oracle's drift toward noise)", "steps", "%", drawn)
    _legend(axes[0], fontsize=8)
    fig.tight_layout()
    figures["noise"] = ("Noisy-label share of what is selected (needs noise flags in the data).", _png(fig))

    with_hist = [r for r in runs if any("selection/score_hist" in line for line in r.train)][:_MAX_HISTOGRAM_RUNS]
    if with_hist:
        fig, axes = _subplots(len(with_hist), 3, figsize=(13, 2.6 * len(with_hist)), squeeze=False)
        for row, run in zip(axes, with_hist):
            lines = [line for line in run.train if "selection/score_hist" in line]
            picks = sorted({0, len(lines) // 2, len(lines) - 1})
            for ax, index in zip(row, picks + [None] * (3 - len(picks))):
                if index is None:
                    ax.axis("off")
                    continue
                hist = lines[index]["selection/score_hist"]
                edges = hist["edges"]
                for side, color in (("rejected", "C7"), ("selected", "C1")):
                    total = max(sum(hist[side]), 1)
                    ax.stairs([c / total for c in hist[side]], edges, fill=True, alpha=0.55, color=color, label=side)
                ax.set_title(f"{run.name}: steps up to {lines[index]['step']}", fontsize=9)
                ax.set_xlabel("score")
                ax.grid(alpha=0.3)
            row[0].set_ylabel("share")
            _legend(row[0], fontsize=8)
        fig.tight_layout()
        figures["score_histograms"] = (
            "Scores of the selected (orange) and rejected (gray) candidates, early, midway and late in each run.",
            _png(fig),
        )

    fig, axes = _subplots(2, 2, figsize=(12, 7.5))
    drawn = _plot_lines(axes[0, 0], runs, "selection/score_gap", "train")
    _finish(axes[0, 0], "selected minus rejected mean score", "steps", "", drawn)
    drawn = _plot_lines(axes[0, 1], runs, "selection/scorer_loss", "train")
    _finish(axes[0, 1], "scorer loss (its fit to the observed large losses)", "steps", "", drawn)
    drawn = _plot_lines(axes[1, 0], runs, "selection/coverage", marker=".")
    _finish(axes[1, 0], "coverage: share of candidates ever picked", "steps", "", drawn)
    drawn = _plot_lines(axes[1, 1], runs, "selection/label_tv", marker=".")
    _finish(axes[1, 1], "class mix: total variation, selected vs candidates", "steps", "", drawn)
    _legend(axes[0, 0], fontsize=8)
    fig.tight_layout()
    figures["selection_stats"] = ("Selection statistics over time.", _png(fig))

    with_mix = [r for r in runs if r.evals and isinstance(r.evals[-1].get("selection/label_selected_share"), list)]
    if with_mix:
        fig, ax = _subplots(figsize=(12, 3.8))
        width = 0.8 / len(with_mix)
        for i, run in enumerate(with_mix):
            selected = run.evals[-1]["selection/label_selected_share"]
            base = run.evals[-1]["selection/label_candidate_share"]
            lift = [s / b if b else 0.0 for s, b in zip(selected, base)]
            ax.bar([c + i * width for c in range(len(lift))], lift, width, label=run.name, color=f"C{runs.index(run) % 10}")
        ax.axhline(1.0, color="gray", lw=0.8)
        _finish(ax, "class lift in the last eval window: share among selected / share among candidates", "class")
        _legend(ax, fontsize=8)
        fig.tight_layout()
        figures["class_mix"] = ("Which classes the selection favours (1 = as often as they arrive).", _png(fig))

    parts = ("large", "select", "observe", "load", "telemetry")
    with_time = [r for r in runs if any(_finite(line.get("time/large_ms")) for line in r.train + r.evals)]
    if with_time:
        fig, ax = _subplots(figsize=(12, 0.6 * len(with_time) + 1.8))
        for row, run in enumerate(with_time):
            left = 0.0
            source = run.train if any("time/large_ms" in line for line in run.train) else run.evals
            for index, part in enumerate(parts):
                value = _mean([line[f"time/{part}_ms"] for line in source if _finite(line.get(f"time/{part}_ms"))])
                if value == value:
                    ax.barh(row, value, left=left, color=f"C{index}", label=part if row == 0 else None)
                    left += value
        ax.set_yticks(range(len(with_time)), [r.name for r in with_time], fontsize=8)
        _finish(ax, "time per step (ms): large model / scoring / scorer update / data / telemetry", "ms per step")
        _legend(ax, fontsize=8, ncols=len(parts), loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)
        fig.tight_layout()
        figures["time"] = ("Where a step's time goes.", _png(fig))
    return figures


def _summary_rows(runs: list[RunData]) -> list[list[str]]:
    def pct(value: float) -> str:
        return f"{100 * value:.2f}" if value == value else "–"

    def num(value: float, digits: int = 2) -> str:
        return f"{value:.{digits}f}" if value == value else "–"

    rows = []
    for run in runs:
        key, mode = run.metric
        values = run.metric_values()
        show = pct if key == ACCURACY else (lambda value: num(value, 4))
        late = run.evals[len(run.evals) // 2 :]
        rows.append([
            run.name,
            run.policy,
            str(run.evals[-1]["step"]) if run.evals else "–",
            show((max if mode == "max" else min)(values)) if values else "–",
            show(values[-1]) if values else "–",
            num(run.evals[-1].get("wall_s", float("nan")), 1) if run.evals else "–",
            f"{pct(_mean([e['selection/noisy_share'] for e in late if _finite(e.get('selection/noisy_share'))]))} "
            f"({pct(_mean([e['selection/base_noisy_share'] for e in late if _finite(e.get('selection/base_noisy_share'))]))})",
            num(_mean([e["selection/spearman_explore"] for e in late if _finite(e.get("selection/spearman_explore"))])),
            f"{num(_mean([e['audit/precision_at_k'] for e in late if _finite(e.get('audit/precision_at_k'))]))} "
            f"({num(_mean([e['audit/chance_precision'] for e in late if _finite(e.get('audit/chance_precision'))]))})",
            pct(run.last("selection/coverage")),
        ])
    return rows


def _summary_header(runs: list[RunData]) -> list[str]:
    label = _metric_label(runs)
    label = "acc %" if label == "accuracy %" else label
    return ["run", "policy", "steps", f"best {label}", f"final {label}", "training s", "noisy % selected (candidates)",
            "Spearman explore", "precision@k (chance)", "coverage %"]


_GUIDE = """
<p>What healthy selection looks like:</p>
<ul>
<li><b>Accuracy</b> reaches the uniform run's level in fewer steps and, since selection costs time, in fewer seconds.</li>
<li><b>Spearman on the exploration picks</b> (random picks whose loss the large model reveals) climbs above ~0.3 and
stays there: the scorer ranks candidates the way the large model's loss does. Near 0, selection is random with extra cost.</li>
<li><b>Precision@k against the oracle</b> sits well above the dotted chance line. The oracle is the policy's own score with
the exact large-model loss; it is not the truth: loss-driven oracles drift toward mislabelled samples, so read it next
to the noisy share.</li>
<li><b>Noisy share</b> of the selection stays at or below the share among candidates. Above it, the selector is chasing
mislabelled samples.</li>
<li><b>Score histograms</b>: selected scores sit to the right of the rejected ones (a top-k cut) except for the exploration picks.</li>
<li><b>Coverage</b> keeps growing and the class lift stays within a small factor of 1; a class near 0 is being starved.</li>
</ul>
"""


def _example_html(run: RunData) -> str:
    if not run.tables:
        return ""
    latest = run.tables[-1]
    parts = [f"<h3>{html.escape(run.name)}: examples at step {latest['step']}</h3>"]
    for name, rows in latest["tables"].items():
        title = name.replace("_", " ")
        cells = []
        for row in rows:
            caption = [f"id {row['id']}", f"picked {row['picks']}×, rejected {row['rejections']}×",
                       f"last score {row['last_score']:.3g}"]
            if "label" in row:
                caption.append(f"label {row['label']}" + (f" (true {row['true_label']})" if row.get("noisy") else ""))
            noisy = " noisy" if row.get("noisy") else ""
            body = (
                f"<img src='data:image/png;base64,{row['image']}' alt='sample {row['id']}'>"
                if "image" in row
                else f"<div class='text'>{html.escape(str(row.get('text', '')))[:400]}</div>"
            )
            cells.append(f"<figure class='example{noisy}'>{body}<figcaption>{'<br>'.join(map(html.escape, caption))}"
                         f"{'<br><b>mislabelled</b>' if noisy else ''}</figcaption></figure>")
        parts.append(f"<h4>{html.escape(title)}</h4><div class='examples'>{''.join(cells)}</div>")
    return "\n".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
td:first-child, th:first-child, td:nth-child(2) { text-align: left; }
img.figure { max-width: 100%; border: 1px solid #eee; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.5em 1em; margin: 0.5em 0; }
.ok { background: #eef8ee; border-left: 4px solid #3a3; padding: 0.5em 1em; margin: 0.5em 0; }
.examples { display: flex; flex-wrap: wrap; gap: 8px; }
figure.example { margin: 0; width: 120px; font-size: 0.72em; text-align: center; }
figure.example img { width: 84px; height: 84px; image-rendering: pixelated; border: 2px solid #ccc; }
figure.example.noisy img { border-color: #d33; }
figure.example .text { border: 1px solid #ccc; padding: 4px; text-align: left; height: 84px; overflow: hidden; }
"""


def write_report(paths: list[str | Path], out: str | Path | None = None, title: str = "online_select report") -> Path:
    """Write the HTML report for the runs at or under ``paths``; returns the page's path.

    Default location: ``<first run folder>/report.html`` for one run, ``./online_select_report.html``
    for several. The figures are also saved as PNGs in ``<page stem>_figures/``.
    """
    run_paths = find_runs(list(paths))
    runs = [load_run(p, name) for p, name in zip(run_paths, _names(run_paths))]
    if out is None:
        out = run_paths[0] / "report.html" if len(run_paths) == 1 else Path("online_select_report.html")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure_dir = out.parent / f"{out.stem}_figures"
    figure_dir.mkdir(exist_ok=True)
    figures = report_figures(runs)

    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{len(runs)} run(s): " + ", ".join(
        f"<code>{html.escape(str(r.path))}</code>" for r in runs) + "</p>"]
    body.append("<h2>Summary</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in _summary_header(runs)) + "</tr>")
    for row in _summary_rows(runs):
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    body.append("</table><p style='font-size:0.85em'>Noisy share, Spearman and precision@k: means over the second half"
                " of each run's evaluations.</p>")
    body.append("<h2>Health checks</h2>")
    for run in runs:
        warnings = health_checks(run)
        if warnings:
            body.extend(f"<div class='warn'><b>{html.escape(run.name)}</b>: {html.escape(w)}</div>" for w in warnings)
        elif run.policy != "uniform":
            body.append(f"<div class='ok'><b>{html.escape(run.name)}</b>: no warning signs.</div>")
    body.append(_GUIDE)
    for stem, (caption, png) in figures.items():
        (figure_dir / f"{stem}.png").write_bytes(png)
        encoded = base64.b64encode(png).decode("ascii")
        body.append(f"<h2>{html.escape(stem.replace('_', ' ').capitalize())}</h2><p>{html.escape(caption)}</p>"
                    f"<img class='figure' src='data:image/png;base64,{encoded}' alt='{stem}'>")
    examples = [_example_html(run) for run in runs if run.tables]
    if examples:
        body.append("<h2>Most-selected and most-rejected examples</h2><p>Red border: the sample's label is "
                    "corrupted (known only because the benchmark data carries noise flags).</p>")
        body.extend(examples)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")
    out.write_text(page)
    return out
