"""The three-line drop-in: a plain PyTorch loop on noisy Fashion-MNIST gains online selection.

Run: python examples/drop_in.py   (needs /usr/share/datasets/fashion-mnist; ~1 minute on 2 CPU cores)
"""

import torch
import torch.nn.functional as F

from online_select import OnlineSelector, Scorer, twin_halves_reference
from online_select.data import load_idx_folder, symmetric_label_noise
from online_select.losses import ClassificationLoss
from online_select.models import mlp_classifier, small_cnn

torch.manual_seed(0)
raw = load_idx_folder("/usr/share/datasets/fashion-mnist")
x = (torch.from_numpy(raw["train_images"]).float()[:, None] / 255 - 0.286) / 0.353
y, is_noisy = symmetric_label_noise(torch.from_numpy(raw["train_labels"]).long(), 0.3, 10, seed=1234)
x_test = (torch.from_numpy(raw["test_images"]).float()[:, None] / 255 - 0.286) / 0.353
y_test = torch.from_numpy(raw["test_labels"]).long()
ids = torch.arange(len(y))

# Reference losses once per sample id: two small MLPs, each trained on one half and scoring the other.
def halves(half, shuffle):
    part = ids[ids % 2 == half]
    part = part[torch.randperm(len(part))] if shuffle else part
    return ({"input": x[i], "label": y[i], "id": i} for i in part.split(128))

reference, _ = twin_halves_reference(
    lambda: mlp_classifier(784), lambda m: torch.optim.AdamW(m.parameters(), 1e-3),
    halves, ClassificationLoss("input", "label"), lambda b: b["id"], len(y), epochs=3,
)

model = small_cnn()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
selector = OnlineSelector("predicted_learnability", keep=64, scorer=Scorer(update_every=4), reference=reference,
                          label_floor=0.05, reject_after=2)

for step in range(1, 601):
    rows = torch.randint(0, len(y), (640,))
    candidates = {"input": x[rows], "label": y[rows], "id": ids[rows]}     # a candidate batch of B=640

    selected = selector.select(candidates)                                  # 1. pick k=64
    logits = model(selected.batch["input"])
    losses = F.cross_entropy(logits, selected.batch["label"], reduction="none")
    loss = selector.observe(selected, losses)                               # 2. scorer learns; 3. weighted mean

    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 200 == 0:
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        noisy = is_noisy[selected.selected_ids].float().mean().item()
        print(f"step {step}: test accuracy {accuracy:.3f}, mislabelled share of this step's picks {noisy:.2f}")
