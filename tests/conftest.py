"""Shared pytest set-up: offline Hub, and fixtures gathered from the fixture modules beside this file."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fixtures_data import *  # noqa: E402,F401,F403  (benchmark fixtures)
from fixtures_hub import *  # noqa: E402,F401,F403  (local Hub test server)
from fixtures_weights import *  # noqa: E402,F401,F403  (offline pretrained weights)
