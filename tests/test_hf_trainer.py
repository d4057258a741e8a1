import json
import os

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    EarlyStoppingCallback,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from online_select import OnlineSelector, Scorer
from online_select.checkpoint import CheckpointError
from online_select.hf import SELECTOR_STATE_NAME, SelectiveTrainer, TokenSelection, add_ids


def gpt2(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))


def bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def lm_dataset(n=64, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::3, -4:] = 0  # some padded sequences
    labels = ids.masked_fill(mask == 0, -100)
    return add_ids(Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()}))


def cls_dataset(n=64, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, length), generator=g)
    return add_ids(Dataset.from_dict({"input_ids": ids.tolist(), "label": (ids[:, 0] % 3).tolist(), "note": ["x"] * n}))


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=16, learning_rate=1e-2, max_steps=6,
                lr_scheduler_type="linear", warmup_steps=2, logging_steps=2, save_strategy="no", report_to=[],
                seed=0, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_without_selection_it_is_exactly_trainer(tmp_path):
    plain = Trainer(model=bert(), args=args(tmp_path / "a"), train_dataset=cls_dataset().remove_columns(["id", "note"]))
    plain.train()
    ours = SelectiveTrainer(model=bert(), args=args(tmp_path / "b"), train_dataset=cls_dataset())
    ours.train()
    assert torch.equal(params(plain.model), params(ours.model))


def test_a_text_id_column_goes_as_with_trainer_without_selection_and_is_named_with_it(tmp_path):
    dataset = cls_dataset().remove_columns(["id"]).add_column("id", [f"q{i:04d}" for i in range(64)])

    def collate(rows):  # as a padding collator does, tensors of every column it is given
        return {"labels" if key == "label" else key: torch.tensor([row[key] for row in rows]) for key in rows[0]}

    plain = Trainer(model=bert(), args=args(tmp_path / "a"), train_dataset=dataset, data_collator=collate)
    plain.train()
    ours = SelectiveTrainer(model=bert(), args=args(tmp_path / "b"), train_dataset=dataset, data_collator=collate)
    ours.train()
    assert torch.equal(params(plain.model), params(ours.model))
    with pytest.raises(ValueError, match="'id' column holds string values, but sample ids are integer positions"):
        SelectiveTrainer(model=bert(), args=args(tmp_path / "c"), train_dataset=dataset, keep=4)
    SelectiveTrainer(model=bert(), args=args(tmp_path / "d"), train_dataset=add_ids(dataset, column="sample_id"), keep=4,
                     id_column="sample_id")


def test_builds_on_a_trainer_without_the_ga_scaling_flag(tmp_path, monkeypatch):
    """transformers before 5.19 has no Trainer.loss_is_scaled_for_ga (the whole suite passes on 5.17.0)."""
    monkeypatch.delattr(Trainer, "loss_is_scaled_for_ga", raising=False)
    ours = SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset(), keep=4)
    assert ours.selector is not None and ours._user_ga_scaling is None


@pytest.mark.parametrize("accumulation", [1, 2])
def test_keeping_every_candidate_matches_trainer_with_gradient_accumulation(tmp_path, accumulation):
    """Selection that keeps all B (in a shuffled order) must give Trainer's update: same token-weighted
    loss normalisation (num_items_in_batch) and the same LR schedule. Plain SGD, so that a wrong loss
    scale changes the update (Adam would normalise it away)."""
    a = args(tmp_path / "a", gradient_accumulation_steps=accumulation, per_device_train_batch_size=8, optim="sgd", learning_rate=0.5)
    plain = Trainer(model=gpt2(), args=a, train_dataset=lm_dataset().remove_columns(["id"]))
    plain.train()
    b = args(tmp_path / "b", gradient_accumulation_steps=accumulation, per_device_train_batch_size=8, optim="sgd", learning_rate=0.5)
    ours = SelectiveTrainer(model=gpt2(), args=b, train_dataset=lm_dataset(), keep=8, policy="uniform", explore=0.0)
    ours.train()
    assert torch.allclose(params(plain.model), params(ours.model), atol=1e-6)
    assert ours.lr_scheduler.get_last_lr() == plain.lr_scheduler.get_last_lr()
    assert ours.state.global_step == plain.state.global_step == 6


