"""Robust image decoding: every readable file becomes an RGB ``PIL.Image``; unreadable ones are reported by path.

Real image collections contain greyscale, palette, transparent, 16-bit and CMYK files next to corrupt,
truncated, empty and non-image files. ``to_rgb`` normalises the first group; ``check_image_file`` turns the
second into an ``ImageDecodeError`` that names the file, which the domain loaders raise or count.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

OnBadImage = Literal["raise", "skip"]

# EXIF tag holding the camera's orientation (1 = upright).
ORIENTATION_TAG = 0x0112

# How many offending paths a DecodeReport keeps; the count itself is always exact.
MAX_REPORTED_PATHS = 50


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded.

    Args:
        path: the offending file.
        reason: what went wrong (empty file, not an image, truncated data ...).
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"cannot decode image {self.path}: {reason}. Fix or delete the file, or pass "
            "on_bad_image='skip' to skip unreadable images and count them."
        )


@dataclass
class DecodeReport:
    """What happened while checking a collection of image files.

    Args:
        num_checked: files looked at.
        num_skipped: files skipped because they could not be decoded.
        skipped: ``(path, reason)`` of the first ``MAX_REPORTED_PATHS`` skipped files.
    """

    num_checked: int = 0
    num_skipped: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add_skipped(self, error: ImageDecodeError) -> None:
        """Count one unreadable file (and remember its path while there is room)."""
        self.num_skipped += 1
        if len(self.skipped) < MAX_REPORTED_PATHS:
            self.skipped.append((error.path, error.reason))

    def merge(self, other: DecodeReport) -> None:
        """Add another report's counts into this one."""
        self.num_checked += other.num_checked
        self.num_skipped += other.num_skipped
        room = MAX_REPORTED_PATHS - len(self.skipped)
        self.skipped.extend(other.skipped[: max(room, 0)])

    def to_dict(self) -> dict:
        """A JSON-ready summary, for run summaries and model cards."""
        return {"num_checked": self.num_checked, "num_skipped": self.num_skipped, "skipped": self.skipped}


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map an integer or float image array onto 0..255 by its dtype's (or data's) range."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        # PIL reads 16-bit PNG/TIFF as "I;16" or as 32-bit "I"; both hold values up to 65535.
        # A 32-bit "I" image has no bit depth of its own: values above 255 say it came from 16 bits.
        sixteen_bit = array.dtype.itemsize == 2 or array.max(initial=0) > 255
        top = 65535.0 if sixteen_bit else 255.0
        return np.clip(np.round(array.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    # Float images ("F" mode) are taken to lie in [0, 1] when they do, otherwise in [0, 255].
    scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
    return np.clip(np.round(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an 8-bit RGB version of ``image``.

    The EXIF orientation is applied first (a rotated phone photo comes out upright). Greyscale is replicated
    over the channels, palette images are expanded (with their transparency),
    transparent images are composited on white, 16-bit and 32-bit integer images are scaled from their
    full range (PIL's own conversion would clip them at 255) and CMYK is converted by PIL.

    Args:
        image: any ``PIL.Image``.
    """
    if image.getexif().get(ORIENTATION_TAG, 1) != 1:
        # Phone cameras store the sensor's pixels plus a rotation tag; apply it, or photos come out sideways.
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = _scale_to_uint8(np.asarray(image))
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def check_image_file(path: str | os.PathLike) -> Image.Image:
    """Decode the image at ``path`` fully and return it as RGB.

    Args:
        path: an image file.

    Raises:
        ImageDecodeError: the file is empty, missing, not an image, corrupt or truncated.
    """
    try:
        data = open(path, "rb").read()
    except OSError as error:
        raise ImageDecodeError(path, f"cannot read the file ({error.strerror or error})") from error
    return decode_image_bytes(data, path)


def decode_image_bytes(data: bytes, path: str | os.PathLike = "<bytes>") -> Image.Image:
    """Decode encoded image ``data`` fully and return it as RGB.

    Args:
        data: the encoded file content.
        path: where the bytes came from, for the error message.

    Raises:
        ImageDecodeError: the data is empty, not an image, corrupt or truncated.
    """
    if not data:
        raise ImageDecodeError(path, "the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            # load() reads every pixel, so a truncated file fails here rather than later in a DataLoader.
            image.load()
            return to_rgb(image)
    except UnidentifiedImageError as error:
        raise ImageDecodeError(path, "not an image file PIL can identify") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(path, f"corrupt or truncated image data ({error})") from error


def check_image_files(
    paths: list[str], on_bad_image: OnBadImage = "raise", context: str = ""
) -> tuple[list[bool], DecodeReport]:
    """Check that every file decodes; return a keep-mask and a report.

    Args:
        paths: image files.
        on_bad_image: ``"raise"`` raises the first ``ImageDecodeError``; ``"skip"`` marks the file as
            dropped and counts it.
        context: words naming the collection (e.g. ``"domain 'cars', split 'train'"``) for the log.
    """
    if on_bad_image not in ("raise", "skip"):
        raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
    report = DecodeReport()
    keep = []
    for path in paths:
        report.num_checked += 1
        try:
            check_image_file(path)
        except ImageDecodeError as error:
            if on_bad_image == "raise":
                raise
            report.add_skipped(error)
            keep.append(False)
            continue
        keep.append(True)
    if report.num_skipped:
        logger.warning(
            "skipped %d of %d unreadable images%s, e.g. %s",
            report.num_skipped,
            report.num_checked,
            f" in {context}" if context else "",
            "; ".join(f"{path} ({reason})" for path, reason in report.skipped[:3]),
        )
    return keep, report
