"""UdonTrainer: learning-rate groups, frozen backbone, per-domain logging and the sampling plot."""

import os

import pytest
import torch
from datasets import Dataset

from hf_distill.models.udon import UdonConfig, UdonModel
from hf_distill.trainers.arguments import UdonTrainingArguments
from hf_distill.trainers.udon import UdonTrainer

DOMAINS = ["a", "b"]


def tiny_model():
    torch.manual_seed(0)
    return UdonModel(
        UdonConfig(
            backbone="vit_tiny_patch16_224",
            backbone_kwargs=dict(img_size=16, patch_size=8, depth=1),
            image_size=16,
            domains=DOMAINS,
            num_classes=[2, 3],
        )
    )


def tiny_dataset():
    gen = torch.Generator().manual_seed(0)
    rows = 32
    domain_ids = [0] * 16 + [1] * 16
    return Dataset.from_dict(
        {
            "pixel_values": torch.randn(rows, 3, 16, 16, generator=gen).tolist(),
            "labels": [i % 2 if d == 0 else i % 3 for i, d in enumerate(domain_ids)],
            "domain_ids": domain_ids,
        }
    ).with_format("torch")


def tiny_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_train_epochs=2,
        learning_rate=1e-2,
        backbone_lr_ratio=0.5,
        backbone_frozen_epochs=1,
        sampling_update_every=4,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
    )
    values.update(overrides)
    return UdonTrainingArguments(**values)


def test_backbone_frozen_for_first_epoch_then_trained_with_its_own_lr(tmp_path):
    model = tiny_model()
    start_backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    start_head = model.student_head.weight.detach().clone()
    trainer = UdonTrainer(
        model=model, args=tiny_args(tmp_path, num_train_epochs=1), train_dataset=tiny_dataset()
    )
    trainer.train()
    # 8 batches per epoch: the whole (single) epoch ran with a frozen backbone, the heads moved
    assert trainer.frozen_backbone_steps() == 8
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, start_backbone[key])
    assert not torch.equal(model.student_head.weight, start_head)
    # while frozen the backbone ran without autograd
    assert model.backbone_frozen is True
    rates = {group["udon_group"]: group["initial_lr"] for group in trainer.optimizer.param_groups}
    assert rates == {"heads": 1e-2, "backbone": 5e-3}


def test_backbone_trains_after_the_frozen_epochs(tmp_path):
    model = tiny_model()
    start = model.backbone.patch_embed.proj.weight.detach().clone()
    trainer = UdonTrainer(model=model, args=tiny_args(tmp_path), train_dataset=tiny_dataset())
    trainer.train()
    assert not torch.equal(model.backbone.patch_embed.proj.weight, start)
    assert model.backbone_frozen is False


def test_per_domain_losses_probabilities_and_plot(tmp_path):
    trainer = UdonTrainer(
        model=tiny_model(), args=tiny_args(tmp_path, backbone_frozen_epochs=0), train_dataset=tiny_dataset()
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all("loss_teacher" in e and "loss_logit" in e and "loss_relational" in e for e in logs)
    # first window is round-robin: one batch of each domain in the first logging window
    assert {"domain_loss/a", "domain_loss/b"} <= set(logs[0])
    probabilities = [(e["sampling_p/a"], e["sampling_p/b"]) for e in logs]
    assert probabilities[0] == pytest.approx((0.5, 0.5))
    assert all(a + b == pytest.approx(1.0) for a, b in probabilities)
    # the dynamic strategy moves away from uniform in the second window (steps 4-7)
    assert abs(probabilities[2][0] - 0.5) > 1e-3
    assert trainer.domain_trace[:2] == [0, 1] and len(trainer.domain_trace) == 16
    assert os.path.getsize(tmp_path / "sampling_curves.png") > 1000


def test_rejects_plain_training_arguments(tmp_path):
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="UdonTrainingArguments"):
        UdonTrainer(
            model=tiny_model(), args=TrainingArguments(output_dir=str(tmp_path)), train_dataset=tiny_dataset()
        )