@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification"])
def test_classification_losses_are_averaged_over_samples_not_over_label_entries(tmp_path, problem_type):
    """A window of 2 micro-batches of 8 updates as one batch of 16 does, and as Trainer does without accumulation:
    multi-label, Trainer counts 3 label entries a sample where the loss has one item a sample (the mean over its
    labels); single-label too, where a plain Trainer with accumulation does not (BERT's loss ignores its count)."""
    def classifier():
        model = bert()
        model.config.problem_type = problem_type
        return model

    g = torch.Generator().manual_seed(0)
    labels = torch.rand(64, 3, generator=g) > 0.5
    labels = labels.float().tolist() if problem_type == "multi_label_classification" else labels.sum(1).clamp_max(2).tolist()
    data = add_ids(Dataset.from_dict({"input_ids": torch.randint(0, 64, (64, 8), generator=g).tolist(), "labels": labels}))
    sgd = dict(optim="sgd", learning_rate=0.5)
    one_batch = Trainer(model=classifier(), args=args(tmp_path / "a", per_device_train_batch_size=16, **sgd),
                        train_dataset=data.remove_columns(["id"]))
    one_batch.train()
    window = SelectiveTrainer(model=classifier(), train_dataset=data, keep=8, policy="uniform", explore=0.0,
                              args=args(tmp_path / "b", per_device_train_batch_size=8, gradient_accumulation_steps=2, **sgd))
    window.train()
    assert torch.allclose(params(one_batch.model), params(window.model), atol=1e-6)


class LogRecorder(TrainerCallback):
    """Receives log lines the way every report_to integration (W&B, TensorBoard...) does."""

    def __init__(self):
        self.lines = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.lines.append(dict(logs or {}))


def test_selects_exactly_k_and_keeps_the_schedule(tmp_path):
    model = bert()
    seen = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]) if m.training else None, with_kwargs=True)
    recorder = LogRecorder()
    trainer = SelectiveTrainer(model=model, args=args(tmp_path), train_dataset=cls_dataset(), keep=0.25, callbacks=[recorder])
    assert trainer.selector.policy.name == "predicted_loss"
    trainer.train()
    assert seen == [4] * 6  # k = 0.25 * 16, one forward per optimizer step
    plain = Trainer(model=bert(), args=args(tmp_path / "plain"), train_dataset=cls_dataset().remove_columns(["id", "note"]))
    plain.train()
    assert trainer.lr_scheduler.get_last_lr() == plain.lr_scheduler.get_last_lr()
    assert trainer.selector.step == 6 and trainer.selector.samples_seen == 6 * 16
    logged = [line for line in recorder.lines if "loss" in line]
    assert len(logged) == 3 and all("selection/select_ms" in line and "selection/step" in line for line in logged)


def test_missing_ids_is_a_clear_error(tmp_path):
    trainer = SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset().remove_columns(["id"]), keep=4)
    with pytest.raises(ValueError, match="add_ids"):
        trainer.train()


def test_selector_and_settings_are_exclusive(tmp_path):
    selector = OnlineSelector("predicted_loss", keep=4, scorer=Scorer())
    with pytest.raises(ValueError, match="either selector="):
        SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset(), selector=selector, keep=4)
    with pytest.raises(ValueError, match="keep="):
        SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset(), policy="predicted_loss")


def test_settings_selection_would_silently_ignore_are_refused(tmp_path):
    with pytest.raises(ValueError, match="label_smoothing_factor is not applied"):
        SelectiveTrainer(model=bert(), args=args(tmp_path, label_smoothing_factor=0.1), train_dataset=cls_dataset(), keep=4)
    with pytest.raises(ValueError, match="loss_discount is not supported by SelectiveTrainer"):
        SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset(), keep=4,
                         selection_options={"loss_discount": 0.5})


