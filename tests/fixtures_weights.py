"""Offline pretrained weights shared by the test modules (converted once per session into a temporary cache)."""

import pytest

from hf_distill.teachers.offline import OfflineWeights, resolve_offline_weights


@pytest.fixture(scope="session")
def offline_lite0(tmp_path_factory: pytest.TempPathFactory) -> OfflineWeights:
    """The offline ImageNet EfficientNet-Lite0 weights, converted to timm's layout."""
    return resolve_offline_weights("efficientnet_lite0", tmp_path_factory.mktemp("offline_weights"))
