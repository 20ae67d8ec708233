"""Evaluators on real ``datasets`` splits: hand-computed metrics, one embedding pass per split, train-mode
preservation, result files, and the real embedder on the tiny offline benchmark."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from PIL import Image
from test_evaluation_metrics import EXPECTED
from torch import nn

from hf_distill.data.domains import DOMAIN_FEATURES, MULTI_LABEL_FEATURES, Benchmark
from hf_distill.evaluation import KNNClassificationEvaluator, RetrievalEvaluator, embed_dataset, knn_classify


def angle_image(degrees: float) -> Image.Image:
    """A flat 4x4 image whose red/green levels encode (cos, sin) of the angle (error < 0.25 degree)."""
    red = round(127.5 + 127 * math.cos(math.radians(degrees)))
    green = round(127.5 + 127 * math.sin(math.radians(degrees)))
    return Image.new("RGB", (4, 4), (red, green, 0))


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def split(domain: str, degrees: list[float], labels: list) -> Dataset:
    features = MULTI_LABEL_FEATURES if isinstance(labels[0], list) else DOMAIN_FEATURES
    images = [angle_image(value) for value in degrees]
    return Dataset.from_dict(
        {"image": images, "label": labels, "domain": [domain] * len(labels)}, features=features
    )


class AngleModel(nn.Module):
    """Mean colour -> (red - 0.5, green - 0.5): recovers the angle's direction. Has a dropout layer and a
    frozen ``teacher`` that must stay in eval mode, and records its mode and the images it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(3, 2)
        with torch.no_grad():
            self.project.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
            self.project.bias.fill_(-0.5)
        self.dropout = nn.Dropout(0.5)
        self.teacher = nn.BatchNorm1d(2)
        self.images_seen = 0
        self.modes_seen: set[bool] = set()

    def forward(self, pixel_values: torch.Tensor) -> dict:
        self.images_seen += len(pixel_values)
        self.modes_seen.add(self.training)
        return {"embeddings": self.dropout(self.project(pixel_values.mean(dim=(2, 3))))}


@pytest.fixture()
def angle_benchmark() -> Benchmark:
    # The geometry of test_evaluation_metrics: domain a test/test, domain b test queries / index.
    return Benchmark(
        domains={
            "a": DatasetDict({"test": split("a", [0, 0, 30, 50, 180], [0, 0, 0, 1, 2])}),
            "b": DatasetDict(
                {
                    "test": split("b", [38, 75, 200], [[5], [5, 6], [9]]),
                    "index": split("b", [35, 70, 170], [[5], [6], [5]]),
                    "train": split("b", [0, 180], [0, 1]),
                    "val": split("b", [170], [1]),
                }
            ),
        },
        num_classes={"a": 3, "b": 2},
        eval_pairs={"test": {"a": ("test", "test"), "b": ("test", "index")}},
    )


