"""Early stopping and the best model: the tracker, the loop's use of it, resume and the recipe checks."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from online_select.bench import finished_run
from online_select.config import ConfigError, load_config
from online_select.early_stopping import BestMetric
from online_select.loop import train
from online_select.tasks import build_task

from .conftest import RECIPE, small_run


def test_the_tracker_waits_patience_evals_without_an_improvement_beyond_min_delta():
    best = BestMetric("eval/loss", "min", patience=2, min_delta=0.01)
    assert best.update(0, {"eval/loss": 5.0})
    assert best.update(100, {"eval/loss": 4.0})
    assert not best.update(200, {"eval/loss": 3.995})  # better, by less than min_delta
    assert not best.should_stop
    assert not best.update(300, {"eval/loss": math.nan})  # never the best; counts as an eval without improvement
    assert best.should_stop and (best.best_step, best.best_value, best.evals_since_best) == (100, 4.0, 2)

    restored = BestMetric("eval/loss", "min", patience=3)
    restored.load_state_dict(json.loads(json.dumps(best.state_dict())))
    assert (restored.best_step, restored.best_value, restored.evals_since_best) == (100, 4.0, 2)
    assert not restored.should_stop  # a larger patience on resume lets the run go on

    higher = BestMetric("eval/accuracy", "max")
    assert higher.update(0, {"eval/accuracy": 0.5}) and not higher.update(1, {"eval/accuracy": 0.4})
    assert not higher.should_stop  # patience 0: never


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "lower"}, "mode must be one of"),
        ({"patience": -1}, "patience must be a whole number"),
        ({"min_delta": -0.1}, "min_delta must be finite and >= 0"),
    ],
)
def test_the_tracker_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BestMetric("eval/loss", **{"mode": "min", **kwargs})


def test_a_metric_the_evals_do_not_log_is_named():
    with pytest.raises(KeyError, match=r"no 'eval/f1' to track; it logs eval/loss"):
        BestMetric("eval/f1", "max").update(0, {"step": 0, "eval/loss": 1.0})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.early_stop_patience=3", "train.eval_every=0"], "set train.eval_every > 0"),
        (["train.keep_best=true", "train.eval_every=0"], "set train.eval_every > 0"),
        (["train.early_stop_patience=-1"], "train.early_stop_patience=-1 is negative"),
        (["train.early_stop_min_delta=-0.5"], "not a finite number >= 0"),
        (["train.best_mode=lower", "train.best_metric=eval/loss"], "is not one of min, max"),
        (["train.best_mode=min"], "needs train.best_metric"),
        (["train.best_metric=eval/loss"], "with train.best_mode=min or max"),
    ],
)
def test_recipe_settings_for_early_stopping_are_checked_when_it_loads(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RECIPE, [f"output_dir={tmp_path}", *overrides])


ACCURACIES = [0.10, 0.50, 0.40, 0.45, 0.90, 0.95, 0.99]  # the evals at steps 0, 10, 20, ... in order


def _scripted(config, accuracies):
    """The task with its evals' accuracy replaced by ``accuracies`` in turn, and the model at each eval."""
    task = build_task(config)
    real, pending, models = task.evaluate, list(accuracies), []

    def evaluate(model, device):
        models.append({name: value.detach().clone() for name, value in model.state_dict().items()})
        return {**real(model, device), "eval/accuracy": pending.pop(0)}

    task.evaluate = evaluate
    return task, models


def _lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _stopping_run(folder, out, *extra):
    return small_run(folder, out, "train.max_steps=60", "train.checkpoint_every=25", "train.early_stop_patience=2",
                     "train.keep_best=true", *extra)


