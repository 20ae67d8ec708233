"""A feature cache: frozen-teacher outputs computed once and stored as ``datasets`` Arrow files.

MLFD (SPEC §4, step 2) trains its joint teacher on cached teacher feature maps instead of images, and UNIC can
reuse the same cache to avoid running its teachers at every step. A cache is only valid for the teacher, layer,
preprocessing and augmentation that produced it, so those are recorded in a :class:`FeatureCacheSpec` saved beside
the data, and :func:`load_feature_cache` refuses a cache whose spec differs from the one asked for.

Layout of a cache directory::

    <cache_dir>/
        data/                 Dataset.save_to_disk: columns source_index, view, <one column per feature>
        feature_cache.json    the spec, its fingerprint and the build metadata (written last)

A build writes into a temporary sibling directory and renames it into place at the end, so an interrupted build
never leaves a directory that :func:`load_feature_cache` accepts. :class:`CachedViewDataset` serves a cache for
training (both methods): each row's features next to the very view of the source image they were computed on.

Length: the cache spec, the builder, the loader and the one dataset that serves cached outputs next to their
views change together (a spec field is read by all four), so they stay in one module (about 560 lines).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.arrow_writer import ArrowWriter
from datasets.table import MemoryMappedTable
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

SPEC_FILE = "feature_cache.json"
DATA_DIR = "data"
_RESERVED_COLUMNS = ("source_index", "view")


@dataclasses.dataclass
class FeatureCacheSpec:
    """What produced a feature cache; two caches are interchangeable only when their specs are equal.

    Args:
        teacher: identifier of the teacher (Hub id, local path or a registry name); a list when one cache holds
            the outputs of several teachers run on the same views.
        layer: where the features were taken (e.g. ``"stages.3"``, ``"cls+patch"``, ``"pre_logits"``).
        preprocessing: the deterministic part of the input pipeline (image size, mean, std, interpolation …).
        views: number of views stored per source image (1 = the un-augmented image, as in the MLFD paper).
        augmentation: description of the random augmentation used for the views; ``None`` for none.
        extra: anything else that changes the stored values (dataset name and split, dtype, teacher revision).
    """

    teacher: str | list[str]
    layer: str
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)
    views: int = 1
    augmentation: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.teacher, tuple):
            self.teacher = list(self.teacher)
        if not isinstance(self.views, int) or self.views < 1:
            raise ValueError(f"FeatureCacheSpec.views must be a positive integer, got {self.views!r}")
        # Canonicalise now so that a spec that cannot be written as JSON fails at construction, not mid-build.
        self.to_json()

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-compatible values (tuples become lists)."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, so equal specs give equal strings."""
        try:
            return json.dumps(
                dataclasses.asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"FeatureCacheSpec must hold only JSON values: {error}") from error

    def fingerprint(self) -> str:
        """A stable hex digest of the canonical JSON (identical across processes and Python versions)."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureCacheSpec:
        """Rebuild a spec from :meth:`to_dict` output.

        Args:
            values: the dictionary; unknown keys raise a ``ValueError`` naming them.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown FeatureCacheSpec fields {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**values)

    def differences(self, other: FeatureCacheSpec) -> list[str]:
        """Names of the fields whose canonical values differ between ``self`` and ``other``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [name for name in mine if mine[name] != theirs[name]]


MAP_COLUMN_PREFIX = "maps_"


def map_column(teacher_name: str) -> str:
    """Name of the cache column holding ``teacher_name``'s feature map.

    Args:
        teacher_name: a name from ``JointTeacherConfig.teacher_names``.
    """
    return f"{MAP_COLUMN_PREFIX}{teacher_name}"


def view_seed(seed: int, source_index: int, view: int) -> int:
    """The RNG seed of one view: depends only on the build seed, the image index and the view number, so a
    view is reproducible whatever the batch size or the order of the build."""
    return int(np.random.SeedSequence([seed, source_index, view]).generate_state(1)[0])


def transform_view(transform: Callable[[Any], torch.Tensor], image: Any, seed: int) -> torch.Tensor:
    """Apply ``transform`` with every global RNG it might use (torch, random, numpy) seeded, then restore them,
    so the caller's random state is untouched (:func:`seeded_calls` for one item)."""
    return seeded_calls(transform, [image], [seed])[0]


