"""Text classification: labelled texts (bundled Rotten Tomatoes, files, the hub) and a
Hugging Face sequence classifier (offline default: all-MiniLM-L6-v2).

    data.py      TextSplit / TextClassificationData and the loaders
    backbone.py  the classifier, its tokenizer and default adapter targets
    recipe.py    TextTaskConfig, load_text_task and the `Recipe` for ``--task text``
"""

from balora.tasks.text.backbone import (
    default_text_model_path,
    encode_texts,
    load_sequence_classifier,
    tokenize,
)
from balora.tasks.text.data import (
    ROTTEN_TOMATOES_LABELS,
    TextClassificationData,
    TextSplit,
    load_hf_dataset,
    load_rotten_tomatoes,
    load_text_file,
    rotten_tomatoes_path,
)
from balora.tasks.text.recipe import TextRecipe, TextTask, TextTaskConfig, load_text_task

__all__ = [
    "ROTTEN_TOMATOES_LABELS",
    "TextClassificationData",
    "TextRecipe",
    "TextSplit",
    "TextTask",
    "TextTaskConfig",
    "default_text_model_path",
    "encode_texts",
    "load_hf_dataset",
    "load_rotten_tomatoes",
    "load_sequence_classifier",
    "load_text_file",
    "load_text_task",
    "rotten_tomatoes_path",
    "tokenize",
]
