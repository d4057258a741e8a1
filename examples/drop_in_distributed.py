"""The drop-in on several processes: the same three lines, under `accelerate launch` or `torchrun`.

Run (2 processes; on a CPU-only machine --multi_gpu still starts 2 CPU processes with gloo):

    accelerate launch --multi_gpu --num_processes 2 examples/drop_in_distributed.py --steps 300
    torchrun --nproc_per_node 2 examples/drop_in_distributed.py --steps 300

Each process draws its own shard of every candidate batch; `distributed="global"` picks the global
top-k of all shards, exactly what one process would pick from the whole batch. The selector rides
along in `accelerator.save_state` / `load_state` (read back with weights_only=True).
"""

import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from online_select import OnlineSelector, ReferenceTable, Scorer
from online_select.checkpoint import register_selector
from online_select.data import load_idx_folder, symmetric_label_noise
from online_select.models import small_cnn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
parser.add_argument("--checkpoint", default="runs/drop_in_distributed/state")
args = parser.parse_args()

accelerator = Accelerator(cpu=not torch.cuda.is_available())
torch.manual_seed(0)
raw = load_idx_folder(args.data)
x = (torch.from_numpy(raw["train_images"]).float()[:, None] / 255 - 0.286) / 0.353
y, is_noisy = symmetric_label_noise(torch.from_numpy(raw["train_labels"]).long(), 0.3, 10, seed=1234)
ids = torch.arange(len(y))
# A stand-in reference: a real run builds one (twin_halves_reference, see examples/drop_in.py) once
# and saves it; here the known corruption makes a table, to keep the example short.
reference = ReferenceTable(torch.where(is_noisy, 4.0, 0.3))

model = small_cnn()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model, optimizer = accelerator.prepare(model, optimizer)
selector = OnlineSelector(
    "predicted_learnability", keep=32, scorer=Scorer(), reference=reference, label_floor=0.1, distributed="global"
)
register_selector(accelerator, selector)

B, rank, world = 320, accelerator.process_index, accelerator.num_processes
for step in range(1, args.steps + 1):
    rows = torch.randint(0, len(y), (B * world,), generator=torch.Generator().manual_seed(step))
    rows = rows[rank * B : (rank + 1) * B]  # this process's shard of the step's candidates
    candidates = {"input": x[rows], "label": y[rows], "id": ids[rows]}

    selected = selector.select(candidates)  # 1. the global top-k, k=32 trained here
    logits = model(selected.batch["input"].to(accelerator.device))
    losses = F.cross_entropy(logits, selected.batch["label"].to(accelerator.device), reduction="none")
    loss = selector.observe(selected, losses)  # 2. every process's scorer learns from all k*world
    optimizer.zero_grad()
    accelerator.backward(loss)  # 3. DDP's average of these losses is the mean over all selected
    optimizer.step()
    if step % 100 == 0:
        noisy = is_noisy[selector.last_step["ids"]].float().mean().item()
        accelerator.print(f"step {step}: mislabelled share of all processes' picks {noisy:.2f} (base 0.30)")

accelerator.save_state(args.checkpoint)  # model, optimizer, RNG and the selector
accelerator.wait_for_everyone()  # the main process writes the shared files
accelerator.load_state(args.checkpoint)
accelerator.print(f"saved and reloaded {args.checkpoint}")