def test_checkpoint_resume_restores_the_selector(tmp_path):
    def run(out, max_steps, resume=None):
        a = args(out, max_steps=max_steps, save_strategy="steps", save_steps=3, logging_steps=3)
        trainer = SelectiveTrainer(model=bert(), args=a, train_dataset=cls_dataset(), keep=4)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full", 6)
    assert os.path.isfile(tmp_path / "full" / "checkpoint-3" / SELECTOR_STATE_NAME)
    run(tmp_path / "split", 3)
    resumed = run(tmp_path / "split", 6, resume=True)
    # The resumed run continued the selector from step 3 rather than starting afresh.
    assert resumed.selector.step == full.selector.step == 6
    assert int(resumed.selector.scorer.memory.count.sum()) == 6 * 4
    assert torch.equal(resumed.selector.scorer.memory.count, full.selector.scorer.memory.count)
    # What was restored is exactly what the uninterrupted run had at step 3 (safe load: weights_only).
    fresh = SelectiveTrainer(model=bert(), args=args(tmp_path / "x"), train_dataset=cls_dataset(), keep=4)
    assert fresh.load_selector_state(str(tmp_path / "full" / "checkpoint-3"))
    at_3 = torch.load(tmp_path / "split" / "checkpoint-3" / SELECTOR_STATE_NAME, weights_only=True)
    assert fresh.selector.step == at_3["step"] == 3
    assert torch.equal(fresh.selector.scorer.memory.last_loss.nan_to_num(-1), at_3["scorer"]["memory"]["last_loss"].nan_to_num(-1))
    assert torch.equal(fresh.selector.generator.get_state(), at_3["generator"])
    state_file = tmp_path / "split" / "checkpoint-3" / SELECTOR_STATE_NAME
    state_file.write_bytes(state_file.read_bytes()[:100])  # a truncated file names itself
    with pytest.raises(CheckpointError, match=f"the selector state {state_file} cannot be read"):
        fresh.load_selector_state(str(tmp_path / "split" / "checkpoint-3"))


def test_evaluation_strips_ids_and_works(tmp_path):
    trainer = SelectiveTrainer(model=bert(), args=args(tmp_path, eval_strategy="steps", eval_steps=3),
                               train_dataset=cls_dataset(), eval_dataset=cls_dataset(16, seed=1), keep=4)
    trainer.train()
    assert any("eval_loss" in line for line in trainer.state.log_history)


def test_token_selection_trains_on_the_kept_fraction(tmp_path):
    reference = gpt2(seed=3)
    trainer = SelectiveTrainer(model=gpt2(), args=args(tmp_path, per_device_train_batch_size=8), train_dataset=lm_dataset(),
                               keep=4, policy="uniform", token_selection=TokenSelection(keep=0.5, reference=reference))
    trainer.train()
    shares = [line["selection/token_kept_share"] for line in trainer.state.log_history if "selection/token_kept_share" in line]
    assert shares and all(abs(s - 0.5) < 0.02 for s in shares)


