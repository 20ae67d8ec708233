"""Robust decoding: odd image modes become the right RGB pixels; unreadable files are reported by path."""

import io
import logging

import numpy as np
import pytest
from PIL import Image

from hf_distill.data.decoding import (
    MAX_REPORTED_PATHS,
    DecodeReport,
    ImageDecodeError,
    check_image_file,
    check_image_files,
    decode_image_bytes,
    to_rgb,
)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def palette_image() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * (254 * 3))
    image.putdata([0, 1])
    return image


@pytest.mark.parametrize(
    ("image", "fmt", "expected"),
    [
        (Image.new("L", (2, 1), 100), "PNG", [(100, 100, 100)] * 2),
        (Image.new("1", (2, 1), 1), "PNG", [(255, 255, 255)] * 2),
        # Index 0 is transparent (white background), index 1 is the palette colour.
        (palette_image(), "PNG", [(255, 255, 255), (10, 20, 30)]),
        # Half-transparent red over white: 255*a + 255*(1-a) = 255 for red, 255*(1-a) = 127 for the others.
        (Image.new("RGBA", (2, 1), (255, 0, 0, 128)), "PNG", [(255, 127, 127)] * 2),
        (Image.new("LA", (2, 1), (0, 0)), "PNG", [(255, 255, 255)] * 2),
        # 16-bit: scaled by 255/65535 (PIL's own conversion would clip everything above 255 to white).
        (Image.fromarray(np.array([[65535, 32768]], dtype=np.uint16)), "PNG", [(255,) * 3, (128,) * 3]),
        (Image.fromarray(np.array([[257, 0]], dtype=np.uint16)), "TIFF", [(1,) * 3, (0,) * 3]),
        (Image.new("CMYK", (2, 1), (0, 255, 255, 0)), "TIFF", [(255, 0, 0)] * 2),
        (Image.new("RGB", (2, 1), (1, 2, 3)), "PNG", [(1, 2, 3)] * 2),
    ],
    ids=["grey", "bilevel", "palette", "rgba", "grey-alpha", "png16", "tiff16", "cmyk", "rgb"],
)
def test_odd_modes_decode_to_the_expected_rgb(image, fmt, expected):
    decoded = decode_image_bytes(encode(image, fmt, **({"transparency": 0} if image.mode == "P" else {})))
    assert decoded.mode == "RGB"
    assert [decoded.getpixel((x, 0)) for x in range(2)] == expected


def test_cmyk_jpeg_decodes_to_rgb():
    decoded = decode_image_bytes(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    assert decoded.mode == "RGB"
    assert np.abs(np.asarray(decoded, dtype=int) - [255, 0, 0]).max() <= 3


def test_to_rgb_scales_big_endian_16_bit_by_the_bit_depth_not_the_data():
    dark = Image.frombytes("I;16B", (2, 1), np.array([255, 0], dtype=">u2").tobytes())
    assert dark.mode == "I;16B"
    # 255 / 65535 of full scale is 1/257 of white: 1 after rounding (not 255, as an 8-bit reading would give).
    assert [to_rgb(dark).getpixel((x, 0)) for x in range(2)] == [(1, 1, 1), (0, 0, 0)]


def test_to_rgb_maps_float_images_from_the_unit_range():
    image = Image.fromarray(np.array([[0.5, 1.0]], dtype=np.float32))
    assert image.mode == "F"
    assert [to_rgb(image).getpixel((x, 0)) for x in range(2)] == [(128, 128, 128), (255, 255, 255)]


def test_to_rgb_scales_32_bit_integer_images_by_their_range():
    wide = Image.fromarray(np.array([[65535, 0]], dtype=np.int32))
    narrow = Image.fromarray(np.array([[200, 0]], dtype=np.int32))
    assert wide.mode == narrow.mode == "I"
    assert to_rgb(wide).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(narrow).getpixel((0, 0)) == (200, 200, 200)


@pytest.fixture()
def bad_files(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(encode(Image.new("RGB", (16, 16), (9, 9, 9))))
    png = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    files = {
        "empty": (tmp_path / "empty.png", b""),
        "truncated": (tmp_path / "truncated.png", png[: len(png) // 2]),
        "text": (tmp_path / "notes.jpg", b"these are not pixels\n"),
        "corrupt": (tmp_path / "corrupt.png", png[:100] + bytes(len(png) - 100)),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return good, {name: path for name, (path, _) in files.items()}


@pytest.mark.parametrize(
    ("name", "reason"),
    [("empty", "empty"), ("truncated", "truncated"), ("text", "not an image"), ("corrupt", "corrupt")],
)
def test_unreadable_files_raise_an_error_naming_the_path(bad_files, name, reason):
    _, bad = bad_files
    with pytest.raises(ImageDecodeError, match=reason) as caught:
        check_image_file(bad[name])
    assert caught.value.path == str(bad[name])
    assert str(bad[name]) in str(caught.value) and "on_bad_image='skip'" in str(caught.value)


def test_a_missing_file_is_reported_by_path(tmp_path):
    with pytest.raises(ImageDecodeError, match="missing.png.*cannot read"):
        check_image_file(tmp_path / "missing.png")


def test_skip_mode_counts_and_logs_bad_files(bad_files, caplog):
    good, bad = bad_files
    paths = [str(good), *map(str, bad.values()), str(good)]
    with pytest.raises(ImageDecodeError, match="empty.png"):
        check_image_files(paths)
    with caplog.at_level(logging.WARNING, logger="hf_distill.data.decoding"):
        keep, report = check_image_files(paths, on_bad_image="skip", context="domain 'x', split 'train'")
    assert keep == [True, False, False, False, False, True]
    assert (report.num_checked, report.num_skipped) == (6, 4)
    assert [path for path, _ in report.skipped] == [str(path) for path in bad.values()]
    assert "skipped 4 of 6 unreadable images in domain 'x', split 'train'" in caplog.text
    assert report.to_dict()["num_skipped"] == 4
    with pytest.raises(ValueError, match="on_bad_image"):
        check_image_files(paths, on_bad_image="ignore")


def test_report_keeps_exact_counts_but_a_bounded_path_list():
    total = DecodeReport()
    for index in range(MAX_REPORTED_PATHS + 7):
        part = DecodeReport(num_checked=2)
        part.add_skipped(ImageDecodeError(f"img{index}.png", "empty"))
        total.merge(part)
    assert (total.num_checked, total.num_skipped) == (2 * (MAX_REPORTED_PATHS + 7), MAX_REPORTED_PATHS + 7)
    assert len(total.skipped) == MAX_REPORTED_PATHS and total.skipped[0] == ("img0.png", "empty")
