"""The method registry: one registration per method ties together everything that makes it a method.

Each method registers once, next to its trainer (``hf_distill/trainers/<method>.py``), with
:func:`register_method`: its configuration and model classes (also registered with the transformers Auto
classes), its loss, its training arguments, its trainer and what a model card says about it. The teacher loader,
the Hub code and the trainers' argument checks read the registry instead of guessing from attribute names.
Importing :mod:`hf_distill` registers the three built-in methods (UDON, UNIC, MLFD).

This module imports nothing from the rest of the package, so every package may read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MethodCard:
    """How a model card names, describes and cites a method.

    Args:
        title: the method's name and paper.
        summary: one paragraph on what the training does.
        citation: BibTeX of the paper, or ``None``.
    """

    title: str
    summary: str
    citation: str | None = None


@dataclass(frozen=True)
class MethodSpec:
    """Everything that makes a method.

    Args:
        name: the method's name (``"udon"``, ``"unic"``, ``"mlfd"``).
        config_class / model_class: the trained model (its ``export_embedder()`` returns the universal embedder).
        loss_class: the loss module, called as ``loss(model, inputs)``.
        training_arguments_class: the ``TrainingArguments`` subclass its trainer requires.
        trainer_class: the ``DistillationTrainer`` subclass.
        card: model-card information.
        extra_models: further ``(config_class, model_class)`` pairs the method trains (MLFD's joint teacher).
    """

    name: str
    config_class: type
    model_class: type
    loss_class: type
    training_arguments_class: type
    trainer_class: type
    card: MethodCard
    extra_models: tuple[tuple[type, type], ...] = field(default_factory=tuple)


_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Register a method (and its configuration/model classes with ``AutoConfig`` / ``AutoModel``).

    Registering the same spec again is a no-op; a different spec under a taken name is an error.

    Args:
        spec: the method.
    """
    from transformers import AutoConfig, AutoModel

    existing = _METHODS.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"a different method is already registered as {spec.name!r}")
    for config_class, model_class in ((spec.config_class, spec.model_class), *spec.extra_models):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
    _METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``.

    Args:
        name: a registered method name.
    """
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; registered methods: {sorted(_METHODS)}")
    return _METHODS[name]


def registered_methods() -> list[str]:
    """Names of the registered methods, in registration order."""
    return list(_METHODS)


def method_of_model(model: Any) -> MethodSpec | None:
    """The method whose model class ``model`` is an instance of (its main model, not an extra one), or ``None``.

    Args:
        model: any object.
    """
    for spec in _METHODS.values():
        if isinstance(model, spec.model_class):
            return spec
    return None


def exportable_model_classes() -> tuple[type, ...]:
    """Every registered model class that has an ``export_embedder()`` (main and extra models)."""
    classes = []
    for spec in _METHODS.values():
        for model_class in (spec.model_class, *(model for _, model in spec.extra_models)):
            if hasattr(model_class, "export_embedder"):
                classes.append(model_class)
    return tuple(classes)


__all__ = [
    "MethodCard",
    "MethodSpec",
    "exportable_model_classes",
    "get_method",
    "method_of_model",
    "register_method",
    "registered_methods",
]
