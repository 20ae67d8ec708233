"""Model cards and Hub publishing for exported embedders.

Every method exports the same way::

    save_embedder(model, output_dir, processor=None, card=dict(method="udon", metrics=..., ...))
    push_embedder(output_dir, "user/name", token=None)

``hf_distill.hub.testing`` holds a local Hub test server for doing this without a network.
"""

from hf_distill.hub.model_card import (
    METHODS,
    build_model_card,
    extract_usage_snippet,
    hyperparameters_from_training_args,
    parse_retrieval_metrics,
)
from hf_distill.hub.push import HubPushError, push_embedder, save_embedder

__all__ = [
    "METHODS",
    "HubPushError",
    "build_model_card",
    "extract_usage_snippet",
    "hyperparameters_from_training_args",
    "parse_retrieval_metrics",
    "push_embedder",
    "save_embedder",
]
