"""Readers of the offline benchmark's sources: each turns installed files into labelled images.

A reader raises ``SourceUnavailable`` when its files are not installed; the builder
(``hf_distill.data.benchmark``) then skips the domain with a logged message. Two shapes come back:

- ``LabelledImages``: many greyscale images with integer labels (MNIST-like sources);
- ``ViewSource``: classes each with a few *views* (a character in several typefaces, an emoji by several
  vendors), rendered on demand at the requested size so that only the images a split needs are drawn.
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[3]
NPM_DIR = Path(os.environ.get("HF_DISTILL_NPM_DIR", REPO_ROOT / ".assets/npm/node_modules"))


class SourceUnavailable(RuntimeError):
    """A benchmark source is not installed on this machine; its domain is skipped."""


@dataclass
class LabelledImages:
    """Greyscale images of one source with integer labels ``0 .. len(class_names)-1``."""

    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64
    class_names: tuple[str, ...]


@dataclass
class ViewSource:
    """Classes with a few views each, drawn on demand.

    Args:
        class_names: one name per class.
        views: per class, the ids of its available views (indices into ``view_names``).
        view_names: what a view id stands for (a typeface, a vendor, a word).
        render: ``render(class_index, view_id, size)`` -> RGB ``PIL.Image`` of ``size x size``. It must be
            deterministic and must not share mutable state between calls: the builder runs it in threads.
    """

    class_names: tuple[str, ...]
    views: list[tuple[int, ...]]
    view_names: tuple[str, ...]
    render: Callable[[int, int, int], Image.Image]


def package_dir(package: str) -> Path:
    """Directory of an installed Python package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceUnavailable(f"the Python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def npm_package(name: str, npm_dir: Path | None = None) -> Path:
    """Folder of an npm package installed by ``scripts/install_assets.sh`` (``$HF_DISTILL_NPM_DIR`` overrides)."""
    root = (NPM_DIR if npm_dir is None else Path(npm_dir)) / name
    if not (root / "package.json").is_file():
        raise SourceUnavailable(
            f"the npm package {name!r} is not installed under {root.parent} (run `bash scripts/install_assets.sh`)"
        )
    return root


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image (fixed compression level: identical input gives identical bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def fit_on_white(image: Image.Image, size: int, margin: int = 0) -> Image.Image:
    """Scale ``image`` (any mode, alpha composited on white) to fit ``size - 2*margin`` and centre it on white RGB."""
    if image.mode in ("P", "LA", "L") or "transparency" in image.info:
        image = image.convert("RGBA")
    box = size - 2 * margin
    scale = min(box / image.width, box / image.height)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    offset = ((size - width) // 2, (size - height) // 2)
    if image.mode == "RGBA":
        canvas.paste(image, offset, image)
    else:
        canvas.paste(image.convert("RGB"), offset)
    return canvas
