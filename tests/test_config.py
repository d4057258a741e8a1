import re

import pytest

from online_select.config import ConfigError, load_config


def test_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 3\nselection:\n  policy: uniform\n  keep: 0.1\ntrain:\n  max_steps: 10\n")
    cfg = load_config(recipe, ["selection.policy=reducible_loss", "train.max_steps=20", "data.label_noise=0.5", "logging.trackers=[]"])
    assert cfg.seed == 3 and cfg.selection.policy == "reducible_loss"
    assert cfg.train.max_steps == 20 and cfg.data.label_noise == 0.5
    assert cfg.selection.keep == 0.1 and cfg.logging.trackers == []


def test_keep_stays_a_count_when_integral(tmp_path):
    assert load_config(None, ["selection.keep=64"]).selection.keep == 64
    assert isinstance(load_config(None, ["selection.keep=64"]).selection.keep, int)


@pytest.mark.parametrize(
    "override, message",
    [
        ("selection.polcy=uniform", "unknown config key 'selection.polcy'"),
        ("nonsense=1", "unknown config key 'nonsense'"),
        ("train.max_steps=abc", "train.max_steps: expected an integer"),
        ("selection=3", "'selection' is a section"),
        ("seed", "must look like key.sub=value"),
        ("seed.x=1", "'seed' is not a section"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.max_stepz'"):
        load_config(recipe)


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/no/such/recipe.yaml")


def test_unsafe_yaml_is_rejected(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(Exception, match="could not determine a constructor"):
        load_config(recipe)


def test_an_empty_section_takes_overrides_and_the_default_task_exists(tmp_path):
    from online_select.tasks import TASK_BUILDERS

    path = tmp_path / "r.yaml"
    path.write_text("data:\nselection:\n  policy: uniform\n")
    config = load_config(path, ["data.label_noise=0.1", "data.extra.test_size=5"])
    assert config.data.label_noise == 0.1 and config.data.extra == {"test_size": 5}
    assert config.task in TASK_BUILDERS
    path.write_text("data: 5\n")
    with pytest.raises(ConfigError, match="'data' is a section, but the recipe gives it the value 5"):
        load_config(path, ["data.label_noise=0.1"])


def test_numbers_in_exponent_notation_text_as_written_and_lists_with_spaces(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 5e-4\n  weight_decay: 1E-2\nlogging:\n  run_name: 2024-06-01\n")
    config = load_config(recipe, ["train.max_steps=1e3", "selection.temperature_end=1e-2", "logging.project=on",
                                  "logging.trackers=wandb, tensorboard"])
    assert (config.train.lr, config.train.weight_decay, config.train.max_steps) == (5e-4, 1e-2, 1000)
    assert config.selection.temperature_end == 1e-2 and config.logging.run_name == "2024-06-01"
    assert config.logging.project == "on" and config.logging.trackers == ["wandb", "tensorboard"]
    assert load_config(None, ["logging.run_name=exp 1.10"]).logging.run_name == "exp 1.10"
    recipe.write_text("logging:\n  run_name: on\n")
    with pytest.raises(ConfigError, match="logging.run_name: expected a string, got True .*quote it"):
        load_config(recipe)


def test_a_key_given_twice_in_a_recipe_is_an_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("selection:\n  keep: 16\ntrain:\n  max_steps: 3\nselection:\n  policy: uniform\n")
    with pytest.raises(ConfigError, match=r"the key 'selection' is given twice in one mapping \(lines 1 and 5\)"):
        load_config(recipe)


@pytest.mark.parametrize("override, message", [
    ("selection.label_floor=abc", "selection.label_floor='abc' is neither auto, fit nor a probability in [0, 1)"),
    ("selection.label_floor=null", "selection.label_floor=None is neither auto, fit nor a probability"),
    ("selection.label_floor=1.5", "selection.label_floor=1.5 is neither auto, fit nor a probability"),
    ("train.threads=-1", "train.threads=-1 is negative"),
    ("train.keep_checkpoints=-2", "train.keep_checkpoints=-2 is negative"),
    ("data.max_train_samples=-5", "data.max_train_samples=-5 is negative"),
    ("data.holdout_fraction=1.0", "data.holdout_fraction=1.0 is not a fraction in (0, 1)"),
    ("data.holdout_fraction=0", "data.holdout_fraction=0 is not a fraction in (0, 1)"),
])
def test_bad_values_are_named_when_the_recipe_loads(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


@pytest.mark.parametrize("override, message", [
    ("selection.policy=predicted_learnabilty", "selection.policy='predicted_learnabilty' is not one of uniform,"),
    ("selection.rule=topk", "selection.rule='topk' is not one of top_k, sample"),
    ("selection.distributed=globl", "selection.distributed='globl' is not one of local, global"),
    ("scorer.objective=rankmse", "scorer.objective='rankmse' is not one of mse, huber, rank_mse"),
    ("train.schedule=cosin", "train.schedule='cosin' is not one of constant, cosine, linear"),
    ("selection.on_nonfinite=ignore", "selection.on_nonfinite='ignore' is not one of raise, skip"),
    ("logging.wandb_mode=offlne", "logging.wandb_mode='offlne' is not one of offline, online, disabled, shared"),
    ("logging.audit_oracle=learnabilty", "logging.audit_oracle='learnabilty' is not one of auto, large_loss,"),
    ("logging.audit_oracle=uniform", "logging.audit_oracle='uniform' is not one of auto, large_loss,"),
])
def test_a_setting_with_fixed_choices_is_checked_when_the_recipe_loads(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, message", [
    (["selection.switch_to=predicted_reducible_loss"], "selection.switch_at=0 is neither a step >= 1"),
    (["selection.switch_to=predicted_reducible_loss", "selection.switch_at=1.5"], "switch_at=1.5 is neither a step"),
    (["selection.switch_to=predicted_reducible_loss", "selection.switch_at=-3"], "switch_at=-3 is neither a step"),
    (["selection.switch_at=600"], "selection.switch_at=600 needs selection.switch_to"),
    (["selection.switch_to=reducible", "selection.switch_at=600"], "selection.switch_to='reducible' is not one of"),
    (["selection.switch_to=predicted_learnability", "selection.switch_at=600"], "is selection.policy already"),
    (["selection.policy=uniform", "selection.switch_to=predicted_learnability", "selection.switch_at=600"],
     "use selection.warmup_steps"),
])
def test_a_bad_policy_switch_is_named_when_the_recipe_loads(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_a_policy_switch_at_a_fraction_or_a_step(tiny_idx_folder):
    import torch

    from online_select.loop import build_selector
    from online_select.tasks import build_task

    for at, step in ((0.25, 200), (600, 600)):
        config = load_config(None, ["selection.switch_to=predicted_reducible_loss", f"selection.switch_at={at}",
                                    "train.max_steps=800", "reference.epochs=1", f"data.path={tiny_idx_folder}"])
        selector, _ = build_selector(config, build_task(config), lambda batch: torch.zeros(len(batch["id"])))
        assert selector.switch_to.name == "predicted_reducible_loss" and selector.switch_at == step


def test_an_unknown_data_source_is_an_error_not_a_hub_download():
    from online_select.tasks import build_task

    with pytest.raises(ConfigError, match=re.escape("data.source='folders' is not one of folder, hub")):
        build_task(load_config(None, ["data.source=folders"]))
