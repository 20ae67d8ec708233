"""UnicTrainer end to end on tiny teachers: online and cached targets, cache/view consistency, exact resume."""

import datasets
import pytest
import timm
import torch
from safetensors.torch import save_file

from hf_distill.evaluation import RetrievalEvaluator
from hf_distill.losses import UnicLoss
from hf_distill.models.unic import UnicStudentConfig, UnicStudentModel
from hf_distill.teachers import load_teachers
from hf_distill.trainers.unic import (
    CachedViewDataset,
    OnlineImageDataset,
    UnicTrainer,
    UnicTrainingArguments,
    build_unic_feature_cache,
    teacher_shapes,
    teacher_targets,
    unic_train_transform,
)

VIT_KWARGS = {"img_size": 32, "patch_size": 16, "depth": 1, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    directory = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    save_file(timm.create_model("resnet10t", num_classes=3).state_dict(), str(directory / "cnn.safetensors"))
    save_file(
        timm.create_model("vit_tiny_patch16_224", **VIT_KWARGS).state_dict(),
        str(directory / "vit.safetensors"),
    )
    return load_teachers(
        [
            {
                "model": str(directory / "cnn.safetensors"),
                "name": "cnn",
                "architecture": "resnet10t",
                "image_size": 64,
            },
            {
                "model": str(directory / "vit.safetensors"),
                "name": "vit",
                "architecture": "vit_tiny_patch16_224",
                "model_kwargs": VIT_KWARGS,
            },
        ]
    )


@pytest.fixture(scope="module")
def images(tiny_benchmark) -> datasets.Dataset:
    parts = [
        splits["train"].select(range(8)).select_columns(["image"])
        for splits in tiny_benchmark.domains.values()
    ]
    return datasets.concatenate_datasets(parts)


def _student(teachers) -> UnicStudentModel:
    torch.manual_seed(0)
    config = UnicStudentConfig(
        backbone_kwargs={"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
        image_size=32,
        teachers=teacher_shapes(teachers),
    )
    return UnicStudentModel(config)


def _args(output_dir, **overrides) -> UnicTrainingArguments:
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        max_steps=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    return UnicTrainingArguments(**values)


def test_cached_targets_match_the_teachers_on_the_regenerated_view(teachers, images, tmp_path):
    transform = unic_train_transform(32)
    cache = build_unic_feature_cache(
        teachers, images, transform, tmp_path / "cache", views=2, seed=5, dtype="float32"
    )
    assert len(cache) == 2 * len(images)
    dataset = CachedViewDataset(cache, images, transform, seed=5)
    for index in (0, 7, 2 * len(images) - 1):
        item = dataset[index]
        targets = teacher_targets(teachers, item["images"][None])
        torch.testing.assert_close(item["cnn__patch"], targets["cnn"]["patch"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(item["vit__cls"], targets["vit"]["cls"][0], atol=1e-5, rtol=1e-5)
    # The two views of one image differ (augmentation), and a second call loads instead of rebuilding.
    assert not torch.equal(dataset[0]["images"], dataset[1]["images"])
    assert len(
        build_unic_feature_cache(
            teachers, images, transform, tmp_path / "cache", views=2, seed=5, dtype="float32"
        )
    ) == len(cache)
    with pytest.raises(ValueError, match="views"):
        build_unic_feature_cache(
            teachers, images, transform, tmp_path / "cache", views=3, seed=5, dtype="float32"
        )


@pytest.mark.slow
def test_online_training_logs_each_teachers_loss_and_keep_rate(teachers, images, tmp_path):
    student = _student(teachers)
    before = student.backbone.blocks[0].attn.qkv.weight.detach().clone()
    teachers_before = {key: value.clone() for key, value in teachers.state_dict().items()}
    trainer = UnicTrainer(
        model=student,
        args=_args(tmp_path),
        teachers=teachers,
        loss=UnicLoss(list(teachers), drop_prob=0.5),
        train_dataset=OnlineImageDataset(images, unic_train_transform(32)),
    )
    momenta: dict[int, set[float]] = {}
    schedule = trainer.standardizer.momentum

    def spy(step):
        value = schedule(step)
        momenta.setdefault(step, set()).add(value)
        return value

    trainer.standardizer.momentum = spy
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    for name in ("cnn", "vit"):
        assert all(0.0 < entry[f"{name}/keep_rate"] <= 1.0 for entry in logs)
        assert all(entry[f"{name}/loss"] > 0 for entry in logs)
    # The max-loss teacher is always kept: the keep rates of 2 teachers sum to at least 1.
    assert all(entry["cnn/keep_rate"] + entry["vit/keep_rate"] >= 1.0 for entry in logs)
    assert not torch.equal(before, student.backbone.blocks[0].attn.qkv.weight)
    # Every teacher and token type has running statistics, and the teachers received no gradient.
    assert sorted(trainer.standardizer.means) == ["cnn/cls", "cnn/patch", "vit/cls", "vit/patch"]
    assert not any(parameter.requires_grad for parameter in teachers.parameters())
    after = teachers.state_dict()  # weights and BatchNorm statistics of the CNN teacher
    assert all(torch.equal(value, after[key]) for key, value in teachers_before.items())
    # The standardiser's momentum follows the cosine from 1 to 0.001 over the 4 steps (by hand:
    # m(s) = 0.001 + 0.999 * (1 + cos(pi * s / 4)) / 2), the same for every teacher and token type.
    expected = {0: 1.0, 1: 0.853700, 2: 0.5005, 3: 0.147300}
    assert sorted(momenta) == [0, 1, 2, 3]
    for step, values in momenta.items():
        assert len(values) == 1 and values.pop() == pytest.approx(expected[step], abs=1e-5)


@pytest.mark.slow
def test_resume_ends_with_the_same_metrics(teachers, images, tiny_benchmark, tmp_path):
    transform = unic_train_transform(32)
    cache = build_unic_feature_cache(teachers, images, transform, tmp_path / "cache", views=2, seed=1)
    dataset = CachedViewDataset(cache, images, transform, seed=1)
    evaluator = RetrievalEvaluator(tiny_benchmark, split="test", protocols=("merged",))

    def run(output_dir, resume=None):
        args = _args(output_dir, max_steps=6, save_strategy="steps", save_steps=3)
        trainer = UnicTrainer(model=_student(teachers), args=args, train_dataset=dataset, evaluator=evaluator)
        trainer.train(resume_from_checkpoint=resume)
        model = trainer.accelerator.unwrap_model(trainer.model)
        return trainer, evaluator(model.export_embedder())

    full, full_metrics = run(tmp_path / "full")
    resumed, resumed_metrics = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-3"))
    assert resumed_metrics == full_metrics
    # bit-identical end state: weights, and the running statistics of the standardiser
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for key, value in full.standardizer.means.items():
        assert torch.equal(resumed.standardizer.means[key], value), key
        assert torch.equal(resumed.standardizer.stds[key], full.standardizer.stds[key]), key
    # The running statistics travel in the checkpoint (a fresh standardiser would restart at mean 0 / std 1).
    saved = torch.load(tmp_path / "full" / "checkpoint-3" / "hf_distill_state.pt", weights_only=True)
    assert sorted(saved["feature_standardizer"]["means"]) == ["cnn/cls", "cnn/patch", "vit/cls", "vit/patch"]
    assert resumed.state.global_step == 6


def test_trainer_rejects_mismatched_teachers(teachers, images, tmp_path):
    config = UnicStudentConfig(
        backbone_kwargs={"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
        image_size=32,
        teachers={**teacher_shapes(teachers), "cnn": {"global_dim": 512, "token_dim": 512, "grid": [4, 4]}},
    )
    with pytest.raises(ValueError, match=r"teacher 'cnn' gives a \(2, 2\) token grid"):
        UnicTrainer(
            model=UnicStudentModel(config),
            args=_args(tmp_path),
            teachers=teachers,
            train_dataset=OnlineImageDataset(images, unic_train_transform(32)),
        )
