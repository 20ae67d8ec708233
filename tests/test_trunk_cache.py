"""Fine-tuning over a cached trunk: the cut reproduces the backbone, the cache reproduces the pixel path, the
trunk does not train, and a second build reuses the cache."""

from __future__ import annotations

import datasets
import pytest
import timm
import torch

from hf_distill.data import ImageTransform, load_domains
from hf_distill.data.domains import Benchmark
from hf_distill.data.trunk_cache import cache_trunk
from hf_distill.evaluation.evaluator import default_transform, embed_dataset
from hf_distill.layers.trunk import check_trainable_from, over_cached_trunk, top_forward, trunk_forward
from hf_distill.models.udon import UdonConfig, UdonModel
from hf_distill.teachers.offline import resolve_offline_weights
from hf_distill.trainers.arguments import UdonTrainingArguments
from hf_distill.trainers.udon import UdonTrainer

DOMAINS = ("digits", "flags")


@pytest.fixture(scope="module")
def tiny_benchmark() -> Benchmark:
    """Two real domains of the offline benchmark, 24 images per split."""
    full = load_domains("data/manydomain", list(DOMAINS))
    domains = {
        name: datasets.DatasetDict({split: ds.select(range(24)) for split, ds in full.domains[name].items()})
        for name in DOMAINS
    }
    pairs = {split: {name: full.eval_pairs[split][name] for name in DOMAINS} for split in full.eval_pairs}
    return Benchmark(domains, {name: full.num_classes[name] for name in DOMAINS}, pairs, full.metadata)


@pytest.fixture(scope="module")
def lite0_model(tiny_benchmark) -> UdonModel:
    weights = resolve_offline_weights("efficientnet_lite0")
    config = UdonConfig(
        backbone=weights.architecture,
        pretrained_file=str(weights.path),
        domains=list(DOMAINS),
        num_classes=[tiny_benchmark.num_classes[name] for name in DOMAINS],
        image_size=64,
        image_mean=list(weights.mean),
        image_std=list(weights.std),
    )
    torch.manual_seed(0)
    return UdonModel(config).eval()


@pytest.mark.parametrize("cut", [0, 3, 5, 7])
def test_cnn_trunk_then_top_is_the_backbone(lite0_model, cut):
    pixels = torch.randn(3, 3, 64, 64)
    backbone = lite0_model.backbone
    with torch.no_grad():
        whole = backbone(pixels)
        split = top_forward(backbone, trunk_forward(backbone, pixels, cut), cut)
    # raw pooled features (not normalised): the same up to float32 rounding of another conv memory layout
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cut", [0, 1, 2])
def test_vit_trunk_then_top_is_the_backbone(cut):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=2).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            top_forward(vit, trunk_forward(vit, pixels, cut), cut), vit(pixels), rtol=0, atol=1e-5
        )


def test_bad_cuts_are_refused_with_the_allowed_range(lite0_model):
    with pytest.raises(ValueError, match=r"0\.\.7"):
        check_trainable_from(lite0_model.backbone, 8)
    with pytest.raises(ValueError, match="EfficientNet/MobileNet or VisionTransformer"):
        check_trainable_from(torch.nn.Linear(2, 2), 1)


@pytest.fixture(scope="module")
def trunk(tiny_benchmark, lite0_model, tmp_path_factory):
    config = lite0_model.config
    train = ImageTransform(64, config.image_mean, config.image_std, train=True, resize_size=72)
    evaluation = ImageTransform(
        64, config.image_mean, config.image_std, train=False, resize_size=config.resize_size
    )
    root = tmp_path_factory.mktemp("trunk")
    cache = cache_trunk(
        tiny_benchmark,
        lite0_model.backbone,
        5,
        config.backbone,
        train,
        evaluation,
        root,
        views=2,
        fit_images=16,
    )
    return cache, root, (train, evaluation)


