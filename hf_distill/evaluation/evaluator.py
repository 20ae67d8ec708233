"""Evaluators with the sentence-transformers call signature, usable from a ``Trainer`` or alone.

``RetrievalEvaluator`` embeds each split of a benchmark once and scores UnED retrieval (merged and
separate protocols); ``KNNClassificationEvaluator`` is the k-NN top-1 probe (train split as index, val
split as queries) used by UNIC and MLFD. Both put the model in eval mode while embedding and then restore
every sub-module's own train/eval flag, so a frozen teacher kept in eval mode inside a training model stays
in eval mode.

Length: the retrieval and the k-NN evaluators share the embedding loop, the result writer and the domain
selection, so they stay in one module (about 420 lines).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from hf_distill.evaluation.knn import Backend, knn_search
from hf_distill.evaluation.metrics import PROTOCOLS, RetrievalDomain, evaluate_retrieval

logger = logging.getLogger(__name__)

Transform = Callable[[Any], torch.Tensor]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode, then give every sub-module back its own ``training`` flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def default_transform(model: nn.Module) -> Transform:
    """The evaluation transform described by a model's config (``image_size``, ``image_mean``, ``image_std``);
    for a model that reads cached trunk maps, the maps as tensors.

    Args:
        model: a model whose ``config`` carries the preprocessing fields (``resize_size`` is optional).
    """
    from hf_distill.data.transforms import ImageTransform
    from hf_distill.layers.trunk import takes_trunk_maps

    if takes_trunk_maps(model):
        # A cached-trunk benchmark stores the trunk's output maps of the already transformed images.
        return torch.as_tensor
    config = getattr(model, "config", None)
    missing = [key for key in ("image_size", "image_mean", "image_std") if getattr(config, key, None) is None]
    if missing:
        raise ValueError(
            f"{type(model).__name__}'s config has no {', '.join(missing)}; pass transform= to the evaluator"
        )
    return ImageTransform(
        config.image_size,
        config.image_mean,
        config.image_std,
        train=False,
        resize_size=getattr(config, "resize_size", None),
    )


def output_embeddings(output: Any) -> torch.Tensor:
    """The embedding tensor of a model output: the tensor itself, or its ``embeddings`` field."""
    if isinstance(output, torch.Tensor):
        return output
    embeddings = getattr(output, "embeddings", None)
    if embeddings is None and isinstance(output, dict):
        embeddings = output.get("embeddings")
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(
            f"the model returned {type(output).__name__} without an `embeddings` tensor; "
            "return a tensor or an output with an `embeddings` field"
        )
    return embeddings


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters(), None)
    if parameter is None:
        return torch.device("cpu"), torch.float32
    return parameter.device, parameter.dtype if parameter.dtype.is_floating_point else torch.float32


class _TransformedImages(torch.utils.data.Dataset):
    """The ``image`` column of a ``datasets.Dataset``, decoded and transformed (in loader workers if any)."""

    def __init__(self, images: Dataset, transform: Transform) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.images[int(index)]["image"])

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        # One Arrow read per batch rather than one per image.
        return [self.transform(image) for image in self.images[[int(i) for i in indices]]["image"]]


@torch.no_grad()
def embed_dataset(
    model: nn.Module, dataset: Dataset, transform: Transform, batch_size: int = 128, num_workers: int = 0
) -> torch.Tensor:
    """Embed every image of a dataset, in order.

    Args:
        model: called as ``model(pixel_values=...)``; returns a tensor or an output with ``embeddings``.
        dataset: a ``datasets.Dataset`` with an ``image`` column.
        transform: maps one decoded image to a ``(C, H, W)`` tensor.
        batch_size: images per forward pass.
        num_workers: ``DataLoader`` worker processes that decode and transform the next batches while the
            model runs (0: in this process, between forward passes).

    Returns:
        A float32 CPU tensor ``(len(dataset), dim)``. The model's train/eval flags are left as they were.
    """
    if "image" not in dataset.column_names:
        raise ValueError(f"the dataset has no 'image' column (columns: {dataset.column_names})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    device, dtype = _model_device_dtype(model)
    loader = torch.utils.data.DataLoader(
        _TransformedImages(dataset.select_columns(["image"]), transform),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    chunks = []
    with eval_mode(model):
        for batch in loader:
            pixel_values = batch.to(device, dtype, non_blocking=True)
            embeddings = output_embeddings(model(pixel_values=pixel_values))
            chunks.append(embeddings.detach().to("cpu", torch.float32))
    if not chunks:
        raise ValueError("the dataset is empty: nothing to embed")
    return torch.cat(chunks)


def _labels(dataset: Dataset) -> list:
    if "label" not in dataset.column_names:
        raise ValueError(f"the dataset has no 'label' column (columns: {dataset.column_names})")
    return list(dataset.select_columns(["label"])["label"])


def _select_domains(domains: Sequence[str] | None, needed: dict[str, Any]) -> list[str]:
    names = list(needed) if domains is None else list(domains)
    unknown = [name for name in names if name not in needed]
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; the benchmark has {list(needed)}")
    if not names:
        raise ValueError("no domain to evaluate")
    return names


class _ResultWriter:
    """Appends one CSV row per call and rewrites a JSON with the latest metrics, like sentence-transformers."""

    def __init__(self, stem: str) -> None:
        self.stem = stem

    def write(self, output_path: str | Path, metrics: dict[str, float], epoch: int, steps: int) -> None:
        folder = Path(output_path)
        folder.mkdir(parents=True, exist_ok=True)
        csv_path = folder / f"{self.stem}.csv"
        new_file = not csv_path.exists()
        with csv_path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(["epoch", "steps", *metrics])
            writer.writerow([epoch, steps, *metrics.values()])
        payload = {"epoch": epoch, "steps": steps, "metrics": metrics}
        (folder / f"{self.stem}.json").write_text(json.dumps(payload, indent=2) + "\n")


class RetrievalEvaluator:
    """UnED retrieval of a benchmark's evaluation pairs (SPEC.md section 2).

    Args:
        benchmark: a ``hf_distill.data.Benchmark`` (``domains`` and ``eval_pairs``).
        split: evaluation name in ``benchmark.eval_pairs`` (``"test"`` or ``"val"``).
        protocols: any of ``"merged"`` and ``"separate"``.
        transform: image -> tensor; ``None`` builds it from the model's config at each call.
        batch_size: images per forward pass.
        domains: evaluate only these domains (default: all, in benchmark order).
        map_k: cut-off of the extra mAP@k metric.
        backend: k-NN backend (``"auto"``, ``"faiss"``, ``"torch"``).
        num_workers: loader workers decoding images while the model runs (see `embed_dataset`).

    Calling it returns ``{"<protocol>/<domain>/<metric>": value, "<protocol>/mean/<metric>": value}``;
    ``primary_metric`` is ``"merged/mean/R@1"`` (model selection of UDON) when merged is computed.
    """

    greater_is_better = True

    def __init__(
        self,
        benchmark: Any,
        split: str = "test",
        protocols: Sequence[str] = PROTOCOLS,
        transform: Transform | None = None,
        batch_size: int = 128,
        domains: Sequence[str] | None = None,
        map_k: int = 5,
        backend: Backend = "auto",
        num_workers: int = 0,
    ) -> None:
        if split not in benchmark.eval_pairs:
            raise ValueError(
                f"split {split!r} has no evaluation pairs; available: {list(benchmark.eval_pairs)}"
            )
        unknown = set(protocols) - set(PROTOCOLS)
        if unknown or not protocols:
            raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {list(protocols)}")
        pairs = benchmark.eval_pairs[split]
        self.benchmark = benchmark
        self.split = split
        self.protocols = tuple(protocols)
        self.transform = transform
        self.batch_size = batch_size
        self.domains = _select_domains(domains, pairs)
        self.pairs = {name: tuple(pairs[name]) for name in self.domains}
        self.map_k = map_k
        self.backend = backend
        self.num_workers = num_workers
        protocol = "merged" if "merged" in self.protocols else self.protocols[0]
        self.primary_metric = f"{protocol}/mean/R@1"
        self._writer = _ResultWriter(f"retrieval_{split}_results")
        for name, (query_split, index_split) in self.pairs.items():
            for part in (query_split, index_split):
                if part not in benchmark.domains[name]:
                    raise ValueError(
                        f"domain {name!r} has no split {part!r} (needed by the {split!r} evaluation pairs)"
                    )
        # Labels do not change between calls; read them once.
        self._labels = {
            (name, part): _labels(benchmark.domains[name][part])
            for name, pair in self.pairs.items()
            for part in set(pair)
        }

    def embed(self, model: nn.Module) -> dict[str, RetrievalDomain]:
        """Embed each needed split once and return the retrieval inputs of every domain."""
        transform = self.transform or default_transform(model)
        retrieval = {}
        for name, (query_split, index_split) in self.pairs.items():
            splits = self.benchmark.domains[name]
            query = embed_dataset(model, splits[query_split], transform, self.batch_size, self.num_workers)
            if query_split == index_split:
                retrieval[name] = RetrievalDomain(query, self._labels[(name, query_split)])
            else:
                index = embed_dataset(
                    model, splits[index_split], transform, self.batch_size, self.num_workers
                )
                retrieval[name] = RetrievalDomain(
                    query, self._labels[(name, query_split)], index, self._labels[(name, index_split)]
                )
        return retrieval

    def __call__(
        self, model: nn.Module, output_path: str | Path | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        """Embed, search and score; write ``retrieval_<split>_results.{csv,json}`` under ``output_path``."""
        return self.score(self.embed(model), output_path, epoch, steps)

    def score(
        self,
        retrieval: dict[str, RetrievalDomain],
        output_path: str | Path | None = None,
        epoch: int = -1,
        steps: int = -1,
    ) -> dict[str, float]:
        """Score embeddings from :meth:`embed` (kept by a caller that also draws or truncates them).

        Args:
            retrieval: the output of :meth:`embed`.
            output_path / epoch / steps: as for calling the evaluator.
        """
        metrics = evaluate_retrieval(
            retrieval, protocols=self.protocols, map_k=self.map_k, backend=self.backend
        )
        logger.info(
            "retrieval %s (epoch %s, step %s): %s = %.4f",
            self.split,
            epoch,
            steps,
            self.primary_metric,
            metrics[self.primary_metric],
        )
        if output_path is not None:
            self._writer.write(output_path, metrics, epoch, steps)
        return metrics


def knn_classify(
    query_embeddings: np.ndarray | torch.Tensor,
    index_embeddings: np.ndarray | torch.Tensor,
    index_labels: Sequence[int] | np.ndarray,
    k: int = 20,
    weighting: Literal["cosine", "majority"] = "cosine",
    temperature: float = 0.07,
    backend: Backend = "auto",
) -> np.ndarray:
    """Predict a label for each query by a vote of its ``k`` nearest index items (cosine similarity).

    Args:
        query_embeddings / index_embeddings: ``(n, dim)`` arrays or tensors.
        index_labels: one int label per index item.
        k: neighbours that vote (fewer if the index is smaller).
        weighting: ``"cosine"``: a neighbour with similarity ``s`` votes ``exp(s / temperature)`` (the
            weighted k-NN of DINO, which UNIC's k = 20 evaluation follows); ``"majority"``: one vote each.
        temperature: sharpness of the cosine weights.
        backend: k-NN backend.

    Returns:
        ``(n_queries,)`` int64 predictions; equal votes go to the smallest label.
    """
    if weighting not in ("cosine", "majority"):
        raise ValueError(f"weighting must be 'cosine' or 'majority', got {weighting!r}")
    labels = np.asarray(index_labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or (labels < 0).any():
        raise ValueError("k-NN classification needs one integer label >= 0 per index item")
    if len(labels) != len(index_embeddings):
        raise ValueError(f"{len(index_embeddings)} index embeddings but {len(labels)} labels")
    scores, ids = knn_search(query_embeddings, index_embeddings, min(k, len(labels)), backend=backend)
    weights = np.exp(scores / temperature) if weighting == "cosine" else np.ones_like(scores)
    votes = np.zeros((len(ids), int(labels.max()) + 1))
    np.add.at(votes, (np.arange(len(ids))[:, None], labels[ids]), weights)
    return votes.argmax(axis=1)


class KNNClassificationEvaluator:
    """k-NN top-1 accuracy per domain: index = ``index_split`` (train), queries = ``query_split`` (val).

    Args:
        benchmark: a ``hf_distill.data.Benchmark``.
        k: neighbours that vote (UNIC: 20).
        weighting: ``"cosine"`` or ``"majority"`` (see ``knn_classify``).
        temperature: sharpness of the cosine weights.
        index_split / query_split: splits of each domain (labels must share one label space).
        transform: image -> tensor; ``None`` builds it from the model's config.
        batch_size: images per forward pass.
        domains: evaluate only these domains (default: all).
        backend: k-NN backend.
        num_workers: loader workers decoding images while the model runs (see `embed_dataset`).

    Calling it returns ``{"knn/<domain>/top1": accuracy, "knn/mean/top1": unweighted mean}``.
    """

    greater_is_better = True
    primary_metric = "knn/mean/top1"

    def __init__(
        self,
        benchmark: Any,
        k: int = 20,
        weighting: Literal["cosine", "majority"] = "cosine",
        temperature: float = 0.07,
        index_split: str = "train",
        query_split: str = "val",
        transform: Transform | None = None,
        batch_size: int = 128,
        domains: Sequence[str] | None = None,
        backend: Backend = "auto",
        num_workers: int = 0,
    ) -> None:
        if weighting not in ("cosine", "majority"):
            raise ValueError(f"weighting must be 'cosine' or 'majority', got {weighting!r}")
        self.benchmark = benchmark
        self.k = k
        self.weighting = weighting
        self.temperature = temperature
        self.index_split = index_split
        self.query_split = query_split
        self.transform = transform
        self.batch_size = batch_size
        self.domains = _select_domains(domains, benchmark.domains)
        self.backend = backend
        self.num_workers = num_workers
        for name in self.domains:
            for part in (index_split, query_split):
                if part not in benchmark.domains[name]:
                    raise ValueError(f"domain {name!r} has no split {part!r}")
        self._labels = {
            (name, part): np.asarray(_labels(benchmark.domains[name][part]))
            for name in self.domains
            for part in (index_split, query_split)
        }
        self._writer = _ResultWriter(f"knn_{query_split}_results")

    def __call__(
        self, model: nn.Module, output_path: str | Path | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        """Embed both splits of each domain, classify the queries, and return top-1 accuracies."""
        transform = self.transform or default_transform(model)
        metrics = {}
        for name in self.domains:
            splits = self.benchmark.domains[name]
            index = embed_dataset(
                model, splits[self.index_split], transform, self.batch_size, self.num_workers
            )
            queries = embed_dataset(
                model, splits[self.query_split], transform, self.batch_size, self.num_workers
            )
            predictions = knn_classify(
                queries,
                index,
                self._labels[(name, self.index_split)],
                self.k,
                self.weighting,
                self.temperature,
                self.backend,
            )
            metrics[f"knn/{name}/top1"] = float(
                (predictions == self._labels[(name, self.query_split)]).mean()
            )
        metrics[self.primary_metric] = float(np.mean([metrics[f"knn/{name}/top1"] for name in self.domains]))
        logger.info(
            "k-NN (epoch %s, step %s): %s = %.4f",
            epoch,
            steps,
            self.primary_metric,
            metrics[self.primary_metric],
        )
        if output_path is not None:
            self._writer.write(output_path, metrics, epoch, steps)
        return metrics