def seeded_calls(function: Callable[[Any], Any], items: Sequence[Any], seeds: Sequence[int]) -> list[Any]:
    """``[function(item) for item in items]``, each call with every global RNG (torch, random, numpy) seeded from
    its own seed, and the caller's states restored once at the end: a batch costs one save and one restore, and
    every item's result is what a call on its own with its seed gives. Only the CPU generator is seeded: views
    are made on the CPU, and ``torch.manual_seed`` would also queue a CUDA seeding whose stack capture costs
    about 1 ms per call.

    Args:
        function: called once per item.
        items: the arguments.
        seeds: one seed per item.
    """
    if len(items) != len(seeds):
        raise ValueError(f"seeded_calls needs one seed per item: {len(items)} items, {len(seeds)} seeds")
    python_state, numpy_state = random.getstate(), np.random.get_state()
    results = []
    try:
        with torch.random.fork_rng(devices=[]):
            for item, seed in zip(items, seeds):
                torch.default_generator.manual_seed(int(seed))
                random.seed(int(seed))
                np.random.seed(int(seed) % 2**32)
                results.append(function(item))
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return results


def _feature_type(array: np.ndarray) -> datasets.features.FeatureType:
    """The Arrow feature type for one example's feature of the shape and dtype of ``array``."""
    dtype = str(array.dtype)
    if array.ndim == 0:
        return datasets.Value(dtype)
    if array.ndim == 1:
        return datasets.List(datasets.Value(dtype), length=array.shape[0])
    array_types = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D, 5: datasets.Array5D}
    if array.ndim not in array_types:
        raise ValueError(f"feature arrays may have at most 5 dimensions per example, got shape {array.shape}")
    return array_types[array.ndim](shape=tuple(array.shape), dtype=dtype)


def _to_numpy(
    features: dict[str, torch.Tensor], expected_rows: int, dtype: np.dtype
) -> dict[str, np.ndarray]:
    if not isinstance(features, dict) or not features:
        raise TypeError("extract_fn must return a non-empty dict[str, Tensor]")
    arrays = {}
    for name, value in features.items():
        if name in _RESERVED_COLUMNS:
            raise ValueError(f"extract_fn returned the reserved column name {name!r}; rename that feature")
        if not isinstance(value, torch.Tensor) or value.shape[0] != expected_rows:
            shape = getattr(value, "shape", None)
            raise ValueError(
                f"extract_fn output {name!r} must be a Tensor with {expected_rows} rows (one per view), got {shape}"
            )
        arrays[name] = value.detach().float().cpu().numpy().astype(dtype, copy=False)
    return arrays


