"""``hf-distill export-onnx``: ONNX Runtime gives PyTorch's embeddings (max abs <= 1e-4) on real benchmark images,
for a pretrained CNN and a ViT, at the full width and at a Matryoshka width; bad folders are named."""

import json

import numpy as np
import onnxruntime
import pytest
import torch

from hf_distill.cli import main
from hf_distill.hub import save_embedder
from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def benchmark_images(tiny_benchmark):
    """A few real test images of every domain of the tiny benchmark (PIL, 32 px)."""
    images = []
    for splits in tiny_benchmark.domains.values():
        test = splits["test"]
        images += list(test.select(range(min(4, len(test))))["image"])
    return images


def _embedders(root, offline_lite0):
    torch.manual_seed(0)
    cnn = UniversalEmbedderConfig(
        backbone=offline_lite0.architecture,
        pretrained_file=str(offline_lite0.path),
        image_size=48,
        resize_size=56,
        image_mean=list(offline_lite0.mean),
        image_std=list(offline_lite0.std),
        embed_dim=32,
        matryoshka_dims=[32, 16, 8],
    )
    vit = UniversalEmbedderConfig(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=dict(img_size=32, patch_size=8, depth=2),
        image_size=32,
        embed_dim=16,
        matryoshka_dims=[16, 8],
        feature_norm=True,
    )
    folders = {}
    for name, config in (("cnn", cnn), ("vit", vit)):
        save_embedder(UniversalEmbedderModel(config).eval(), root / name)
        folders[name] = root / name
    return folders


@pytest.fixture(scope="module")
def saved(tmp_path_factory, offline_lite0):
    return _embedders(tmp_path_factory.mktemp("onnx"), offline_lite0)


@pytest.mark.parametrize("name,truncate_dim", [("cnn", None), ("cnn", 8), ("vit", None), ("vit", 8)])
def test_onnx_runtime_matches_pytorch_on_benchmark_images(
    saved, benchmark_images, tmp_path, name, truncate_dim
):
    output = tmp_path / "onnx"
    args = ["export-onnx", "--model", str(saved[name]), "--output", str(output)]
    assert main(args + (["--truncate-dim", str(truncate_dim)] if truncate_dim else [])) == 0
    info = json.loads((output / "onnx_export.json").read_text())
    assert info["opset"] >= 17 and info["input"]["name"] == "pixel_values"
    model = UniversalEmbedderModel.from_pretrained(saved[name]).eval()
    expected = model.encode(benchmark_images, batch_size=7, truncate_dim=truncate_dim)
    # Serving side: the processor written beside the graph, then ONNX Runtime alone; one run with the whole
    # batch and one with a single image (the batch axis is dynamic).
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(output, trust_remote_code=True)
    pixels = processor(benchmark_images, return_tensors="np")["pixel_values"].astype(np.float32)
    session = onnxruntime.InferenceSession(str(output / "model.onnx"), providers=["CPUExecutionProvider"])
    served = session.run(["embeddings"], {"pixel_values": pixels})[0]
    assert served.shape == (len(benchmark_images), truncate_dim or model.config.embed_dim)
    assert float(np.abs(served - expected).max()) <= TOLERANCE
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    one = session.run(["embeddings"], {"pixel_values": pixels[3:4]})[0]
    assert float(np.abs(one[0] - expected[3]).max()) <= TOLERANCE
    if truncate_dim:
        # The baked prefix is the full embedding's prefix, renormalised.
        full = model.encode(benchmark_images)[:, :truncate_dim]
        full /= np.linalg.norm(full, axis=1, keepdims=True)
        assert float(np.abs(served - full).max()) <= TOLERANCE


def test_export_refuses_a_folder_that_is_not_an_embedder(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        main(["export-onnx", "--model", str(tmp_path / "empty"), "--output", str(tmp_path / "out")])
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "hf_distill_udon"}))
    with pytest.raises(ValueError, match=r"holds a 'hf_distill_udon' model, not a universal embedder"):
        main(["export-onnx", "--model", str(other), "--output", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"--truncate-dim=4 is not a width .* \[16, 8\]"):
        main(
            [
                "export-onnx",
                "--model",
                str(saved["vit"]),
                "--output",
                str(tmp_path / "o"),
                "--truncate-dim",
                "4",
            ]
        )
