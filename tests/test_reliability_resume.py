"""Exact resume with random augmentation and a random training step, for the Trainer's own loader (UNIC,
MLFD) and for a custom domain batch sampler (UDON): the resumed run ends bit-identical to an uninterrupted one."""

import random

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import TrainerCallback, TrainingArguments

from hf_distill.sampling import DomainBatchSampler, group_indices_by_domain
from hf_distill.trainers.base import DistillationTrainer, SeededAugmentationDataset

DOMAINS = ["a", "b"]


class DropoutModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 1)
        self.dropout = nn.Dropout(0.3)  # the training step itself draws from the global RNG

    def forward(self, x):
        return self.linear(self.dropout(x))


class NoisyTrainer(DistillationTrainer):
    def __init__(self, *args, domain_sampler=False, **kwargs):
        self.domain_sampler = domain_sampler
        super().__init__(*args, **kwargs)

    def get_train_batch_sampler(self):
        if not self.domain_sampler:
            return None
        groups = group_indices_by_domain(self.train_dataset["domain_ids"], DOMAINS)
        return DomainBatchSampler(
            groups, batch_size=4, strategy="dynamic", seed=self.args.seed, update_every=2
        )

    def compute_losses(self, model, inputs):
        loss = (model(inputs["x"]).squeeze(-1) - inputs["labels"]).pow(2).mean()
        sampler = self._train_batch_sampler
        if model.training and sampler is not None:
            sampler.record_loss(int(inputs["domain_ids"][0]), float(loss.detach()))
        return {"loss": loss}


def noisy_dataset():
    """x plus random noise drawn by torch, numpy and random at read time: an augmentation on every RNG."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=gen)
    domain_ids = [0] * 16 + [1] * 16
    labels = [float(i % 4) if d == 0 else 10.0 + (i % 3) for i, d in enumerate(domain_ids)]
    dataset = Dataset.from_dict({"x": x.tolist(), "labels": labels, "domain_ids": domain_ids})

    def augment(batch):
        noisy = []
        for row in batch["x"]:
            noise = torch.randn(3) + float(np.random.rand()) + random.random()
            noisy.append(torch.tensor(row) + 0.1 * noise)
        return {"x": noisy, "labels": torch.tensor(batch["labels"]), "domain_ids": batch["domain_ids"]}

    return dataset.with_transform(augment)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def run(output_dir, domain_sampler, callbacks=(), resume=None):
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=12,
        save_strategy="steps",
        save_steps=5,
        logging_steps=1,
        learning_rate=0.05,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
    )
    trainer = NoisyTrainer(
        model=DropoutModel(),
        args=args,
        train_dataset=noisy_dataset(),
        domain_names=DOMAINS,
        domain_sampler=domain_sampler,
        callbacks=list(callbacks),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize("domain_sampler", [False, True], ids=["trainer_loader", "domain_sampler"])
def test_resumed_run_ends_bit_identical(tmp_path, domain_sampler):
    # 12 steps over 8 batches per epoch: the cut (step 5) is mid-epoch and the run crosses an epoch boundary.
    full = run(tmp_path / "full", domain_sampler)
    run(tmp_path / "cut", domain_sampler, callbacks=[StopAt(5)])
    resumed = run(tmp_path / "cut", domain_sampler, resume=True)
    assert resumed.state.global_step == full.state.global_step == 12
    for (name, p_full), p_resumed in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p_full, p_resumed), name
    last = [entry for entry in full.state.log_history if "loss" in entry][-1]
    last_resumed = [entry for entry in resumed.state.log_history if "loss" in entry][-1]
    assert last_resumed["step"] == 12 and last_resumed["loss"] == last["loss"]


def test_example_augmentation_depends_on_example_and_epoch_not_on_global_rng():
    dataset = SeededAugmentationDataset(noisy_dataset(), seed=3)
    first = dataset[1]
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    before = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    # same example, same draws, whatever the global state or the batch it is read in; global state untouched
    assert torch.equal(dataset[1]["x"], first["x"])
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
    # another epoch or another seed draws other noise
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["x"], first["x"])
    assert not torch.equal(SeededAugmentationDataset(noisy_dataset(), seed=4)[1]["x"], first["x"])


def test_custom_sampler_loader_keeps_every_column_whatever_remove_unused_columns(tmp_path):
    # The domain sampler's loader never removed columns; the seeded wrapper must not start doing it (the
    # transform needs ``domain_ids``, which the model's forward does not name).
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to="none", use_cpu=True
    )
    assert args.remove_unused_columns
    trainer = NoisyTrainer(
        model=DropoutModel(), args=args, train_dataset=noisy_dataset(), domain_sampler=True
    )
    trainer.train()
    assert trainer.state.global_step == 2


class _Uniform(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(())


def test_persistent_workers_follow_the_epoch():
    # Persistent workers keep their copy of the dataset: the epoch must reach them, or every epoch repeats the
    # first epoch's augmentation.
    from hf_distill.trainers.base import SeededAugmentationDataset

    dataset = SeededAugmentationDataset(_Uniform(), seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True)
    dataset.set_epoch(0)
    first = next(iter(loader))
    dataset.set_epoch(1)
    second = next(iter(loader))
    dataset.set_epoch(0)
    again = next(iter(loader))
    assert not torch.equal(first, second)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
