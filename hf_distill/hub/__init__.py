"""Model cards and Hub publishing for exported embedders.

Every method exports the same way::

    card_data = EmbedderCardData(method="udon", repo_id=..., domains=..., teachers=...)
    trainer.add_callback(ModelCardCallback(card_data, benchmark=benchmark))  # filled during training
    trainer.train()
    card_data.metrics = test_metrics
    save_embedder(model, output_dir, card=card_data.to_model_card(model, plots_dir=output_dir))
    push_embedder(output_dir, "user/name", token=None)

(``card=dict(method="udon", metrics=..., ...)`` builds the card from ``EmbedderCardData`` fields in one call.)

``hf_distill.hub.testing`` holds a local Hub test server for doing this without a network.
"""

from hf_distill.hub.card_data import EmbedderCardData
from hf_distill.hub.model_card import (
    BASELINE_CARD,
    build_model_card,
    command_line,
    extract_usage_snippet,
    hyperparameters_from_training_args,
    method_card,
    non_default_arguments,
    parse_retrieval_metrics,
)
from hf_distill.hub.push import HubPushError, push_embedder, save_embedder

__all__ = [
    "BASELINE_CARD",
    "EmbedderCardData",
    "HubPushError",
    "build_model_card",
    "command_line",
    "extract_usage_snippet",
    "hyperparameters_from_training_args",
    "method_card",
    "non_default_arguments",
    "parse_retrieval_metrics",
    "push_embedder",
    "save_embedder",
]
