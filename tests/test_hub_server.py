"""The local Hub test server itself: private repositories, self-shutdown, restoring the client's settings."""

import json
import time
import urllib.error
import urllib.request

import pytest
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError

from hf_distill.hub.testing import LocalHubServer, use_local_hub


def get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_private_repository_is_hidden_without_token(hub_server, tmp_path):
    api = HfApi()
    api.create_repo("tester/secret", private=True)
    (tmp_path / "note.txt").write_text("hello")
    api.upload_file(path_or_fileobj=tmp_path / "note.txt", path_in_repo="note.txt", repo_id="tester/secret")
    assert get(f"{hub_server.url}/api/models/tester/secret") == 404
    assert get(f"{hub_server.url}/api/models/tester/secret", hub_server.token) == 200
    assert get(f"{hub_server.url}/tester/secret/resolve/main/note.txt", hub_server.token) == 200
    assert get(f"{hub_server.url}/tester/secret/resolve/main/missing.txt", hub_server.token) == 404
    assert api.list_repo_files("tester/secret") == ["note.txt"]


def test_other_namespace_is_forbidden(hub_server):
    with pytest.raises(HfHubHTTPError, match="403"):
        HfApi().create_repo("someone-else/model")


def test_server_stops_itself_after_its_lifetime(tmp_path):
    server = LocalHubServer(tmp_path, max_lifetime_s=1.0).start()
    url = server.url
    assert get(f"{url}/api/models/tester/none") == 404
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            get(f"{url}/api/models/tester/none")
        except (urllib.error.URLError, ConnectionError):
            # Refused, or reset when the shutdown lands in the middle of the request: no longer answering.
            break
        time.sleep(0.1)
    else:
        pytest.fail("the server was still answering 10 s after its 1 s lifetime")
    server.stop()  # idempotent


def test_use_local_hub_restores_the_client_settings(tmp_path):
    endpoint, offline = constants.ENDPOINT, constants.HF_HUB_OFFLINE
    with LocalHubServer(tmp_path / "repos") as server, use_local_hub(server, tmp_path / "home"):
        assert constants.ENDPOINT == server.url and constants.HF_HUB_OFFLINE is False
        assert HfApi().whoami()["name"] == "tester"
    assert (constants.ENDPOINT, constants.HF_HUB_OFFLINE) == (endpoint, offline)


def test_validate_yaml_route_reports_model_index_errors(hub_server):
    body = json.dumps(
        {"repoType": "model", "content": "---\nmodel-index:\n- name: x\n  results:\n  - metrics: []\n---\n"}
    ).encode()
    request = urllib.request.Request(
        f"{hub_server.url}/api/validate-yaml", data=body, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    assert error.value.code == 400 and b"task.type" in error.value.read()
