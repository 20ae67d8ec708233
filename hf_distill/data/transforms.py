"""Image preprocessing: PIL image -> normalised float tensor, and the ``datasets`` transform that applies it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from datasets import Dataset, DatasetDict
from PIL import Image
from torchvision.transforms import v2

from hf_distill.data.decoding import to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageTransform:
    """PIL image -> ``(3, image_size, image_size)`` float tensor, normalised.

    Training (as UDON: resize to a square, random crop, horizontal flip): resize to
    ``resize_size x resize_size``, random ``image_size`` crop, flip with probability 0.5. Evaluation: resize
    the short side to ``resize_size``, centre crop ``image_size``. Every image is first made 8-bit RGB
    (greyscale, palette, transparent, 16-bit, CMYK), see ``hf_distill.data.decoding.to_rgb``.

    Args:
        image_size: side of the output.
        mean / std: per-channel normalisation of the backbone's pretraining.
        train: random augmentation (True) or the deterministic evaluation path (False).
        resize_size: side resized to before cropping; default ``round(image_size * 256 / 224)``, the
            256 -> 224 ratio of the UDON recipe.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = False,
        resize_size: int | None = None,
    ):
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
        if any(value <= 0 for value in std):
            raise ValueError(f"std values must be positive, got {list(std)}")
        self.image_size = image_size
        self.resize_size = resize_size if resize_size is not None else round(image_size * 256 / 224)
        if self.resize_size < image_size:
            raise ValueError(f"resize_size ({self.resize_size}) must be at least image_size ({image_size})")
        self.mean = tuple(float(value) for value in mean)
        self.std = tuple(float(value) for value in std)
        self.train = train
        if train:
            geometry = [
                v2.Resize((self.resize_size, self.resize_size), antialias=True),
                v2.RandomCrop(image_size),
                v2.RandomHorizontalFlip(),
            ]
        else:
            geometry = [v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(image_size)]
        self._pipeline = v2.Compose(
            [
                v2.PILToTensor(),
                *geometry,
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self._pipeline(to_rgb(image))

    def __repr__(self) -> str:
        return (
            f"ImageTransform(image_size={self.image_size}, resize_size={self.resize_size}, "
            f"train={self.train}, mean={self.mean}, std={self.std})"
        )


def with_pixel_values(
    dataset: Dataset | DatasetDict,
    transform: ImageTransform,
    domain_to_id: Mapping[str, int] | None = None,
) -> Dataset | DatasetDict:
    """Return ``dataset`` with an on-the-fly transform yielding ``pixel_values`` and ``labels``.

    Rows come out as ``{"pixel_values": tensor, "labels": label}`` plus ``"domain_ids"`` when
    ``domain_to_id`` is given; the stored data is untouched (``datasets`` ``with_transform``).

    Args:
        dataset: a split (or splits) with columns ``image``, ``label`` and ``domain``.
        transform: applied to every decoded image.
        domain_to_id: domain name -> integer id; a domain missing from it raises a ``KeyError``.
    """

    def apply(batch: dict) -> dict:
        output = {"pixel_values": [transform(image) for image in batch["image"]], "labels": batch["label"]}
        if domain_to_id is not None:
            unknown = sorted(set(batch["domain"]) - set(domain_to_id))
            if unknown:
                raise KeyError(f"domain(s) {unknown} missing from domain_to_id {dict(domain_to_id)}")
            output["domain_ids"] = [domain_to_id[name] for name in batch["domain"]]
        return output

    return dataset.with_transform(apply)
