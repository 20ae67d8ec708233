"""ONNX export of a universal embedder, for serving with ONNX Runtime alone (no PyTorch).

The graph maps ``pixel_values`` ``(batch, 3, image_size, image_size)`` float32 — the output of the saved image
processor, which is written beside it — to ``embeddings`` ``(batch, dim)`` float32, L2-normalised inside the
graph; the batch axis is dynamic. ``truncate_dim`` bakes a Matryoshka prefix (then renormalised) into the graph.

optimum's ONNX exporter is not used: ``optimum-onnx`` needs transformers < 4.58 (this library is built on
transformers 5), and a custom model type would need its own ``OnnxConfig`` anyway; ``torch.onnx.export``
(the TorchScript-based exporter) traces the one ``pixel_values -> embeddings`` path directly.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# Opset of the exported graph; ONNX Runtime 1.16 and later run it.
ONNX_OPSET = 17
ONNX_FILE = "model.onnx"
EXPORT_INFO_FILE = "onnx_export.json"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "embeddings"


def load_embedder_folder(path: str | os.PathLike, argument: str = "--model") -> Any:
    """Load a saved universal embedder, or say why the folder is not one.

    Args:
        path: a folder written by ``hf_distill.hub.save_embedder`` (or ``export_embedder().save_pretrained``).
        argument: how to call the path in error messages.
    """
    import hf_distill  # noqa: F401  (registers the embedder with the Auto classes)
    from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel

    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{argument} {folder}: no config.json, so it is not a saved model folder")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as error:
        raise ValueError(f"{argument} {folder}: config.json is not valid JSON ({error})") from error
    if model_type != UniversalEmbedderConfig.model_type:
        raise ValueError(
            f"{argument} {folder} holds a {model_type!r} model, not a universal embedder "
            f"({UniversalEmbedderConfig.model_type!r}); export the embedder first (e.g. model.export_embedder())"
        )
    return UniversalEmbedderModel.from_pretrained(folder).eval()


class _ServingGraph(nn.Module):
    """``pixel_values -> embeddings``: the embedder's forward, truncated, then L2-normalised."""

    def __init__(self, model: nn.Module, truncate_dim: int | None) -> None:
        super().__init__()
        self.model = model
        self.truncate_dim = truncate_dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.model.embed_pixel_values(pixel_values, self.truncate_dim)
        # The served vector is always a unit vector, whatever config.normalize says.
        return F.normalize(embeddings, dim=-1)


def export_onnx(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    truncate_dim: int | None = None,
    opset: int = ONNX_OPSET,
    check: bool = True,
) -> Path:
    """Export the embedder of ``model_dir`` to ``output_dir/model.onnx`` beside its image processor.

    Writes ``model.onnx``, ``preprocessor_config.json`` (the saved processor, else the config's), the
    embedder's ``config.json`` and ``onnx_export.json`` (opset, input and output names and shapes, width).

    Args:
        model_dir: a saved universal embedder folder.
        output_dir: the folder to write (created).
        truncate_dim: bake this Matryoshka width into the graph (one of the model's ``matryoshka_dims``).
        opset: ONNX opset of the graph.
        check: run the exported graph with ONNX Runtime on a random batch of 2 and refuse an export whose
            outputs differ from PyTorch's by more than 1e-4 (needs ``onnxruntime``).

    Returns:
        the path of ``model.onnx``.
    """
    from hf_distill.models.embedder import check_truncate_dim

    model = load_embedder_folder(model_dir)
    check_truncate_dim(truncate_dim, model.config.matryoshka_dims, "--truncate-dim")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    graph = _ServingGraph(model, truncate_dim).eval()
    size = model.config.image_size
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    path = output / ONNX_FILE
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
        expected = graph(example).numpy()
    model.image_processor.save_pretrained(output)
    model.config.to_json_file(output / "config.json")
    info = {
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", int(expected.shape[1])], "dtype": "float32"},
        "l2_normalized": True,
        "truncate_dim": truncate_dim,
        "matryoshka_dims": list(model.config.matryoshka_dims),
        "exported_with": {"torch": torch.__version__},
    }
    (output / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    if check:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        served = session.run([OUTPUT_NAME], {INPUT_NAME: example.numpy()})[0]
        error = float(abs(served - expected).max())
        if error > 1e-4:
            raise RuntimeError(f"{path}: ONNX Runtime differs from PyTorch by {error:.2e} (max abs) > 1e-4")
        logger.info("ONNX Runtime matches PyTorch within %.1e (max abs) on a random batch", error)
    logger.info("exported %s (opset %d) to %s", model_dir, opset, path)
    return path


__all__ = ["EXPORT_INFO_FILE", "ONNX_FILE", "ONNX_OPSET", "export_onnx", "load_embedder_folder"]
