"""Streaming domains: one ``datasets.IterableDataset`` per domain, read as single-domain batches.

Domains too large for one disk or one process are read as streams instead of map-style datasets:

- :func:`load_streaming_domains` (``load_domains(..., streaming=True)``) opens local parquet shards
  (``<root>/<domain>/<split>/*.parquet``), webdataset shards (``<root>/<domain>/<split>/*.tar``), image folders
  (``<root>/<domain>/<split>/<class>/<image>``) or Hub dataset ids, and counts each domain's rows from the shard
  metadata (parquet footers, tar headers) without reading an image;
- :class:`StreamingDomainBatches` draws single-domain batches from them. Which domain comes next is decided by
  :class:`~hf_distill.sampling.DomainSchedule`, the same code as the map-style ``DomainBatchSampler``, so every
  strategy (round-robin, size-proportional, balanced, dynamic) behaves the same and every process draws the same
  domain sequence; each process reads only its own shards (``datasets.distributed.split_dataset_by_node``);
- :func:`write_parquet_shards` writes a benchmark's splits as such shards (tests, benchmarks, conversions).

Shuffling is by blocks: a domain's stream is read ``shuffle_buffer`` rows at a time and each block is permuted
with a seeded generator. ``datasets``' own shuffle buffer is not restored by ``load_state_dict`` (its content is
lost on resume); a block is re-read from the ``state_dict()`` taken before it, so a resumed run continues with
exactly the examples an uninterrupted run would have drawn.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch
from datasets import Image, IterableDataset, load_dataset
from datasets.distributed import split_dataset_by_node

from hf_distill.data.decoding import DecodeReport, ImageDecodeError, OnBadImage, decode_image_bytes, to_rgb
from hf_distill.sampling import DomainSchedule
from hf_distill.teachers.cache import transform_view

logger = logging.getLogger(__name__)

# Written next to the shards by write_parquet_shards: number of training classes per domain.
STREAMING_METADATA_FILE = "streaming.json"
# webdataset keys that may hold the image and the class id.
_WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "image")
_WDS_LABEL_KEYS = ("cls", "label")


@dataclass
class StreamingDomains:
    """Domains as streams: one ``IterableDataset`` per domain (columns ``image``, ``label``, ``domain``).

    Args:
        datasets: domain name -> the split's ``IterableDataset`` (images not decoded: ``Image(decode=False)``).
        num_rows: domain name -> rows of the split, from the shard metadata.
        num_classes: domain name -> number of training classes.
        shards: domain name -> shard files in stream order (empty for a Hub id), for messages.
        split: the split that was opened.
    """

    datasets: dict[str, IterableDataset]
    num_rows: dict[str, int]
    num_classes: dict[str, int]
    shards: dict[str, list[str]] = field(default_factory=dict)
    split: str = "train"

    @property
    def domain_names(self) -> list[str]:
        """Domain names in load order."""
        return list(self.datasets)


def _parquet_rows(files: Sequence[str]) -> list[int]:
    return [pq.ParquetFile(file).metadata.num_rows for file in files]


def _tar_rows(files: Sequence[str]) -> list[int]:
    """Samples per webdataset shard: distinct member names without their extension (headers only)."""
    counts = []
    for file in files:
        with tarfile.open(file) as archive:
            counts.append(
                len({member.name.split(".", 1)[0] for member in archive.getmembers() if member.isfile()})
            )
    return counts


def _declared_classes(root: Path) -> dict[str, int]:
    path = root / STREAMING_METADATA_FILE
    if not path.is_file():
        return {}
    return {
        name: int(entry["num_classes"]) for name, entry in json.loads(path.read_text())["domains"].items()
    }


def _classes_from_parquet(files: Sequence[str]) -> int:
    # One column read per shard, no image bytes.
    return 1 + max(
        max(pq.read_table(file, columns=["label"])["label"].to_pylist(), default=-1) for file in files
    )


def _as_domain_stream(
    dataset: IterableDataset, domain: str, image_column: str, label_column: str
) -> IterableDataset:
    columns = dataset.column_names or []
    missing = [name for name in (image_column, label_column) if name not in columns]
    if missing:
        raise ValueError(f"domain {domain!r}: column(s) {missing} not in the stream (columns: {columns})")
    if image_column != "image":
        dataset = dataset.rename_column(image_column, "image")
    if label_column != "label":
        dataset = dataset.rename_column(label_column, "label")
    # Decoded by the reader, so that a bad row is reported by shard and row instead of failing inside datasets.
    dataset = dataset.cast_column("image", Image(decode=False))
    if "domain" not in columns:
        dataset = dataset.map(lambda row: {"domain": domain})
    return dataset


def load_streaming_domains(
    source: str | os.PathLike | Sequence[str],
    domains: Sequence[str] | None = None,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
) -> StreamingDomains:
    """Open every domain's ``split`` as an ``IterableDataset``.

    Args:
        source: a folder with one sub-folder per domain holding ``<split>/*.parquet``, ``<split>/*.tar``
            (webdataset) or ``<split>/<class>/<image>`` (image folders); or a list of Hub dataset ids (one
            domain each, named after the repository).
        domains: keep only these domains, in this order (default: every sub-folder, sorted).
        split: the split to stream.
        image_column / label_column: source columns that become ``image`` and ``label`` (parquet and Hub).
    """
    if isinstance(source, (list, tuple)):
        return _hub_streams(list(source), domains, split, image_column, label_column)
    root = Path(source)
    if not root.is_dir():
        if root.exists():
            raise ValueError(
                f"streaming source {str(source)!r} is a file; give a folder of domains or Hub ids"
            )
        return _hub_streams([str(source)], domains, split, image_column, label_column)
    names = list(domains) if domains is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise ValueError(f"no domain folders under {root}")
    declared = _declared_classes(root)
    result = StreamingDomains(datasets={}, num_rows={}, num_classes={}, split=split)
    for name in names:
        folder = root / name / split
        if not folder.is_dir():
            raise ValueError(f"domain {name!r}: no {split!r} folder {folder}")
        parquet = sorted(str(p) for p in folder.glob("*.parquet"))
        tars = sorted(str(p) for p in folder.glob("*.tar"))
        if parquet:
            stream = load_dataset("parquet", data_files={split: parquet}, split=split, streaming=True)
            stream = _as_domain_stream(stream, name, image_column, label_column)
            rows, files = _parquet_rows(parquet), parquet
            classes = declared.get(name) or _classes_from_parquet(parquet)
        elif tars:
            stream = load_dataset("webdataset", data_files={split: tars}, split=split, streaming=True)
            keys = stream.column_names or []
            image_key = next((k for k in _WDS_IMAGE_KEYS if k in keys), image_column)
            label_key = next((k for k in _WDS_LABEL_KEYS if k in keys), label_column)
            stream = _as_domain_stream(stream, name, image_key, label_key)
            rows, files = _tar_rows(tars), tars
            if name not in declared:
                raise ValueError(
                    f"domain {name!r}: webdataset shards carry no class count; write {root / STREAMING_METADATA_FILE}"
                    ' as {"domains": {"<domain>": {"num_classes": N}}}'
                )
            classes = declared[name]
        else:
            from hf_distill.data.domains import load_imagefolder_domains

            # Listing the files is cheap; decoding is left to the reader (check_images=False).
            benchmark = load_imagefolder_domains(root, [name], check_images=False)
            table = benchmark.domains[name][split]
            files = []
            stream = table.to_iterable_dataset(num_shards=max(1, min(len(table), 64)))
            stream = stream.cast_column("image", Image(decode=False))
            rows, classes = [len(table)], benchmark.num_classes[name]
        if sum(rows) == 0:
            raise ValueError(
                f"domain {name!r}: the {split!r} stream is empty (shards: {files or [str(folder)]})"
            )
        result.datasets[name] = stream
        result.num_rows[name] = int(sum(rows))
        result.num_classes[name] = int(classes)
        result.shards[name] = list(files)
    return result


def _hub_streams(
    repo_ids: list[str], domains: Sequence[str] | None, split: str, image_column: str, label_column: str
) -> StreamingDomains:
    result = StreamingDomains(datasets={}, num_rows={}, num_classes={}, split=split)
    for repo_id in repo_ids:
        name = repo_id.rstrip("/").split("/")[-1]
        if domains is not None and name not in domains:
            continue
        stream = load_dataset(repo_id, split=split, streaming=True)
        splits = getattr(stream.info, "splits", None) or {}
        if split not in splits or not splits[split].num_examples:
            raise ValueError(f"Hub dataset {repo_id!r} declares no row count for split {split!r}")
        label = stream.features[label_column] if stream.features else None
        num_classes = getattr(label, "num_classes", None)
        if num_classes is None:
            raise ValueError(f"Hub dataset {repo_id!r}: column {label_column!r} is not a ClassLabel")
        result.datasets[name] = _as_domain_stream(stream, name, image_column, label_column)
        result.num_rows[name] = int(splits[split].num_examples)
        result.num_classes[name] = int(num_classes)
        result.shards[name] = []
    if not result.datasets:
        raise ValueError(
            f"none of the Hub datasets {repo_ids} is among the requested domains {list(domains or [])}"
        )
    return result


def write_parquet_shards(
    domains: Mapping[str, Any],
    output_dir: str | os.PathLike,
    num_shards: int,
    split: str = "train",
    num_classes: Mapping[str, int] | None = None,
    id_column: str | None = "example_id",
) -> Path:
    """Write each domain's ``split`` as ``num_shards`` parquet files ``<output_dir>/<domain>/<split>/``.

    Args:
        domains: domain name -> ``DatasetDict`` (e.g. ``Benchmark.domains``).
        output_dir: the target folder (a ``streaming.json`` with the class counts is written at its root).
        num_shards: shards per domain (a multiple of the number of processes lets each read its own).
        split: the split to write.
        num_classes: domain -> number of training classes, for ``streaming.json``.
        id_column: add a column of ``"<domain>/<row>"`` ids under this name (None: none).
    """
    output_dir = Path(output_dir)
    for name, splits in domains.items():
        table = splits[split]
        if num_shards > len(table):
            raise ValueError(f"domain {name!r}: {num_shards} shards for {len(table)} rows")
        if id_column is not None:
            table = table.add_column(id_column, [f"{name}/{row}" for row in range(len(table))])
        folder = output_dir / name / split
        folder.mkdir(parents=True, exist_ok=True)
        bars_were_on = not datasets.utils.are_progress_bars_disabled()
        datasets.utils.disable_progress_bars()
        try:
            for index in range(num_shards):
                shard = table.shard(num_shards, index, contiguous=True)
                shard.to_parquet(str(folder / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"))
        finally:
            if bars_were_on:
                datasets.utils.enable_progress_bars()
    if num_classes is not None:
        (output_dir / STREAMING_METADATA_FILE).write_text(
            json.dumps(
                {"domains": {name: {"num_classes": int(num_classes[name])} for name in domains}}, indent=2
            )
        )
    return output_dir


class _DomainCursor:
    """Position in one domain's stream on this process: pass, block, offset in the block.

    A block of up to ``block_size`` rows is read from the ``state_dict()`` recorded before it and permuted with a
    generator seeded by ``(seed, domain, rank, pass, block)``, so the cursor state alone restores the stream.
    """

    def __init__(
        self,
        dataset: IterableDataset,
        domain: str,
        index: int,
        seed: int,
        rank: int,
        block_size: int,
        where: Any,
    ) -> None:
        self.dataset, self.domain, self.index = dataset, domain, index
        self.seed, self.rank, self.block_size, self.where = seed, rank, block_size, where
        self.state: dict[str, Any] = {"pass": 0, "block": 0, "offset": 0, "source": None, "rows_before": 0}
        self._rows: list[tuple[int, dict]] | None = None
        self._iterator: Any = None
        self._source: IterableDataset | None = None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = copy.deepcopy(dict(state))
        self._rows = None
        self._iterator = None

    def _open(self) -> None:
        # A fresh copy per (re)start: an IterableDataset keeps the last state it was told to resume from.
        self._source = copy.deepcopy(self.dataset)
        if self.state["source"] is not None:
            self._source.load_state_dict(self.state["source"])
        self._iterator = iter(self._source)

    def _fill(self) -> None:
        if self._iterator is None:
            self._open()
        rows = []
        start = self.state["rows_before"]
        for _ in range(self.block_size):
            try:
                rows.append((start + len(rows), next(self._iterator)))
            except StopIteration:
                break
        if not rows:
            if self.state["block"] == 0:
                raise ValueError(
                    f"domain {self.domain!r}: the stream of this process (rank {self.rank}) is empty "
                    f"(shards: {self.where(None)}); give the domain more shards or rows"
                )
            # End of the pass: start the next one from the first shard.
            self.state = {
                "pass": self.state["pass"] + 1,
                "block": 0,
                "offset": 0,
                "source": None,
                "rows_before": 0,
            }
            self._iterator = None
            self._fill()
            return
        order = np.random.default_rng(
            [self.seed, 2, self.index, self.rank, self.state["pass"], self.state["block"]]
        )
        self._rows = [rows[i] for i in order.permutation(len(rows))]

    def next_row(self) -> tuple[int, dict]:
        """The next raw row and its ordinal in this process's pass."""
        if self._rows is None:
            self._fill()
        row = self._rows[self.state["offset"]]
        self.state["offset"] += 1
        if self.state["offset"] == len(self._rows):
            # The source state after the block is where the next block starts.
            self.state = {
                **self.state,
                "block": self.state["block"] + 1,
                "offset": 0,
                "source": self._source.state_dict(),
                "rows_before": self.state["rows_before"] + len(self._rows),
            }
            self._rows = None
        return row


class StreamingDomainBatches(torch.utils.data.IterableDataset):
    """Single-domain batches drawn from streamed domains; a torch ``IterableDataset`` of collated batches.

    Each item is one batch of this process: ``pixel_values``, ``labels``, ``domain_ids`` (and the ids of
    ``id_column`` as ``example_ids`` when given). The domain of position ``p`` is ``schedule.domain_at(p)``,
    identical on every process; the examples come from this process's shards of that domain. It has
    ``record_loss``, ``set_epoch``, ``state_dict`` and ``load_state_dict`` like the map-style sampler, and the
    ``DistillationTrainer`` trains from it directly (``train_dataset=StreamingDomainBatches(...)``); read it in the
    main process (no data-loader workers), where its state lives.

    Args:
        domains: the streams (:func:`load_streaming_domains`).
        transform: image -> tensor (e.g. ``ImageTransform(train=True)``), run with RNGs seeded per example.
        batch_size: examples per batch per process.
        strategy / seed / update_every / probability_temperature / probability_floor / unseen_rule: as
            :class:`~hf_distill.sampling.DomainSchedule` (``size`` uses the metadata row counts).
        num_replicas / rank: the processes sharing each global batch.
        domain_names: domain-id order (default: ``domains``' order; must match the model's domains).
        shuffle_buffer: rows per shuffled block of a domain stream.
        steps_per_epoch: batches per epoch (default ``Σ_d ⌊rows_d / global batch⌋``).
        on_bad_image: ``"raise"`` on a row whose image does not decode, or ``"skip"`` it (counted in
            ``decode_report``); both name the domain, shard and row.
        id_column: a column passed through as ``example_ids`` (e.g. ``write_parquet_shards``' ``example_id``).
    """

    is_domain_batch_stream = True
    # Every process has its own cursors: the trainer checkpoints all of them (DistillationTrainer).
    per_process_state = True

    def __init__(
        self,
        domains: StreamingDomains,
        transform: Callable[[Any], torch.Tensor],
        batch_size: int,
        strategy: str = "dynamic",
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        update_every: int = 1000,
        domain_names: Sequence[str] | None = None,
        shuffle_buffer: int = 1000,
        steps_per_epoch: int | None = None,
        probability_temperature: float = 1.0,
        probability_floor: float = 0.0,
        unseen_rule: str = "authors",
        on_bad_image: OnBadImage = "raise",
        id_column: str | None = None,
    ) -> None:
        names = list(domain_names) if domain_names is not None else domains.domain_names
        missing = [name for name in names if name not in domains.datasets]
        if missing:
            raise ValueError(f"domains {missing} have no stream (streams: {domains.domain_names})")
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < num_replicas, got {batch_size}, {rank}, {num_replicas}"
            )
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
        self.schedule = DomainSchedule(
            names,
            [domains.num_rows[name] for name in names],
            strategy=strategy,
            seed=seed,
            update_every=update_every,
            probability_temperature=probability_temperature,
            probability_floor=probability_floor,
            unseen_rule=unseen_rule,
        )
        self.domains = names
        self.transform, self.batch_size, self.seed = transform, batch_size, int(seed)
        self.num_replicas, self.rank = num_replicas, rank
        self.on_bad_image, self.id_column = on_bad_image, id_column
        global_batch = batch_size * num_replicas
        for name in names:
            if domains.num_rows[name] < global_batch:
                raise ValueError(
                    f"domain {name!r} has {domains.num_rows[name]} rows, fewer than one global batch ({global_batch})"
                )
        self.steps_per_epoch = (
            steps_per_epoch
            if steps_per_epoch is not None
            else sum(domains.num_rows[n] // global_batch for n in names)
        )
        self.shards = {name: domains.shards.get(name, []) for name in names}
        self._cursors = []
        for index, name in enumerate(names):
            stream = domains.datasets[name]
            if num_replicas > 1:
                if stream.n_shards % num_replicas:
                    logger.warning(
                        "domain %r has %d shards, not a multiple of %d processes: every process reads every shard "
                        "and keeps 1 row in %d",
                        name,
                        stream.n_shards,
                        num_replicas,
                        num_replicas,
                    )
                stream = split_dataset_by_node(stream, rank=rank, world_size=num_replicas)
            self._cursors.append(
                _DomainCursor(
                    stream, name, index, self.seed, rank, shuffle_buffer, self._locator(name, domains)
                )
            )
        self.epoch = 0
        self.decode_report = DecodeReport()
        # Trainer skips the first batches of a resumed epoch itself; placeholders make that skip free.
        self.skip_placeholders = True
        self._resumed = False
        # position -> cursor states before that batch was read, for batches yielded but not yet trained
        self._snapshots: dict[int, list[dict]] = {}

    # ---------------------------------------------------------------------------------- locating rows

    def _locator(self, name: str, domains: StreamingDomains) -> Callable[[int | None], str]:
        """Maps an ordinal of this process's stream to "shard <file>, row <r>" (the shards it reads, in order)."""
        files = domains.shards.get(name, [])
        rows = _parquet_rows(files) if files and files[0].endswith(".parquet") else None
        if files and self.num_replicas > 1 and len(files) % self.num_replicas == 0:
            # split_dataset_by_node gives process r the shards r, r + N, r + 2N ...
            keep = range(self.rank, len(files), self.num_replicas)
            files = [files[i] for i in keep]
            rows = [rows[i] for i in keep] if rows is not None else None

        def where(ordinal: int | None) -> str:
            if ordinal is None:
                return ", ".join(files) if files else "<stream>"
            if rows is not None:
                for file, count in zip(files, rows):
                    if ordinal < count:
                        return f"shard {file}, row {ordinal}"
                    ordinal -= count
            return f"row {ordinal} of this process's stream"

        return where

    # ---------------------------------------------------------------------------------- iteration

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration yields (positions ``epoch × steps_per_epoch`` on).

        Args:
            epoch: zero-based epoch index.
        """
        self.epoch = int(epoch)

    def _decoded(self, cursor: _DomainCursor) -> tuple[Any, dict]:
        """The next row of ``cursor`` whose image decodes (skipping, or raising on, the others)."""
        while True:
            ordinal, row = cursor.next_row()
            self.decode_report.num_checked += 1
            image = row["image"] or {}
            where = f"domain {cursor.domain!r}, {cursor.where(ordinal)}"
            try:
                if image.get("bytes") is not None:
                    return decode_image_bytes(image["bytes"], where), row
                if image.get("path"):
                    from PIL import Image as PILImage

                    with PILImage.open(image["path"]) as opened:
                        opened.load()
                        return to_rgb(opened), row
                raise ImageDecodeError(where, "the row has no image")
            except ImageDecodeError as error:
                if self.on_bad_image == "raise":
                    raise
                self.decode_report.add_skipped(error)
                logger.warning("skipping an unreadable image: %s", error)
            except OSError as error:
                failure = ImageDecodeError(
                    f"{where} ({image.get('path')})", f"cannot read the file ({error})"
                )
                if self.on_bad_image == "raise":
                    raise failure from error
                self.decode_report.add_skipped(failure)

    def _batch(self, position: int, domain: int) -> dict[str, Any]:
        cursor = self._cursors[domain]
        pixels, labels, ids = [], [], []
        for slot in range(self.batch_size):
            image, row = self._decoded(cursor)
            example_seed = int(
                np.random.SeedSequence([self.seed, 3, position, self.rank, slot]).generate_state(1)[0]
            )
            pixels.append(transform_view(self.transform, image, example_seed))
            labels.append(int(row["label"]))
            if self.id_column is not None:
                ids.append(row[self.id_column])
        batch = {
            "pixel_values": torch.stack(pixels),
            "labels": torch.tensor(labels, dtype=torch.long),
            "domain_ids": torch.full((self.batch_size,), domain, dtype=torch.long),
        }
        if self.id_column is not None:
            batch["example_ids"] = ids
        return batch

    def __iter__(self):
        start = self.epoch * self.steps_per_epoch
        first = max(start, self.schedule.next_to_train)
        self.schedule.forget_pending()
        self._snapshots = {}
        if self._resumed and self.skip_placeholders:
            # The Trainer drops the first (first - start) batches of a resumed epoch: hand it empty ones.
            for _ in range(first - start):
                yield {}
        self._resumed = False
        for position in range(first, start + self.steps_per_epoch):
            domain = self.schedule.domain_at(position)
            self._snapshots[position] = [copy.deepcopy(cursor.state) for cursor in self._cursors]
            batch = self._batch(position, domain)
            self.schedule.mark_yielded(position, domain)
            yield batch

    # ---------------------------------------------------------------------------------- feedback / state

    @property
    def needs_losses(self) -> bool:
        """Whether :meth:`record_loss` steers the schedule (dynamic strategy)."""
        return self.schedule.needs_losses

    def record_loss(self, domain: int | str, loss: float) -> None:
        """Report the loss of the oldest batch yielded and not yet reported (see ``DomainSchedule.record_loss``).

        Args:
            domain: the batch's domain (id or name).
            loss: its loss, averaged over processes.
        """
        self.schedule.record_loss(domain, loss)
        for position in [p for p in self._snapshots if p < self.schedule.next_to_train]:
            del self._snapshots[position]

    def current_probabilities(self) -> dict[str, float]:
        """Probabilities of the window of the next batch to train, keyed by domain name."""
        return self.schedule.current_probabilities()

    def state_dict(self) -> dict[str, Any]:
        """The schedule and every domain cursor (with its ``IterableDataset.state_dict()``) as of the next batch to
        train: batches read ahead but not trained are read again after a restart."""
        position = self.schedule.next_to_train
        cursors = self._snapshots.get(position) or [cursor.state for cursor in self._cursors]
        return {
            "schedule": self.schedule.state_dict(),
            "steps_per_epoch": self.steps_per_epoch,
            "epoch": self.epoch,
            "rank": self.rank,
            "num_replicas": self.num_replicas,
            "cursors": {cursor.domain: copy.deepcopy(state) for cursor, state in zip(self._cursors, cursors)},
            "decode_report": self.decode_report.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (of this process, with the same number of processes).

        Args:
            state: a dict from :meth:`state_dict`, or ``{"per_process": [state of rank 0, ...]}`` (the trainer's
                checkpoint of a multi-process run), of which this process takes its own.
        """
        if "per_process" in state:
            states = state["per_process"]
            if len(states) != self.num_replicas:
                raise ValueError(
                    f"stream state was saved by {len(states)} processes but this run has {self.num_replicas}; "
                    "resume with the number of processes of the interrupted run"
                )
            state = states[self.rank]
        for key in ("steps_per_epoch", "num_replicas", "rank"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"stream state was saved with {key}={state[key]!r} but this run has {key}={getattr(self, key)!r}"
                )
        self.schedule.load_state_dict(state["schedule"])
        self.epoch = int(state["epoch"])
        for cursor in self._cursors:
            cursor.load_state_dict(state["cursors"][cursor.domain])
        report = state.get("decode_report") or {}
        self.decode_report = DecodeReport(
            int(report.get("num_checked", 0)),
            int(report.get("num_skipped", 0)),
            [tuple(item) for item in report.get("skipped", [])],
        )
        self._snapshots = {}
        self._resumed = True