class _SeededViewBatches(Dataset):
    """Batch ``b`` of a cache build: the views of source rows ``[b * batch_size, (b + 1) * batch_size)``, each made
    under its own :func:`view_seed`, so a batch is the same in the main process and in a DataLoader worker.

    Args:
        dataset: the source images.
        transform: image -> pixels.
        views / seed / index_offset / batch_size / image_column: as :func:`build_feature_cache`.
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        transform: Callable[[Any], torch.Tensor],
        views: int,
        seed: int,
        index_offset: int,
        batch_size: int,
        image_column: str,
    ) -> None:
        self.images = dataset.select_columns([image_column])
        self.transform, self.views, self.seed = transform, views, seed
        self.index_offset, self.batch_size, self.image_column = index_offset, batch_size, image_column

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, batch: int) -> tuple[torch.Tensor, list[int]]:
        start = int(batch) * self.batch_size
        stop = min(start + self.batch_size, len(self.images))
        images = self.images[start:stop][self.image_column]
        indices = [self.index_offset + index for index in range(start, stop)]
        views = range(self.views)
        # One RNG save/restore per batch; every view is still seeded by its own view_seed.
        pixels = seeded_calls(
            self.transform,
            [image for image in images for _ in views],
            [view_seed(self.seed, index, view) for index in indices for view in views],
        )
        return torch.stack(pixels), indices


def default_cache_workers(num_rows: int, batch_size: int) -> int:
    """DataLoader workers decoding the views of a cache build while the main process runs ``extract_fn``.

    None for a single batch (nothing to overlap, and a worker costs a process start); else one on the CPU (the
    forward needs the other cores) and up to four when a GPU runs the forward.

    Args:
        num_rows: source rows of the build.
        batch_size: source rows per batch.
    """
    if num_rows <= batch_size:
        return 0
    if torch.cuda.is_available():
        return max(1, min(4, (os.cpu_count() or 2) - 1))
    return 1


def build_feature_cache(
    dataset: datasets.Dataset,
    extract_fn: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    transform: Callable[[Any], torch.Tensor],
    spec: FeatureCacheSpec,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
    seed: int = 0,
    image_column: str = "image",
    dtype: str = "float32",
    index_offset: int = 0,
    num_workers: int | None = None,
) -> datasets.Dataset:
    """Run ``extract_fn`` over ``spec.views`` views of every image of ``dataset`` and store the outputs on disk.

    Rows are ordered image by image, views within an image: row ``i * views + v`` is view ``v`` of image ``i``.
    View ``v`` of image ``i`` is produced with the global RNGs seeded by :func:`view_seed` ``(seed, i, v)``, so
    rebuilding with the same seed gives the same views, whatever the batch size or the number of workers.

    Args:
        dataset: source images (a column ``image_column`` of PIL images or anything ``transform`` accepts).
        extract_fn: maps a batch of pixel tensors ``(N, C, H, W)`` to named feature tensors with ``N`` rows; it
            runs under ``torch.inference_mode``, in the calling process.
        transform: one image → pixel tensor ``(C, H, W)``; random if ``spec.views > 1`` (augmented views).
        spec: what produced the features; saved beside them and checked by :func:`load_feature_cache`.
        cache_dir: destination directory; must not exist yet (delete it to rebuild).
        batch_size: source images per ``extract_fn`` call (times ``spec.views`` rows).
        seed: seed of the view augmentations.
        image_column: the column holding the images.
        dtype: storage dtype of the features (``"float32"`` or ``"float16"``).
        index_offset: index of ``dataset``'s first row in the whole source, when it is one process's slice
            (``hf_distill.teachers.sharded_cache``): ``source_index`` and the view seeds are the whole source's.
        num_workers: ``DataLoader`` workers that decode and transform the next batches while ``extract_fn`` runs
            (0: all in this process; default :func:`default_cache_workers`). The stored values do not depend on it.

    Returns:
        The cache as a ``datasets.Dataset`` backed by the Arrow files under ``cache_dir``, with torch formatting.
    """
    cache_dir = Path(cache_dir)
    if cache_dir.exists():
        raise FileExistsError(
            f"feature cache directory {cache_dir} already exists; load it or delete it first"
        )
    if image_column not in dataset.column_names:
        raise ValueError(
            f"dataset has no column {image_column!r} (columns: {dataset.column_names}); pass image_column="
        )
    if len(dataset) == 0:
        raise ValueError("cannot build a feature cache from an empty dataset")
    if num_workers is None:
        num_workers = default_cache_workers(len(dataset), batch_size)
    if num_workers < 0:
        raise ValueError(f"build_feature_cache: num_workers must be >= 0, got {num_workers}")
    np_dtype = np.dtype(dtype)
    views = spec.views
    batches = DataLoader(
        _SeededViewBatches(dataset, transform, views, seed, index_offset, batch_size, image_column),
        batch_size=None,
        num_workers=num_workers,
        # A loader draws its workers' base seed from its generator: its own, so the caller's RNG is untouched.
        generator=torch.Generator().manual_seed(seed),
    )

    def columns_of(pixels: torch.Tensor, indices: list[int]) -> dict[str, Any]:
        with torch.inference_mode():
            features = extract_fn(pixels)
        arrays = _to_numpy(features, len(pixels), np_dtype)
        columns: dict[str, Any] = {
            "source_index": [index for index in indices for _ in range(views)],
            "view": [view for _ in indices for view in range(views)],
        }
        columns.update({name: list(array) for name, array in arrays.items()})
        return columns

    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = cache_dir.parent / f".{cache_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    build_file = tmp_dir / "build.arrow"
    # The spec and seed determine the output; hashing extract_fn (often a torch model) is slow and unstable.
    fingerprint = f"{spec.fingerprint()}-{seed}-{index_offset}-{len(dataset)}-{dataset._fingerprint}"
    writer, features = None, None
    try:
        for pixels, indices in batches:
            columns = columns_of(pixels, indices)
            if writer is None:
                # The first batch fixes the Arrow schema (fixed-shape arrays are far smaller and faster than
                # nested lists).
                features = datasets.Features(
                    {"source_index": datasets.Value("int64"), "view": datasets.Value("int32")}
                    | {
                        name: _feature_type(np.asarray(values[0]))
                        for name, values in columns.items()
                        if name not in _RESERVED_COLUMNS
                    }
                )
                writer = ArrowWriter(features=features, path=str(build_file), fingerprint=fingerprint)
            writer.write_batch(columns)
        writer.finalize()
        built = datasets.Dataset(
            MemoryMappedTable.from_file(str(build_file)),
            info=datasets.DatasetInfo(features=features),
            fingerprint=fingerprint,
        )
        built.save_to_disk(str(tmp_dir / DATA_DIR))
        del built
        build_file.unlink()
        metadata = {
            "spec": spec.to_dict(),
            "fingerprint": spec.fingerprint(),
            "seed": seed,
            "num_source_rows": len(dataset),
            "num_rows": len(dataset) * views,
            "feature_columns": [name for name in features if name not in _RESERVED_COLUMNS],
            "dtype": dtype,
        }
        # The spec file is what marks a cache as complete, so it is written last, then the directory renamed.
        (tmp_dir / SPEC_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        try:
            os.replace(tmp_dir, cache_dir)
        except OSError:
            # Another process (a second run sharing the cache directory) finished the same build first: its
            # complete cache is kept and this one discarded; anything else in the way is an error.
            if not (cache_dir / SPEC_FILE).is_file():
                raise
            shutil.rmtree(tmp_dir, ignore_errors=True)
            logger.info(
                "%s was completed by another process while this one built it; using that cache", cache_dir
            )
            return load_feature_cache(cache_dir, spec)
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info(
        "Cached %d views of %d images (%s) in %s", len(dataset) * views, len(dataset), spec.teacher, cache_dir
    )
    return load_feature_cache(cache_dir, spec)


def read_cache_metadata(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The metadata saved with a complete cache (spec, fingerprint, seed, row counts, columns).

    Args:
        cache_dir: the cache directory.
    """
    spec_path = Path(cache_dir) / SPEC_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(
            f"{cache_dir} is not a complete feature cache (no {SPEC_FILE}); it may be an interrupted build — "
            "delete it and build again"
        )
    try:
        return json.loads(spec_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{spec_path} is not valid JSON: {error}") from error


def load_feature_cache(cache_dir: str | os.PathLike, spec: FeatureCacheSpec) -> datasets.Dataset:
    """Open a cache built by :func:`build_feature_cache`, refusing it if it was built with a different spec.

    Args:
        cache_dir: the cache directory.
        spec: the spec the caller expects; every field must match the saved one.

    Returns:
        The cache dataset with torch formatting (columns ``source_index``, ``view`` and the features).
    """
    metadata = read_cache_metadata(cache_dir)
    saved = FeatureCacheSpec.from_dict(metadata["spec"])
    differing = saved.differences(spec)
    if differing:
        details = "; ".join(
            f"{name}: cached {saved.to_dict()[name]!r} != requested {spec.to_dict()[name]!r}"
            for name in differing
        )
        raise ValueError(
            f"feature cache {cache_dir} was built with a different spec (fields {differing} differ: {details}); "
            "rebuild it into another directory or request the spec it was built with"
        )
    dataset = datasets.load_from_disk(str(Path(cache_dir) / DATA_DIR))
    if len(dataset) != metadata["num_rows"]:
        raise ValueError(
            f"feature cache {cache_dir} holds {len(dataset)} rows, its metadata says {metadata['num_rows']}"
        )
    return dataset.with_format("torch")


def load_cache_columns(
    cache: datasets.Dataset, columns: Sequence[str], chunk_size: int = 1024
) -> dict[str, torch.Tensor]:
    """Read feature columns of a cache into memory, in the cache's storage dtype.

    Row-by-row reads of fixed-shape Arrow arrays cost milliseconds each, far more than a training step of a small
    model on cached features (MLFD's joint teacher); read in chunks once, random access is then free.

    Args:
        cache: a feature cache (from :func:`build_feature_cache`).
        columns: the feature columns to read.
        chunk_size: rows converted at a time.
    """
    arrays = cache.select_columns(list(columns)).with_format("numpy")
    chunks: dict[str, list[torch.Tensor]] = {column: [] for column in columns}
    for start in range(0, len(arrays), chunk_size):
        batch = arrays[start : start + chunk_size]
        for column in columns:
            chunks[column].append(torch.from_numpy(batch[column]))
    return {column: torch.cat(parts) for column, parts in chunks.items()}


class CachedViewDataset(Dataset):
    """Rows of a feature cache next to the view of the source image their features were computed on.

    Row ``r`` of a cache is view ``view[r]`` of source image ``source_index[r]`` (:func:`build_feature_cache`).
    Item ``r`` holds the cached feature columns and, when ``images`` is given, pixels of that image under
    ``pixels_key``:

    - with ``view_transform``: exactly the view the teachers saw — the cache's transform re-run under the view's
      seed (:func:`view_seed`), then ``normalize`` when given (UNIC; MLFD with augmented cached views);
    - with ``fresh_transform``: a new draw of a (random) transform, while the features come from the cached view
      (the MLFD paper: un-augmented cache, augmented student).

    Without ``images`` an item holds the features only (MLFD's joint teacher trains on them). ``labels`` adds the
    source image's label as ``labels``, ``domain_id`` a constant ``domain_ids``.

    Args:
        cache: the feature cache (a ``datasets.Dataset`` with ``source_index``, ``view`` and feature columns).
        images: the source split the cache was built from (same order; column ``image``), or None.
        view_transform: the transform the cache was built with.
        seed: the cache's build seed.
        fresh_transform: instead of ``view_transform``, image -> pixels drawn anew at each read.
        normalize: applied to the view's pixels (e.g. a :class:`~hf_distill.layers.PixelNormalize`).
        columns: the feature columns returned (default: every feature column of the cache).
        labels: per source image, its label.
        domain_id: returned as ``domain_ids`` with every item.
        pixels_key: the key of the pixels in an item.
        in_memory: read the feature columns into memory once (fast random access, see
            :func:`load_cache_columns`) instead of one Arrow read per batch.
    """

    def __init__(
        self,
        cache: datasets.Dataset,
        images: datasets.Dataset | None = None,
        view_transform: Callable[[Any], torch.Tensor] | None = None,
        seed: int = 0,
        *,
        fresh_transform: Callable[[Any], torch.Tensor] | None = None,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        columns: Sequence[str] | None = None,
        labels: Sequence[int] | None = None,
        domain_id: int | None = None,
        pixels_key: str = "images",
        in_memory: bool = False,
    ) -> None:
        if images is not None and (view_transform is None) == (fresh_transform is None):
            raise ValueError(
                "give exactly one of view_transform (the cached views) and fresh_transform (a new augmentation)"
            )
        if images is None and (view_transform, fresh_transform, normalize) != (None, None, None):
            raise ValueError("view_transform, fresh_transform and normalize need the source images")
        available = [name for name in cache.column_names if name not in _RESERVED_COLUMNS]
        self.columns = list(available if columns is None else columns)
        missing = [column for column in self.columns if column not in available]
        if missing:
            raise ValueError(f"the feature cache has no column(s) {missing}; it has {cache.column_names}")
        rows = cache.with_format(None).select_columns(list(_RESERVED_COLUMNS))[:]
        self.source_index = [int(index) for index in rows["source_index"]]
        self.view = [int(view) for view in rows["view"]]
        for name, size in (("images", images), ("labels", labels)):
            if size is not None and self.source_index and max(self.source_index) >= len(size):
                raise ValueError(
                    f"the cache refers to source image {max(self.source_index)} but {name} has {len(size)} rows"
                )
        self.cache = cache.with_format("torch")
        self.features = load_cache_columns(cache, self.columns) if in_memory else None
        self.images = images.select_columns(["image"]) if images is not None else None
        self.view_transform, self.fresh_transform, self.normalize = view_transform, fresh_transform, normalize
        self.seed = seed
        self.labels = None if labels is None else [int(labels[index]) for index in self.source_index]
        self.domain_id, self.pixels_key = domain_id, pixels_key

    def __len__(self) -> int:
        return len(self.source_index)

    @property
    def draws_randomness(self) -> bool:
        """Only a fresh augmentation draws at random: cached views are seeded by their own view seed, so the
        trainers skip their per-example seeding (``hf_distill.trainers.base.draws_randomness``)."""
        return self.fresh_transform is not None

    def __getitem__(self, index: int) -> dict[str, Any]:
        # One item (the trainers' seeded training set reads item by item): integer reads, far cheaper than
        # reads by a list of one index.
        index = int(index)
        if self.features is not None:
            features = {column: values[index] for column, values in self.features.items()}
        else:
            row = self.cache[index]
            features = {column: row[column] for column in self.columns}
        image = self.images[self.source_index[index]]["image"] if self.images is not None else None
        return self._item(index, features, image)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # A DataLoader reading this dataset directly fetches a whole batch through this method: one Arrow read for
        # all its feature rows and one for all its source images.
        indices = [int(index) for index in indices]
        if self.features is not None:
            features = {column: values[indices] for column, values in self.features.items()}
        else:
            rows = self.cache[indices]
            features = {column: rows[column] for column in self.columns}
        images = None
        if self.images is not None:
            images = self.images[[self.source_index[index] for index in indices]]["image"]
        return [
            self._item(
                index,
                {column: values[position] for column, values in features.items()},
                images[position] if images is not None else None,
            )
            for position, index in enumerate(indices)
        ]

    def _item(self, index: int, features: dict[str, Any], image: Any) -> dict[str, Any]:
        item = dict(features)
        if image is not None:
            item[self.pixels_key] = self._pixels(image, index)
        if self.labels is not None:
            item["labels"] = self.labels[index]
        if self.domain_id is not None:
            item["domain_ids"] = self.domain_id
        return item

    def _pixels(self, image: Any, index: int) -> torch.Tensor:
        if self.fresh_transform is not None:
            return self.fresh_transform(image)
        seed = view_seed(self.seed, self.source_index[index], self.view[index])
        pixels = transform_view(self.view_transform, image, seed)
        return self.normalize(pixels) if self.normalize is not None else pixels
