"""Model cards: metadata and model-index from evaluator metrics, hyperparameters, plots, citations, secrets."""

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from transformers import Trainer, TrainingArguments

from hf_distill.hub import (
    EmbedderCardData,
    build_model_card,
    command_line,
    extract_usage_snippet,
    hyperparameters_from_training_args,
    method_card,
    non_default_arguments,
    parse_retrieval_metrics,
)
from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel

METRICS = {
    "eval_merged/digits/R@1": 0.5,
    "eval_merged/digits/mP@5": 0.25,
    "eval_merged/photos/R@1": 0.75,
    "eval_merged/photos/mP@5": 0.625,
    "eval_merged/mean/R@1": 0.625,
    "eval_merged/mean/mP@5": 0.4375,
    "eval_separate/digits/R@1": 0.875,
    "eval_separate/mean/R@1": 0.875,
    "eval_loss": 1.0,
}
LOG_HISTORY = [
    {"step": 1, "epoch": 0.1, "loss": 2.0, "loss_teacher": 1.5, "learning_rate": 1e-3},
    {"step": 2, "epoch": 0.2, "loss": 1.5, "loss_teacher": 1.0, "learning_rate": 1e-3},
    {"step": 2, "epoch": 0.2, "eval_merged/mean/R@1": 0.625},
]


