"""The ready loop's own guards."""

import warnings

import pytest
import torch

from online_select.config import load_config
from online_select.loop import train
from online_select.tasks import build_task

from .conftest import RECIPE, small_run


def test_a_step_whose_skipped_losses_left_nonfinite_gradients_is_not_taken(tiny_idx_folder, tmp_path):
    config = load_config(RECIPE, small_run(tiny_idx_folder, tmp_path / "run", "selection.on_nonfinite=skip", "train.checkpoint_every=0"))
    task = build_task(config)

    class Poisoned:
        """The task's loss, but every 7th sample's loss is NaN in the large model's (a CNN's) steps, and so is its
        gradient, as behind a NaN activation; the reference (an MLP) sees the plain loss."""

        def __init__(self, base):
            self.base = base

        def __getattr__(self, name):
            return getattr(self.base, name)

        def __call__(self, model, batch):
            losses = self.base(model, batch)
            if not any(isinstance(module, torch.nn.Conv2d) for module in model.modules()):
                return losses
            nan_on_bad_rows = torch.zeros_like(losses).masked_fill((batch["id"] % 7 == 0).to(losses.device), float("nan"))
            return losses * (1 + nan_on_bad_rows)  # a NaN gradient on those rows only, even times a zero weight

    task.loss = Poisoned(task.loss)
    evaluate, finite_weights = task.evaluate, []

    def evaluate_and_check(model, device):
        finite_weights.append(all(bool(torch.isfinite(p).all()) for p in model.parameters()))
        return evaluate(model, device)

    task.evaluate = evaluate_and_check
    final = train(config, task)
    assert finite_weights and all(finite_weights)  # at every eval
    assert final["selection/nonfinite_losses"] > 0 and 0 < final["train/skipped_updates"] < 30


def test_uniform_with_a_keep_ratio_trains_on_k_samples_a_step(tiny_idx_folder, tmp_path):
    config = load_config(RECIPE, small_run(tiny_idx_folder, tmp_path / "run", "selection.policy=uniform", "selection.keep=0.25",
                                           "train.max_steps=5", "train.checkpoint_every=0"))
    task = build_task(config)
    trained = []
    loss = task.loss
    task.loss = lambda model, batch: trained.append(len(batch["id"])) or loss(model, batch)
    train(config, task)
    assert trained == [16] * 5  # 0.25 of the 64 candidates, as every other policy: not 0.25 of the 16 it loads


def test_a_resume_with_other_settings_names_them(tiny_idx_folder, tmp_path):
    out = tmp_path / "run"
    first = small_run(tiny_idx_folder, out, "train.max_steps=10", "train.checkpoint_every=5", "train.eval_every=5")
    train(load_config(RECIPE, first))
    with pytest.warns(UserWarning, match=r"resumed with settings other than the checkpointed run's \(train.lr: 0.001 -> "
                                         r"0.002; train.max_steps: 10 -> 12\): the model, the optimizer"):
        train(load_config(RECIPE, [*first, "train.resume=auto", "train.max_steps=12", "train.lr=0.002"]))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*resumed with settings")
        train(load_config(RECIPE, [*first, "train.resume=auto", "train.max_steps=12", "train.lr=0.002"]))


def test_the_recipe_sets_the_scorer_heads_width(tiny_idx_folder, tmp_path):
    from online_select.loop import build_selector

    config = load_config(RECIPE, small_run(tiny_idx_folder, tmp_path / "run", "scorer.hidden=16"))
    task = build_task(config)
    selector, _ = build_selector(config, task, lambda batch: task.loss(task.large_model(), batch))
    assert selector.scorer.hidden == 16


def test_a_fitted_label_floor_comes_from_the_reference_table(tiny_idx_folder, tmp_path):
    from online_select.config import ConfigError
    from online_select.loop import _label_floor, build_selector
    from online_select.policies import fit_label_floor
    from online_select.reference import ReferenceModel

    config = load_config(RECIPE, small_run(tiny_idx_folder, tmp_path / "run", "selection.label_floor=fit"))
    task = build_task(config)
    selector, report = build_selector(config, task, lambda batch: task.loss(task.large_model(), batch))
    assert selector.label_floor == report["label_floor_fitted"] == fit_label_floor(selector.reference.table)
    assert 0 < selector.label_floor < 1
    assert _label_floor("fit", task, None) == task.label_floor()  # no reference judges the labels
    with pytest.raises(ConfigError, match="label_floor=fit fits the floor to a reference table"):
        _label_floor("fit", task, ReferenceModel(task.large_model(), task.loss))


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state whose precision cannot change: reset it around the test, as
    Accelerate's own test cases do."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize(("precision", "dtype"), [("no", torch.float32), ("bf16", torch.bfloat16)])
def test_mixed_precision_runs_the_large_model_under_autocast(tiny_idx_folder, tmp_path, precision, dtype,
                                                             fresh_accelerator_state):
    config = load_config(RECIPE, small_run(tiny_idx_folder, tmp_path / "run", f"train.mixed_precision={precision}",
                                           "train.max_steps=3", "train.checkpoint_every=0", "train.eval_every=0"))
    task = build_task(config)
    outputs = []
    large_model = task.large_model

    def recorded_large_model():
        model = large_model()
        conv = next(module for module in model.modules() if isinstance(module, torch.nn.Conv2d))
        conv.register_forward_hook(lambda module, args, out: outputs.append(out.dtype) if module.training else None)
        return model

    task.large_model = recorded_large_model
    train(config, task)
    assert outputs == [dtype] * 3
