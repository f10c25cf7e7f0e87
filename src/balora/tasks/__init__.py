"""The tasks: one folder each (data, backbone, recipe) and the registry the commands read.

    text/             sequence classification (MiniLM on Rotten Tomatoes offline)
    multiple_choice/  a causal LM scores option letters (SmolLM2 offline)
    vision/           image classification (EfficientNet-Lite0 on Fashion-MNIST offline)
    mof/              MOF band-gap regression (CHGNet / CGCNN on CoRE MOF offline)
    recipe.py         the `Recipe` protocol;  files.py  reading tables and packaged files

Adding a task is one new folder with a recipe and one line in `TASKS`.
"""

from __future__ import annotations

from balora.tasks.mof.recipe import MOFRecipe
from balora.tasks.multiple_choice.recipe import MultipleChoiceRecipe
from balora.tasks.recipe import Recipe
from balora.tasks.text.recipe import TextRecipe
from balora.tasks.vision.recipe import VisionRecipe

TASKS: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (TextRecipe(), MultipleChoiceRecipe(), VisionRecipe(), MOFRecipe())
}
"""Every task by its ``--task`` name."""

__all__ = ["TASKS", "Recipe"]
