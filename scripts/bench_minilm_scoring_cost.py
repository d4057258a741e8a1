"""What would it cost to score candidates with MiniLM itself? Prints a table of measured times.

Compares, interleaved in one process on the Rotten Tomatoes snippets: the large model's training step
on k selected samples (forward + backward + AdamW), a no-grad MiniLM forward over all B candidates
(what a MiniLM-backbone scorer, or an exact-loss policy, pays per step), and the recipe's scorer
(memory + reference-feature MLP) on B candidates.

Run: python scripts/bench_minilm_scoring_cost.py [--threads 1] [--repeats 7]
"""

import argparse
import statistics
import time

import torch

from online_select import Scorer
from online_select.config import load_config
from online_select.text_tasks import RottenTomatoesTask

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--repeats", type=int, default=7)
parser.add_argument("-B", type=int, default=64)
parser.add_argument("-k", type=int, default=16)
args = parser.parse_args()
torch.set_num_threads(args.threads)

task = RottenTomatoesTask(load_config("recipes/rotten_tomatoes_noisy.yaml"))
model = task.large_model().train()
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
loader = task.train_loader(args.B, seed=0)
scorer = Scorer()
ids = torch.arange(args.B)
reference_features = torch.randn(args.B, 3)  # the BoW reference's [loss, entropy, margin]
first = scorer.features(None, ids, 0, reference_features)
scorer.update(first[: args.k], torch.rand(args.k), ids[: args.k], 0)


def train_step(batch):
    selected = {key: value[: args.k] for key, value in batch.items()}
    loss = task.loss(model, selected).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.no_grad()
def score_with_minilm(batch):
    model.eval()
    task.loss(model, batch)
    model.train()


def score_with_scorer(batch):
    scorer.predict(scorer.features(batch, ids, 1, reference_features))


times = {"train step on k": [], "MiniLM forward on B": [], "scorer on B": []}
for _ in range(args.repeats):
    batch = next(loader)
    for name, fn in (("train step on k", train_step), ("MiniLM forward on B", score_with_minilm), ("scorer on B", score_with_scorer)):
        start = time.perf_counter()
        fn(batch)
        times[name].append(time.perf_counter() - start)

base = statistics.median(times["train step on k"])
print(f"B={args.B}, k={args.k}, threads={args.threads}, median of {args.repeats}\n")
print("| what | ms | x train step |\n|---|---|---|")
for name, values in times.items():
    ms = 1000 * statistics.median(values)
    print(f"| {name} | {ms:.1f} | {ms / 1000 / base:.2f} |")
