"""The throughput paths of embedding: decoding in DataLoader workers gives exactly the single-process result
(order, values, bad files), and loading a saved processor picks its torchvision backend without a warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors import safe_open
from transformers import AutoImageProcessor

from hf_distill.commands.embed import embed_folder
from hf_distill.data.decoding import ImageDecodeError
from hf_distill.evaluation import embed_dataset
from hf_distill.evaluation.evaluator import default_transform
from hf_distill.hub import save_embedder
from hf_distill.models.embedder import (
    UniversalEmbedderConfig,
    UniversalEmbedderImageProcessor,
    UniversalEmbedderModel,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed_workers")
    torch.manual_seed(0)
    config = UniversalEmbedderConfig(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=dict(img_size=32, patch_size=8, depth=1),
        image_size=32,
        resize_size=36,
        embed_dim=8,
    )
    model = UniversalEmbedderModel(config).eval()
    save_embedder(model, root / "model")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for number in range(11):
        size = tuple(int(v) for v in rng.integers(20, 60, size=2))
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / f"{number:02d}.png")
    (images / "05_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root, model, images


def read(path):
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor("embeddings"), handle.metadata()


def test_embed_folder_in_workers_matches_one_process(saved, tmp_path):
    root, model, images = saved
    single = embed_folder(str(root / "model"), images, tmp_path / "a.safetensors", 4, on_bad_image="skip")
    workers = embed_folder(
        str(root / "model"), images, tmp_path / "b.safetensors", 4, on_bad_image="skip", num_workers=2
    )
    assert single == workers == {"num_images": 11, "dim": 8, "num_skipped": 1}
    (first, meta_a), (second, meta_b) = read(tmp_path / "a.safetensors"), read(tmp_path / "b.safetensors")
    assert meta_a["paths"] == meta_b["paths"] and "05_broken.png" not in meta_a["paths"]
    assert "05_broken.png" in meta_b["skipped"]
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    # Row 3 is image 03.png, embedded by the model directly.
    processor = UniversalEmbedderImageProcessor.from_model_config(model.config)
    with torch.no_grad():
        expected = model(processor(Image.open(images / "03.png"), return_tensors="pt").pixel_values)
    torch.testing.assert_close(first[3], expected.embeddings[0], rtol=1e-5, atol=1e-6)


def test_embed_folder_in_workers_stops_at_a_bad_file_by_name(saved, tmp_path):
    root, _, images = saved
    with pytest.raises(ImageDecodeError, match="05_broken.png"):
        embed_folder(str(root / "model"), images, tmp_path / "c.safetensors", 4, num_workers=2)


def test_embed_dataset_in_workers_keeps_order_and_values(saved, tiny_benchmark):
    _, model, _ = saved
    dataset = tiny_benchmark.domains["clothing"]["test"].select(range(37))
    transform = default_transform(model)
    single = embed_dataset(model, dataset, transform, batch_size=8)
    workers = embed_dataset(model, dataset, transform, batch_size=8, num_workers=2)
    assert single.shape == (37, 8)
    torch.testing.assert_close(single, workers, rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_workers"):
        embed_dataset(model, dataset, transform, num_workers=-1)


def test_saved_processor_loads_as_torchvision_backend_without_warning(saved):
    root, _, _ = saved
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(handler)
    # warning_once remembers messages already given in this process; forget them so this load can warn.
    transformers.utils.logging.warning_once.cache_clear()
    try:
        processor = AutoImageProcessor.from_pretrained(root / "model")
    finally:
        library_logger.removeHandler(handler)
    assert isinstance(processor, UniversalEmbedderImageProcessor)
    assert processor.backend == "torchvision"
    assert not [record for record in records if "backend" in record.getMessage()]