def test_a_token_selection_reference_model_moves_to_the_device_of_the_batches_it_scores():
    from unittest import mock

    reference = gpt2(seed=3)
    token_selection = TokenSelection(keep=0.5, reference=reference)
    batch = {"input_ids": torch.randint(0, 64, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    with mock.patch.object(reference, "to", wraps=reference.to) as moved:
        first = token_selection.reference_losses(batch)
        assert torch.equal(token_selection.reference_losses(batch), first) and first.shape == (2, 7)
    moved.assert_called_once_with(torch.device("cpu"))  # once, on the first batch: not a copy every step


def test_token_selection_alone_needs_a_causal_lm(tmp_path):
    with pytest.raises(ValueError, match="causal LM"):
        SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset(), token_selection=TokenSelection(0.5))


def test_policy_scoring_with_the_large_model_itself(tmp_path):
    model = bert()
    trainer = SelectiveTrainer(model=model, args=args(tmp_path, max_steps=2), train_dataset=cls_dataset(), keep=4,
                               policy="large_loss", explore=0.0)
    scored = []
    original = trainer._large_loss
    trainer.selector.large_loss_fn = lambda batch: scored.append(len(batch["input_ids"])) or original(batch)
    trainer.train()
    assert scored == [16, 16]  # every candidate scored by the large model, once per step
    assert trainer.selector.step == 2 and trainer.selector.scorer is None


def test_a_policy_switch_through_selection_options_builds_what_the_second_policy_needs(tmp_path):
    trainer = SelectiveTrainer(model=bert(), args=args(tmp_path, max_steps=4), train_dataset=cls_dataset(), keep=4,
                               policy="large_loss", selection_options={"switch_to": "predicted_loss", "switch_at": 2})
    assert trainer.selector.scorer is not None  # built for predicted_loss, learning from the first step
    names = []
    select = trainer.selector.select

    def recording(batch, ids=None):
        names.append(trainer.selector.policy.name)
        return select(batch, ids)

    trainer.selector.select = recording
    trainer.train()
    assert names == ["large_loss", "large_loss", "predicted_loss", "predicted_loss"]


def _spy_plans(trainer):
    """Record the steps of every plan and the parts every end_plan drops."""
    calls = {"plans": [], "dropped": []}
    select_steps, end_plan = trainer.selector.select_steps, trainer.selector.end_plan

    def planning(batches, ids=None):
        if len(batches) > 1:
            calls["plans"].append(len(batches))
        return select_steps(batches, ids)

    trainer.selector.select_steps = planning

    def ending():
        dropped = end_plan()
        calls["dropped"].append(dropped)
        return dropped

    trainer.selector.end_plan = ending
    return calls


def test_plans_score_several_candidate_batches_at_once_and_keep_the_schedule(tmp_path):
    model = bert()
    seen = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]) if m.training else None, with_kwargs=True)
    trainer = SelectiveTrainer(model=model, args=args(tmp_path), train_dataset=cls_dataset(), keep=4, plan_steps=3)
    calls = _spy_plans(trainer)
    trainer.train()
    # 4 candidate batches an epoch: a plan of 3, the epoch's last batch alone, then 3 more of which the run trains 2.
    assert calls["plans"] == [3, 3] and calls["dropped"][-1] == 1
    assert seen == [4] * 6 and trainer.selector.step == 6 and trainer.selector.samples_seen == 6 * 16
    assert int(trainer.selector.scorer.memory.count.sum()) == 6 * 4
    plain = Trainer(model=bert(), args=args(tmp_path / "plain"), train_dataset=cls_dataset().remove_columns(["id", "note"]))
    plain.train()
    assert trainer.lr_scheduler.get_last_lr() == plain.lr_scheduler.get_last_lr()
    assert "scorer" in trainer.selector.state_dict()  # no plan is left open


def test_a_checkpoint_inside_a_plan_ends_it_and_a_resumed_run_repeats_the_selections(tmp_path):
    def run(out, max_steps, resume=None):
        a = args(out, max_steps=max_steps, save_strategy="steps", save_steps=3, logging_steps=3, gradient_accumulation_steps=2,
                 per_device_train_batch_size=8)
        trainer = SelectiveTrainer(model=bert(), args=a, train_dataset=cls_dataset(), keep=2, plan_steps=4)
        calls = _spy_plans(trainer)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, calls

    full, calls = run(tmp_path / "full", 6)
    # 8 candidate batches an epoch, 2 a step: the checkpoint after step 3 ends the plan of steps 3-4 halfway,
    # and the epoch's last 2 candidate batches are planned again.
    assert calls["plans"][:4] == [4, 4, 2, 4] and calls["dropped"][0] == 2
    run(tmp_path / "split", 3)
    resumed, _ = run(tmp_path / "split", 6, resume=True)
    assert resumed.selector.step == full.selector.step == 12
    assert torch.equal(resumed.selector.scorer.memory.count, full.selector.scorer.memory.count)
    # The same samples picked at the same steps (Trainer's own resume is not bitwise: the losses differ slightly).
    assert torch.equal(resumed.selector.scorer.memory.last_step, full.selector.scorer.memory.last_step)


