"""Which scorer ranks candidates like the large model? A side-by-side study in one training run.

The large model trains with the recipe's policy; every scorer variant below sees exactly the same
observations (the large model's losses on the selected samples) and is judged on
- the exploration picks (uniformly random eligible candidates): Spearman of predicted vs observed loss;
- an audit every ``--audit-every`` steps: the large model's exact loss on 512 random eligible
  candidates; Spearman against it, and precision@k of the top-10% by predicted learnability against
  the top-10% by exact learnability.

Run: python benchmarks/scorer_study.py [recipe overrides...]   (prints a markdown table)
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from online_select import OnlineSelector, Scorer, learnability, spearman
from online_select.config import load_config
from online_select.loop import resolve_keep_count
from online_select.tasks import build_task


def variants(task) -> dict[str, Scorer]:
    image_numel = int(torch.tensor(task.image_shape).prod())
    return {
        "memory + reference, rank + MSE (default)": Scorer(objective="rank_mse"),
        "memory + reference, MSE": Scorer(objective="mse"),
        "memory + reference, Huber": Scorer(objective="huber"),
        "reference only, MSE": Scorer(objective="mse", use_memory=False),
        "memory only, MSE": Scorer(objective="mse"),
        "memory + reference + pixel MLP, MSE": Scorer(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(image_numel, 32), torch.nn.ReLU()),
            model_input=lambda batch: batch["input"],
        ),
    }


def main(argv: list[str]) -> None:
    steps = 3000
    audit_every = 250
    overrides = []
    for item in argv:
        if item.startswith("--steps="):
            steps = int(item.split("=", 1)[1])
        elif item.startswith("--audit-every="):
            audit_every = int(item.split("=", 1)[1])
        else:
            overrides.append(item)
    config = load_config("recipes/fashion_mnist_noisy.yaml", overrides)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    torch.manual_seed(config.seed)
    task = build_task(config)
    reference, _ = task.build_reference(config.seed)
    floor = task.label_floor()
    scorers = variants(task)
    memory_only = "memory only, MSE"
    model = task.large_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    sel = config.selection
    driver = OnlineSelector(
        "predicted_learnability",
        resolve_keep_count(sel.keep, sel.candidate_batch_size),
        scorer=Scorer(),
        reference=reference,
        rule=sel.rule,
        temperature=sel.temperature,
        explore=sel.explore,
        label_floor=floor,
        seed=config.seed,
    )
    loader = task.train_loader(sel.candidate_batch_size, config.seed)
    explore_pairs: dict[str, list] = {name: [] for name in scorers}
    audits: dict[str, list] = {name: [] for name in scorers}
    precision: dict[str, list] = {name: [] for name in scorers}
    cost_ms: dict[str, float] = {name: 0.0 for name in scorers}
    for step in range(1, steps + 1):
        candidates = next(loader)
        ids = candidates["id"]
        ref_loss, ref_features = reference.losses_and_features(candidates, ids)
        features = {}
        for name, scorer in scorers.items():
            start = time.perf_counter()
            if name == memory_only:
                features[name] = scorer.features(candidates, ids, driver.step, None)
            elif scorer.use_memory:
                features[name] = scorer.features(candidates, ids, driver.step, ref_features)
            else:
                features[name] = ref_features.clone()
            cost_ms[name] += 1000 * (time.perf_counter() - start)
        predictions = {name: scorers[name].predict(features[name], candidates) for name in scorers}
        selected = driver.select(candidates)
        logits = model(selected.batch["input"])
        losses = torch.nn.functional.cross_entropy(logits, selected.batch["label"], reduction="none")
        observed = losses.detach()
        for name, scorer in scorers.items():
            explored = selected.indices[selected.explored]
            explore_pairs[name].append((predictions[name][explored], observed[selected.explored]))
            start = time.perf_counter()
            scorer.update(features[name][selected.indices], observed, ids[selected.indices], driver.step, selected.batch)
            cost_ms[name] += 1000 * (time.perf_counter() - start)
        loss = driver.observe(selected, losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % audit_every == 0:
            eligible = (torch.exp(-ref_loss) >= floor).nonzero()[:, 0]
            audit = eligible[torch.randperm(len(eligible))[:512]]
            with torch.no_grad():
                model.eval()
                exact = task.loss(model, {"input": candidates["input"][audit], "label": candidates["label"][audit]})
                model.train()
            k = max(1, len(audit) // 10)
            exact_top = set(learnability(exact, ref_loss[audit], floor).topk(k).indices.tolist())
            for name in scorers:
                audits[name].append(spearman(predictions[name][audit], exact))
                predicted_top = set(learnability(predictions[name][audit], ref_loss[audit], floor).topk(k).indices.tolist())
                precision[name].append(len(exact_top & predicted_top) / k)
            line = ", ".join(f"{name.split(',')[0]}: {audits[name][-1]:.2f}" for name in scorers)
            print(f"step {step}: audit Spearman {line}", flush=True)

    half = len(explore_pairs[memory_only]) // 2
    print(f"\nScorer study: {steps} steps, B={sel.candidate_batch_size}, audits every {audit_every} steps "
          f"(means over the second half of training)\n")
    print("| scorer | Spearman, exploration picks | Spearman, audit (exact large loss) | precision@10% of learnability | ms/step (features + update) |")
    print("|---|---|---|---|---|")
    for name in scorers:
        window = explore_pairs[name][half:]
        chunks = [window[i : i + 50] for i in range(0, len(window), 50)]
        explore_sp = [
            spearman(torch.cat([p for p, _ in chunk]), torch.cat([o for _, o in chunk])) for chunk in chunks if chunk
        ]
        late = audits[name][len(audits[name]) // 2 :]
        late_p = precision[name][len(precision[name]) // 2 :]
        print(
            f"| {name} | {statistics.fmean(explore_sp):.2f} | {statistics.fmean(late):.2f} | "
            f"{statistics.fmean(late_p):.2f} | {cost_ms[name] / steps:.2f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
