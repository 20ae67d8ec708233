"""A local server speaking the Hub HTTP API, for push/pull tests without a network.

The server itself is ``hf_distill.hub.testing.LocalHubServer`` (importable outside tests, e.g. by the README
example); this module only wraps it in a fixture.

How the client is pointed at it: ``huggingface_hub`` copies ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the
cache paths into ``huggingface_hub.constants`` when it is first imported, and ``conftest.py`` has already
imported it with ``HF_HUB_OFFLINE=1``. Setting the environment variables afterwards therefore changes
nothing in this process. What works:

* in-process: ``hub_server`` enters ``use_local_hub``, which patches those constants (``ENDPOINT``, the
  resolve URL template, ``HF_HUB_OFFLINE=False``, ``HF_HOME`` / hub cache / token paths) *and* sets
  ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME``, ``HF_HUB_OFFLINE=0`` in ``os.environ``; all restored after the
  test. ``HfApi``, ``upload_folder``, ``ModelCard.validate`` and ``from_pretrained("<user>/<repo>")`` then
  talk to the local server.
* in a subprocess: pass ``env={**os.environ, **hub_server.client_env(home)}`` — a fresh interpreter reads
  the variables at import.

The client retries 5xx answers with exponential back-off (1 + 2 + 4 + 8 + 8 s); the fixture removes the
sleeps of that back-off (not the retries) so that error-injection tests stay fast.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.utils._http as hf_http
import pytest

from hf_distill.hub.testing import LocalHubServer, use_local_hub

__all__ = ["hub_server"]


class _TimeWithoutSleep:
    """Stands in for the ``time`` module inside huggingface_hub's HTTP helpers: no waiting between retries."""

    def __getattr__(self, name: str):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        return None


@pytest.fixture
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHubServer]:
    """A started :class:`LocalHubServer` (user ``tester``) that this process's Hub client talks to.

    Attributes to flip in a test: ``fail_commits`` (answer the next N commits with HTTP 500),
    ``reject_all_tokens`` (401 for every authenticated request). ``hub_server.requests`` lists the calls.
    ``hub_server.home`` is the ``HF_HOME`` used in this process.
    """
    monkeypatch.setattr(hf_http, "time", _TimeWithoutSleep())
    server = LocalHubServer(tmp_path / "hub_repos", max_lifetime_s=600).start()
    server.home = tmp_path / "hf_home"
    try:
        with use_local_hub(server, server.home):
            yield server
    finally:
        server.stop()
