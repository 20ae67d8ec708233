"""How the pieces are wired together (issue 20): each test fails on one realistic single-line bug that the
formula tests could not see, and computes its expectation without the code under test.

- an InstanceNorm with running statistics stays in eval mode under ``backbone_norm="frozen"``;
- the "below starting point" warning fires in the right direction only;
- the PCA starting point is fitted on the training rows (compared with an SVD done here);
- UDON's dynamic sampler is fed the teacher loss of the batches it yielded, not the student's;
- the trainer tells the seeded augmentation every epoch, not only the first;
- the model-index of a card names the split its metrics were measured on;
- every method is registered with its own training-arguments class;
- an exported MLFD student keeps its trained BatchNorm statistics.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, concatenate_datasets
from huggingface_hub import ModelCard
from launch_scripts.seeded_augmentation_epochs import ROWS, EpochTrainer, RecordingLoss, noisy_rows
from torch import nn
from transformers import TrainingArguments

from hf_distill.evaluation.evaluator import default_transform, embed_dataset
from hf_distill.evaluation.starting_point import (
    compare_to_starting_point,
    full_feature_embedder,
    starting_point_embedders,
)
from hf_distill.hub import EmbedderCardData
from hf_distill.layers import set_backbone_train_mode
from hf_distill.losses import UdonLoss
from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel
from hf_distill.models.mlfd import MlfdClassifierConfig, MlfdClassifierModel
from hf_distill.models.udon import UdonConfig, UdonModel
from hf_distill.registry import get_method, registered_methods
from hf_distill.trainers.arguments import (
    DistillationTrainingArguments,
    MlfdTrainingArguments,
    UdonTrainingArguments,
    UnicTrainingArguments,
)
from hf_distill.trainers.base import SeededAugmentationDataset
from hf_distill.trainers.mlfd import MlfdTrainer
from hf_distill.trainers.udon import UdonTrainer

REPO = Path(__file__).resolve().parents[1]


def resnet_student(**overrides) -> MlfdClassifierModel:
    torch.manual_seed(0)
    values = dict(num_classes=3, dataset="shapes", backbone="resnet10t", image_size=32)
    values.update(overrides)
    return MlfdClassifierModel(MlfdClassifierConfig(**values))


def shifted_pixels(seed: int, count: int = 8) -> torch.Tensor:
    """Images whose statistics are far from the 0 / 1 a fresh normalisation layer starts with."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 32, 32, generator=generator) * 3.0 + 2.0


# ------------------------------------------------------------------------- running-statistics layers


def student_with_instance_norm() -> tuple[MlfdClassifierModel, nn.InstanceNorm2d]:
    """A resnet10t student whose stem normalisation is an InstanceNorm that keeps running statistics."""
    model = resnet_student()
    channels = model.backbone.bn1.num_features
    model.backbone.bn1 = nn.InstanceNorm2d(channels, affine=True, track_running_stats=True)
    return model, model.backbone.bn1


def norm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    # Listed by type here, not with running_stat_modules (the code under test).
    return {
        f"{name}.{buffer_name}": buffer.clone()
        for name, module in model.backbone.named_modules()
        if isinstance(module, nn.BatchNorm2d | nn.InstanceNorm2d)
        for buffer_name, buffer in module.named_buffers()
        if buffer_name in ("running_mean", "running_var")
    }


def test_frozen_backbone_norm_keeps_instance_norm_statistics_too():
    model, instance_norm = student_with_instance_norm()
    model.backbone_norm = "frozen"
    model.train()
    before = norm_buffers(model)
    assert "bn1.running_mean" in before and len(before) > 10
    assert not instance_norm.training
    model(shifted_pixels(0)).logits.sum().backward()
    after = norm_buffers(model)
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    # Its affine parameters still train.
    assert instance_norm.weight.grad is not None and instance_norm.weight.grad.abs().sum() > 0


def test_train_backbone_norm_does_move_instance_norm_statistics():
    # The contrast that makes the test above able to fail.
    model, instance_norm = student_with_instance_norm()
    model.backbone_norm = "train"
    model.train()
    before = instance_norm.running_mean.clone()
    model(shifted_pixels(0))
    assert instance_norm.training and not torch.equal(before, instance_norm.running_mean)


def test_backbone_train_mode_defaults_to_a_trained_backbone():
    # Called without ``frozen`` (its default), a backbone whose weights train follows ``training`` and ``norm``.
    model, instance_norm = student_with_instance_norm()
    set_backbone_train_mode(model.backbone, True, "train")
    assert model.backbone.training and instance_norm.training
    set_backbone_train_mode(model.backbone, True, "frozen")
    assert model.backbone.training and not instance_norm.training


