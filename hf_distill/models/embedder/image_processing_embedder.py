"""Image processor of the universal embedder: the evaluation preprocessing, saved with every checkpoint.

Any mode → 8-bit RGB (grey replicated, transparency composited on white, 16-bit scaled), antialiased
(bilinear by default) resize of the shorter side to ``resize_size`` (aspect ratio kept), centre crop to ``image_size``,
scaling to [0, 1] and per-channel normalisation. It reproduces
``hf_distill.data.transforms.ImageTransform(train=False)`` exactly (same torchvision operations).

Self-contained on purpose (numpy, PIL, torch, torchvision — which timm requires — and transformers): it is
copied next to saved checkpoints for ``AutoImageProcessor.from_pretrained(dir, trust_remote_code=True)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

INTERPOLATION = {
    "bilinear": F.InterpolationMode.BILINEAR,
    "bicubic": F.InterpolationMode.BICUBIC,
    "nearest": F.InterpolationMode.NEAREST,
}
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _wide_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a 16/32-bit integer or float grey image onto 0..255 (PIL's own conversion would clip at 255)."""
    if np.issubdtype(array.dtype, np.integer):
        top = 65535.0 if array.max(initial=0) > 255 or array.dtype == np.uint16 else 255.0
        return np.clip(np.round(array.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
    return np.clip(np.round(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of ``image``: grey replicated, palettes expanded, transparency composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GREY_MODES:
        return Image.fromarray(_wide_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in _TRANSPARENT_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_pil(image: Any) -> Image.Image:
    """A PIL image, an ``(H, W[, C])`` uint8 array or a ``(C, H, W)`` uint8 tensor as an RGB PIL image."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4):
            image = np.moveaxis(image, 0, -1)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"numpy/tensor images must be uint8 (0-255), got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        return to_rgb(Image.fromarray(image))
    raise TypeError(f"unsupported image type {type(image).__name__}; pass PIL images or uint8 arrays")


class UniversalEmbedderImageProcessor(BaseImageProcessor):
    """Evaluation preprocessing of a universal embedder.

    It runs torchvision operations, so it is a ``"torchvision"``-backend processor (``BACKEND``) in the sense of
    ``AutoImageProcessor``: transformers 5 asks for the torchvision backend whenever torchvision is installed
    (timm needs it, so always here) and warns "Requested torchvision backend is not available. Falling back to
    pil backend" when a processor is registered under ``"pil"`` only.

    Args:
        image_size: side of the square centre crop.
        resize_size: the shorter side is resized to this first (``None``: ``image_size``).
        image_mean / image_std: per-channel normalisation.
        resample: resize interpolation, ``"bilinear"`` (default, as the evaluation transform), ``"bicubic"``
            or ``"nearest"``.
    """

    model_input_names = ["pixel_values"]
    BACKEND = "torchvision"

    @property
    def backend(self) -> str:
        """The backend this processor implements (``"torchvision"``), as transformers' own processors report."""
        return self.BACKEND

    def __init__(
        self,
        image_size: int = 224,
        resize_size: int | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        resample: str = "bilinear",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if resample not in INTERPOLATION:
            raise ValueError(f"resample={resample!r} is not one of {sorted(INTERPOLATION)}")
        self.resample = resample
        self.image_size = int(image_size)
        self.resize_size = int(resize_size) if resize_size is not None else self.image_size
        if self.image_size <= 0 or self.resize_size < self.image_size:
            raise ValueError(
                f"need 0 < image_size <= resize_size, got image_size={self.image_size}, resize_size={self.resize_size}"
            )
        self.image_mean = list(image_mean if image_mean is not None else [0.485, 0.456, 0.406])
        self.image_std = list(image_std if image_std is not None else [0.229, 0.224, 0.225])

    @classmethod
    def from_model_config(cls, config: Any) -> UniversalEmbedderImageProcessor:
        """Build the processor matching an embedder config (sizes, mean, std, resample)."""
        return cls(
            image_size=config.image_size,
            resize_size=config.resize_size,
            image_mean=config.image_mean,
            image_std=config.image_std,
            resample=getattr(config, "resample", "bilinear"),
        )

    def process_one(self, image: Any) -> torch.Tensor:
        """Preprocess one image into a ``(3, image_size, image_size)`` float32 tensor."""
        pixels = F.pil_to_tensor(_to_pil(image))
        # Same torchvision operations (antialiased bilinear resize of the uint8 tensor) as the training-side
        # evaluation transform, so both give bit-identical inputs.
        pixels = F.resize(pixels, [self.resize_size], INTERPOLATION[self.resample], antialias=True)
        pixels = F.center_crop(pixels, [self.image_size])
        pixels = F.to_dtype(pixels, torch.float32, scale=True)
        return F.normalize(pixels, self.image_mean, self.image_std)

    def preprocess(self, images: Any, return_tensors: str | None = None, **kwargs: Any) -> BatchFeature:
        """Preprocess one image or a list of images.

        Args:
            images: a PIL image / uint8 array, or a list of them.
            return_tensors: ``"pt"`` or ``"np"`` (``None``: a list of arrays).

        Returns:
            ``BatchFeature`` with ``pixel_values`` of shape ``(batch, 3, image_size, image_size)``.
        """
        if kwargs:
            raise TypeError(f"unexpected preprocessing arguments {sorted(kwargs)}")
        if not isinstance(images, list | tuple):
            images = [images]
        pixel_values = [self.process_one(image).numpy() for image in images]
        if return_tensors is not None:
            pixel_values = np.stack(pixel_values)
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)


__all__ = ["UniversalEmbedderImageProcessor"]
