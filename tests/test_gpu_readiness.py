"""GPU-readiness switches on every method's trainer: ``torch_compile``, ``channels_last`` models and DataLoader
workers with ``persistent_workers`` train exactly as the plain eager, single-process run does.

Each method trains 3 steps twice from the same seed: plain, then compiled (``aot_eager`` backend, which traces
the model and its losses through dynamo and AOTAutograd like the GPU's inductor does, without a C++ compile),
with the model in ``channels_last`` memory format and batches loaded by 2 persistent worker processes. The
logged losses must agree.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from hf_distill.losses import MlfdLoss
from hf_distill.models.mlfd import (
    JointTeacherConfig,
    JointTeacherModel,
    MlfdClassifierConfig,
    MlfdClassifierModel,
)
from hf_distill.models.udon import UdonConfig, UdonModel
from hf_distill.models.unic import UnicStudentConfig, UnicStudentModel
from hf_distill.trainers.arguments import MlfdTrainingArguments, UdonTrainingArguments, UnicTrainingArguments
from hf_distill.trainers.mlfd import MlfdTrainer
from hf_distill.trainers.udon import UdonTrainer
from hf_distill.trainers.unic import UnicTrainer

pytestmark = pytest.mark.slow

TINY_VIT = dict(img_size=32, patch_size=8, depth=1)


class TensorRows(Dataset):
    """Rows of fixed random tensors (so that worker processes see the same data as the main process)."""

    def __init__(self, columns: dict[str, torch.Tensor]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: values[index] for name, values in self.columns.items()}


def udon(args):
    config = UdonConfig(
        backbone="vit_tiny_patch16_224", backbone_kwargs=TINY_VIT, domains=["a", "b"], num_classes=[5, 7],
        image_size=32,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    domain_ids = torch.arange(32) % 2
    data = TensorRows(
        {
            "pixel_values": torch.randn(32, 3, 32, 32, generator=generator),
            "labels": torch.randint(0, 5, (32,), generator=generator),
            "domain_ids": domain_ids,
        }
    )
    arguments = UdonTrainingArguments(**args, backbone_frozen_epochs=0, plot_sampling_curves=False)
    return UdonTrainer(
        model=UdonModel(config), args=arguments, train_dataset=data, train_domain_ids=domain_ids.tolist()
    )


def unic(args):
    shape = {"global_dim": 16, "token_dim": 24, "grid": [2, 2]}
    config = UnicStudentConfig(
        backbone_kwargs=dict(TINY_VIT, depth=2), image_size=32, teachers={"t1": shape, "t2": dict(shape)}
    )
    generator = torch.Generator().manual_seed(0)
    columns = {"images": torch.rand(32, 3, 32, 32, generator=generator)}
    for name in ("t1", "t2"):
        columns[f"{name}__cls"] = torch.randn(32, 16, generator=generator)
        columns[f"{name}__patch"] = torch.randn(32, 4, 24, generator=generator)
    return UnicTrainer(
        model=UnicStudentModel(config), args=UnicTrainingArguments(**args), train_dataset=TensorRows(columns)
    )


def mlfd(args):
    student = MlfdClassifierModel(
        MlfdClassifierConfig(
            backbone="resnet10t", image_size=32, num_classes=3, dataset="d", distill_channels=[8]
        )
    )
    joint = JointTeacherModel(
        JointTeacherConfig(
            teacher_names=["t"], teacher_channels=[6], teacher_grids=[[4, 4]], datasets=["d"], num_classes=[3],
            adaptor_channels=4, out_channels=8, spatial_size=[2, 2], dropout=0.0,
        )
    ).eval()  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    data = TensorRows(
        {
            "pixel_values": torch.randn(32, 3, 32, 32, generator=generator),
            "labels": torch.randint(0, 3, (32,), generator=generator),
            "domain_ids": torch.zeros(32, dtype=torch.long),
            "maps_t": torch.randn(32, 6, 4, 4, generator=generator),
        }
    )
    return MlfdTrainer(
        model=student, args=MlfdTrainingArguments(**args), train_dataset=data, loss=MlfdLoss(joint)
    )


def losses_of_run(build, tmp_path, fast: bool) -> list[float]:
    args = dict(
        output_dir=str(tmp_path / ("fast" if fast else "plain")),
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
    )
    if fast:
        args.update(
            torch_compile=True,
            torch_compile_backend="aot_eager",
            dataloader_num_workers=2,
            dataloader_persistent_workers=True,
        )
    torch.manual_seed(0)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    trainer = build(args)
    if fast:
        trainer.model.to(memory_format=torch.channels_last)
    trainer.train()
    if fast:
        # Dynamo traced graphs (the model was compiled) and the batches came from persistent workers.
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
        loader = trainer.get_train_dataloader()
        assert loader.num_workers == 2 and loader.persistent_workers
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("build", [udon, unic, mlfd], ids=["udon", "unic", "mlfd"])
def test_compile_channels_last_and_workers_train_like_the_plain_run(build, tmp_path):
    plain = losses_of_run(build, tmp_path, fast=False)
    fast = losses_of_run(build, tmp_path, fast=True)
    assert len(plain) == len(fast) == 3
    assert all(torch.isfinite(torch.tensor(plain)))
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=1e-4, atol=1e-5)
