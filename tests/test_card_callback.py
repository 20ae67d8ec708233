"""ModelCardCallback: a short real UDON run fills the card data; the card puts the starting point first."""

import copy
import re

import pytest
import torch
from datasets import concatenate_datasets
from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_distill.data import ImageTransform, with_pixel_values
from hf_distill.evaluation import RetrievalEvaluator
from hf_distill.evaluation.starting_point import evaluate_starting_point
from hf_distill.hub import EmbedderCardData
from hf_distill.models.udon import UdonConfig, UdonModel
from hf_distill.trainers.arguments import UdonTrainingArguments
from hf_distill.trainers.callbacks import ModelCardCallback, starting_point_from_history
from hf_distill.trainers.udon import UdonTrainer

DOMAINS = ["clothing", "digits"]
STEPS = 4
FIT_IMAGES = 64


def tiny_udon(bench):
    torch.manual_seed(0)
    return UdonModel(
        UdonConfig(
            backbone="vit_tiny_patch16_224",
            backbone_kwargs=dict(img_size=32, patch_size=8, depth=1),
            image_size=32,
            embed_dim=8,
            domains=DOMAINS,
            num_classes=[bench.num_classes[name] for name in DOMAINS],
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
        )
    )


def row_values(text: str, label_start: str) -> tuple[int, list[float]]:
    """Position and numbers of the first table row whose first cell starts with ``label_start``."""
    for index, line in enumerate(text.splitlines()):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(label_start):
            return index, [float(cell) for cell in cells[1:] if re.fullmatch(r"\d+\.\d\d", cell)]
    raise AssertionError(f"no row starting with {label_start!r} in:\n{text}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_benchmark):
    """A 4-step UDON run with the callback; also the starting point measured independently beforehand."""
    bench = tiny_benchmark
    model = tiny_udon(bench)
    untrained = copy.deepcopy(model).export_embedder()
    expected_start = evaluate_starting_point(
        untrained, bench, split="test", pca_dim=8, max_fit_images=FIT_IMAGES, domains=DOMAINS
    )
    transform = ImageTransform(32, [0.5] * 3, [0.5] * 3, train=True, resize_size=36)
    train = with_pixel_values(
        concatenate_datasets([bench.domains[name]["train"] for name in DOMAINS]),
        transform,
        {name: i for i, name in enumerate(DOMAINS)},
    )
    args = UdonTrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("run")),
        per_device_train_batch_size=8,
        max_steps=STEPS,
        learning_rate=1e-3,
        backbone_frozen_epochs=0,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=STEPS,
        save_strategy="no",
        metric_for_best_model="merged/mean/R@1",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        plot_sampling_curves=False,
        hub_token="hf_card_callback_secret",
        seed=0,
    )
    evaluator = RetrievalEvaluator(bench, split="val", protocols=("merged",), domains=DOMAINS)
    trainer = UdonTrainer(model=model, args=args, train_dataset=train, evaluator=evaluator)
    card_data = EmbedderCardData(
        method="udon", repo_id="tester/udon-card", domains=DOMAINS, validation_split="val"
    )
    trainer.add_callback(
        ModelCardCallback(card_data, benchmark=bench, max_fit_images=FIT_IMAGES, domains=DOMAINS)
    )
    trainer.train()
    embedder = trainer.model.export_embedder()
    card_data.metrics = RetrievalEvaluator(bench, split="test", domains=DOMAINS)(embedder)
    return trainer, card_data, expected_start, embedder


