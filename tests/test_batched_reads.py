"""Batched training reads: one ``__getitems__`` call per batch, seeding skipped for sets that draw nothing at
random, array columns served whole — and the per-example augmentation of a random set unchanged bit for bit."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import default_data_collator

from hf_distill.trainers.base import (
    CollatedBatch,
    SeededAugmentationDataset,
    collate_training_batch,
    draws_randomness,
)


def augmented_dataset() -> Dataset:
    """Eight rows whose on-the-fly transform draws from all three global RNGs."""

    def augment(batch: dict) -> dict:
        base = torch.tensor(batch["value"], dtype=torch.float32)
        noise = torch.rand(len(base)) + torch.from_numpy(np.random.rand(len(base))).float()
        noise = noise + torch.tensor([random.random() for _ in base])
        return {"x": base + noise.float(), "labels": batch["value"]}

    dataset = Dataset.from_dict({"value": list(range(8))})
    dataset.set_transform(augment)
    return dataset


def reference_example(dataset: Dataset, seed: int, epoch: int, index: int) -> dict:
    """The contract written out: every RNG seeded from SeedSequence([seed, epoch, index]), one example read."""
    example_seed = int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])
    torch.manual_seed(example_seed)
    random.seed(example_seed)
    np.random.seed(example_seed % 2**32)
    return dataset[index]


def test_batch_of_a_random_set_equals_each_example_seeded_by_hand():
    source = augmented_dataset()
    seeded = SeededAugmentationDataset(source, seed=7)
    seeded.set_epoch(2)
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    before = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    batch = seeded.__getitems__([5, 0, 3])
    # the global states are left as they were
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
    expected = [reference_example(source, 7, 2, index) for index in (5, 0, 3)]
    for got, want in zip(batch, expected):
        assert torch.equal(got["x"], want["x"]) and got["labels"] == want["labels"]
    # a single read and a batch read agree; another epoch draws other noise
    assert torch.equal(seeded[0]["x"], batch[1]["x"])
    seeded.set_epoch(3)
    assert not torch.equal(seeded[0]["x"], batch[1]["x"])


def feature_dataset(rows: int = 10) -> Dataset:
    values = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 4)
    table = pa.table(
        {"pixel_values": column, "labels": np.arange(rows), "name": [f"r{i}" for i in range(rows)]}
    )
    return Dataset(table).with_format("numpy")


def test_declared_randomness():
    assert draws_randomness(augmented_dataset())
    assert not draws_randomness(feature_dataset())
    assert not draws_randomness(Dataset.from_dict({"a": [1, 2]}))

    class Declared(torch.utils.data.Dataset):
        draws_randomness = False

    class Undeclared(torch.utils.data.Dataset):
        pass

    assert not draws_randomness(Declared()) and draws_randomness(Undeclared())


def test_cached_features_are_served_whole_and_equal_the_row_collation():
    dataset = feature_dataset()
    indices = [7, 2, 9]
    batch = SeededAugmentationDataset(dataset, seed=0, collated=True).__getitems__(indices)
    assert isinstance(batch, CollatedBatch)
    # the same tensors, dtypes and keys as the Trainer's default collator makes of the rows
    expected = default_data_collator([dataset[i] for i in indices])
    assert sorted(batch) == sorted(expected) == ["labels", "pixel_values"]
    for key in expected:
        assert batch[key].dtype == expected[key].dtype and torch.equal(batch[key], expected[key])
    assert torch.equal(batch["pixel_values"][0], torch.arange(28, 32, dtype=torch.float32))
    # without ``collated`` the rows come back for another collator
    rows = SeededAugmentationDataset(dataset, seed=0).__getitems__(indices)
    assert [int(row["labels"]) for row in rows] == indices


class CountingFeatures(torch.utils.data.Dataset):
    """Counts how it is read: the loader must fetch a batch with one ``__getitems__`` call."""

    draws_randomness = False

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> dict:
        raise AssertionError("read row by row")

    def __getitems__(self, indices: list[int]) -> list[dict]:
        self.calls.append(list(indices))
        return [{"pixel_values": torch.full((2,), float(i)), "labels": i} for i in indices]


def test_the_loader_reads_each_batch_with_one_call():
    source = CountingFeatures()
    loader = DataLoader(
        SeededAugmentationDataset(source, seed=0), batch_size=3, collate_fn=collate_training_batch
    )
    batches = list(loader)
    assert source.calls == [[0, 1, 2], [3, 4, 5]]
    assert torch.equal(batches[1]["labels"], torch.tensor([3, 4, 5]))


@pytest.mark.parametrize("rows_or_batch", ["rows", "batch"])
def test_collator_passes_batches_through_and_collates_rows(rows_or_batch):
    if rows_or_batch == "batch":
        batch = CollatedBatch(pixel_values=torch.ones(2, 3), labels=torch.tensor([1, 2]))
        out = collate_training_batch(batch)
        assert out["pixel_values"] is batch["pixel_values"]
    else:
        out = collate_training_batch([{"label": 1, "x": np.zeros(2)}, {"label": 0, "x": np.ones(2)}])
        assert torch.equal(out["labels"], torch.tensor([1, 0])) and out["x"].shape == (2, 2)
