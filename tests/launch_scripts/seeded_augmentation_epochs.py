"""Two epochs of a ``DistillationTrainer`` on the Trainer's own loader, launched on one or more processes.

Every rank writes ``seen_rank<r>.json``: the augmented ``x`` of every example it trained on, per epoch. Used by
``tests/test_wiring_bugs.py``: with several processes accelerate does not forward ``set_epoch`` to the training
set, so only the trainer's own epoch callback can make epoch 1 draw other crops than epoch 0.

Usage: ``accelerate launch ... seeded_augmentation_epochs.py OUTPUT_DIR``.
"""

import json
import sys

import torch
from datasets import Dataset
from torch import nn
from transformers import TrainingArguments

from hf_distill.trainers.base import DistillationTrainer

ROWS = 8


def noisy_rows() -> Dataset:
    """Eight rows whose ``x`` gets fresh torch noise every time a row is read: a random augmentation."""
    gen = torch.Generator().manual_seed(0)
    dataset = Dataset.from_dict(
        {
            "x": torch.randn(ROWS, 3, generator=gen).tolist(),
            "labels": [0.0] * ROWS,
            "index": list(range(ROWS)),
        }
    )

    def augment(batch):
        return {
            "x": [torch.tensor(row) + torch.rand(3) for row in batch["x"]],
            "labels": torch.tensor(batch["labels"]),
            "index": torch.tensor(batch["index"]),
        }

    return dataset.with_transform(augment)


class RecordingLoss(nn.Module):
    """A squared error that remembers which noisy example it saw in which epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []
        self.epoch = 0

    def forward(self, model, inputs):
        for index, row in zip(inputs["index"].tolist(), inputs["x"]):
            self.seen.append({"epoch": self.epoch, "index": index, "x": row.tolist()})
        return {"loss": (model(inputs["x"]).squeeze(-1) - inputs["labels"]).pow(2).mean()}


class EpochTrainer(DistillationTrainer):
    """Tells the recording loss the epoch the trainer is in."""

    def training_step(self, model, inputs, *args, **kwargs):
        self.loss.epoch = int(self.state.epoch or 0.0)
        return super().training_step(model, inputs, *args, **kwargs)


def main(output_dir: str) -> None:
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=2,
        num_train_epochs=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
    )
    torch.manual_seed(0)
    loss = RecordingLoss()
    trainer = EpochTrainer(model=nn.Linear(3, 1), args=args, train_dataset=noisy_rows(), loss=loss)
    trainer.train()
    rank = trainer.accelerator.process_index
    with open(f"{output_dir}/seen_rank{rank}.json", "w") as handle:
        json.dump(loss.seen, handle)


if __name__ == "__main__":
    main(sys.argv[1])