def test_callback_fills_starting_point_evaluations_arguments_and_history(trained):
    trainer, card_data, expected_start, _ = trained
    # The starting point is the untrained backbone, measured before the first step on the card's split.
    assert set(card_data.starting_point) == set(expected_start)
    for key, value in expected_start.items():
        assert card_data.starting_point[key] == pytest.approx(value), key
    assert {"starting_point/full/merged/mean/R@1", "starting_point/pca8/merged/mean/R@1"} <= set(
        expected_start
    )
    # ... and kept in the log history at step 0, where a resumed run finds it.
    logged = [entry for entry in trainer.state.log_history if "starting_point/full/merged/mean/R@1" in entry]
    assert len(logged) == 1 and logged[0]["step"] == 0
    # The untrained model at step 0 (StartingPointCallback) and the last evaluation, same evaluator.
    assert card_data.untrained_metrics == pytest.approx(
        starting_point_from_history(trainer.state.log_history)
    )
    last = [entry for entry in trainer.state.log_history if "eval_merged/mean/R@1" in entry][-1]
    assert card_data.validation_step == STEPS == last["step"] == card_data.trained_steps
    assert card_data.validation_metrics["merged/mean/R@1"] == pytest.approx(last["eval_merged/mean/R@1"])
    # Arguments that differ from their defaults, and only those; never the token or the paths.
    arguments = card_data.training_arguments
    assert arguments["max_steps"] == STEPS and arguments["learning_rate"] == 1e-3
    assert arguments["backbone_frozen_epochs"] == 0 and arguments["eval_strategy"] == "steps"
    assert "weight_decay" not in arguments and "backbone_lr_ratio" not in arguments
    assert "output_dir" not in arguments and not any("token" in key for key in arguments)
    assert len([entry for entry in card_data.log_history if "loss" in entry]) == STEPS


def test_card_shows_starting_point_rows_first_with_their_numbers(trained, tmp_path):
    _, card_data, expected_start, embedder = trained
    text = str(card_data.to_model_card(embedder, plots_dir=tmp_path))
    assert "hf_card_callback_secret" not in text
    full_at, full = row_values(
        text, "starting point: `vit_tiny_patch16_224` untrained, full features (192-d)"
    )
    pca_at, pca = row_values(text, "starting point: `vit_tiny_patch16_224` untrained, PCA-8")
    model_at, final = row_values(text, "**this model** (8-d)")
    assert full_at < pca_at < model_at
    for values, prefix in ((full, "starting_point/full/"), (pca, "starting_point/pca8/")):
        expected = [
            expected_start[prefix + f"{p}/mean/{m}"] for p in ("merged", "separate") for m in ("R@1", "mP@5")
        ]
        assert values == pytest.approx([round(100 * v, 2) for v in expected], abs=1e-9)
    metrics = card_data.metrics
    assert final == pytest.approx(
        [round(100 * metrics[f"{p}/mean/{m}"], 2) for p in ("merged", "separate") for m in ("R@1", "mP@5")],
        abs=1e-9,
    )
    # The sentence under the table says where the model stands against each starting point.
    delta_full = 100 * (metrics["merged/mean/R@1"] - expected_start["starting_point/full/merged/mean/R@1"])
    word = "above" if delta_full >= 0 else "**below**"
    final_r1 = 100 * metrics["merged/mean/R@1"]
    assert f"{word} the full features (192-d): {full[0]:.2f} → {final_r1:.2f} ({delta_full:+.2f})" in text
    assert "Starting point measured by: `" in text and "untrained model at step 0" in text
    assert "](training_curves.png)" in text and "| max_steps | 4 |" in text


def test_resumed_run_reads_the_starting_point_from_the_log_history(tmp_path):
    logged = {"starting_point/full/merged/mean/R@1": 0.5, "starting_point/pca64/merged/mean/R@1": 0.25}
    state = TrainerState(global_step=10, log_history=[{**logged, "step": 0}, {"loss": 1.0, "step": 10}])
    card_data = EmbedderCardData(method="udon")
    # With model=None, measuring again would raise: the logged values must be used instead.
    callback = ModelCardCallback(card_data, benchmark="a benchmark that must not be read")
    callback.on_train_begin(TrainingArguments(output_dir=str(tmp_path)), state, TrainerControl(), model=None)
    assert card_data.starting_point == logged and card_data.training_arguments == {}


def test_starting_point_needs_a_model_that_exports_an_embedder(tmp_path):
    callback = ModelCardCallback(EmbedderCardData(method="udon"), benchmark="unused")
    with pytest.raises(TypeError, match="export_embedder"):
        callback.on_train_begin(
            TrainingArguments(output_dir=str(tmp_path)),
            TrainerState(),
            TrainerControl(),
            model=torch.nn.Linear(2, 2),
        )