def test_plans_are_cut_where_batches_change_shape_and_misuse_is_named(tmp_path, caplog):
    batches = iter(range(10**6))

    def pad(features):  # dynamic padding: the length of a batch depends on the batch (here, every other one is longer)
        length = max(len(f["input_ids"]) for f in features) + next(batches) % 2
        return {"input_ids": torch.tensor([f["input_ids"] + [0] * (length - len(f["input_ids"])) for f in features]),
                "labels": torch.tensor([f["label"] for f in features]), "id": torch.tensor([f["id"] for f in features])}

    def train(**selection):
        trainer = SelectiveTrainer(model=bert(), args=args(tmp_path, max_steps=4), train_dataset=cls_dataset(), data_collator=pad,
                                   keep=4, plan_steps=4, explore=0.0, **selection)
        calls = _spy_plans(trainer)
        with caplog.at_level("WARNING", logger="online_select.hf.trainer"):
            trainer.train()
        assert trainer.selector.step == 4
        return calls["plans"]

    # The default scores by id (loss memory): the batches are never joined, so their lengths may differ.
    assert train() == [4] and "pad every batch" not in caplog.text
    # A policy that reads the candidates (the large model's losses) joins them: every batch a shape of its own.
    assert train(policy="large_loss") == [] and "pad every batch to one length" in caplog.text
    with pytest.raises(ValueError, match="whole number"):
        SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset(), keep=4, plan_steps=0)
    with pytest.raises(ValueError, match="needs keep="):
        SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset(), plan_steps=2)


def test_an_epoch_stopped_inside_a_plan_leaves_its_candidates_behind(tmp_path):
    class StopTheFirstEpoch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_epoch_stop = state.global_step == 1

    class Tagging(SelectiveTrainer):
        """Tags every candidate batch with the epoch whose iterator gave it, and records what each step trains."""

        epochs, origin, trained = [], {}, []

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            if not self.epochs or self.epochs[-1][0] is not epoch_iterator:
                epoch = len(self.epochs)

                def tagged(source=epoch_iterator):
                    for batch in source:
                        self.origin[id(batch)] = epoch
                        yield batch

                self.epochs.append((epoch_iterator, tagged()))
            return super().get_batch_samples(self.epochs[-1][1], num_batches, device)

        def _next_selection(self, epoch_iterator):
            fetched = super()._next_selection(epoch_iterator)
            if fetched is not None:
                self.trained.append((len(self.epochs) - 1, self.origin[id(fetched[0])]))
            return fetched

    trainer = Tagging(model=bert(), args=args(tmp_path, max_steps=6), train_dataset=cls_dataset(), keep=4, plan_steps=3,
                      callbacks=[StopTheFirstEpoch()])
    trainer.train()
    # The first epoch ends after 1 step of its plan of 3; the second trains its own 4 batches, not the 2 left over.
    assert trainer.trained == [(0, 0)] + [(1, 1)] * 4


@pytest.mark.parametrize("plan_steps", [1, 3])
def test_an_epochs_last_batch_shorter_than_k_trains_on_all_of_it(tmp_path, plan_steps):
    model = bert()
    seen = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]) if m.training else None, with_kwargs=True)
    # 72 samples in batches of 16: the epoch ends with 8 candidates, fewer than k = 12.
    trainer = SelectiveTrainer(model=model, args=args(tmp_path, max_steps=5), train_dataset=cls_dataset(72), keep=12,
                               plan_steps=plan_steps)
    trainer.train()
    assert seen == [12, 12, 12, 12, 8] and trainer.selector.keep == 12


def test_a_plan_whose_policy_reads_the_candidates_scores_them_joined_once_a_plan(tmp_path):
    trainer = SelectiveTrainer(model=bert(), args=args(tmp_path, max_steps=4), train_dataset=cls_dataset(), keep=4,
                               policy="large_loss", explore=0.0, plan_steps=2)
    scored = []
    original = trainer._large_loss
    trainer.selector.large_loss_fn = lambda batch: scored.append(len(batch["input_ids"])) or original(batch)
    trainer.train()
    assert trainer.selector.reads_candidates and scored == [32, 32]  # two steps' 16 candidates, once a plan
    assert trainer.selector.step == 4


def test_skipped_nonfinite_losses_never_write_nan_into_the_model(tmp_path):
    model = bert()

    def nan_rows(module, args, kwargs, output):
        # Sequences starting with a token divisible by 5 get NaN embeddings: NaN losses, NaN gradients.
        rows = (kwargs["input_ids"][:, 0] % 5 == 0)[:, None, None]
        return torch.where(rows, torch.full_like(output, float("nan")), output)

    model.bert.embeddings.register_forward_hook(nan_rows, with_kwargs=True)
    trainer = SelectiveTrainer(model=model, args=args(tmp_path, save_strategy="steps", save_steps=6), train_dataset=cls_dataset(),
                               keep=0.5, selection_options={"on_nonfinite": "skip"})
    trainer.train()
    assert bool(torch.isfinite(params(model)).all())
    assert trainer.selector.nonfinite_losses > 0 and trainer.skipped_updates > 0
    # The count is part of the checkpoint, so a resumed run's logs carry on from it.
    resumed = SelectiveTrainer(model=bert(), args=args(tmp_path / "x"), train_dataset=cls_dataset(), keep=0.5,
                               selection_options={"on_nonfinite": "skip"})
    assert resumed.load_selector_state(str(tmp_path / "checkpoint-6"))
    assert resumed.skipped_updates == trainer.skipped_updates and resumed.selector.step == trainer.selector.step


class _Words:
    """A stand-in tokenizer: decodes token ids as words."""

    def decode(self, tokens, skip_special_tokens=False):
        return " ".join(f"w{t}" for t in tokens)

    def save_pretrained(self, folder):  # Trainer saves its processing class with every checkpoint
        pass


def test_telemetry_adds_what_was_selected_and_why_to_the_log_lines(tmp_path):
    recorder = LogRecorder()
    trainer = SelectiveTrainer(model=bert(), args=args(tmp_path, save_strategy="steps", save_steps=6), train_dataset=cls_dataset(),
                               keep=4, explore=0.25, callbacks=[recorder], processing_class=_Words(),
                               telemetry={"audit_every": 2, "audit_size": 8})
    trainer.train()
    logged = [line for line in recorder.lines if "loss" in line]
    assert len(logged) == 3
    for line in logged:
        assert line["selection/keep_ratio"] == 0.25 and line["selection/large_samples"] == 2 * 4
        assert line["selection/explore_share"] == 0.25
        assert line["selection/score_q10"] <= line["selection/score_q50"] <= line["selection/score_q90"]
        assert sum(line[f"selection/labels_share/{c}"] for c in range(3)) == pytest.approx(1.0)
        assert line["audit/count"] == 1 and 0 <= line["audit/precision_at_k"] <= 1 and line["audit/chance_precision"] == 0.25
        assert all(isinstance(value, (int, float)) for value in line.values())  # Trainer keeps them in trainer_state.json
    picks = trainer.telemetry.picks
    assert int(picks.sum()) == 6 * 4 and logged[-1]["selection/samples_candidate"] == 64
    assert logged[-1]["selection/coverage"] == pytest.approx(float((picks > 0).sum()) / 64)
    state = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    assert any("selection/coverage" in line for line in state["log_history"])
    (written,) = [json.loads(line) for line in (tmp_path / "selection_tables.jsonl").read_text().splitlines()]
    assert written["step"] == 6
    rows = written["tables"]["most_selected"]
    dataset = cls_dataset()
    assert rows and all(row["label"] == dataset[row["id"]]["label"] for row in rows)
    assert all(row["text"] == " ".join(f"w{t}" for t in dataset[row["id"]]["input_ids"]) for row in rows)
    assert sum(row["picks"] for row in rows) <= 24


def test_telemetry_can_be_turned_off_and_misuse_is_named(tmp_path):
    recorder = LogRecorder()
    trainer = SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset(), keep=4, telemetry=False,
                               callbacks=[recorder])
    trainer.train()
    assert trainer.telemetry is None and not any("selection/keep_ratio" in line for line in recorder.lines)
    assert not (tmp_path / "selection_tables.jsonl").exists()
    assert SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset()).telemetry is None
    with pytest.raises(ValueError, match="telemetry settings describe a selection"):
        SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset(), telemetry={"audit_every": 2})
    with pytest.raises(ValueError, match="the trainer supplies its selector and its model's loss"):
        SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset(), keep=4,
                         telemetry={"large_loss_fn": lambda batch: batch})
    with pytest.raises(TypeError, match="telemetry must be True, False or a dict"):
        SelectiveTrainer(model=bert(), args=args(tmp_path), train_dataset=cls_dataset(), keep=4, telemetry="on")