# ------------------------------------------------------------------------------- starting point


STARTING_POINT_LOGGER = "hf_distill.evaluation.starting_point"


def test_below_starting_point_warns_and_above_does_not(caplog):
    metric = "merged/mean/R@1"
    with caplog.at_level(logging.INFO, logger=STARTING_POINT_LOGGER):
        delta = compare_to_starting_point({metric: 0.25}, {metric: 0.5}, metric)
    assert delta == pytest.approx(-0.25)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "BELOW" in warnings[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=STARTING_POINT_LOGGER):
        delta = compare_to_starting_point({metric: 0.75}, {metric: 0.5}, metric)
    assert delta == pytest.approx(0.25)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert any("above" in record.getMessage() for record in caplog.records)


def hand_pca_subspace(features: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Projector on the top ``dim`` principal directions (SVD of the centred rows) and the rows' mean."""
    mean = features.mean(axis=0)
    _, singular, vt = np.linalg.svd(features - mean, full_matrices=False)
    # A clear gap after the last kept component: the subspace is then well defined.
    assert singular[dim - 1] > 1.05 * singular[dim], singular[: dim + 1]
    return vt[:dim].T @ vt[:dim], mean


def test_pca_starting_point_is_fitted_on_the_training_rows(tiny_benchmark):
    torch.manual_seed(0)
    embedder = UniversalEmbedderModel(
        UniversalEmbedderConfig(
            backbone="resnet10t", image_size=32, embed_dim=8, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
    ).eval()
    dim = 4
    # A cap above the training-set size: every training row is used, so no sampling is involved.
    forms = starting_point_embedders(embedder, tiny_benchmark, pca_dim=dim, max_fit_images=10**6)
    head = forms[f"pca{dim}"].head
    weight = head.weight.detach().double().numpy()
    bias = head.bias.detach().double().numpy()

    full = full_feature_embedder(embedder)

    def features_of(split: str) -> np.ndarray:
        rows = concatenate_datasets(
            [tiny_benchmark.domains[name][split].select_columns(["image"]) for name in tiny_benchmark.domains]
        )
        return embed_dataset(full, rows, default_transform(full)).double().numpy()

    train_projector, train_mean = hand_pca_subspace(features_of("train"), dim)
    np.testing.assert_allclose(weight.T @ weight, train_projector, atol=1e-4)
    np.testing.assert_allclose(bias, -weight @ train_mean, atol=1e-4)
    # The test rows give another subspace: the comparison above can tell the splits apart.
    test_projector, _ = hand_pca_subspace(features_of("test"), dim)
    assert np.abs(test_projector - train_projector).max() > 1e-2


# ----------------------------------------------------------------------------- dynamic sampling

DOMAINS = ["a", "b"]


class RecordingUdonLoss(UdonLoss):
    """UDON's loss, remembering the teacher and student losses of every training batch."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple[int, float, float]] = []

    def forward(self, model, inputs):
        losses = super().forward(model, inputs)
        if model.training:
            self.seen.append(
                (
                    int(inputs["domain_ids"][0]),
                    float(losses["loss_teacher"].detach()),
                    float(losses["loss_student"].detach()),
                )
            )
        return losses


def test_dynamic_sampler_is_fed_the_teacher_loss_of_the_batches_it_yielded(tmp_path):
    torch.manual_seed(0)
    model = UdonModel(
        UdonConfig(
            backbone="vit_tiny_patch16_224",
            backbone_kwargs=dict(img_size=16, patch_size=8, depth=1),
            image_size=16,
            domains=DOMAINS,
            num_classes=[2, 3],
        )
    )
    gen = torch.Generator().manual_seed(0)
    domain_ids = [0] * 16 + [1] * 16
    rows = Dataset.from_dict(
        {
            "pixel_values": torch.randn(32, 3, 16, 16, generator=gen).tolist(),
            "labels": [i % 2 if d == 0 else i % 3 for i, d in enumerate(domain_ids)],
            "domain_ids": domain_ids,
        }
    ).with_format("torch")
    args = UdonTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=6,
        sampling_strategy="dynamic",
        sampling_update_every=100,  # one window: its totals are the sums over every trained batch
        backbone_frozen_epochs=0,
        learning_rate=1e-2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        plot_sampling_curves=False,
        seed=0,
    )
    loss = RecordingUdonLoss()
    trainer = UdonTrainer(model=model, args=args, train_dataset=rows, loss=loss)
    trainer.train()
    assert len(loss.seen) == 6
    window = trainer._train_batch_sampler.state_dict()["window_losses"][0]
    for domain_id in range(len(DOMAINS)):
        teacher = [t for d, t, _ in loss.seen if d == domain_id]
        student = [s for d, _, s in loss.seen if d == domain_id]
        assert window[domain_id][1] == len(teacher) == 3  # round-robin first window
        assert window[domain_id][0] == pytest.approx(sum(teacher), rel=1e-6)
        # The two signals differ enough for the check above to tell them apart.
        assert abs(sum(student) - sum(teacher)) > 1e-3


# ---------------------------------------------------------------------------- seeded augmentation


def check_epochs_draw_their_own_crops(seen: list[dict], rows: int) -> None:
    """Epoch e read the crops seeded with e (a second reading of the same data), so the two epochs differ."""
    by_key = {(entry["epoch"], entry["index"]): torch.tensor(entry["x"]) for entry in seen}
    assert len(by_key) == len(seen) and set(by_key) == {(e, i) for e in (0, 1) for i in range(rows)}
    reference = SeededAugmentationDataset(noisy_rows(), seed=0)
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        for index in range(rows):
            assert torch.equal(by_key[(epoch, index)], reference[index]["x"]), (epoch, index)
    for index in range(rows):
        assert not torch.equal(by_key[(0, index)], by_key[(1, index)]), index


def test_every_epoch_draws_new_seeded_augmentation_on_one_process(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
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
    check_epochs_draw_their_own_crops(loss.seen, ROWS)


@pytest.mark.slow
def test_every_epoch_draws_new_seeded_augmentation_on_two_processes(tmp_path):
    # With two processes accelerate's set_epoch stops at the sharded sampler and never reaches the training set:
    # only the trainer's epoch callback tells it (on one process accelerate happens to do it as well).
    script = REPO / "tests" / "launch_scripts" / "seeded_augmentation_epochs.py"
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--main_process_port",
        "0",  # a free port: pytest-xdist may run two launches at once
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(script),
        str(tmp_path),
    ]
    # PYTHONPATH: the launched processes import this checkout's hf_distill, whatever the install points to.
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    seen = [
        entry for rank in (0, 1) for entry in json.loads((tmp_path / f"seen_rank{rank}.json").read_text())
    ]
    check_epochs_draw_their_own_crops(seen, ROWS)


# ------------------------------------------------------------------------------------- model card


def test_model_index_names_the_split_the_metrics_were_measured_on(tmp_path):
    model = UniversalEmbedderModel(
        UniversalEmbedderConfig(
            backbone="resnet10t", image_size=32, embed_dim=8, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
    )
    metrics = {"merged/digits/R@1": 0.5, "merged/digits/mP@5": 0.25, "merged/mean/R@1": 0.5}
    for eval_split in ("test", "holdout"):
        data = EmbedderCardData(method="udon", metrics=metrics, eval_split=eval_split, validation_split="val")
        card = data.to_model_card(model)
        path = tmp_path / f"{eval_split}.md"
        card.save(path)
        # Read back from the file's YAML: what the Hub shows.
        results = ModelCard.load(path).data.eval_results
        assert len(results) == 3
        assert {result.dataset_split for result in results} == {eval_split}
        assert "split: val" not in path.read_text()


# --------------------------------------------------------------------------------------- registry


def test_every_method_is_registered_with_its_own_training_arguments(tmp_path):
    expected = {"udon": UdonTrainingArguments, "unic": UnicTrainingArguments, "mlfd": MlfdTrainingArguments}
    assert set(registered_methods()) == set(expected)
    for name, arguments_class in expected.items():
        assert get_method(name).training_arguments_class is arguments_class, name
    # The trainer's check reads the registry: the shared base class is refused.
    base = DistillationTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(TypeError, match="MlfdTrainingArguments"):
        MlfdTrainer(model=resnet_student(), args=base)


# ----------------------------------------------------------------------------------------- export


def test_exported_mlfd_student_keeps_trained_batchnorm_statistics(tmp_path):
    model = resnet_student()
    model.backbone_norm = "train"
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(shifted_pixels(seed))
    model.eval()
    batchnorms = [module for module in model.backbone.modules() if isinstance(module, nn.BatchNorm2d)]
    # Trained statistics, unlike the 0 / 1 of a fresh layer.
    assert all(bn.running_mean.abs().max() > 1e-2 for bn in batchnorms)
    assert all((bn.running_var - 1).abs().max() > 1e-2 for bn in batchnorms)
    pixels = shifted_pixels(10, count=4)
    with torch.no_grad():
        expected = F.normalize(model(pixels).pooled_features, dim=-1)
        embedder = model.export_embedder()
        torch.testing.assert_close(embedder(pixel_values=pixels).embeddings, expected)
        embedder.save_pretrained(tmp_path)
        reloaded = UniversalEmbedderModel.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(reloaded(pixel_values=pixels).embeddings, expected)
