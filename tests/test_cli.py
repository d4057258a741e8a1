import json
import subprocess
import sys

import pytest
import yaml

from online_select.cli import main

from .conftest import RECIPE
from .conftest import small_run as _small


def assert_fails(capsys, message, argv):
    """``online-select ARGV`` ends with status 2 and one line matching ``message``."""
    import re

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err


def test_train_writes_metrics_config_and_checkpoints(tiny_idx_folder, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(RECIPE), *_small(tiny_idx_folder, out)]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "eval/accuracy" in line]
    assert [line["step"] for line in evals] == [0, 10, 20, 30]
    assert all("wall_s" in line for line in evals)
    assert evals[-1]["wall_s"] > evals[1]["wall_s"] > 0
    assert "selection/noisy_share" in evals[-1] and "time/overhead_pct" in evals[-1]
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["selection"]["keep"] == 16 and resolved["data"]["path"] == str(tiny_idx_folder)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000015", "step-00000030"]


def test_reference_table_is_saved_and_reusable(tiny_idx_folder, tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", str(RECIPE), *_small(tiny_idx_folder, out, "train.max_steps=5", "train.eval_every=5")])
    saved = out / "reference.safetensors"
    assert saved.exists()
    again = tmp_path / "again"
    reuse = ("reference.kind=file", f"reference.path={saved}")
    args = _small(tiny_idx_folder, again, "train.max_steps=5", "train.eval_every=5", "seed=1", *reuse)
    assert main(["train", str(RECIPE), *args]) == 0  # another run seed: the same samples, the same table
    assert not (again / "reference.safetensors").exists()
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "reference_seconds" in first
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nonsense")
    assert_fails(capsys, "cannot read a reference table",
                 ["train", str(RECIPE), *_small(tiny_idx_folder, tmp_path / "x", "reference.kind=file", f"reference.path={bad}")])
    for other_data in ("data.noise_seed=5", "data.label_noise=0.1", "data.max_train_samples=200"):
        assert_fails(capsys, "was built for other training data than this run's .*samples_sha256",
                     ["train", str(RECIPE), *_small(tiny_idx_folder, tmp_path / "y", other_data, *reuse)])


@pytest.mark.filterwarnings("ignore:online_select. resumed with settings other")  # it extends the run on resume
def test_resume_auto_continues_from_the_newest_checkpoint(tiny_idx_folder, tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", str(RECIPE), *_small(tiny_idx_folder, out, "train.max_steps=15")])
    main(["train", str(RECIPE), *_small(tiny_idx_folder, out, "train.resume=auto")])
    captured = capsys.readouterr().out
    assert "resumed from" in captured and "step-00000015 (step 15)" in captured
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if "eval/accuracy" in line]
    assert steps == [0, 10, 15, 20, 30]


def test_train_reuse_skips_only_a_finished_run_of_the_same_config(tiny_idx_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--reuse", str(RECIPE), *_small(tiny_idx_folder, out, "train.max_steps=10", "train.eval_every=5")]
    assert main(args) == 0
    metrics = out / "metrics.jsonl"
    written = metrics.read_text()
    capsys.readouterr()
    assert main(args) == 0
    assert f"reusing the finished run in {out}" in capsys.readouterr().out
    assert metrics.read_text() == written
    # A run that stopped before its last eval is trained again, as is another config in the same folder.
    lines = written.splitlines()
    last_eval = max(i for i, line in enumerate(lines) if "eval/accuracy" in line)
    metrics.write_text("\n".join(lines[:last_eval]) + "\n")
    assert main(args) == 0
    assert "reusing" not in capsys.readouterr().out

    def evals(text):
        return [(line["step"], line["eval/accuracy"]) for line in map(json.loads, text.splitlines()) if "eval/accuracy" in line]

    assert evals(metrics.read_text()) == evals(written)
    assert main(args + ["scorer.hidden=8"]) == 0
    assert "reusing" not in capsys.readouterr().out


def test_unknown_override_key_fails_with_its_name(capsys):
    assert main(["train", str(RECIPE), "selection.polcy=uniform"]) == 2
    assert "unknown config key 'selection.polcy'" in capsys.readouterr().err


def test_bad_input_is_one_clear_line(tiny_idx_folder, tmp_path, capsys, monkeypatch):
    assert main(["train", str(RECIPE), *_small(tmp_path, tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "DataError" in err and "lacks the IDX files" in err
    assert main(["train", str(RECIPE), *_small(tiny_idx_folder, tmp_path / "out"), "reference.model=resnet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected mlp or small_cnn" in err and "Traceback" not in err
    monkeypatch.setenv("ONLINE_SELECT_TRACEBACK", "1")
    with pytest.raises(ValueError, match="expected mlp or small_cnn"):
        main(["train", str(RECIPE), *_small(tiny_idx_folder, tmp_path / "out"), "reference.model=resnet"])


def test_bench_names_a_policy_typo_before_anything_trains(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", str(RECIPE), "--policies", "uniform,predicted_learnabilty", "--out", str(out)]) == 2
    assert "unknown policy 'predicted_learnabilty'" in capsys.readouterr().err and not out.exists()


def test_bench_names_a_metric_no_eval_logs(tiny_idx_folder, tmp_path, capsys):
    args = ["bench", str(RECIPE), "--policies", "uniform", "--metric", "eval/acc", "--out", str(tmp_path / "bench")]
    assert main(args + _small(tiny_idx_folder, tmp_path / "runs", "train.max_steps=4", "train.eval_every=2")) == 2
    assert "no eval line with the metric 'eval/acc'; its evals log eval/accuracy, eval/loss" in capsys.readouterr().err


def test_bench_writes_table_and_plot(tiny_idx_folder, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", str(RECIPE), "--policies", "uniform,predicted_learnability", "--seeds", "2", "--out", str(out)]
    assert main(args + _small(tiny_idx_folder, tmp_path / "runs")) == 0
    table = (out / "bench.md").read_text()
    assert "| uniform |" in table and "| predicted_learnability |" in table
    assert "steps to uniform's best" in table and "noisy share selected" in table
    assert (out / "bench.png").stat().st_size > 10_000
    assert (out / "predicted_learnability" / "seed1" / "metrics.jsonl").exists()
    assert "Per-step time split" in table and "| scoring B candidates ms |" in table


def test_bench_reuse_reads_back_finished_runs_and_reruns_changed_ones(tiny_idx_folder, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", str(RECIPE), "--policies", "uniform", "--out", str(out), "--reuse"]
    small = _small(tiny_idx_folder, tmp_path / "runs")
    assert main(args + small) == 0
    metrics = out / "uniform" / "seed0" / "metrics.jsonl"
    written = metrics.read_text()
    capsys.readouterr()
    assert main(args + small) == 0
    assert "reusing the finished run" in capsys.readouterr().out
    assert metrics.read_text() == written
    assert main(args + small + ["scorer.hidden=8"]) == 0  # another config: trained again
    assert "reusing" not in capsys.readouterr().out


def test_targets_table_and_missing_speedups():
    from online_select.bench import bench_table, summarise_run, targets_table

    def curve(values):
        return [{"step": 10 * i, "wall_s": float(i), "eval/accuracy": v} for i, v in enumerate(values)]

    runs = {
        "uniform": [summarise_run("uniform", 0, curve([0.1, 0.5, 0.7, 0.8]))],
        "fast": [summarise_run("fast", 0, curve([0.1, 0.8, 0.82, 0.85]))],
        "slow": [summarise_run("slow", 0, curve([0.1, 0.2, 0.3, 0.4]))],
    }
    table = targets_table(runs, [0.5, 0.8])
    assert "| fast | 10 (1.00x) / 1.0 (1.00x) | 10 (3.00x) / 1.0 (3.00x) |" in table
    assert "| slow | never (–) / never (–) | never (–) / never (–) |" in table
    assert "| slow | never | – | never | – |" in bench_table(runs)
    assert "| 40.00 | 40.00 | – | 100.0 | – (–) | – |" in bench_table(runs)  # no overhead, noisy share or Spearman: not "never"
    header = targets_table(runs, [0.855, 0.86]).splitlines()[0]
    assert "acc 85.5: steps" in header and "acc 86: steps" in header
    # Two seeds, one of which never gets there: the steps cell says so once, the speed-up is the one seed's.
    two = {
        "uniform": [summarise_run("uniform", s, curve([0.1, 0.5, 0.7, 0.8])) for s in (0, 1)],
        "mixed": [summarise_run("mixed", 0, curve([0.1, 0.8, 0.8, 0.8])), summarise_run("mixed", 1, curve([0.1] * 4))],
    }
    assert "| mixed | 10 (1/2 reached) (3.00x) / 1.0 (1/2 reached) (3.00x) |" in targets_table(two, [0.8])


def test_bench_budgets_run_each_policy_over_its_own_steps(tiny_idx_folder, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", str(RECIPE), "--policies", "uniform,predicted_learnability", "--out", str(out),
            "--budget", "uniform=20,30", "--budget", "predicted_learnability=10", "--evals-per-run", "2"]
    assert main(args + _small(tiny_idx_folder, tmp_path / "runs")) == 0
    for label, steps in (("uniform_20", [0, 10, 20]), ("uniform_30", [0, 15, 30]), ("predicted_learnability_10", [0, 5, 10])):
        lines = (out / label / "seed0" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines if "eval/accuracy" in line] == steps
        assert yaml.safe_load((out / label / "seed0" / "config.yaml").read_text())["train"]["max_steps"] == steps[-1]
    table = (out / "bench.md").read_text()
    assert "budgets uniform 20, 30; predicted_learnability 10 steps" in table
    assert "| uniform_30 | uniform | 30 |" in table and "| predicted_learnability_10 | predicted_learnability | 10 |" in table
    assert "-step run) |" in table and (out / "bench.png").exists()


def test_bench_gives_a_recipes_policy_switch_to_its_policy_only(tiny_idx_folder, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", str(RECIPE), "--policies", "uniform,predicted_learnability,predicted_reducible_loss",
            "--out", str(out), "--budget", "predicted_learnability=10,20", "--evals-per-run", "2"]
    switch = ["selection.switch_to=predicted_reducible_loss", "selection.switch_at=0.5", "train.max_steps=20"]
    assert main(args + _small(tiny_idx_folder, tmp_path / "runs", *switch)) == 0
    selection = {label: yaml.safe_load((out / label / "seed0" / "config.yaml").read_text())["selection"]
                 for label in ("uniform_20", "predicted_learnability_10", "predicted_reducible_loss_20")}
    assert selection["predicted_learnability_10"]["switch_to"] == "predicted_reducible_loss"
    assert selection["uniform_20"]["switch_to"] == selection["predicted_reducible_loss_20"]["switch_to"] == ""
    table = (out / "bench.md").read_text()
    assert "| predicted_learnability_10 | predicted_learnability → predicted_reducible_loss at 0.5 | 10 |" in table
    assert "| uniform_20 | uniform | 20 |" in table and "| predicted_reducible_loss_20 | predicted_reducible_loss | 20 |" in table


def test_budget_table_reads_every_run_against_uniforms_best_budget():
    from online_select.bench import best_budget, budget_table, summarise_run

    def curve(values):
        return [{"step": 10 * i, "wall_s": 2.0 * i, "eval/accuracy": v} for i, v in enumerate(values)]

    runs = {  # uniform's longer run memorises: its shorter budget is its best
        "uniform_30": [summarise_run("uniform", 0, curve([0.1, 0.6, 0.7, 0.8]))],
        "uniform_40": [summarise_run("uniform", 0, curve([0.1, 0.5, 0.7, 0.75, 0.7]))],
        "picky_30": [summarise_run("picky", 0, [dict(p, **{"selection/spearman_explore": 0.5 + 0.1 * (p["step"] // 10)})
                                                 for p in curve([0.1, 0.8, 0.85, 0.9])])],
        "picky_10": [summarise_run("picky", 0, curve([0.1, 0.6]))],
    }
    budgets = {"uniform_30": 30, "uniform_40": 40, "picky_30": 30, "picky_10": 10}
    assert best_budget(runs) == "uniform_30"
    table = budget_table(runs, budgets)
    assert "steps to uniform's best (its 30-step run)" in table
    assert "| picky_30 | picky | 30 | 90.00 | 30 | 90.00 | 10.00 | 6.0 | 10 | 3.00x | 2.0 | 3.00x |" in table
    assert "| picky_10 | picky | 10 | 60.00 | 10 | 60.00 | – | 2.0 | never | – | never | – |" in table
    assert "| uniform_40 | uniform | 40 | 75.00 | 30 | 70.00 | – |" in table
    # the last half of the evals' Spearman (0.7, 0.8); uniform logs none
    assert table.split("\n")[4].endswith("| 0.75 |") and table.split("\n")[2].endswith("| – |")
    with pytest.raises(ValueError, match="need uniform at one budget"):
        best_budget({"picky_30": runs["picky_30"]})


@pytest.mark.parametrize(
    "specs, message",
    [
        (["uniform"], "POLICY=STEPS"),
        (["uniform=1000", "uniform=2000"], "two budget lists"),
        (["large_loss=100"], "not among the policies run"),
        (["uniform=1e3"], "whole numbers"),
        (["uniform=100,100"], "must be distinct"),
        (["uniform=0"], "at least 1"),
    ],
)
def test_bad_budgets_are_named(specs, message, capsys):
    from online_select.bench import parse_budgets

    with pytest.raises(ValueError, match=message):
        parse_budgets(specs, ["uniform", "predicted_learnability"])
    assert parse_budgets(["uniform=8000,4000", " predicted_learnability = 3000"], ["uniform", "predicted_learnability"]) == {
        "uniform": [4000, 8000], "predicted_learnability": [3000]}
    assert main(["bench", str(RECIPE), *[arg for spec in specs for arg in ("--budget", spec)]]) == 2
    assert "online-select bench:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "specs, message",
    [
        (["uniform"], "POLICY=LR"),
        (["uniform=0.001", "uniform=0.002"], "two learning rate lists"),
        (["large_loss=0.001"], "not among the policies run"),
        (["uniform=fast"], "'fast' is not a number"),
        (["uniform=0"], "positive and finite"),
        (["uniform=nan"], "positive and finite"),
        (["uniform=0.001,1e-3"], "must be distinct"),
    ],
)
def test_bad_learning_rates_are_named(specs, message, capsys):
    from online_select.bench import parse_learning_rates

    with pytest.raises(ValueError, match=message):
        parse_learning_rates(specs, ["uniform", "predicted_learnability"])
    assert parse_learning_rates(["uniform=0.001,5e-4", "predicted_learnability = 0.002"], ["uniform", "predicted_learnability"]) == {
        "uniform": [0.0005, 0.001], "predicted_learnability": [0.002]}
    assert main(["bench", str(RECIPE), *[arg for spec in specs for arg in ("--lr", spec)]]) == 2
    assert "online-select bench:" in capsys.readouterr().err


def test_bench_learning_rates_run_each_policy_at_its_own(tiny_idx_folder, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", str(RECIPE), "--policies", "uniform,predicted_learnability", "--out", str(out),
            "--budget", "uniform=20", "--lr", "uniform=0.001,0.003", "--lr", "predicted_learnability=0.002",
            "--evals-per-run", "2"]
    assert main(args + _small(tiny_idx_folder, tmp_path / "runs")) == 0
    labels = {"uniform_20_lr0.001": 0.001, "uniform_20_lr0.003": 0.003, "predicted_learnability_30_lr0.002": 0.002}
    for label, lr in labels.items():
        config = yaml.safe_load((out / label / "seed0" / "config.yaml").read_text())
        assert config["train"]["lr"] == lr
    table = (out / "bench.md").read_text()
    assert "learning rates uniform 0.001, 0.003; predicted_learnability 0.002" in table
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ") and "_lr" in line and not line.startswith("| run |")}
    assert set(rows) == set(labels)
    best = max((label for label in labels if label.startswith("uniform")),
               key=lambda label: json.loads((out / "bench.json").read_text())[label][0]["best"])
    assert f"steps to uniform's best (its run {best})" in table


def test_bench_requires_uniform(tiny_idx_folder, tmp_path, capsys):
    assert_fails(capsys, "needs the uniform policy",
                 ["bench", str(RECIPE), "--policies", "predicted_loss"] + _small(tiny_idx_folder, tmp_path))


def test_console_script_and_module_entry_points():
    for cmd in (["online-select", "--help"], [sys.executable, "-m", "online_select", "--help"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "train" in result.stdout and "bench" in result.stdout


def test_smoothing_uses_trailing_means_and_skips_step_zero():
    from online_select.bench import smooth_curve

    curve = [{"step": s, "eval/accuracy": a} for s, a in [(0, 0.1), (10, 0.6), (20, 0.9), (30, 0.6)]]
    smoothed = [line["eval/accuracy"] for line in smooth_curve(curve, 3)]
    assert smoothed == pytest.approx([0.1, 0.6, 0.75, 0.7])


def test_reference_refresh_runs_at_the_given_fractions(tiny_idx_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = _small(tiny_idx_folder, out, "train.max_steps=20", "reference.refresh_at=[0.5]", "train.checkpoint_every=0")
    assert main(["train", str(RECIPE), *args]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    refreshes = [line for line in lines if "reference/refreshed" in line]
    assert [line["step"] for line in refreshes] == [10]
    # 10 steps of 16 picks leave most of the 1200 generated samples untrained.
    assert 1200 - 160 <= refreshes[0]["reference/refreshed"] < 1200
    assert refreshes[0]["reference/refresh_seconds"] > 0 and "reference/admitted" in refreshes[0]
    # The refresh's forward batch size (default: selection.keep) changes its speed, not its verdicts.
    other = tmp_path / "batch7"
    args = _small(tiny_idx_folder, other, "train.max_steps=20", "reference.refresh_at=[0.5]", "train.checkpoint_every=0",
                  "reference.refresh_batch_size=7")
    assert main(["train", str(RECIPE), *args]) == 0
    lines = [json.loads(line) for line in (other / "metrics.jsonl").read_text().splitlines()]
    verdicts = ("reference/refreshed", "reference/admitted", "reference/rejected")
    assert [{key: line[key] for key in verdicts} for line in lines if "reference/refreshed" in line] == [
        {key: refreshes[0][key] for key in verdicts}
    ]
    assert_fails(capsys, "refresh_batch_size must be >= 0",
                 ["train", str(RECIPE), *_small(tiny_idx_folder, tmp_path / "z", "reference.refresh_at=[0.5]",
                                           "reference.refresh_batch_size=-1")])
    assert_fails(capsys, r"fractions of train.max_steps in \(0, 1\)",
                 ["train", str(RECIPE), *_small(tiny_idx_folder, tmp_path / "x", "reference.refresh_at=[1.5]")])
    assert_fails(capsys, "needs a reference table .* and a policy with a scorer",
                 ["train", str(RECIPE), *_small(tiny_idx_folder, tmp_path / "y", "reference.refresh_at=[0.5]",
                                           "selection.policy=reference_filter")])


def test_auto_reference_refresh_runs_once_on_long_runs_only(tiny_idx_folder, tmp_path, capsys):
    def refresh_steps(out, *extra):
        args = _small(tiny_idx_folder, out, "train.max_steps=20", "reference.refresh_at=auto", "train.checkpoint_every=0", *extra)
        assert main(["train", str(RECIPE), *args]) == 0
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [line["step"] for line in lines if "reference/refreshed" in line]

    # 20 steps of 16 picks: a quarter of an epoch of the 1200 generated samples, too short to pay for a refresh.
    assert refresh_steps(tmp_path / "short") == []
    # 20 steps of 192 picks: 3.2 epochs, so one refresh at a quarter of the run.
    long_run = ("selection.candidate_batch_size=256", "selection.keep=192")
    assert refresh_steps(tmp_path / "long", *long_run) == [5]
    # Policies that cannot refresh (no loss memory) just run without one.
    assert refresh_steps(tmp_path / "uniform", *long_run, "selection.policy=uniform") == []
    assert_fails(capsys, "refresh_at must be auto or a list",
                 ["train", str(RECIPE), *_small(tiny_idx_folder, tmp_path / "x", "reference.refresh_at=often")])


def test_reject_after_applies_to_scorer_policies_only(tiny_idx_folder, tmp_path, capsys):
    # The recipe rejects after 2 visits; uniform and reference_filter keep no loss memory, so it does not apply.
    for policy in ("uniform", "reference_filter"):
        out = tmp_path / policy
        args = _small(tiny_idx_folder, out, f"selection.policy={policy}", "selection.reject_after=2", "train.max_steps=10",
                      "train.checkpoint_every=0")
        assert main(["train", str(RECIPE), *args]) == 0
        evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "eval/accuracy" in line]
        assert evals and not any("selection/rejected" in line for line in evals)
    # A scorer policy without a reference table cannot reject: that is an error, not a silent no-op.
    out = tmp_path / "scored"
    args = _small(tiny_idx_folder, out, "selection.policy=predicted_loss", "reference.kind=none", "selection.reject_after=2",
                  "train.max_steps=10", "train.checkpoint_every=0")
    assert_fails(capsys, "reject_after needs a ReferenceTable reference", ["train", str(RECIPE), *args])


def test_temperature_end_anneals_the_sampling_temperature(tiny_idx_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = _small(tiny_idx_folder, out, "train.max_steps=21", "logging.log_every=10", "train.checkpoint_every=0",
                  "selection.temperature=0.1", "selection.temperature_end=1.0")
    assert main(["train", str(RECIPE), *args]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {line["step"]: line["selection/temperature"] for line in lines if "selection/temperature" in line}
    assert logged == pytest.approx({10: 0.1 ** (1 - 9 / 20), 20: 0.1 ** (1 - 19 / 20)})
    assert_fails(capsys, "temperature_end needs selection.rule=sample",
                 ["train", str(RECIPE), *_small(tiny_idx_folder, tmp_path / "x", "selection.temperature_end=1.0",
                                           "selection.rule=top_k")])
    assert_fails(capsys, "temperature end must be positive",
                 ["train", str(RECIPE), *_small(tiny_idx_folder, tmp_path / "y", "selection.temperature_end=-1")])


def test_reference_model_can_be_a_small_cnn(tiny_idx_folder, tmp_path, capsys):
    args = _small(tiny_idx_folder, tmp_path / "cnn", "train.max_steps=5", "train.eval_every=5", "train.checkpoint_every=0",
                  "reference.model=small_cnn", "reference.width=4")
    assert main(["train", str(RECIPE), *args]) == 0
    assert (tmp_path / "cnn" / "reference.safetensors").exists()
    assert_fails(capsys, "expected mlp or small_cnn",
                 ["train", str(RECIPE), *_small(tiny_idx_folder, tmp_path / "x", "reference.model=resnet")])
