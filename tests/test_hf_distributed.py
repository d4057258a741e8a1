"""Two CPU processes (gloo) running SelectiveTrainer, as `accelerate launch --num_processes 2` would."""

import os

import pytest
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
    pooled = ("selection/keep_ratio", "selection/large_samples", "selection/score_", "selection/selected_score_",
              "selection/rejected_score_", "selection/labels_", "selection/coverage", "selection/samples_candidate",
              "selection/never_picked")
    lines = [{k: v for k, v in line.items() if k.startswith(pooled)} for line in trainer.state.log_history if "loss" in line]
    torch.save({"k": memory.count.sum(), "count": memory.count, "last_step": memory.last_step, "telemetry": lines,
                "tables": trainer.write_selection_tables(4)},
               os.path.join(out_dir, f"count_{trainer.args.process_index}.pt"))


def test_two_processes_select_locally_and_save_one_selector_state_each(tmp_path):
    launch_cpu_processes(_train, args=(str(tmp_path),), num_processes=2)
    checkpoint = tmp_path / "checkpoint-4"
    assert (checkpoint / "selector_state_0.pt").is_file() and (checkpoint / "selector_state_1.pt").is_file()
    states = [torch.load(tmp_path / f"count_{rank}.pt", weights_only=True) for rank in (0, 1)]
    for state in states:  # every scorer learns from both processes' selected samples: 4 steps x 2 processes x k=2
        assert int(state["k"]) == 4 * 2 * 2
    # The telemetry every process logs pools both: 2 steps x 2 processes x k=2 picks a line, 64 candidates in all.
    assert states[0]["telemetry"] == states[1]["telemetry"] and states[0]["tables"] == states[1]["tables"]
    assert [line["selection/large_samples"] for line in states[0]["telemetry"]] == [8.0, 8.0]
    assert states[0]["telemetry"][-1]["selection/samples_candidate"] == 64
    assert sum(row["picks"] for row in states[0]["tables"]["most_selected"]) <= 16


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


def test_a_selector_state_written_by_other_processes_is_refused(tmp_path):
    from online_select.checkpoint import CheckpointError
    from online_select.hf import SelectiveTrainer
    from tests.test_hf_trainer import args, bert, cls_dataset

    launch_cpu_processes(_train, args=(str(tmp_path),), num_processes=2)
    checkpoint = tmp_path / "checkpoint-4"
    one = SelectiveTrainer(model=bert(), args=args(tmp_path / "one"), train_dataset=cls_dataset(), keep=2)
    with pytest.raises(CheckpointError, match="holds the selector states of another number of processes than this run's 1"):
        one.load_selector_state(str(checkpoint))
    (checkpoint / "selector_state.pt").write_bytes((checkpoint / "selector_state_0.pt").read_bytes())
    with pytest.raises(CheckpointError, match="was written by 2 processes but this run has 1"):
        one.load_selector_state(str(checkpoint))


def _skip_in_a_window(out_dir):
    import torch.nn.functional as F
    from transformers import TrainingArguments

    from online_select.hf import SelectiveTrainer
    from tests.test_hf_trainer import bert, cls_dataset

    micro_steps = []

    def per_sample_loss(model, batch):  # a NaN on process 1 only, in the first micro-step of the window
        losses = F.cross_entropy(model(input_ids=batch["input_ids"]).logits, batch["labels"], reduction="none")
        if model.training:
            micro_steps.append(None)
            if len(micro_steps) == 1 and torch.distributed.get_rank() == 1:
                losses = losses * torch.tensor([float("nan")] + [1.0] * (len(losses) - 1))
        return losses

    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=1,
                             learning_rate=1e-2, save_strategy="no", report_to=[], use_cpu=True, ddp_backend="gloo",
                             disable_tqdm=True, seed=0)
    trainer = SelectiveTrainer(model=bert(), args=args, train_dataset=cls_dataset(), keep=4, per_sample_loss=per_sample_loss,
                               selection_options={"on_nonfinite": "skip"})
    torch.set_num_threads(1)
    trainer.train()
    weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    torch.save({"skipped": trainer.skipped_updates, "weights": weights},
               os.path.join(out_dir, f"skip_{trainer.args.process_index}.pt"))


def test_a_nan_on_one_process_drops_every_processs_gradients_of_the_window(tmp_path):
    launch_cpu_processes(_skip_in_a_window, args=(str(tmp_path),), num_processes=2)
    states = [torch.load(tmp_path / f"skip_{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert states[0]["skipped"] == states[1]["skipped"] == 1
    assert torch.equal(states[0]["weights"], states[1]["weights"])
