"""A pretrained backbone cut in two: a frozen trunk whose output maps are cached once, and a top that trains.

Fine-tuning only the upper blocks of a pretrained backbone (``trainable_from``) does not need the lower blocks'
forward at every step: their output is the same for the same input view, so it is computed once per view
(``hf_distill.data.trunk_cache``) and training runs the top from those maps. The backbone module is never
changed — the cut is two functions over its own submodules — so the exported embedder is the whole backbone
and takes pixels like any other, with ``top_forward(trunk_forward(x)) == backbone(x)``.

Supported: timm EfficientNet / MobileNet families (``conv_stem``, ``bn1``, ``blocks`` of stages, then the
head: ``trainable_from`` is a stage index) and timm Vision Transformers (``patch_embed`` …, ``blocks``:
``trainable_from`` is a block index).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import torch
from torch import nn


def _kind(backbone: nn.Module) -> str:
    if all(hasattr(backbone, name) for name in ("conv_stem", "bn1", "blocks", "forward_head")):
        return "cnn"
    if all(hasattr(backbone, name) for name in ("patch_embed", "_pos_embed", "blocks", "forward_head")):
        return "vit"
    raise ValueError(
        f"trainable_from needs a timm EfficientNet/MobileNet or VisionTransformer backbone, got "
        f"{type(backbone).__name__}; train the whole backbone (trainable_from: null) instead"
    )


def check_trainable_from(backbone: nn.Module, trainable_from: int) -> None:
    """Raise a ``ValueError`` naming the allowed range when ``trainable_from`` does not cut ``backbone``.

    Args:
        backbone: a timm backbone (see the module docstring).
        trainable_from: index of the first stage (CNN) or block (ViT) that trains.
    """
    _kind(backbone)
    count = len(backbone.blocks)
    if not isinstance(trainable_from, int) or not 0 <= trainable_from <= count:
        raise ValueError(
            f"trainable_from={trainable_from!r} must be a {type(backbone).__name__} block index in 0..{count} "
            f"(0: everything above the stem trains, {count}: only the head)"
        )


def trunk_forward(backbone: nn.Module, pixel_values: torch.Tensor, trainable_from: int) -> torch.Tensor:
    """The frozen lower part: stem and blocks ``[0, trainable_from)``; returns their output maps (or tokens).

    Args:
        backbone: a timm backbone (see the module docstring).
        pixel_values: ``(batch, 3, H, W)`` images.
        trainable_from: index of the first block that trains.
    """
    if _kind(backbone) == "cnn":
        x = backbone.bn1(backbone.conv_stem(pixel_values))
    else:
        x = backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(pixel_values))))
    for block in backbone.blocks[:trainable_from]:
        x = block(x)
    return x


def top_forward(backbone: nn.Module, maps: torch.Tensor, trainable_from: int) -> torch.Tensor:
    """The part that trains: blocks ``[trainable_from, end)`` and the head; returns the pooled features.

    Args:
        backbone: the backbone whose :func:`trunk_forward` produced ``maps``.
        maps: the trunk's output.
        trainable_from: the index :func:`trunk_forward` stopped at.
    """
    kind = _kind(backbone)
    x = maps
    if kind == "cnn":
        # Cached maps are stored plain (NCHW); depthwise convolutions on the CPU run ~10x faster channels-last.
        x = x.contiguous(memory_format=torch.channels_last)
    for block in backbone.blocks[trainable_from:]:
        x = block(x)
    if kind == "cnn":
        x = backbone.bn2(backbone.conv_head(x))
    else:
        x = backbone.norm(x)
    return backbone.forward_head(x, pre_logits=True)


def feature_block_ends(backbone: nn.Module, levels: Sequence[int]) -> list[int]:
    """For each ``forward_intermediates`` level of a CNN, how many blocks produce its map (0: the stem's output,
    ``k``: the output of block ``k - 1``), as timm's ``stage_ends`` say.

    Args:
        backbone: a timm EfficientNet / MobileNet.
        levels: ``forward_intermediates`` indices (negative counts from the end).
    """
    count = len(backbone.stage_ends)
    for level in levels:
        if not -count <= level < count:
            raise ValueError(f"feature level {level} is out of range for a backbone with {count} levels")
    return [int(backbone.stage_ends[level % count]) for level in levels]


def check_levels_above_trunk(backbone: nn.Module, levels: Sequence[int], trainable_from: int) -> None:
    """Raise a ``ValueError`` naming ``trainable_from`` and the level when a distilled map would come out of the
    frozen trunk (its distillation loss could then train nothing of the backbone).

    Args:
        backbone: a timm EfficientNet / MobileNet.
        levels: the distilled ``forward_intermediates`` levels.
        trainable_from: index of the first block that trains.
    """
    check_trainable_from(backbone, trainable_from)
    if _kind(backbone) != "cnn":
        raise ValueError(
            f"trainable_from with distilled feature levels needs a timm EfficientNet/MobileNet backbone, got "
            f"{type(backbone).__name__}"
        )
    for level, end in zip(levels, feature_block_ends(backbone, levels)):
        if end <= trainable_from:
            raise ValueError(
                f"trainable_from={trainable_from} would freeze distilled feature level {level} (the output of "
                f"block {end - 1}, inside the frozen blocks 0..{trainable_from - 1}); use trainable_from <= "
                f"{end - 1} or distil a later level"
            )


def tapped_forward(
    backbone: nn.Module, inputs: torch.Tensor, start: int, taps: list[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Blocks ``[start, end)`` from ``inputs`` (``trunk_forward(backbone, ·, start)``), keeping some blocks' outputs.

    The last step before pooling is the same as :func:`top_forward`'s (CNN: ``conv_head`` → ``bn2``; ViT: the
    final norm), so ``backbone.forward_head(final, pre_logits=True)`` gives :func:`top_forward`'s features.

    Args:
        backbone: a timm backbone (see the module docstring).
        inputs: the trunk's output at ``start`` (the stem's output for ``start=0``).
        start: index of the first block to run.
        taps: indices (``>= start``, increasing) of the blocks whose raw outputs are returned.

    Returns:
        ``(final, tapped)``: the map (CNN, NCHW) or tokens (ViT) before pooling, and the tapped outputs in order.
    """
    kind = _kind(backbone)
    if any(tap < start for tap in taps):
        raise ValueError(
            f"taps {taps} include blocks before start={start}, which tapped_forward does not run"
        )
    x = inputs.contiguous(memory_format=torch.channels_last) if kind == "cnn" else inputs
    wanted, tapped = set(taps), []
    for index in range(start, len(backbone.blocks)):
        x = backbone.blocks[index](x)
        if index in wanted:
            tapped.append(x)
    final = backbone.bn2(backbone.conv_head(x)) if kind == "cnn" else backbone.norm(x)
    return final, tapped


