"""ImageTransform and with_pixel_values: exact pixel values, crops, modes, and the datasets transform."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_distill.data.transforms import ImageTransform, with_pixel_values


def random_rgb(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def test_eval_transform_normalises_a_constant_image_exactly():
    transform = ImageTransform(16, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    output = transform(Image.new("RGB", (40, 30), (255, 0, 51)))
    assert output.shape == (3, 16, 16) and output.dtype == torch.float32
    expected = torch.tensor([(1.0 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, 0.2])
    torch.testing.assert_close(output[:, 5, 7], expected)
    torch.testing.assert_close(output, expected[:, None, None].expand(3, 16, 16))


def test_eval_transform_is_a_centre_crop_when_no_resize_is_needed():
    pixels = random_rgb(40)
    output = ImageTransform(32, mean=(0, 0, 0), std=(1, 1, 1), resize_size=40)(Image.fromarray(pixels))
    expected = torch.from_numpy(pixels[4:36, 4:36]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(output, expected)


def test_train_transform_yields_a_crop_or_its_mirror():
    pixels = random_rgb(34, seed=1)
    transform = ImageTransform(32, mean=(0, 0, 0), std=(1, 1, 1), train=True, resize_size=34)
    candidates = []
    for top in range(3):
        for left in range(3):
            crop = torch.from_numpy(pixels[top : top + 32, left : left + 32]).permute(2, 0, 1).float() / 255
            candidates += [crop, crop.flip(-1)]
    torch.manual_seed(0)
    outputs = [transform(Image.fromarray(pixels)) for _ in range(40)]
    matches = [
        min(range(len(candidates)), key=lambda i: (out - candidates[i]).abs().max()) for out in outputs
    ]
    for output, match in zip(outputs, matches):
        torch.testing.assert_close(output, candidates[match])
    # 40 draws over 18 equally likely crops: both flips and several offsets show up.
    assert len(set(matches)) > 4 and {m % 2 for m in matches} == {0, 1}


@pytest.mark.parametrize(
    ("image", "value"),
    [
        (Image.new("L", (8, 8), 51), 0.2),
        (Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)), 1.0),  # 16-bit, not clipped at 255
        (Image.new("RGBA", (8, 8), (0, 0, 0, 0)), 1.0),  # fully transparent -> white background
    ],
)
def test_any_mode_becomes_three_equal_channels(image, value):
    output = ImageTransform(8, mean=(0, 0, 0), std=(1, 1, 1), resize_size=8)(image)
    torch.testing.assert_close(output, torch.full((3, 8, 8), value))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="resize_size"):
        ImageTransform(32, resize_size=16)
    with pytest.raises(ValueError, match="mean and std"):
        ImageTransform(32, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="std"):
        ImageTransform(32, std=(1.0, 0.0, 1.0))


def test_with_pixel_values_on_a_benchmark_split(tiny_benchmark):
    split = tiny_benchmark.domains["digits"]["test"]
    transform = ImageTransform(32, resize_size=32)
    transformed = with_pixel_values(split, transform, domain_to_id={"clothing": 0, "digits": 1})
    assert split.format["type"] is None  # the original split is left alone
    batch = transformed[:3]
    assert set(batch) == {"pixel_values", "labels", "domain_ids"}
    assert batch["labels"] == split["label"][:3] and batch["domain_ids"] == [1, 1, 1]
    torch.testing.assert_close(batch["pixel_values"][2], transform(split[2]["image"]))
    without_ids = with_pixel_values(split, transform)[0]
    assert set(without_ids) == {"pixel_values", "labels"}
    with pytest.raises(KeyError, match="digits"):
        with_pixel_values(split, transform, domain_to_id={"clothing": 0})[0]
