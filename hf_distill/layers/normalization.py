"""Running-statistics layers of a pretrained backbone: keep them fixed or let them follow the training batches.

A BatchNorm backbone trained on batches that each hold ONE domain (UDON's sampler) normalises every batch with
that domain's own statistics and overwrites its running estimate with the last domains seen; evaluation then
uses a mix that matches no domain. A "frozen" backbone whose layers stay in train mode drifts the same way
although its weights never change. Fine-tuning a pretrained CNN therefore keeps the running statistics fixed
(SPEC §6, "BatchNorm with single-domain batches"): the layers run in eval mode while their affine parameters
still train. ViTs have no running statistics; the setting changes nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

BACKBONE_NORM_MODES = ("auto", "frozen", "train")


def running_stat_modules(module: nn.Module) -> Iterator[nn.Module]:
    """Every sub-module of ``module`` that keeps running statistics (BatchNorm, and InstanceNorm with them).

    Args:
        module: any module, e.g. a timm backbone.
    """
    for child in module.modules():
        if isinstance(child, _NormBase) and child.track_running_stats:
            yield child


def resolve_backbone_norm(mode: str, pretrained: bool) -> str:
    """``"frozen"`` or ``"train"`` for a setting that may be ``"auto"``.

    Args:
        mode: ``"auto"`` (frozen for a backbone that starts from pretrained weights, trained for one that starts
            from scratch, whose statistics must be learnt), ``"frozen"`` or ``"train"``.
        pretrained: whether the backbone was built with pretrained weights.
    """
    if mode not in BACKBONE_NORM_MODES:
        raise ValueError(f"backbone_norm must be one of {BACKBONE_NORM_MODES}, got {mode!r}")
    if mode == "auto":
        return "frozen" if pretrained else "train"
    return mode


def set_backbone_train_mode(backbone: nn.Module, training: bool, norm: str, frozen: bool = False) -> None:
    """Put ``backbone`` in train or eval mode following the normalisation setting.

    Args:
        backbone: the backbone module.
        training: the mode the enclosing model is put in.
        norm: ``"frozen"`` keeps every running-statistics layer in eval mode (affine parameters still train);
            ``"train"`` lets them update. Resolve ``"auto"`` first with :func:`resolve_backbone_norm`.
        frozen: the backbone's weights are not being trained at all: the whole backbone runs in eval mode
            (no dropout / drop-path, no statistics update), whatever ``norm`` says.
    """
    backbone.train(training and not frozen)
    if training and not frozen and norm == "frozen":
        for layer in running_stat_modules(backbone):
            layer.eval()


class BackboneNormMixin:
    """Gives a model with a ``backbone`` the ``backbone_norm`` setting and applies it in ``train()``.

    The model sets ``backbone_pretrained`` when it builds its backbone; the trainer sets ``backbone_norm`` from
    the training arguments (``"auto"`` by default). ``backbone_frozen`` (e.g. UDON's first epochs) puts the
    whole backbone in eval mode.
    """

    backbone_norm: str = "auto"
    backbone_pretrained: bool = False
    _backbone_frozen: bool = False

    @property
    def backbone_frozen(self) -> bool:
        """Whether the backbone's weights are currently not trained (the whole backbone then runs in eval)."""
        return self._backbone_frozen

    @backbone_frozen.setter
    def backbone_frozen(self, value: bool) -> None:
        self._backbone_frozen = bool(value)
        if self.training:
            self._apply_backbone_mode(True)

    def resolved_backbone_norm(self) -> str:
        """``"frozen"`` or ``"train"``: the setting with ``"auto"`` resolved for this backbone."""
        return resolve_backbone_norm(self.backbone_norm, self.backbone_pretrained)

    def _apply_backbone_mode(self, training: bool) -> None:
        set_backbone_train_mode(self.backbone, training, self.resolved_backbone_norm(), self._backbone_frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        self._apply_backbone_mode(mode)
        return self


__all__ = [
    "BACKBONE_NORM_MODES",
    "BackboneNormMixin",
    "resolve_backbone_norm",
    "running_stat_modules",
    "set_backbone_train_mode",
]
