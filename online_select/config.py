"""Recipe configuration: typed dataclasses, YAML files (safe loader) and dotted ``key=value`` overrides.

Unknown keys are errors that name the key, in files and overrides alike.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "ScorerConfig",
    "ReferenceConfig",
    "SelectionConfig",
    "TrainConfig",
    "LoggingConfig",
    "ConfigError",
    "load_config",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "read_yaml",
]


class _RecipeLoader(yaml.SafeLoader):
    """The safe loader, with three changes for recipes: ``3e-4`` is a number (YAML 1.1 reads an exponent without a
    dot as text), dates stay text, and a key given twice in one mapping is an error instead of the last one winning."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"the key {key!r} is given twice in one mapping (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}): the first would be silently dropped"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(text: str) -> Any:
    """Parse recipe YAML (safe: plain data only) as :class:`_RecipeLoader` reads it."""
    return yaml.load(text, Loader=_RecipeLoader)


class ConfigError(ValueError):
    """A recipe or override is invalid (unknown key, wrong type)."""


@dataclass
class DataConfig:
    """Where the data comes from and how it is corrupted."""

    path: str = "/usr/share/datasets/fashion-mnist"
    source: str = "folder"  # folder (MNIST-format IDX files) | hub (datasets.load_dataset)
    hub_name: str = "zalando-datasets/fashion_mnist"
    label_noise: float = 0.3
    holdout_fraction: float = 0.1  # held out of training for a `holdout` reference
    eval_size: int = 10000  # test samples evaluated (0: all; images: a random subset fixed by noise_seed)
    noise_seed: int = 1234  # the corruption is part of the dataset: fixed across run seeds
    max_train_samples: int = 0  # 0: all; else a random subset fixed by noise_seed, labels as in a full run
    text_column: str = "text"  # hub text datasets' text column (rotten_tomatoes)
    label_column: str = "label"  # hub datasets' label column (images, rotten_tomatoes)
    max_length: int = 64
    extra: dict = field(default_factory=dict)


@dataclass
class ModelConfig:
    """The large model."""

    name: str = "small_cnn"
    width: int = 32
    hidden: int = 128
    pretrained_path: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class ScorerConfig:
    """The co-trained scorer (see :class:`online_select.Scorer`)."""

    hidden: int = 32  # the head's width, and the input model's (scorer.model) if there is one
    lr: float = 3e-3
    objective: str = "rank_mse"
    use_memory: bool = True
    age_scale: float = 1000.0
    update_every: int = 1  # one scorer optimizer step per this many large-model steps, on all their samples
    model: str = "none"  # none | a small input model from the task's builders (e.g. mlp)


@dataclass
class ReferenceConfig:
    """How the reference (irreducible-loss) estimates are made."""

    kind: str = "twin_halves"  # twin_halves | holdout | file | none
    model: str = "mlp"  # mlp | small_cnn (image tasks)
    hidden: int = 128
    width: int = 8  # small_cnn channels
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 128
    path: str = ""  # for kind=file: a safetensors file with `losses` (and optional `features`)
    # Fractions of train.max_steps at which the large model re-judges the labels of the samples it has
    # not trained on yet: its loss replaces the reference loss there (OnlineSelector.refresh_reference).
    # auto: once, at 0.25, when the run trains on at least 3 epochs' worth of samples (max_steps * k);
    # a refresh's forward covers the samples not yet trained on, the more of them the shorter the run.
    refresh_at: str | list = field(default_factory=list)
    # Samples per large-model forward in a refresh; 0: selection.keep's count k, the batch the large model
    # trains at (on a CPU, small batches run faster per sample: benchmarks/refresh_cost.py).
    refresh_batch_size: int = 0


@dataclass
class SelectionConfig:
    """What to select and how."""

    policy: str = "predicted_learnability"
    candidate_batch_size: int = 640
    keep: float = 64  # an int count k, or a float ratio of the candidate batch in (0, 1]
    rule: str = "sample"
    explore: float = 0.125
    temperature: float = 0.1
    # Anneal the temperature geometrically from `temperature` (first step) to this (last step of
    # train.max_steps), relaxing selection toward uniform over the eligible samples; None: constant.
    temperature_end: float | None = None
    importance_weights: bool = False
    label_floor: Any = "auto"  # auto: 1/num_classes for classifiers; fit: fitted to the reference's losses
    warmup_steps: int = 0
    # A sample trained on this many times whose observed loss still puts its label under the label floor
    # becomes ineligible (OnlineSelector.reject_unlearned); 0: never. Policies without a scorer ignore it.
    reject_after: int = 0
    # Each pick's loss weight times exp(-loss_discount * its loss), renormalised to mean 1 (OnlineSelector); 0: off.
    loss_discount: float = 0.0
    on_nonfinite: str = "raise"
    distributed: str = "local"  # local | global: how several processes select (see online_select.distributed)
    # Score this many steps' candidates in one pass, each step drawing from its own (OnlineSelector.select_plan):
    # fewer small ops per step, scores up to plan_steps - 1 steps stale. Across processes: distributed=local. 1: every step.
    plan_steps: int = 1
    # A second policy that scores every selection from switch_at on (OnlineSelector's switch_to): "" never.
    # switch_at: a step (an int) or a fraction of train.max_steps (a float in (0, 1)). Other policies a bench
    # runs beside this recipe's (uniform, ...) run without it.
    switch_to: str = ""
    switch_at: float = 0


