"""UniversalEmbedderImageProcessor: hand-computed values, equality with the evaluation transform, save/load."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from hf_distill.data.transforms import ImageTransform
from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderImageProcessor

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]


def test_grey_image_crop_and_normalisation_by_hand():
    # 6 wide x 4 high grey image; resize_size 4 = the short side, so only the centre crop acts:
    # left offset round((6 - 4) / 2) = 1, columns 1..4 are kept.
    values = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    processor = UniversalEmbedderImageProcessor(image_size=4, resize_size=4, image_mean=MEAN, image_std=STD)
    pixels = processor(Image.fromarray(values, mode="L"), return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 4, 4)
    kept = values[:, 1:5].astype(np.float32) / 255.0
    for channel in range(3):
        expected = (kept - MEAN[channel]) / STD[channel]
        np.testing.assert_allclose(pixels[0, channel].numpy(), expected, rtol=0, atol=1e-6)


def test_transparent_pixels_are_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    processor = UniversalEmbedderImageProcessor(image_size=4, image_mean=[0, 0, 0], image_std=[1, 1, 1])
    pixels = processor(Image.fromarray(rgba, mode="RGBA"), return_tensors="pt").pixel_values
    torch.testing.assert_close(pixels, torch.ones(1, 3, 4, 4))


@pytest.mark.parametrize(("image_size", "resize_size"), [(32, 32), (24, 37), (16, 20)])
def test_matches_evaluation_transform(image_size, resize_size):
    rng = np.random.default_rng(image_size)
    images = [
        Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L"),
        Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), mode="RGBA"),
        Image.fromarray(rng.integers(0, 65535, (33, 33), dtype=np.uint16)),
        Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), mode="P"),
    ]
    processor = UniversalEmbedderImageProcessor(
        image_size=image_size, resize_size=resize_size, image_mean=MEAN, image_std=STD
    )
    transform = ImageTransform(image_size, mean=MEAN, std=STD, train=False, resize_size=resize_size)
    batch = processor(images, return_tensors="pt").pixel_values
    assert batch.shape == (len(images), 3, image_size, image_size)
    for image, pixels in zip(images, batch):
        assert (pixels - transform(image)).abs().max().item() <= 1e-6, image.mode


def test_arrays_and_tensors_equal_pil_input():
    array = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    processor = UniversalEmbedderImageProcessor(image_size=16, resize_size=18)
    from_pil = processor(Image.fromarray(array), return_tensors="pt").pixel_values
    torch.testing.assert_close(processor(array, return_tensors="pt").pixel_values, from_pil)
    chw = torch.from_numpy(array).permute(2, 0, 1)
    torch.testing.assert_close(processor(chw, return_tensors="pt").pixel_values, from_pil)
    with pytest.raises(ValueError, match="uint8"):
        processor(array.astype(np.float32))
    with pytest.raises(ValueError, match="resize_size"):
        UniversalEmbedderImageProcessor(image_size=16, resize_size=8)


def test_from_model_config_and_auto_round_trip(tmp_path):
    config = UniversalEmbedderConfig(image_size=24, resize_size=28, image_mean=MEAN, image_std=STD)
    processor = UniversalEmbedderImageProcessor.from_model_config(config)
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, UniversalEmbedderImageProcessor)
    assert (loaded.image_size, loaded.resize_size, loaded.image_mean, loaded.image_std) == (24, 28, MEAN, STD)
    assert (tmp_path / "image_processing_embedder.py").is_file()


def test_nearest_resample_by_hand_and_config_field():
    # 2x2 grey image upsampled to 4x4 with nearest neighbour: every pixel becomes a 2x2 block.
    values = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    config = UniversalEmbedderConfig(
        image_size=4, resample="nearest", image_mean=[0, 0, 0], image_std=[1, 1, 1]
    )
    processor = UniversalEmbedderImageProcessor.from_model_config(config)
    pixels = processor(Image.fromarray(values, mode="L"), return_tensors="pt").pixel_values[0, 0]
    expected = np.kron(values.astype(np.float32) / 255.0, np.ones((2, 2), dtype=np.float32))
    np.testing.assert_allclose(pixels.numpy(), expected, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="lanczos"):
        UniversalEmbedderConfig(resample="lanczos")
