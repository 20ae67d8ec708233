"""``hf-distill embed``: a folder of images to a safetensors file, robust to unreadable files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from hf_distill.cli import main
from hf_distill.data.decoding import ImageDecodeError
from hf_distill.hub import save_embedder
from hf_distill.models.embedder import (
    UniversalEmbedderConfig,
    UniversalEmbedderImageProcessor,
    UniversalEmbedderModel,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed_cli")
    torch.manual_seed(0)
    config = UniversalEmbedderConfig(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=dict(img_size=32, patch_size=8, depth=1),
        image_size=32,
        embed_dim=8,
    )
    model = UniversalEmbedderModel(config).eval()
    save_embedder(model, root / "model")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(images / "b.png")
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), mode="L").save(images / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (50, 32, 3), dtype=np.uint8)).save(images / "sub" / "c.bmp")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (images / "notes.txt").write_text("not an image, ignored by extension")
    return {"root": root, "model": model, "images": images}


def test_embed_skips_bad_files_and_matches_the_model(setup, capsys):
    output = setup["root"] / "out" / "embeddings.safetensors"
    code = main(
        [
            "embed",
            "--model",
            str(setup["root"] / "model"),
            "--images",
            str(setup["images"]),
            "--output",
            str(output),
        ]
        + ["--on-bad-image", "skip", "--batch-size", "2"]
    )
    assert code == 0 and "wrote 3 embeddings of dimension 8" in capsys.readouterr().out
    with safe_open(str(output), framework="pt") as handle:
        embeddings = handle.get_tensor("embeddings")
        metadata = handle.metadata()
    paths = json.loads(metadata["paths"])
    assert paths == ["a.jpg", "b.png", "sub/c.bmp"]
    assert metadata["num_skipped"] == "1" and json.loads(metadata["skipped"])[0][0].endswith("broken.png")
    processor = UniversalEmbedderImageProcessor.from_model_config(setup["model"].config)
    with torch.no_grad():
        pixels = processor([Image.open(setup["images"] / p) for p in paths], return_tensors="pt").pixel_values
        expected = setup["model"](pixels).embeddings
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=1e-5)


def test_embed_stops_at_a_bad_file_by_default(setup, tmp_path):
    argv = ["embed", "--model", str(setup["root"] / "model"), "--images", str(setup["images"])]
    with pytest.raises(ImageDecodeError, match="broken.png"):
        main(argv + ["--output", str(tmp_path / "out.safetensors")])
    assert not (tmp_path / "out.safetensors").exists()


def test_embed_rejects_empty_folder_and_wrong_suffix(setup, tmp_path):
    argv = ["embed", "--model", str(setup["root"] / "model")]
    with pytest.raises(ValueError, match="no image files"):
        main(argv + ["--images", str(tmp_path), "--output", str(tmp_path / "out.safetensors")])
    with pytest.raises(ValueError, match=r"\.safetensors"):
        main(argv + ["--images", str(setup["images"]), "--output", str(tmp_path / "out.npy")])
