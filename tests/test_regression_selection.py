"""Regression guard: the default policy beats uniform by a clear margin in steps on a generated noisy task.

A 10-class Gaussian mixture with 30% symmetric label noise; the large model is an MLP, the reference
twin halves of a smaller MLP. Everything is seeded, so the outcome is deterministic on a given build.
"""

import torch
import torch.nn.functional as F

from online_select import ClassificationLoss, OnlineSelector, Scorer, twin_halves_reference
from online_select.data import symmetric_label_noise

STEPS, EVAL_EVERY, B, K = 400, 25, 256, 32


def _task():
    g = torch.Generator().manual_seed(100)
    centers = torch.randn(10, 20, generator=g) * 0.8
    y = torch.randint(0, 10, (8000,), generator=g)
    x = centers[y] + torch.randn(8000, 20, generator=g)
    noisy_y, _ = symmetric_label_noise(y[:6000], 0.3, 10, seed=5)
    return x[:6000], noisy_y, x[6000:], y[6000:]


def _reference(x, y):
    ids = torch.arange(len(y))

    def halves(half, shuffle):
        part = ids[ids % 2 == half]
        part = part[torch.randperm(len(part))] if shuffle else part
        return ({"input": x[i], "label": y[i], "id": i} for i in part.split(128))

    torch.manual_seed(0)
    table, _ = twin_halves_reference(
        lambda: torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)),
        lambda m: torch.optim.Adam(m.parameters(), 1e-2),
        halves,
        ClassificationLoss("input", "label"),
        lambda batch: batch["id"],
        len(y),
        epochs=2,
    )
    return table


def _curve(selector, x, y, x_test, y_test, seed, candidates):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(seed)
    curve = []
    for step in range(1, STEPS + 1):
        rows = torch.randint(0, len(y), (candidates,), generator=g)
        selected = selector.select({"input": x[rows], "label": y[rows], "id": rows})
        logits = model(selected.batch["input"])
        loss = selector.observe(selected, F.cross_entropy(logits, selected.batch["label"], reduction="none"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % EVAL_EVERY == 0:
            with torch.no_grad():
                curve.append((step, (model(x_test).argmax(1) == y_test).float().mean().item()))
    return curve


def test_default_policy_reaches_uniforms_best_in_far_fewer_steps():
    torch.set_num_threads(1)
    x, y, x_test, y_test = _task()
    reference = _reference(x, y)
    uniform_steps, policy_steps, gains = [], [], []
    for seed in range(3):
        uniform = _curve(OnlineSelector("uniform", keep=K, seed=seed), x, y, x_test, y_test, seed, K)
        default = OnlineSelector(keep=K, scorer=Scorer(), reference=reference, label_floor=0.1, seed=seed)
        policy = _curve(default, x, y, x_test, y_test, seed, B)
        best = max(acc for _, acc in uniform)
        uniform_steps.append(next(step for step, acc in uniform if acc >= best))
        policy_steps.append(next((step for step, acc in policy if acc >= best), 2 * STEPS))
        gains.append(max(acc for _, acc in policy) - best)
    assert sum(policy_steps) <= 0.5 * sum(uniform_steps), (policy_steps, uniform_steps)
    assert min(gains) > 0.0, gains
