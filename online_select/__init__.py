"""online_select: online in-batch data selection with a co-trained scorer.

Every step a candidate batch of B samples is scored cheaply; only the top k go through the large
model's forward, loss and update; the scorer then learns from the large model's observed losses.
"""

from .batch import BatchError, batch_size, take
from .losses import ClassificationLoss, LossShapeError, NonFiniteLossError, check_per_sample_loss, finite_gradients
from .memory import LossMemory
from .policies import POLICIES, Policy, Signals, fit_label_floor, get_policy, learnability
from .reference import (
    Reference,
    ReferenceCoverageError,
    ReferenceMismatchError,
    ReferenceModel,
    ReferenceTable,
    holdout_reference,
    samples_fingerprint,
    twin_halves_reference,
)
from .rules import Selection, annealed_temperature, resolve_keep, select
from .scorer import Scorer
from .selector import (
    ExplorationWarning,
    FlatScoresWarning,
    OnlineSelector,
    ProxyModel,
    ReferenceRefresh,
    SelectedBatch,
    spearman,
)
from .telemetry import SelectionTelemetry

__version__ = "0.1.0"

__all__ = [
    "BatchError",
    "ClassificationLoss",
    "ExplorationWarning",
    "FlatScoresWarning",
    "LossMemory",
    "LossShapeError",
    "NonFiniteLossError",
    "OnlineSelector",
    "POLICIES",
    "Policy",
    "ProxyModel",
    "Reference",
    "ReferenceCoverageError",
    "ReferenceMismatchError",
    "ReferenceModel",
    "ReferenceTable",
    "Scorer",
    "SelectedBatch",
    "ReferenceRefresh",
    "SelectionTelemetry",
    "Selection",
    "Signals",
    "annealed_temperature",
    "batch_size",
    "check_per_sample_loss",
    "finite_gradients",
    "fit_label_floor",
    "get_policy",
    "holdout_reference",
    "learnability",
    "resolve_keep",
    "samples_fingerprint",
    "select",
    "spearman",
    "take",
    "twin_halves_reference",
]
