"""Odd data that used to pass silently or crash late: missing test splits, multi-label or unmapped training class
ids, symlink loops, EXIF-rotated photos, empty class folders, domains without training classes and classes that
cannot be retrieved. Each gives a clear error naming file/domain/split, or a counted and reported warning."""

import io
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_distill.data.decoding import ImageDecodeError, decode_image_bytes, to_rgb
from hf_distill.data.domains import load_imagefolder_domains, load_uned_domains

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_data_domains import save_image, write_uned  # noqa: E402


def entries(domain, split, class_ids):
    return [(f"{domain}/{split}/{i}.png", class_id, 10 * i) for i, class_id in enumerate(class_ids)]


def test_domain_without_test_split_and_single_image_classes_are_reported(tmp_path, caplog):
    write_uned(
        tmp_path,
        {
            "cars": {"train": entries("cars", "train", [0, 1]), "val": entries("cars", "val", [0, 0, 1, 1])},
            "sop": {
                "train": entries("sop", "train", [0, 1]),
                "val": entries("sop", "val", [0, 0, 1, 1]),
                "test": entries("sop", "test", [5, 5, 6]),  # class 6 has one image
            },
        },
    )
    with caplog.at_level(logging.WARNING, logger="hf_distill.data.domains"):
        benchmark = load_uned_domains(
            tmp_path / "info_files",
            tmp_path / "images",
            splits=["train", "val", "test"][:2],
            domains=["cars"],
        )
        assert "domain 'cars' has no 'test' split pair" in caplog.text
        assert benchmark.metadata["warnings"]["no_test_split"]
        caplog.clear()
        benchmark = load_uned_domains(
            tmp_path / "info_files", tmp_path / "images", domains=["sop"], splits=["train", "val", "test"]
        )
    assert list(benchmark.eval_pairs["test"]) == ["sop"]
    assert "domain 'sop', split 'test': 1 of 2 classes have a single image" in caplog.text
    assert len(benchmark.metadata["warnings"]["single_image_classes"]) == 1


def test_multi_label_training_entry_is_a_load_time_error_naming_file_and_entry(tmp_path):
    layout = {
        "cars": {"train": entries("cars", "train", [0, [1], [0, 1]]), "val": entries("cars", "val", [0, 1])}
    }
    write_uned(tmp_path, layout)
    with pytest.raises(
        ValueError, match=r"domain 'cars', split 'train': entry 2 of .*train.json has the class ids"
    ):
        load_uned_domains(tmp_path / "info_files", tmp_path / "images", splits=["train", "val"])
    # a one-element list is one class: the split stays single-label (an int column the collator can stack)
    layout["cars"]["train"] = entries("cars", "train", [0, [1], 1])
    write_uned(tmp_path, layout)
    benchmark = load_uned_domains(tmp_path / "info_files", tmp_path / "images", splits=["train", "val"])
    assert benchmark.domains["cars"]["train"]["label"] == [0, 1, 1]


def test_unmapped_huge_class_id_is_refused_before_a_classifier_is_built(tmp_path):
    write_uned(
        tmp_path,
        {"cars": {"train": entries("cars", "train", [0, 10**9]), "val": entries("cars", "val", [0])}},
    )
    with pytest.raises(
        ValueError, match=r"domain 'cars', split 'train': class ids go up to 1000000000 but only 2"
    ):
        load_uned_domains(tmp_path / "info_files", tmp_path / "images", splits=["train", "val"])
    # declaring the number of classes is the way to keep intended gaps (and bounds the ids)
    with pytest.raises(ValueError, match="out of range"):
        load_uned_domains(
            tmp_path / "info_files", tmp_path / "images", splits=["train", "val"], num_classes={"cars": 10}
        )


def test_symlink_loop_is_an_error_naming_it_or_a_counted_skip(tmp_path):
    root = tmp_path / "folders"
    for i in range(2):
        save_image(root / "pets" / "train" / "cat" / f"{i}.png", 40 * i)
        save_image(root / "pets" / "train" / "dog" / f"{i}.png", 100 + 40 * i)
    loop = root / "pets" / "train" / "cat" / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(ImageDecodeError, match="loop.png"):
        load_imagefolder_domains(root)
    benchmark = load_imagefolder_domains(root, on_bad_image="skip")
    assert benchmark.decode_report.num_skipped == 1 and benchmark.decode_report.skipped[0][0].endswith(
        "loop.png"
    )
    assert len(benchmark.domains["pets"]["train"]) == 4


def test_embed_command_reports_symlink_loops(tmp_path):
    from hf_distill.commands.embed import find_images

    save_image(tmp_path / "a.png", 10)
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    assert [p.name for p in find_images(tmp_path)] == ["a.png", "loop.jpg"]


def test_empty_class_folder_is_not_a_class_and_a_domain_without_train_split_warns(tmp_path, caplog):
    root = tmp_path / "folders"
    for i in range(2):
        save_image(root / "pets" / "train" / "cat" / f"{i}.png", 40 * i)
        save_image(root / "pets" / "train" / "dog" / f"{i}.png", 100 + 40 * i)
        save_image(root / "pets" / "test" / "fox" / f"{i}.png", 30 * i)
        save_image(root / "art" / "test" / "vase" / f"{i}.png", 20 * i)
    (root / "pets" / "train" / "empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="hf_distill.data.domains"):
        benchmark = load_imagefolder_domains(root)
    assert benchmark.num_classes["pets"] == 2  # cat, dog; not the empty folder
    assert benchmark.metadata["class_names"]["pets"] == ["cat", "dog", "fox"]
    assert benchmark.metadata["empty_class_folders"] == [str(root / "pets" / "train" / "empty")]
    assert benchmark.num_classes["art"] == 0
    assert "domain 'art' has no 'train' split: 0 training classes" in caplog.text
    assert benchmark.metadata["warnings"]["no_training_classes"]


def exif_rotated_jpeg(orientation: int) -> bytes:
    """A 4x2 JPEG, left half black, right half white, stored with an EXIF orientation tag."""
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[:, 2:] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif, quality=100)
    return buffer.getvalue()


def test_exif_orientation_is_applied_at_decode_time(tmp_path):
    # orientation 6: the camera was turned 90 degrees clockwise; upright = the stored image rotated -90 degrees
    upright = decode_image_bytes(exif_rotated_jpeg(6))
    assert upright.size == (2, 4)
    array = np.asarray(upright)
    assert array[0].mean() < 60 and array[-1].mean() > 200  # black on top, white at the bottom
    # the same through PIL's own decoding (what datasets' Image() feature gives the transforms)
    path = tmp_path / "phone.jpg"
    path.write_bytes(exif_rotated_jpeg(6))
    with Image.open(path) as image:
        assert image.size == (4, 2) and to_rgb(image).size == (2, 4)
    assert decode_image_bytes(exif_rotated_jpeg(1)).size == (4, 2)