def test_the_loop_stops_after_patience_evals_and_keeps_the_best_model(tiny_idx_folder, tmp_path, capsys):
    out = tmp_path / "run"
    config = load_config(RECIPE, _stopping_run(tiny_idx_folder, out))
    task, models = _scripted(config, ACCURACIES)
    last = train(config, task)

    # Best 0.50 at step 10; 0.40 and 0.45 after it: patience 2 runs out at step 30.
    assert last["step"] == 30 and last["train/early_stopped"] == 1 and last["train/best_step"] == 10
    assert "early stop at step 30: eval/accuracy has not improved on 0.5 (step 10)" in capsys.readouterr().out
    evals = [line for line in _lines(out) if "eval/accuracy" in line]
    assert [line["step"] for line in evals] == [0, 10, 20, 30]
    assert [line["train/evals_since_best"] for line in evals] == [0, 0, 1, 2]
    assert sorted(p.name for p in (out / "best").iterdir()) == ["step-00000010"]
    saved = load_file(str(out / "best" / "step-00000010" / "model.safetensors"))
    assert saved.keys() == models[1].keys()
    assert all(torch.equal(saved[name], models[1][name]) for name in saved)
    # The stop is checkpointed, so a resume finds nothing left to train; bench's --reuse reads the run as finished.
    assert (out / "checkpoints" / "step-00000030").is_dir()
    assert finished_run(config, out)
    again, _ = _scripted(config, [])
    train(load_config(RECIPE, [*_stopping_run(tiny_idx_folder, out), "train.resume=auto"]), again)
    assert "stopped early at step 30; nothing left to train" in capsys.readouterr().out
    assert [line["step"] for line in _lines(out) if "eval/accuracy" in line] == [0, 10, 20, 30]


@pytest.mark.filterwarnings("ignore:online_select. resumed with settings other")  # the resume extends max_steps
def test_a_resumed_run_stops_where_the_uninterrupted_run_does(tiny_idx_folder, tmp_path):
    out = tmp_path / "run"
    first = load_config(RECIPE, _stopping_run(tiny_idx_folder, out, "train.max_steps=20", "train.checkpoint_every=20"))
    train(first, _scripted(first, ACCURACIES[:3])[0])
    assert (out / "checkpoints" / "step-00000020").is_dir()
    # The best (step 10) and the one eval since it come back from the checkpoint: the run stops at 30 as above.
    resumed = load_config(RECIPE, [*_stopping_run(tiny_idx_folder, out), "train.resume=auto"])
    last = train(resumed, _scripted(resumed, ACCURACIES[3:])[0])
    assert last["step"] == 30 and last["train/best_step"] == 10 and last["train/early_stopped"] == 1


def test_a_fresh_run_removes_an_earlier_runs_best_model(tiny_idx_folder, tmp_path):
    out = tmp_path / "run"
    config = load_config(RECIPE, _stopping_run(tiny_idx_folder, out))
    train(config, _scripted(config, ACCURACIES)[0])
    rising = load_config(RECIPE, _stopping_run(tiny_idx_folder, out, "train.max_steps=20"))
    train(rising, _scripted(rising, [0.1, 0.2, 0.3])[0])
    assert sorted(p.name for p in (out / "best").iterdir()) == ["step-00000020"]


def test_a_best_metric_the_task_does_not_log_stops_the_run_at_its_first_eval(tiny_idx_folder, tmp_path):
    config = load_config(RECIPE, _stopping_run(tiny_idx_folder, tmp_path / "run", "train.best_metric=eval/f1",
                                               "train.best_mode=max"))
    with pytest.raises(ConfigError, match=r"train.best_metric: the evals log eval/accuracy, eval/loss, not 'eval/f1'"):
        train(config)


@pytest.mark.filterwarnings("ignore:online_select. resumed with settings other")
def test_a_resume_keeps_a_best_model_saved_after_its_checkpoint(tiny_idx_folder, tmp_path):
    out = tmp_path / "run"
    keep_only = small_run(tiny_idx_folder, out, "train.max_steps=40", "train.checkpoint_every=20",
                          "train.keep_checkpoints=0", "train.keep_best=true")
    config = load_config(RECIPE, keep_only)
    train(config, _scripted(config, [0.1, 0.5, 0.4, 0.9, 0.3])[0])
    assert sorted(p.name for p in (out / "best").iterdir()) == ["step-00000030"]  # step 10's was replaced
    shutil.rmtree(out / "checkpoints" / "step-00000040")  # as if the run had died after step 30's best
    # Resumed from step 20, whose state says the best is step 10's (0.5): a resumed trajectory that does not find
    # a better eval leaves step 30's model in place rather than no model at all.
    resumed = load_config(RECIPE, [*keep_only, "train.resume=auto"])
    last = train(resumed, _scripted(resumed, [0.45, 0.3])[0])
    assert last["train/best_step"] == 10
    assert sorted(p.name for p in (out / "best").iterdir()) == ["step-00000030"]