@dataclass
class TrainConfig:
    """The large model's optimisation and the loop's cadence."""

    max_steps: int = 3000
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "constant"  # constant | cosine | linear
    warmup_steps: int = 0
    eval_every: int = 200
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    # Early stopping: stop once `patience` evals in a row have not improved the best eval of best_metric by more
    # than early_stop_min_delta; 0: run to max_steps. keep_best: the best eval's model in output_dir/best (safetensors,
    # written atomically). best_metric "": the task's (eval/accuracy, higher better; eval/loss, lower, for language
    # models); another metric needs best_mode (min | max).
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0
    keep_best: bool = False
    best_metric: str = ""
    best_mode: str = ""
    resume: str = ""  # "" (fresh) | auto | a checkpoint directory
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    progress: bool = True
    cpu: bool = False
    # The large model's forward under autocast (Accelerate's mixed precision): "" leaves it to Accelerate (e.g.
    # `accelerate launch --mixed_precision bf16`), "no" | "bf16" | "fp16" set it. The scorer and reference stay float32.
    mixed_precision: str = ""
    deterministic: bool = False  # deterministic kernels (bitwise-repeatable GPU runs and resumes; slower)


@dataclass
class LoggingConfig:
    """Trackers (through Accelerate) next to the always-written metrics.jsonl."""

    trackers: list = field(default_factory=lambda: ["wandb"])
    project: str = "online_select"
    run_name: str = ""
    wandb_mode: str = "offline"  # offline unless the user opts in with `online`
    log_every: int = 50
    telemetry: bool = True  # selection telemetry (see online_select.telemetry); false: none of it
    audit_every: int = 200  # large forward on audit_size random candidates every N steps (0: never)
    audit_size: int = 256
    audit_oracle: str = "auto"  # auto: the policy with exact large losses in place of estimates
    table_every: int = 1000  # most-selected/-rejected tables at eval steps every N steps (0: never)
    table_rows: int = 16
    histogram_bins: int = 30
    trace: bool = False  # write selection_trace.jsonl: every step's selected ids, weights, exploration flags, losses


@dataclass
class Config:
    """A whole recipe."""

    task: str = "idx_images"  # an IDX image folder (Fashion-MNIST by default, see data.path)
    seed: int = 0
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not fit {hint}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        # keep ints as ints where a count is meant (e.g. selection.keep: 64 vs 0.1)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, bool):
            raise ConfigError(
                f"{key}: expected a string, got {value!r} (YAML reads yes/no/on/off as true/false: quote it)"
            )
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if hint is list or origin is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    return value


