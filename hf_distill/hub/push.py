"""Saving an exported embedder (weights, config, code, image processor, card) and publishing it on the Hub."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from hf_distill.hub.model_card import _assert_no_secret, build_model_card
from hf_distill.models.embedder import UniversalEmbedderImageProcessor, UniversalEmbedderModel

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
TEXT_SUFFIXES = (".json", ".md", ".py", ".txt", ".yaml", ".yml")


class HubPushError(RuntimeError):
    """Publishing to the Hub failed; the local save is untouched and the push can be retried."""


def save_embedder(
    model: UniversalEmbedderModel,
    output_dir: str | os.PathLike,
    processor: UniversalEmbedderImageProcessor | None = None,
    card: ModelCard | Mapping[str, Any] | None = None,
) -> Path:
    """Save an embedder as a self-contained Hub-ready folder.

    Writes ``config.json`` (with ``auto_map``), ``model.safetensors``, the modeling/configuration/processor
    code for ``trust_remote_code``, ``preprocessor_config.json`` and, when given, ``README.md`` plus its plots.

    Args:
        model: the embedder to save.
        output_dir: target folder (created).
        processor: its image processor; built from ``model.config`` when None.
        card: a ready ``ModelCard``, or keyword arguments for :func:`~hf_distill.hub.build_model_card`
            (plots are then saved in ``output_dir``).

    Returns:
        the output folder.
    """
    if not isinstance(model, UniversalEmbedderModel):
        raise TypeError(f"save_embedder expects a UniversalEmbedderModel, got {type(model).__name__}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor = processor or UniversalEmbedderImageProcessor.from_model_config(model.config)
    processor.save_pretrained(output_dir)
    if card is not None:
        if isinstance(card, Mapping):
            card = build_model_card(model, plots_dir=output_dir, **card)
        text = str(card)
        _assert_no_secret(text, "README.md")
        (output_dir / "README.md").write_text(text, encoding="utf-8")
    logger.info("saved embedder to %s", output_dir)
    return output_dir


def _check_folder(output_dir: Path) -> None:
    if not output_dir.is_dir():
        raise FileNotFoundError(f"{output_dir} is not a folder; save the embedder with save_embedder first")
    missing = [name for name in REQUIRED_FILES if not (output_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{output_dir} lacks {missing}; save the embedder with save_embedder first")
    for path in output_dir.rglob("*"):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            _assert_no_secret(path.read_text(encoding="utf-8", errors="ignore"), str(path))


def _scrub(message: str, token: str | None) -> str:
    return message.replace(token, "***") if token else message


def push_embedder(
    output_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload universal image embedder",
    endpoint: str | None = None,
) -> CommitInfo:
    """Upload a folder written by :func:`save_embedder` to a Hub model repository (created if needed).

    Args:
        output_dir: the saved embedder folder.
        repo_id: ``"<user or org>/<name>"``.
        token: a write token; None uses the logged-in token / ``$HF_TOKEN``. Never logged or stored.
        private: create the repository as private.
        commit_message: the commit summary.
        endpoint: Hub URL; None uses ``huggingface_hub``'s configured endpoint (``$HF_ENDPOINT``).

    Returns:
        the ``CommitInfo`` of the upload.

    Raises:
        HubPushError: the server refused the token or failed, or huggingface_hub is offline
            (``HF_HUB_OFFLINE=1``); ``output_dir`` is left as it was.
    """
    output_dir = Path(output_dir)
    _check_folder(output_dir)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=output_dir, repo_id=repo_id, commit_message=commit_message)
    except OfflineModeIsEnabled as error:
        raise HubPushError(
            f"pushing {output_dir} to {repo_id!r} needs the network, but huggingface_hub is in offline mode "
            "(HF_HUB_OFFLINE=1). The local save in "
            f"{output_dir} is intact; push it later with push_embedder (or `hf upload {repo_id} {output_dir}`) "
            "from a session without HF_HUB_OFFLINE."
        ) from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        server_message = _scrub(getattr(error, "server_message", None) or str(error).splitlines()[0], token)
        if status == 401:
            cause = "the Hub rejected the token (401 Unauthorized); pass a valid write token or set HF_TOKEN"
        elif status == 403:
            cause = f"the token may not write to {repo_id!r} (403 Forbidden)"
        else:
            cause = f"the Hub answered HTTP {status}: {server_message}"
        raise HubPushError(
            f"pushing {output_dir} to {repo_id!r} at {api.endpoint} failed: {cause}. "
            f"The local save in {output_dir} is intact; call push_embedder again once fixed."
        ) from error
    logger.info("pushed %s to %s (%s)", output_dir, repo_id, commit.oid)
    return commit


__all__ = ["HubPushError", "push_embedder", "save_embedder"]
