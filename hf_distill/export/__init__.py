"""Exports of a saved universal embedder to serving formats (ONNX Runtime)."""

from hf_distill.export.onnx import ONNX_OPSET, export_onnx, load_embedder_folder

__all__ = ["ONNX_OPSET", "export_onnx", "load_embedder_folder"]
