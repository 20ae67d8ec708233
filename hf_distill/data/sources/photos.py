"""Photographs for the instance-level domain: scikit-image / scikit-learn samples and Debian wallpapers.

A class is one textured square region of one photograph; its images are varied crops of that region
(scale, shift, flip, colour jitter): augmentation adds views of a real region, it never invents a class.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from hf_distill.data.sources import SourceUnavailable, encode_png

logger = logging.getLogger(__name__)

# skimage.data images shipped inside the scikit-image wheel (others are fetched at run time) that are
# photographs or micrographs with enough texture to tell regions apart.
SKIMAGE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
)


def load_photos() -> list[tuple[str, Image.Image]]:
    """The photographs inside the scikit-image wheel and scikit-learn's two sample images, as RGB."""
    photos = []
    try:
        import skimage.data
    except ImportError:
        logger.info("scikit-image is not installed; photos come from scikit-learn only")
    else:
        for name in SKIMAGE_PHOTOS:
            try:
                array = getattr(skimage.data, name)()
            except Exception as error:  # a missing file makes skimage try a download, which fails offline
                logger.info("skimage.data.%s unavailable (%s); skipped", name, error)
                continue
            photos.append(
                (f"skimage:{name}", Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB"))
            )
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        logger.info("scikit-learn is not installed; photos come from scikit-image only")
    else:
        bunch = load_sample_images()
        for filename, array in zip(bunch.filenames, bunch.images):
            photos.append((f"sklearn:{Path(filename).stem}", Image.fromarray(array).convert("RGB")))
    if not photos:
        raise SourceUnavailable("neither scikit-image nor scikit-learn sample photographs are installed")
    return photos


def photo_regions(photos: list[tuple[str, Image.Image]]) -> list[tuple[int, int, int, int]]:
    """Candidate regions ``(photo index, x, y, side)``: a grid of squares over each photo, textured ones only."""
    regions = []
    for photo_index, (_, photo) in enumerate(photos):
        width, height = photo.size
        side = max(48, min(width, height) // 4)
        grey = np.asarray(photo.convert("L"), dtype=np.float64)
        for y in range(0, height - side + 1, side):
            for x in range(0, width - side + 1, side):
                # Flat regions (sky, black borders) would make classes no model can tell apart.
                if grey[y : y + side, x : x + side].std() >= 12.0:
                    regions.append((photo_index, x, y, side))
    return regions


def photo_crop(
    photo: Image.Image, region: tuple[int, int, int, int], rng: np.random.Generator, size: int
) -> bytes:
    """One sample of a region: scaled, shifted, maybe flipped, colour-jittered crop resized to ``size``."""
    _, x, y, side = region
    width, height = photo.size
    crop = min(side * rng.uniform(0.75, 1.25), width, height)
    centre_x = x + side / 2 + rng.uniform(-0.15, 0.15) * side
    centre_y = y + side / 2 + rng.uniform(-0.15, 0.15) * side
    left = float(np.clip(centre_x - crop / 2, 0, width - crop))
    top = float(np.clip(centre_y - crop / 2, 0, height - crop))
    image = photo.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + crop, top + crop))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float64)
    brightness, contrast, saturation = rng.uniform(0.8, 1.2, size=3)
    pixels = pixels * brightness
    pixels = (pixels - pixels.mean()) * contrast + pixels.mean()
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = grey + (pixels - grey) * saturation
    return encode_png(Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="RGB"))


WALLPAPER_DIRS = tuple(
    Path(path)
    for path in os.environ.get("HF_DISTILL_WALLPAPER_DIRS", "/usr/share/wallpapers").split(os.pathsep)
)
# Longest side the wallpapers are reduced to before regions are cut: keeps the crops' scale comparable to the
# scikit-image photographs (300-1000 px) and the decoding cheap.
WALLPAPER_SIDE = 1024


def load_wallpapers(roots: tuple[Path, ...] | None = None) -> list[tuple[str, Image.Image]]:
    """Wallpapers of Debian packages (``plasma-workspace-wallpapers``: ``<root>/<Name>/contents/images/*``).

    One image per wallpaper (its smallest rendition, light variant), reduced to ``WALLPAPER_SIDE``, as RGB.
    """
    roots = WALLPAPER_DIRS if roots is None else roots
    photos = []
    for root in roots:
        if not root.is_dir():
            continue
        for folder in sorted(path for path in root.iterdir() if (path / "contents" / "images").is_dir()):
            files = sorted(
                (
                    f
                    for f in (folder / "contents" / "images").iterdir()
                    if f.suffix.lower() in (".jpg", ".png")
                ),
                key=lambda f: (f.stat().st_size, f.name),
            )
            if not files:
                continue
            with Image.open(files[0]) as image:
                image.draft("RGB", (WALLPAPER_SIDE, WALLPAPER_SIDE))
                image = image.convert("RGB")
            image.thumbnail((WALLPAPER_SIDE, WALLPAPER_SIDE), Image.Resampling.BILINEAR)
            photos.append((f"wallpaper:{folder.name}", image))
    if not photos:
        raise SourceUnavailable(
            f"no wallpaper under {[str(r) for r in roots]} "
            "(install them with `apt-get install -y plasma-workspace-wallpapers`)"
        )
    return photos
