"""One entry to load domains, whatever their source, and one way to take a per-domain subset.

``load_domains`` reads the offline benchmark, UnED on disk, image folders or Hub datasets and always returns a
:class:`~hf_distill.data.domains.Benchmark`; ``subset_indices`` / ``subset_split`` / ``subset_benchmark`` are the
single seeded subsetting every method uses (quick runs, capped k-NN indexes, the PCA fit of the starting point).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from datasets import Dataset, DatasetDict

from hf_distill.data.decoding import OnBadImage
from hf_distill.data.domains import Benchmark

if TYPE_CHECKING:
    from hf_distill.data.streaming import StreamingDomains

# Evaluation pairs of a Hub dataset loaded as a domain: each split searched against itself.
_SELF_PAIRS = {"test": "test", "val": "val"}


def load_domains(
    source: str | os.PathLike | Sequence[str] | None = None,
    domains: Sequence[str] | None = None,
    uned_image_root: str | os.PathLike | None = None,
    on_bad_image: OnBadImage = "raise",
    streaming: bool = False,
    split: str = "train",
) -> Benchmark | StreamingDomains:
    """Load domains from any supported source.

    Args:
        source: where the domains are:

            - ``None``: the default offline benchmark (``make data``; ``$HF_DISTILL_BENCHMARK``);
            - a directory holding ``benchmark.json``: an offline benchmark;
            - with ``uned_image_root``: UnED's ``info_files`` directory (``<domain>/<split>.json``);
            - another directory: image folders laid out ``<domain>/<split>/<class>/<image>``;
            - a Hub dataset id, or a list of them: one domain each (named after the repository), with
              ``image`` and ``label`` columns and its own splits (test/test and val/val retrieval pairs).
        domains: keep only these domains, in this order.
        uned_image_root: the folder UnED's info files' paths are relative to.
        on_bad_image: ``"raise"`` (default) or ``"skip"`` unreadable images (counted in ``decode_report``).
        streaming: open ``split`` of every domain as a ``datasets.IterableDataset`` instead (parquet or webdataset
            shards, image folders, Hub ids): returns :class:`~hf_distill.data.streaming.StreamingDomains`, read
            with :class:`~hf_distill.data.streaming.StreamingDomainBatches`; images are checked while streaming
            (``on_bad_image`` is the reader's setting then).
        split: the split to stream (``streaming=True`` only).
    """
    if streaming:
        from hf_distill.data.streaming import load_streaming_domains

        if source is None or uned_image_root is not None:
            raise ValueError("streaming=True needs a folder of shards / image folders or Hub ids as source")
        return load_streaming_domains(source, domains, split=split)
    from hf_distill.data.benchmark import METADATA_FILE, load_benchmark
    from hf_distill.data.domains import load_hub_domain, load_imagefolder_domains, load_uned_domains

    if source is None:
        return load_benchmark(None, domains)
    if isinstance(source, (list, tuple)):
        return _hub_domains(list(source), domains, on_bad_image, load_hub_domain)
    path = Path(source)
    if uned_image_root is not None:
        return load_uned_domains(path, uned_image_root, domains, on_bad_image=on_bad_image)
    if (path / METADATA_FILE).is_file():
        return load_benchmark(path, domains)
    if path.is_dir():
        return load_imagefolder_domains(path, domains, on_bad_image=on_bad_image)
    if path.exists():
        raise ValueError(f"domain source {str(source)!r} is a file; give a directory or a Hub dataset id")
    return _hub_domains([str(source)], domains, on_bad_image, load_hub_domain)


def _hub_domains(
    repo_ids: list[str], domains: Sequence[str] | None, on_bad_image: OnBadImage, loader: Any
) -> Benchmark:
    loaded: dict[str, DatasetDict] = {}
    num_classes: dict[str, int] = {}
    pairs: dict[str, dict[str, tuple[str, str]]] = {}
    benchmark = Benchmark(domains={}, num_classes={}, eval_pairs={})
    for repo_id in repo_ids:
        name = repo_id.rstrip("/").split("/")[-1]
        if domains is not None and name not in domains:
            continue
        splits, report = loader(repo_id, domain=name, on_bad_image=on_bad_image)
        benchmark.decode_report.merge(report)
        if "train" not in splits:
            raise ValueError(f"Hub dataset {repo_id!r} has no 'train' split (it has {sorted(splits)})")
        loaded[name] = splits
        num_classes[name] = len(set(splits["train"].select_columns(["label"])["label"]))
        for evaluation, split in _SELF_PAIRS.items():
            if split in splits:
                pairs.setdefault(evaluation, {})[name] = (split, split)
    if not loaded:
        raise ValueError(
            f"none of the Hub datasets {repo_ids} is among the requested domains {list(domains or [])}"
        )
    benchmark.domains, benchmark.num_classes, benchmark.eval_pairs = loaded, num_classes, pairs
    return benchmark


def subset_indices(size: int, max_size: int | None, seed: int) -> list[int]:
    """Row indices of a seeded random subset of at most ``max_size`` rows (all rows, in order, when it fits).

    The order is that of ``datasets.Dataset.shuffle(seed=seed)``: the same subset as
    ``split.shuffle(seed).select(range(max_size))``, computed from a private generator (the global random state is
    not touched).

    Args:
        size: number of rows.
        max_size: cap (``None``: no cap).
        seed: seed of the choice.
    """
    if max_size is None or max_size >= size:
        return list(range(size))
    if max_size < 0:
        raise ValueError(f"max_size must be non-negative, got {max_size}")
    return np.random.default_rng(seed).permutation(size)[:max_size].tolist()


def subset_split(split: Dataset, max_size: int | None, seed: int) -> Dataset:
    """``split`` cut to :func:`subset_indices` (kept in memory: nothing is written next to its files).

    Args:
        split: a ``datasets.Dataset``.
        max_size: cap (``None``: unchanged).
        seed: seed of the choice.
    """
    indices = subset_indices(len(split), max_size, seed)
    return split if len(indices) == len(split) else split.select(indices, keep_in_memory=True)


def subset_benchmark(
    benchmark: Benchmark, max_per_domain: int | None, seed: int, split: str = "train"
) -> Benchmark:
    """A copy of ``benchmark`` whose ``split`` of every domain is cut to at most ``max_per_domain`` rows.

    Args:
        benchmark: the benchmark.
        max_per_domain: cap per domain (``None``: the benchmark itself).
        seed: seed of the choice (the same for every domain).
        split: the split to cut.
    """
    if max_per_domain is None:
        return benchmark
    from dataclasses import replace

    domains = {}
    for name, splits in benchmark.domains.items():
        splits = DatasetDict(splits)
        if split in splits:
            splits[split] = subset_split(splits[split], max_per_domain, seed)
        domains[name] = splits
    return replace(benchmark, domains=domains)


__all__ = ["load_domains", "subset_benchmark", "subset_indices", "subset_split"]
