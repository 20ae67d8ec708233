"""Domains as ``datasets.DatasetDict`` objects, the ``Benchmark`` that groups them, and their loaders.

Three sources give the same shape (splits with columns ``image``, ``label``, ``domain``):

- UnED on disk: ``info_files/<domain>/<split>.json`` plus an image root (``load_uned_domains``);
- local folders in ``<root>/<domain>/<split>/<class>/<image>`` layout (``load_imagefolder_domains``);
- a Hub dataset id with a column mapping (``load_hub_domain``).

Every image file is decoded once at load time (``check_images=True``) so that a corrupt, truncated, empty
or non-image file is reported by path before training starts, as an ``ImageDecodeError`` or, with
``on_bad_image="skip"``, skipped and counted in the returned ``DecodeReport``.

Length: the three loaders (UnED, image folders, Hub) share label validation, decoding checks and the
warnings about unusable splits; one module keeps their checks identical (about 570 lines).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Image, List, Value
from datasets.table import InMemoryTable, table_cast

from hf_distill.data.decoding import (
    DecodeReport,
    ImageDecodeError,
    OnBadImage,
    check_image_file,
    check_image_files,
    decode_image_bytes,
)

logger = logging.getLogger(__name__)

# Columns every split of every domain has (docs/architecture.md, data contract).
DOMAIN_FEATURES = Features({"image": Image(), "label": Value("int64"), "domain": Value("string")})
MULTI_LABEL_FEATURES = Features({"image": Image(), "label": List(Value("int64")), "domain": Value("string")})

# The UnED evaluation split pairs (query split, index split), SPEC.md section 2.
UNED_DOMAINS = ("cars", "sop", "inshop", "inat", "met", "gldv2", "food2k", "rp2k")
UNED_EVAL_PAIRS: dict[str, dict[str, tuple[str, str]]] = {
    "test": {
        "cars": ("test", "test"),
        "sop": ("test", "test"),
        "inshop": ("test", "index"),
        "inat": ("test", "test"),
        "met": ("test", "index"),
        "gldv2": ("test", "index"),
        "food2k": ("test", "test"),
        "rp2k": ("test", "test"),
    },
    "val": {name: ("val", "small_index") if name == "met" else ("val", "val") for name in UNED_DOMAINS},
}


@dataclass
class Benchmark:
    """Several domains and how to evaluate retrieval on them.

    Args:
        domains: domain name -> ``DatasetDict`` of splits with columns ``image``, ``label``, ``domain``.
        num_classes: domain name -> number of training classes (labels ``0 .. n-1`` of train/val).
        eval_pairs: evaluation name (``"test"``, ``"val"``) -> domain -> ``(query split, index split)``.
        metadata: free-form facts (sources, licences, counts), e.g. the content of ``benchmark.json``.
        path: where the benchmark was loaded from, if anywhere.
        decode_report: unreadable images met while loading (for the run summary).
    """

    domains: dict[str, DatasetDict]
    num_classes: dict[str, int]
    eval_pairs: dict[str, dict[str, tuple[str, str]]]
    metadata: dict = field(default_factory=dict)
    path: Path | None = None
    decode_report: DecodeReport = field(default_factory=DecodeReport)

    @property
    def domain_names(self) -> list[str]:
        """Domain names in benchmark order."""
        return list(self.domains)

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{name}: " + "/".join(f"{split}={len(ds)}" for split, ds in splits.items())
            for name, splits in self.domains.items()
        )
        return f"Benchmark({sizes})"


def validate_labels(
    labels: Sequence[int | Sequence[int]], domain: str, split: str, num_classes: int | None = None
) -> None:
    """Raise a ``ValueError`` naming domain and split for an empty split or a class id out of range.

    Args:
        labels: one int, or a list of ints (multi-label), per image.
        domain / split: where the labels come from, for the message.
        num_classes: declared number of classes of the domain; ids must lie in ``0 .. num_classes-1``.
    """
    if len(labels) == 0:
        raise ValueError(f"domain {domain!r}, split {split!r} is empty: it has no images")
    for position, label in enumerate(labels):
        ids = label if isinstance(label, (list, tuple)) else [label]
        if not ids:
            raise ValueError(f"domain {domain!r}, split {split!r}: image {position} has an empty label list")
        for class_id in ids:
            if isinstance(class_id, bool) or not isinstance(class_id, int):
                raise ValueError(
                    f"domain {domain!r}, split {split!r}: image {position} has class id {class_id!r}, "
                    "expected an int or a list of ints"
                )
            if class_id < 0 or (num_classes is not None and class_id >= num_classes):
                bound = f"0 .. {num_classes - 1}" if num_classes is not None else "non-negative"
                raise ValueError(
                    f"domain {domain!r}, split {split!r}: image {position} has class id {class_id}, "
                    f"out of range ({bound})"
                )


def _make_split(paths: list[str], labels: list, domain: str) -> Dataset:
    multi_label = any(isinstance(label, (list, tuple)) for label in labels)
    if multi_label:
        labels = [list(label) if isinstance(label, (list, tuple)) else [label] for label in labels]
    # Build plain Arrow columns and cast the paths to Image() in Arrow: encoding row by row (from_dict with the
    # Image feature) takes minutes on UnED's 2.8M entries.
    features = MULTI_LABEL_FEATURES if multi_label else DOMAIN_FEATURES
    columns = pa.table(
        {"image": pa.array(paths, pa.string()), "label": labels, "domain": [domain] * len(paths)}
    )
    return Dataset(
        InMemoryTable(table_cast(columns, features.arrow_schema)), info=DatasetInfo(features=features)
    )


def _checked(
    paths: list[str],
    labels: list,
    domain: str,
    split: str,
    check_images: bool,
    on_bad_image: OnBadImage,
    report: DecodeReport,
) -> tuple[list[str], list]:
    """Drop (or raise on) unreadable files; return the surviving paths and labels."""
    if not check_images:
        return paths, labels
    keep, split_report = check_image_files(paths, on_bad_image, context=f"domain {domain!r}, split {split!r}")
    report.merge(split_report)
    return [p for p, k in zip(paths, keep) if k], [label for label, k in zip(labels, keep) if k]


def single_labels(labels: list, domain: str, split: str, source: str | os.PathLike) -> list:
    """The labels of a training split as one int per image; a list of several class ids is an error.

    Training takes one class per image (the classifiers' cross-entropy); multi-label lists are for evaluation
    splits, where an image is relevant to each of its classes. A one-element list is read as its element.

    Args:
        labels: one int or list of ints per image.
        domain / split / source: where the labels come from, for the message.
    """
    result = []
    for position, label in enumerate(labels):
        if isinstance(label, (list, tuple)):
            if len(label) != 1:
                raise ValueError(
                    f"domain {domain!r}, split {split!r}: entry {position} of {source} has the class ids "
                    f"{list(label)}, but a training split needs one class per image (multi-label class_id lists "
                    "are supported in evaluation splits only); keep one class id per training entry, or repeat "
                    "the entry once per class"
                )
            label = label[0]
        result.append(label)
    return result


# A training split whose largest class id exceeds this many times its number of distinct classes (plus a margin)
# is taken for unmapped ids: the classifier would get one row per id up to the largest one.
SPARSE_CLASS_ID_FACTOR = 2
SPARSE_CLASS_ID_MARGIN = 100


def _num_train_classes(domain: DatasetDict, declared: int | None, name: str = "") -> int:
    if declared is not None:
        return declared
    if "train" not in domain:
        return 0
    # One Arrow read: iterating the column would format the rows one by one.
    labels = domain["train"].select_columns(["label"])[:]["label"]
    ids = [class_id for label in labels for class_id in (label if isinstance(label, list) else [label])]
    num_classes, distinct = 1 + max(ids), len(set(ids))
    if num_classes > SPARSE_CLASS_ID_FACTOR * distinct + SPARSE_CLASS_ID_MARGIN:
        raise ValueError(
            f"domain {name!r}, split 'train': class ids go up to {num_classes - 1} but only {distinct} distinct "
            f"classes occur, so the classifier would get {num_classes} rows; remap the training class ids to "
            f"0 .. {distinct - 1}, or declare the number of classes (num_classes) if the gaps are intended"
        )
    return num_classes


def _report_evaluation_gaps(
    domains: Mapping[str, DatasetDict],
    eval_pairs: Mapping[str, Mapping[str, tuple[str, str]]],
    num_classes: Mapping[str, int],
) -> dict[str, list[str]]:
    """Warn about domains that will be silently absent from evaluation or training, and about classes that
    cannot be retrieved; returns the warnings by kind (kept in ``Benchmark.metadata["warnings"]``)."""
    found: dict[str, list[str]] = {}

    def warn(kind: str, message: str) -> None:
        logger.warning(message)
        found.setdefault(kind, []).append(message)

    for evaluation, pairs in eval_pairs.items():
        for domain in domains:
            if domain not in pairs:
                warn(
                    f"no_{evaluation}_split",
                    f"domain {domain!r} has no {evaluation!r} split pair: it is left out of the {evaluation} "
                    "evaluation and of its mean over domains",
                )
    for domain in domains:
        if num_classes.get(domain, 0) == 0:
            warn(
                "no_training_classes",
                f"domain {domain!r} has no 'train' split: 0 training classes, so it can be evaluated but not "
                "trained on",
            )
    for pairs in eval_pairs.values():
        for domain, (query, index) in pairs.items():
            if query != index:
                continue
            counts: dict[int, int] = {}
            for label in domains[domain][query].select_columns(["label"])[:]["label"]:
                for class_id in label if isinstance(label, list) else [label]:
                    counts[class_id] = counts.get(class_id, 0) + 1
            single = sum(1 for count in counts.values() if count == 1)
            if single:
                warn(
                    "single_image_classes",
                    f"domain {domain!r}, split {query!r}: {single} of {len(counts)} classes have a single image; "
                    "with the split as its own index those queries have no other relevant image and score "
                    "R@1 = 0",
                )
    return found


def _read_info_file(path: Path, domain: str, split: str) -> tuple[list[str], list]:
    try:
        with open(path) as handle:
            entries = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"domain {domain!r}, split {split!r}: {path} is not valid JSON ({error})") from error
    if not isinstance(entries, list):
        raise ValueError(f"domain {domain!r}, split {split!r}: {path} must hold a JSON list of entries")
    paths, labels = [], []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or "path" not in entry or "class_id" not in entry:
            raise ValueError(
                f"domain {domain!r}, split {split!r}: entry {position} of {path} needs the keys 'path' and 'class_id'"
            )
        paths.append(entry["path"])
        labels.append(entry["class_id"])
    return paths, labels


def load_uned_domains(
    info_root: str | os.PathLike,
    image_root: str | os.PathLike,
    domains: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    num_classes: Mapping[str, int] | None = None,
    check_images: bool = True,
    on_bad_image: OnBadImage = "raise",
) -> Benchmark:
    """Load UnED domains from ``<info_root>/<domain>/<split>.json`` and the images under ``image_root``.

    Each info file is a JSON list of ``{"path": <path relative to image_root>, "class_id": <int or list>}``.
    The benchmark's ``eval_pairs`` are UnED's (``UNED_EVAL_PAIRS``), restricted to the loaded splits.

    Args:
        info_root: folder holding one sub-folder of info files per domain.
        image_root: folder the ``path`` entries are relative to.
        domains: domain names, default every sub-folder of ``info_root`` (UnED order first).
        splits: split names to read, default ``train`` plus every split of the UnED pairs of each domain.
        num_classes: domain -> declared number of classes; class ids must lie below it. Also used as the
            domain's number of training classes (default: 1 + the largest train class id).
        check_images: decode every image once now, reporting unreadable files by path.
        on_bad_image: ``"raise"`` (default) or ``"skip"`` unreadable files (counted in ``decode_report``).
    """
    info_root, image_root = Path(info_root), Path(image_root)
    if not info_root.is_dir():
        raise FileNotFoundError(f"UnED info folder {info_root} does not exist")
    if domains is None:
        found = sorted(path.name for path in info_root.iterdir() if path.is_dir())
        domains = [name for name in UNED_DOMAINS if name in found] + [
            name for name in found if name not in UNED_DOMAINS
        ]
    if not domains:
        raise ValueError(f"no domain folders under {info_root}")
    declared = dict(num_classes or {})
    report = DecodeReport()
    loaded: dict[str, DatasetDict] = {}
    for domain in domains:
        if not (info_root / domain).is_dir():
            raise ValueError(f"domain {domain!r}: no info folder {info_root / domain}")
        if splits is not None:
            wanted = list(splits)
        else:
            # A domain outside UnED's eight is evaluated like most of them: val/val and test/test.
            pairs = [UNED_EVAL_PAIRS[name].get(domain, (name, name)) for name in ("val", "test")]
            wanted = list(dict.fromkeys(["train", *(split for pair in pairs for split in pair)]))
        parts = {}
        for split in wanted:
            info_file = info_root / domain / f"{split}.json"
            if not info_file.is_file():
                raise ValueError(f"domain {domain!r}, split {split!r}: info file {info_file} is missing")
            relative, labels = _read_info_file(info_file, domain, split)
            if split == "train":
                labels = single_labels(labels, domain, split, info_file)
            validate_labels(labels, domain, split, declared.get(domain))
            # os.path.join, not Path / path: a million Path objects cost seconds.
            paths = [os.path.join(image_root, path) for path in relative]
            paths, labels = _checked(paths, labels, domain, split, check_images, on_bad_image, report)
            validate_labels(labels, domain, split)  # every image of the split may have been skipped
            parts[split] = _make_split(paths, labels, domain)
        loaded[domain] = DatasetDict(parts)
    eval_pairs: dict[str, dict[str, tuple[str, str]]] = {"test": {}, "val": {}}
    for evaluation, pairs in UNED_EVAL_PAIRS.items():
        for domain, splits_of_domain in loaded.items():
            query, index = pairs.get(domain, (evaluation, evaluation))
            if query in splits_of_domain and index in splits_of_domain:
                eval_pairs[evaluation][domain] = (query, index)
    classes = {name: _num_train_classes(loaded[name], declared.get(name), name) for name in loaded}
    warnings = _report_evaluation_gaps(loaded, eval_pairs, classes)
    return Benchmark(
        domains=loaded,
        num_classes=classes,
        eval_pairs=eval_pairs,
        metadata={
            "source": "uned",
            "info_root": str(info_root),
            "image_root": str(image_root),
            "warnings": warnings,
        },
        decode_report=report,
    )


def load_imagefolder_domains(
    root: str | os.PathLike,
    domains: Sequence[str] | None = None,
    check_images: bool = True,
    on_bad_image: OnBadImage = "raise",
) -> Benchmark:
    """Load domains laid out as ``<root>/<domain>/<split>/<class>/<image>``.

    Class folder names become labels per domain: the ``train`` classes in sorted order get ``0 .. n-1``,
    classes seen only in other splits follow in sorted order (so a test split of unseen classes gets labels
    from ``n`` on, as in the offline benchmark). Hidden files are ignored; any other file must be an image.
    ``eval_pairs`` are ``test/test`` and ``val/val`` where those splits exist.

    Args:
        root: the folder holding one sub-folder per domain.
        domains: domain names, default every sub-folder of ``root`` in sorted order.
        check_images: decode every image once now, reporting unreadable files by path.
        on_bad_image: ``"raise"`` (default) or ``"skip"`` unreadable files (counted in ``decode_report``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} does not exist")
    names = (
        sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if domains is None
        else list(domains)
    )
    if not names:
        raise ValueError(f"no domain folders under {root}")
    report = DecodeReport()
    loaded: dict[str, DatasetDict] = {}
    class_names: dict[str, list[str]] = {}
    empty_class_folders: list[str] = []
    num_classes: dict[str, int] = {}
    for domain in names:
        domain_dir = root / domain
        if not domain_dir.is_dir():
            raise ValueError(f"domain {domain!r}: folder {domain_dir} does not exist")
        split_dirs = sorted(p for p in domain_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not split_dirs:
            raise ValueError(f"domain {domain!r} is empty: no split folders under {domain_dir}")
        classes_per_split = {}
        for split_dir in split_dirs:
            classes = []
            for class_dir in sorted(
                p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
            ):
                if any(not entry.name.startswith(".") for entry in class_dir.iterdir()):
                    classes.append(class_dir.name)
                else:
                    empty_class_folders.append(str(class_dir))
                    logger.warning(
                        "skipping empty class folder %s (domain %r): it is not a class", class_dir, domain
                    )
            classes_per_split[split_dir.name] = classes
        train_classes = classes_per_split.get("train", [])
        others = sorted({c for classes in classes_per_split.values() for c in classes} - set(train_classes))
        class_to_id = {name: index for index, name in enumerate([*train_classes, *others])}
        parts = {}
        for split_dir in split_dirs:
            split = split_dir.name
            paths, labels = [], []
            for class_name in classes_per_split[split]:
                for file in sorted((split_dir / class_name).iterdir()):
                    # A symlink that loops or dangles is not a file: keep it so the image check reports it.
                    if (file.is_file() or file.is_symlink()) and not file.name.startswith("."):
                        paths.append(str(file))
                        labels.append(class_to_id[class_name])
            validate_labels(labels, domain, split)
            paths, labels = _checked(paths, labels, domain, split, check_images, on_bad_image, report)
            validate_labels(labels, domain, split)
            parts[split] = _make_split(paths, labels, domain)
        loaded[domain] = DatasetDict(parts)
        class_names[domain] = list(class_to_id)
        num_classes[domain] = len(train_classes)
    eval_pairs = {
        evaluation: {domain: (evaluation, evaluation) for domain in loaded if evaluation in loaded[domain]}
        for evaluation in ("test", "val")
    }
    warnings = _report_evaluation_gaps(loaded, eval_pairs, num_classes)
    return Benchmark(
        domains=loaded,
        num_classes=num_classes,
        eval_pairs=eval_pairs,
        metadata={
            "source": "imagefolder",
            "root": str(root),
            "class_names": class_names,
            "empty_class_folders": empty_class_folders,
            "warnings": warnings,
        },
        path=root,
        decode_report=report,
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_dataset_images(
    dataset: Dataset, domain: str, split: str, on_bad_image: OnBadImage = "raise", column: str = "image"
) -> tuple[Dataset, DecodeReport]:
    """Decode every image of an ``Image()`` column once; drop (or raise on) unreadable ones.

    Args:
        dataset: a split with an ``Image()`` column.
        domain / split: names for messages.
        on_bad_image: ``"raise"`` or ``"skip"``.
        column: the image column.
    """
    raw = dataset.cast_column(column, Image(decode=False))
    report = DecodeReport()
    keep = []
    for position, value in enumerate(raw[column]):
        report.num_checked += 1
        where = (value or {}).get("path") or f"{domain}/{split}[{position}]"
        try:
            if value is None or (value.get("bytes") is None and not value.get("path")):
                raise ImageDecodeError(where, "the row has no image")
            if value.get("bytes") is not None:
                decode_image_bytes(value["bytes"], where)
            else:
                check_image_file(value["path"])
        except ImageDecodeError as error:
            if on_bad_image != "skip":
                raise
            report.add_skipped(error)
            continue
        keep.append(position)
    if report.num_skipped:
        logger.warning(
            "skipped %d of %d unreadable images in domain %r, split %r",
            report.num_skipped,
            report.num_checked,
            domain,
            split,
        )
        dataset = dataset.select(keep)
    return dataset, report


def load_hub_domain(
    repo_id: str,
    image_column: str = "image",
    label_column: str = "label",
    splits: Sequence[str] | None = None,
    domain: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_classes: int | None = None,
    check_images: bool = True,
    on_bad_image: OnBadImage = "raise",
) -> tuple[DatasetDict, DecodeReport]:
    """Load one domain from a Hub dataset (or a local dataset folder) and map its columns.

    With ``HF_HUB_OFFLINE=1`` and nothing cached, ``datasets`` cannot reach the Hub; the error then names
    the repository and the variable instead of a long network traceback.

    Args:
        repo_id: Hub dataset id (``"user/name"``) or a local folder ``datasets.load_dataset`` understands.
        image_column / label_column: the source columns that become ``image`` and ``label``.
        splits: splits to keep, default all.
        domain: the ``domain`` column's value, default the last part of ``repo_id``.
        revision: Hub revision (branch, tag or commit).
        cache_dir: ``datasets`` cache folder, default ``HF_DATASETS_CACHE``.
        num_classes: declared number of classes; ids must lie below it.
        check_images: decode every image once now, reporting unreadable ones.
        on_bad_image: ``"raise"`` or ``"skip"``.

    Returns:
        the ``DatasetDict`` and the ``DecodeReport`` of the check.
    """
    from datasets import load_dataset

    name = domain or repo_id.rstrip("/").split("/")[-1]
    try:
        source = load_dataset(
            repo_id, revision=revision, cache_dir=None if cache_dir is None else str(cache_dir)
        )
    except Exception as error:
        if _hub_offline() and not Path(repo_id).exists():
            raise ConnectionError(
                f"cannot load the Hub dataset {repo_id!r}: HF_HUB_OFFLINE is set and it is not in the local "
                "cache. Unset HF_HUB_OFFLINE to download it, or save it locally and use load_imagefolder_domains."
            ) from error
        raise
    available = list(source)
    for split in splits or []:
        if split not in source:
            raise ValueError(
                f"domain {name!r}, split {split!r}: not in {repo_id!r}, whose splits are {available}"
            )
    report = DecodeReport()
    parts = {}
    for split in splits or available:
        dataset = source[split]
        missing = [c for c in (image_column, label_column) if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"domain {name!r}, split {split!r}: column(s) {missing} not in {repo_id!r} "
                f"(columns: {dataset.column_names}); pass image_column= / label_column="
            )
        dataset = dataset.select_columns([image_column, label_column])
        dataset = dataset.rename_columns({image_column: "image", label_column: "label"})
        if isinstance(dataset.features["label"], ClassLabel):
            dataset = dataset.cast_column("label", Value("int64"))
        if not isinstance(dataset.features["image"], Image):
            dataset = dataset.cast_column("image", Image())
        validate_labels(dataset["label"], name, split, num_classes)
        dataset = dataset.add_column("domain", [name] * len(dataset))
        if check_images:
            dataset, split_report = check_dataset_images(dataset, name, split, on_bad_image)
            report.merge(split_report)
            validate_labels(dataset["label"], name, split)
        parts[split] = dataset
    return DatasetDict(parts), report
