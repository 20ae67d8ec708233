"""Running a recipe from the tests while keeping the recipe object (its model, trainer and loss)."""

from __future__ import annotations

from typing import Any

from hf_distill.recipe import Recipe, parse_recipe_args
from hf_distill.registry import get_method


def run_recipe(recipe_class: type[Recipe], argv: list[str]) -> tuple[Any, dict[str, float]]:
    """What ``recipe_class.main(argv)`` does (parse, then run), returning ``(recipe, test metrics)``.

    Args:
        recipe_class: a :class:`~hf_distill.recipe.Recipe` subclass (e.g. ``recipes/udon.py``'s ``UdonRecipe``).
        argv: its command line (``--config`` and ``--key value`` overrides).
    """
    training_arguments_class = get_method(recipe_class.method).training_arguments_class
    recipe_args, training_args = parse_recipe_args(
        (recipe_class.arguments_class, training_arguments_class), argv
    )
    recipe = recipe_class(recipe_args, training_args)
    return recipe, recipe.run()
