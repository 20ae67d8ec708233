"""``UniversalEmbedderModel.encode`` and ``truncate_dim``: inputs of every kind, the saved processor, Matryoshka
prefixes, and the errors of widths that were not trained."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from transformers import AutoModel

from hf_distill.cli import main
from hf_distill.hub import save_embedder
from hf_distill.models.embedder import (
    UniversalEmbedderConfig,
    UniversalEmbedderImageProcessor,
    UniversalEmbedderModel,
)

TINY_VIT = dict(img_size=32, patch_size=8, depth=1)


def tiny_config(**overrides) -> UniversalEmbedderConfig:
    values = dict(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=TINY_VIT,
        image_size=32,
        resize_size=36,
        embed_dim=16,
        matryoshka_dims=[16, 8, 4],
    )
    values.update(overrides)
    return UniversalEmbedderConfig(**values)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode")
    torch.manual_seed(0)
    model = UniversalEmbedderModel(tiny_config()).eval()
    # A processor that differs from the config's (bicubic, other mean), so using the saved one shows.
    processor = UniversalEmbedderImageProcessor(
        image_size=32, resize_size=40, image_mean=[0.5] * 3, image_std=[0.25] * 3, resample="bicubic"
    )
    save_embedder(model, root / "model", processor=processor)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (30 + 7 * i, 44, 3), dtype=np.uint8) for i in range(5)]
    (root / "images").mkdir()
    for number, array in enumerate(arrays):
        Image.fromarray(array).save(root / "images" / f"{number}.png")
    return {"root": root, "model": model, "processor": processor, "arrays": arrays}


def _by_hand(model, processor, arrays) -> torch.Tensor:
    pixels = torch.stack([processor.process_one(Image.fromarray(a)) for a in arrays])
    with torch.no_grad():
        features = model.backbone(pixels)
        return F.normalize(model.head(features), dim=-1)


def test_encode_paths_arrays_and_pil_agree_with_the_saved_processor(saved):
    model = AutoModel.from_pretrained(saved["root"] / "model")
    expected = _by_hand(model, saved["processor"], saved["arrays"])
    paths = [saved["root"] / "images" / f"{n}.png" for n in range(5)]
    from_paths = model.encode([str(p) for p in paths], batch_size=2)
    assert (
        isinstance(from_paths, np.ndarray) and from_paths.shape == (5, 16) and from_paths.dtype == np.float32
    )
    np.testing.assert_allclose(from_paths, expected.numpy(), atol=1e-5)
    from_arrays = model.encode(saved["arrays"], batch_size=3, convert_to_numpy=False)
    torch.testing.assert_close(from_arrays, expected, atol=1e-5, rtol=1e-5)
    single = model.encode(Image.fromarray(saved["arrays"][2]))
    assert single.shape == (16,)
    np.testing.assert_allclose(single, expected[2].numpy(), atol=1e-5)
    # Built in memory (no saved processor), the model falls back to the config's preprocessing, which differs.
    config_only = saved["model"].encode(saved["arrays"][:1])
    assert not np.allclose(config_only, expected[:1].numpy(), atol=1e-3)


def test_encode_in_workers_keeps_order(saved):
    model = AutoModel.from_pretrained(saved["root"] / "model")
    paths = [str(saved["root"] / "images" / f"{n}.png") for n in (4, 0, 3, 1, 2)]
    np.testing.assert_allclose(
        model.encode(paths, batch_size=2, num_workers=2), model.encode(paths, batch_size=5), atol=1e-6
    )


def test_truncate_dim_is_the_renormalised_prefix(saved):
    model = AutoModel.from_pretrained(saved["root"] / "model")
    full = model.encode(saved["arrays"], convert_to_numpy=False)
    for width in (8, 4):
        prefix = full[:, :width] / full[:, :width].norm(dim=1, keepdim=True)
        torch.testing.assert_close(
            model.encode(saved["arrays"], truncate_dim=width, convert_to_numpy=False), prefix
        )
        # Set at load time, the forward itself truncates.
        loaded = AutoModel.from_pretrained(saved["root"] / "model", truncate_dim=width)
        torch.testing.assert_close(loaded.encode(saved["arrays"], convert_to_numpy=False), prefix)


def test_untrained_or_too_large_widths_are_refused_by_name(saved, tmp_path):
    model = AutoModel.from_pretrained(saved["root"] / "model")
    with pytest.raises(ValueError, match=r"truncate_dim=12 is not a width .* \[16, 8, 4\]"):
        model.encode(saved["arrays"], truncate_dim=12)
    with pytest.raises(ValueError, match="truncate_dim=32 is larger than"):
        model.encode(saved["arrays"], truncate_dim=32)
    with pytest.raises(ValueError, match=r"truncate_dim=5 is not a width"):
        AutoModel.from_pretrained(saved["root"] / "model", truncate_dim=5)
    with pytest.raises(ValueError, match="largest width must be the embedding width 16"):
        tiny_config(matryoshka_dims=[8, 4])
    with pytest.raises(ValueError, match="decreasing"):
        tiny_config(matryoshka_dims=[16, 4, 8])
    # Default: only the full width was trained.
    plain = UniversalEmbedderModel(tiny_config(matryoshka_dims=None))
    assert plain.config.matryoshka_dims == [16]
    with pytest.raises(ValueError, match=r"trained widths \(matryoshka_dims\): \[16\]"):
        plain.encode(saved["arrays"], truncate_dim=8)
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        model.encode([str(tmp_path / "nowhere.png")])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        model.encode([tmp_path / "bad.png"])


def test_identity_head_records_the_feature_width():
    model = UniversalEmbedderModel(tiny_config(embed_dim=None, matryoshka_dims=None))
    assert model.config.matryoshka_dims == [model.feature_dim]


def test_embed_and_evaluate_take_truncate_dim(saved, tmp_path, tiny_benchmark_dir, capsys):
    model = AutoModel.from_pretrained(saved["root"] / "model")
    output = tmp_path / "e.safetensors"
    args = ["embed", "--model", str(saved["root"] / "model"), "--images", str(saved["root"] / "images")]
    assert main([*args, "--output", str(output), "--truncate-dim", "8", "--num-workers", "0"]) == 0
    with safe_open(str(output), "pt") as handle:
        written = handle.get_tensor("embeddings")
    paths = [str(saved["root"] / "images" / f"{n}.png") for n in range(5)]
    np.testing.assert_allclose(written.numpy(), model.encode(paths, truncate_dim=8), atol=1e-6)
    with pytest.raises(ValueError, match=r"--truncate-dim=6 is not a width"):
        main([*args, "--output", str(output), "--truncate-dim", "6"])
    evaluate = ["evaluate", "--model", str(saved["root"] / "model"), "--benchmark", str(tiny_benchmark_dir)]
    with pytest.raises(ValueError, match=r"--truncate-dim=64 is larger than the embedding width 16"):
        main([*evaluate, "--truncate-dim", "64"])
    saved_file = tmp_path / "eval.safetensors"
    assert (
        main([*evaluate, "--domains", "digits", "--truncate-dim", "4", "--save-embeddings", str(saved_file)])
        == 0
    )
    with safe_open(str(saved_file), "pt") as handle:
        assert handle.get_tensor("digits/query").shape[1] == 4


def test_encode_reads_a_datasets_column_lazily_in_order(saved, tiny_benchmark):
    model = AutoModel.from_pretrained(saved["root"] / "model")
    test = tiny_benchmark.domains["digits"]["test"].select(range(6))
    column = test["image"]
    assert not isinstance(column, list)
    np.testing.assert_allclose(
        model.encode(column, batch_size=4), model.encode([test[i]["image"] for i in range(6)]), atol=1e-6
    )