def trunk_modules(backbone: nn.Module, trainable_from: int) -> Iterator[nn.Module]:
    """The modules of the frozen lower part (their parameters do not train over a cached trunk).

    Args:
        backbone: a timm backbone.
        trainable_from: index of the first block that trains.
    """
    if _kind(backbone) == "cnn":
        yield from (backbone.conv_stem, backbone.bn1)
    else:
        yield backbone.patch_embed
        for name in ("cls_token", "reg_token", "pos_embed"):
            if isinstance(getattr(backbone, name, None), nn.Parameter):
                # parameters, not modules: wrapped so the caller can treat every part alike
                holder = nn.Module()
                holder.register_parameter("value", getattr(backbone, name))
                yield holder
    yield from backbone.blocks[:trainable_from]


def freeze_trunk(backbone: nn.Module, trainable_from: int) -> None:
    """Stop the trunk's parameters from training (``requires_grad=False``): over a cached trunk they never run.

    Args:
        backbone: a timm backbone.
        trainable_from: index of the first block that trains.
    """
    check_trainable_from(backbone, trainable_from)
    for module in trunk_modules(backbone, trainable_from):
        for parameter in module.parameters():
            parameter.requires_grad_(False)


class BackboneTop(nn.Module):
    """``backbone``'s upper part as a module of its own: maps in, pooled features out (weights shared).

    Args:
        backbone: a timm backbone (see the module docstring).
        trainable_from: index of the first block of the top.
    """

    def __init__(self, backbone: nn.Module, trainable_from: int) -> None:
        super().__init__()
        check_trainable_from(backbone, trainable_from)
        self.backbone = backbone
        self.trainable_from = trainable_from

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return top_forward(self.backbone, maps, self.trainable_from)


def over_cached_trunk(embedder: nn.Module, trainable_from: int) -> nn.Module:
    """A view of ``embedder`` (anything with a ``backbone``) that takes trunk maps instead of pixels.

    Weights, config and head are shared with ``embedder``; only its ``backbone`` is seen through
    :class:`BackboneTop`. Used to evaluate an embedder on a cached-trunk benchmark
    (``hf_distill.data.trunk_cache``); the embedder that is saved and shipped is ``embedder`` itself.

    Args:
        embedder: e.g. a ``UniversalEmbedderModel``.
        trainable_from: where the cached trunk stopped.
    """
    view = copy.copy(embedder)
    view._modules = dict(embedder._modules)
    view._modules["backbone"] = BackboneTop(embedder.backbone, trainable_from)
    return view


def takes_trunk_maps(model: nn.Module) -> bool:
    """Whether ``model`` reads trunk maps rather than pixels (a cached-trunk model or an :func:`over_cached_trunk`
    view), so that its evaluation inputs are the cached maps as they are."""
    return getattr(model, "trunk_split", None) is not None or isinstance(
        getattr(model, "backbone", None), BackboneTop
    )


def exported_for_inputs(model: nn.Module, embedder: nn.Module) -> nn.Module:
    """``embedder`` (exported from ``model``) reading what ``model`` reads: an :func:`over_cached_trunk` view
    when ``model`` trains over a cached trunk, else ``embedder`` itself.

    Args:
        model: the trained method model (its ``trunk_split`` tells).
        embedder: its exported embedder.
    """
    split = getattr(model, "trunk_split", None)
    return embedder if split is None else over_cached_trunk(embedder, split)
