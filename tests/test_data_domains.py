"""Domain loaders: UnED info files, image folders and Hub ids, with real files written to a temporary folder."""

import json

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, List, Value
from datasets import Image as ImageFeature
from PIL import Image

from hf_distill.data.decoding import ImageDecodeError
from hf_distill.data.domains import (
    DOMAIN_FEATURES,
    load_hub_domain,
    load_imagefolder_domains,
    load_uned_domains,
    validate_labels,
)


def save_image(path, value, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full((6, 6), value * 257, dtype=np.uint16)).save(path)
    elif mode == "CMYK":
        Image.new("CMYK", (6, 6), (0, 0, 0, 255 - value)).save(path)
    else:
        Image.new(mode, (6, 6), value if mode in ("L", "P") else (value,) * len(mode)).save(path)


def write_uned(root, entries_per_domain):
    """Write images and info files; entries are ``(relative path, class_id, grey value)``."""
    for domain, splits in entries_per_domain.items():
        for split, entries in splits.items():
            for path, _, value in entries:
                save_image(root / "images" / path, value)
            info = [{"path": path, "class_id": class_id} for path, class_id, _ in entries]
            (root / "info_files" / domain).mkdir(parents=True, exist_ok=True)
            (root / "info_files" / domain / f"{split}.json").write_text(json.dumps(info))


def uned_layout():
    def entries(domain, split, class_ids):
        return [(f"{domain}/{split}/{i}.png", class_id, 10 * i) for i, class_id in enumerate(class_ids)]

    return {
        "cars": {
            s: entries("cars", s, ids)
            for s, ids in {"train": [0, 1, 1], "val": [0, 1], "test": [5, 6]}.items()
        },
        "met": {
            "train": entries("met", "train", [0, 1, 2]),
            "val": entries("met", "val", [0, 2]),
            "small_index": entries("met", "small_index", [0, 1, 2, 2]),
            "test": entries("met", "test", [[7, 8], 9]),  # a multi-label query
            "index": entries("met", "index", [7, 8, 9]),
        },
    }


def test_uned_domains_follow_the_info_files_and_the_uned_split_pairs(tmp_path):
    write_uned(tmp_path, uned_layout())
    benchmark = load_uned_domains(tmp_path / "info_files", tmp_path / "images")
    assert benchmark.domain_names == ["cars", "met"]  # UnED order
    assert set(benchmark.domains["met"]) == {"train", "val", "small_index", "test", "index"}
    assert set(benchmark.domains["cars"]) == {"train", "val", "test"}
    assert benchmark.eval_pairs == {
        "test": {"cars": ("test", "test"), "met": ("test", "index")},
        "val": {"cars": ("val", "val"), "met": ("val", "small_index")},
    }
    assert benchmark.num_classes == {"cars": 2, "met": 3}
    met_test = benchmark.domains["met"]["test"]
    assert met_test.features["label"] == List(Value("int64"))
    assert met_test["label"] == [[7, 8], [9]]
    assert benchmark.domains["cars"]["train"].features == DOMAIN_FEATURES
    row = benchmark.domains["cars"]["train"][2]
    assert (row["label"], row["domain"]) == (1, "cars")
    assert row["image"].getpixel((0, 0)) == (20, 20, 20)
    assert benchmark.decode_report.num_checked == 3 + 2 + 2 + 3 + 2 + 4 + 2 + 3


