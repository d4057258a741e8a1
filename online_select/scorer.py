"""The scorer: predicts the large model's current loss on candidates it has not run them through.

It sees cheap per-candidate features:

- the loss memory: the large model's last observed loss on the sample id, how many steps ago, how
  often it was observed (a free, stale view of the current loss);
- the reference's features (its loss and, for classifiers, entropy and margin): how hard and how
  plausibly labelled the sample is, known even for samples the large model never saw;
- optionally a small model's view of the raw input (a user-given ``nn.Module`` returning ``[B, D]``),
  trained end to end with the head.

A small head maps them to a predicted loss and learns online from the large model's observed
per-sample losses on the samples it trains on (the exploration picks keep those targets unbiased).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .memory import LossMemory

__all__ = ["Scorer", "RunningNorm", "OBJECTIVES"]

OBJECTIVES = ("mse", "huber", "rank_mse")
MEMORY_FEATURES = 4


class RunningNorm(nn.Module):
    """Standardises features with running mean and variance (updated only when told)."""

    def __init__(self, dim: int, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        mean, var = x.mean(0), x.var(0, unbiased=False) if x.shape[0] > 1 else torch.zeros_like(x[0])
        # A column that does not vary in this batch says nothing of its scale: its variance is kept (1 until it
        # first varies). Floored instead, a column constant so far (the memory's, while every candidate is still
        # unseen) would scale its first varying values up a hundredfold.
        varies = var > 1e-12
        var = torch.where(varies, var.clamp_min(1e-4), self.var)
        if not bool(self.initialised):
            self.mean.copy_(mean)
            self.var.copy_(var)
            self.initialised.fill_(True)
            return
        self.mean.lerp_(mean, self.momentum)
        self.var.lerp_(var, self.momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.var.sqrt()


def default_optimizer(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam; fused when every parameter is a float32 tensor on the CPU or a GPU: the same updates from one kernel
    per step instead of a dozen small ops per parameter (a measurable share of a selection step on a CPU)."""
    fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def default_head(in_features: int, hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class Scorer:
    """Predicts the large model's per-sample loss from memory, reference and small-model features.

    Args:
        model: optional small ``nn.Module`` applied to ``model_input(candidate_batch)``, returning
            ``[B, D]`` features; trained jointly with the head.
        model_input: picks the small model's input from a batch (default: field 0 or ``"input"``).
        head: maps the feature vector to one predicted loss; default an MLP of ``hidden`` units, built lazily
            once the feature width is known, its weights drawn from torch's global RNG then (call
            ``torch.manual_seed`` first for repeatable runs, as the ready loop does).
        hidden: the default head's width.
        optimizer: factory ``params -> Optimizer`` for the head (and model); default Adam(lr), fused where it can be.
        objective: ``"rank_mse"`` (default: a pairwise ranking loss plus MSE so predictions stay on the
            loss scale; it ranked best in ``benchmarks/scorer_study.py``), ``"mse"`` or ``"huber"``.
        use_memory: include the loss-memory features (needs sample ids).
        age_scale: steps over which a memory entry is considered stale (sets the age feature scale).
        update_every: take one optimizer step every ``update_every`` observations, on all of them at
            once (the loss memory is still updated at every observation): cuts the scorer's per-step cost.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        model_input: Callable[[Any], Any] | None = None,
        head: nn.Module | None = None,
        optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
        lr: float = 3e-3,
        hidden: int = 32,
        objective: str = "rank_mse",
        use_memory: bool = True,
        age_scale: float = 1000.0,
        update_every: int = 1,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown scorer objective {objective!r}; expected one of {OBJECTIVES}")
        if int(update_every) < 1:
            raise ValueError(f"update_every must be at least 1, got {update_every}")
        self.model = model
        self.model_input = model_input or _default_input
        self.head = head
        self.hidden = int(hidden)
        self.make_optimizer = optimizer or (lambda params: default_optimizer(params, lr))
        self.objective = objective
        self.use_memory = use_memory
        self.age_scale = float(age_scale)
        self.update_every = int(update_every)
        self.memory = LossMemory()
        self._pending: list[tuple[torch.Tensor, torch.Tensor, Any]] = []
        self._pending_observations = 0
        self.norm: RunningNorm | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.num_features: int | None = None
        self.updates = 0
        self.last_loss = float("nan")

    @property
    def needs_ids(self) -> bool:
        return self.use_memory

    def _build(self, num_features: int) -> None:
        self.num_features = num_features
        self.norm = RunningNorm(num_features)
        if self.head is None:
            self.head = default_head(num_features, self.hidden)
        params = list(self.head.parameters())
        if self.model is not None:
            params += list(self.model.parameters())
        self.optimizer = self.make_optimizer(params)

    def features(
        self,
        batch: Any,
        ids: torch.Tensor | None,
        step: int,
        reference_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The feature matrix ``[B, F]`` for a candidate batch (no gradients; cheap)."""
        parts = []
        if self.use_memory:
            if ids is None:
                raise ValueError("the scorer's loss memory needs sample ids: pass ids= or set use_memory=False")
            last_loss, last_step, count = self.memory.lookup(ids)
            seen = count > 0
            age = torch.where(seen, (step - last_step).clamp_min(0).float(), 0.0)
            parts += [
                torch.where(seen, last_loss, 0.0)[:, None],
                seen.float()[:, None],
                torch.log1p(age / self.age_scale * 10.0)[:, None],
                torch.log1p(count.float())[:, None],
            ]
        if reference_features is not None:
            parts.append(reference_features.float().cpu())
        if not parts and self.model is None:
            raise ValueError("the scorer has no features: give it a small model, sample ids or a reference")
        if not parts:
            n = self._model_features(batch).shape[0]
            return torch.zeros(n, 0)
        return torch.cat(parts, dim=1)

    def _model_features(self, batch: Any, model_input: Any = None) -> torch.Tensor:
        assert self.model is not None
        out = self.model(self.model_input(batch) if model_input is None else model_input)
        if out.ndim == 1:
            out = out[:, None]
        return out.float().cpu()

    def _forward(self, features: torch.Tensor, batch: Any | None, model_input: Any = None) -> torch.Tensor:
        if self.num_features is None:
            width = features.shape[1]
            if self.model is not None:
                with torch.no_grad():
                    width += self._model_features(batch, model_input).shape[1]
            self._build(width)
        x = features
        if self.model is not None:
            x = torch.cat([x, self._model_features(batch, model_input)], dim=1)
        return self.head(self.norm(x))[:, 0]

    def predict(self, features: torch.Tensor, batch: Any | None = None) -> torch.Tensor:
        """Predicted large-model loss per candidate."""
        with torch.no_grad():
            return self._forward(features, batch).float()

    def update(
        self,
        features: torch.Tensor,
        observed_loss: torch.Tensor,
        ids: torch.Tensor | None,
        step: int | torch.Tensor,
        batch: Any | None = None,
        observations: int = 1,
    ) -> float:
        """Record the observed losses in the memory and learn from them: one optimisation step now, or,
        with ``update_every=m``, one step on the last m observations together once m have arrived.

        ``observations``: how many steps' observations these rows are (a plan's steps arrive together);
        ``step``: the step they were observed at, or one per row."""
        observed_loss = observed_loss.detach().float().cpu()
        if self.use_memory and ids is not None:
            self.memory.update(ids, observed_loss, step)
        if self.num_features is None:
            self._forward(features, batch)
        model_input = None
        if self.model is not None:
            model_input = self.model_input(batch)
            if self.update_every > 1 and not isinstance(model_input, torch.Tensor):
                raise TypeError("update_every > 1 with a scorer model needs model_input(batch) to be a tensor")
        self._pending.append((features, observed_loss, model_input))
        self._pending_observations += observations
        if self._pending_observations < self.update_every:
            return self.last_loss
        pending, self._pending, self._pending_observations = self._pending, [], 0
        if len(pending) > 1:  # with update_every=1 the step's own tensors are used as they are, not copied
            features = torch.cat([f for f, _, _ in pending])
            observed_loss = torch.cat([o for _, o, _ in pending])
            if self.model is not None:
                model_input = torch.cat([m for _, _, m in pending])
        x_for_norm = features
        if self.model is not None:
            with torch.no_grad():
                x_for_norm = torch.cat([features, self._model_features(None, model_input)], dim=1)
        self.norm.update(x_for_norm)
        prediction = self._forward(features, None, model_input)
        loss = self._objective(prediction, observed_loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        self.last_loss = float(loss.detach())
        return self.last_loss

    def _objective(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.objective == "mse":
            return F.mse_loss(prediction, target)
        if self.objective == "huber":
            return F.huber_loss(prediction, target, delta=1.0)
        diff_pred = prediction[:, None] - prediction[None, :]
        order = torch.sign(target[:, None] - target[None, :])
        # Mean over the ordered pairs (targets differ); weighting by |order| instead of masking avoids
        # gathering the pairs, and in the backward scattering them back.
        pairs = order.abs()
        rank = (F.softplus(-order * diff_pred) * pairs).sum() / pairs.sum().clamp_min(1.0)
        return rank + F.mse_loss(prediction, target)

    def state_dict(self) -> dict:
        state: dict[str, Any] = {
            "memory": self.memory.state_dict(),
            "updates": self.updates,
            "last_loss": self.last_loss,  # logged until the next update (update_every > 1): a resume logs it too
            "num_features": self.num_features,
            # observations waiting for the next update (update_every > 1), so a resume learns from them too
            "pending_features": [f for f, _, _ in self._pending],
            "pending_losses": [o for _, o, _ in self._pending],
            "pending_inputs": [m for _, _, m in self._pending if m is not None],
            "pending_observations": self._pending_observations,
        }
        if self.num_features is not None:
            state["head"] = self.head.state_dict()
            state["norm"] = self.norm.state_dict()
            state["optimizer"] = self.optimizer.state_dict()
        if self.model is not None:
            state["model"] = self.model.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state["memory"])
        self.updates = int(state["updates"])
        self.last_loss = float(state.get("last_loss", float("nan")))
        inputs = state.get("pending_inputs") or [None] * len(state.get("pending_features", []))
        self._pending = list(zip(state.get("pending_features", []), state.get("pending_losses", []), inputs))
        self._pending_observations = int(state.get("pending_observations", len(self._pending)))
        if self.model is not None and "model" in state:
            self.model.load_state_dict(state["model"])
        if state.get("num_features") is not None:
            if self.num_features is None:
                self._build(int(state["num_features"]))
            elif self.num_features != int(state["num_features"]):
                raise ValueError(
                    f"scorer checkpoint has {state['num_features']} features but this scorer has {self.num_features}"
                )
            self.head.load_state_dict(state["head"])
            self.norm.load_state_dict(state["norm"])
            self.optimizer.load_state_dict(state["optimizer"])


def _default_input(batch: Any) -> Any:
    if isinstance(batch, Mapping):
        for key in ("input", "inputs", "x", "image", "pixel_values", "input_ids"):
            if key in batch:
                return batch[key]
        raise KeyError(f"cannot find the scorer model's input in batch fields {list(batch)}; pass model_input=")
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch
