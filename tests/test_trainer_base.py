"""DistillationTrainer: component logging, non-finite losses, evaluator, checkpoint state, resume, summary."""

import json
import os

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import TrainerCallback, TrainingArguments

from hf_distill.sampling import DomainBatchSampler, group_indices_by_domain
from hf_distill.trainers.base import (
    EXTRA_STATE_NAME,
    RUN_SUMMARY_NAME,
    DistillationTrainer,
    NonFiniteLossError,
)

DOMAINS = ["a", "b"]


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 1)

    def forward(self, x):
        return self.linear(x)


class ToyTrainer(DistillationTrainer):
    """Regression toy: the per-domain target makes domains distinguishable in the losses."""

    def __init__(self, *args, strategy="round_robin", nan_domain=None, **kwargs):
        self.strategy = strategy
        self.nan_domain = nan_domain
        super().__init__(*args, **kwargs)

    def get_train_batch_sampler(self):
        groups = group_indices_by_domain(self.train_dataset["domain_ids"], DOMAINS)
        return DomainBatchSampler(
            groups,
            batch_size=self.args.per_device_train_batch_size,
            strategy=self.strategy,
            seed=self.args.seed,
            update_every=2,
            num_replicas=self.accelerator.num_processes,
            rank=self.accelerator.process_index,
        )

    def compute_losses(self, model, inputs):
        prediction = model(inputs["x"]).squeeze(-1)
        loss = (prediction - inputs["labels"]).pow(2).mean()
        domain = int(inputs["domain_ids"][0])
        if domain == self.nan_domain:
            loss = loss * float("nan")
        if model.training and self._train_batch_sampler.needs_losses:
            self._train_batch_sampler.record_loss(domain, float(loss.detach()))
        return {"loss": loss, "domain_value": torch.tensor(float(domain)), f"loss/{DOMAINS[domain]}": loss}


def toy_dataset():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=gen)
    domain_ids = [0] * 16 + [1] * 16
    labels = [float(i % 4) if d == 0 else 10.0 + (i % 3) for i, d in enumerate(domain_ids)]
    return Dataset.from_dict({"x": x.tolist(), "labels": labels, "domain_ids": domain_ids}).with_format(
        "torch"
    )


def toy_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=8,
        logging_steps=2,
        save_strategy="no",
        learning_rate=0.01,
        lr_scheduler_type="constant",
        optim="sgd",
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def test_components_are_averaged_over_the_logging_window(tmp_path):
    trainer = ToyTrainer(
        model=ToyModel(), args=toy_args(tmp_path), train_dataset=toy_dataset(), domain_names=DOMAINS
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    # round-robin over two domains and a window of 2 steps: each window holds one batch of each domain
    assert all(entry["domain_value"] == pytest.approx(0.5) for entry in logs)
    assert all("loss/a" in entry and "loss/b" in entry for entry in logs)
    # domain b's targets (10–12) are far from the initial predictions: its loss is the larger one
    assert logs[0]["loss/b"] > logs[0]["loss/a"]
    summary = json.loads((tmp_path / RUN_SUMMARY_NAME).read_text())
    assert summary["global_step"] == 8 and summary["timings_s"]["train_s"] > 0


def test_non_finite_loss_names_step_and_domain(tmp_path):
    trainer = ToyTrainer(
        model=ToyModel(),
        args=toy_args(tmp_path),
        train_dataset=toy_dataset(),
        domain_names=DOMAINS,
        nan_domain=1,
    )
    with pytest.raises(NonFiniteLossError, match=r"step 1, domain 'b'"):
        trainer.train()


class StepMetricEvaluator:
    """Returns a metric peaking at step 4, so the best checkpoint is known in advance."""

    primary_metric = "merged/mean/R@1"

    def __init__(self):
        self.calls = []

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        self.calls.append(steps)
        return {"merged/mean/R@1": 1.0 - abs(steps - 4) / 10}


def test_evaluator_metrics_prefixed_and_select_best_checkpoint(tmp_path):
    evaluator = StepMetricEvaluator()
    args = toy_args(
        tmp_path,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        metric_for_best_model="merged/mean/R@1",
        greater_is_better=True,
        load_best_model_at_end=True,
    )
    trainer = ToyTrainer(
        model=ToyModel(), args=args, train_dataset=toy_dataset(), domain_names=DOMAINS, evaluator=evaluator
    )
    trainer.train()
    assert evaluator.calls == [2, 4, 6, 8]
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    assert trainer.state.best_metric == pytest.approx(1.0)
    metrics = trainer.evaluate()
    assert metrics["eval_merged/mean/R@1"] == pytest.approx(0.6)
    # the sampler state is stored beside every checkpoint
    assert os.path.isfile(tmp_path / "checkpoint-4" / EXTRA_STATE_NAME)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_restores_sampler_and_matches_uninterrupted(tmp_path):
    def run(output_dir, callbacks=(), resume=None):
        args = toy_args(output_dir, max_steps=10, save_strategy="steps", save_steps=3)
        trainer = ToyTrainer(
            model=ToyModel(),
            args=args,
            train_dataset=toy_dataset(),
            domain_names=DOMAINS,
            strategy="dynamic",
            callbacks=list(callbacks),
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    run(tmp_path / "cut", callbacks=[StopAt(3)])
    resumed = run(tmp_path / "cut", resume=True)
    assert resumed.state.global_step == 10
    for p_full, p_resumed in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p_full, p_resumed)
    full_state = full._train_batch_sampler.state_dict()
    resumed_state = resumed._train_batch_sampler.state_dict()
    assert resumed_state["history"] == full_state["history"]
    assert resumed_state["next_to_train"] == full_state["next_to_train"] == 10
    summary = json.loads((tmp_path / "cut" / RUN_SUMMARY_NAME).read_text())
    assert summary["resumed_from"].endswith("checkpoint-3")


def test_resume_without_extra_state_is_refused(tmp_path):
    trainer = ToyTrainer(model=ToyModel(), args=toy_args(tmp_path), train_dataset=toy_dataset())
    trainer.register_checkpoint_state("sampler", DomainBatchSampler({"a": range(8)}, 4))
    (tmp_path / "checkpoint-1").mkdir()
    with pytest.raises(FileNotFoundError, match="hf_distill_state.pt is missing"):
        trainer.load_extra_state(str(tmp_path / "checkpoint-1"))


def test_resume_from_checkpoint_without_sampler_state_is_refused(tmp_path):
    args = toy_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    ToyTrainer(model=ToyModel(), args=args, train_dataset=toy_dataset()).train()
    (tmp_path / "checkpoint-4" / EXTRA_STATE_NAME).unlink()
    trainer = ToyTrainer(model=ToyModel(), args=toy_args(tmp_path, max_steps=6), train_dataset=toy_dataset())
    with pytest.raises(FileNotFoundError, match="checkpoint-4/hf_distill_state.pt holds no sampler state"):
        trainer.train(resume_from_checkpoint=True)