@pytest.fixture(scope="module")
def model() -> UniversalEmbedderModel:
    config = UniversalEmbedderConfig(
        backbone="resnet10t",
        backbone_kwargs={},
        image_size=32,
        embed_dim=8,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    return UniversalEmbedderModel(config).eval()


def test_parse_retrieval_metrics_groups_and_ignores_other_keys():
    grouped = parse_retrieval_metrics(METRICS)
    assert grouped["merged"] == {
        "digits": {"R@1": 0.5, "mP@5": 0.25},
        "photos": {"R@1": 0.75, "mP@5": 0.625},
        "mean": {"R@1": 0.625, "mP@5": 0.4375},
    }
    assert grouped["separate"] == {"digits": {"R@1": 0.875}, "mean": {"R@1": 0.875}}
    assert parse_retrieval_metrics({"merged/cars/R@1": 0.1, "loss": 3.0}) == {
        "merged": {"cars": {"R@1": 0.1}}
    }


def test_card_metadata_model_index_and_body(model, tmp_path):
    card = build_model_card(
        model,
        method="udon",
        repo_id="tester/udon-tiny",
        metrics=METRICS,
        base_model="timm/resnet10t.c3_in1k",
        teachers=["resnet10t-digits", "resnet10t-photos"],
        domains=["digits", "photos"],
        datasets=["tester/offline-benchmark"],
        hyperparameters={"learning_rate": 1e-3, "hub_token": "hf_should_not_appear", "steps": 2},
        log_history=LOG_HISTORY,
        plots_dir=tmp_path,
    )
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-feature-extraction" and data["library_name"] == "hf_distill"
    assert data["base_model"] == "timm/resnet10t.c3_in1k" and data["datasets"] == ["tester/offline-benchmark"]
    assert data["license"] == "apache-2.0" and "udon" in data["tags"]
    results = {
        (r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results
    }  # merged protocol only
    assert results == {
        ("digits", "recall_at_1"): 0.5,
        ("digits", "mean_precision_at_5"): 0.25,
        ("photos", "recall_at_1"): 0.75,
        ("photos", "mean_precision_at_5"): 0.625,
        ("mean", "recall_at_1"): 0.625,
        ("mean", "mean_precision_at_5"): 0.4375,
    }
    text = str(card)
    assert "| digits | 50.00 | 25.00 | 87.50 | – |" in text
    assert (
        "| learning_rate | 0.001 |" in text and "hub_token" not in text and "hf_should_not_appear" not in text
    )
    assert "`resnet10t-digits`, `resnet10t-photos`" in text and "NeurIPS" in text
    assert 'AutoModel.from_pretrained("tester/udon-tiny", trust_remote_code=True)' in extract_usage_snippet(
        card
    )
    for name in ("training_curves.png", "per_domain_results.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in text
    # The card text round-trips through huggingface_hub's parser.
    assert ModelCard(text).data.to_dict()["model-index"][0]["name"] == "udon-tiny"


@pytest.mark.parametrize(
    ("method", "venue", "year"),
    [("udon", "NeurIPS", "2024"), ("unic", "ECCV", "2024"), ("mlfd", "WACV", "2025")],
)
def test_each_method_cites_its_paper(model, method, venue, year):
    text = str(build_model_card(model, method=method))
    citation = text.split("```bibtex")[1].split("```")[0]
    assert (
        citation.strip().startswith("@inproceedings{")
        and venue in citation
        and f"year      = {{{year}}}" in citation
    )
    assert method_card(method).title.split(" ")[0] in text


def test_baseline_card_without_metrics_or_training(model):
    text = str(build_model_card(model, method="baseline", repo_id="tester/baseline"))
    assert "No training:" in text and "## Citation" not in text and "model-index" not in text
    assert "## Retrieval results" not in text


def test_training_arguments_become_hyperparameters_without_tokens(model, tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=3e-4,
        per_device_train_batch_size=16,
        max_steps=5,
        hub_token="hf_xyz",
    )
    values = hyperparameters_from_training_args(args)
    assert (
        values["learning_rate"] == 3e-4
        and values["per_device_train_batch_size"] == 16
        and values["max_steps"] == 5
    )
    text = str(build_model_card(model, method="unic", hyperparameters=args))
    assert "| per_device_train_batch_size | 16 |" in text and "hf_xyz" not in text


def test_card_refuses_to_contain_the_environment_token(model, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    with pytest.raises(ValueError, match="HF_TOKEN"):
        build_model_card(model, method="mlfd", teachers=["hf_secret_value_123"])


def test_unknown_method_is_named(model):
    with pytest.raises(ValueError, match="distillbert"):
        build_model_card(model, method="distillbert")


def test_usage_snippet_runs_against_a_saved_model(model, tmp_path):
    from hf_distill.hub import save_embedder

    folder = save_embedder(
        model, tmp_path / "model", card=dict(method="baseline", repo_id=str(tmp_path / "model"))
    )
    namespace: dict = {}
    exec(extract_usage_snippet((folder / "README.md").read_text()), namespace)
    embeddings = namespace["embeddings"]
    assert embeddings.shape == (1, 8)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(1))


class _FirstCoordinateTrainer(Trainer):
    """Minimises the first embedding coordinate: just enough of a loss to produce a real log_history."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return model(pixel_values=inputs["pixel_values"]).embeddings[:, 0].mean()


def test_training_curves_from_a_real_trainer_log_history(model, tmp_path):
    data = Dataset.from_dict({"pixel_values": torch.randn(8, 3, 32, 32).tolist()}).with_format("torch")
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        logging_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
    )
    trainer = _FirstCoordinateTrainer(
        model=UniversalEmbedderModel(model.config), args=args, train_dataset=data
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3
    card = build_model_card(
        trainer.model,
        method="udon",
        hyperparameters=args,
        log_history=trainer.state.log_history,
        plots_dir=tmp_path,
    )
    assert (tmp_path / "training_curves.png").stat().st_size > 1000 and "](training_curves.png)" in str(card)
    assert "| max_steps | 3 |" in str(card)


def test_separate_only_metrics_still_fill_the_model_index(model):
    card = build_model_card(
        model, method="mlfd", metrics={"separate/digits/R@1": 0.8, "separate/digits/mP@5": 0.7}
    )
    results = {(r.dataset_config, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert results == {("digits", "R@1 (separate)"): 0.8, ("digits", "mP@5 (separate)"): 0.7}


def test_starting_point_rows_come_first_and_the_card_says_the_model_is_below_them(model):
    starting_point = {
        "starting_point/full/merged/mean/R@1": 0.75,
        "starting_point/full/merged/mean/mP@5": 0.5,
        "starting_point/pca8/merged/mean/R@1": 0.5,
        "starting_point/pca8/merged/mean/mP@5": 0.25,
    }
    data = EmbedderCardData(
        method="udon",
        metrics=METRICS,
        starting_point=starting_point,
        command="python recipes/udon.py --config demo.yaml",
    )
    text = str(data.to_model_card(model))
    lines = text.splitlines()
    rows = [
        line for line in lines if line.startswith("| starting point") or line.startswith("| **this model**")
    ]
    # resnet10t pools 512 features; merged columns from the metrics, separate ones only for the trained model.
    assert rows == [
        "| starting point: `resnet10t` untrained, full features (512-d) | 75.00 | 50.00 | – | – | ",
        "| starting point: `resnet10t` untrained, PCA-8 of its features (fitted on train) | 50.00 | 25.00 | – | – | ",
        "| **this model** (8-d) | 62.50 | 43.75 | 87.50 | – | ",
    ]
    assert (
        "On merged mean R@1 this model is **not above** its starting point: **below** the full features (512-d): "
        "75.00 → 62.50 (-12.50); above the PCA-8 of its features (fitted on train): 50.00 → 62.50 (+12.50)."
    ) in text
    assert "Starting point measured by: `python recipes/udon.py --config demo.yaml`" in text
    # Only the trained model fills the model-index.
    assert {r.metric_value for r in data.to_model_card(model).data.eval_results} == {
        0.5,
        0.25,
        0.75,
        0.625,
        0.4375,
    }


def test_card_without_starting_point_has_no_starting_rows(model):
    text = str(EmbedderCardData(method="unic", metrics=METRICS).to_model_card(model))
    assert "starting point" not in text.lower()
    assert "| **this model** (8-d) | 62.50 | 43.75 | 87.50 | – | " in text


def test_command_line_hides_secret_options():
    shown = command_line(["recipes/udon.py", "--hub_token", "hf_abc", "--hub-token=hf_def", "--lr", "0.1"])
    assert shown == "python recipes/udon.py --hub_token '***' '--hub-token=***' --lr 0.1"


def test_non_default_arguments_are_the_changed_fields_without_paths_or_tokens(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=3e-4, max_steps=5, report_to="none", hub_token="hf_xyz"
    )
    assert non_default_arguments(args) == {"learning_rate": 3e-4, "max_steps": 5}
    assert non_default_arguments(TrainingArguments(output_dir=str(tmp_path), lr_scheduler_type="cosine")) == {
        "lr_scheduler_type": "cosine"
    }


def test_template_ships_inside_the_package():
    import hf_distill
    from hf_distill.hub.model_card import TEMPLATE_PATH

    assert TEMPLATE_PATH.is_file() and Path(hf_distill.__file__).parent in TEMPLATE_PATH.parents