def test_cached_maps_give_the_exported_embedder_of_pixels(tiny_benchmark, lite0_model, trunk):
    cache, _, _ = trunk
    embedder = lite0_model.export_embedder()
    for name in DOMAINS:
        images = tiny_benchmark.domains[name]["test"]
        from_pixels = embed_dataset(embedder, images, default_transform(embedder))
        view = over_cached_trunk(embedder, 5)
        from_maps = embed_dataset(view, cache.benchmark.domains[name]["test"], default_transform(view))
        torch.testing.assert_close(from_maps, from_pixels, rtol=0, atol=1e-5)
    # labels travel with the maps; two views per training image, in image order
    assert list(cache.benchmark.domains["digits"]["test"]["label"]) == list(
        tiny_benchmark.domains["digits"]["test"]["label"]
    )
    labels = tiny_benchmark.domains["flags"]["train"]["label"]
    flags_rows = [row for row, domain in zip(cache.train_dataset, cache.train_domain_ids) if domain == 1]
    assert [int(row["labels"]) for row in flags_rows] == [label for label in labels for _ in range(2)]
    # the two views of an image differ (augmented), an image's maps are not another's
    assert not (flags_rows[0]["pixel_values"] == flags_rows[1]["pixel_values"]).all()


def test_every_cached_split_keeps_the_fixed_shape_map_type(tiny_benchmark, trunk):
    """Nested-list maps read about a hundred times slower; the PCA sample (a random subset of the training rows)
    once lost its Array3D type when its labels were joined to the maps."""
    cache, _, _ = trunk
    for name, splits in cache.benchmark.domains.items():
        for split, dataset in splits.items():
            assert isinstance(dataset.features["image"], datasets.Array3D), (name, split, dataset.features)
        fit = splits["train"]
        assert len(fit) < len(tiny_benchmark.domains[name]["train"])  # a subset: the indices path was taken
        assert fit[:2]["image"].shape[0] == 2
    assert isinstance(cache.train_dataset.features["pixel_values"], datasets.Array3D)


def test_second_build_reuses_the_cache(tiny_benchmark, lite0_model, trunk, monkeypatch):
    _, root, (train, evaluation) = trunk
    import hf_distill.data.trunk_cache as module

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt a cache that exists")

    monkeypatch.setattr(module, "build_feature_cache", refuse)
    again = cache_trunk(
        tiny_benchmark,
        lite0_model.backbone,
        5,
        lite0_model.config.backbone,
        train,
        evaluation,
        root,
        views=2,
        fit_images=16,
    )
    assert len(again.train_dataset) == 2 * 2 * 24
    # other trunk weights are another cache
    changed = UdonModel(lite0_model.config)
    with torch.no_grad():
        changed.backbone.conv_stem.weight.add_(0.1)
    with pytest.raises(AssertionError, match="rebuilt"):
        cache_trunk(
            tiny_benchmark, changed.backbone, 5, lite0_model.config.backbone, train, evaluation, root, views=2
        )


def test_training_over_the_cache_moves_the_top_only(lite0_model, trunk, tmp_path):
    cache, _, _ = trunk
    model = UdonModel(lite0_model.config)
    model.load_state_dict(lite0_model.state_dict())
    model.use_cached_trunk(5)
    before = {name: value.clone() for name, value in model.backbone.state_dict().items()}
    args = UdonTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        backbone_lr_ratio=1.0,
        backbone_frozen_epochs=0,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        plot_sampling_curves=False,
        evaluate_starting_point=False,
        disable_tqdm=True,
    )
    UdonTrainer(
        model=model, args=args, train_dataset=cache.train_dataset, train_domain_ids=cache.train_domain_ids
    ).train()
    after = model.backbone.state_dict()
    trunk_keys = [
        key for key in before if key.startswith(("conv_stem", "bn1.", *(f"blocks.{i}." for i in range(5))))
    ]
    top_keys = [key for key in before if key.startswith(("blocks.5.", "blocks.6.", "conv_head"))]
    assert trunk_keys and top_keys
    assert all(torch.equal(before[key], after[key]) for key in trunk_keys)
    assert any(not torch.equal(before[key], after[key]) for key in top_keys)
