"""Feature cache: round-trip, refusal on a different spec, deterministic views, no half-built cache, and the
cached-view dataset (the view the features were computed on, or a fresh draw) shared by UNIC and MLFD."""

import json
import shutil

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_distill.layers import PixelNormalize
from hf_distill.teachers.cache import (
    SPEC_FILE,
    CachedViewDataset,
    FeatureCacheSpec,
    build_feature_cache,
    default_cache_workers,
    load_feature_cache,
    read_cache_metadata,
    view_seed,
)


def _images(n: int) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(n)]
    return datasets.Dataset.from_dict({"image": images, "label": list(range(n))}, features=None)


def _plain(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _noisy(image: Image.Image) -> torch.Tensor:
    # A random "augmentation" drawing from torch's and numpy's global RNGs.
    return _plain(image) + torch.rand(1) + float(np.random.rand())


def _extract(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    # map: mean over channels keeps the spatial grid; vector: per-channel means.
    return {"map": pixels.mean(dim=1, keepdim=True), "vector": pixels.mean(dim=(2, 3))}


def _spec(**overrides) -> FeatureCacheSpec:
    values = dict(teacher="toy", layer="pixels", preprocessing={"size": 8, "mean": [0.0] * 3}, views=1)
    values.update(overrides)
    return FeatureCacheSpec(**values)


def test_round_trip_stores_extracted_features(tmp_path):
    images = _images(5)
    cache = build_feature_cache(images, _extract, _plain, _spec(), tmp_path / "cache", batch_size=2)
    assert cache.column_names == ["source_index", "view", "map", "vector"]
    assert cache[:]["source_index"].tolist() == [0, 1, 2, 3, 4]
    reloaded = load_feature_cache(tmp_path / "cache", _spec())
    for index in range(5):
        expected = _extract(_plain(images[index]["image"])[None])
        torch.testing.assert_close(reloaded[index]["map"], expected["map"][0])
        torch.testing.assert_close(reloaded[index]["vector"], expected["vector"][0])
    assert reloaded[0]["map"].shape == (1, 8, 8)
    metadata = read_cache_metadata(tmp_path / "cache")
    assert metadata["fingerprint"] == _spec().fingerprint()
    assert metadata["num_rows"] == 5


def test_refuses_a_different_spec_and_names_the_fields(tmp_path):
    build_feature_cache(_images(2), _extract, _plain, _spec(), tmp_path / "cache")
    with pytest.raises(ValueError, match=r"\['layer', 'preprocessing'\]"):
        load_feature_cache(tmp_path / "cache", _spec(layer="other", preprocessing={"size": 16}))
    with pytest.raises(ValueError, match="teacher"):
        load_feature_cache(tmp_path / "cache", _spec(teacher="another"))


def test_fingerprint_is_canonical():
    first = FeatureCacheSpec("t", "l", preprocessing={"a": 1, "b": [1, 2]}, extra={"x": 1})
    second = FeatureCacheSpec("t", "l", preprocessing={"b": [1, 2], "a": 1}, extra={"x": 1})
    assert first.fingerprint() == second.fingerprint()
    assert (
        first.fingerprint() != FeatureCacheSpec("t", "l", preprocessing={"a": 2, "b": [1, 2]}).fingerprint()
    )
    assert FeatureCacheSpec.from_dict(first.to_dict()) == first
    with pytest.raises(ValueError, match="views"):
        FeatureCacheSpec("t", "l", views=0)


def test_augmented_views_are_deterministic_in_the_seed(tmp_path):
    images = _images(3)
    spec = _spec(views=3, augmentation="uniform offset")
    first = build_feature_cache(images, _extract, _noisy, spec, tmp_path / "a", batch_size=2, seed=7)
    # Another batch size must not change any view: each view's seed depends only on (seed, image, view).
    again = build_feature_cache(images, _extract, _noisy, spec, tmp_path / "b", batch_size=3, seed=7)
    other = build_feature_cache(images, _extract, _noisy, spec, tmp_path / "c", batch_size=2, seed=8)
    assert first[:]["source_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert first[:]["view"].tolist() == [0, 1, 2] * 3
    torch.testing.assert_close(first[:]["map"], again[:]["map"])
    assert not torch.allclose(first[:]["map"], other[:]["map"])
    # The three views of one image differ from one another.
    assert len({round(float(value), 6) for value in first[:3]["vector"][:, 0]}) == 3
    # The caller's RNG state is left untouched.
    state = torch.get_rng_state()
    build_feature_cache(images, _extract, _noisy, spec, tmp_path / "d", seed=7)
    assert torch.equal(state, torch.get_rng_state())


def test_interrupted_build_leaves_no_cache(tmp_path):
    calls = []

    def failing(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(len(pixels))
        if len(calls) > 2:
            raise RuntimeError("interrupted")
        return _extract(pixels)

    with pytest.raises(RuntimeError, match="interrupted"):
        build_feature_cache(_images(6), failing, _plain, _spec(), tmp_path / "cache", batch_size=2)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="not a complete feature cache"):
        load_feature_cache(tmp_path / "cache", _spec())


def test_a_build_finished_first_by_another_process_is_kept(tmp_path):
    # Two runs sharing a cache directory both find it missing and build: the one that renames its build into
    # place second keeps the first one's cache (same spec, same values) and leaves no temporary directory.
    images = _images(4)
    first = tmp_path / "first"
    build_feature_cache(images, _extract, _plain, _spec(), first, batch_size=2)
    target = tmp_path / "shared"

    def racing(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not target.exists():  # the other process completes while this one is still extracting
            shutil.copytree(first, target)
        return _extract(pixels)

    cache = build_feature_cache(images, racing, _plain, _spec(), target, batch_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "shared"]
    expected = load_feature_cache(first, _spec())
    torch.testing.assert_close(cache[:]["vector"], expected[:]["vector"])

    # A half-written directory in the way (no spec file) is not taken for a cache.
    def blocking(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        (tmp_path / "blocked").mkdir(exist_ok=True)
        (tmp_path / "blocked" / "partial.arrow").write_text("")
        return _extract(pixels)

    with pytest.raises(OSError):
        build_feature_cache(images, blocking, _plain, _spec(), tmp_path / "blocked", batch_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "first", "shared"]


def test_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no column 'pixels'"):
        build_feature_cache(_images(2), _extract, _plain, _spec(), tmp_path / "c", image_column="pixels")
    with pytest.raises(ValueError, match="'vector' must be a Tensor with 2 rows"):
        build_feature_cache(
            _images(2), lambda x: {"vector": x[:1].mean((2, 3))}, _plain, _spec(), tmp_path / "d"
        )
    build_feature_cache(_images(2), _extract, _plain, _spec(), tmp_path / "e")
    with pytest.raises(FileExistsError, match="already exists"):
        build_feature_cache(_images(2), _extract, _plain, _spec(), tmp_path / "e")
    (tmp_path / "e" / SPEC_FILE).write_text(json.dumps({"spec": {"teacher": "x", "layer": "y", "bogus": 1}}))
    with pytest.raises(ValueError, match="bogus"):
        load_feature_cache(tmp_path / "e", _spec())


def _pixels_cache(tmp_path, views: int = 2) -> datasets.Dataset:
    # The cached "feature" is the view's pixels themselves, so an item shows which view its features came from.
    spec = _spec(views=views, augmentation="uniform offset")
    return build_feature_cache(_images(3), lambda x: {"pixels": x}, _noisy, spec, tmp_path / "c", seed=4)


@pytest.mark.parametrize("in_memory", [False, True])
def test_cached_view_dataset_gives_the_view_the_features_were_computed_on(tmp_path, in_memory):
    cache, images = _pixels_cache(tmp_path), _images(3)
    dataset = CachedViewDataset(
        cache, images, _noisy, seed=4, labels=[7, 8, 9], domain_id=2, in_memory=in_memory
    )
    assert len(dataset) == 6 and dataset.columns == ["pixels"]
    for index in range(6):
        item = dataset[index]
        assert (item["labels"], item["domain_ids"]) == ([7, 8, 9][index // 2], 2)
        torch.testing.assert_close(item["images"], item["pixels"])
    # The two views of an image differ, a batch read equals item reads, and the caller's RNG is untouched.
    assert not torch.equal(dataset[0]["images"], dataset[1]["images"])
    state = torch.get_rng_state()
    batch = dataset.__getitems__([5, 0, 3])
    assert torch.equal(state, torch.get_rng_state())
    for item, index in zip(batch, [5, 0, 3]):
        assert torch.equal(item["images"], dataset[index]["images"])
        assert torch.equal(item["pixels"], dataset[index]["pixels"])
    # A student normalisation is applied after the view: (view - mean) / std, computed by hand.
    normalized = CachedViewDataset(
        cache, images, _noisy, seed=4, normalize=PixelNormalize([0.5, 0.0, 1.0], [0.5, 2.0, 1.0])
    )[3]
    view = normalized["pixels"]
    expected = torch.stack([(view[0] - 0.5) / 0.5, view[1] / 2.0, view[2] - 1.0])
    torch.testing.assert_close(normalized["images"], expected)


def test_cached_view_dataset_fresh_draws_and_features_only(tmp_path):
    cache, images = _pixels_cache(tmp_path), _images(3)
    fresh = CachedViewDataset(cache, images, fresh_transform=_plain, pixels_key="pixel_values")
    item = fresh[3]  # view 1 of image 1: features of the cached (noisy) view, pixels of the fresh transform
    torch.testing.assert_close(item["pixel_values"], _plain(images[1]["image"]))
    assert not torch.allclose(item["pixel_values"], item["pixels"])
    features_only = CachedViewDataset(cache, labels=[0, 1, 2], in_memory=True)[4]
    assert sorted(features_only) == ["labels", "pixels"] and features_only["labels"] == 2


def test_cached_view_dataset_rejects_bad_input(tmp_path):
    cache, images = _pixels_cache(tmp_path), _images(3)
    with pytest.raises(ValueError, match="exactly one of view_transform"):
        CachedViewDataset(cache, images)
    with pytest.raises(ValueError, match="exactly one of view_transform"):
        CachedViewDataset(cache, images, _noisy, fresh_transform=_plain)
    with pytest.raises(ValueError, match="need the source images"):
        CachedViewDataset(cache, None, _noisy)
    with pytest.raises(ValueError, match=r"no column\(s\) \['maps_absent'\]"):
        CachedViewDataset(cache, columns=["maps_absent"])
    with pytest.raises(ValueError, match="source image 2 but labels has 2 rows"):
        CachedViewDataset(cache, labels=[0, 1])
    with pytest.raises(ValueError, match="source image 2 but images has 1 rows"):
        CachedViewDataset(cache, images.select([0]), _noisy)


def _pixels_and_features(pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"pixels": pixels, **_extract(pixels)}


@pytest.mark.parametrize("views", [1, 3])
def test_decoding_workers_store_the_same_views(tmp_path, views):
    # Decoding and transforming in a DataLoader worker must not change a single stored value: every view is the
    # transform under its own view_seed (computed here by hand), and the cache's fingerprint stays the same.
    images = _images(5)
    spec = _spec(views=views, augmentation="uniform offset" if views > 1 else None)
    built = {
        workers: build_feature_cache(
            images,
            _pixels_and_features,
            _noisy,
            spec,
            tmp_path / str(workers),
            batch_size=2,
            seed=3,
            num_workers=workers,
        )  # fmt: skip
        for workers in (0, 1)
    }
    serial, parallel = built[0], built[1]
    assert serial._fingerprint == parallel._fingerprint
    assert read_cache_metadata(tmp_path / "0") == read_cache_metadata(tmp_path / "1")
    for column in ("source_index", "view", "pixels", "map", "vector"):
        assert torch.equal(serial[:][column], parallel[:][column])
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    for row in range(5 * views):
        image, view = row // views, row % views
        torch.manual_seed(view_seed(3, image, view))
        np.random.seed(view_seed(3, image, view) % 2**32)
        assert torch.equal(parallel[row]["pixels"], _noisy(images[image]["image"]))
        assert (int(parallel[row]["source_index"]), int(parallel[row]["view"])) == (image, view)
    torch.set_rng_state(torch_state), np.random.set_state(numpy_state)
    if views > 1:
        assert not torch.equal(parallel[0]["pixels"], parallel[1]["pixels"])
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        build_feature_cache(images, _extract, _plain, spec, tmp_path / "bad", num_workers=-1)


def test_default_cache_workers_overlap_only_when_there_is_a_next_batch():
    assert default_cache_workers(64, 64) == 0
    assert default_cache_workers(65, 64) >= 1
