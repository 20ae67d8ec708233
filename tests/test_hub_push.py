"""Push embedder + processor + card to a local Hub server with the real client, load back by repo id, errors."""

import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoImageProcessor, AutoModel

from hf_distill.hub import HubPushError, extract_usage_snippet, push_embedder, save_embedder
from hf_distill.models.embedder import UniversalEmbedderConfig, UniversalEmbedderModel

METRICS = {
    "merged/digits/R@1": 0.5,
    "merged/digits/mP@5": 0.25,
    "merged/mean/R@1": 0.5,
    "merged/mean/mP@5": 0.25,
}


@pytest.fixture(scope="module")
def model() -> UniversalEmbedderModel:
    torch.manual_seed(0)
    config = UniversalEmbedderConfig(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=dict(img_size=32, patch_size=8, depth=1),
        image_size=32,
        embed_dim=8,
    )
    return UniversalEmbedderModel(config).eval()


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def save(model: UniversalEmbedderModel, folder: Path, repo_id: str) -> Path:
    card = dict(method="udon", repo_id=repo_id, metrics=METRICS, domains=["digits"], log_history=None)
    return save_embedder(model, folder, card=card)


def test_push_then_load_by_repo_id(model, hub_server, tmp_path, caplog):
    repo_id = "tester/tiny-embedder"
    folder = save(model, tmp_path / "model", repo_id)
    with caplog.at_level(logging.DEBUG):
        commit = push_embedder(folder, repo_id, token=hub_server.token, commit_message="first upload")
    assert commit.oid and hub_server.repo_files(repo_id) == sorted(folder_digest(folder))
    assert hub_server.token not in caplog.text

    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loaded = AutoModel.from_pretrained(repo_id, cache_dir=tmp_path / "cache").eval()
    assert isinstance(loaded, UniversalEmbedderModel)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).embeddings, model(pixels).embeddings, rtol=0, atol=0)
    processor = AutoImageProcessor.from_pretrained(repo_id, cache_dir=tmp_path / "cache")
    assert (processor.image_size, processor.resize_size) == (32, 32)

    card = ModelCard.load(repo_id)
    card.validate()  # POST /api/validate-yaml on the local server
    assert (
        card.data.pipeline_tag == "image-feature-extraction" and card.data.eval_results[0].metric_value == 0.5
    )
    for stored in (hub_server.root / repo_id).rglob("*"):
        if stored.is_file():
            assert hub_server.token.encode() not in stored.read_bytes(), stored.name


def test_validate_rejects_malformed_metadata(hub_server):
    with pytest.raises(ValueError, match="license"):
        ModelCard("---\nlicense: [1, 2]\n---\n# card\n").validate()


def test_bad_token_gives_clear_error_and_keeps_local_save(model, hub_server, tmp_path):
    folder = save(model, tmp_path / "model", "tester/rejected")
    before = folder_digest(folder)
    with pytest.raises(HubPushError, match="401") as error:
        push_embedder(folder, "tester/rejected", token="hf_wrong_token_value")
    assert "hf_wrong_token_value" not in str(error.value) and str(folder) in str(error.value)
    assert folder_digest(folder) == before and hub_server.repo_files("tester/rejected") == []


def test_server_error_mid_upload_then_retry(model, hub_server, tmp_path):
    repo_id = "tester/flaky"
    folder = save(model, tmp_path / "model", repo_id)
    before = folder_digest(folder)
    hub_server.fail_commits = 100  # more than the client's 5 retries
    with pytest.raises(HubPushError, match="500"):
        push_embedder(folder, repo_id)
    assert folder_digest(folder) == before and hub_server.repo_files(repo_id) == []
    commits = [path for method, path in hub_server.requests if path.endswith("/commit/main")]
    assert len(commits) == 6  # the first attempt and 5 retries, then the client gives up

    hub_server.fail_commits = 1  # a transient failure is absorbed by the client's retry
    push_embedder(folder, repo_id)
    assert hub_server.repo_files(repo_id) == sorted(before)


def test_push_refuses_a_folder_that_is_not_a_saved_embedder(tmp_path, hub_server):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        push_embedder(tmp_path, "tester/nothing")


@pytest.mark.slow
def test_card_snippet_runs_in_a_fresh_process_against_the_hub(model, hub_server, tmp_path):
    repo_id = "tester/snippet"
    folder = save(model, tmp_path / "model", repo_id)
    push_embedder(folder, repo_id)
    snippet = extract_usage_snippet(ModelCard.load(repo_id))
    code = snippet + textwrap.dedent(
        """
        import json, sys
        loaded = [name for name in sys.modules if name.split(".")[0] == "hf_distill"]
        print(json.dumps({"loaded": loaded, "embeddings": embeddings.tolist()}))
        """
    )
    env = {**os.environ, **hub_server.client_env(tmp_path / "fresh_home"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    from PIL import Image

    from hf_distill.models.embedder import UniversalEmbedderImageProcessor

    image = Image.new("RGB", (64, 48), color=(200, 120, 40))
    with torch.no_grad():
        expected = model(
            **UniversalEmbedderImageProcessor.from_model_config(model.config)(image, return_tensors="pt")
        )
    torch.testing.assert_close(torch.tensor(out["embeddings"]), expected.embeddings, rtol=0, atol=1e-5)


def test_push_in_offline_mode_gives_the_library_error_and_keeps_local_save(model, tmp_path):
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 at import time (tests/conftest.py sets it)")
    folder = save(model, tmp_path / "embedder", "tester/offline")
    before = folder_digest(folder)
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE") as raised:
        push_embedder(folder, "tester/offline", token="hf_offline_secret")
    assert "tester/offline" in str(raised.value) and "hf_offline_secret" not in str(raised.value)
    assert folder_digest(folder) == before
