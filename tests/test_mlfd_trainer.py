"""MlfdTrainer: the three trainable stages' losses and a real training step on the shared cached-view dataset."""

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hf_distill.losses import MlfdLoss, multi_level_distillation_loss
from hf_distill.models.mlfd import (
    JointTeacherConfig,
    JointTeacherModel,
    MlfdClassifierConfig,
    MlfdClassifierModel,
)
from hf_distill.teachers.cache import (
    CachedViewDataset,
    FeatureCacheSpec,
    build_feature_cache,
    map_column,
    transform_view,
    view_seed,
)
from hf_distill.trainers.arguments import MlfdTrainingArguments
from hf_distill.trainers.mlfd import MlfdTrainer


def _source(n: int = 6) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
    return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]})


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _random_roll(image: Image.Image) -> torch.Tensor:
    # A random augmentation: shift by a random offset drawn from torch's RNG.
    shift = int(torch.randint(0, 4, ()).item())
    return torch.roll(_to_tensor(image), shifts=shift, dims=-1)


def _student(distill_channels=(8,)) -> MlfdClassifierModel:
    torch.manual_seed(0)
    config = MlfdClassifierConfig(
        backbone="resnet10t",
        image_size=32,
        num_classes=3,
        dataset="toy",
        distill_channels=list(distill_channels),
    )
    return MlfdClassifierModel(config)


def _joint() -> JointTeacherModel:
    torch.manual_seed(1)
    config = JointTeacherConfig(
        teacher_names=["toy"],
        teacher_channels=[3],
        teacher_grids=[[32, 32]],
        datasets=["other", "toy"],
        num_classes=[5, 3],
        adaptor_channels=4,
        out_channels=8,
        spatial_size=[2, 2],
        dropout=0.0,
    )
    return JointTeacherModel(config).eval()


def _cache(tmp_path, views: int = 1) -> datasets.Dataset:
    # The "teacher map" is the view's pixels themselves, so the cache shows exactly which view was stored.
    spec = FeatureCacheSpec(
        teacher="pixels", layer="input", views=views, augmentation="roll" if views > 1 else None
    )
    transform = _random_roll if views > 1 else _to_tensor
    return build_feature_cache(
        _source(), lambda x: {map_column("toy"): x}, transform, spec, tmp_path / "c", seed=3
    )


def _args(tmp_path) -> MlfdTrainingArguments:
    return MlfdTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=1e-2,
        report_to="none",
        remove_unused_columns=False,
        save_strategy="no",
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )


def _targets(cache: datasets.Dataset, **pixels) -> CachedViewDataset:
    # What the stage runner gives a stage-4 trainer: the joint teacher's maps, labels, dataset id and pixels.
    return CachedViewDataset(
        cache,
        _source(),
        seed=3,
        columns=[map_column("toy")],
        labels=_source()["label"],
        domain_id=1,
        pixels_key="pixel_values",
        in_memory=True,
        **pixels,
    )


def test_student_sees_exactly_the_cached_view(tmp_path):
    cache = _cache(tmp_path, views=2)
    dataset = _targets(cache, view_transform=_random_roll, normalize=lambda x: x)
    assert len(dataset) == 12
    shifts = set()
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["labels"] == (index // 2) % 3 and item["domain_ids"] == 1
        torch.testing.assert_close(item["pixel_values"], item[map_column("toy")].float(), atol=1e-6, rtol=0)
        expected = transform_view(
            _random_roll, _source()[index // 2]["image"], view_seed(3, index // 2, index % 2)
        )
        torch.testing.assert_close(item["pixel_values"], expected)
        shifts.add(int((item["pixel_values"] != _to_tensor(_source()[index // 2]["image"])).any()))
    assert 1 in shifts  # the views are augmented, not all the plain image


def test_stage4_loss_matches_the_multilevel_loss_and_trains_only_the_student(tmp_path):
    cache = _cache(tmp_path)
    dataset = _targets(cache, fresh_transform=_to_tensor)
    student, joint = _student(), _joint()
    joint_before = {k: v.clone() for k, v in joint.state_dict().items()}
    trainer = MlfdTrainer(model=student, args=_args(tmp_path), train_dataset=dataset, loss=MlfdLoss(joint))
    batch = trainer.data_collator([dataset[i] for i in range(4)])
    student.eval()
    losses = trainer.compute_losses(student, batch)
    assert set(losses) == {"loss", "ce", "soft_ce", "mse_0"}
    with torch.no_grad():
        teacher = joint(teacher_maps=[batch[map_column("toy")]], domain_ids=batch["domain_ids"])
        output = student(pixel_values=batch["pixel_values"], output_feature_maps=True)
    # Dataset id 1 ("toy", 3 classes): the teacher logits are that head's, not the padded 5 columns.
    expected = multi_level_distillation_loss(
        output.logits, batch["labels"], teacher.logits[:, :3], output.distill_maps, teacher.fused_maps
    )
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value)
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(joint_before[k], v) for k, v in joint.state_dict().items())


def test_stage1_and_stage3_losses(tmp_path):
    student = _student()
    trainer = MlfdTrainer(model=student, args=_args(tmp_path), train_dataset=[])
    pixels, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    student.eval()
    losses = trainer.compute_losses(student, {"pixel_values": pixels, "labels": labels})
    torch.testing.assert_close(losses["loss"], F.cross_entropy(student(pixel_values=pixels).logits, labels))

    joint = _joint()
    dataset = CachedViewDataset(
        _cache(tmp_path), columns=[map_column("toy")], labels=[0, 1, 2, 0, 1, 2], domain_id=1, in_memory=True
    )
    trainer = MlfdTrainer(model=joint, args=_args(tmp_path), train_dataset=dataset)
    batch = trainer.data_collator([dataset[i] for i in range(3)])
    losses = trainer.compute_losses(joint, batch)
    expected = joint(teacher_maps=[batch[map_column("toy")]], domain_ids=batch["domain_ids"])
    torch.testing.assert_close(losses["loss"], F.cross_entropy(expected.logits, batch["labels"]))


def test_rejects_a_student_that_does_not_fit_the_joint_teacher(tmp_path):
    student = MlfdClassifierModel(
        MlfdClassifierConfig(backbone="resnet10t", image_size=32, num_classes=3, dataset="unknown")
    )
    with pytest.raises(ValueError, match="no head in the joint teacher"):
        MlfdTrainer(model=student, args=_args(tmp_path), train_dataset=[], loss=MlfdLoss(_joint()))
    two_levels = MlfdClassifierModel(
        MlfdClassifierConfig(
            backbone="resnet10t", image_size=32, num_classes=3, dataset="toy", feature_levels=[-2, -1]
        )
    )
    with pytest.raises(ValueError, match="1 fused map"):
        MlfdTrainer(model=two_levels, args=_args(tmp_path), train_dataset=[], loss=MlfdLoss(_joint()))