def config_from_dict(data: dict, cls: type = Config, prefix: str = "") -> Any:
    """Build a config dataclass from a plain dict; unknown keys are errors that name the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r}; known keys here: {', '.join(sorted(names))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = config_from_dict(value or {}, hint, f"{dotted}.")
        else:
            kwargs[key] = _coerce(value, hint, dotted)
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict:
    """The config as plain data (for YAML/JSON)."""
    return dataclasses.asdict(config)


def _set_dotted(data: dict, cls: type, key: str, raw: str) -> None:
    parts = key.split(".")
    node, node_cls = data, cls
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(node_cls)}
        dotted = ".".join(parts[: i + 1])
        if part not in names:
            raise ConfigError(f"unknown config key {dotted!r}; known keys here: {', '.join(sorted(names))}")
        hint = _hints(node_cls)[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(hint):
                raise ConfigError(f"{dotted!r} is a section; set one of its keys, e.g. {dotted}.<key>=...")
            # Text settings take the text as written (`run_name=on` is "on", `1.10` is "1.10"), the others YAML's value.
            node[part] = raw if hint is str or raw == "" else read_yaml(raw)
            return
        if not (hint is dict or typing.get_origin(hint) is dict or dataclasses.is_dataclass(hint)):
            raise ConfigError(f"{dotted!r} is not a section, so {key!r} does not exist")
        if node.get(part) is None:  # absent, or an empty section in the YAML (`data:`)
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise ConfigError(f"{dotted!r} is a section, but the recipe gives it the value {node[part]!r}")
        if not dataclasses.is_dataclass(hint):
            node[part][".".join(parts[i + 1 :])] = read_yaml(raw)
            return
        node = node[part]
        node_cls = hint


def apply_overrides(data: dict, overrides: list[str], cls: type = Config) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars) to a raw config dict."""
    data = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, cls, key.strip(), raw.strip())
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe (safe loader), apply overrides, and validate every key."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file {str(path)!r} does not exist")
        data = read_yaml(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {str(path)!r} must be a YAML mapping at the top level")
    data = apply_overrides(data, overrides or [])
    config = config_from_dict(data)
    _check_choices(config)
    return config


SCHEDULES = ("constant", "cosine", "linear")


def _check_switch(sel: SelectionConfig) -> None:
    from .policies import POLICIES

    if not sel.switch_to:
        if sel.switch_at:
            raise ConfigError(f"selection.switch_at={sel.switch_at!r} needs selection.switch_to (the policy to switch to)")
        return
    if sel.switch_to not in POLICIES:
        raise ConfigError(f"selection.switch_to={sel.switch_to!r} is not one of {', '.join(POLICIES)}")
    if sel.switch_to == sel.policy:
        raise ConfigError(f"selection.switch_to={sel.switch_to!r} is selection.policy already")
    if sel.policy == "uniform":
        raise ConfigError(
            "selection.switch_to from policy uniform: use selection.warmup_steps (uniform steps first, the scorer "
            "learning meanwhile) with the policy to switch to as selection.policy"
        )
    at = sel.switch_at
    if not ((isinstance(at, int) and at >= 1) or (isinstance(at, float) and 0 < at < 1)):
        raise ConfigError(
            f"selection.switch_at={at!r} is neither a step >= 1 (an integer) nor a fraction of train.max_steps in (0, 1)"
        )


def best_metric(config: Config) -> tuple[str, str]:
    """The ``(metric, mode)`` early stopping and ``train.keep_best`` track: train.best_metric/best_mode, or the task's."""
    from .tasks import task_metric

    metric, mode = task_metric(config.task)
    if config.train.best_metric and config.train.best_metric != metric:
        return config.train.best_metric, config.train.best_mode
    return metric, config.train.best_mode or mode


def _check_best(config: Config) -> None:
    train = config.train
    if not (isinstance(train.early_stop_min_delta, (int, float)) and 0 <= train.early_stop_min_delta < math.inf):
        raise ConfigError(f"train.early_stop_min_delta={train.early_stop_min_delta!r} is not a finite number >= 0")
    if train.best_mode not in ("", "min", "max"):
        raise ConfigError(f"train.best_mode={train.best_mode!r} is not one of min, max (or empty: the task's)")
    if train.best_mode and not train.best_metric:
        raise ConfigError(f"train.best_mode={train.best_mode!r} needs train.best_metric (the eval metric it applies to)")
    if (train.early_stop_patience or train.keep_best) and not train.eval_every:
        raise ConfigError("train.early_stop_patience and train.keep_best read the evals: set train.eval_every > 0")
    if train.best_metric and not best_metric(config)[1]:
        raise ConfigError(
            f"train.best_metric={train.best_metric!r} is not the task's metric: say whether lower or higher is better "
            "with train.best_mode=min or max"
        )


def _check_choices(config: Config) -> None:
    """Settings with a fixed set of values, checked when the recipe loads rather than when training reaches them."""
    from .distributed import MODES
    from .policies import POLICIES
    from .rules import RULES
    from .scorer import OBJECTIVES
    from .telemetry import UNSCORED_POLICIES

    choices = {
        "selection.policy": (config.selection.policy, tuple(POLICIES)),
        "selection.rule": (config.selection.rule, RULES),
        "selection.distributed": (config.selection.distributed, MODES),
        "scorer.objective": (config.scorer.objective, OBJECTIVES),
        "train.schedule": (config.train.schedule, SCHEDULES),
        "train.mixed_precision": (config.train.mixed_precision, ("", "no", "bf16", "fp16")),
        "selection.on_nonfinite": (config.selection.on_nonfinite, ("raise", "skip")),
        "logging.wandb_mode": (config.logging.wandb_mode, ("offline", "online", "disabled", "shared")),
        "logging.audit_oracle": (
            config.logging.audit_oracle, ("auto", *(p for p in POLICIES if p not in UNSCORED_POLICIES))
        ),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    _check_switch(config.selection)
    floor = config.selection.label_floor
    if floor not in ("auto", "fit") and (isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1):
        raise ConfigError(f"selection.label_floor={floor!r} is neither auto, fit nor a probability in [0, 1)")
    counts = {
        "train.threads": config.train.threads,  # 0: torch's default
        "train.warmup_steps": config.train.warmup_steps,
        "train.eval_every": config.train.eval_every,  # 0: never
        "train.checkpoint_every": config.train.checkpoint_every,  # 0: never
        "train.keep_checkpoints": config.train.keep_checkpoints,  # 0: all
        "train.early_stop_patience": config.train.early_stop_patience,  # 0: never
        "selection.warmup_steps": config.selection.warmup_steps,
        "selection.reject_after": config.selection.reject_after,  # 0: never
        "data.eval_size": config.data.eval_size,  # 0: the whole test split
        "data.max_train_samples": config.data.max_train_samples,  # 0: all
    }
    for key, value in counts.items():
        if value < 0:
            raise ConfigError(f"{key}={value} is negative")
    if not 0 < config.data.holdout_fraction < 1:
        raise ConfigError(f"data.holdout_fraction={config.data.holdout_fraction} is not a fraction in (0, 1)")
    _check_best(config)