def test_uned_splits_and_declared_class_counts(tmp_path):
    write_uned(tmp_path, uned_layout())
    info, images = tmp_path / "info_files", tmp_path / "images"
    benchmark = load_uned_domains(info, images, domains=["met"], splits=["test", "index"])
    assert benchmark.eval_pairs == {"test": {"met": ("test", "index")}, "val": {}}
    with pytest.raises(
        ValueError, match=r"domain 'met', split 'test': image 0 has class id 8, out of range \(0 .. 7\)"
    ):
        load_uned_domains(info, images, domains=["met"], splits=["test"], num_classes={"met": 8})
    with pytest.raises(
        ValueError, match="domain 'cars', split 'small_index': info file .*small_index.json is missing"
    ):
        load_uned_domains(info, images, domains=["cars"], splits=["train", "small_index"])
    with pytest.raises(ValueError, match="domain 'food2k': no info folder"):
        load_uned_domains(info, images, domains=["food2k"])


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], "domain 'cars', split 'train' is empty"),
        (
            [{"path": "a.png", "class_id": -1}],
            "domain 'cars', split 'train': image 0 has class id -1, out of range",
        ),
        ([{"path": "a.png"}], "entry 0 of .*train.json needs the keys"),
        ([{"path": "a.png", "class_id": "dog"}], "class id 'dog', expected an int"),
        ({"path": "a.png"}, "must hold a JSON list"),
    ],
)
def test_bad_uned_info_files_name_domain_and_split(tmp_path, entries, message):
    (tmp_path / "info" / "cars").mkdir(parents=True)
    (tmp_path / "info" / "cars" / "train.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=message):
        load_uned_domains(tmp_path / "info", tmp_path, splits=["train"])


def test_uned_unreadable_image_raises_or_is_skipped(tmp_path):
    write_uned(tmp_path, {"cars": {"train": [("a.png", 0, 5), ("b.png", 1, 6), ("c.png", 1, 7)]}})
    (tmp_path / "images" / "b.png").write_bytes(b"")
    info, images = tmp_path / "info_files", tmp_path / "images"
    with pytest.raises(ImageDecodeError, match="b.png.*empty"):
        load_uned_domains(info, images, splits=["train"])
    benchmark = load_uned_domains(info, images, splits=["train"], on_bad_image="skip")
    assert benchmark.domains["cars"]["train"]["label"] == [0, 1]
    assert benchmark.decode_report.num_skipped == 1
    assert benchmark.decode_report.skipped[0][0] == str(images / "b.png")
    # Skipping every image of a split leaves it empty, which is an error too.
    (tmp_path / "images" / "a.png").write_bytes(b"")
    (tmp_path / "images" / "c.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="domain 'cars', split 'train' is empty"):
        load_uned_domains(info, images, splits=["train"], on_bad_image="skip")


def build_folders(root):
    layout = {
        ("shapes", "train", "circle"): [("a.png", "L", 11), ("b.png", "P", 12)],
        ("shapes", "train", "square"): [("c.png", "RGBA", 13), ("d.tif", "I;16", 14)],
        ("shapes", "test", "star"): [("e.tif", "CMYK", 15), ("f.png", "RGB", 16)],
        ("shapes", "test", "circle"): [("g.png", "RGB", 17)],
        ("shapes", "val", "square"): [("h.png", "RGB", 18)],
        ("tiny", "train", "x"): [("i.png", "RGB", 19)],
    }
    for (domain, split, label), files in layout.items():
        for name, mode, value in files:
            save_image(root / domain / split / label / name, value, mode)
    (root / "shapes" / "train" / "circle" / ".DS_Store").write_bytes(b"\0\0")


def test_imagefolder_domains_map_class_folders_to_labels(tmp_path):
    build_folders(tmp_path)
    benchmark = load_imagefolder_domains(tmp_path)
    assert benchmark.domain_names == ["shapes", "tiny"]
    shapes = benchmark.domains["shapes"]
    assert benchmark.num_classes == {"shapes": 2, "tiny": 1}
    # circle=0, square=1 (train classes, sorted), star=2 (unseen); circle keeps its id in test.
    assert benchmark.metadata["class_names"]["shapes"] == ["circle", "square", "star"]
    assert shapes["train"]["label"] == [0, 0, 1, 1]
    assert sorted(shapes["test"]["label"]) == [0, 2, 2]
    assert shapes["val"]["label"] == [1]
    assert benchmark.eval_pairs == {"test": {"shapes": ("test", "test")}, "val": {"shapes": ("val", "val")}}
    assert set(shapes["train"]["domain"]) == {"shapes"}
    # The stored images keep their modes; hf_distill.data.decoding.to_rgb makes them RGB in the transform.
    assert [image.mode for image in shapes["train"]["image"]][:3] == ["L", "P", "RGBA"]
    assert benchmark.decode_report.num_checked == 9  # .DS_Store is ignored


def test_imagefolder_bad_files_and_empty_splits(tmp_path):
    build_folders(tmp_path)
    bad = tmp_path / "shapes" / "train" / "square" / "README.txt"
    bad.write_text("not an image")
    with pytest.raises(ImageDecodeError, match="README.txt"):
        load_imagefolder_domains(tmp_path)
    benchmark = load_imagefolder_domains(tmp_path, on_bad_image="skip")
    assert benchmark.decode_report.num_skipped == 1 and len(benchmark.domains["shapes"]["train"]) == 4
    (tmp_path / "tiny" / "val" / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match="domain 'tiny', split 'val' is empty"):
        load_imagefolder_domains(tmp_path, domains=["tiny"])
    with pytest.raises(ValueError, match="domain 'nope'"):
        load_imagefolder_domains(tmp_path, domains=["nope"])


def test_validate_labels_accepts_in_range_single_and_multi_labels():
    validate_labels([0, [1, 2], 3], "d", "s", num_classes=4)
    with pytest.raises(ValueError, match="domain 'd', split 's': image 1 has class id 4"):
        validate_labels([0, [1, 4]], "d", "s", num_classes=4)
    with pytest.raises(ValueError, match="empty label list"):
        validate_labels([[]], "d", "s")


@pytest.fixture()
def local_hub_dataset(tmp_path):
    """A dataset folder in the Hub's parquet layout, with other column names than the contract's."""
    features = Features(
        {"img": ImageFeature(), "fine": ClassLabel(names=["a", "b", "c"]), "extra": Value("string")}
    )
    for split, values in {"train": [0, 1, 2], "test": [2, 1]}.items():
        rows = {
            "img": [Image.new("L", (4, 4), 40 * v) for v in values],
            "fine": values,
            "extra": ["x"] * len(values),
        }
        Dataset.from_dict(rows, features=features).to_parquet(
            str(tmp_path / "repo" / "data" / f"{split}.parquet")
        )
    return tmp_path / "repo"


def test_hub_domain_maps_columns(local_hub_dataset, tmp_path):
    domain, report = load_hub_domain(
        str(local_hub_dataset),
        image_column="img",
        label_column="fine",
        domain="letters",
        cache_dir=tmp_path / "c",
    )
    assert set(domain) == {"train", "test"}
    assert domain["train"].column_names == ["image", "label", "domain"]
    assert domain["train"].features["label"] == Value("int64")
    assert domain["train"]["label"] == [0, 1, 2] and set(domain["test"]["domain"]) == {"letters"}
    assert domain["test"][0]["image"].getpixel((0, 0)) == 80
    assert (report.num_checked, report.num_skipped) == (5, 0)
    only_test, _ = load_hub_domain(
        str(local_hub_dataset), "img", "fine", splits=["test"], cache_dir=tmp_path / "c", check_images=False
    )
    assert list(only_test) == ["test"]


def test_hub_domain_errors_name_the_repo_split_and_column(local_hub_dataset, tmp_path):
    cache = tmp_path / "c"
    with pytest.raises(ValueError, match="split 'validation': not in .*splits are"):
        load_hub_domain(str(local_hub_dataset), "img", "fine", splits=["validation"], cache_dir=cache)
    with pytest.raises(ValueError, match=r"column\(s\) \['label'\] not in"):
        load_hub_domain(str(local_hub_dataset), "img", cache_dir=cache)
    with pytest.raises(ValueError, match="split 'train': image 2 has class id 2, out of range"):
        load_hub_domain(str(local_hub_dataset), "img", "fine", num_classes=2, cache_dir=cache)


def test_hub_domain_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="'someone/no-such-dataset': HF_HUB_OFFLINE is set"):
        load_hub_domain("someone/no-such-dataset", cache_dir=tmp_path)
