"""Training throughput of a UDON, UNIC and MLFD step against bare timm forward + backward of the same backbone.

    HF_HUB_OFFLINE=1 python benchmarks/bench_train_throughput.py [--vit vit_tiny_patch16_224] [--cnn resnet18]
        [--image-size 224] [--batch-size 8] [--steps 3] [--dtype float32|bfloat16|float16] [--device cuda]

GPU (the figure the issue asks for; ViT-B/16 at 224 px in bf16):

    HF_HUB_OFFLINE=1 python benchmarks/bench_train_throughput.py --vit vit_base_patch16_224 --cnn resnet50 \\
        --batch-size 128 --steps 20 --dtype bfloat16

Each step is ``trainer.compute_loss`` (the method's whole loss, the trainer's bookkeeping included) + backward
+ AdamW step, on batches already on the device, under ``torch.autocast`` when ``--dtype`` is a half type (as
the Trainer's ``bf16``/``fp16``). The limit is the same backbone alone (timm, ``num_classes=0``): forward, a
mean-square loss on its features, backward, AdamW. Steps alternate between the method and its limit; the
figure is the median over ``--steps`` steps after one warm-up each.

- UDON: ``UdonModel`` on the ViT with 2 domains of 1,000 classes (embedding and teacher heads, cosine
  classifiers, logit and relational distillation);
- UNIC: ``UnicStudentModel`` (the ViT and its projector ladders) distilled from the cache: the targets of two
  ViT-B-shaped teachers (768-d CLS + patch tokens) are already on the device, as in a feature-cache run;
- MLFD: stage-4 student (``MlfdClassifierModel`` on the CNN) with a frozen joint teacher on cached 512-channel
  teacher maps (cross-entropy, soft cross-entropy and multi-level MSE).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time

import timm
import torch
from table import emit_row, load_average

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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _common_args(output_dir: str, device: torch.device) -> dict:
    return dict(
        output_dir=output_dir, report_to="none", use_cpu=device.type == "cpu", remove_unused_columns=False
    )


def udon_case(args, device, output_dir):
    config = UdonConfig(
        backbone=args.vit, domains=["a", "b"], num_classes=[1000, 1000], image_size=args.image_size
    )
    model = UdonModel(config)
    trainer = UdonTrainer(model=model, args=UdonTrainingArguments(**_common_args(output_dir, device)))
    batch = {
        "pixel_values": torch.randn(args.batch_size, 3, args.image_size, args.image_size),
        "labels": torch.randint(0, 1000, (args.batch_size,)),
        "domain_ids": torch.zeros(args.batch_size, dtype=torch.long),
    }
    return model, trainer, batch, args.vit


def unic_case(args, device, output_dir):
    grid = args.image_size // 16
    shape = {"global_dim": 768, "token_dim": 768, "grid": [grid, grid]}
    config = UnicStudentConfig(
        backbone=args.vit, image_size=args.image_size, teachers={"dino": dict(shape), "deit3": dict(shape)}
    )
    model = UnicStudentModel(config)
    trainer = UnicTrainer(model=model, args=UnicTrainingArguments(**_common_args(output_dir, device)))
    batch = {"images": torch.rand(args.batch_size, 3, args.image_size, args.image_size)}
    for name in ("dino", "deit3"):
        batch[f"{name}__cls"] = torch.randn(args.batch_size, 768)
        batch[f"{name}__patch"] = torch.randn(args.batch_size, grid * grid, 768)
    return model, trainer, batch, args.vit


def mlfd_case(args, device, output_dir):
    student = MlfdClassifierModel(
        MlfdClassifierConfig(
            backbone=args.cnn,
            image_size=args.image_size,
            num_classes=1000,
            dataset="d",
            distill_channels=[256],
        )
    )
    grid = max(1, args.image_size // 32)
    joint = JointTeacherModel(
        JointTeacherConfig(
            teacher_names=["t"],
            teacher_channels=[512],
            teacher_grids=[[grid, grid]],
            datasets=["d"],
            num_classes=[1000],
            adaptor_channels=256,
            out_channels=256,
            spatial_size=[grid, grid],
        )
    ).eval()
    trainer = MlfdTrainer(
        model=student, args=MlfdTrainingArguments(**_common_args(output_dir, device)), loss=MlfdLoss(joint)
    )
    batch = {
        "pixel_values": torch.randn(args.batch_size, 3, args.image_size, args.image_size),
        "labels": torch.randint(0, 1000, (args.batch_size,)),
        "domain_ids": torch.zeros(args.batch_size, dtype=torch.long),
        "maps_t": torch.randn(args.batch_size, 512, grid, grid),
    }
    return student, trainer, batch, args.cnn


def timed_steps(functions: dict, steps: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call, calls alternating between the functions, one warm-up each."""
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    for _ in range(steps):
        for name, function in functions.items():
            _synchronize(device)
            start = time.perf_counter()
            function()
            _synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vit", default="vit_tiny_patch16_224", help="backbone of the UDON and UNIC steps")
    parser.add_argument("--cnn", default="resnet18", help="backbone of the MLFD student")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["udon", "unic", "mlfd"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"device: {name}; dtype {args.dtype}; load average before: {load_average():.1f}")

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    cases = {"udon": udon_case, "unic": unic_case, "mlfd": mlfd_case}
    with tempfile.TemporaryDirectory() as output_dir:
        for method in args.methods:
            torch.manual_seed(0)
            model, trainer, batch, backbone = cases[method](args, device, output_dir)
            model.to(device).train()
            batch = {key: value.to(device) for key, value in batch.items()}
            bare = timm.create_model(backbone, pretrained=False, num_classes=0).to(device).train()
            method_optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            bare_optimizer = torch.optim.AdamW(bare.parameters(), lr=1e-5)
            pixels = batch.get("pixel_values", batch.get("images"))

            def method_step(model=model, trainer=trainer, batch=batch, optimizer=method_optimizer):
                with autocast():
                    loss = trainer.compute_loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            def bare_step(bare=bare, pixels=pixels, optimizer=bare_optimizer):
                with autocast():
                    loss = bare(pixels).float().pow(2).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            seconds = timed_steps({"method": method_step, "bare": bare_step}, args.steps, device)
            method_rate = args.batch_size / seconds["method"]
            bare_rate = args.batch_size / seconds["bare"]
            print(
                f"{method.upper()} on {backbone} at {args.image_size} px, batch {args.batch_size}: "
                f"{method_rate:,.1f} images/s; bare timm fwd+bwd {bare_rate:,.1f} images/s"
            )
            emit_row(
                f"{method.upper()} train step ({backbone}, {args.image_size} px, {args.dtype})",
                method_rate,
                "bare timm fwd+bwd+AdamW",
                bare_rate,
                "img/s",
                1.1 if method == "udon" else None,
                higher_is_better=True,
                note=f"{name}, batch {args.batch_size}, median of {args.steps} interleaved steps, "
                f"load {load_average():.1f}",
            )
    print(f"load average after: {load_average():.1f}")


if __name__ == "__main__":
    main()
