"""ONNX Runtime against PyTorch on the CPU: throughput of the exported embedder at batch 1 and 64, same process.

    HF_HUB_OFFLINE=1 python benchmarks/bench_onnx.py [--backbone tf_efficientnet_lite0] [--image-size 64]
        [--repeats 7] [--threads 2]

The embedder (random weights, the offline recipes' Lite0 at 64 px, 64-d head) is saved, exported with
``hf-distill export-onnx`` (``export_onnx``), and both the PyTorch forward (eval, ``torch.no_grad``) and the ONNX
Runtime session (CPU provider, ``--threads`` intra-op threads, as many as torch gets) embed the same preprocessed
batch, interleaved, median of ``--repeats``. The limit of each ONNX Runtime row is PyTorch's figure; a ratio
below 1 means ONNX Runtime is faster. The max abs difference of the two outputs is printed too.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from table import emit_row, interleaved_medians, load_average

from hf_distill.export import ONNX_OPSET, export_onnx
from hf_distill.hub import save_embedder
from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel


def measure(
    model: UniversalEmbedderModel, session: onnxruntime.InferenceSession, batch: int, size: int, repeats: int
) -> tuple[dict[str, float], float]:
    """Images per second of PyTorch and ONNX Runtime on one batch, and the max abs difference of their outputs."""
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    feed = {"pixel_values": pixels.numpy()}
    # More calls per sample at batch 1, so that each timed sample is long enough to measure.
    calls = 20 if batch == 1 else 1

    def run_torch() -> None:
        for _ in range(calls):
            model(pixel_values=pixels)

    def run_onnx() -> None:
        for _ in range(calls):
            session.run(None, feed)

    with torch.no_grad():
        expected = model(pixel_values=pixels).embeddings.numpy()
        difference = float(np.abs(session.run(None, feed)[0] - expected).max())
        seconds = interleaved_medians({"torch": run_torch, "onnx": run_onnx}, repeats)
    return {name: batch * calls / value for name, value in seconds.items()}, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads: {args.threads}; load average before: {load_average():.1f}")
    torch.manual_seed(0)
    config = UniversalEmbedderConfig(backbone=args.backbone, image_size=args.image_size, embed_dim=64)
    with tempfile.TemporaryDirectory() as work:
        save_embedder(UniversalEmbedderModel(config).eval(), Path(work, "model"))
        path = export_onnx(Path(work, "model"), Path(work, "onnx"))
        model = UniversalEmbedderModel.from_pretrained(Path(work, "model")).eval()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        # ONNX Runtime's idle threads spin by default after a run, which would steal the cores from the
        # interleaved PyTorch samples.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for batch in (1, 64):
        rates, difference = measure(model, session, batch, args.image_size, args.repeats)
        print(
            f"batch {batch}: ONNX Runtime {rates['onnx']:,.0f} img/s, PyTorch {rates['torch']:,.0f} img/s, "
            f"max abs difference {difference:.1e}"
        )
        emit_row(
            f"ONNX Runtime embedder, batch {batch} ({args.backbone}, {args.image_size} px)",
            rates["onnx"],
            "PyTorch CPU forward, same process",
            rates["torch"],
            "img/s",
            None,
            higher_is_better=True,
            note=f"opset {ONNX_OPSET}, {args.threads} threads each, median of {args.repeats} interleaved, "
            f"max abs diff {difference:.1e}, load {load_average():.1f}",
        )
    print(f"load average after: {load_average():.1f}")


if __name__ == "__main__":
    main()
