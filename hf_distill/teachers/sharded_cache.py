"""A feature cache built by several processes (``accelerate launch``): each process caches one slice of the source
images, the main process merges the slices into one cache equal to the single-process build.

Every process runs :func:`~hf_distill.teachers.cache.build_feature_cache` on a contiguous slice of the rows, with
the slice's offset, so ``source_index`` and the view seeds are those of the whole source; the slices are then
concatenated in rank order and saved with the single-process layout and metadata (same spec, fingerprint, seed and
row counts). Row ``i * views + v`` of the merged cache is view ``v`` of image ``i``, as in a one-process build.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from hf_distill.teachers.cache import (
    DATA_DIR,
    SPEC_FILE,
    FeatureCacheSpec,
    build_feature_cache,
    load_feature_cache,
    read_cache_metadata,
)

logger = logging.getLogger(__name__)


def process_slice(num_rows: int, num_processes: int, rank: int) -> tuple[int, int]:
    """The ``[start, end)`` rows of process ``rank``: contiguous, sizes differing by at most one.

    Args:
        num_rows: rows of the whole source.
        num_processes: processes sharing it.
        rank: this process.
    """
    return num_rows * rank // num_processes, num_rows * (rank + 1) // num_processes


def build_feature_cache_on_processes(
    dataset: datasets.Dataset,
    extract_fn: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    transform: Callable[[Any], torch.Tensor],
    spec: FeatureCacheSpec,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
    seed: int = 0,
    image_column: str = "image",
    dtype: str = "float32",
) -> datasets.Dataset:
    """:func:`~hf_distill.teachers.cache.build_feature_cache` shared by every process of the current
    ``accelerate`` run; call it on every process with the same arguments (one process: a plain build).

    Args:
        dataset / extract_fn / transform / spec / batch_size / seed / image_column / dtype: as
            ``build_feature_cache``; ``extract_fn`` runs on each process's own device.
        cache_dir: destination directory (must not exist; on a file system every process sees).

    The processes are those of the ``accelerate`` state already set up (by a ``Trainer`` or
    ``PartialState(cpu=True)`` for gloo on CPUs).

    Returns:
        The merged cache on every process.
    """
    state = PartialState()
    cache_dir = Path(cache_dir)
    if state.num_processes == 1:
        return build_feature_cache(
            dataset, extract_fn, transform, spec, cache_dir, batch_size, seed, image_column, dtype
        )
    if len(dataset) < state.num_processes:
        raise ValueError(f"{len(dataset)} source rows cannot be shared by {state.num_processes} processes")
    # Checked before any process starts, so that no process is left waiting for the others.
    exists = [cache_dir.exists()]
    if state.is_main_process:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
    exists = broadcast_object_list(exists, from_process=0)
    if exists[0]:
        raise FileExistsError(
            f"feature cache directory {cache_dir} already exists; load it or delete it first"
        )
    token = broadcast_object_list([uuid.uuid4().hex[:8]], from_process=0)[0]
    parts_dir = cache_dir.parent / f".{cache_dir.name}.parts-{token}"
    start, end = process_slice(len(dataset), state.num_processes, state.process_index)
    part = parts_dir / f"part-{state.process_index:05d}"
    failed = False
    try:
        build_feature_cache(
            dataset.select(range(start, end)),
            extract_fn,
            transform,
            spec,
            part,
            batch_size,
            seed,
            image_column,
            dtype,
            index_offset=start,
        )
    except Exception:
        failed = True
        raise
    finally:
        # Every process reports whether its slice was built, so that none waits for a failed one forever.
        outcomes = [None] * state.num_processes
        torch.distributed.all_gather_object(outcomes, failed)
        if any(outcomes) and not failed:
            raise RuntimeError(
                f"another process failed to build its slice of feature cache {cache_dir}; see its error"
            )
    if state.is_main_process:
        try:
            _merge_parts(parts_dir, state.num_processes, cache_dir, len(dataset))
        finally:
            shutil.rmtree(parts_dir, ignore_errors=True)
    state.wait_for_everyone()
    return load_feature_cache(cache_dir, spec)


def _merge_parts(parts_dir: Path, num_parts: int, cache_dir: Path, num_source_rows: int) -> None:
    """Concatenate the part caches in rank order into ``cache_dir`` with the single-process metadata."""
    parts = [parts_dir / f"part-{rank:05d}" for rank in range(num_parts)]
    metadata = read_cache_metadata(parts[0])
    merged = datasets.concatenate_datasets([datasets.load_from_disk(str(part / DATA_DIR)) for part in parts])
    if len(merged) != num_source_rows * metadata["spec"]["views"]:
        raise ValueError(
            f"the parts of feature cache {cache_dir} hold {len(merged)} rows, expected "
            f"{num_source_rows} images x {metadata['spec']['views']} views"
        )
    tmp_dir = cache_dir.parent / f".{cache_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    try:
        merged.save_to_disk(str(tmp_dir / DATA_DIR))
        metadata.update(num_source_rows=num_source_rows, num_rows=len(merged))
        # As in build_feature_cache: the spec file marks the cache complete, written last, then renamed.
        (tmp_dir / SPEC_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_dir, cache_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info("Merged %d cache parts (%d rows) into %s", num_parts, len(merged), cache_dir)
