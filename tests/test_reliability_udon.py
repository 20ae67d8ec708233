"""UDON details a ViT cannot show: the exported embedder keeps BatchNorm statistics (buffers, not only
parameters), and the frozen-backbone learning rate switches on at exactly the right step."""

import torch
from datasets import Dataset
from transformers import AutoModel, TrainerCallback

from hf_distill.models.udon import UdonConfig, UdonModel
from hf_distill.trainers.arguments import UdonTrainingArguments
from hf_distill.trainers.udon import UdonTrainer

DOMAINS = ["a", "b"]


def batchnorm_udon() -> UdonModel:
    torch.manual_seed(0)
    model = UdonModel(
        UdonConfig(backbone="tf_efficientnet_lite0", image_size=32, domains=DOMAINS, num_classes=[2, 3])
    )
    # Statistics unlike the fresh ones (0 / 1) an export that forgot buffers would carry.
    generator = torch.Generator().manual_seed(1)
    for module in model.backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model


def test_export_keeps_batchnorm_statistics_through_save_and_load(tmp_path):
    model = batchnorm_udon().eval()
    embedder = model.export_embedder()
    backbone_buffers = dict(model.backbone.named_buffers())
    exported_buffers = dict(embedder.backbone.named_buffers())
    assert any(name.endswith("running_var") for name in backbone_buffers)
    assert backbone_buffers.keys() == exported_buffers.keys()
    for name, value in backbone_buffers.items():
        assert torch.equal(value, exported_buffers[name]), name
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(pixel_values=pixels).embeddings
        torch.testing.assert_close(embedder(pixel_values=pixels).embeddings, expected)
        embedder.save_pretrained(tmp_path)
        reloaded = AutoModel.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(reloaded(pixel_values=pixels).embeddings, expected)


class RecordBackbone(TrainerCallback):
    """Backbone learning rate used by each step and whether that step moved the backbone."""

    def __init__(self, model):
        self.model = model
        self.rates, self.moved = [], []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        group = next(g for g in optimizer.param_groups if g["udon_group"] == "backbone")
        self.rates.append(group["lr"])
        self.before = self.model.backbone.conv_stem.weight.detach().clone()

    def on_step_end(self, args, state, control, **kwargs):
        self.moved.append(not torch.equal(self.before, self.model.backbone.conv_stem.weight))


def test_frozen_backbone_learning_rate_switches_on_after_exactly_the_frozen_steps(tmp_path):
    gen = torch.Generator().manual_seed(0)
    domain_ids = [0] * 16 + [1] * 16
    dataset = Dataset.from_dict(
        {
            "pixel_values": torch.randn(32, 3, 32, 32, generator=gen).tolist(),
            "labels": [i % 2 if d == 0 else i % 3 for i, d in enumerate(domain_ids)],
            "domain_ids": domain_ids,
        }
    ).with_format("torch")
    args = UdonTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=1e-2,
        backbone_lr_ratio=0.5,
        backbone_frozen_epochs=0.5,  # 8 batches per epoch: the first 4 steps are frozen
        lr_scheduler_type="constant",
        sampling_strategy="round_robin",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
    )
    model = batchnorm_udon()
    recorder = RecordBackbone(model)
    trainer = UdonTrainer(model=model, args=args, train_dataset=dataset, callbacks=[recorder])
    trainer.train()
    assert trainer.frozen_backbone_steps() == 4
    assert recorder.rates == [0.0, 0.0, 0.0, 0.0, 5e-3, 5e-3]
    assert recorder.moved == [False, False, False, False, True, True]
