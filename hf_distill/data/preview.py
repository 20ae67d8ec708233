"""A preview sheet of a benchmark: one row per domain, a few test classes with a few images each.

Run ``python -m hf_distill.data.preview data/manydomain docs/benchmark_preview.png``.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np
from datasets import Image as ImageFeature
from PIL import Image, ImageDraw

from hf_distill.data.benchmark import load_benchmark


def preview_sheet(
    benchmark_dir: str | os.PathLike,
    output: str | os.PathLike,
    split: str = "test",
    classes: int = 6,
    images_per_class: int = 3,
    tile: int = 48,
    seed: int = 0,
) -> Path:
    """Save a PNG grid: per domain a row of ``classes`` classes, ``images_per_class`` images each, side by side.

    Classes (the first ones with enough images) are separated by a gap; the domain name starts each row.

    Args:
        benchmark_dir: a built benchmark.
        output: the PNG file to write.
        split: which split to show (``test`` shows unseen classes).
        classes / images_per_class: grid shape per domain.
        tile: side of each image on the sheet.
        seed: which classes are shown.
    """
    benchmark = load_benchmark(benchmark_dir)
    label_width, gap = 96, tile // 4
    width = label_width + classes * (images_per_class * tile + gap)
    sheet = Image.new("RGB", (width, len(benchmark.domains) * (tile + gap) + gap), (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    rng = np.random.default_rng(seed)
    for row, (name, domain) in enumerate(benchmark.domains.items()):
        dataset = domain[split]
        labels = np.asarray(dataset["label"])
        counts = np.bincount(labels)
        candidates = np.flatnonzero(counts >= images_per_class)
        chosen = sorted(rng.choice(candidates, size=min(classes, len(candidates)), replace=False).tolist())
        raw = dataset.cast_column("image", ImageFeature(decode=False))
        top = gap + row * (tile + gap)
        draw.text((4, top + tile // 2 - 6), name, fill=(0, 0, 0))
        for column, label in enumerate(chosen):
            for k, index in enumerate(np.flatnonzero(labels == label)[:images_per_class]):
                with Image.open(io.BytesIO(raw[int(index)]["image"]["bytes"])) as image:
                    picture = image.convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR)
                left = label_width + column * (images_per_class * tile + gap) + k * tile
                sheet.paste(picture, (left, top))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output, optimize=True)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("benchmark", type=Path, help="a built benchmark directory")
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--split", default="test")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--images-per-class", type=int, default=3)
    args = parser.parse_args(argv)
    preview_sheet(args.benchmark, args.output, args.split, args.classes, args.images_per_class)
    return 0


if __name__ == "__main__":
    sys.exit(main())
