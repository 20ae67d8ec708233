"""``hf-distill export-onnx``: a saved universal embedder as an ONNX graph for ONNX Runtime.

Writes ``model.onnx`` (input ``pixel_values`` ``(batch, 3, S, S)`` float32, output ``embeddings``
``(batch, dim)`` float32, L2-normalised inside the graph, dynamic batch axis), the image processor
(``preprocessor_config.json``), the embedder's ``config.json`` and ``onnx_export.json`` (opset, shapes).
The export is checked against PyTorch with ONNX Runtime on a random batch (max abs difference <= 1e-4).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export-onnx`` sub-command."""
    from hf_distill.export.onnx import ONNX_OPSET

    parser = subparsers.add_parser(
        "export-onnx",
        help="export a saved universal embedder to ONNX (for ONNX Runtime serving)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, help="embedder folder saved by hf_distill")
    parser.add_argument(
        "--output", required=True, type=Path, help="folder to write model.onnx and its processor"
    )
    parser.add_argument(
        "--truncate-dim",
        type=int,
        default=None,
        help="bake a Matryoshka width (one of the model's matryoshka_dims) into the graph",
    )
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``hf-distill export-onnx``."""
    from hf_distill.export.onnx import export_onnx

    path = export_onnx(args.model, args.output, args.truncate_dim, args.opset, check=not args.no_check)
    print(f"wrote {path} (opset {args.opset}) and its image processor")
    return 0
