"""Two CPU processes (gloo) running SelectiveTrainer, as `accelerate launch --num_processes 2` would."""

import os

import torch

from .launch import launch_cpu_processes


def _train(out_dir, plan_steps=1, save_steps=4, distributed="local"):
    from transformers import TrainingArguments

    from online_select.hf import SelectiveTrainer
    from tests.test_hf_trainer import bert, cls_dataset

    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=8, max_steps=4, learning_rate=1e-2,
                             save_strategy="steps", save_steps=save_steps, report_to=[], use_cpu=True, ddp_backend="gloo",
                             disable_tqdm=True, logging_steps=2, seed=0)
    trainer = SelectiveTrainer(model=bert(), args=args, train_dataset=cls_dataset(), keep=2, plan_steps=plan_steps,
                               selection_options={"distributed": distributed})
    torch.set_num_threads(1)  # after Accelerate's multi-process CPU set-up: OpenMP threads hang after a fork
    trainer.train()
    assert trainer.args.world_size == 2
    assert trainer.selector.step == 4
    memory = trainer.selector.scorer.memory
    torch.save({"k": memory.count.sum(), "count": memory.count, "last_step": memory.last_step},
               os.path.join(out_dir, f"count_{trainer.args.process_index}.pt"))


def test_two_processes_select_locally_and_save_one_selector_state_each(tmp_path):
    launch_cpu_processes(_train, args=(str(tmp_path),), num_processes=2)
    checkpoint = tmp_path / "checkpoint-4"
    assert (checkpoint / "selector_state_0.pt").is_file() and (checkpoint / "selector_state_1.pt").is_file()
    for rank in (0, 1):  # every scorer learns from both processes' selected samples: 4 steps x 2 processes x k=2
        assert int(torch.load(tmp_path / f"count_{rank}.pt", weights_only=True)["k"]) == 4 * 2 * 2


def test_two_processes_plan_alike_and_end_a_plan_at_a_checkpoint_together(tmp_path):
    # 4 candidate batches a process: a plan of 3 that the checkpoint after step 2 ends, then the last 2 together.
    launch_cpu_processes(_train, args=(str(tmp_path), 3, 2), num_processes=2)
    assert (tmp_path / "checkpoint-2" / "selector_state_1.pt").is_file()
    states = [torch.load(tmp_path / f"count_{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert int(states[0]["k"]) == 4 * 2 * 2
    assert torch.equal(states[0]["count"], states[1]["count"]) and torch.equal(states[0]["last_step"], states[1]["last_step"])
    assert sorted(states[0]["last_step"][states[0]["count"] > 0].unique().tolist()) == [0, 1, 2, 3]


def test_two_processes_select_the_global_top_k_alike(tmp_path):
    # Global mode draws from one stream on every process: seeded per process, the processes chose different
    # picks and their collectives did not pair up.
    launch_cpu_processes(_train, args=(str(tmp_path), 1, 4, "global"), num_processes=2)
    states = [torch.load(tmp_path / f"count_{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert int(states[0]["k"]) == 4 * 2 * 2
    assert torch.equal(states[0]["count"], states[1]["count"]) and torch.equal(states[0]["last_step"], states[1]["last_step"])