def test_telemetry_of_plans_counts_each_plan_once_and_audits_it_joined(tmp_path):
    recorder = LogRecorder()
    trainer = SelectiveTrainer(model=bert(), args=args(tmp_path, max_steps=6, logging_steps=3), train_dataset=cls_dataset(96),
                               keep=4, plan_steps=3, callbacks=[recorder], telemetry={"audit_every": 3, "audit_size": 16})
    trainer.train()
    logged = [line for line in recorder.lines if "loss" in line]
    assert [line["selection/large_samples"] for line in logged] == [3 * 4, 3 * 4]
    assert all(line["selection/keep_ratio"] == 0.25 and line["audit/count"] == 1 for line in logged)
    assert logged[-1]["selection/samples_candidate"] == 96


def test_telemetry_counters_resume_with_the_selector(tmp_path):
    def run(out, max_steps, resume=None):
        a = args(out, max_steps=max_steps, save_strategy="steps", save_steps=3, logging_steps=3)
        trainer = SelectiveTrainer(model=bert(), args=a, train_dataset=cls_dataset(), keep=4, telemetry={"audit_every": 2})
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full", 6)
    run(tmp_path / "split", 3)
    resumed = run(tmp_path / "split", 6, resume=True)
    assert torch.equal(resumed.telemetry.picks, full.telemetry.picks)
    assert torch.equal(resumed.telemetry.appearances, full.telemetry.appearances)
    assert resumed._telemetry_steps == full._telemetry_steps == 6
    coverage = [[line["selection/coverage"] for line in t.state.log_history if "loss" in line] for t in (full, resumed)]
    assert coverage[0][-1] == coverage[1][-1]


def test_score_histograms_and_tables_go_to_wandb_with_the_log_line(tmp_path, monkeypatch):
    import wandb

    from online_select.wandb_offline import read_history, wait_until_finished

    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = SelectiveTrainer(model=bert(), args=args(tmp_path / "out", report_to=["wandb"]), train_dataset=cls_dataset(),
                               keep=4)
    trainer.train()
    path = wandb.run.settings.sync_file  # where this run writes (a W&B set up earlier in the process keeps its own dirs)
    wandb.finish()
    wait_until_finished(path)
    history = read_history(path)
    lines = [row for row in history if "train/loss" in row]
    assert len(lines) == 3
    for row in lines:
        assert row["train/selection/keep_ratio"] == 0.25
        assert row["train/selection/selected_scores/_type"] == "histogram"
        assert sum(row["train/selection/selected_scores/values"]) == 2 * 4
        assert sum(row["train/selection/rejected_scores/values"]) == 2 * 12
    assert any(row.get("train/selection/most_selected/_type") == "table-file" for row in history)


def test_transformers_early_stopping_and_best_model_work_with_selection(tmp_path):
    scripted = [0.1, 0.5, 0.4, 0.45, 0.9, 0.95]  # the evals at steps 2, 4, 6, ...: best at 4, patience 2 ends at 8
    a = args(tmp_path, max_steps=20, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
             load_best_model_at_end=True, metric_for_best_model="scripted", greater_is_better=True, save_total_limit=1)
    trainer = SelectiveTrainer(model=bert(), args=a, train_dataset=cls_dataset(), eval_dataset=cls_dataset(16, seed=1),
                               keep=4, compute_metrics=lambda _: {"scripted": scripted.pop(0)},
                               callbacks=[EarlyStoppingCallback(early_stopping_patience=2)])
    trainer.train()
    assert trainer.state.global_step == 8 and trainer.selector.step == 8
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-4")
    assert os.path.isfile(tmp_path / "checkpoint-4" / SELECTOR_STATE_NAME)
    best = load_file(str(tmp_path / "checkpoint-4" / "model.safetensors"))
    loaded = trainer.model.state_dict()
    assert all(torch.equal(best[name], loaded[name].cpu()) for name in best)