def test_retrieval_evaluator_hand_computed(angle_benchmark, tmp_path):
    model = AngleModel()
    model.train()
    model.teacher.eval()
    evaluator = RetrievalEvaluator(angle_benchmark, transform=to_tensor, batch_size=2)
    assert evaluator.primary_metric == "merged/mean/R@1"
    results = evaluator(model, output_path=tmp_path, epoch=1, steps=10)
    for key, value in EXPECTED.items():
        assert results[key] == pytest.approx(value, abs=1e-12), key
    # Each split embedded once (a/test 5, b/test 3, b/index 3), always in eval mode (dropout off) ...
    assert model.images_seen == 11
    assert model.modes_seen == {False}
    # ... and every module's own mode restored afterwards: the frozen teacher stays in eval mode.
    assert model.training and model.dropout.training and not model.teacher.training

    evaluator(model, output_path=tmp_path, epoch=2, steps=20)
    with (tmp_path / "retrieval_test_results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["epoch"], row["steps"]) for row in rows] == [("1", "10"), ("2", "20")]
    assert float(rows[0]["merged/mean/mP@5"]) == pytest.approx(EXPECTED["merged/mean/mP@5"])
    saved = json.loads((tmp_path / "retrieval_test_results.json").read_text())
    assert saved["steps"] == 20 and saved["metrics"] == pytest.approx(results)


def test_retrieval_evaluator_options_and_errors(angle_benchmark):
    evaluator = RetrievalEvaluator(
        angle_benchmark, protocols=["separate"], domains=["b"], transform=to_tensor, backend="torch"
    )
    assert evaluator.primary_metric == "separate/mean/R@1"
    results = evaluator(AngleModel())
    assert results["separate/mean/mAP@5"] == pytest.approx(EXPECTED["separate/b/mAP@5"])
    with pytest.raises(ValueError, match="split 'val' has no evaluation pairs"):
        RetrievalEvaluator(angle_benchmark, split="val")
    with pytest.raises(ValueError, match=r"unknown domain\(s\) \['cars'\]"):
        RetrievalEvaluator(angle_benchmark, domains=["cars"])
    with pytest.raises(ValueError, match="has no `?image_size"):
        RetrievalEvaluator(angle_benchmark)(AngleModel())


def test_embed_dataset_rejects_outputs_without_embeddings(angle_benchmark):
    class NoEmbeddings(nn.Module):
        def forward(self, pixel_values):
            return {"logits": pixel_values}

    with pytest.raises(TypeError, match="without an `embeddings` tensor"):
        embed_dataset(NoEmbeddings(), angle_benchmark.domains["a"]["test"], to_tensor)


def test_knn_classify_weighting_and_ties():
    # Query at 0°; index 1° (label 0), 40° and -40° (label 1). k = 3.
    # Majority: label 1 has 2 votes against 1. Cosine weights exp(cos / 0.07): label 0 gets
    # exp(cos 1° / 0.07) = exp(14.284), label 1 gets 2 exp(cos 40° / 0.07) = 2 exp(10.943): label 0 wins.
    index = np.array([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in (1, 40, -40)])
    query = np.array([[1.0, 0.0]])
    assert knn_classify(query, index, [0, 1, 1], k=3, weighting="majority").tolist() == [1]
    assert knn_classify(query, index, [0, 1, 1], k=3, weighting="cosine").tolist() == [0]
    # k = 2 majority: one vote each for labels 0 and 1 -> the tie goes to the smaller label, 0; with
    # labels swapped the 1° neighbour votes 1 and the 40° one 0 -> still a tie -> 0.
    assert knn_classify(query, index, [0, 1, 1], k=2, weighting="majority").tolist() == [0]
    assert knn_classify(query, index, [1, 0, 0], k=2, weighting="majority").tolist() == [0]


def test_knn_classification_evaluator(angle_benchmark, tmp_path):
    # Domain c: train 0°, 10° (label 0), 90°, 100° (label 1); val 5° (label 0: nearest are the label-0
    # items -> right) and 80° (label 0, but nearest 90°/100° are label 1 -> wrong): top-1 = 1/2.
    # Domain b: train 0° (0), 180° (1); val 170° (label 1, nearest 180°): top-1 = 1. Mean 3/4.
    domains = dict(angle_benchmark.domains)
    domains["c"] = DatasetDict(
        {"train": split("c", [0, 10, 90, 100], [0, 0, 1, 1]), "val": split("c", [5, 80], [0, 0])}
    )
    benchmark = Benchmark(domains=domains, num_classes={}, eval_pairs={})
    model = AngleModel()
    evaluator = KNNClassificationEvaluator(benchmark, domains=["c", "b"], transform=to_tensor)
    results = evaluator(model, output_path=tmp_path)
    assert results == pytest.approx({"knn/c/top1": 0.5, "knn/b/top1": 1.0, "knn/mean/top1": 0.75})
    assert evaluator.primary_metric == "knn/mean/top1"
    assert (tmp_path / "knn_val_results.csv").exists()
    with pytest.raises(ValueError, match="domain 'a' has no split 'train'"):
        KNNClassificationEvaluator(benchmark, transform=to_tensor)


def test_real_embedder_on_tiny_benchmark(tiny_benchmark):
    # The exported embedder, its config-driven transform, and the offline benchmark's val pairs.
    from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel

    config = UniversalEmbedderConfig(backbone="resnet10t", embed_dim=16, image_size=32)
    torch.manual_seed(0)
    model = UniversalEmbedderModel(config)
    domains = tiny_benchmark.domain_names[:2]
    evaluator = RetrievalEvaluator(tiny_benchmark, split="val", domains=domains, batch_size=64)
    results = evaluator(model)
    keys = {
        f"{p}/{d}/{m}"
        for p in ("merged", "separate")
        for d in [*domains, "mean"]
        for m in ("R@1", "mP@5", "mAP@5")
    }
    assert set(results) == keys
    assert all(0.0 <= value <= 1.0 for value in results.values())
    # Searching within a domain can only remove cross-domain misses: separate >= merged for R@1.
    for domain in domains:
        assert results[f"separate/{domain}/R@1"] >= results[f"merged/{domain}/R@1"]
