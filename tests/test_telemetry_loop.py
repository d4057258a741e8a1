"""The telemetry through the ready loop: what reaches an offline W&B run, TensorBoard, the report."""

import json

import pytest

from online_select.cli import main
from online_select.config import load_config
from online_select.dashboard import SECTIONS, TABLES, selection_workspace
from online_select.loop import train
from online_select.report import health_checks, load_run, write_report
from online_select.wandb_offline import (
    WandbFileError,
    find_run_files,
    read_artifacts,
    read_history,
    read_records,
    wait_until_finished,
)

from .conftest import DETERMINISTIC, RECIPE, small_run


def _overrides(folder, out, *extra):
    return small_run(
        folder,
        out,
        "logging.log_every=5",
        "logging.audit_every=5",
        "logging.audit_size=32",
        "logging.table_every=20",
        "logging.table_rows=4",
        *extra,
    )


@pytest.fixture(scope="session")
def wandb_run(tiny_idx_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("telemetry") / "run"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            mp.setenv(name, str(out.parent / name.lower()))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        train(load_config(RECIPE, _overrides(tiny_idx_folder, out, "logging.trackers=[wandb]")))
    for path in find_run_files(out):
        wait_until_finished(path)
    return out


def test_offline_wandb_run_has_the_telemetry_keys_histograms_and_tables(wandb_run):
    files = find_run_files(wandb_run)
    assert len(files) == 1
    history = read_history(files[0])
    keys = {key for row in history for key in row}
    per_step = {
        "selection/keep_ratio", "selection/explore_share", "selection/score_mean", "selection/score_q10",
        "selection/score_q50", "selection/score_q90", "selection/selected_score_q50", "selection/rejected_score_q50",
        "selection/scorer_loss", "time/large_ms", "time/select_ms", "time/observe_ms", "time/telemetry_ms",
        "selection/samples_seen", "train/loss",
    }
    per_eval = {
        "eval/accuracy", "selection/spearman_explore", "audit/precision_at_k", "audit/chance_precision",
        "audit/spearman_score", "audit/oracle_noisy_share", "selection/noisy_share", "selection/base_noisy_share",
        "selection/label_tv", "selection/label_share/0", "selection/coverage", "selection/never_picked",
    }
    assert per_step | per_eval <= keys, sorted((per_step | per_eval) - keys)
    train_rows = [row for row in history if "selection/keep_ratio" in row]
    assert [row["_step"] for row in train_rows] == [5, 10, 15, 20, 25, 30]
    assert all(row["selection/keep_ratio"] == 0.25 for row in train_rows)

    for side in ("selected", "rejected"):
        hist = [row for row in history if f"selection/{side}_scores/_type" in row]
        assert len(hist) == 6 and hist[0][f"selection/{side}_scores/_type"] == "histogram"
        assert len(hist[0][f"selection/{side}_scores/bins"]) == len(hist[0][f"selection/{side}_scores/values"]) + 1
    selected_counts = [sum(row["selection/selected_scores/values"]) for row in history if "selection/selected_scores/values" in row]
    assert selected_counts == [5 * 16] * 6

    for name in TABLES:
        tables = [row for row in history if f"{name}/_type" in row]
        assert [row["_step"] for row in tables] == [20, 30]
        assert tables[0][f"{name}/_type"] == "table-file" and tables[0][f"{name}/nrows"] == 4
    artifacts = read_artifacts(files[0])
    images = [f for artifact in artifacts if artifact["type"] == "run_table" for f in artifact["files"] if f.endswith(".png")]
    assert len(images) >= 2 * 4


def test_every_dashboard_panel_key_is_logged_by_the_loop(wandb_run):
    history = read_history(find_run_files(wandb_run)[0])
    keys = {key.split("/_type")[0] for row in history for key in row} | {"Step", "wall_s"}
    wanted = {y for _, panels in SECTIONS for _, x, ys in panels for y in [x, *ys]} | set(TABLES)
    assert wanted <= keys, sorted(wanted - keys)


def test_dashboard_definition_builds_offline():
    workspace = selection_workspace("an-entity", "a-project")
    names = [section.name for section in workspace.sections]
    assert names[1:6] == [name for name, _ in SECTIONS] and names[-1].startswith("Examples")
    spec = json.dumps(workspace._to_model().model_dump(by_alias=True), default=str)
    assert "selection/selected_scores" in spec and "audit/precision_at_k" in spec and "selection/most_rejected" in spec


def test_dashboard_command_dry_run_and_missing_login(capsys, monkeypatch, tmp_path):
    assert main(["dashboard", "--entity", "e", "--project", "p", "--dry-run"]) == 0
    assert "Selection quality" in capsys.readouterr().out
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    assert main(["dashboard", "--entity", "e", "--project", "p"]) == 2
    assert "wandb login" in capsys.readouterr().err


def test_metrics_jsonl_carries_train_lines_histograms_and_tables(wandb_run):
    run = load_run(wandb_run)
    assert [line["step"] for line in run.train] == [5, 10, 15, 20, 25, 30]
    hist = run.train[-1]["selection/score_hist"]
    assert sum(hist["selected"]) == 5 * 16
    assert isinstance(run.evals[-1]["selection/label_selected_share"], list)
    assert [table["step"] for table in run.tables] == [20, 30]
    row = run.tables[-1]["tables"]["most_selected"][0]
    assert {"id", "picks", "image", "label", "true_label", "noisy"} <= set(row)


def test_report_writes_a_page_and_figures(wandb_run, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["report", str(wandb_run), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count("data:image/png;base64,") >= 6 + 2 * 4  # figures + example thumbnails
    for stem in ("accuracy", "selection_quality", "noise", "score_histograms", "selection_stats", "class_mix", "time"):
        assert (tmp_path / "page_figures" / f"{stem}.png").stat().st_size > 5_000
        assert f"alt='{stem}'" in page
    assert "most selected" in page and "Health checks" in page
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_report_of_several_runs_names_them_by_their_distinct_path(wandb_run, tmp_path):
    import shutil

    for policy in ("uniform", "predicted_learnability"):
        shutil.copytree(wandb_run, tmp_path / "bench" / policy / "seed0", ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    page = write_report([tmp_path / "bench"], tmp_path / "both.html").read_text()
    assert "uniform/seed0" in page and "predicted_learnability/seed0" in page


def test_health_checks_flag_noise_chasing_and_a_blind_scorer(tmp_path):
    lines = [{"step": s, "eval/accuracy": 0.5, "selection/noisy_share": 0.5, "selection/base_noisy_share": 0.3,
              "selection/spearman_explore": 0.05, "audit/precision_at_k": 0.1, "audit/chance_precision": 0.1}
             for s in (0, 100, 200, 300)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "config.yaml").write_text("selection: {policy: predicted_loss}\n")
    warnings = " ".join(health_checks(load_run(tmp_path)))
    assert "mislabelled" in warnings and "Spearman 0.05" in warnings and "near chance" in warnings
    (tmp_path / "config.yaml").write_text("selection: {policy: uniform}\n")
    assert health_checks(load_run(tmp_path)) == []


def test_a_language_model_run_is_reported_on_its_validation_loss(tmp_path):
    # The LM recipe's evals carry eval/loss, not eval/accuracy: they are evals all the same, best is the lowest.
    lines = [{"step": s, "wall_s": s / 10, "eval/loss": loss, "selection/noisy_share": 0.9, "selection/base_noisy_share": 0.5,
              "selection/spearman_explore": 0.4} for s, loss in ((0, 5.0), (100, 3.2), (200, 3.4))]
    lines.insert(1, {"step": 50, "wall_s": 5.0, "train/loss": 4.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "config.yaml").write_text("task: noisy_corpus_lm\nselection: {policy: predicted_learnability}\n")
    run = load_run(tmp_path)
    assert [e["step"] for e in run.evals] == [0, 100, 200] and [t["step"] for t in run.train] == [50]
    assert "mislabelled" in " ".join(health_checks(run))
    page = write_report([tmp_path], tmp_path / "lm.html").read_text()
    assert "<th>best eval/loss</th>" in page and "<td>3.2000</td><td>3.4000</td>" in page


def test_tensorboard_gets_scalars_and_histograms(tiny_idx_folder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    train(load_config(RECIPE, _overrides(tiny_idx_folder, out, "logging.trackers=[tensorboard]", "train.max_steps=10")))
    events = sorted(out.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_size)[-1]
    accumulator = EventAccumulator(str(events), size_guidance={"histograms": 0, "scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"selection/keep_ratio", "audit/precision_at_k", "selection/score_q50"} <= set(tags["scalars"])
    assert {"selection/selected_scores", "selection/rejected_scores"} <= set(tags["histograms"])
    assert accumulator.Histograms("selection/selected_scores")[0].histogram_value.num == 5 * 16


def test_telemetry_does_not_change_training(tiny_idx_folder, tmp_path):
    finals = []
    for telemetry in ("true", "false"):
        config = load_config(RECIPE, _overrides(tiny_idx_folder, tmp_path / telemetry, "logging.trackers=[]",
                                                f"logging.telemetry={telemetry}", "train.max_steps=20", DETERMINISTIC))
        finals.append(train(config))
    assert finals[0]["eval/accuracy"] == finals[1]["eval/accuracy"]
    assert finals[0]["eval/loss"] == finals[1]["eval/loss"]
    assert "audit/precision_at_k" in finals[0] and "audit/precision_at_k" not in finals[1]


@pytest.mark.filterwarnings("ignore:online_select. resumed with settings other")  # it extends the run on resume
def test_resume_keeps_the_pick_counts(tiny_idx_folder, tmp_path):
    whole = train(load_config(RECIPE, _overrides(tiny_idx_folder, tmp_path / "whole", "logging.trackers=[]")))
    args = _overrides(tiny_idx_folder, tmp_path / "split", "logging.trackers=[]")
    train(load_config(RECIPE, args + ["train.max_steps=15"]))
    resumed = train(load_config(RECIPE, args + ["train.resume=auto"]))
    assert resumed["selection/coverage"] == whole["selection/coverage"]
    assert resumed["selection/never_picked"] == whole["selection/never_picked"]
    tables = [json.loads(line)["step"] for line in (tmp_path / "split" / "selection_tables.jsonl").read_text().splitlines()]
    assert tables == [15, 20, 30]  # the first invocation ended at step 15 with its own tables


def test_offline_reader_rejects_other_files(tmp_path):
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"not a wandb file")
    with pytest.raises(WandbFileError, match="not a W&B run log"):
        list(read_records(path))
