"""Embedding throughput: the exported embedder against bare timm, and end-to-end embedding against the forward.

    HF_HUB_OFFLINE=1 python benchmarks/bench_embed.py [--backbone tf_efficientnet_lite0] [--image-size 32]
        [--batch-size 64] [--images 512] [--repeats 5] [--num-workers N] [--threads 2]

1. ``UniversalEmbedderModel`` forward (backbone, head, normalisation) against the bare timm backbone with the
   same weights on the same batch, in eval mode under ``torch.no_grad``; interleaved, median of ``--repeats``.
2. ``hf-distill embed`` end to end (``embed_folder``: find files, decode, preprocess with the saved processor,
   forward, write safetensors) over ``--images`` generated 400x300 JPEG photos-like images, with decoding in
   ``--num-workers`` DataLoader workers (default: one per spare core), against the forward alone on the same
   number of already preprocessed images, and the image processor alone. On a machine with spare cores the
   forward is the limit; on 2 shared cores decoding competes with the forward for the same cores.

Defaults: the EfficientNet-Lite0 embedder of the offline recipes at 32 px (resize 36), random weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from table import emit_row, interleaved_medians, load_average

from hf_distill.commands.embed import default_num_workers, embed_folder
from hf_distill.hub import save_embedder
from hf_distill.models.embedder import (
    UniversalEmbedderConfig,
    UniversalEmbedderImageProcessor,
    UniversalEmbedderModel,
)


def write_photos(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` 400x300 JPEGs with smooth content (so they compress and decode like photographs)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:300, 0:400] / 100.0
    for number in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        channels = [np.sin(x * (1 + c) + phase[c]) * np.cos(y * (2 - c / 2)) for c in range(3)]
        pixels = (np.stack(channels, axis=-1) * 100 + 128 + rng.normal(0, 8, (300, 400, 3))).clip(0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{number:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--resize-size", type=int, default=36)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=512, help="images of the end-to-end run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-workers", type=int, default=default_num_workers())
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {args.threads}; load average before: {load_average():.1f}")

    torch.manual_seed(0)
    config = UniversalEmbedderConfig(
        backbone=args.backbone, image_size=args.image_size, resize_size=args.resize_size, embed_dim=64
    )
    embedder = UniversalEmbedderModel(config).eval()
    bare = timm.create_model(args.backbone, pretrained=False, num_classes=0).eval()
    bare.load_state_dict(embedder.backbone.state_dict())
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size)

    with torch.no_grad():
        seconds = interleaved_medians(
            {"embedder": lambda: embedder(pixel_values=pixels), "timm": lambda: bare(pixels)}, args.repeats
        )
    forward_rate = args.batch_size / seconds["embedder"]
    print(
        f"forward, batch {args.batch_size} at {args.image_size} px: embedder {forward_rate:,.0f} images/s, "
        f"bare timm {args.batch_size / seconds['timm']:,.0f} images/s"
    )
    emit_row(
        f"UniversalEmbedderModel forward ({args.backbone}, {args.image_size} px)",
        forward_rate,
        "bare timm backbone",
        args.batch_size / seconds["timm"],
        "img/s",
        1 / 0.95,
        higher_is_better=True,
        note=f"batch {args.batch_size}, median of {args.repeats} interleaved, load {load_average():.1f}",
    )

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        save_embedder(embedder, work / "model")
        write_photos(work / "images", args.images)
        processor = UniversalEmbedderImageProcessor.from_model_config(config)
        photo = Image.open(work / "images" / "00000.jpg").convert("RGB")
        start = time.perf_counter()
        for _ in range(200):
            processor.process_one(photo)
        processor_rate = 200 / (time.perf_counter() - start)
        batches = -(-args.images // args.batch_size)
        # Forward alone over the same number of images, preprocessed already.
        with torch.no_grad():
            start = time.perf_counter()
            for _ in range(batches):
                embedder(pixel_values=pixels)
            forward_only = args.images / (time.perf_counter() - start)
        start = time.perf_counter()
        embed_folder(
            str(work / "model"),
            work / "images",
            work / "embeddings.safetensors",
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
        end_to_end = args.images / (time.perf_counter() - start)
    print(
        f"{args.images} JPEG 400x300: end to end {end_to_end:,.0f} images/s with {args.num_workers} workers; "
        f"forward alone {forward_only:,.0f} images/s; processor alone (decoded image) {processor_rate:,.0f} "
        "images/s"
    )
    emit_row(
        f"hf-distill embed end to end, 400x300 JPEG ({args.num_workers} workers)",
        end_to_end,
        "forward alone",
        forward_only,
        "img/s",
        None,
        higher_is_better=True,
        note=f"includes model load and file listing; processor alone {processor_rate:,.0f} img/s; "
        f"load {load_average():.1f}",
    )
    print(f"load average after: {load_average():.1f}")


if __name__ == "__main__":
    main()
